//! `--data-dir`: queued messages over a restart and over `kill -9`.
//!
//! The crash test runs load on the line protocol and on the message-switch
//! API at once, kills the server with SIGKILL at a random moment, starts it
//! again on the same directory, and checks what `--fsync always` promises:
//! every send that was answered is there or was taken / acked; nothing
//! taken or acked comes back; ids are never given twice. Twenty rounds.
//!
//! Others: compaction with small `--segment-bytes` and
//! `--compact-min-bytes`, and writes that fail (a file-size limit) on the
//! message-switch API and on the line protocol.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
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
            match read_take(&mut r) {
                Some(body) => got.push(body),
                None => empty = true,
            }
        }
        if empty {
            return got;
        }
    }
}

/// Reads one answer to a `<`: the body of a message, or `None` for `*`.
fn read_take(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    r.read_line(&mut head).unwrap();
    if head == "*\r\n" {
        return None;
    }
    // `> LEN TIMEOUT TO`, the body, CRLF.
    assert!(head.starts_with("> "), "not a message: {head:?}");
    let len: usize = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = vec![0u8; len + 2];
    r.read_exact(&mut body).unwrap();
    body.truncate(len);
    Some(String::from_utf8(body).unwrap())
}

/// Queues `bodies` on `addr`, 256 sends per write, each run followed by a
/// zero-second wait on a fresh address: its `*` comes once the sends are
/// taken (with `--fsync always`: durable).
fn queue_line(server: &Server, addr: &str, bodies: &[String]) {
    let mut s = common::connect(server.line());
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    for (n, run) in bodies.chunks(256).enumerate() {
        let mut out = Vec::new();
        for body in run {
            out.extend_from_slice(format!("> {} 3600 {addr}\r\n{body}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(format!("< 0 barrier.{addr}.{n}\r\n").as_bytes());
        common::send(&mut s, &out);
        assert_eq!(read_take(&mut r), None);
    }
}

/// Takes `n` messages off `addr` (each must be there), 256 waits per write.
fn take_line(server: &Server, addr: &str, n: usize) -> Vec<String> {
    let mut s = common::connect(server.line());
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let run = (n - got.len()).min(256);
        common::send(&mut s, format!("< 0 {addr}\r\n").repeat(run).as_bytes());
        for _ in 0..run {
            let body = read_take(&mut r);
            got.push(body.unwrap_or_else(|| panic!("{addr}: empty after {} taken", got.len())));
        }
    }
    got
}

/// Bytes of the log segments in `dir` (complete and half-written), and
/// their names.
fn segments(dir: &TempDir) -> (u64, Vec<String>) {
    let mut total = 0;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.ends_with(".log.tmp") {
            total += entry.metadata().unwrap().len();
            names.push(name);
        }
    }
    names.sort();
    (total, names)
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
    // Files may not grow past 256 KiB (in 512-byte blocks); the server
    // catches the signal a write past it raises, so the write fails
    // (EFBIG), as on a full disk.
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
    let server = Server::start_in_shell(&args, Some("ulimit -f 512"));
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
    // Right after, sends are refused with a reason. (Should the moment of
    // refusal have passed before the next send, the log grows to the limit
    // again and fails again: the sends go on until one is refused.)
    let mut s = switch(&server, "producer");
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries < 5000, "no send was refused with 503");
        match s.call("POST", "/request/big/", &payload) {
            Ok(r) if r.status == 200 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                kept.push(v[0][1].as_u64().unwrap());
            }
            Ok(r) => {
                assert_eq!(r.status, 503);
                let body = String::from_utf8_lossy(&r.body).into_owned();
                assert!(body.contains("store unavailable"), "{body}");
                break;
            }
            // Another write that failed.
            Err(_) => s = switch(&server, "producer"),
        }
    }
    // Everything else is served: a line round trip, a switch listing.
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

