//! The shared harness of the integration tests: starts the real `switchboard`
//! binary on ephemeral loopback ports, reads the addresses it prints, and
//! stops it when dropped.

#![allow(dead_code)]

pub mod webdriver;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    /// Door name (`line`, `line-unix`, `bus`, ...) → address as printed.
    pub doors: HashMap<String, String>,
    /// Everything the server wrote on stderr so far (read by a thread, so
    /// that a full pipe never blocks the server).
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Set by the stderr reader once the pipe is at its end (the server
    /// has exited and everything it wrote is in `stderr`).
    stderr_done: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    /// Starts the server with `args`, plus ephemeral defaults for the line and
    /// bus doors unless `args` sets them.
    pub fn start(args: &[&str]) -> Server {
        Server::start_limited(args, None)
    }

    /// Like [`Server::start`], with the open-file limit of the server
    /// process lowered to `nofile` (through `sh -c 'ulimit -n N; exec ...'`).
    pub fn start_limited(args: &[&str], nofile: Option<u32>) -> Server {
        let setup = nofile.map(|n| format!("ulimit -n {n}"));
        Server::start_in_shell(args, setup.as_deref())
    }

    /// Like [`Server::start`], with the server started by `sh -c 'SETUP &&
    /// exec switchboard …'` (resource limits, signal dispositions).
    pub fn start_in_shell(args: &[&str], setup: Option<&str>) -> Server {
        let mut all: Vec<String> = Vec::new();
        if !args.contains(&"--line-listen") {
            all.extend(["--line-listen".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--bus-listen") {
            all.extend(["--bus-listen".into(), "127.0.0.1:0".into()]);
        }
        // A certificate opens the HTTPS bus, by default on the fixed port
        // 4444: a free port instead, so that two servers never collide.
        if args.contains(&"--tls-cert") && !args.contains(&"--bus-tls-listen") {
            all.extend(["--bus-tls-listen".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--log-level") {
            all.extend(["--log-level".into(), "warn".into()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = match setup {
            None => Command::new(env!("CARGO_BIN_EXE_switchboard")),
            Some(setup) => {
                let mut c = Command::new(program("sh"));
                c.arg("-c")
                    .arg(format!("{setup} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_switchboard"));
                c
            }
        };
        let mut child = cmd
            .args(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard");
        let stdout = child.stdout.take().expect("stdout");
        // A thread reads stdout for as long as the server runs, so the
        // server never blocks on it; the door lines come over a channel.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Once the doors are known nobody listens: keep draining.
                let _ = tx.send(line);
            }
        });
        let mut doors = HashMap::new();
        let expected = count_doors(&all);
        let deadline = Instant::now() + Duration::from_secs(20);
        while doors.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let mut f = line.split_whitespace();
                    if f.next() == Some("listening") {
                        if let (Some(door), Some(addr)) = (f.next(), f.next()) {
                            doors.insert(door.to_string(), addr.to_string());
                        }
                    }
                }
                Err(e) => {
                    // Best effort: the message is the point here.
                    let _ = child.kill();
                    let mut err = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = pipe.read_to_string(&mut err);
                    }
                    panic!("switchboard did not print its {expected} doors ({e}): {err}");
                }
            }
        }
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            let done = stderr_done.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
        }
        Server {
            child,
            doors,
            stderr,
            stderr_done,
        }
    }

    pub fn addr(&self, door: &str) -> &str {
        self.doors
            .get(door)
            .unwrap_or_else(|| panic!("no {door} door in {:?}", self.doors))
    }

    pub fn line(&self) -> &str {
        self.addr("line")
    }

    pub fn bus(&self) -> &str {
        self.addr("bus")
    }

    /// What the server has written on stderr so far.
    pub fn stderr_text(&self) -> String {
        let bytes = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server's log holds `needle` (it is written after the
    /// event that causes it, so it is awaited, for up to 20 s); the whole log.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.stderr_text();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the log: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the server, in KiB (`VmRSS`). Panics when it
    /// cannot be read: a memory bound must never pass for want of a figure.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Peak resident memory of the server so far, in KiB (`VmHWM`). Panics
    /// when it cannot be read.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_and_wait(15)
    }

    /// Sends SIGINT (what Ctrl-C sends) and waits for the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        self.signal_and_wait(2)
    }

    /// Sends `sig` (a number, e.g. 2 for SIGINT) without waiting.
    pub fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig);
    }

    /// Sends `sig` and waits for the exit status; kills the server after
    /// 15 s (its status then shows the kill, so a test that expects a clean
    /// exit fails).
    fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        send_signal(self.child.id(), sig);
        self.wait_exit(Duration::from_secs(15))
    }

    /// Waits for the process to exit by itself, for at most `patience`;
    /// then kills it and returns the status of the kill. Once it has
    /// exited, [`Server::stderr_text`] holds everything it wrote (the
    /// reader thread is waited for, up to 10 s).
    pub fn wait_exit(&mut self, patience: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for switchboard") {
                self.wait_stderr();
                return status;
            }
            if Instant::now() > deadline {
                // Best effort: the status returned below reports the kill.
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait");
                self.wait_stderr();
                return status;
            }
            // Polls for the exit; no ordering depends on this pause.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Server {
    /// Waits until the stderr reader has read the pipe to its end; a pipe
    /// still open after 10 s (held by a process the server started) fails
    /// the test, whose log would otherwise be read short.
    fn wait_stderr(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr_done.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                Instant::now() < deadline,
                "the server's stderr was still open 10 s after it exited"
            );
            // Polls for the reader's end; no ordering depends on this pause.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A field of `/proc/PID/status` in KiB; panics when it cannot be read.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot measure the server's memory: {path}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot measure the server's memory: no {field} in {path}"))
}

