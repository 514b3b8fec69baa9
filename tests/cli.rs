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
    let worker = cli(&server, &["ready", "greeter", "--timeout", "10"])
        .spawn()
        .expect("start the worker");
    let caller = cli(&server, &["query", "greeter", "hello", "--timeout", "10"])
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

    let sent = run(&server, &["send", reply, "hi yourself", "-w", "10"]);
    assert_exit(&sent, 0);

    let answer = finish(caller);
    assert_exit(&answer, 0);
    assert_eq!(stdout(&answer), format!("> 11 10 {reply}\nhi yourself\n"));
}

#[test]
fn send_then_ready_and_message_order() {
    let server = start(None);
    assert_exit(&run(&server, &["send", "jobs", "job 1"]), 0);
    assert_exit(
        &run(&server, &["send", "jobs", "job 2", "--reply", "back"]),
        0,
    );

    let first = run(&server, &["ready", "--body-only", "other", "jobs"]);
    assert_exit(&first, 0);
    assert_eq!(stdout(&first), "job 1");

    let second = run(&server, &["ready", "jobs", "--timeout", "5"]);
    assert_exit(&second, 0);
    assert_eq!(stdout(&second), "> 5 30 jobs back\njob 2\n");
}

#[test]
fn empty_bodies_travel_without_a_body_line() {
    let server = start(None);
    assert_exit(&run(&server, &["send", "empty", ""]), 0);
    let got = run(&server, &["ready", "empty"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "> 0 30 empty\n");
}

#[test]
fn waits_that_time_out_exit_1() {
    let server = start(None);
    let started = Instant::now();
    let got = run(&server, &["ready", "nobody-sends-here", "--timeout", "1"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "*\n");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let got = run(
        &server,
        &["ready", "--body-only", "-w", "1", "nobody-sends-here"],
    );
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "");

    let got = run(
        &server,
        &["query", "nobody-listens-here", "anyone?", "--timeout", "1"],
    );
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "*\n");
}