#[test]
fn compaction_keeps_the_files_near_the_live_data_and_a_restart_finds_exactly_it() {
    let dir = TempDir::new("durable-compact");
    let path = dir.path().to_str().unwrap().to_string();
    // Segments of 1 MiB, compaction once they hold more than 1 MiB and
    // more than 4 times the live data (both at their floor).
    let args = [
        "--bus-listen",
        "127.0.0.1:0",
        "--switch-listen",
        "127.0.0.1:0",
        "--data-dir",
        &path,
        "--fsync",
        "always",
        "--segment-bytes",
        "1048576",
        "--compact-min-bytes",
        "1048576",
    ];
    let server = Server::start(&args);
    let mut s = switch(&server, "producer");
    s.create_persistent("svc").unwrap();
    let body = |addr: &str, i: usize| format!("{addr}.{i:05}.{}", "x".repeat(1000));
    let work: Vec<String> = (0..3000).map(|i| body("work", i)).collect();
    let svc: Vec<String> = (0..1500).map(|i| body("svc", i)).collect();
    // Line sends into a line queue and into the persistent switch queue.
    queue_line(&server, "work", &work);
    queue_line(&server, "svc", &svc);
    let (before, names_before) = segments(&dir);
    // All of it is live: nothing to compact yet, the segments closed at
    // 1 MiB each.
    assert!(before > 4_500_000, "{before} bytes: {names_before:?}");
    assert!(names_before.len() >= 4, "{names_before:?}");

    // All but the newest 300 and 100 are taken: the log holds far more
    // than 4 times what is left, so it is compacted on the way.
    assert_eq!(take_line(&server, "work", 2700), work[..2700]);
    assert_eq!(take_line(&server, "svc", 1400), svc[..1400]);
    // Two sends from a session, one of them acked.
    let a = s.request("svc", "", b"session a").unwrap().unwrap();
    let b = s.request("svc", "", b"session b").unwrap().unwrap();
    s.ack(&a).unwrap();
    // Barriers: a take's answer leaves once its batch is durable, and the
    // writer handles batches and snapshots in the order they were made, so
    // a snapshot begun before it is complete (written, renamed, the older
    // segments deleted). Twice: a snapshot begun in the first barrier's
    // turn is complete after the second.
    for n in 0..2 {
        let probe = format!("probe{n}");
        queue_line(&server, &probe, &["p".to_string()]);
        assert_eq!(take_line(&server, &probe, 1), ["p"]);
    }
    let stats = common::Stats::open(server.bus()).get();
    let live = common::stat(&stats, "queues.bytes") + common::stat(&stats, "switch.bytes");
    let (after, names) = segments(&dir);
    eprintln!(
        "segments: {before} bytes in {} files before, {after} bytes in {} files after; \
         live data {live} bytes",
        names_before.len(),
        names.len()
    );
    // What was left is 300 + 101 messages of about 1 KiB.
    assert!((400_000..600_000).contains(&live), "{stats}");
    // The rule: at most 4 times the live data, or --compact-min-bytes,
    // whichever is more.
    assert!(after <= (4 * live).max(1 << 20), "{after} bytes: {names:?}");
    assert!(after < before / 3, "{after} of {before} bytes: {names:?}");
    assert!(!names.contains(&names_before[0]), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    drop(s);
    kill(server);

    // After a restart: exactly what was live, in order; ids go on.
    let server = Server::start(&args);
    let mut s = switch(&server, "checker");
    let t = s.transfer(None, 0.0, &["svc"]).unwrap();
    let kept: Vec<(u64, String)> = t
        .messages
        .iter()
        .map(|m| (m.id.1, m.payload.clone()))
        .collect();
    let mut want: Vec<String> = svc[1400..].to_vec();
    want.push("session b".to_string());
    assert_eq!(
        kept.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(kept.last().unwrap().0, b.1);
    let ids: HashSet<u64> = kept.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), kept.len(), "an id given twice: {kept:?}");
    assert!(!ids.contains(&a.1), "acked {a:?} came back");
    let next = s.request("svc", "", b"next").unwrap().unwrap();
    assert_eq!(next.1, b.1 + 1);
    assert_eq!(drain_line(&server, "work"), work[2700..]);
    assert!(drain_line(&server, "probe0").is_empty());
}

/// What a line client saw of a send run: every answer in order.
enum Seen1 {
    Message,
    Timeout,
    Refused(String),
}

/// Reads one answer of the line door: a message, `*`, or `- REASON`;
/// `None` when the server closed the connection (a read timeout fails).
fn read_answer(r: &mut impl BufRead) -> Option<Seen1> {
    let mut head = String::new();
    match r.read_line(&mut head) {
        Ok(0) => return None,
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading an answer: {e}"),
    }
    if head == "*\r\n" {
        return Some(Seen1::Timeout);
    }
    if let Some(reason) = head.strip_prefix("- ") {
        return Some(Seen1::Refused(reason.trim_end().to_string()));
    }
    assert!(head.starts_with("> "), "not an answer: {head:?}");
    let len: usize = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = vec![0u8; len + 2];
    match r.read_exact(&mut body) {
        Ok(()) => Some(Seen1::Message),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(e) => panic!("reading a body: {e}"),
    }
}

