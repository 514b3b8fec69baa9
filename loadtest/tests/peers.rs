//! flood-pub and flood-sub against the servers switchboard is compared with,
//! as Debian packages them: redis-server (`--proto redis`), nats-server
//! (`--proto nats`), mosquitto (`--proto mqtt`) and nginx with the nchan
//! module (`--proto http --http-path /sub/`). Every message published must
//! reach every subscriber exactly once, and a loss must fail the run.
//!
//! A server that is not installed fails its test with the Debian package to
//! install (`.ci/setup` installs them); nothing is skipped. Each test starts
//! its own server on a free loopback port and waits for the line in which
//! the server says it is listening. Nothing here asserts a rate.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

const PUB: &str = env!("CARGO_BIN_EXE_flood-pub");
const SUB: &str = env!("CARGO_BIN_EXE_flood-sub");

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A program on `PATH` (or in `/usr/sbin`, where Debian puts some servers),
/// or a failure naming the Debian package that provides it.
fn program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir: PathBuf| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: install the Debian package `{package}` \
                 (`.ci/setup` installs everything the tests run)"
            )
        })
}

/// A loopback port with nothing listening on it (bound, then released),
/// for the servers that cannot pick their own.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

/// The lines `reader` yields, delivered on a channel by a thread of their own.
fn lines_of(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running server and the port its clients use.
struct Peer {
    _child: Guard,
    port: u16,
    _dir: Option<TempDir>,
}

/// Runs `cmd` (output on stderr and stdout merged through a pipe each) and
/// waits for a line containing `ready`; returns the child and that line.
fn start_until(mut cmd: Command, ready: &str, what: &str) -> (Guard, String) {
    let mut child = Guard(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}")),
    );
    let out = lines_of(child.0.stdout.take().expect("stdout"));
    let err = lines_of(child.0.stderr.take().expect("stderr"));
    let (tx, rx) = mpsc::channel();
    for source in [out, err] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            while let Ok(l) = source.recv() {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.contains(ready) => return (child, l),
            Ok(l) => seen.push(l),
            Err(e) => panic!("{what} did not say `{ready}` ({e}); it said: {seen:#?}"),
        }
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "flood-peers-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn redis() -> Peer {
    let bin = program("redis-server", "redis-server");
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "notice", "--logfile", ""]);
    let (child, _) = start_until(cmd, "Ready to accept connections", "redis-server");
    Peer {
        _child: child,
        port,
        _dir: None,
    }
}

fn nats() -> Peer {
    let bin = program("nats-server", "nats-server");
    // -1: a port of the kernel's choosing, printed in the log.
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", "-1"]);
    let (child, line) = start_until(cmd, "Listening for client connections on", "nats-server");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in nats-server's line {line:?}"));
    Peer {
        _child: child,
        port,
        _dir: None,
    }
}

fn mosquitto() -> Peer {
    let bin = program("mosquitto", "mosquitto");
    let port = free_port();
    let dir = TempDir::new("mosquitto");
    let conf = dir.0.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
             log_type information\n"
        ),
    )
    .expect("write mosquitto.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(&conf);
    let (child, _) = start_until(cmd, "running", "mosquitto");
    Peer {
        _child: child,
        port,
        _dir: Some(dir),
    }
}

fn nchan() -> Peer {
    let bin = program("nginx", "nginx");
    let module = PathBuf::from("/usr/lib/nginx/modules/ngx_nchan_module.so");
    assert!(
        module.is_file(),
        "{} is missing: install the Debian package `libnginx-mod-nchan` \
         (`.ci/setup` installs everything the tests run)",
        module.display()
    );
    let port = free_port();
    let dir = TempDir::new("nchan");
    let d = dir.0.display();
    let conf = dir.0.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log stderr notice;\nload_module {};\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port};\n\
             location ~ ^/sub/(.+)$ {{\n   nchan_pubsub;\n   nchan_channel_id $1;\n\
             nchan_message_buffer_length 8192;\n  }}\n }}\n}}\n",
            module.display()
        ),
    )
    .expect("write nginx.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(&dir.0)
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(&conf);
    // The master has bound the port before it starts its worker.
    let (child, _) = start_until(cmd, "start worker process", "nginx");
    Peer {
        _child: child,
        port,
        _dir: Some(dir),
    }
}

/// What a run of both tools gave.
struct Run {
    sub_ok: bool,
    sub: Value,
    pub_ok: bool,
    pub_out: String,
}

/// flood-sub with `subs` connections expecting `expect` messages each, and
/// flood-pub publishing `count` once they are subscribed.
fn run(proto: &[&str], port: u16, subs: usize, expect: u64, count: u64) -> Run {
    run_with(proto, port, (subs, &[]), expect, (2, &[]), count)
}

