//! `--data-dir`: queued messages over a restart and over `kill -9`.
//!
//! The crash test runs load on the line protocol and on the message-switch
//! API at once, kills the server with SIGKILL at a random moment, starts it
//! again on the same directory, and checks what `--fsync always` promises:
//! every send that was answered is there or was taken / acked; nothing
//! taken or acked comes back; ids are never given twice. Twenty rounds.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Server, TempDir};
use switchboard::client::switch::SwitchClient;
use switchboard::client::Client;

const KILL: i32 = 9;

fn start(dir: &TempDir, fsync: &str) -> Server {
    Server::start(&[
        "--bus-listen",
        "off",
        "--switch-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--fsync",
        fsync,
    ])
}

fn kill(mut server: Server) {
    server.signal(KILL);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "the server was not killed: {status}");
}

fn line(server: &Server) -> Client {
    let mut c = Client::connect_tcp(server.line()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn switch(server: &Server, session: &str) -> SwitchClient {
    let mut c = SwitchClient::connect(server.addr("switch")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.login(session).unwrap();
    c
}

/// Every message queued on `addr`, taken with zero-second waits sent 256
/// at a time (one batch of records, one fsync, per 256).
fn drain_line(server: &Server, addr: &str) -> Vec<String> {
    let mut s = common::connect(server.line());
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut got = Vec::new();
    loop {
        common::send(&mut s, format!("< 0 {addr}\r\n").repeat(256).as_bytes());
        let mut empty = false;
        for _ in 0..256 {
            let mut head = String::new();
            r.read_line(&mut head).unwrap();
            if head == "*\r\n" {
                empty = true;
                continue;
            }
            // `> LEN TIMEOUT TO`, the body, CRLF.
            let len: usize = head.split(' ').nth(1).unwrap().parse().unwrap();
            let mut body = vec![0u8; len + 2];
            r.read_exact(&mut body).unwrap();
            body.truncate(len);
            got.push(String::from_utf8(body).unwrap());
        }
        if empty {
            return got;
        }
    }
}

/// xorshift64*, seeded from the clock (printed, so a failure can be rerun
/// in thought).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn line_messages_and_switch_queues_come_back_after_a_restart() {
    let dir = TempDir::new("durable-restart");
    let server = start(&dir, "everysec");
    let mut c = line(&server);
    c.send(b"first", 600, "work", Some("me")).unwrap();
    c.send(b"second", 600, "work", None).unwrap();
    c.send(b"gone", 600, "work", None).unwrap();
    let mut s = switch(&server, "client");
    s.create_persistent("svc").unwrap();
    s.create_transient("mine").unwrap();
    let a = s.request("svc", "mine", b"a").unwrap().unwrap();
    let b = s.request("svc", "mine", b"b").unwrap().unwrap();
    let seen = s.request("svc", "", b"seen").unwrap().unwrap();
    s.request("mine", "", b"transient").unwrap().unwrap();
    s.ack(&a).unwrap();
    // A switch client is handed `seen` (and `b`); then `b` is acked.
    let t = s.transfer(Some(&a.1.to_string()), 0.0, &["svc"]).unwrap();
    assert_eq!(t.messages.len(), 2);
    s.ack(&b).unwrap();
    // A line receiver takes `first` (the oldest).
    let m = c.ready(0, &["work"]).unwrap().unwrap();
    assert_eq!(&m.body[..], b"first");
    // A clean stop writes everything.
    drop(c);
    drop(s);
    let mut server = server;
    assert!(server.terminate().success());

    let server = start(&dir, "everysec");
    assert_eq!(drain_line(&server, "work"), vec!["second", "gone"]);
    let mut s = switch(&server, "other");
    assert_eq!(s.list("", false).unwrap(), vec!["svc".to_string()]);
    let t = s.transfer(None, 0.0, &["svc"]).unwrap();
    let kept: Vec<_> = t
        .messages
        .iter()
        .map(|m| (m.id.clone(), m.payload.clone()))
        .collect();
    assert_eq!(kept, vec![(seen.clone(), "seen".to_string())]);
    // Ids go on from where they were.
    let next = s.request("svc", "", b"next").unwrap().unwrap();
    assert_eq!(next.1, seen.1 + 1);
    // `seen` was handed to a switch client: line receivers leave it.
    let mut c = line(&server);
    assert!(c
        .ready(0, &["svc"])
        .unwrap()
        .is_some_and(|m| &m.body[..] == b"next"));
    assert!(c.ready(0, &["svc"]).unwrap().is_none());
}

#[test]
fn an_expired_message_is_not_delivered_after_a_restart() {
    let dir = TempDir::new("durable-expiry");
    let server = start(&dir, "always");
    let mut c = line(&server);
    c.send(b"short", 1, "exp", None).unwrap();
    c.send(b"long", 600, "exp.long", None).unwrap();
    // The sends are durable once a later answer on the connection came.
    c.sync().unwrap();
    let sent = Instant::now();
    kill(server);
    // Past the short one's deadline (a deadline test must let time pass).
    while sent.elapsed() < Duration::from_millis(1100) {
        thread::sleep(Duration::from_millis(50));
    }
    let server = start(&dir, "always");
    let mut c = line(&server);
    // A probe queued behind it: a receiver gets the probe, never `short`.
    c.send(b"probe", 600, "exp", None).unwrap();
    let m = c.ready(0, &["exp"]).unwrap().unwrap();
    assert_eq!(&m.body[..], b"probe");
    let m = c.ready(0, &["exp.long"]).unwrap().unwrap();
    assert_eq!(&m.body[..], b"long");
    assert!(m.timeout_s == 600, "{m:?}");
}

#[test]
fn reply_addresses_differ_across_quick_restarts() {
    let dir = TempDir::new("durable-reply");
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let server = start(&dir, "no");
        let mut asker = line(&server);
        let mut handler = line(&server);
        // `?` sends with a fresh reply address; the handler sees it.
        let q = thread::spawn(move || asker.query(b"q", 5, "svc.reply").unwrap());
        let m = handler.ready(5, &["svc.reply"]).unwrap().unwrap();
        let reply = m.reply.clone().unwrap();
        handler.send(b"a", 5, &reply, None).unwrap();
        assert!(q.join().unwrap().is_some());
        assert!(seen.insert(reply.clone()), "{reply} given twice");
        kill(server);
    }
}

/// What one round's load saw.
#[derive(Default)]
struct Seen {
    /// Line bodies whose send was followed by an answer.
    line_sent: Vec<String>,
    /// Line bodies handed to the receiver.
    line_taken: Vec<String>,
    /// Switch sends answered: (id, payload).
    switch_sent: Vec<(u64, String)>,
    /// Switch ids whose ack was answered.
    switch_acked: Vec<u64>,
    /// Switch ids whose ack was sent (its answer may have been lost).
    switch_ack_sent: Vec<u64>,
}

/// Runs load on both doors until `stop`, in four threads; returns what
/// they saw (each stops at its first error, the kill).
fn load(server: &Server, round: u64, stop: &Arc<AtomicBool>) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel();
    let line_addr = server.line().to_string();
    let switch_addr = server.addr("switch").to_string();

    let (t, a, s) = (tx.clone(), line_addr.clone(), Arc::clone(stop));
    thread::spawn(move || {
        let mut seen = Seen::default();
        let Ok(mut c) = Client::connect_tcp(&a) else {
            return;
        };
        let mut n = 0;
        'run: while !s.load(Ordering::Relaxed) {
            let mut batch = Vec::new();
            for _ in 0..20 {
                let body = format!("L{round}.{n}");
                n += 1;
                if c.send(body.as_bytes(), 3600, "lq", None).is_err() {
                    break 'run;
                }
                batch.push(body);
            }
            // An answer after the sends: they are durable.
            if c.sync().is_err() {
                break;
            }
            seen.line_sent.extend(batch);
        }
        let _ = t.send(seen);
    });

    let (t, a, s) = (tx.clone(), line_addr, Arc::clone(stop));
    thread::spawn(move || {
        let mut seen = Seen::default();
        let Ok(mut c) = Client::connect_tcp(&a) else {
            return;
        };
        while !s.load(Ordering::Relaxed) {
            match c.ready(1, &["lq"]) {
                Ok(Some(m)) => seen
                    .line_taken
                    .push(String::from_utf8(m.body.to_vec()).unwrap()),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let _ = t.send(seen);
    });

    let (t, a, s) = (tx.clone(), switch_addr.clone(), Arc::clone(stop));
    thread::spawn(move || {
        let mut seen = Seen::default();
        let Ok(mut c) = SwitchClient::connect(&a) else {
            return;
        };
        if c.login("producer").is_ok() {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                let payload = format!("S{round}.{n}");
                n += 1;
                match c.request("sq", "", payload.as_bytes()) {
                    Ok(Some(id)) => seen.switch_sent.push((id.1, payload)),
                    Ok(None) => panic!("the persistent queue sq is gone"),
                    Err(_) => break,
                }
            }
        }
        let _ = t.send(seen);
    });

    let (t, a, s) = (tx, switch_addr, Arc::clone(stop));
    thread::spawn(move || {
        let mut seen = Seen::default();
        let Ok(mut c) = SwitchClient::connect(&a) else {
            return;
        };
        if c.login("consumer").is_ok() {
            let mut from: Option<String> = None;
            'run: while !s.load(Ordering::Relaxed) {
                let Ok(t) = c.transfer(from.as_deref(), 0.5, &["sq"]) else {
                    break;
                };
                from = Some(t.next.clone());
                for m in t.messages {
                    seen.switch_ack_sent.push(m.id.1);
                    if c.ack(&m.id).is_err() {
                        break 'run;
                    }
                    seen.switch_acked.push(m.id.1);
                }
            }
        }
        let _ = t.send(seen);
    });
    rx
}

