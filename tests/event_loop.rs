//! The IO shell's loop seen from outside, over real sockets: it sleeps in
//! `poll` while nothing is due, comes back without a new event to input
//! left over when a connection's read budget for a turn ran out, and the
//! request-timeout clock of a connection follows what the connection did,
//! not what it once did. The read path: what a lingering, a waiting and a
//! new connection get read and counted, how much a turn reads, accepting
//! paused while out of descriptors, a door's earliest wake-up kept.
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
    metric(s, "switchboard_loop_turn_duration_seconds_count")
}

/// The value of the sample `name` (with its labels) on `/metrics`, over the
/// keep-alive connection `s`.
fn metric(s: &mut TcpStream, name: &str) -> u64 {
    let (status, body) = ask(s, "GET", "/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name:?} in /metrics"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One HTTP/1.1 request without a body over the keep-alive connection `s`,
/// and its answer (which must have a Content-Length): status and body.
fn ask(s: &mut TcpStream, method: &str, path: &str) -> (u16, String) {
    send(
        s,
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    answer(s, path)
}

/// One HTTP/1.1 answer (which must have a Content-Length) read from `s`:
/// status and body.
fn answer(s: &mut TcpStream, path: &str) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let (status, head_end, len) = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..i]).into_owned();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{path}: no status in {head:?}"));
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("{path}: no Content-Length in {head:?}"));
            break (status, i + 4, len);
        }
        let n = s.read(&mut buf).expect(path);
        assert!(n > 0, "{path}: the server closed the connection");
        got.extend_from_slice(&buf[..n]);
    };
    while got.len() < head_end + len {
        let n = s.read(&mut buf).expect(path);
        assert!(n > 0, "{path}: the server closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), head_end + len, "{path}: more than one answer");
    (
        status,
        String::from_utf8_lossy(&got[head_end..]).into_owned(),
    )
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

// The read path (`Server::on_readable`, `read_ahead`, `accept`, `add_conn`,
// `dispatch`): what a lingering, a waiting and a new connection get read.

/// Sends `bytes` on `s` and reads the exact `want` back: a round trip
/// through a private channel, like `line_sync`, on any stream.
fn sync_on(s: &mut (impl std::io::Read + std::io::Write), tag: &str) {
    let ch = format!("sync.{tag}");
    send(
        s,
        format!("+ {ch}\r\n! 1 {ch}\r\nx\r\n~ {ch}\r\n").as_bytes(),
    );
    let want = format!("! 1 {ch} application/octet-stream\r\nx\r\n");
    assert_eq!(
        String::from_utf8_lossy(&read_exact_n(s, want.len())),
        want,
        "{tag}"
    );
}

/// A connection that said `.` lingers until its output has drained, and
/// nothing it sends from then on is read: its later input is not counted
/// in `bytes_in`, however readable its socket. The connection lingers
/// because it reads none of what it subscribed to: 512 KB over a Unix
/// socket, whose buffer takes about 200 KB of it. The barrier is a round
/// trip of another connection that the server reads after the lingering
/// one's input was in its socket, then two fetches of the stats page.
#[test]
fn a_lingering_connection_is_not_read() {
    let dir = TempDir::new("linger");
    let path = dir.path().join("line.sock");
    let server = Server::start(&["--line-unix", path.to_str().unwrap()]);
    let mut stats = Stats::open(server.bus());
    let mut quitter = UnixStream::connect(&path).expect("connect to the Unix socket");
    quitter
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    send(&mut quitter, b"+ big\r\n");
    sync_on(&mut quitter, "quitter");

    let mut publisher = connect(server.line());
    let body = vec![b'b'; 32_000];
    let mut want = Vec::new();
    for _ in 0..16 {
        send(
            &mut publisher,
            format!("! {} big\r\n", body.len()).as_bytes(),
        );
        send(&mut publisher, &body);
        send(&mut publisher, b"\r\n");
        want.extend_from_slice(
            format!("! {} big application/octet-stream\r\n", body.len()).as_bytes(),
        );
        want.extend_from_slice(&body);
        want.extend_from_slice(b"\r\n");
    }
    line_sync(&mut publisher, "published");

    let mark = stats.get();
    send(&mut quitter, b".\r\n");
    wait_read(&mut stats, &mark, 3);
    let v = stats.get();
    assert_eq!(
        stat(&v, "connections.closed_by.quit"),
        0,
        "the quitter was closed at once: its output did not wait ({v})"
    );

    let mark = stats.get();
    let after_quit = b"! 4 leak\r\nleak\r\n".repeat(64);
    send(&mut quitter, &after_quit);
    line_sync(&mut publisher, "barrier");
    stats.get();
    let v = stats.get();
    let sync = "+ sync.barrier\r\n! 1 sync.barrier\r\nx\r\n~ sync.barrier\r\n".len() as u64;
    let own = STATS_REQUEST.len() as u64;
    assert_eq!(
        stat(&v, "bytes_in") - stat(&mark, "bytes_in"),
        2 * own + sync,
        "input after `.` was read ({} bytes sent after it)",
        after_quit.len()
    );

    // Still lingering until now: all its output comes, then the close.
    let got = read_to_close(&mut quitter);
    assert_eq!(got.len(), want.len(), "what the quitter got");
    assert!(got == want, "the quitter's messages differ");
}

/// Input a waiting connection sends is read ahead (not run) and runs once
/// the wait is answered: reading ahead ends at the `WouldBlock` of an
/// empty socket, which closes nothing.
#[test]
fn input_sent_while_waiting_is_read_ahead_and_runs_once_answered() {
    let server = Server::start(&[]);
    let mut stats = Stats::open(server.bus());
    let mut watcher = connect(server.line());
    send(&mut watcher, b"+ later\r\n");
    line_sync(&mut watcher, "watcher");
    let mut waiter = connect(server.line());
    send(&mut waiter, b"< 60 ahead\r\n");
    stats.wait_for("the wait", |v| stat(v, "queues.waiting") == 1);
    let mut metrics = connect(server.bus());
    let door_in = "switchboard_bytes_in_total{door=\"line\"}";
    let line_in = metric(&mut metrics, door_in);
    let mark = stats.get();
    let held = b"! 5 later\r\nheld!\r\n";
    send(&mut waiter, held);
    // Read and counted once: `bytes_in` reaches exactly the held input
    // and the stats requests, and never passes them.
    let (base, own) = (stat(&mark, "bytes_in"), STATS_REQUEST.len() as u64);
    let mut fetched = 0;
    stats.wait_for("the held input read", |v| {
        fetched += 1;
        let (now, want) = (
            stat(v, "bytes_in"),
            base + fetched * own + held.len() as u64,
        );
        assert!(now <= want, "bytes_in {now}, past {want}");
        now == want
    });
    // Counted for its door as well (no other line connection spoke since).
    assert_eq!(
        metric(&mut metrics, door_in),
        line_in + held.len() as u64,
        "{door_in}"
    );

    let mut answer = connect(server.line());
    send(&mut answer, b"> 2 30 ahead\r\nok\r\n");
    let want = b"> 2 30 ahead\r\nok\r\n";
    assert_eq!(read_exact_n(&mut waiter, want.len()), want, "the answer");
    let want = b"! 5 later application/octet-stream\r\nheld!\r\n";
    assert_eq!(
        read_exact_n(&mut watcher, want.len()),
        want,
        "the held publish"
    );
    line_sync(&mut waiter, "waiter");
}

/// A waiting connection whose peer resets it is closed at once, for a
/// read error (the reset is what its read-ahead gets), and its wait is
/// gone.
#[test]
fn a_waiting_connection_that_is_reset_is_closed_for_a_read_error() {
    let server = Server::start(&[]);
    let mut stats = Stats::open(server.bus());
    let mut waiter = connect(server.line());
    send(&mut waiter, b"< 60 reset\r\n");
    let v = stats.wait_for("the wait", |v| stat(v, "queues.waiting") == 1);
    let closed = stat(&v, "connections.closed");
    socket2::SockRef::from(&waiter)
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("SO_LINGER");
    drop(waiter);
    let v = stats.wait_for("the reset waiter closed", |v| {
        stat(v, "connections.closed") > closed
    });
    assert_eq!(stat(&v, "connections.closed_by.read_error"), 1, "{v}");
    assert_eq!(stat(&v, "connections.closed_by.peer_closed"), 0, "{v}");
    assert_eq!(stat(&v, "queues.waiting"), 0, "{v}");
}

/// A turn reads up to 256 KiB from a connection, not one 64 KiB buffer:
/// 1.5 MB that sits whole in the server's socket is read in about six
/// turns (counted by `/metrics`), where one read a turn takes 24. The
/// input waits in a Unix socket behind a wait, as in
/// `input_beyond_a_turns_read_budget_is_read_without_a_new_event`; with a
/// system limit on send buffers below what it needs, the input cannot sit
/// whole there and the count is not checked (said on stderr).
#[test]
fn a_turn_reads_a_connection_up_to_its_budget() {
    let dir = TempDir::new("turns");
    let path = dir.path().join("line.sock");
    let server = Server::start(&["--line-unix", path.to_str().unwrap()]);
    let mut metrics = connect(server.bus());
    let mut watcher = connect(server.line());
    send(&mut watcher, b"+ done\r\n");
    line_sync(&mut watcher, "watcher");

    let s = UnixStream::connect(&path).expect("connect to the Unix socket");
    let sock = socket2::SockRef::from(&s);
    sock.set_send_buffer_size(8 << 20).expect("SO_SNDBUF");
    let mut input = b"< 60 q\r\n".to_vec();
    let body = vec![b'x'; 1000];
    for _ in 0..1500 {
        input.extend_from_slice(b"! 1000 nobody\r\n");
        input.extend_from_slice(&body);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b"! 4 done\r\ndone\r\n");
    let room = sock.send_buffer_size().expect("SO_SNDBUF");
    if room < 2 * input.len() {
        eprintln!(
            "send buffers are limited to {room} bytes here (net.core.wmem_max): \
             the turns are not counted"
        );
        return;
    }
    let mut writer = s.try_clone().unwrap();
    send(&mut writer, &input);
    Stats::open(server.bus()).wait_until_reading_stops();

    let before = turns(&mut metrics);
    let mut sender = connect(server.line());
    send(&mut sender, b"> 1 30 q\r\nm\r\n");
    let want = b"! 4 done application/octet-stream\r\ndone\r\n";
    assert_eq!(read_exact_n(&mut watcher, want.len()), want);
    let after = turns(&mut metrics);
    assert!(
        after - before <= 16,
        "{} turns to read {} bytes",
        after - before,
        input.len()
    );
    let mut s = s;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let want = b"> 1 30 q\r\nm\r\n";
    assert_eq!(read_exact_n(&mut s, want.len()), want);
}

/// Out of descriptors, the server pauses accepting for 100 ms at a time,
/// and clients that connect meanwhile do not make it try again: at most
/// one accept error per pause, however many knock. (The bound follows
/// from the time the test took, so a slow machine only loosens it.)
#[test]
fn accepting_stays_paused_while_descriptors_run_out() {
    let server = Server::start_limited(&[], Some(48));
    let addr = server.line().to_string();
    let mut stats = Stats::open(server.bus());
    let started = std::time::Instant::now();
    let mut crowd: Vec<TcpStream> = (0..120)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    stats.wait_for("an accept error", |v| {
        stat(v, "connections.accept_errors") > 0
    });
    for _ in 0..50 {
        crowd.push(TcpStream::connect(&addr).expect("connect"));
        stats.get();
    }
    let errors = stat(&stats.get(), "connections.accept_errors");
    let took = started.elapsed();
    let pauses = u64::try_from(took.as_millis()).unwrap() / 99 + 2;
    assert!(errors <= pauses, "{errors} accept errors in {took:?}");
}

/// Each accepted connection is counted, in all and for its door, as
/// accepted and as open until it closes (the stats page and `/metrics`),
/// and so is each message a door's input published.
#[test]
fn accepted_and_open_connections_are_counted_per_door() {
    let server = Server::start(&[]);
    let mut stats = Stats::open(server.bus());
    let mut metrics = connect(server.bus());
    let accepted = "switchboard_connections_accepted_total{door=\"line\"}";
    let messages = "switchboard_messages_in_total{door=\"line\"}";
    let before = metric(&mut metrics, accepted);
    let messages_before = metric(&mut metrics, messages);
    let mut first = connect(server.line());
    line_sync(&mut first, "first");
    let mut second = connect(server.line());
    line_sync(&mut second, "second");
    let v = stats.get();
    assert_eq!(stat(&v, "connections.line"), 2, "{v}");
    assert_eq!(stat(&v, "connections.bus"), 2, "{v}");
    assert_eq!(stat(&v, "connections.total"), 4, "{v}");
    assert_eq!(stat(&v, "connections.accepted"), 4, "{v}");
    assert_eq!(metric(&mut metrics, accepted), before + 2, "{accepted}");
    // Each round trip published one message through the line door.
    assert_eq!(
        metric(&mut metrics, messages),
        messages_before + 2,
        "{messages}"
    );
    assert_eq!(
        metric(&mut metrics, "switchboard_connections_open{door=\"line\"}"),
        2
    );
    drop(first);
    let v = stats.wait_for("the close", |v| stat(v, "connections.closed") == 1);
    assert_eq!(stat(&v, "connections.line"), 1, "{v}");
    assert_eq!(stat(&v, "connections.total"), 3, "{v}");
}

/// A waiting connection whose peer shuts down its side lingers, as one
/// that said `.` does: what was queued for it before still goes out, then
/// the close. (Its output waits because it reads none of what it
/// subscribed to, as in `a_lingering_connection_is_not_read`.)
#[test]
fn a_waiting_connection_that_half_closes_gets_its_output_before_the_close() {
    let dir = TempDir::new("halfclose");
    let path = dir.path().join("line.sock");
    let server = Server::start(&["--line-unix", path.to_str().unwrap()]);
    let mut stats = Stats::open(server.bus());
    let mut waiter = UnixStream::connect(&path).expect("connect to the Unix socket");
    waiter
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    send(&mut waiter, b"+ big\r\n");
    sync_on(&mut waiter, "waiter");

    let mut publisher = connect(server.line());
    let body = vec![b'b'; 32_000];
    let mut want = Vec::new();
    for _ in 0..16 {
        send(
            &mut publisher,
            format!("! {} big\r\n", body.len()).as_bytes(),
        );
        send(&mut publisher, &body);
        send(&mut publisher, b"\r\n");
        want.extend_from_slice(
            format!("! {} big application/octet-stream\r\n", body.len()).as_bytes(),
        );
        want.extend_from_slice(&body);
        want.extend_from_slice(b"\r\n");
    }
    line_sync(&mut publisher, "published");
    send(&mut waiter, b"< 60 half\r\n");
    stats.wait_for("the wait", |v| stat(v, "queues.waiting") == 1);
    waiter
        .shutdown(std::net::Shutdown::Write)
        .expect("shut down the write side");

    let got = read_to_close(&mut waiter);
    assert_eq!(got.len(), want.len(), "what the waiter got");
    assert!(got == want, "the waiter's messages differ");
    let v = stats.wait_for("the close", |v| stat(v, "connections.closed") == 1);
    assert_eq!(stat(&v, "connections.closed_by.peer_closed"), 1, "{v}");
}

/// A door's wake-up request that comes before the one it already has is
/// kept: a long poll parked for 30 s and answered early leaves its wake-up
/// behind, and the next poll on the same connection, for half a second,
/// still times out after half a second (its answer comes within the read
/// timeout of 10 s, not at the first poll's 30 s).
#[test]
fn an_earlier_wake_up_replaces_a_later_one() {
    let server = Server::start(&["--switch-listen", "127.0.0.1:0"]);
    let mut stats = Stats::open(server.bus());
    let mut poll = connect(server.addr("switch"));
    send(
        &mut poll,
        b"GET /trace/0/30 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    stats.wait_for("the trace poll to park", |v| {
        stat(v, "switch.parked_traces") == 1
    });
    let mut caller = connect(server.addr("switch"));
    for (method, path) in [
        ("GET", "/login/caller"),
        ("GET", "/persistent/q"),
        ("POST", "/request/q/"),
    ] {
        let (status, body) = ask(&mut caller, method, path);
        assert_eq!(status, 200, "{method} {path}: {body}");
    }
    let (status, body) = answer(&mut poll, "/trace/0/30");
    assert_eq!(status, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(events["events"][0][0], 0, "{events}");
    let (status, body) = ask(&mut poll, "GET", "/trace/1/0.5");
    assert_eq!(status, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(events, serde_json::json!({"events": []}));
}
