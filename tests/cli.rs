//! End-to-end tests of `switchboard-cli` against the real `switchboard`
//! server: the msglite tour (query answered by ready + send), channels,
//! timeouts and exit codes, stdin bodies, the Unix socket door.
//!
//! Each test starts its own server on port 0 and reads the bound address
//! from the `listening line ADDR` line it prints; the server is killed when
//! the test's handle drops.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard::client::Client;

/// Longest any step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(20);

const SERVER: &str = env!("CARGO_BIN_EXE_switchboard");
const CLI: &str = env!("CARGO_BIN_EXE_switchboard-cli");

/// A running server, killed on drop.
struct Server {
    child: Child,
    line_addr: String,
    unix_path: Option<PathBuf>,
    _dir: Option<TempDir>,
}

impl Server {
    fn start() -> Server {
        Self::start_with(None)
    }

    fn start_unix() -> Server {
        Self::start_with(Some(TempDir::new()))
    }

    fn start_with(dir: Option<TempDir>) -> Server {
        let unix_path = dir.as_ref().map(|d| d.path().join("line.sock"));
        let mut cmd = Command::new(SERVER);
        cmd.args([
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "off",
            "--log-level",
            "warn",
        ]);
        if let Some(path) = &unix_path {
            cmd.arg("--line-unix").arg(path);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the switchboard server");
        let stdout = child.stdout.take().expect("server stdout");
        let lines = line_channel(stdout);
        let mut server = Server {
            child,
            line_addr: String::new(),
            unix_path,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while server.line_addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("the server prints `listening line ADDR`");
            if let Some(addr) = line.trim().strip_prefix("listening line ") {
                server.line_addr = addr.trim().to_string();
            }
        }
        if let Some(path) = &server.unix_path {
            while !path.exists() {
                assert!(Instant::now() < deadline, "no socket at {path:?}");
                thread::sleep(Duration::from_millis(10));
            }
        }
        server
    }

    /// `switchboard-cli --address ADDR ARGS...`, ready to spawn.
    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CLI);
        cmd.arg("--address").arg(&self.line_addr).args(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs the CLI to the end.
    fn run(&self, args: &[&str]) -> Output {
        finish(self.cli(args).spawn().expect("start switchboard-cli"))
    }

    fn unix_path(&self) -> &Path {
        self.unix_path
            .as_deref()
            .expect("server started with a Unix socket")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-cli-test.{}.{}.{nanos:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

fn code(status: ExitStatus) -> Option<i32> {
    status.code()
}

#[track_caller]
fn assert_exit(o: &Output, want: i32) {
    assert_eq!(
        code(o.status),
        Some(want),
        "stdout: {:?}\nstderr: {:?}",
        stdout(o),
        stderr(o)
    );
}

#[test]
fn query_is_answered_by_ready_and_send_to_the_reply_address() {
    let server = Server::start();
    let worker = server
        .cli(&["ready", "10", "greeter"])
        .spawn()
        .expect("start the worker");
    let caller = server
        .cli(&["query", "hello", "10", "greeter"])
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

    let sent = server.run(&["send", "hi yourself", "10", reply]);
    assert_exit(&sent, 0);

    let answer = finish(caller);
    assert_exit(&answer, 0);
    assert_eq!(stdout(&answer), format!("> 11 10 {reply}\nhi yourself\n"));
}

#[test]
fn send_then_ready_and_message_order() {
    let server = Server::start();
    assert_exit(&server.run(&["send", "job 1", "30", "jobs"]), 0);
    assert_exit(&server.run(&["send", "job 2", "30", "jobs", "back"]), 0);

    let first = server.run(&["ready", "--body-only", "5", "other", "jobs"]);
    assert_exit(&first, 0);
    assert_eq!(stdout(&first), "job 1");

    let second = server.run(&["ready", "5", "jobs"]);
    assert_exit(&second, 0);
    assert_eq!(stdout(&second), "> 5 30 jobs back\njob 2\n");
}

#[test]
fn empty_bodies_travel_without_a_body_line() {
    let server = Server::start();
    assert_exit(&server.run(&["send", "", "30", "empty"]), 0);
    let got = server.run(&["ready", "5", "empty"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "> 0 30 empty\n");
}

#[test]
fn waits_that_time_out_exit_1() {
    let server = Server::start();
    let started = Instant::now();
    let got = server.run(&["ready", "1", "nobody-sends-here"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "*\n");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let got = server.run(&["ready", "--body-only", "1", "nobody-sends-here"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "");

    let got = server.run(&["query", "anyone?", "1", "nobody-listens-here"]);
    assert_exit(&got, 1);
    assert_eq!(stdout(&got), "*\n");
}

#[test]
fn a_body_of_dash_is_read_from_stdin() {
    let server = Server::start();
    let body = "first line\nsecond line, with  spaces\n";
    let mut sender = server
        .cli(&["send", "-", "30", "inbox"])
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

    let got = server.run(&["ready", "--body-only", "5", "inbox"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), body);
}

#[test]
fn publish_reaches_every_subscriber() {
    let server = Server::start();
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut sub = server
            .cli(&["subscribe", "--count", "1", "news"])
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

    let published = server.run(&["publish", "news", "extra!", "--type", "text/plain"]);
    assert_exit(&published, 0);

    for sub in subscribers {
        let got = finish(sub);
        assert_exit(&got, 0);
        assert_eq!(stdout(&got), "! 6 news text/plain\nextra!\n");
    }
}

#[test]
fn subscribe_prints_several_channels_and_the_default_type() {
    let server = Server::start();
    let mut sub = server
        .cli(&["subscribe", "-n", "2", "--body-only", "a", "b"])
        .spawn()
        .expect("start a subscriber");
    let announcements = line_channel(sub.stderr.take().expect("subscriber stderr"));
    assert_eq!(
        announcements.recv_timeout(PATIENCE).ok().as_deref(),
        Some("subscribed: a b")
    );
    assert_exit(&server.run(&["publish", "b", "to b"]), 0);
    assert_exit(&server.run(&["publish", "unrelated", "nobody"]), 0);
    assert_exit(&server.run(&["publish", "a", "to a"]), 0);
    let got = finish(sub);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "to b\nto a\n");

    // The library sees the type the server fills in.
    let mut client = Client::connect_tcp(&server.line_addr).expect("connect");
    client.subscribe("typed").expect("subscribe");
    client.sync().expect("sync");
    assert_exit(&server.run(&["publish", "typed", "x"]), 0);
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
    let server = Server::start_unix();
    let path = server.unix_path().to_str().expect("a UTF-8 temp path");

    let mut cmd = Command::new(CLI);
    cmd.args(["--unix", path, "send", "over unix", "30", "mixed"]);
    let sent = cmd.output().expect("run switchboard-cli");
    assert_exit(&sent, 0);

    // Sent over the Unix socket, received over TCP.
    let got = server.run(&["ready", "--body-only", "5", "mixed"]);
    assert_exit(&got, 0);
    assert_eq!(stdout(&got), "over unix");

    let mut cmd = Command::new(CLI);
    cmd.args(["--unix", path, "ready", "1", "mixed"]);
    let got = cmd.output().expect("run switchboard-cli");
    assert_exit(&got, 1);
}

#[test]
fn connection_failures_exit_2_with_a_message() {
    // Port 1 on loopback: nothing listens there.
    let got = Command::new(CLI)
        .args(["--address", "127.0.0.1:1", "send", "x", "1", "a"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(
        stderr(&got).contains("cannot connect to 127.0.0.1:1"),
        "{}",
        stderr(&got)
    );

    let got = Command::new(CLI)
        .args(["--address", "no-port-here", "ready", "1", "a"])
        .output()
        .expect("run switchboard-cli");
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("no-port-here"), "{}", stderr(&got));

    let dir = TempDir::new();
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
    let server = Server::start();
    let got = server.run(&["send", "x", "1", "two words"]);
    assert_exit(&got, 2);
    assert!(stderr(&got).contains("spaces"), "{}", stderr(&got));

    let got = server.run(&["ready", "1", "a", "b", "c", "d", "e", "f", "g", "h", "i"]);
    assert_exit(&got, 2);

    let got = server.run(&["ready", "soon", "a"]);
    assert_exit(&got, 2);
}