/// `run` with the numbers of connections and extra arguments of each tool.
fn run_with(
    proto: &[&str],
    port: u16,
    (subs, sub_args): (usize, &[&str]),
    expect: u64,
    (pubs, pub_args): (usize, &[&str]),
    count: u64,
) -> Run {
    let addr = format!("127.0.0.1:{port}");
    let sub = Command::new(SUB)
        .args(proto)
        .args(sub_args)
        .args([
            "-a",
            &addr,
            "--json",
            "--timeout",
            "60",
            "--idle-timeout",
            "2",
        ])
        .args(["--connections", &subs.to_string()])
        .args(["--count", &expect.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start flood-sub");
    let mut sub = Guard(sub);
    // flood-pub waits for flood-sub's announcement on the ready channel,
    // which goes through the same protocol.
    let publ = Command::new(PUB)
        .args(proto)
        .args(pub_args)
        .args(["-a", &addr, "--size", "100"])
        .args(["--connections", &pubs.to_string()])
        .args([
            "--wait-subscribers",
            &subs.to_string(),
            "--wait-timeout",
            "30",
        ])
        .args(["--count", &count.to_string(), "-r", "5000"])
        .stdin(Stdio::null())
        .output()
        .expect("run flood-pub");
    let mut out = String::new();
    sub.0
        .stdout
        .take()
        .expect("flood-sub stdout")
        .read_to_string(&mut out)
        .expect("read flood-sub stdout");
    let status = sub.0.wait().expect("wait for flood-sub");
    let last = out.lines().last().unwrap_or_default();
    let json: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("flood-sub printed no JSON summary ({e}): {out:?}"));
    Run {
        sub_ok: status.success(),
        sub: json,
        pub_ok: publ.status.success(),
        pub_out: format!(
            "{}{}",
            String::from_utf8_lossy(&publ.stdout),
            String::from_utf8_lossy(&publ.stderr)
        ),
    }
}

/// Every message reaches every subscriber once.
fn all_delivered(proto: &[&str], port: u16) {
    let (subs, count) = (5usize, 400u64);
    let r = run(proto, port, subs, count, count);
    assert!(r.pub_ok, "flood-pub failed: {}", r.pub_out);
    assert!(r.sub_ok, "flood-sub failed: {}", r.sub);
    assert_eq!(r.sub["subscribed"], subs, "{}", r.sub);
    assert_eq!(r.sub["unique"], subs as u64 * count, "{}", r.sub);
    assert_eq!(r.sub["lost"], 0, "{}", r.sub);
    assert_eq!(r.sub["duplicated"], 0, "{}", r.sub);
    assert_eq!(r.sub["bad"], 0, "{}", r.sub);
    assert_eq!(r.sub["errors"], 0, "{}", r.sub);
}

#[test]
fn redis_delivers_everything() {
    let p = redis();
    all_delivered(&["--proto", "redis"], p.port);
}

#[test]
fn nats_delivers_everything() {
    let p = nats();
    all_delivered(&["--proto", "nats"], p.port);
}

#[test]
fn mqtt_delivers_everything() {
    let p = mosquitto();
    all_delivered(&["--proto", "mqtt"], p.port);
}

#[test]
fn nchan_delivers_everything() {
    let p = nchan();
    all_delivered(&["--proto", "http", "--http-path", "/sub/"], p.port);
}

/// A message that never comes fails the run and is counted, on each
/// protocol: the subscribers expect one more than is published.
#[test]
fn a_missing_message_fails_the_run() {
    let (r, n, m) = (redis(), nats(), mosquitto());
    for (proto, port) in [("redis", r.port), ("nats", n.port), ("mqtt", m.port)] {
        let run = run(&["--proto", proto], port, 3, 101, 100);
        assert!(run.pub_ok, "{proto}: flood-pub failed: {}", run.pub_out);
        assert!(!run.sub_ok, "{proto}: flood-sub passed: {}", run.sub);
        // The 100 published messages arrived (the barrier), the 101st not.
        assert_eq!(run.sub["unique"], 300, "{proto}: {}", run.sub);
        assert_eq!(run.sub["lost"], 3, "{proto}: {}", run.sub);
    }
}

/// Many channels with many publishers (`--channels`), and many publishers
/// into one subscriber: every subscriber gets its channel's share, once.
#[test]
fn many_channels_and_fan_in() {
    let r = redis();
    let n = nats();
    for (proto, port) in [("redis", r.port), ("nats", n.port)] {
        // 20 channels x 3 subscribers, 4 publishers, 400 messages: 20 a channel.
        let ch: &[&str] = &["--channels", "20"];
        let run = run_with(&["--proto", proto], port, (60, ch), 20, (4, ch), 400);
        assert!(run.pub_ok, "{proto}: flood-pub failed: {}", run.pub_out);
        assert!(run.sub_ok, "{proto}: flood-sub failed: {}", run.sub);
        assert_eq!(run.sub["unique"], 60 * 20, "{proto}: {}", run.sub);
        assert_eq!(run.sub["duplicated"], 0, "{proto}: {}", run.sub);
        // 50 publishers, one subscriber.
        let run = run_with(&["--proto", proto], port, (1, &[]), 500, (50, &[]), 500);
        assert!(run.pub_ok, "{proto}: flood-pub failed: {}", run.pub_out);
        assert!(run.sub_ok, "{proto}: flood-sub failed: {}", run.sub);
        assert_eq!(run.sub["unique"], 500, "{proto}: {}", run.sub);
    }
}
