//! Connection limits: the server survives running out of file descriptors
//! (it backs off instead of spinning, and serves again once descriptors are
//! free), and `--max-connections` pauses accepting without refusing service
//! to the connections it holds.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{
    assert_nothing_pending, connect, line_sync, read_exact_n, read_to_close, read_until, send,
    stat, Server, Stats,
};

/// Opens connections until `n` are open (connects succeed into the listen
/// backlog even when the server does not accept them).
fn open_many(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect()
}

#[test]
fn out_of_descriptors_backs_off_and_recovers() {
    let server = Server::start_limited(&[], Some(48));
    let addr = server.line().to_string();
    // A line client and a stats connection accepted before the descriptors
    // run out.
    let mut early = connect(&addr);
    line_sync(&mut early, "early");
    let mut stats = Stats::open(server.bus());
    assert_eq!(stat(&stats.get(), "connections.accept_errors"), 0);
    // Far more clients than the server has descriptors for.
    let crowd = open_many(&addr, 120);
    // Accepting fails (the server counts it) while the accepted client is
    // still served, round after round.
    let mut round = 0;
    stats.wait_for("an accept error", |v| {
        round += 1;
        send(&mut early, b"> 2 30 q\r\nhi\r\n< 5 q\r\n");
        assert_eq!(
            read_exact_n(&mut early, 14),
            b"> 2 30 q\r\nhi\r\n",
            "round {round}"
        );
        stat(v, "connections.accept_errors") > 0
    });
    line_sync(&mut early, "during");
    drop(crowd);
    // Once descriptors are free again, new clients are accepted (after the
    // back-off) and served.
    let mut late = connect(&addr);
    line_sync(&mut late, "late");
    let mut again = connect(&addr);
    line_sync(&mut again, "again");
    assert!(stat(&stats.get(), "connections.accept_errors") > 0);
}

#[test]
fn max_connections_pauses_accepting_and_resumes() {
    let server = Server::start(&["--max-connections", "3"]);
    let addr = server.line().to_string();
    // Three connections: two line clients and a keep-alive stats client.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = connect(&addr);
            line_sync(&mut s, &format!("h{i}"));
            s
        })
        .collect();
    let mut stats = Stats::open(server.bus());
    assert_eq!(stat(&stats.get(), "connections.accepted"), 3);
    // A fourth client connects into the backlog but is not served.
    let mut waiting = connect(&addr);
    send(&mut waiting, b"+ w\r\n! 1 w\r\nx\r\n");
    // Two round trips on a held connection, both begun after the fourth
    // connected: had the server accepted it, it would have read and run its
    // commands by the second.
    line_sync(&mut held[0], "still");
    line_sync(&mut held[0], "still.2");
    assert_eq!(
        stat(&stats.get(), "connections.accepted"),
        3,
        "a client over --max-connections was accepted"
    );
    assert_nothing_pending(&waiting, "a client over --max-connections");
    // Free one slot: the waiting client is accepted and its commands run.
    held.pop();
    let want = b"! 1 w application/octet-stream\r\nx\r\n";
    assert_eq!(read_exact_n(&mut waiting, want.len()), want);
    assert_eq!(stat(&stats.get(), "connections.accepted"), 4);
}