#[test]
fn a_body_of_dash_is_read_from_stdin() {
    let server = start(None);
    let body = "first line\nsecond line, with  spaces\n";
    let mut sender = cli(&server, &["send", "inbox", "-"])
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

    let got = run(&server, &["ready", "--body-only", "inbox"]);
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
    cmd.args(["--unix", path, "send", "mixed", "over unix"]);
    let sent = cmd.output().expect("run switchboard-cli");
    assert_exit(&sent, 0);

    // Sent over the Unix socket, received over TCP.
    let got = run(&server, &["ready", "--body-only", "mixed"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "over unix");

    let mut cmd = Command::new(CLI);
    cmd.args(["--unix", path, "ready", "mixed", "--timeout", "1"]);
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
        .args(["--address", &free, "send", "a", "x"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(
        stderr(&got).contains(&format!("cannot connect to {free}")),
        "{}",
        stderr(&got)
    );

    let got = Command::new(CLI)
        .args(["--address", "no-port-here", "ready", "a"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("no-port-here"), "{}", stderr(&got));

    let dir = TempDir::new("cli");
    let missing = dir.path().join("absent.sock");
    let got = Command::new(CLI)
        .arg("--unix")
        .arg(&missing)
        .args(["ready", "a"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("cannot connect"), "{}", stderr(&got));
}

#[test]
fn arguments_that_cannot_go_on_the_wire_exit_2() {
    let server = start(None);
    let got = run(&server, &["send", "two words", "x"]);
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("spaces"), "{}", stderr(&got));

    let got = run(
        &server,
        &["ready", "a", "b", "c", "d", "e", "f", "g", "h", "i"],
    );
    assert_exit(&got, 2);

    let got = run(&server, &["ready", "a", "--timeout", "soon"]);
    assert_exit(&got, 2);
}

#[test]
fn server_refusals_exit_2_with_the_reason() {
    let server = Server::start(&["--bus-listen", "off", "--max-body", "10"]);
    for args in [
        &["publish", "news", "eleven bytes"][..],
        &["send", "jobs", "eleven bytes"],
        &["query", "jobs", "eleven bytes", "--timeout", "5"],
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
        assert_exit(&run(&server, &["send", "q", "x"]), 0);
        let got = run(&server, &["ready", "--body-only", "q"]);
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

#[test]
fn the_old_argument_orders_are_refused_with_the_new_one() {
    let server = start(None);
    for (args, says) in [
        (&["send", "job 17", "30", "jobs"][..], "send takes TO BODY"),
        (
            &["send", "job 17", "30", "jobs", "back"],
            "send takes TO BODY",
        ),
        (
            &["query", "what time?", "30", "clock"],
            "query takes TO BODY",
        ),
        (&["ready", "30", "clock"], "`ready clock --timeout 30`"),
    ] {
        let got = run(&server, args);
        assert_exit(&got, 2);
        assert!(stderr(&got).contains(says), "{args:?}: {}", stderr(&got));
    }
    // Nothing was sent by the refused commands: a probe sent after them is
    // the first message on each address.
    for addr in ["jobs", "clock", "30"] {
        assert_exit(&run(&server, &["send", addr, "probe"]), 0);
        let got = run(&server, &["ready", "--body-only", addr]);
        assert_exit(&got, 0);
        assert_eq!(stdout(&got), "probe", "{addr}");
    }
}

#[test]
fn pub_and_sub_are_aliases_and_n_is_the_count() {
    let server = start(None);
    let mut sub = cli(&server, &["sub", "-n", "2", "--body-only", "alias"])
        .spawn()
        .expect("start a subscriber");
    let announcements = line_channel(sub.stderr.take().expect("subscriber stderr"));
    assert_eq!(
        announcements.recv_timeout(PATIENCE).ok().as_deref(),
        Some("subscribed: alias")
    );
    assert_exit(&run(&server, &["pub", "alias", "one"]), 0);
    assert_exit(&run(&server, &["publish", "alias", "two"]), 0);
    let got = finish(sub);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "one\ntwo\n");
}

/// `2026-12-06T10:44:00.123Z`: the shape of an RFC 3339 UTC time stamp.
fn is_utc_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn json_and_timestamped_output() {
    let server = start(None);
    let mut sub = cli(&server, &["sub", "--json", "--timestamps", "-n", "2", "js"])
        .spawn()
        .expect("start a subscriber");
    let announcements = line_channel(sub.stderr.take().expect("subscriber stderr"));
    assert_eq!(
        announcements.recv_timeout(PATIENCE).ok().as_deref(),
        Some("subscribed: js")
    );
    assert_exit(
        &run(&server, &["pub", "js", "hé \"there\"", "-t", "text/plain"]),
        0,
    );
    // Bytes that are not UTF-8 come as base64.
    let mut binary = cli(&server, &["pub", "js", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    binary
        .stdin
        .take()
        .unwrap()
        .write_all(&[0xff, 0x00, 0x41])
        .unwrap();
    assert_exit(&finish(binary), 0);
    let got = finish(sub);
    assert_exit(&got, 0);
    let lines: Vec<serde_json::Value> = stdout(&got)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["channel"], "js");
    assert_eq!(lines[0]["type"], "text/plain");
    assert_eq!(lines[0]["body"], "hé \"there\"");
    assert_eq!(lines[1]["body_base64"], "/wBB");
    assert_eq!(lines[1]["type"], "application/octet-stream");
    for l in &lines {
        let t = l["time"].as_str().unwrap_or_default();
        assert!(is_utc_stamp(t), "{l}");
    }

    // ready: a message as JSON, and a timeout.
    assert_exit(&run(&server, &["send", "jq", "x", "--reply", "r.1"]), 0);
    let got = run(&server, &["ready", "jq", "--json"]);
    assert_exit(&got, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&got).trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"to": "jq", "timeout": 30, "reply": "r.1", "body": "x"})
    );
    let got = run(&server, &["ready", "jq", "--json", "-w", "0"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "{\"timed_out\":true}\n");

    // Text with time stamps: the stamp, a space, then the frame as before.
    assert_exit(&run(&server, &["send", "tq", "hello"]), 0);
    let got = run(&server, &["--timestamps", "ready", "tq"]);
    assert_exit(&got, 0);
    let text = stdout(&got);
    let (stamp, rest) = text.split_once(' ').unwrap();
    assert!(is_utc_stamp(stamp), "{text:?}");
    assert_eq!(rest, "> 5 30 tq\nhello\n");
}

#[test]
fn stats_prints_the_bus_counters() {
    let server = Server::start(&[]);
    // One publish on the line door, so that a counter has moved.
    assert_exit(&run(&server, &["pub", "counted", "x"]), 0);
    let got = run(&server, &["stats", "--bus", server.bus()]);
    assert_exit(&got, 0);
    let text = stdout(&got);
    let published = text
        .lines()
        .find_map(|l| l.strip_prefix("published "))
        .unwrap_or_else(|| panic!("no published in {text:?}"));
    assert_eq!(published, "1", "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("connections.closed_by.quit ")),
        "{text}"
    );

    let got = run(&server, &["stats", "--bus", server.bus(), "--json"]);
    assert_exit(&got, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&got).trim()).unwrap();
    assert_eq!(v["published"], 1, "{v}");

    // With --secret on the server: refused without it, answered with it.
    let guarded = Server::start(&["--secret", "s3cret"]);
    let got = run(&guarded, &["stats", "--bus", guarded.bus()]);
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("401"), "{}", stderr(&got));
    let got = run(
        &guarded,
        &["stats", "--bus", guarded.bus(), "--secret", "s3cret"],
    );
    assert_exit(&got, 0);

    // The line door is not the bus.
    let got = run(&server, &["stats", "--bus", server.line()]);
    assert_exit(&got, 2);
    assert!(
        stderr(&got).contains(&format!("{} is not an HTTP door", server.line())),
        "{}",
        stderr(&got)
    );
}

#[test]
fn the_wrong_door_is_named_and_nothing_waits() {
    let server = Server::start(&[]);
    let bus = server.bus();
    for args in [
        &["publish", "news", "x"][..],
        &["subscribe", "news"],
        &["send", "q", "x"],
        &["ready", "q"],
        &["query", "q", "x"],
    ] {
        let got = Command::new(CLI)
            .args(["--address", bus])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run switchboard-cli");
        assert_exit(&got, 2);
        let want = format!("{bus} is an HTTP door, not the line protocol");
        assert!(stderr(&got).contains(&want), "{args:?}: {}", stderr(&got));
        assert!(
            stderr(&got).contains("try --address 127.0.0.1:9813"),
            "{}",
            stderr(&got)
        );
    }
    // Nothing reached a subscriber on the line door: a probe published
    // after the attempts is the first thing it gets.
    let mut client = Client::connect_tcp(server.line()).expect("connect");
    client.subscribe("news").expect("subscribe");
    client.sync().expect("sync");
    assert_exit(&run(&server, &["pub", "news", "probe"]), 0);
    match client.next_event().expect("a publication") {
        switchboard::client::Event::Publication(p) => assert_eq!(p.body, b"probe"),
        other => panic!("expected the probe, got {other:?}"),
    }

    // What the server answers a line command at its HTTP door, raw.
    let mut s = common::connect(bus);
    common::send(&mut s, b"+ news\r\n");
    let answer = String::from_utf8_lossy(&common::read_to_close(&mut s)).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert!(
        answer.ends_with(
            "this is an HTTP door, not the line protocol (a line-protocol command arrived)\n"
        ),
        "{answer:?}"
    );
}

#[test]
fn a_silent_or_absent_server_is_named_with_its_address() {
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().unwrap().to_string();
    let got = Command::new(CLI)
        .args([
            "--address",
            &addr,
            "--connect-timeout",
            "1",
            "publish",
            "a",
            "x",
        ])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(
        stderr(&got).contains(&format!(
            "{addr} did not answer the line protocol within 1 s"
        )),
        "{}",
        stderr(&got)
    );
    drop(silent);

    let got = Command::new(CLI)
        .args(["--address", &addr, "publish", "a", "x"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(
        stderr(&got).contains(&format!("cannot connect to {addr}: connection refused")),
        "{}",
        stderr(&got)
    );
}

#[test]
fn port_only_addresses_mean_loopback() {
    let server = start(None);
    let port = server.line().rsplit_once(':').unwrap().1.to_string();
    for form in [
        port.clone(),
        format!(":{port}"),
        format!("localhost:{port}"),
    ] {
        let got = Command::new(CLI)
            .args(["--address", &form, "send", "forms", "x"])
            .output()
            .expect("run switchboard-cli");
        assert_exit(&got, 0);
        let got = run(&server, &["ready", "--body-only", "forms"]);
        assert_exit(&got, 0);
        assert_eq!(stdout(&got), "x", "{form}");
    }
}

/// Against a server started with `--secret`, the CLI authenticates with
/// the credential in `SWITCHBOARD_CREDENTIAL` (or the variable
/// `--credential-env` names); without it, the server's refusal is shown.
#[test]
fn the_credential_comes_from_the_environment() {
    let server = Server::start(&["--bus-listen", "off", "--secret", "s3cret"]);
    let refused = finish(
        cli(&server, &["send", "jobs", "x"])
            .env_remove("SWITCHBOARD_CREDENTIAL")
            .spawn()
            .expect("start switchboard-cli"),
    );
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("unauthorized"),
        "{}",
        stderr(&refused)
    );
    let sent = finish(
        cli(&server, &["send", "jobs", "job"])
            .env("SWITCHBOARD_CREDENTIAL", "s3cret")
            .spawn()
            .expect("start switchboard-cli"),
    );
    assert_exit(&sent, 0);
    let got = finish(
        cli(
            &server,
            &[
                "--credential-env",
                "MY_SECRET",
                "ready",
                "--body-only",
                "jobs",
            ],
        )
        .env("MY_SECRET", "s3cret")
        .spawn()
        .expect("start switchboard-cli"),
    );
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "job");
}
