//! Queue limits and request deadlines against the real server: a send over
//! `--max-queued-bytes` is refused with `- queue full` and the connection
//! stays usable; stalled request bodies are closed by `--request-timeout`.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::TcpStream;

use common::{connect, line_sync, read_exact_n, read_to_close, send, Server};

fn stats(server: &Server) -> serde_json::Value {
    common::Stats::open(server.bus()).get()
}

#[test]
fn a_full_queue_refuses_sends_and_the_connection_stays() {
    // Each message counts its body + 64: two 36-byte bodies fit in 200.
    let server = Server::start(&[
        "--max-queued-bytes-per-address",
        "200",
        "--max-queued-bytes",
        "300",
    ]);
    let mut c = connect(server.line());
    let body = "x".repeat(36);
    for _ in 0..2 {
        send(&mut c, format!("> 36 60 jobs\r\n{body}\r\n").as_bytes());
    }
    line_sync(&mut c, "a");
    // The third one is over the address' limit.
    send(&mut c, format!("> 36 60 jobs\r\n{body}\r\n").as_bytes());
    assert_eq!(read_exact_n(&mut c, 14), b"- queue full\r\n");
    // Another address still has room under the total, once; then not.
    send(&mut c, format!("> 36 60 other\r\n{body}\r\n").as_bytes());
    line_sync(&mut c, "b");
    send(&mut c, format!("> 36 60 other\r\n{body}\r\n").as_bytes());
    assert_eq!(read_exact_n(&mut c, 14), b"- queue full\r\n");
    // A query over the limit is refused the same way and leaves no wait.
    send(&mut c, format!("? 36 60 jobs\r\n{body}\r\n").as_bytes());
    assert_eq!(read_exact_n(&mut c, 14), b"- queue full\r\n");
    // The connection still works: take a queued message.
    send(&mut c, b"< 5 jobs\r\n");
    let want = format!("> 36 60 jobs\r\n{body}\r\n");
    assert_eq!(read_exact_n(&mut c, want.len()), want.as_bytes());
    let s = stats(&server);
    assert_eq!(s["queues"]["full"], 3, "{s}");
    assert_eq!(s["queues"]["queued"], 2, "{s}");
    assert_eq!(s["queues"]["waiting"], 0, "{s}");
    assert_eq!(s["queues"]["bytes"], 200, "{s}");
}

#[test]
fn stalled_http_bodies_are_closed_by_the_request_timeout() {
    let server = Server::start(&["--request-timeout", "1"]);
    let heads: [&[u8]; 4] = [
        // A Content-Length body that never comes.
        b"POST /msgbus/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n",
        // The same, after 100-continue.
        b"POST /msgbus/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n",
        // A chunked body that stops after one chunk.
        b"POST /msgbus/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n",
        // A chunk size line, then silence inside the chunk.
        b"POST /msgbus/a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
    ];
    let mut conns: Vec<TcpStream> = heads
        .iter()
        .map(|h| {
            let mut c = connect(server.bus());
            send(&mut c, h);
            c
        })
        .collect();
    // A connection that keeps completing requests is not closed.
    let mut busy = connect(server.line());
    for c in &mut conns {
        // The limit is 1 s, checked by deadline: the socket's 10 s read
        // timeout is far more than enough, and a server that never closes
        // fails here. Each gets a 408 first (after the 100 Continue the
        // second asked for).
        let answer = String::from_utf8_lossy(&read_to_close(c)).into_owned();
        let answer = answer
            .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
            .unwrap_or(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer:?}"
        );
    }
    line_sync(&mut busy, "alive");
    let s = stats(&server);
    assert_eq!(s["connections"]["closed_by"]["request_timeout"], 4, "{s}");
}

#[test]
fn a_request_timeout_of_zero_closes_nothing() {
    let server = Server::start(&["--request-timeout", "0"]);
    let mut stalled = connect(server.line());
    send(&mut stalled, b"> 5 60 a\r\nhe");
    // A second connection stalls and gets its deadline: nothing may close
    // the first one while the second is served.
    let mut c = connect(server.line());
    send(&mut c, b"< 2 nothing\r\n");
    assert_eq!(read_exact_n(&mut c, 3), b"*\r\n");
    send(&mut stalled, b"llo\r\n");
    line_sync(&mut stalled, "z");
    let s = stats(&server);
    assert_eq!(s["connections"]["closed_by"]["request_timeout"], 0, "{s}");
}