/// A client that pipelines requests and never reads the answers is not read
/// from once its unsent answers pass the backlog limit: the server stops
/// reading it before it has read every request, its memory stays bounded,
/// other clients are served, and once the client reads, every answer
/// arrives.
#[test]
fn a_client_that_does_not_read_its_answers_is_held_back() {
    let server = Server::start(&["--backlog-limit", "100000"]);
    let mut stats = Stats::open(server.bus());
    let before = server.rss_kib();
    let bytes_in_before = stat(&stats.get(), "bytes_in");
    let mut greedy = connect(server.bus());
    let request = b"GET /msgbus-stats HTTP/1.1\r\nHost: x\r\n\r\n";
    let count = 20_000;
    let all: Vec<u8> = request.repeat(count);
    // Write until the kernel takes no more, then until the server has
    // stopped reading (its stats show no more bytes read) and the kernel
    // still takes nothing: the server then holds back for good.
    greedy.set_nonblocking(true).unwrap();
    let mut off = 0;
    let write_more = |greedy: &mut TcpStream, off: &mut usize| loop {
        match std::io::Write::write(greedy, &all[*off..]) {
            Ok(n) => *off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("write the requests: {e}"),
        }
        if *off == all.len() {
            return;
        }
    };
    let settled = loop {
        write_more(&mut greedy, &mut off);
        let settled = stats.wait_until_reading_stops();
        let before_retry = off;
        write_more(&mut greedy, &mut off);
        if off == before_retry || off == all.len() {
            break settled;
        }
    };
    greedy.set_nonblocking(false).unwrap();
    let read_of_greedy = stat(&settled, "bytes_in") - bytes_in_before;
    let written = all.len() as u64;
    eprintln!("the server read {read_of_greedy} of {written} bytes of requests");
    assert!(
        read_of_greedy < written,
        "the server read all {written} bytes of requests whose answers nobody read"
    );
    // 20,000 answers of about 700 bytes would be 14 MB queued; the backlog
    // limit holds the queue near 100 kB (the kernel's socket buffers hold the rest).
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < 8 * 1024, "server grew by {grown} KiB");
    let mut other = connect(server.line());
    line_sync(&mut other, "other");
    // Now read everything (and write the rest): every answer arrives.
    let mut writer = greedy.try_clone().unwrap();
    let rest = all[off..].to_vec();
    let sender = std::thread::spawn(move || {
        std::io::Write::write_all(&mut writer, &rest).expect("write the requests");
    });
    let mut got = 0usize;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while got < count {
        let n = std::io::Read::read(&mut greedy, &mut buf).expect("read");
        assert!(n > 0, "closed after {got} answers");
        seen.extend_from_slice(&buf[..n]);
        got += seen
            .windows(15)
            .filter(|w| *w == b"HTTP/1.1 200 OK")
            .count();
        let keep = seen.len().saturating_sub(14);
        seen.drain(..keep);
    }
    sender.join().unwrap();
    assert_eq!(got, count);
    // At no time did the server hold much more than the limit.
    let peak = server.peak_rss_kib().saturating_sub(before);
    assert!(peak < 8 * 1024, "server peak grew by {peak} KiB");
}

/// `--request-timeout`: a connection that sits on an incomplete request
/// (an HTTP head cut short, a line command cut in its body or in its line)
/// is closed and counted as `request_timeout`, the HTTP one after a `408`; an idle connection, a
/// subscriber and a publisher that keeps completing its commands are not.
#[test]
fn stalled_requests_are_closed_idle_connections_are_not() {
    let server = Server::start(&["--request-timeout", "1"]);
    let mut stats = Stats::open(server.bus());
    let mut stalled_http = connect(server.bus());
    send(&mut stalled_http, b"GET /msgbus/x HTTP/1.1\r\nHost: x\r\n");
    let mut stalled_body = connect(server.line());
    send(&mut stalled_body, b"> 10 30 q\r\nonly half");
    let mut stalled_line = connect(server.line());
    send(&mut stalled_line, b"> 3 30 q");
    let mut idle = connect(server.line());
    let mut subscriber = connect(server.bus());
    send(
        &mut subscriber,
        b"GET /msgbus/news HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    common::read_until(&mut subscriber, b"--00MsgBus00\r\n");
    // A publisher that keeps sending for as long as the test runs, always
    // with a partial command at the end of what has arrived. The pause
    // between the halves is the client's pace, not a wait for the server.
    let mut publisher = connect(server.line());
    let mut writer = publisher.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pacing = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                send(&mut writer, b"! 5 news text/plain\r\nhel");
                std::thread::sleep(Duration::from_millis(50));
                send(&mut writer, b"lo\r\n");
                n += 1;
            }
            n
        }
    });
    // A stalled HTTP request is answered 408, then closed; the idle
    // keep-alive connection of `stats` is left alone (it is used below).
    let answer = String::from_utf8_lossy(&read_to_close(&mut stalled_http)).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "stalled HTTP head: {answer:?}"
    );
    assert!(answer.contains("Connection: close\r\n"), "{answer:?}");
    // Every stalled line connection is closed by the server, with nothing
    // said (the line protocol has no word for it).
    for (what, s) in [
        ("line body", &mut stalled_body),
        ("line command", &mut stalled_line),
    ] {
        assert_eq!(read_to_close(s), b"", "stalled {what}");
    }
    // One more stalled only now is closed too: by then the publisher has
    // gone on for more than a whole timeout.
    let mut late = connect(server.line());
    send(&mut late, b"< 5 q");
    assert_eq!(read_to_close(&mut late), b"", "stalled late line");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = pacing.join().expect("the publisher thread");
    let v = stats.get();
    assert_eq!(stat(&v, "connections.closed_by.request_timeout"), 4, "{v}");
    // The others still work: the subscriber got every publication.
    line_sync(&mut publisher, "publisher");
    let part = b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n";
    let mut got = Vec::new();
    while got.windows(part.len()).filter(|w| *w == part).count() < n {
        let mut buf = [0u8; 4096];
        let k = std::io::Read::read(&mut subscriber, &mut buf).expect("subscriber read");
        assert!(k > 0, "subscriber closed");
        got.extend_from_slice(&buf[..k]);
    }
    line_sync(&mut idle, "idle");
}