#[test]
fn a_failing_write_on_the_line_door_answers_store_unavailable_and_the_server_serves_on() {
    let dir = TempDir::new("durable-full-line");
    let path = dir.path().to_str().unwrap();
    // Files may not grow past 256 KiB (in 512-byte blocks). The server
    // catches SIGXFSZ itself (it is not ignored here), so a write past the
    // limit fails (EFBIG), as on a full disk, instead of ending it.
    let args = ["--data-dir", path, "--fsync", "always"];
    let mut server = Server::start_in_shell(&args, Some("ulimit -f 512"));
    let body = "x".repeat(4000);
    let mut run = Vec::new();
    for _ in 0..16 {
        run.extend_from_slice(format!("> 4000 3600 big\r\n{body}\r\n").as_bytes());
    }
    // The sends are taken again at once: the log grows, the live data not.
    run.extend_from_slice("< 0 big\r\n".repeat(16).as_bytes());
    let mut closed = 0;
    let mut refused = None;
    let mut runs = 0;
    // A connection sends runs until an answer is refused. The write that
    // fails closes the connections whose answers waited for it, unanswered;
    // for a moment after, the store refuses sends: `- store unavailable`
    // on a connection of its own. (Should that moment have passed before
    // the next send, the log grows to the limit again: at most 40 runs of
    // 128 KiB each.)
    'conns: while refused.is_none() {
        let mut s = common::connect(server.line());
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        loop {
            assert!(runs < 400, "{runs} runs, {closed} closed, nothing refused");
            runs += 1;
            if let Err(e) = std::io::Write::write_all(&mut s, &run) {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ),
                    "{e}"
                );
                closed += 1;
                continue 'conns;
            }
            // A `>` is answered only when refused; each `<` is answered.
            let mut takes = 0;
            while takes < 16 {
                match read_answer(&mut r) {
                    None => {
                        closed += 1;
                        continue 'conns;
                    }
                    Some(Seen1::Refused(why)) => refused = Some(why),
                    Some(Seen1::Message | Seen1::Timeout) => takes += 1,
                }
            }
            if refused.is_some() {
                // The refused connection stays open and is served.
                common::send(&mut s, b"< 0 nothing.here\r\n");
                assert!(matches!(read_answer(&mut r), Some(Seen1::Timeout)));
                break 'conns;
            }
        }
    }
    eprintln!("{runs} runs; {closed} connections closed unanswered; then - {refused:?}");
    assert_eq!(refused.as_deref(), Some("store unavailable"));
    assert!(closed >= 1, "the write that failed closed no connection");
    assert!(server.alive());
    // Everything else is served: a publication reaches its subscriber, a
    // message handed to a waiting receiver (never queued, never
    // recorded) reaches it.
    let mut sub = line(&server);
    sub.subscribe("news").unwrap();
    sub.sync().unwrap();
    let mut publ = line(&server);
    publ.publish("news", None, b"still here").unwrap();
    match sub.next_event().unwrap() {
        switchboard::client::Event::Publication(p) => assert_eq!(&p.body[..], b"still here"),
        other => panic!("{other:?}"),
    }
    let mut receiver = line(&server);
    let waiting = thread::spawn(move || receiver.ready(10, &["direct"]).unwrap());
    let mut stats = common::Stats::open(server.bus());
    stats.wait_for("a receiver waits", |v| {
        common::stat(v, "queues.waiting") == 1
    });
    let mut sender = line(&server);
    sender.send(b"handed over", 10, "direct", None).unwrap();
    let m = waiting.join().unwrap().expect("the message handed over");
    assert_eq!(&m.body[..], b"handed over");
    let stats = common::Stats::open(server.bus()).get();
    assert!(
        common::stat(&stats["connections"]["closed_by"], "store_failed") >= 1,
        "{stats}"
    );
    assert!(server.terminate().success());
}

/// The server's store writer thread (named `store`), stopped with ptrace
/// while this lives: a disk that does not keep up, without a slow disk.
/// Only the thread that stopped it may let it go, so a test creates and
/// drops it on its own thread (a tracer that ends lets its tracee go too).
struct StoppedWriter {
    tid: i32,
}

mod sys {
    use std::ffi::{c_int, c_long};

    pub const PTRACE_DETACH: c_int = 17;
    pub const PTRACE_SEIZE: c_int = 0x4206;
    pub const PTRACE_INTERRUPT: c_int = 0x4207;
    /// `__WALL`: wait for a thread that is not a child.
    pub const WALL: c_int = 0x4000_0000;

    extern "C" {
        pub fn ptrace(request: c_int, ...) -> c_long;
        pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    }
}

