//! The shared harness of the integration tests: starts the real `switchboard`
//! binary on ephemeral loopback ports, reads the addresses it prints, and
//! stops it when dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    /// Door name (`line`, `line-unix`, `bus`, ...) → address as printed.
    pub doors: HashMap<String, String>,
    pub stderr: Option<std::process::ChildStderr>,
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
        let mut all: Vec<String> = Vec::new();
        if !args.contains(&"--line-listen") {
            all.extend(["--line-listen".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--bus-listen") {
            all.extend(["--bus-listen".into(), "127.0.0.1:0".into()]);
        }
        if !args.contains(&"--log-level") {
            all.extend(["--log-level".into(), "warn".into()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = match nofile {
            None => Command::new(env!("CARGO_BIN_EXE_switchboard")),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
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
        let mut lines = BufReader::new(stdout).lines();
        let mut doors = HashMap::new();
        let expected = count_doors(&all);
        while doors.len() < expected {
            match lines.next() {
                Some(Ok(line)) => {
                    let mut f = line.split_whitespace();
                    if f.next() == Some("listening") {
                        if let (Some(door), Some(addr)) = (f.next(), f.next()) {
                            doors.insert(door.to_string(), addr.to_string());
                        }
                    }
                }
                _ => {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("switchboard exited before listening: {err}");
                }
            }
        }
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let stderr = child.stderr.take();
        Server {
            child,
            doors,
            stderr,
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn count_doors(args: &[String]) -> usize {
    let mut n = 0;
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--line-listen" | "--bus-listen" | "--bus-tls-listen" | "--line-tls-listen"
            | "--hooks-listen"
                if it.peek().is_some_and(|v| v.as_str() != "off") =>
            {
                n += 1;
            }
            "--line-unix" => n += 1,
            _ => {}
        }
    }
    n
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
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

/// Reads to end of stream.
pub fn read_to_close(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
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
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
