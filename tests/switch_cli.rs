//! `switchboard-cli --switch` against the real server: the quick start of
//! message-switch's README as a test, a line-protocol `?` served by
//! `switchboard-cli serve`, and the other commands (list, diagnostics,
//! ack, destroy, trace, call's timeout and --file).

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, TempDir};
use serde_json::Value;
use switchboard::client::switch::SwitchClient;
use switchboard::client::Client;

const PATIENCE: Duration = Duration::from_secs(20);
const CLI: &str = env!("CARGO_BIN_EXE_switchboard-cli");

fn start() -> Server {
    Server::start(&["--switch-listen", "127.0.0.1:0"])
}

/// `switchboard-cli --switch ADDR ARGS...`, ready to spawn.
fn cli(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(CLI);
    cmd.arg("--switch").arg(server.addr("switch")).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn spawn(server: &Server, args: &[&str]) -> Child {
    cli(server, args).spawn().expect("start switchboard-cli")
}

/// Waits for `child` (at most PATIENCE, then kills it) and collects its
/// output.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match child.try_wait().expect("poll switchboard-cli") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                // The output then shows what went wrong.
                let _ = child.kill();
                break;
            }
            // Polls for the exit; no ordering depends on this pause.
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
    child
        .wait_with_output()
        .expect("collect switchboard-cli output")
}

fn run(server: &Server, args: &[&str]) -> Output {
    finish(spawn(server, args))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}; stdout {:?}; stderr {:?}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(o)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Re-checks a condition the server changes asynchronously; no
        // ordering depends on this pause.
        thread::sleep(Duration::from_millis(20));
    }
}

/// A program the test started, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // Killing our own child; it may have exited already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bus door's stats page.
fn stats(server: &Server) -> Value {
    let mut s = common::connect(server.bus());
    common::send(
        &mut s,
        b"GET /msgbus-stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let all = common::read_to_close(&mut s);
    let text = String::from_utf8_lossy(&all);
    let body = text.split("\r\n\r\n").nth(1).expect("a stats body");
    serde_json::from_str(body).expect("stats JSON")
}

fn diagnostics_json(server: &Server) -> Value {
    let out = ok(&run(server, &["diagnostics", "--json"]));
    serde_json::from_str(&out).expect("diagnostics --json prints JSON")
}

/// Waits until a consumer has transferred from `queue` (it is "alive").
fn wait_served(server: &Server, queue: &str) {
    wait_until(&format!("{queue} to be served"), || {
        ok(&run(server, &["list", "--alive"]))
            .lines()
            .any(|l| l == queue)
    });
}

#[test]
fn the_readme_quick_start() {
    let server = start();
    // No queues.
    assert_eq!(ok(&run(&server, &["list"])), "");
    // A call blocks until the service answers.
    let call = spawn(&server, &["call", "foo", "--body", "hello"]);
    wait_until("the request to be queued", || {
        ok(&run(&server, &["diagnostics"])).contains("      - hello\n")
    });
    let text = ok(&run(&server, &["diagnostics"]));
    assert!(
        text.contains("The following services have been called but have never started:\n- foo\n"),
        "{text}"
    );
    assert!(text.contains("is waiting for a response"), "{text}");
    let _serve = Running(spawn(&server, &["serve", "foo", "--program", "/bin/cat"]));
    let out = finish(call);
    assert_eq!(ok(&out), "hello\n");
    // The request is acked once answered: gone from the queue.
    wait_until("the request to be acked", || {
        diagnostics_json(&server)["permanent_queues"]["foo"]["queue_contents"]
            == Value::Array(vec![])
    });
    let text = ok(&run(&server, &["diagnostics"]));
    assert!(
        text.contains("The following services are running:\n- foo\n"),
        "{text}"
    );
    assert!(!text.contains("hello"), "{text}");
    assert_eq!(ok(&run(&server, &["list", "--alive"])), "foo\n");
}

#[test]
fn a_line_query_is_served_by_switchboard_cli_serve() {
    let server = start();
    let _serve = Running(spawn(
        &server,
        &["serve", "upper", "--program", "tr a-z A-Z"],
    ));
    wait_served(&server, "upper");
    let mut line = Client::connect_tcp(server.line()).expect("connect to the line door");
    let got = line.query(b"ping", 10, "upper").expect("query");
    let m = got.expect("an answer, not a timeout");
    assert_eq!(m.body, b"PING");
    assert_eq!(m.timeout_s, 30);
    line.quit().expect("quit");
}

#[test]
fn a_line_query_sent_before_the_service_starts_is_served_when_it_does() {
    let server = start();
    let addr = server.line().to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = Client::connect_tcp(&addr).expect("connect to the line door");
        let got = line.query(b"early", 30, "late.svc");
        // The test fails below if nothing comes back.
        let _ = tx.send(got.map(|m| m.map(|m| m.body)));
    });
    // The barrier: the query waits in the line queue.
    wait_until("the query to be queued", || {
        stats(&server)["queues"]["queued"] == 1
    });
    let _serve = Running(spawn(&server, &["serve", "late.svc", "--program", "rev"]));
    let got = rx.recv_timeout(PATIENCE).expect("the query ends");
    assert_eq!(got.expect("no client error"), Some(b"ylrae".to_vec()));
}