fn count_doors(args: &[String]) -> usize {
    let mut n = 0;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--line-listen" | "--bus-listen" | "--bus-tls-listen" | "--line-tls-listen"
            | "--proxy-listen" | "--switch-listen" | "--hooks-listen" | "--metrics-listen"
                if it.peek().is_some_and(|v| v.as_str() != "off") =>
            {
                n += 1;
            }
            "--line-unix" | "--switch-unix" => n += 1,
            _ => {}
        }
    }
    n
}

/// The Debian package that provides each program the tests run.
const PACKAGES: &[(&str, &str)] = &[
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("python3", "python3"),
    ("nginx", "nginx"),
    ("kill", "procps"),
    ("sh", "dash"),
    ("bash", "bash"),
    ("redis-server", "redis-server"),
    ("haproxy", "haproxy"),
];

/// A program the tests run, found on `PATH` (then in `/usr/sbin` and
/// `/sbin`, where Debian puts nginx). A missing one fails the test with the
/// Debian package to install, never skips it: `.ci/setup` installs them all.
pub fn program(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir: std::path::PathBuf| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        let package = PACKAGES
            .iter()
            .find(|(p, _)| *p == name)
            .map_or(name, |(_, pkg)| pkg);
        panic!(
            "`{name}` is not on PATH: install the Debian package `{package}` \
             (`.ci/setup` installs everything the tests run)"
        )
    })
}

fn send_signal(pid: u32, sig: i32) {
    let status = Command::new(program("kill"))
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}: {status}");
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw TCP client with a read timeout.
pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// [`connect`]s and writes `bytes`.
pub fn connect_and_send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = connect(addr);
    send(&mut s, bytes);
    s
}

/// Reads until `want` bytes arrived (or panics after the read timeout).
pub fn read_exact_n(s: &mut impl Read, want: usize) -> Vec<u8> {
    let mut buf = vec![0u8; want];
    s.read_exact(&mut buf).expect("read");
    buf
}

