//! Connection limits: the server survives running out of file descriptors
//! (it backs off instead of spinning, and serves again once descriptors are
//! free), and `--max-connections` pauses accepting without refusing service
//! to the connections it holds.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{connect, line_sync, read_exact_n, read_to_close, send, Server};

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
    // One client that was accepted before the descriptors ran out.
    let mut early = connect(&addr);
    line_sync(&mut early, "early");
    // Far more clients than the server has descriptors for.
    let crowd = open_many(&addr, 120);
    std::thread::sleep(Duration::from_millis(300));
    // The accepted client is still served while accepts fail.
    send(&mut early, b"> 2 30 q\r\nhi\r\n< 5 q\r\n");
    assert_eq!(read_exact_n(&mut early, 14), b"> 2 30 q\r\nhi\r\n");
    drop(crowd);
    // Once descriptors are free again, new clients are accepted (after the
    // back-off) and served.
    let mut late = connect(&addr);
    line_sync(&mut late, "late");
    let mut again = connect(&addr);
    line_sync(&mut again, "again");
    // The server saw the descriptor shortage (and did not die of it).
    let mut http = connect(server.bus());
    send(&mut http, b"GET /msgbus-stats HTTP/1.0\r\n\r\n");
    let reply = String::from_utf8_lossy(&read_to_close(&mut http)).into_owned();
    let json = reply.split("\r\n\r\n").nth(1).expect("a body");
    let stats: serde_json::Value = serde_json::from_str(json).expect("JSON");
    assert!(
        stats["connections"]["accept_errors"].as_u64().unwrap_or(0) > 0,
        "no accept error seen: {json}"
    );
}

#[test]
fn max_connections_pauses_accepting_and_resumes() {
    let server = Server::start(&["--bus-listen", "off", "--max-connections", "3"]);
    let addr = server.line().to_string();
    let mut held: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = connect(&addr);
            line_sync(&mut s, &format!("h{i}"));
            s
        })
        .collect();
    // A fourth client connects into the backlog but is not served yet.
    let mut waiting = connect(&addr);
    send(&mut waiting, b"+ w\r\n! 1 w\r\nx\r\n");
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        std::io::Read::read(&mut waiting, &mut buf).is_err(),
        "a client over --max-connections must wait"
    );
    // The held ones are served meanwhile.
    line_sync(&mut held[0], "still");
    // Free one slot: the waiting client is accepted and its commands run.
    held.pop();
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let want = b"! 1 w application/octet-stream\r\nx\r\n";
    assert_eq!(read_exact_n(&mut waiting, want.len()), want);
}

/// A client that pipelines requests and never reads the answers is not read
/// from once its unsent answers pass the backlog limit: the server's memory
/// stays bounded, other clients are served, and once the client reads, every
/// answer arrives.
#[test]
fn a_client_that_does_not_read_its_answers_is_held_back() {
    let server = Server::start(&["--backlog-limit", "100000"]);
    let before = server.rss_kib();
    let mut greedy = connect(server.bus());
    let request = b"GET /msgbus-stats HTTP/1.1\r\nHost: x\r\n\r\n";
    let count = 20_000;
    // Write from a thread: the server stops reading, so the writes block.
    let mut writer = greedy.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let all: Vec<u8> = request.repeat(count);
        std::io::Write::write_all(&mut writer, &all).unwrap();
    });
    std::thread::sleep(Duration::from_millis(1500));
    let grown = server.rss_kib().saturating_sub(before);
    // 20,000 answers of about 700 bytes would be 14 MB queued; the backlog
    // limit holds the queue near 100 kB (the kernel's socket buffers hold the rest).
    assert!(grown < 8 * 1024, "server grew by {grown} KiB");
    let mut other = connect(server.line());
    line_sync(&mut other, "other");
    // Now read everything: every answer arrives.
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
}

/// `--request-timeout`: a connection that sits on an incomplete request is
/// closed; an idle one, a subscriber and a steady publisher are not.
#[test]
fn stalled_requests_are_closed_idle_connections_are_not() {
    let server = Server::start(&["--request-timeout", "1"]);
    let mut stalled_http = connect(server.bus());
    send(&mut stalled_http, b"GET /msgbus/x HTTP/1.1\r\nHost: x\r\n");
    let mut stalled_line = connect(server.line());
    send(&mut stalled_line, b"> 10 30 q\r\nonly half");
    let mut idle = connect(server.line());
    let mut subscriber = connect(server.bus());
    send(
        &mut subscriber,
        b"GET /msgbus/news HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    common::read_until(&mut subscriber, b"--00MsgBus00\r\n");
    // A publisher that keeps sending for longer than the timeout, always
    // with a partial command at the end of what has arrived.
    let mut publisher = connect(server.line());
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        send(&mut publisher, b"! 5 news text/plain\r\nhel");
        std::thread::sleep(Duration::from_millis(50));
        send(&mut publisher, b"lo\r\n");
        n += 1;
    }
    // Both stalled connections were closed by the server.
    assert!(read_to_close(&mut stalled_http).is_empty());
    assert!(read_to_close(&mut stalled_line).is_empty());
    // The others still work: the subscriber got every publication.
    let part = b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n";
    let mut got = Vec::new();
    while got.windows(part.len()).filter(|w| *w == part).count() < n {
        let mut buf = [0u8; 4096];
        let k = std::io::Read::read(&mut subscriber, &mut buf).expect("subscriber read");
        assert!(k > 0, "subscriber closed");
        got.extend_from_slice(&buf[..k]);
    }
    line_sync(&mut idle, "idle");
    line_sync(&mut publisher, "publisher");
}
