//! Starting and stopping the server: SIGINT and its 2-second drain of
//! queued output, and the start-up failures that stop it before it serves
//! (an address in use, a live server on the Unix socket path), each with its
//! message and exit status.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use common::{connect, line_sync, read_to_close, send, stat, Server, Stats, TempDir};

const SERVER: &str = env!("CARGO_BIN_EXE_switchboard");

/// Publishes `count` messages of `size` bytes (body byte `i` is `i % 251`)
/// to `channel` on a fresh line connection, and returns once the server has
/// run them all (so queued them to every subscriber).
fn publish_many(server: &Server, channel: &str, count: usize, size: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut frame = format!("! {size} {channel}\r\n").into_bytes();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(b"\r\n");
    let mut publisher = connect(server.line());
    for _ in 0..count {
        send(&mut publisher, &frame);
    }
    line_sync(&mut publisher, "publisher");
    let mut delivered = format!("! {size} {channel} application/octet-stream\r\n").into_bytes();
    delivered.extend_from_slice(&body);
    delivered.extend_from_slice(b"\r\n");
    delivered.repeat(count)
}

#[test]
fn sigint_drains_queued_output_then_exits_zero() {
    let dir = TempDir::new("sigint");
    let path = dir.path().join("line.sock");
    let p = path.to_str().expect("a UTF-8 temp path");
    let mut server = Server::start(&["--line-unix", p, "--backlog-limit", "100000000"]);
    let mut stats = Stats::open(server.bus());
    let mut sub = connect(server.line());
    send(&mut sub, b"+ big\r\n");
    line_sync(&mut sub, "sub");
    // 32 MiB for a subscriber that has not read yet: far more than the
    // sockets hold, so most of it waits in the server's queue.
    let want = publish_many(&server, "big", 32, 1024 * 1024);
    let written = stat(&stats.get(), "bytes_out");
    assert!(
        written < want.len() as u64 / 2,
        "the server wrote {written} of {} bytes: too little was left queued",
        want.len()
    );
    // SIGINT first, then the subscriber starts reading: everything queued
    // before the signal arrives, then the end of the stream.
    server.signal(2);
    let got = read_to_close(&mut sub);
    assert_eq!(got.len(), want.len(), "bytes received after SIGINT");
    assert!(got == want, "the drained bytes differ from what was queued");
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status after SIGINT: {status:?}");
    assert!(!path.exists(), "the socket file was left behind");
}

#[test]
fn sigint_gives_up_on_a_subscriber_that_never_reads() {
    let mut server = Server::start(&["--backlog-limit", "100000000"]);
    let mut sub = connect(server.line());
    send(&mut sub, b"+ big\r\n");
    line_sync(&mut sub, "sub");
    let want = publish_many(&server, "big", 32, 1024 * 1024);
    // The subscriber reads nothing: the drain gives up (after 2 s) and the
    // server exits 0 by itself.
    let status = server.interrupt();
    assert!(status.success(), "exit status after SIGINT: {status:?}");
    // What the subscriber can still read is a prefix of what was queued,
    // then the end.
    let got = read_to_close(&mut sub);
    assert!(got.len() < want.len(), "all {} bytes arrived", got.len());
    assert!(
        want.starts_with(&got),
        "the bytes that arrived are not a prefix"
    );
}

/// Runs the server with `args` (and ephemeral line and bus doors unless
/// `args` names them) and expects it to fail at start with exit status 1,
/// `message` as its last stderr line (and nowhere else) and no door
/// announced.
fn fails_to_start(args: &[&str], message: &str) {
    let mut all: Vec<&str> = Vec::new();
    if !args.contains(&"--line-listen") {
        all.extend(["--line-listen", "127.0.0.1:0"]);
    }
    if !args.contains(&"--bus-listen") {
        all.extend(["--bus-listen", "127.0.0.1:0"]);
    }
    all.extend_from_slice(args);
    let out = Command::new(SERVER)
        .args(&all)
        .output()
        .expect("run switchboard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().last(), Some(message), "{args:?}: {stderr}");
    // Said once: not also as a log line before it.
    let what = message.trim_start_matches("switchboard: ");
    assert_eq!(stderr.matches(what).count(), 1, "{args:?}: {stderr}");
    assert!(!stdout.contains("listening"), "{args:?}: {stdout}");
}

#[test]
fn an_address_in_use_stops_the_server() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    for flag in ["--line-listen", "--bus-listen"] {
        fails_to_start(
            &[flag, &addr],
            &format!(
                "switchboard: {flag} {addr}: cannot listen: Address already in use (os error 98)"
            ),
        );
    }
}

#[test]
fn a_live_server_on_the_socket_path_stops_the_server() {
    let dir = TempDir::new("live");
    let path = dir.path().join("line.sock");
    let p = path.to_str().expect("a UTF-8 temp path");
    let live = UnixListener::bind(&path).expect("bind the socket path");
    fails_to_start(
        &["--line-unix", p],
        &format!("switchboard: --line-unix {p}: another server is listening there"),
    );
    // The other server's socket file is untouched: connecting to it still
    // reaches that listener (the server's own check connected once too).
    drop(UnixStream::connect(&path).expect("connect to the live socket"));
    let mut accepted = 0;
    live.set_nonblocking(true).expect("nonblocking");
    while live.accept().is_ok() {
        accepted += 1;
    }
    assert!(accepted >= 1, "the live listener got no connection");
}