#[test]
fn kill_9_under_load_loses_no_answered_send_and_brings_back_nothing_taken() {
    let dir = TempDir::new("durable-crash");
    let mut rng = Rng::new();
    {
        let server = start(&dir, "always");
        switch(&server, "setup").create_persistent("sq").unwrap();
        kill(server);
    }
    let mut line_delivered: HashSet<String> = HashSet::new();
    // Every switch id ever answered, with its payload; and the acked ones.
    let mut switch_ids: HashMap<u64, String> = HashMap::new();
    let mut switch_acked: HashSet<u64> = HashSet::new();
    let mut switch_ack_sent: HashSet<u64> = HashSet::new();
    let mut pending_line: Vec<String> = Vec::new();
    let test_started = Instant::now();
    for round in 0..20u64 {
        let round_started = Instant::now();
        let server = start(&dir, "always");
        // What the last round left: line messages answered and not taken
        // are all here, nothing taken is.
        let back = drain_line(&server, "lq");
        for body in &back {
            assert!(
                line_delivered.insert(body.clone()),
                "round {round}: {body} was delivered before the kill and came back"
            );
        }
        let back: HashSet<&String> = back.iter().collect();
        // The one `<` under way at the kill may have taken a message whose
        // answer never left (a line take has no ack): at most one.
        let lost: Vec<&String> = pending_line.iter().filter(|b| !back.contains(b)).collect();
        assert!(
            lost.len() <= 1,
            "round {round}: sent (and a later answer came) but lost: {lost:?}"
        );
        let mut sc = switch(&server, "checker");
        let t = sc.transfer(None, 0.0, &["sq"]).unwrap();
        let present: HashMap<u64, String> = t
            .messages
            .iter()
            .map(|m| (m.id.1, m.payload.clone()))
            .collect();
        for (id, payload) in &present {
            assert!(
                !switch_acked.contains(id),
                "round {round}: acked message {id} came back"
            );
            if let Some(p) = switch_ids.get(id) {
                assert_eq!(p, payload, "round {round}: id {id} names another message");
            }
        }
        for (id, payload) in &switch_ids {
            // An ack whose answer the kill cut off may have been done.
            if !switch_ack_sent.contains(id) {
                assert_eq!(
                    present.get(id),
                    Some(payload),
                    "round {round}: answered send {id} is lost"
                );
            }
        }
        drop(sc);

        let stop = Arc::new(AtomicBool::new(false));
        let seen = load(&server, round, &stop);
        // A random moment: 20 to 300 ms into the load.
        thread::sleep(Duration::from_millis(20 + rng.below(280)));
        kill(server);
        stop.store(true, Ordering::Relaxed);
        pending_line.clear();
        let mut taken = Vec::new();
        for s in seen.iter().take(4) {
            pending_line.extend(s.line_sent);
            taken.extend(s.line_taken);
            for (id, payload) in s.switch_sent {
                if let Some(old) = switch_ids.insert(id, payload.clone()) {
                    panic!("round {round}: id {id} given to {old} and to {payload}");
                }
            }
            switch_acked.extend(s.switch_acked);
            switch_ack_sent.extend(s.switch_ack_sent);
        }
        for body in taken {
            assert!(
                line_delivered.insert(body.clone()),
                "round {round}: {body} delivered twice"
            );
        }
        pending_line.retain(|b| !line_delivered.contains(b));
        eprintln!("round {round}: {:?}", round_started.elapsed());
    }
    eprintln!(
        "20 rounds in {:?}: {} line messages delivered, {} switch sends answered, {} acked",
        test_started.elapsed(),
        line_delivered.len(),
        switch_ids.len(),
        switch_acked.len()
    );
    assert!(!switch_ids.is_empty() && !line_delivered.is_empty());
}

