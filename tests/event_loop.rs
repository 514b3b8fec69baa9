//! The IO shell's loop seen from outside, over real sockets: it sleeps in
//! `poll` while nothing is due, comes back without a new event to input
//! left over when a connection's read budget for a turn ran out, and the
//! request-timeout clock of a connection follows what the connection did,
//! not what it once did.
//!
//! Nothing here waits on a clock for its ordering: the server's reading of
//! a partial command is proven by its `bytes_in` counter, and the time that
//! must pass is measured by connections the server itself times out.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use common::{
    connect, line_sync, read_exact_n, read_to_close, send, stat, Server, Stats, TempDir,
    STATS_REQUEST,
};

/// The loop's turn count (`/metrics`), over the keep-alive connection `s`.
fn turns(s: &mut TcpStream) -> u64 {
    send(s, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let (head_end, len) = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..i]).into_owned();
            assert!(head.starts_with("HTTP/1.1 200 "), "/metrics: {head:?}");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            break (i + 4, len);
        }
        let n = s.read(&mut buf).expect("read /metrics");
        assert!(n > 0, "the server closed the /metrics connection");
        got.extend_from_slice(&buf[..n]);
    };
    while got.len() < head_end + len {
        let n = s.read(&mut buf).expect("read /metrics");
        assert!(n > 0, "the server closed the /metrics connection");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), head_end + len, "more than one answer");
    let body = String::from_utf8_lossy(&got[head_end..]).into_owned();
    let name = "switchboard_loop_turn_duration_seconds_count ";
    body.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name:?} in /metrics"))
        .trim()
        .parse()
        .expect("a count of turns")
}

/// With nothing due (no timers, no output, no input left), the loop
/// sleeps in `poll` until the next event: each request on an otherwise
/// idle server costs a turn or two, not the thousands of a loop that polls
/// without waiting. Both with the heartbeat sweep (every 7.5 s by default:
/// a deadline that is never due during the test) and without it
/// (`--heartbeat 0`: no deadline at all).
#[test]
fn an_idle_server_sleeps_between_requests() {
    for args in [&[][..], &["--heartbeat", "0"][..]] {
        let server = Server::start(args);
        let mut s = connect(server.bus());
        let first = turns(&mut s);
        let rounds = 50;
        for _ in 0..rounds {
            turns(&mut s);
        }
        let last = turns(&mut s);
        let per_request = (last - first) as f64 / f64::from(rounds + 1);
        assert!(
            per_request <= 4.0,
            "{args:?}: {} turns for {} requests",
            last - first,
            rounds + 1
        );
    }
}

/// Fetches the stats page until the server has read `n` bytes besides the
/// stats requests since `mark` (a page fetched before those bytes were
/// sent): proof that a partial command sent alone was read alone.
fn wait_read(stats: &mut Stats, mark: &serde_json::Value, n: u64) {
    let base = stat(mark, "bytes_in");
    let own = STATS_REQUEST.len() as u64;
    let mut fetched = 0;
    stats.wait_for("the partial command read", |v| {
        fetched += 1;
        stat(v, "bytes_in") >= base + fetched * own + n
    });
}

