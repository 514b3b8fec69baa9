//! 10,000 blocking transfers of the message-switch API parked at once in
//! the server's one thread, all answered when their messages arrive.
//!
//! Prints the server's resident memory and thread count while they wait
//! (`cargo test --release --test switch_scale -- --nocapture`). The
//! assertions are functional (every transfer answered with its queue's
//! message, one thread, memory per parked transfer bounded), never about
//! timing; deadlines only stop a hung test.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, send, Server};
use serde_json::{json, Value};

/// Parked transfers.
const WAITERS: usize = 10_000;
/// Queues they wait on (each waiter names one).
const QUEUES: usize = 100;
const PATIENCE: Duration = Duration::from_secs(60);

/// Connects waiter `i`: logs in and sends its transfer (on queue `i %
/// QUEUES`, 300 s).
fn waiter(addr: &str, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect a waiter");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let body = json!({"timeout": 300, "queues": [format!("q{}", i % QUEUES)]}).to_string();
    let mut both = request("GET", &format!("/login/w{i}"), b"");
    both.extend_from_slice(&request("POST", "/transfer", body.as_bytes()));
    s.write_all(&both).expect("write a transfer");
    s
}

fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Reads one response with a Content-Length from `s`, keeping what
/// follows in `buf`; returns its status and body.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: ")?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if buf.len() >= end + 4 + len {
                let status = head
                    .get(9..12)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("no status in {head:?}"));
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return (status, body);
            }
        }
        let n = s.read(&mut chunk).expect("read a response");
        assert!(n > 0, "the server closed a connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A field of `/proc/PID/status` (a count, or KiB).
fn proc_status(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

fn parked(stats: &mut TcpStream, buf: &mut Vec<u8>) -> u64 {
    send(stats, b"GET /msgbus-stats HTTP/1.1\r\nHost: t\r\n\r\n");
    let (status, body) = read_response(stats, buf);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).expect("stats JSON");
    v["switch"]["parked_transfers"]
        .as_u64()
        .expect("parked_transfers")
}

#[test]
fn ten_thousand_parked_transfers_in_one_thread() {
    let server = Server::start(&[
        "--switch-listen",
        "127.0.0.1:0",
        "--max-connections",
        "15000",
    ]);
    let addr = server.addr("switch").to_string();
    let mut producer = connect(&addr);
    let mut pbuf = Vec::new();
    let mut setup = request("GET", "/login/producer", b"");
    for q in 0..QUEUES {
        setup.extend_from_slice(&request("GET", &format!("/persistent/q{q}"), b""));
    }
    send(&mut producer, &setup);
    for _ in 0..=QUEUES {
        assert_eq!(read_response(&mut producer, &mut pbuf).0, 200);
    }
    let mut stats = connect(server.bus());
    let mut sbuf = Vec::new();
    let rss_before = server.rss_kib();

    let mut waiters: Vec<(TcpStream, Vec<u8>)> = (0..WAITERS)
        .map(|i| (waiter(&addr, i), Vec::new()))
        .collect();
    for (s, buf) in &mut waiters {
        let (status, body) = read_response(s, buf);
        assert_eq!((status, body.as_slice()), (200, &b""[..]), "login");
    }
    let deadline = Instant::now() + PATIENCE;
    while parked(&mut stats, &mut sbuf) < WAITERS as u64 {
        assert!(Instant::now() < deadline, "the transfers did not all park");
        // Re-checks a count the server changes asynchronously; no ordering
        // depends on this pause.
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.pid();
    let rss = server.rss_kib();
    let threads = proc_status(pid, "Threads");
    let per_waiter = (rss.saturating_sub(rss_before) * 1024) / WAITERS as u64;
    println!(
        "{WAITERS} parked transfers: server RSS {rss} KiB ({rss_before} KiB before, \
         {per_waiter} bytes per parked transfer and its connection), {threads} thread(s)"
    );
    assert_eq!(threads, 1, "the server runs one thread");
    assert!(
        per_waiter < 16 * 1024,
        "{per_waiter} bytes per parked transfer"
    );
    // Nothing was answered before its message: a message to each queue.
    let mut sends = Vec::new();
    for q in 0..QUEUES {
        sends.extend_from_slice(&request(
            "POST",
            &format!("/request/q{q}/"),
            format!("for q{q}").as_bytes(),
        ));
    }
    send(&mut producer, &sends);
    for q in 0..QUEUES {
        let (status, body) = read_response(&mut producer, &mut pbuf);
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).expect("an id");
        assert_eq!(v, json!([[format!("q{q}"), 0]]));
    }
    for (i, (s, buf)) in waiters.iter_mut().enumerate() {
        let (status, body) = read_response(s, buf);
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).expect("a transfer");
        let q = format!("q{}", i % QUEUES);
        assert_eq!(
            v,
            json!({"messages": [[[q.clone(), 0], {"payload": format!("for {q}"), "kind": ["Request", ""]}]],
                   "next": "0"}),
            "waiter {i}"
        );
    }
    assert_eq!(parked(&mut stats, &mut sbuf), 0);
}
