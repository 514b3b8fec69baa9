//! End-to-end tests of `switchboard-cli` against the real `switchboard`
//! server: the msglite tour (query answered by ready + send), channels,
//! timeouts and exit codes, stdin bodies, the Unix socket door.
//!
//! Each test starts its own server through the shared harness in
//! `tests/common` (port 0, addresses read from what the server prints,
//! killed on drop).

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, TempDir};
use switchboard::client::Client;

/// Longest any step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(20);

const CLI: &str = env!("CARGO_BIN_EXE_switchboard-cli");

/// A server with only the line door (and, given a directory, its Unix
/// socket in there).
fn start(unix_dir: Option<&TempDir>) -> Server {
    let mut args = vec!["--bus-listen".to_string(), "off".to_string()];
    if let Some(dir) = unix_dir {
        let path = dir.path().join("line.sock");
        args.push("--line-unix".into());
        args.push(path.to_str().expect("a UTF-8 temp path").into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// `switchboard-cli --address ADDR ARGS...`, ready to spawn.
fn cli(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(CLI);
    cmd.arg("--address").arg(server.line()).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the CLI to the end.
fn run(server: &Server, args: &[&str]) -> Output {
    finish(cli(server, args).spawn().expect("start switchboard-cli"))
}

/// Lines read from `r` on a thread, so that reads can time out.
fn line_channel(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(line) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    rx
}

/// Waits for `child` (at most PATIENCE, then kills it) and collects its
/// output.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match child.try_wait().expect("poll switchboard-cli") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                break;
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
    child
        .wait_with_output()
        .expect("collect switchboard-cli output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, want: i32) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "stdout: {:?}\nstderr: {:?}",
        stdout(o),
        stderr(o)
    );
}

#[test]
fn query_is_answered_by_ready_and_send_to_the_reply_address() {
    let server = start(None);
    let worker = cli(&server, &["ready", "10", "greeter"])
        .spawn()
        .expect("start the worker");
    let caller = cli(&server, &["query", "hello", "10", "greeter"])
        .spawn()
        .expect("start the caller");

    let got = finish(worker);
    assert_exit(&got, 0);
    let text = stdout(&got);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    assert_eq!(header.len(), 5, "header {header:?}");
    assert_eq!(&header[..4], &[">", "5", "10", "greeter"]);
    assert_eq!(lines.next(), Some("hello"));
    let reply = header[4];

    let sent = run(&server, &["send", "hi yourself", "10", reply]);
    assert_exit(&sent, 0);

    let answer = finish(caller);
    assert_exit(&answer, 0);
    assert_eq!(stdout(&answer), format!("> 11 10 {reply}\nhi yourself\n"));
}

#[test]
fn send_then_ready_and_message_order() {
    let server = start(None);
    assert_exit(&run(&server, &["send", "job 1", "30", "jobs"]), 0);
    assert_exit(&run(&server, &["send", "job 2", "30", "jobs", "back"]), 0);

    let first = run(&server, &["ready", "--body-only", "5", "other", "jobs"]);
    assert_exit(&first, 0);
    assert_eq!(stdout(&first), "job 1");

    let second = run(&server, &["ready", "5", "jobs"]);
    assert_exit(&second, 0);
    assert_eq!(stdout(&second), "> 5 30 jobs back\njob 2\n");
}

#[test]
fn empty_bodies_travel_without_a_body_line() {
    let server = start(None);
    assert_exit(&run(&server, &["send", "", "30", "empty"]), 0);
    let got = run(&server, &["ready", "5", "empty"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "> 0 30 empty\n");
}

#[test]
fn waits_that_time_out_exit_1() {
    let server = start(None);
    let started = Instant::now();
    let got = run(&server, &["ready", "1", "nobody-sends-here"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "*\n");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let got = run(&server, &["ready", "--body-only", "1", "nobody-sends-here"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "");

    let got = run(&server, &["query", "anyone?", "1", "nobody-listens-here"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "*\n");
}

#[test]
fn a_body_of_dash_is_read_from_stdin() {
    let server = start(None);
    let body = "first line\nsecond line, with  spaces\n";
    let mut sender = cli(&server, &["send", "-", "30", "inbox"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the sender");
    sender
        .stdin
        .take()
        .expect("sender stdin")
        .write_all(body.as_bytes())
        .expect("write the body");
    assert_exit(&finish(sender), 0);

    let got = run(&server, &["ready", "--body-only", "5", "inbox"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), body);
}

#[test]
fn publish_reaches_every_subscriber() {
    let server = start(None);
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut sub = cli(&server, &["subscribe", "--count", "1", "news"])
            .spawn()
            .expect("start a subscriber");
        // The CLI announces on stderr once the server has the subscription.
        let announcements = line_channel(sub.stderr.take().expect("subscriber stderr"));
        let line = announcements
            .recv_timeout(PATIENCE)
            .expect("the subscriber announces itself");
        assert_eq!(line, "subscribed: news");
        subscribers.push(sub);
    }

    let published = run(
        &server,
        &["publish", "news", "extra!", "--type", "text/plain"],
    );
    assert_exit(&published, 0);

    for sub in subscribers {
        let got = finish(sub);
        assert_exit(&got, 0);
        assert_eq!(stdout(&got), "! 6 news text/plain\nextra!\n");
    }
}

#[test]
fn subscribe_prints_several_channels_and_the_default_type() {
    let server = start(None);
    let mut sub = cli(&server, &["subscribe", "-n", "2", "--body-only", "a", "b"])
        .spawn()
        .expect("start a subscriber");
    let announcements = line_channel(sub.stderr.take().expect("subscriber stderr"));
    assert_eq!(
        announcements.recv_timeout(PATIENCE).ok().as_deref(),
        Some("subscribed: a b")
    );
    assert_exit(&run(&server, &["publish", "b", "to b"]), 0);
    assert_exit(&run(&server, &["publish", "unrelated", "nobody"]), 0);
    assert_exit(&run(&server, &["publish", "a", "to a"]), 0);
    let got = finish(sub);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "to b\nto a\n");

    // The library sees the type the server fills in.
    let mut client = Client::connect_tcp(server.line()).expect("connect");
    client.subscribe("typed").expect("subscribe");
    client.sync().expect("sync");
    assert_exit(&run(&server, &["publish", "typed", "x"]), 0);
    match client.next_event().expect("a publication") {
        switchboard::client::Event::Publication(p) => {
            assert_eq!(p.content_type, "application/octet-stream");
            assert_eq!(p.body, b"x");
        }
        other => panic!("expected a publication, got {other:?}"),
    }
    client.quit().expect("quit");
}

#[test]
fn the_unix_socket_door_shares_the_broker() {
    let dir = TempDir::new("cli");
    let server = start(Some(&dir));
    let path = server.addr("line-unix");

    let mut cmd = Command::new(CLI);
    cmd.args(["--unix", path, "send", "over unix", "30", "mixed"]);
    let sent = cmd.output().expect("run switchboard-cli");
    assert_exit(&sent, 0);

    // Sent over the Unix socket, received over TCP.
    let got = run(&server, &["ready", "--body-only", "5", "mixed"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "over unix");

    let mut cmd = Command::new(CLI);
    cmd.args(["--unix", path, "ready", "1", "mixed"]);
    let got = cmd.output().expect("run switchboard-cli");
    assert_exit(&got, 1);
}

#[test]
fn connection_failures_exit_2_with_a_message() {
    // A port nobody listens on: bound by the kernel's choice, then freed.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let got = Command::new(CLI)
        .args(["--address", &free, "send", "x", "1", "a"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(
        stderr(&got).contains(&format!("cannot connect to {free}")),
        "{}",
        stderr(&got)
    );

    let got = Command::new(CLI)
        .args(["--address", "no-port-here", "ready", "1", "a"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("no-port-here"), "{}", stderr(&got));

    let dir = TempDir::new("cli");
    let missing = dir.path().join("absent.sock");
    let got = Command::new(CLI)
        .arg("--unix")
        .arg(&missing)
        .args(["ready", "1", "a"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("cannot connect"), "{}", stderr(&got));
}

#[test]
fn arguments_that_cannot_go_on_the_wire_exit_2() {
    let server = start(None);
    let got = run(&server, &["send", "x", "1", "two words"]);
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("spaces"), "{}", stderr(&got));

    let got = run(
        &server,
        &["ready", "1", "a", "b", "c", "d", "e", "f", "g", "h", "i"],
    );
    assert_exit(&got, 2);

    let got = run(&server, &["ready", "soon", "a"]);
    assert_exit(&got, 2);
}

#[test]
fn server_refusals_exit_2_with_the_reason() {
    let server = Server::start(&["--bus-listen", "off", "--max-body", "10"]);
    for args in [
        &["publish", "news", "eleven bytes"][..],
        &["send", "eleven bytes", "5", "jobs"],
        &["query", "eleven bytes", "5", "jobs"],
    ] {
        let got = run(&server, args);
        assert_exit(&got, 2);
        assert!(
            stderr(&got).contains("server error: "),
            "{args:?}: {}",
            stderr(&got)
        );
    }
}

#[test]
fn listen_flags_take_host_names_and_port_only_forms() {
    for (line, bus) in [
        ("localhost:0", ":0"),
        ("0", "[::1]:0"),
        ("127.0.0.1:0", "off"),
    ] {
        let server = Server::start(&["--line-listen", line, "--bus-listen", bus]);
        let bound: std::net::SocketAddr = server.line().parse().expect("a printed address");
        assert!(bound.ip().is_loopback(), "{line} bound {bound}");
        assert_ne!(bound.port(), 0, "{line} bound {bound}");
        // The bound door speaks: a message left and taken back.
        assert_exit(&run(&server, &["send", "x", "30", "q"]), 0);
        let got = run(&server, &["ready", "--body-only", "5", "q"]);
        assert_exit(&got, 0);
        assert_eq!(stdout(&got), "x");
        match bus {
            "off" => assert!(!server.doors.contains_key("bus"), "{:?}", server.doors),
            _ => {
                let bound: std::net::SocketAddr = server.bus().parse().expect("bus address");
                assert!(bound.ip().is_loopback(), "{bus} bound {bound}");
                common::connect(server.bus());
            }
        }
    }
    let got = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--line-listen", "localhost:port"])
        .output()
        .expect("run switchboard");
    assert_eq!(got.status.code(), Some(2), "{}", stderr(&got));
    assert!(
        stderr(&got).contains("`localhost:port` is not a listen address"),
        "{}",
        stderr(&got)
    );
}