/// Reads until `needle` has been seen; returns everything read.
pub fn read_until(s: &mut impl Read, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "connection closed before {:?}; got {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Reads until the server closes the connection (end of stream, or a
/// reset) and returns what arrived before. Fails if the read times out (the
/// stream's read timeout: 10 s for [`connect`]) or fails otherwise: a
/// connection the server keeps open is never taken for a closed one.
pub fn read_to_close(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "the server did not close the connection ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Nothing has arrived on `s` and it is still open, checked without
/// waiting. Call it only after a positive barrier (an answer that the
/// server sent after anything that must not arrive here), never as a wait.
pub fn assert_nothing_pending(s: &TcpStream, what: &str) {
    s.set_nonblocking(true).expect("set_nonblocking");
    let mut buf = [0u8; 4096];
    let got = (&*s).read(&mut buf);
    s.set_nonblocking(false).expect("set_nonblocking");
    match got {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok(0) => panic!("{what}: the connection was closed"),
        Ok(n) => panic!(
            "{what}: unexpected bytes {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Writes all of `bytes`.
pub fn send(s: &mut impl Write, bytes: &[u8]) {
    s.write_all(bytes).expect("write");
}

/// Proves that the server has processed everything this line-protocol
/// connection sent before: a round trip through a private channel.
pub fn line_sync(s: &mut TcpStream, tag: &str) {
    let ch = format!("sync.{tag}");
    let msg = format!("+ {ch}\r\n! 1 {ch}\r\nx\r\n~ {ch}\r\n");
    send(s, msg.as_bytes());
    let want = format!("! 1 {ch} application/octet-stream\r\nx\r\n");
    let got = read_exact_n(s, want.len());
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// The stats page over one keep-alive HTTP/1.1 connection, so that
/// fetching the figures does not itself open or close connections.
pub struct Stats {
    s: TcpStream,
    buf: Vec<u8>,
    /// Extra request headers (e.g. `Authorization`), each ending in CRLF.
    headers: String,
}

/// The request [`Stats::get`] sends.
pub const STATS_REQUEST: &str = "GET /msgbus-stats HTTP/1.1\r\nHost: stats\r\n\r\n";

impl Stats {
    pub fn open(bus: &str) -> Stats {
        Stats::open_with(bus, "")
    }

    pub fn open_with(bus: &str, headers: &str) -> Stats {
        Stats {
            s: connect(bus),
            buf: Vec::new(),
            headers: headers.to_string(),
        }
    }

    /// Fetches and parses the stats page.
    pub fn get(&mut self) -> serde_json::Value {
        let req = format!(
            "GET /msgbus-stats HTTP/1.1\r\nHost: stats\r\n{}\r\n",
            self.headers
        );
        send(&mut self.s, req.as_bytes());
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 "), "stats answered {head:?}");
        let len: usize = content_length(&head);
        while self.buf.len() < head_end + len {
            self.fill();
        }
        let body: Vec<u8> = self.buf.drain(..head_end + len).skip(head_end).collect();
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "stats are not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        })
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.s.read(&mut chunk).expect("read the stats page");
        assert!(n > 0, "the server closed the stats connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Fetches the stats page until `done` holds for it (each fetch is a
    /// round trip through the server's loop); fails after 20 s.
    pub fn wait_for(
        &mut self,
        what: &str,
        mut done: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.get();
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never happened; stats {v}"
            );
        }
    }

    /// Fetches the stats page until `bytes_in` grows by nothing but these
    /// stats requests three times in a row (three turns of the server's
    /// loop in which it read nothing else), and returns that page. For a
    /// test that must know the server has stopped reading a connection.
    pub fn wait_until_reading_stops(&mut self) -> serde_json::Value {
        let own = (STATS_REQUEST.len() + self.headers.len()) as u64;
        let mut last = self.get();
        let mut still = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while still < 3 {
            assert!(
                Instant::now() < deadline,
                "the server never stopped reading: {last}"
            );
            let v = self.get();
            let grew = stat(&v, "bytes_in") - stat(&last, "bytes_in");
            still = if grew == own { still + 1 } else { 0 };
            last = v;
        }
        last
    }
}

/// `v[key]` as a number; panics when absent. `key` may be `a.b`.
/// The Content-Length of a response head; fails the test when there is none.
pub fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
}

pub fn stat(v: &serde_json::Value, key: &str) -> u64 {
    let mut at = v;
    for part in key.split('.') {
        at = &at[part];
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("no number {key} in stats {v}"))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of the same name cannot exist (pid, counter, clock);
        // removing it is only tidiness.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir fails nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` (Debian's) on a free loopback port, killed when
/// dropped. The port is one the kernel handed out for a listener bound to
/// port 0, released and given to Redis; if another process takes it
/// first, Redis exits before it is ready and a new port is tried.
/// (tests/cluster.rs has its own, which also restarts Redis.)
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl RedisServer {
    /// Redis listening on `port_flag` (`--port`, or `--tls-port` with the
    /// plain port off) with the settings `args` after it.
    pub fn start(port_flag: &str, args: &[&str]) -> RedisServer {
        let dir = TempDir::new("redis");
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = Command::new(program("redis-server"));
            if port_flag != "--port" {
                cmd.args(["--port", "0"]);
            }
            cmd.args([port_flag, &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().expect("start redis-server");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel::<bool>();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains("Ready to accept connections") {
                        let _ = tx.send(true);
                    }
                }
                let _ = tx.send(false);
            });
            if let Ok(true) = rx.recv_timeout(Duration::from_secs(20)) {
                return RedisServer {
                    child,
                    port,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on any of 20 free ports");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