#[test]
fn a_failing_write_fails_its_answers_and_the_server_serves_on() {
    let dir = TempDir::new("durable-full");
    let path = dir.path().to_str().unwrap();
    // Files may not grow past 256 KiB (in 512-byte blocks); the signal that
    // a write past it would raise is ignored, so the write fails (EFBIG),
    // as on a full disk.
    let args = [
        "--bus-listen",
        "127.0.0.1:0",
        "--switch-listen",
        "127.0.0.1:0",
        "--data-dir",
        path,
        "--fsync",
        "always",
    ];
    let server = Server::start_in_shell(&args, Some("trap '' XFSZ && ulimit -f 512"));
    let mut s = switch(&server, "producer");
    s.create_persistent("big").unwrap();
    let payload = vec![b'x'; 4096];
    let mut kept = Vec::new();
    let mut refused = None;
    let mut acker = switch(&server, "consumer");
    // The log grows past the limit while the live data stays small: nine
    // of ten messages are acked at once, so that a snapshot fits.
    for i in 0..1000 {
        match s.call("POST", "/request/big/", &payload) {
            Ok(r) if r.status == 200 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let n = v[0][1].as_u64().unwrap();
                if i % 10 == 0 {
                    kept.push(n);
                } else {
                    acker.ack(&("big".to_string(), n)).unwrap();
                }
            }
            Ok(r) => {
                refused = Some(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
                break;
            }
            // The request whose write failed: its connection closes unanswered.
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("a write past the file size limit must fail a send");
    eprintln!("{} sends kept, then: {refused}", kept.len());
    assert!(kept.len() > 2, "{} kept, then {refused}", kept.len());
    // Right after, sends are refused with a reason, and everything else is
    // served: a line round trip, a switch listing.
    let mut s = switch(&server, "producer");
    let r = s.call("POST", "/request/big/", &payload).unwrap();
    if r.status != 200 {
        assert_eq!(r.status, 503);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.contains("store unavailable"), "{body}");
    }
    let mut c = line(&server);
    c.sync().unwrap();
    assert_eq!(s.list("b", false).unwrap(), vec!["big".to_string()]);
    // The connection closed unanswered is counted as such.
    let stats = common::Stats::open(server.bus()).get();
    assert!(
        common::stat(&stats["connections"]["closed_by"], "store_failed") >= 1,
        "{stats}"
    );
    // A second later the store writes a snapshot (a new, small file) and
    // takes sends again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.call("POST", "/request/big/", b"after").unwrap();
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the store never recovered");
        assert_eq!(r.status, 503);
        // Polls for the end of the refusal (it lasts about a second).
        thread::sleep(Duration::from_millis(100));
    }
    drop(s);
    drop(acker);
    kill(server);
    // Every answered send is there after a restart (without the limit).
    let server = start(&dir, "always");
    let mut s = switch(&server, "checker");
    let t = s.transfer(None, 0.0, &["big"]).unwrap();
    let after = t.messages.iter().filter(|m| m.payload == "after").count();
    assert_eq!(after, 1);
    let there: HashSet<u64> = t.messages.iter().map(|m| m.id.1).collect();
    for n in kept {
        assert!(there.contains(&n), "answered send {n} is lost");
    }
}