impl StoppedWriter {
    /// The writer's thread id. A thread names itself once it runs, so the
    /// name is awaited (up to 10 s).
    fn writer_tid(server: &Server) -> i32 {
        let tasks = format!("/proc/{}/task", server.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut names = Vec::new();
            for task in std::fs::read_dir(&tasks).unwrap() {
                let task = task.unwrap().path();
                let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
                    continue; // a thread that ended meanwhile
                };
                if name.trim() == "store" {
                    let tid = task.file_name().unwrap().to_str().unwrap();
                    return tid.parse().unwrap();
                }
                names.push(name);
            }
            assert!(
                Instant::now() < deadline,
                "no thread named store in {tasks}: {names:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(server: &Server) -> StoppedWriter {
        let tid = Self::writer_tid(server);
        let null = std::ptr::null_mut::<std::ffi::c_void>();
        // SAFETY: plain system calls on a thread of our own child process.
        unsafe {
            assert_eq!(
                sys::ptrace(sys::PTRACE_SEIZE, tid, null, null),
                0,
                "ptrace(PTRACE_SEIZE): {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(sys::ptrace(sys::PTRACE_INTERRUPT, tid, null, null), 0);
            let mut status = 0;
            assert_eq!(sys::waitpid(tid, &mut status, sys::WALL), tid);
        }
        StoppedWriter { tid }
    }
}

impl Drop for StoppedWriter {
    fn drop(&mut self) {
        let null = std::ptr::null_mut::<std::ffi::c_void>();
        // SAFETY: as above; the thread is in a ptrace stop.
        unsafe { sys::ptrace(sys::PTRACE_DETACH, self.tid, null, 0usize) };
    }
}

/// A disk slower than the input (docs/durability.md): once more than
/// 256 MiB of records wait for the writer, the loop reads no input, says so
/// in the log, and reads again once the writer has caught up. The writer
/// thread is stopped (ptrace) while a connection sends 320 MiB.
#[test]
fn a_writer_far_behind_holds_input_back_until_it_catches_up() {
    const MIB: usize = 320;
    let dir = TempDir::new("durable-behind");
    let sock = TempDir::new("durable-behind-socket");
    let server = Server::start(&[
        "--bus-listen",
        "off",
        "--line-unix",
        sock.path().join("line.sock").to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--log-level",
        "info",
        "--max-queued-bytes",
        "1073741824",
        "--max-queued-bytes-per-address",
        "1073741824",
    ]);
    let writer = StoppedWriter::stop(&server);
    let body = "x".repeat(64 * 1024);
    let run = format!("> 65536 3600 far\r\n{body}\r\n").repeat(16);
    // A Unix socket: a stream that nobody reads sends no probes, so the
    // server learns of nothing new on it and must read it again of itself.
    let mut s = std::os::unix::net::UnixStream::connect(server.addr("line-unix")).unwrap();
    let sender = thread::spawn(move || {
        for _ in 0..MIB {
            std::io::Write::write_all(&mut s, run.as_bytes()).unwrap();
        }
        s
    });
    // Past 256 MiB the loop stops reading; the 64 MiB left are more than
    // the sockets' buffers hold, so the sender cannot be done.
    server.wait_log("input waits until it is back below 128 MiB");
    assert!(
        !sender.is_finished(),
        "all {MIB} MiB were read while the writer was stopped"
    );
    // The loop woken for something else (two reloads; the second is logged
    // once the first wake-up has been handled) still holds input back.
    for n in 1..=2 {
        server.signal(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.stderr_text().matches("reload done").count() < n {
            assert!(Instant::now() < deadline, "reload {n} not logged");
            thread::sleep(Duration::from_millis(20));
        }
    }
    let log = server.stderr_text();
    assert!(
        !log.contains("caught up"),
        "input read again while behind: {log}"
    );
    assert!(!sender.is_finished());
    drop(writer);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sender.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the sender is still blocked 60 s after the writer went on: its input was not read again"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let _s = sender.join().unwrap();
    server.wait_log("store: the writer caught up: reading input again");
    let got = take_line(&server, "far", MIB * 16);
    assert!(got.iter().all(|b| b.len() == 64 * 1024));
    assert!(drain_line(&server, "far").is_empty());
}

/// At shutdown the store is written and synced first, then the answers held
/// for it (`--fsync always`) go out. The writer is stopped when SIGINT
/// comes, so the answer is still held when the shutdown begins; it is let
/// go once the shutdown has begun, and the message is there after a
/// restart.
#[test]
fn an_answer_held_for_the_disk_goes_out_at_shutdown_once_synced() {
    let dir = TempDir::new("durable-held-at-shutdown");
    let args = [
        "--bus-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--fsync",
        "always",
        "--log-level",
        "info",
    ];
    let mut server = Server::start(&args);
    let writer = StoppedWriter::stop(&server);
    let mut s = common::connect(server.line());
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    // The `*` waits for the send's batch to be durable.
    common::send(&mut s, b"> 5 3600 kept\r\nhello\r\n< 0 barrier\r\n");
    // Both commands are read and run before the signal comes.
    common::Stats::open(server.bus()).wait_for("the send is queued", |v| {
        common::stat(v, "queues.queued") == 1
    });
    server.signal(2);
    server.wait_log("signal received: shutting down");
    drop(writer);
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    assert_eq!(
        answer, "*\r\n",
        "the held answer did not go out at shutdown"
    );
    assert!(common::read_to_close(&mut r).is_empty());
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    let again = Server::start(&args);
    assert_eq!(take_line(&again, "kept", 1), ["hello"]);
}