/// The request timeout runs only while a connection holds an incomplete
/// command, from the last whole one it completed:
/// - `idle` held a partial command long enough to have a deadline, then
///   completed it: it is idle from then on and is never closed, however
///   long it stays idle (its deadline finds nothing incomplete, and no
///   later one is kept for it);
/// - `slow` completed one command and started another a second after its
///   first partial one, before its first deadline: it is closed one
///   timeout after that progress, at the deadline moved there.
///
/// The time that must pass is measured by connections that a server times
/// out: `witness`, a second server with a 1-second timeout, for the second
/// between `slow`'s two steps; on the server under test, `slow` itself
/// and then `clock`, each of which proves that a whole timeout has passed
/// since it was sent.
#[test]
fn the_request_timeout_counts_from_the_last_progress() {
    let server = Server::start(&["--request-timeout", "3"]);
    let witness = Server::start(&["--request-timeout", "1"]);
    let mut stats = Stats::open(server.bus());
    let partial = b"! 1 news\r\n";
    let mut idle = connect(server.line());
    let mark = stats.get();
    send(&mut idle, partial);
    wait_read(&mut stats, &mark, partial.len() as u64);
    send(&mut idle, b"x\r\n");
    line_sync(&mut idle, "idle");

    let mut slow = connect(server.line());
    let mark = stats.get();
    send(&mut slow, partial);
    wait_read(&mut stats, &mark, partial.len() as u64);
    let mut second = connect(witness.line());
    send(&mut second, partial);
    assert_eq!(read_to_close(&mut second), b"", "the witness's connection");
    send(&mut slow, b"x\r\n! 1 news\r\n");
    // Closed, with nothing said: one timeout after its progress, not
    // whenever a deadline computed from it comes (or never).
    assert_eq!(read_to_close(&mut slow), b"", "the slow connection");

    // `slow` was closed after `idle`'s first deadline; one more whole
    // timeout from now passes `idle`'s second deadline, if it had one.
    let mut clock = connect(server.line());
    send(&mut clock, b"! 1 clock\r\n");
    assert_eq!(read_to_close(&mut clock), b"", "the clock connection");
    line_sync(&mut idle, "idle-again");
    let v = stats.get();
    assert_eq!(stat(&v, "connections.closed_by.request_timeout"), 2, "{v}");
}

/// One turn reads at most 256 KiB from a connection (then the others get a
/// go); what is left is read in the next turns, which come at once,
/// without a new event: edge-triggered readiness reports no more for data
/// that was already there.
///
/// The input sits whole in the server's socket before the server reads
/// any of it: a Unix socket queues what the client writes on the server's
/// side (its send buffer, raised here, is what bounds it), and the
/// connection waits on a queue meanwhile (a waiting connection reads 64
/// KiB ahead, then stops). Its last command publishes to a channel that
/// another connection watches, so nothing is read from the Unix socket
/// (which would wake the server) before that message arrives. (With a
/// system limit on send buffers below what this sends, the client's write
/// waits for the server's reads, each of which then comes with an event;
/// the test still passes, and checks less.)
#[test]
fn input_beyond_a_turns_read_budget_is_read_without_a_new_event() {
    let dir = TempDir::new("budget");
    let path = dir.path().join("line.sock");
    let server = Server::start(&["--line-unix", path.to_str().unwrap()]);
    let mut watcher = connect(server.line());
    send(&mut watcher, b"+ done\r\n");
    line_sync(&mut watcher, "watcher");

    let s = UnixStream::connect(&path).expect("connect to the Unix socket");
    socket2::SockRef::from(&s)
        .set_send_buffer_size(4 << 20)
        .expect("SO_SNDBUF");
    let mut input = b"< 60 q\r\n".to_vec();
    let body = vec![b'x'; 1000];
    for _ in 0..1500 {
        input.extend_from_slice(b"! 1000 nobody\r\n");
        input.extend_from_slice(&body);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b"! 4 done\r\ndone\r\n");
    let mut writer = s.try_clone().unwrap();
    let writing = std::thread::spawn(move || send(&mut writer, &input));
    // The server has stopped reading it (waiting, its read-ahead full).
    Stats::open(server.bus()).wait_until_reading_stops();

    let mut sender = connect(server.line());
    send(&mut sender, b"> 1 30 q\r\nm\r\n");
    let want = b"! 4 done application/octet-stream\r\ndone\r\n";
    assert_eq!(read_exact_n(&mut watcher, want.len()), want);
    writing.join().expect("the writer");
    let mut s = s;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let want = b"> 1 30 q\r\nm\r\n";
    assert_eq!(read_exact_n(&mut s, want.len()), want);
}

/// The stats page's `bytes_out` counts what the loop wrote: at least the
/// answer of a round trip made between two fetches of the page.
#[test]
fn bytes_written_are_counted() {
    let server = Server::start(&[]);
    let mut stats = Stats::open(server.bus());
    let mut s = connect(server.line());
    let before = stat(&stats.get(), "bytes_out");
    line_sync(&mut s, "counted");
    let after = stat(&stats.get(), "bytes_out");
    let answer = "! 1 sync.counted application/octet-stream\r\nx\r\n".len() as u64;
    assert!(
        after >= before + answer,
        "bytes_out went from {before} to {after}"
    );
}