/// `--request-timeout 0` turns the timeout off: stalled requests stay open
/// and are answered once complete. A second server with a 2-second timeout
/// is the clock: when it has closed its own stalled connection, more than
/// two of the first server's once-a-second sweeps have passed since its
/// stalls began.
#[test]
fn request_timeout_zero_closes_nothing() {
    let off = Server::start(&["--request-timeout", "0"]);
    let witness = Server::start(&["--request-timeout", "2"]);
    let mut stalled_line = connect(off.line());
    send(&mut stalled_line, b"> 3 30 q");
    let mut stalled_body = connect(off.line());
    send(&mut stalled_body, b"> 10 30 r\r\nonly half");
    let mut stalled_http = connect(off.bus());
    send(&mut stalled_http, b"GET /nothere HTTP/1.1\r\nHost: x\r\n");
    let mut clock = connect(witness.line());
    send(&mut clock, b"> 3 30 q");
    assert_eq!(read_to_close(&mut clock), b"", "the witness's stalled line");
    // Each stalled request completes and is answered.
    send(&mut stalled_line, b"\r\nabc\r\n< 1 q\r\n");
    let want = b"> 3 30 q\r\nabc\r\n";
    assert_eq!(read_exact_n(&mut stalled_line, want.len()), want);
    send(&mut stalled_body, b"!\r\n< 1 r\r\n");
    let want = b"> 10 30 r\r\nonly half!\r\n";
    assert_eq!(read_exact_n(&mut stalled_body, want.len()), want);
    send(&mut stalled_http, b"\r\n");
    let head = common::read_until(&mut stalled_http, b"\r\n\r\n");
    assert!(
        head.starts_with(b"HTTP/1.1 404 Not Found\r\n"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let v = Stats::open(off.bus()).get();
    assert_eq!(stat(&v, "connections.closed_by.request_timeout"), 0, "{v}");
}

/// One message larger than the whole backlog limit still reaches a
/// subscriber with nothing queued: the limit bounds what waits behind a
/// frame, not one frame alone. A small message published after it is the
/// barrier: it arrives after the large one, or alone if that was dropped.
#[test]
fn a_message_over_the_backlog_limit_reaches_an_idle_subscriber() {
    let server = Server::start(&["--backlog-limit", "1000"]);
    let mut sub = connect(server.line());
    send(&mut sub, b"+ big\r\n");
    line_sync(&mut sub, "sub");
    // 5,000 bytes: above the limit and above the four times the limit a
    // subscriber whose socket takes everything may queue.
    let body = vec![b'b'; 5000];
    let mut publish = b"! 5000 big\r\n".to_vec();
    publish.extend_from_slice(&body);
    publish.extend_from_slice(b"\r\n! 5 big\r\nafter\r\n");
    let mut publ = connect(server.line());
    send(&mut publ, &publish);
    let mut want = b"! 5000 big application/octet-stream\r\n".to_vec();
    want.extend_from_slice(&body);
    want.extend_from_slice(b"\r\n! 5 big application/octet-stream\r\nafter\r\n");
    let got = read_until(&mut sub, b"after\r\n");
    assert_eq!(
        got.len(),
        want.len(),
        "the large message did not arrive whole"
    );
    assert_eq!(got, want);
}
