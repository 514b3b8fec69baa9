//! Functional tests of flood-pub and flood-sub against the real switchboard
//! server: every message published must reach every subscriber exactly
//! once, on both doors, and failures must show in the exit status and the
//! summary. Nothing here asserts a rate or a latency.
//!
//! The server binary is built by cargo from the current source, with this
//! test's profile, when the first test needs it (`cargo build -p switchboard
//! --bin switchboard`: nothing to do when it is up to date), so a stale or
//! missing binary is never tested. Each test starts its own server on port 0 and
//! reads the addresses it prints (`listening line ADDR`, `listening bus
//! ADDR`); a guard kills it even when the test panics.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
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

struct Server {
    _child: Guard,
    line: SocketAddr,
    bus: SocketAddr,
    /// Every door the server printed, by name (`line`, `bus`, `bus-tls`, ...).
    doors: std::collections::HashMap<String, SocketAddr>,
}

/// The switchboard server binary, built by cargo from the current source
/// with the profile of this test (once per test process), so that a stale
/// or missing binary is never what the tests run.
fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_server).clone()
}

fn build_server() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // target/<profile dir>/deps/flood-<hash>; the dev profile's directory
    // is `debug`, every other profile's bears its name.
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .map(|name| if name == "debug" { "dev" } else { name })
        .expect("the test executable lives in target/<profile>/deps")
        .to_string();
    let mut build = Command::new(cargo);
    // The variables cargo sets for this test process describe the loadtest
    // package; build scripts that watch them (ring's) would take them for
    // a change and rebuild.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|p| name.starts_with(p))
        {
            build.env_remove(name);
        }
    }
    let out = build
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", "switchboard", "--bin", "switchboard"])
        .args(["--profile", &profile])
        .args(["--message-format", "json-render-diagnostics"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build for the server binary");
    assert!(
        out.status.success(),
        "cargo build of the switchboard server failed: {}",
        out.status
    );
    // cargo names the executable it built (or found up to date).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "switchboard")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo build reported the switchboard executable")
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

fn start_server() -> Server {
    start_server_with(&[], &[])
}

/// Starts the server with `extra` arguments and waits until it has printed
/// the line and bus doors and every door named in `more_doors`.
fn start_server_with(extra: &[&str], more_doors: &[&str]) -> Server {
    let child = Command::new(server_binary())
        .args([
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the switchboard server");
    let mut child = Guard(child);
    let stdout = child.0.stdout.take().expect("server stdout");
    let rx = lines_of(stdout);
    let (mut line, mut bus) = (None, None);
    let mut doors = std::collections::HashMap::new();
    while line.is_none() || bus.is_none() || more_doors.iter().any(|d| !doors.contains_key(*d)) {
        let l = rx.recv_timeout(Duration::from_secs(20)).expect(
            "the server printed `listening line ADDR` and `listening bus ADDR` within 20 s",
        );
        let mut words = l.split_whitespace();
        if words.next() != Some("listening") {
            continue;
        }
        let door = words.next();
        let addr = words.next().and_then(|a| a.parse::<SocketAddr>().ok());
        if let (Some(d), Some(a)) = (door, addr) {
            doors.insert(d.to_string(), a);
        }
        match door {
            Some("line") => line = addr,
            Some("bus") => bus = addr,
            _ => {}
        }
    }
    Server {
        _child: child,
        line: line.expect("line address"),
        bus: bus.expect("bus address"),
        doors,
    }
}

/// A flood-sub running in the background, already subscribed.
struct RunningSub {
    child: Guard,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// Starts flood-sub with `args` and waits for its `ready:` line.
fn start_sub(args: &[&str]) -> RunningSub {
    let child = Command::new(SUB)
        // Defaults first: a later flag of the same name wins.
        .args(["--json", "--timeout", "90", "--idle-timeout", "10"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flood-sub");
    let mut child = Guard(child);
    let stderr = child.0.stderr.take().expect("flood-sub stderr");
    let rx = lines_of(stderr);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => {
                let ready = l.contains("ready:");
                seen.push(l);
                if ready {
                    break;
                }
            }
            Err(e) => panic!("flood-sub did not become ready ({e}); stderr: {seen:#?}"),
        }
    }
    RunningSub {
        child,
        stderr: rx,
        seen,
    }
}

impl RunningSub {
    /// Waits for the end; returns the exit success, the JSON summary and stderr.
    fn finish(self) -> (bool, Value, Vec<String>) {
        let (status, json, seen) = self.finish_status();
        (status.success(), json, seen)
    }

    /// Waits for the end; returns the exit status, the JSON summary and stderr.
    fn finish_status(mut self) -> (std::process::ExitStatus, Value, Vec<String>) {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.0.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .expect("read flood-sub stdout");
        }
        let status = self.child.0.wait().expect("wait for flood-sub");
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        let last = out.lines().last().unwrap_or_default();
        let json: Value = serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "flood-sub printed no JSON summary ({e}): stdout {out:?}, stderr {:#?}",
                self.seen
            )
        });
        (status, json, self.seen)
    }
}

fn run_pub(args: &[&str]) -> Output {
    Command::new(PUB)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run flood-pub")
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

/// Publishes `count` messages with flood-pub and checks that each of the
/// subscribers got every one exactly once.
fn fan_out(sub_args: &[&str], pub_args: &[&str], subs: u64, count: u64) -> Value {
    let count_s = count.to_string();
    let subs_s = subs.to_string();
    let mut sa: Vec<&str> = vec!["--connections", &subs_s, "--count", &count_s];
    sa.extend_from_slice(sub_args);
    let sub = start_sub(&sa);
    let mut pa: Vec<&str> = vec!["--count", &count_s, "--json"];
    pa.extend_from_slice(pub_args);
    let published = run_pub(&pa);
    let pub_out = String::from_utf8_lossy(&published.stdout).into_owned();
    let pub_err = String::from_utf8_lossy(&published.stderr).into_owned();
    assert!(
        published.status.success(),
        "flood-pub failed: {pub_out} {pub_err}"
    );
    let pub_json: Value = serde_json::from_str(pub_out.trim()).expect("flood-pub --json line");
    assert_eq!(pub_json["sent"], count, "{pub_json}");
    assert_eq!(pub_json["confirmed"], count, "{pub_json}");
    assert_eq!(pub_json["errors"], 0, "{pub_json}");

    let (ok, j, stderr) = sub.finish();
    assert_eq!(j["lost"], 0, "{j} {stderr:#?}");
    assert_eq!(j["duplicated"], 0, "{j}");
    assert_eq!(j["bad"], 0, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["expected"], count * subs, "{j}");
    assert_eq!(j["received"], j["expected"], "{j}");
    assert_eq!(j["connections"], subs, "{j}");
    for k in ["msgs_per_s", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(j[k].is_number(), "{k} in {j}");
    }
    // The first and last delivery's clock readings span elapsed_s.
    let (first, last) = (j["first_ns"].as_u64(), j["last_ns"].as_u64());
    let (Some(first), Some(last)) = (first, last) else {
        panic!("first_ns, last_ns in {j}");
    };
    let span = (last - first) as f64 / 1e9;
    let elapsed = j["elapsed_s"].as_f64().expect("elapsed_s");
    assert!((span - elapsed).abs() <= 0.001, "{span} s against {j}");
    assert!(ok, "flood-sub exit status: {j} {stderr:#?}");
    j
}

#[test]
fn line_protocol_every_message_once() {
    let s = start_server();
    let p = port(s.line);
    fan_out(
        &["--proto", "line", "-p", &p, "-c", "lt.line"],
        &[
            "--proto",
            "line",
            "-p",
            &p,
            "-c",
            "lt.line",
            "--connections",
            "2",
            "--size",
            "100",
        ],
        4,
        1500,
    );
}

/// `--channels`: subscribers spread over 10 channels, 5 publishers
/// round-robin over them; each subscriber gets its channel's 50 messages
/// once, on both doors.
#[test]
fn many_channels_many_publishers() {
    let s = start_server();
    for (proto, p) in [("line", port(s.line)), ("http", port(s.bus))] {
        let ch = format!("lt.many.{proto}");
        let sub = start_sub(&[
            "--proto",
            proto,
            "-p",
            &p,
            "-c",
            &ch,
            "--channels",
            "10",
            "--connections",
            "30",
            "--count",
            "50",
        ]);
        let published = run_pub(&[
            "--proto",
            proto,
            "-p",
            &p,
            "-c",
            &ch,
            "--channels",
            "10",
            "--connections",
            "5",
            "--count",
            "500",
            "--json",
        ]);
        assert!(published.status.success(), "{proto}: {published:?}");
        let (ok, j, stderr) = sub.finish();
        assert_eq!(j["unique"], 30 * 50, "{proto}: {j} {stderr:#?}");
        assert_eq!(j["received"], 30 * 50, "{proto}: {j}");
        assert_eq!(j["lost"], 0, "{proto}: {j}");
        assert!(ok, "{proto}: {j} {stderr:#?}");
    }
}

#[test]
fn http_bus_every_message_once() {
    let s = start_server();
    let p = port(s.bus);
    fan_out(
        &[
            "--proto",
            "http",
            "-p",
            &p,
            "-c",
            "lt.http",
            "-t",
            "text/plain",
        ],
        &["--proto", "http", "-p", &p, "-c", "lt.http", "--size", "80"],
        4,
        1500,
    );
}

#[test]
fn websocket_subscribers_and_publishers() {
    let s = start_server();
    let p = port(s.bus);
    fan_out(
        &["--proto", "ws", "-p", &p, "-c", "lt.ws"],
        &[
            "--proto",
            "ws",
            "-p",
            &p,
            "-c",
            "lt.ws",
            "--connections",
            "2",
            "--size",
            "100",
        ],
        3,
        900,
    );
}

#[test]
fn event_stream_subscribers() {
    let s = start_server();
    let p = port(s.bus);
    fan_out(
        &[
            "--proto",
            "sse",
            "-p",
            &p,
            "-c",
            "lt.sse",
            "-t",
            "text/plain",
        ],
        &[
            "--proto",
            "http",
            "-p",
            &p,
            "-c",
            "lt.sse",
            "-t",
            "text/plain",
        ],
        3,
        900,
    );
}

#[test]
fn http10_subscribers() {
    let s = start_server();
    let p = port(s.bus);
    fan_out(
        &["--proto", "http", "-p", &p, "-c", "lt.h10", "--http10"],
        &["--proto", "http", "-p", &p, "-c", "lt.h10"],
        2,
        500,
    );
}

#[test]
fn line_publisher_http_subscribers_share_channels() {
    let s = start_server();
    fan_out(
        &["--proto", "http", "-p", &port(s.bus), "-c", "lt.mixed"],
        &[
            "--proto",
            "line",
            "-p",
            &port(s.line),
            "-c",
            "lt.mixed",
            "-r",
            "5000",
        ],
        3,
        600,
    );
}

#[test]
fn worker_processes_and_source_addresses() {
    let s = start_server();
    let p = port(s.line);
    let j = fan_out(
        &[
            "--proto",
            "line",
            "-p",
            &p,
            "-c",
            "lt.procs",
            "--procs",
            "2",
            "--sources",
            "3",
        ],
        &["--proto", "line", "-p", &p, "-c", "lt.procs"],
        6,
        400,
    );
    assert_eq!(j["procs"], 2, "{j}");
    assert_eq!(j["subscribed"], 6, "{j}");
}

#[test]
fn file_body_and_type() {
    let s = start_server();
    let p = port(s.line);
    let dir = std::env::temp_dir().join(format!("flood-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("body.html");
    std::fs::write(&file, "<h1>hello world</h1>\n").expect("write body file");
    let f = file.to_string_lossy().into_owned();
    fan_out(
        &[
            "--proto",
            "http",
            "-p",
            &port(s.bus),
            "-c",
            "lt.file",
            "-t",
            "text/html",
        ],
        &[
            "--proto",
            "line",
            "-p",
            &p,
            "-c",
            "lt.file",
            "-f",
            &f,
            "-t",
            "text/html",
        ],
        2,
        300,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn lost_messages_fail_the_run() {
    let s = start_server();
    let p = port(s.line);
    let sub = start_sub(&[
        "--proto",
        "line",
        "-p",
        &p,
        "-c",
        "lt.lost",
        "--connections",
        "2",
        "--count",
        "50",
        "--idle-timeout",
        "1",
    ]);
    let published = run_pub(&[
        "--proto", "line", "-p", &p, "-c", "lt.lost", "--count", "30",
    ]);
    assert!(published.status.success());
    let (ok, j, _) = sub.finish();
    assert!(!ok, "lost messages must fail flood-sub: {j}");
    assert_eq!(j["received"], 60, "{j}");
    assert_eq!(j["expected"], 100, "{j}");
    assert_eq!(j["lost"], 40, "{j}");
    assert_eq!(j["ok"], false, "{j}");
    assert!(
        j["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("lost 40"),
        "{j}"
    );
}

#[test]
fn connection_errors_fail_both_tools() {
    // A port nobody listens on: bind one, then free it.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let out = Command::new(SUB)
        .args([
            "--proto",
            "line",
            "-p",
            &free,
            "--connections",
            "3",
            "--count",
            "1",
            "--json",
        ])
        .output()
        .expect("run flood-sub");
    assert!(!out.status.success());
    let j: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .expect("flood-sub --json line");
    assert_eq!(j["errors"], 3, "{j}");
    assert_eq!(j["lost"], 3, "{j}");
    assert!(
        j["first_error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{j}"
    );

    let out = run_pub(&["--proto", "http", "-p", &free, "--count", "1", "--json"]);
    assert!(!out.status.success());
    let j: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .expect("flood-pub --json line");
    assert_eq!(j["errors"], 1, "{j}");
    assert_eq!(j["ok"], false, "{j}");
}

#[test]
fn duration_runs_end_by_themselves() {
    let s = start_server();
    let p = port(s.line);
    let sub = start_sub(&[
        "--proto",
        "line",
        "-p",
        &p,
        "-c",
        "lt.dur",
        "--duration",
        "1.5",
    ]);
    let published = run_pub(&[
        "--proto",
        "line",
        "-p",
        &p,
        "-c",
        "lt.dur",
        "--duration",
        "0.5",
        "-r",
        "400",
        "--json",
    ]);
    assert!(published.status.success(), "{published:?}");
    let pj: Value = serde_json::from_str(String::from_utf8_lossy(&published.stdout).trim())
        .expect("flood-pub --json line");
    let sent = pj["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{pj}");
    assert_eq!(pj["confirmed"], sent, "{pj}");
    let (ok, j, _) = sub.finish();
    assert!(ok, "{j}");
    assert_eq!(j["received"], sent, "{j}");
    assert!(j["expected"].is_null(), "{j}");
}

/// A CA and a server certificate for `localhost` signed by it, written to a
/// fresh directory; returns (directory, CA file, certificate file, key file).
fn test_pki() -> (PathBuf, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!(
        "flood-tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flood test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("signed server certificate");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a PEM file");
        path.to_str().expect("UTF-8 path").to_string()
    };
    let ca_file = write("ca.pem", ca_cert.pem());
    let cert_file = write("server.pem", cert.pem());
    let key_file = write("server.key", key.serialize_pem());
    (dir, ca_file, cert_file, key_file)
}

#[test]
fn both_doors_over_tls_check_the_certificate() {
    let (dir, ca, cert, key) = test_pki();
    let s = start_server_with(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--bus-tls-listen",
            "127.0.0.1:0",
            "--line-tls-listen",
            "127.0.0.1:0",
        ],
        &["bus-tls", "line-tls"],
    );
    let line_tls = port(s.doors["line-tls"]);
    let bus_tls = port(s.doors["bus-tls"]);
    let tls = ["--tls", "--ca", ca.as_str(), "--server-name", "localhost"];
    for (proto, p, ch) in [
        ("line", &line_tls, "lt.tls.line"),
        ("http", &bus_tls, "lt.tls.http"),
    ] {
        let mut sub: Vec<&str> = vec!["--proto", proto, "-p", p, "-c", ch];
        sub.extend_from_slice(&tls);
        let mut publ: Vec<&str> = vec!["--proto", proto, "-p", p, "-c", ch];
        publ.extend_from_slice(&tls);
        fan_out(&sub, &publ, 3, 200);
    }
    // A certificate that does not name the host asked for is refused.
    let refused = run_pub(&[
        "--proto",
        "line",
        "-p",
        &line_tls,
        "--tls",
        "--ca",
        &ca,
        "--server-name",
        "wrong.example",
        "--count",
        "1",
    ]);
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success(),
        "a wrong server name must be refused: {why}"
    );
    assert!(
        why.to_lowercase().contains("name") || why.to_lowercase().contains("certificate"),
        "the refusal names the certificate problem: {why}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreadable_deliveries_are_counted_bad_and_fail_the_run() {
    let s = start_server();
    let p = port(s.line);
    // Two connections that take any type, one that wants text/html.
    let any = start_sub(&[
        "--proto",
        "line",
        "-p",
        &p,
        "-c",
        "lt.bad",
        "--connections",
        "2",
        "--count",
        "1",
    ]);
    // (It never gets a message it can count, so only --timeout ends it.)
    let html = start_sub(&[
        "--proto",
        "line",
        "-p",
        &p,
        "-c",
        "lt.bad",
        "--count",
        "1",
        "-t",
        "text/html",
        "--timeout",
        "3",
    ]);
    // A delivery without flood-pub's stamp, straight from a line client.
    let mut raw = std::net::TcpStream::connect(s.line).expect("connect");
    std::io::Write::write_all(&mut raw, b"! 5 lt.bad text/plain\r\nhello\r\n.\r\n")
        .expect("publish");
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest)
        .expect("the server closes after `.`");
    assert!(rest.is_empty(), "{rest:?}");
    // Then one stamped text/plain message, which ends both runs.
    let published = run_pub(&["--proto", "line", "-p", &p, "-c", "lt.bad", "--count", "1"]);
    assert!(published.status.success(), "{published:?}");
    let (status, j, stderr) = any.finish_status();
    assert_eq!(status.code(), Some(1), "{j} {stderr:#?}");
    assert_eq!(j["bad"], 2, "{j}");
    assert_eq!(j["received"], 2, "{j}");
    assert_eq!(j["lost"], 0, "{j}");
    assert_eq!(j["ok"], false, "{j}");
    // The stamped message is of the wrong type for the third: bad too.
    let (status, j, stderr) = html.finish_status();
    assert_eq!(status.code(), Some(1), "{j} {stderr:#?}");
    assert_eq!(j["bad"], 2, "{j}");
    assert_eq!(j["lost"], 1, "{j}");
    assert_eq!(j["ok"], false, "{j}");
}

#[test]
fn bad_arguments_exit_2() {
    for (tool, args) in [
        (SUB, &["--proto", "smtp"][..]),
        (SUB, &["--count", "many"]),
        (SUB, &["--no-such-flag"]),
        (SUB, &["--tls"]),
        (PUB, &["--rate", "fast"]),
        (PUB, &["--proto", "smtp"]),
        (PUB, &["--tls"]),
        (PUB, &["--proto", "sse"]),
        (SUB, &["--proto", "ws", "--expect-type", "text/plain"]),
    ] {
        let out = Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run a flood tool");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{tool} {args:?} says nothing");
    }
}

/// flood-pub --wait-subscribers started before flood-sub: it publishes
/// nothing until flood-sub has announced every connection on the ready
/// channel, so nothing is lost although neither waits for the other's
/// output.
#[test]
fn flood_pub_waits_for_the_subscribers_it_is_told_of() {
    let s = start_server();
    for (proto, addr, ch) in [("line", s.line, "lt.wait"), ("http", s.bus, "lt.hwait")] {
        let addr = addr.to_string();
        let publisher = Command::new(PUB)
            .args(["--proto", proto, "--address", &addr, "-c", ch])
            .args(["--wait-subscribers", "6", "--count", "40", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flood-pub");
        let mut publisher = Guard(publisher);
        // Only once flood-pub says it waits is flood-sub started.
        let pub_err = lines_of(publisher.0.stderr.take().expect("flood-pub stderr"));
        let mut said = Vec::new();
        loop {
            let l = pub_err
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("flood-pub never said it waits ({e}): {said:#?}"));
            let waiting = l.contains("waiting for 6 subscribers");
            said.push(l);
            if waiting {
                break;
            }
        }
        // Two flood-sub processes of 3 connections: their counts add up.
        let subs: Vec<Guard> = (0..2)
            .map(|_| {
                Guard(
                    Command::new(SUB)
                        .args(["--proto", proto, "--address", &addr, "-c", ch])
                        .args(["--connections", "3", "--count", "40", "--json"])
                        .args(["--timeout", "90"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start flood-sub"),
                )
            })
            .collect();
        let mut out = String::new();
        publisher
            .0
            .stdout
            .take()
            .expect("flood-pub stdout")
            .read_to_string(&mut out)
            .expect("read flood-pub stdout");
        let status = publisher.0.wait().expect("wait for flood-pub");
        while let Ok(l) = pub_err.recv_timeout(Duration::from_millis(200)) {
            said.push(l);
        }
        assert!(status.success(), "{proto}: {out} {said:#?}");
        assert!(
            said.iter().any(|l| l.ends_with("6 of 6 subscribers ready")),
            "{proto}: {said:#?}"
        );
        for mut sub in subs {
            let mut out = String::new();
            sub.0
                .stdout
                .take()
                .expect("flood-sub stdout")
                .read_to_string(&mut out)
                .expect("read flood-sub stdout");
            assert!(sub.0.wait().expect("wait").success(), "{proto}: {out}");
            let j: Value = serde_json::from_str(out.trim()).expect("flood-sub JSON");
            assert_eq!(j["lost"], 0, "{proto}: {j}");
            assert_eq!(j["received"], 120, "{proto}: {j}");
        }
    }
}

/// flood-sub announces once a second whatever its `--interval`: a
/// publisher started after its `ready:` line (and after the announcement
/// that came with it) still learns of it, with one process or several.
#[test]
fn a_publisher_started_after_the_subscribers_are_ready_hears_of_them() {
    let s = start_server();
    let line = s.line.to_string();
    for (ch, procs) in [("lt.late1", "1"), ("lt.late2", "2")] {
        let sub = start_sub(&[
            "--proto",
            "line",
            "--address",
            &line,
            "-c",
            ch,
            "--connections",
            "4",
            "--procs",
            procs,
            "--count",
            "30",
            "--interval",
            "3600",
        ]);
        let out = run_pub(&[
            "--proto",
            "line",
            "--address",
            &line,
            "-c",
            ch,
            "--wait-subscribers",
            "4",
            "--wait-timeout",
            "20",
            "--count",
            "30",
            "--json",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "--procs {procs}: {err}");
        assert!(err.contains("4 of 4 subscribers ready"), "{err}");
        let (ok, j, stderr) = sub.finish();
        assert_eq!(j["lost"], 0, "{j} {stderr:#?}");
        assert_eq!(j["received"], 120, "{j}");
        assert!(ok, "{j} {stderr:#?}");
    }
}

#[test]
fn waiting_for_subscribers_that_never_come_fails() {
    let s = start_server();
    let out = run_pub(&[
        "--proto",
        "line",
        "--address",
        &s.line.to_string(),
        "-c",
        "lt.nobody",
        "--wait-subscribers",
        "1",
        "--wait-timeout",
        "0.5",
        "--count",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--wait-subscribers 1: 0 subscribed"), "{err}");
}

#[test]
fn the_old_short_n_is_refused_with_what_to_write() {
    for tool in [SUB, PUB] {
        for args in [&["-n", "3"][..], &["-n3"], &["--count", "1", "-n", "2"]] {
            let out = Command::new(tool)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run a flood tool");
            assert_eq!(out.status.code(), Some(2), "{tool} {args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("--connections N"), "{tool} {args:?}: {err}");
        }
    }
}

#[test]
fn address_takes_host_port_and_the_old_l_still_works() {
    let s = start_server();
    let line = s.line.to_string();
    let port = port(s.line);
    for (n, addr_args) in [
        vec!["--address".to_string(), line.clone()],
        vec!["-a".to_string(), format!(":{port}")],
        vec![
            "-l".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            port.clone(),
        ],
        vec!["--address".to_string(), format!("localhost:{port}")],
    ]
    .into_iter()
    .enumerate()
    {
        let ch = format!("lt.addr{n}");
        let mut sa: Vec<&str> = addr_args.iter().map(String::as_str).collect();
        sa.extend(["--proto", "line", "-c", &ch, "--count", "3"]);
        let sub = start_sub(&sa);
        let mut pa: Vec<&str> = addr_args.iter().map(String::as_str).collect();
        pa.extend(["--proto", "line", "-c", &ch, "--count", "3"]);
        let published = run_pub(&pa);
        assert!(published.status.success(), "{addr_args:?}: {published:?}");
        let (ok, j, _) = sub.finish();
        assert!(ok, "{addr_args:?}: {j}");
        assert_eq!(j["received"], 3, "{addr_args:?}: {j}");
    }
}