#[test]
fn list_ack_destroy_and_call_options() {
    let server = start();
    let mut c = SwitchClient::connect(server.addr("switch")).expect("connect");
    c.login("setup").unwrap();
    for name in ["svc.a", "svc.b", "other"] {
        c.create_persistent(name).unwrap();
    }
    c.request("svc.a", "", b"m0").unwrap();
    c.request("svc.a", "", b"m1").unwrap();
    assert_eq!(ok(&run(&server, &["list", "svc."])), "svc.a\nsvc.b\n");
    assert_eq!(ok(&run(&server, &["list"])), "other\nsvc.a\nsvc.b\n");
    assert_eq!(ok(&run(&server, &["list", "--alive"])), "");
    assert_eq!(ok(&run(&server, &["ack", "svc.a", "0"])), "");
    let t = c.transfer(None, 0.0, &["svc.a"]).unwrap();
    assert_eq!(
        t.messages.iter().map(|m| m.id.1).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(ok(&run(&server, &["destroy", "svc.b"])), "");
    assert_eq!(ok(&run(&server, &["list", "svc."])), "svc.a\n");

    // --file, and --timeout when nobody serves.
    let dir = TempDir::new("switch-call");
    let file = dir.path().join("request.txt");
    std::fs::write(&file, "from a file").unwrap();
    let out = run(
        &server,
        &[
            "call",
            "nobody",
            "--file",
            file.to_str().unwrap(),
            "--timeout",
            "0.3",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no response"));
    let d = diagnostics_json(&server);
    assert_eq!(
        d["permanent_queues"]["nobody"]["queue_contents"][0][1]["message"]["payload"],
        "from a file"
    );
    // Errors are exit status 2 with a reason.
    let out = run(&server, &["call", "bad name", "--body", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{out:?}"
    );
    let out = Command::new(CLI)
        .args(["--switch", "127.0.0.1:1", "list"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn trace_follows_events_as_they_happen() {
    let server = start();
    let mut tracer = spawn(&server, &["trace"]);
    let (tx, rx) = mpsc::channel();
    let out = tracer.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let _tracer = Running(tracer);
    let mut c = SwitchClient::connect(server.addr("switch")).expect("connect");
    c.login("tracer.test").unwrap();
    c.create_persistent("traced").unwrap();
    c.request("traced", "", b"first").unwrap();
    c.ack(&("traced".into(), 0)).unwrap();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let line = rx.recv_timeout(PATIENCE).expect("a trace line");
        lines.push(line);
    }
    assert!(
        lines[0].ends_with("tracer.test -> traced -> - traced.0:first"),
        "{lines:?}"
    );
    assert!(
        lines[1].ends_with("tracer.test -> traced -> - traced.0:ack"),
        "{lines:?}"
    );
    // --once prints what there is and exits.
    let once = ok(&run(&server, &["trace", "--once"]));
    assert_eq!(once.lines().count(), 2, "{once}");
}

#[test]
fn the_cli_reaches_a_unix_socket_door() {
    let dir = TempDir::new("switch-cli-unix");
    let sock = dir.path().join("switch.sock");
    let sock = sock.to_str().expect("a UTF-8 path").to_string();
    let server = Server::start(&["--switch-unix", &sock]);
    let mut c = SwitchClient::connect(&sock).expect("connect");
    c.login("u").unwrap();
    c.create_persistent("via.socket").unwrap();
    let out = Command::new(CLI)
        .args(["--switch", &sock, "list"])
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via.socket\n");
    assert!(out.status.success());
    drop(server);
}

#[test]
fn switchboard_cli_call_is_served_by_a_line_handler() {
    let server = start();
    let mut handler = Client::connect_tcp(server.line()).expect("connect to the line door");
    let call = spawn(&server, &["call", "line.svc", "--body", "hi there"]);
    let m = handler
        .ready(20, &["line.svc"])
        .expect("ready")
        .expect("the call's request");
    assert_eq!(m.body, b"hi there");
    assert_eq!(m.timeout_s, 30);
    let reply = m.reply.expect("a reply queue");
    assert!(reply.starts_with("switchboard-cli."), "{reply}");
    handler
        .send(b"HI THERE", 30, &reply, None)
        .expect("send the answer");
    assert_eq!(ok(&finish(call)), "HI THERE\n");
    handler.quit().expect("quit");
}
