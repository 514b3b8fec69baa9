//! TLS end to end: the HTTPS bus and the line protocol over TLS, checked
//! with independent clients (curl, Python's `ssl` + `http.client`,
//! `openssl s_client`) and with switchboard's own client and CLI; bad bytes
//! on the TLS doors; certificates the client must refuse; 1,000 TLS
//! subscribers; start-up errors for bad certificate and key files.
//!
//! Every test makes its own certificates with rcgen in a fresh temp
//! directory: a CA, a server certificate for `localhost` and `127.0.0.1`
//! signed by it, an expired one, one for another host, and a second,
//! untrusted CA. curl, openssl and python3 must be on PATH; a test that
//! needs one that is missing fails and says so.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, line_sync, Server, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use switchboard::client::{tls_config, Client, Error, Event, Transport};

/// Longest any step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(30);

const SERVER: &str = env!("CARGO_BIN_EXE_switchboard");
const CLI: &str = env!("CARGO_BIN_EXE_switchboard-cli");

// ---------------------------------------------------------------------
// Certificates and files

/// The PEM files of one test, in its own temp dir.
struct Pki {
    dir: TempDir,
    /// The CA that signs every server certificate below.
    ca: String,
    /// A CA that signed none of them.
    other_ca: String,
    /// For `localhost` and `127.0.0.1`, valid now.
    cert: String,
    key: String,
    /// `cert` and `key` in one file.
    both: String,
    /// For `localhost` and `127.0.0.1`, expired in 2021.
    expired_cert: String,
    expired_key: String,
    /// For `wrong.example` only.
    wrong_host_cert: String,
    wrong_host_key: String,
    /// A key that belongs to no certificate.
    stray_key: String,
    /// Text without any PEM block.
    no_pem: String,
}

fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a PEM file");
    path.to_str().expect("a UTF-8 temp path").to_string()
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

/// A server certificate for `names`, signed by `issuer`; `years` bounds
/// its validity (default: rcgen's, 1975 to 4096).
fn leaf(
    names: &[&str],
    years: Option<(i32, i32)>,
    issuer: &(rcgen::Certificate, KeyPair),
) -> (String, String) {
    let key = KeyPair::generate().expect("server key");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    if let Some((from, to)) = years {
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    let cert = params
        .signed_by(&key, &issuer.0, &issuer.1)
        .expect("sign a server certificate");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("tls");
        let d = dir.0.clone();
        let authority = ca("switchboard test CA");
        let stranger = ca("an unrelated CA");
        let (cert, key) = leaf(&["localhost", "127.0.0.1"], None, &authority);
        let (expired_cert, expired_key) =
            leaf(&["localhost", "127.0.0.1"], Some((2020, 2021)), &authority);
        let (wrong_cert, wrong_key) = leaf(&["wrong.example"], None, &authority);
        let stray = KeyPair::generate().expect("stray key").serialize_pem();
        Pki {
            ca: write_file(&d, "ca.pem", &authority.0.pem()),
            other_ca: write_file(&d, "other-ca.pem", &stranger.0.pem()),
            cert: write_file(&d, "server.pem", &cert),
            key: write_file(&d, "server.key", &key),
            both: write_file(&d, "server-both.pem", &format!("{cert}{key}")),
            expired_cert: write_file(&d, "expired.pem", &expired_cert),
            expired_key: write_file(&d, "expired.key", &expired_key),
            wrong_host_cert: write_file(&d, "wrong-host.pem", &wrong_cert),
            wrong_host_key: write_file(&d, "wrong-host.key", &wrong_key),
            stray_key: write_file(&d, "stray.key", &stray),
            no_pem: write_file(&d, "no-pem.txt", "this file holds no PEM block\n"),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).to_str().expect("UTF-8").to_string()
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        tls_config(Path::new(&self.ca)).expect("a client config trusting the test CA")
    }
}

/// A server with the plain line door, the HTTPS bus and the line protocol
/// over TLS, using `cert` and `key`.
fn start_tls(cert: &str, key: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--bus-tls-listen",
        "127.0.0.1:0",
        "--line-tls-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map(|(_, p)| p).expect("HOST:PORT")
}

// ---------------------------------------------------------------------
// External tools

/// Fails the test with the Debian package to install when `tool` is not on
/// PATH.
fn require(tool: &str) {
    common::program(tool);
}

/// Waits for `child` (at most PATIENCE, then kills it) and collects its
/// output.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match child.try_wait().expect("poll a child process") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                break;
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
    child.wait_with_output().expect("collect a child's output")
}

fn run(cmd: &mut Command) -> Output {
    finish(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a child process"),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What a reader produces, chunk by chunk, on a thread.
fn byte_channel(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Appends to `seen` what arrives on `rx` until `needle` is in it.
fn wait_for(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut Vec<u8>, needle: &str, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !seen.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(_) => panic!(
                "{what}: no {needle:?} within {PATIENCE:?}; got {:?}",
                text(seen)
            ),
        }
    }
}

/// Kills a child process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------
// The HTTPS bus

#[test]
fn curl_subscribes_and_publishes_over_https() {
    require("curl");
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &[]);
    let port = port_of(server.addr("bus-tls")).to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");

    // The subscriber reaches the server by IP address, the publisher by
    // name: the certificate holds both.
    let mut sub = Guard(
        Command::new(common::program("curl"))
            .args(["-sS", "-N", "--cacert", &pki.ca])
            .arg(format!("https://127.0.0.1:{port}/msgbus/news"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start curl"),
    );
    let rx = byte_channel(sub.0.stdout.take().expect("curl stdout"));
    let mut seen = Vec::new();
    // The opening boundary comes with the subscription.
    wait_for(&rx, &mut seen, "--00MsgBus00", "curl subscriber");

    let publish = run(Command::new(common::program("curl"))
        .args(["-sS", "--fail", "--cacert", &pki.ca, "--resolve", &resolve])
        .args(["-H", "Content-Type: text/plain", "--data-binary"])
        .arg("hello over https")
        .args(["-w", "%{http_code}"])
        .arg(format!("https://localhost:{port}/msgbus/news")));
    assert!(
        publish.status.success(),
        "curl publish: {:?} {}",
        publish.status,
        text(&publish.stderr)
    );
    assert_eq!(text(&publish.stdout), "204");

    wait_for(
        &rx,
        &mut seen,
        "Content-Type: text/plain\r\nContent-Length: 16\r\n\r\nhello over https\r\n--00MsgBus00",
        "curl subscriber",
    );

    // Trusting another CA, curl must refuse the server (60: peer
    // certificate cannot be authenticated with known CA certificates).
    let untrusted = run(Command::new(common::program("curl"))
        .args(["-sS", "-o", "/dev/null", "--cacert", &pki.other_ca])
        .arg(format!("https://127.0.0.1:{port}/msgbus-stats")));
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "curl without --cacert: {}",
        text(&untrusted.stderr)
    );
}

#[test]
fn one_pem_file_may_hold_certificate_and_key() {
    require("curl");
    let pki = Pki::new();
    let server = start_tls(&pki.both, &pki.both, &[]);
    let port = port_of(server.addr("bus-tls")).to_string();
    let stats = run(Command::new(common::program("curl"))
        .args(["-sS", "--fail", "--cacert", &pki.ca])
        .arg(format!("https://127.0.0.1:{port}/msgbus-stats")));
    assert!(
        stats.status.success(),
        "curl /msgbus-stats: {}",
        text(&stats.stderr)
    );
    assert!(
        text(&stats.stdout).starts_with('{'),
        "{}",
        text(&stats.stdout)
    );
}

/// Subscribes and publishes with Python's own TLS and HTTP code; prints
/// one line per check.
const PYTHON_CLIENT: &str = r#"
import http.client, ssl, sys

port, ca, other_ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]

# Trusting another CA, the handshake must fail.
try:
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                    context=ssl.create_default_context(cafile=other_ca))
    c.request("GET", "/msgbus-stats")
    c.getresponse()
    print("untrusted: accepted")
except ssl.SSLCertVerificationError:
    print("untrusted: refused")

ctx = ssl.create_default_context(cafile=ca)
sub = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
sub.request("GET", "/msgbus/py")
r = sub.getresponse()
print("subscribe:", r.status, r.getheader("Content-Type"))
print("version:", sub.sock.version())
buf = b""
while b"--00MsgBus00" not in buf:
    chunk = r.read1(4096)
    if not chunk:
        break
    buf += chunk

pub = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
pub.request("POST", "/msgbus/py", body=b"hello from python",
            headers={"Content-Type": "text/plain"})
p = pub.getresponse()
p.read()
print("publish:", p.status)

buf = b""
while b"hello from python" not in buf:
    chunk = r.read1(4096)
    if not chunk:
        break
    buf += chunk
print("received:", buf.decode("utf-8", "replace").replace("\r\n", "|"))
"#;

#[test]
fn python_ssl_and_http_client_subscribe_and_publish() {
    require("python3");
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &[]);
    let port = port_of(server.addr("bus-tls")).to_string();
    let out = run(Command::new(common::program("python3"))
        .args(["-c", PYTHON_CLIENT, &port, &pki.ca, &pki.other_ca])
        .env("PYTHONUNBUFFERED", "1"));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "python3: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"untrusted: refused"), "{stdout}");
    assert!(
        lines.contains(&"subscribe: 200 multipart/x-mixed-replace;boundary=00MsgBus00"),
        "{stdout}"
    );
    assert!(lines.contains(&"version: TLSv1.3"), "{stdout}");
    assert!(lines.contains(&"publish: 204"), "{stdout}");
    assert!(
        stdout.contains("Content-Type: text/plain|Content-Length: 17||hello from python|"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------
// The line protocol over TLS

#[test]
fn openssl_s_client_speaks_the_line_protocol() {
    require("openssl");
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &[]);
    let tls_addr = server.addr("line-tls").to_string();

    let mut s_client = Guard(
        Command::new(common::program("openssl"))
            .args(["s_client", "-connect", &tls_addr, "-CAfile", &pki.ca])
            .args(["-servername", "localhost", "-verify_hostname", "localhost"])
            // Strict X.509 checks, as recent Pythons make by default.
            .args(["-verify_return_error", "-x509_strict", "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start openssl s_client"),
    );
    let mut input = s_client.0.stdin.take().expect("s_client stdin");
    let rx = byte_channel(s_client.0.stdout.take().expect("s_client stdout"));
    let mut seen = Vec::new();

    // Subscribe, then a zero-second wait: its `*` proves the subscription.
    input
        .write_all(b"+ tlsnews\r\n< 0 sync.s_client\r\n")
        .expect("write to s_client");
    input.flush().expect("flush s_client stdin");
    wait_for(&rx, &mut seen, "*\r\n", "s_client sync");

    // A plaintext client publishes; the TLS one receives.
    let mut plain = Client::connect_tcp(server.line()).expect("plain line client");
    plain.subscribe("tlsnews").expect("subscribe");
    plain.sync().expect("sync");
    plain
        .publish("tlsnews", Some("text/plain"), b"hello from plain")
        .expect("publish");
    wait_for(
        &rx,
        &mut seen,
        "! 16 tlsnews text/plain\r\nhello from plain\r\n",
        "s_client subscriber",
    );

    // And the other way round, then `.` ends the session.
    input
        .write_all(b"! 13 tlsnews text/plain\r\nfrom s_client\r\n.\r\n")
        .expect("write to s_client");
    input.flush().expect("flush s_client stdin");
    plain
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        match plain
            .next_event()
            .expect("a publication on the plain client")
        {
            Event::Publication(p) => bodies.push(text(&p.body)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(bodies, ["hello from plain", "from s_client"]);

    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = s_client.0.try_wait().expect("poll s_client") {
            break status;
        }
        assert!(Instant::now() < deadline, "s_client still runs after `.`");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "s_client: {status:?}");
}

#[test]
fn openssl_s_client_refuses_a_name_the_certificate_lacks() {
    require("openssl");
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &[]);
    let out = run(Command::new(common::program("openssl"))
        .args(["s_client", "-connect", server.addr("line-tls")])
        .args(["-CAfile", &pki.ca, "-verify_hostname", "wrong.example"])
        .args(["-verify_return_error", "-brief"]));
    assert!(!out.status.success(), "s_client accepted a wrong name");
    assert!(
        text(&out.stderr).contains("hostname mismatch"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn large_messages_cross_tls_both_ways() {
    let pki = Pki::new();
    // A backlog limit above the three messages: none may be dropped while
    // the subscriber does not read.
    let server = start_tls(&pki.cert, &pki.key, &["--backlog-limit", "20000000"]);
    let addr = server.addr("line-tls").to_string();
    let config = pki.client_config();
    // Larger than rustls' buffers on either side many times over.
    let body: Vec<u8> = noise(3 * 1024 * 1024 + 17);

    let mut sub = Client::connect_tls(&addr, "localhost", config.clone()).expect("connect");
    sub.subscribe("big").expect("subscribe");
    sub.sync().expect("sync");
    sub.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut publisher = Client::connect_tls(&addr, "localhost", config).expect("connect");
    for _ in 0..3 {
        publisher.publish("big", None, &body).expect("publish");
    }
    // The publishes have all been run (so queued to the subscriber) before
    // it starts reading: the server holds what its socket does not.
    publisher.sync().expect("sync");
    for n in 0..3 {
        match sub
            .next_event()
            .unwrap_or_else(|e| panic!("big publication {n}: {e}"))
        {
            Event::Publication(p) => assert!(p.body == body, "message {n} differs"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // A query and its answer through TLS, with a big body each way.
    let worker = thread::spawn({
        let addr = addr.clone();
        let config = pki.client_config();
        let body = body.clone();
        move || {
            let mut w = Client::connect_tls(&addr, "127.0.0.1", config).expect("connect");
            let m = w.ready(30, &["echo"]).expect("ready").expect("a message");
            assert!(m.body == body);
            let reply = m.reply.expect("a reply address");
            w.send(&m.body, 30, &reply, None).expect("answer");
            w.quit().expect("quit");
        }
    });
    let answer = publisher
        .query(&body, 30, "echo")
        .expect("query")
        .expect("an answer");
    assert!(answer.body == body);
    worker.join().expect("worker");
    publisher.quit().expect("quit");
}

/// Reads until the server closes (end of stream or reset); fails if it
/// keeps the connection open for PATIENCE. Returns what was read.
fn expect_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("{what}: not closed ({e}); got {:?}", text(&got)),
        }
    }
}

/// Deterministic noise.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn plaintext_and_garbage_on_tls_doors_are_closed_and_harm_no_one() {
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &[]);
    let line_tls = server.addr("line-tls").to_string();
    let bus_tls = server.addr("bus-tls").to_string();
    let config = pki.client_config();

    // A TLS subscriber that must see only the publication made at the end.
    let mut good = Client::connect_tls(&line_tls, "localhost", config.clone()).expect("connect");
    good.subscribe("g").expect("subscribe");
    good.sync().expect("sync");
    good.set_read_timeout(Some(PATIENCE)).expect("timeout");

    // A client that stops in the middle of its ClientHello stays open
    // throughout: it must hold up no one.
    let mut stalled = TcpStream::connect(&line_tls).expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).expect("write");

    let mut tls_looking = vec![0x16, 0x03, 0x03, 0x00, 0x40];
    tls_looking.extend([0xab; 0x40]);
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "line commands in plaintext",
            &line_tls,
            b"+ g\r\n! 3 g\r\nbad\r\n".to_vec(),
        ),
        (
            "an HTTP request in plaintext",
            &bus_tls,
            b"GET /msgbus/g HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "a handshake record full of garbage",
            &line_tls,
            tls_looking.clone(),
        ),
        (
            "a handshake record full of garbage (bus)",
            &bus_tls,
            tls_looking,
        ),
        ("noise", &line_tls, noise(8192)),
        ("noise (bus)", &bus_tls, noise(8192)),
    ];
    for (what, addr, bytes) in &cases {
        let mut s = TcpStream::connect(addr).expect("connect");
        // The server may close before it has read everything.
        let _ = s.write_all(bytes);
        let got = expect_closed(&mut s, what);
        // At most a TLS alert record comes back, never a protocol answer.
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{what}: answered {:?}",
            text(&got)
        );
    }

    // After a complete handshake, a record that fails authentication.
    let mut forged =
        Transport::connect_tls(&line_tls, "localhost", config.clone()).expect("connect");
    let Transport::Tls(stream) = &mut forged else {
        panic!("a TLS transport")
    };
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    record.extend(noise(0x30));
    stream
        .sock
        .write_all(&record)
        .expect("write a forged record");
    stream
        .sock
        .set_read_timeout(Some(PATIENCE))
        .expect("timeout");
    let mut buf = [0u8; 256];
    match forged.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::TimedOut => {}
        other => panic!("a forged record: connection not closed: {other:?}"),
    }

    // Everyone else is fine: the subscriber gets exactly the next
    // publication, new TLS clients on both doors are served.
    let mut publisher = Client::connect_tcp(server.line()).expect("plain client");
    publisher
        .publish("g", Some("text/plain"), b"after")
        .expect("publish");
    match good.next_event().expect("the subscriber's next event") {
        Event::Publication(p) => assert_eq!(text(&p.body), "after"),
        other => panic!("unexpected {other:?}"),
    }
    let mut fresh = Client::connect_tls(&line_tls, "127.0.0.1", config.clone()).expect("connect");
    assert_eq!(fresh.ready(0, &["nobody"]).expect("ready"), None);
    fresh.quit().expect("quit");

    let mut https = Transport::connect_tls(&bus_tls, "localhost", config).expect("connect");
    https
        .write_all(b"GET /msgbus-stats HTTP/1.0\r\n\r\n")
        .expect("write");
    https.flush().expect("flush");
    https.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut answer = Vec::new();
    https.read_to_end(&mut answer).expect("read the stats page");
    assert!(
        text(&answer).starts_with("HTTP/1.0 200"),
        "{}",
        text(&answer)
    );

    // The stalled handshake is still open and unanswered: the server never
    // waits on it (checked after all of the above, which the server did
    // after reading its bytes).
    common::assert_nothing_pending(&stalled, "the stalled handshake");
    stalled.shutdown(Shutdown::Both).expect("shutdown");
}

// ---------------------------------------------------------------------
// switchboard-cli over TLS

fn cli(args: &[&str]) -> Output {
    run(Command::new(CLI).args(args))
}

fn assert_exit(o: &Output, want: i32) {
    assert_eq!(
        o.status.code(),
        Some(want),
        "exit status; stdout: {}; stderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn cli_publishes_and_subscribes_over_tls() {
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &[]);
    let addr = server.addr("line-tls").to_string();
    let tls = ["--tls", "--ca", pki.ca.as_str(), "--address", addr.as_str()];

    // Ends by itself after one message, or when the server goes.
    let mut sub = Command::new(CLI)
        .args(tls)
        .args(["subscribe", "-n", "1", "news"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard-cli subscribe");
    let err = byte_channel(sub.stderr.take().expect("stderr"));
    let mut seen = Vec::new();
    wait_for(&err, &mut seen, "subscribed: news", "cli subscriber");

    // By name this time: the certificate holds `localhost` too.
    let publish = cli(&[
        "--tls",
        "--ca",
        &pki.ca,
        "--address",
        &addr,
        "--server-name",
        "localhost",
        "publish",
        "news",
        "over tls",
        "--type",
        "text/plain",
    ]);
    assert_exit(&publish, 0);

    let out = finish(sub);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "! 8 news text/plain\nover tls\n");

    let query = cli(&[&tls[..], &["query", "nobody", "anyone?", "--timeout", "0"]].concat());
    assert_exit(&query, 1);
    assert_eq!(text(&query.stdout), "*\n");

    // Without --tls, the TLS door is named, with what it needs.
    let plain = cli(&["--address", &addr, "publish", "news", "x"]);
    assert_exit(&plain, 2);
    assert!(
        text(&plain.stderr).contains(&format!(
            "{addr} closed the connection without answering the line protocol"
        )) && text(&plain.stderr).contains("a TLS door needs --tls --ca FILE"),
        "{}",
        text(&plain.stderr)
    );
}

#[test]
fn cli_refuses_expired_wrong_host_and_untrusted_certificates() {
    let pki = Pki::new();
    let expired = start_tls(&pki.expired_cert, &pki.expired_key, &[]);
    let wrong = start_tls(&pki.wrong_host_cert, &pki.wrong_host_key, &[]);
    let good = start_tls(&pki.cert, &pki.key, &[]);
    let publish = |addr: &str, ca: &str, extra: &[&str]| {
        let mut args = vec!["--tls", "--ca", ca, "--address", addr];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["publish", "news", "x"]);
        cli(&args)
    };

    let cases: Vec<(&str, Output, String)> = vec![
        (
            "expired",
            publish(expired.addr("line-tls"), &pki.ca, &[]),
            format!(
                "switchboard-cli: cannot connect to {}: TLS: the server's certificate was \
                 refused: certificate expired: verification time ",
                expired.addr("line-tls")
            ),
        ),
        (
            "expired, by name",
            publish(
                expired.addr("line-tls"),
                &pki.ca,
                &["--server-name", "localhost"],
            ),
            "certificate expired".into(),
        ),
        (
            "wrong host",
            publish(wrong.addr("line-tls"), &pki.ca, &[]),
            format!(
                "switchboard-cli: cannot connect to {}: TLS: the server's certificate was \
                 refused: certificate not valid for name \"127.0.0.1\"; certificate is only \
                 valid for DnsName(\"wrong.example\")\n",
                wrong.addr("line-tls")
            ),
        ),
        (
            "a good certificate, another name",
            publish(
                good.addr("line-tls"),
                &pki.ca,
                &["--server-name", "bus.example"],
            ),
            "certificate not valid for name \"bus.example\"".into(),
        ),
        (
            "an untrusted CA",
            publish(good.addr("line-tls"), &pki.other_ca, &[]),
            "TLS: the server's certificate is not signed by a trusted CA (unknown issuer)\n".into(),
        ),
        (
            "a plaintext door",
            publish(good.line(), &pki.ca, &[]),
            "(is the server's door a TLS door?)\n".into(),
        ),
        (
            "a CA file without certificates",
            publish(good.addr("line-tls"), &pki.key, &[]),
            format!(
                "switchboard-cli: --ca {}: no CERTIFICATE block found in the file\n",
                pki.key
            ),
        ),
        (
            "a missing CA file",
            publish(good.addr("line-tls"), &pki.path("missing.pem"), &[]),
            format!(
                "switchboard-cli: --ca {}: No such file or directory",
                pki.path("missing.pem")
            ),
        ),
    ];
    for (what, out, want) in &cases {
        eprintln!("{what}: {}", text(&out.stderr).trim_end());
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(want.as_str()),
            "{what}: stderr {:?} lacks {want:?}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{what}: {}", text(&out.stdout));
    }

    // --tls needs --ca; --ca and --server-name need --tls.
    for args in [
        &["--tls", "publish", "a", "b"][..],
        &["--ca", &pki.ca, "publish", "a", "b"],
        &["--server-name", "localhost", "publish", "a", "b"],
    ] {
        let out = cli(args);
        assert_exit(&out, 2);
    }

    // The library says the same.
    let config = pki.client_config();
    match Client::connect_tls(expired.addr("line-tls"), "127.0.0.1", config) {
        Err(Error::Tls(rustls::Error::InvalidCertificate(c))) => assert!(
            matches!(c, rustls::CertificateError::ExpiredContext { .. }),
            "{c:?}"
        ),
        other => panic!("an expired certificate: {other:?}"),
    }
}

// ---------------------------------------------------------------------
// Many TLS subscribers

/// The soft limit on open files, from /proc (Linux); None elsewhere.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn a_thousand_tls_subscribers_all_receive_a_burst() {
    const SUBSCRIBERS: usize = 1000;
    const THREADS: usize = 8;
    const BURST: usize = 10;
    if let Some(limit) = open_file_limit() {
        assert!(
            limit >= 2 * SUBSCRIBERS as u64 + 200,
            "this test opens {SUBSCRIBERS} connections (both ends in this process and the \
             server it starts) and the open-file limit is {limit}: raise it (`ulimit -n 4096`)"
        );
    }
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &["--bus-listen", "off"]);
    let addr = server.addr("line-tls").to_string();
    let config = pki.client_config();
    let started = Instant::now();

    // Each thread holds its share of blocking clients: it connects and
    // subscribes them all, reports, then reads the burst from each in turn
    // (what a client has not read yet waits in its socket).
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let mut go_senders = Vec::new();
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let (go_tx, go_rx_t) = mpsc::channel::<()>();
        go_senders.push(go_tx);
        let addr = addr.clone();
        let config = config.clone();
        let ready_tx = ready_tx.clone();
        workers.push(thread::spawn(move || -> Result<usize, String> {
            let share = (t..SUBSCRIBERS).step_by(THREADS).count();
            let mut clients = Vec::with_capacity(share);
            for i in 0..share {
                let mut c = Client::connect_tls(&addr, "localhost", config.clone())
                    .map_err(|e| format!("subscriber {t}.{i}: connect: {e}"))?;
                c.set_read_timeout(Some(PATIENCE))
                    .map_err(|e| format!("subscriber {t}.{i}: {e}"))?;
                c.subscribe("burst")
                    .map_err(|e| format!("subscriber {t}.{i}: subscribe: {e}"))?;
                clients.push(c);
            }
            for (i, c) in clients.iter_mut().enumerate() {
                c.sync()
                    .map_err(|e| format!("subscriber {t}.{i}: sync: {e}"))?;
            }
            let _ = ready_tx.send(clients.len());
            go_rx_t
                .recv_timeout(PATIENCE * 4)
                .map_err(|_| "no burst came".to_string())?;
            let mut received = 0;
            for (i, c) in clients.iter_mut().enumerate() {
                for n in 0..BURST {
                    match c.next_event() {
                        Ok(Event::Publication(p)) => {
                            let want = format!("burst message {n}");
                            if p.body != want.as_bytes() {
                                return Err(format!(
                                    "subscriber {t}.{i}: got {:?}, expected {want:?}",
                                    text(&p.body)
                                ));
                            }
                            received += 1;
                        }
                        other => return Err(format!("subscriber {t}.{i}: message {n}: {other:?}")),
                    }
                }
            }
            Ok(received)
        }));
    }
    drop(ready_tx);
    let mut subscribed = 0;
    while subscribed < SUBSCRIBERS {
        match ready_rx.recv_timeout(PATIENCE * 4) {
            Ok(n) => subscribed += n,
            Err(_) => break,
        }
    }
    if subscribed < SUBSCRIBERS {
        let errors: Vec<String> = workers
            .into_iter()
            .filter_map(|w| w.join().ok().and_then(|r| r.err()))
            .collect();
        panic!("only {subscribed} of {SUBSCRIBERS} subscribed: {errors:?}");
    }
    let handshakes = started.elapsed();

    let mut publisher = Client::connect_tcp(server.line()).expect("publisher");
    for n in 0..BURST {
        publisher
            .publish(
                "burst",
                Some("text/plain"),
                format!("burst message {n}").as_bytes(),
            )
            .expect("publish");
    }
    for go in &go_senders {
        let _ = go.send(());
    }
    let mut received = 0;
    let mut errors = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok(n)) => received += n,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a subscriber thread panicked".into()),
        }
    }
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(received, SUBSCRIBERS * BURST);
    publisher.quit().expect("publisher quit");
    eprintln!(
        "{SUBSCRIBERS} TLS subscribers connected and subscribed in {handshakes:?}; \
         all {BURST} messages reached all of them {:?} after the start",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------
// Start-up errors

/// Runs the server with `tls_args`; returns its exit status, stdout and
/// stderr.
fn start_failing(tls_args: &[&str]) -> (ExitStatus, String, String) {
    let out = run(Command::new(SERVER)
        .args([
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "127.0.0.1:0",
        ])
        .args(["--bus-tls-listen", "127.0.0.1:0"])
        .args(tls_args));
    (out.status, text(&out.stdout), text(&out.stderr))
}

#[test]
fn bad_certificate_and_key_files_stop_the_server_before_it_listens() {
    let pki = Pki::new();
    let missing_cert = pki.path("missing.pem");
    let missing_key = pki.path("missing.key");
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "missing certificate file",
            vec!["--tls-cert", &missing_cert, "--tls-key", &pki.key],
            format!(
                "switchboard: --tls-cert {missing_cert}: No such file or directory (os error 2)\n"
            ),
        ),
        (
            "missing key file",
            vec!["--tls-cert", &pki.cert, "--tls-key", &missing_key],
            format!(
                "switchboard: --tls-key {missing_key}: No such file or directory (os error 2)\n"
            ),
        ),
        (
            "key of another certificate",
            vec!["--tls-cert", &pki.cert, "--tls-key", &pki.stray_key],
            format!(
                "switchboard: --tls-cert {} / --tls-key {}: the private key does not match \
                 the certificate\n",
                pki.cert, pki.stray_key
            ),
        ),
        (
            "certificate file with no PEM block",
            vec!["--tls-cert", &pki.no_pem, "--tls-key", &pki.key],
            format!(
                "switchboard: --tls-cert {}: no CERTIFICATE block found in the file\n",
                pki.no_pem
            ),
        ),
        (
            "key file with no PEM block",
            vec!["--tls-cert", &pki.cert, "--tls-key", &pki.no_pem],
            format!(
                "switchboard: --tls-key {}: no PRIVATE KEY block found in the file \
                 (PKCS#8, PKCS#1 or SEC1 PEM expected)\n",
                pki.no_pem
            ),
        ),
        (
            "certificate given as the key",
            vec!["--tls-cert", &pki.cert, "--tls-key", &pki.cert],
            format!(
                "switchboard: --tls-key {}: no PRIVATE KEY block found in the file \
                 (PKCS#8, PKCS#1 or SEC1 PEM expected)\n",
                pki.cert
            ),
        ),
    ];
    for (what, args, want) in &cases {
        let (status, stdout, stderr) = start_failing(args);
        assert_eq!(status.code(), Some(2), "{what}: {stderr}");
        assert_eq!(&stderr, want, "{what}");
        assert!(!stdout.contains("listening"), "{what}: {stdout}");
    }

    // A certificate without a key (or the reverse) is a usage error.
    for args in [
        &["--tls-cert", pki.cert.as_str()][..],
        &["--tls-key", pki.key.as_str()],
    ] {
        let (status, stdout, stderr) = start_failing(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("required"), "{args:?}: {stderr}");
        assert!(!stdout.contains("listening"), "{args:?}: {stdout}");
    }
}

// ---------------------------------------------------------------------
// What TLS costs (a measurement, not a check; run by hand):
//   cargo test --release --test tls -- --ignored --nocapture tls_cost

/// Nanoseconds process `pid` has spent on a CPU so far: the sum over its
/// threads of the scheduler's own account (Linux, /proc/PID/task/*/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One run: `subs` subscribers on `addr` (TLS when `tls` is given), one
/// plaintext publisher sends `msgs` messages of `size` bytes: all at once,
/// or `paced`, each only once every subscriber has the one before. Returns
/// the wall time from the first publish to the last delivery, and the
/// server's CPU time over the same span.
fn deliver_run(
    server: &Server,
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    (subs, msgs, size): (usize, usize, usize),
    paced: bool,
) -> (Duration, Duration) {
    let channel = format!("cost.{}", N_RUN.fetch_add(1, Ordering::Relaxed));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (got_tx, got_rx) = mpsc::channel::<Instant>();
    let mut threads = Vec::new();
    for _ in 0..subs {
        let addr = addr.to_string();
        let tls = tls.cloned();
        let channel = channel.clone();
        let ready_tx = ready_tx.clone();
        let got_tx = got_tx.clone();
        threads.push(thread::spawn(move || {
            let mut c = match tls {
                Some(config) => Client::connect_tls(&addr, "localhost", config),
                None => Client::connect_tcp(&addr),
            }
            .expect("connect a subscriber");
            c.set_read_timeout(Some(PATIENCE)).expect("timeout");
            c.subscribe(&channel).expect("subscribe");
            c.sync().expect("sync");
            let _ = ready_tx.send(());
            for n in 0..msgs {
                match c.next_event().expect("a publication") {
                    Event::Publication(p) => assert_eq!(p.body.len(), size),
                    other => panic!("unexpected {other:?}"),
                }
                if paced || n + 1 == msgs {
                    let _ = got_tx.send(Instant::now());
                }
            }
        }));
    }
    for _ in 0..subs {
        ready_rx.recv_timeout(PATIENCE).expect("a subscriber ready");
    }
    let body = vec![b'x'; size];
    let mut publisher = Client::connect_tcp(server.line()).expect("publisher");
    let cpu_before = cpu_ns(server.pid());
    let start = Instant::now();
    let mut last = start;
    let mut wait_all = || {
        for _ in 0..subs {
            last = last.max(got_rx.recv_timeout(PATIENCE).expect("a delivery"));
        }
    };
    for _ in 0..msgs {
        publisher
            .publish(&channel, Some("text/plain"), &body)
            .expect("publish");
        if paced {
            wait_all();
        }
    }
    if !paced {
        wait_all();
    }
    let cpu = Duration::from_nanos(cpu_ns(server.pid()).saturating_sub(cpu_before));
    for t in threads {
        t.join().expect("subscriber thread");
    }
    publisher.quit().expect("publisher quit");
    (last - start, cpu)
}

static N_RUN: AtomicU64 = AtomicU64::new(0);

fn median<T: Ord + Copy>(v: &mut [T]) -> T {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement: run by hand with --release --ignored --nocapture"]
fn tls_cost_per_delivered_message() {
    let subs: usize = env_or("TLS_COST_SUBS", 100);
    let size: usize = env_or("TLS_COST_SIZE", 100);
    let reps: usize = env_or("TLS_COST_REPS", 5);
    let pki = Pki::new();
    let server = start_tls(
        &pki.cert,
        &pki.key,
        &["--bus-listen", "off", "--backlog-limit", "100000000"],
    );
    let config = pki.client_config();
    for (paced, msgs) in [
        (false, env_or("TLS_COST_BURST", 20000)),
        (true, env_or("TLS_COST_PACED", 300)),
    ] {
        let deliveries = (subs * msgs) as f64;
        let mode = if paced {
            "paced (one message in flight)"
        } else {
            "burst (all messages at once)"
        };
        eprintln!(
            "{mode}: {subs} subscribers x {msgs} messages of {size} bytes, {reps} repetitions"
        );
        let mut runs: [Vec<(Duration, Duration)>; 2] = [Vec::new(), Vec::new()];
        for rep in 0..reps {
            // Alternate the order, so neither kind always runs second.
            let order = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for tls in order {
                let (addr, cfg) = if tls {
                    (server.addr("line-tls"), Some(&config))
                } else {
                    (server.line(), None)
                };
                let (wall, cpu) = deliver_run(&server, addr, cfg, (subs, msgs, size), paced);
                eprintln!(
                    "  rep {rep} {:5}: {:8.1} ms wall, {:8.1} ms server CPU; per delivered message {:.3} µs wall, {:.3} µs server CPU",
                    if tls { "tls" } else { "plain" },
                    wall.as_secs_f64() * 1e3,
                    cpu.as_secs_f64() * 1e3,
                    wall.as_secs_f64() * 1e6 / deliveries,
                    cpu.as_secs_f64() * 1e6 / deliveries,
                );
                runs[usize::from(tls)].push((wall, cpu));
            }
        }
        let wall = |i: usize| median(&mut runs[i].iter().map(|r| r.0).collect::<Vec<_>>());
        let (pw, tw) = (wall(0), wall(1));
        let cpu = |i: usize| median(&mut runs[i].iter().map(|r| r.1).collect::<Vec<_>>());
        let (pc, tc) = (cpu(0), cpu(1));
        eprintln!(
            "  median wall per delivered message: plain {:.3} µs, tls {:.3} µs, ratio {:.2}",
            pw.as_secs_f64() * 1e6 / deliveries,
            tw.as_secs_f64() * 1e6 / deliveries,
            tw.as_secs_f64() / pw.as_secs_f64()
        );
        eprintln!(
            "  median server CPU per delivered message: plain {:.3} µs, tls {:.3} µs, ratio {:.2}",
            pc.as_secs_f64() * 1e6 / deliveries,
            tc.as_secs_f64() * 1e6 / deliveries,
            tc.as_secs_f64() / pc.as_secs_f64().max(1e-9)
        );
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A client certificate for `name`, signed by `issuer`.
fn client_leaf(name: &str, issuer: &(rcgen::Certificate, KeyPair)) -> (String, String) {
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer.0, &issuer.1)
        .expect("sign a client certificate");
    (cert.pem(), key.serialize_pem())
}

/// What curl did: its exit status, the HTTP status it printed, its stderr.
struct CurlOutcome {
    code: i32,
    http: String,
    stderr: String,
}

/// `curl` over HTTPS to the stats page, with an optional client certificate.
fn curl_stats(bus_tls: &str, ca: &str, client: Option<(&str, &str)>) -> CurlOutcome {
    let mut cmd = Command::new(common::program("curl"));
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ])
    .args(["--cacert", ca]);
    if let Some((cert, key)) = client {
        cmd.args(["--cert", cert, "--key", key]);
    }
    let out = cmd
        .arg(format!(
            "https://localhost:{}/msgbus-stats",
            port_of(bus_tls)
        ))
        .output()
        .expect("run curl (install the curl package)");
    CurlOutcome {
        code: out.status.code().unwrap_or(-1),
        http: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

#[test]
fn client_certificates_are_required_with_tls_client_ca() {
    let dir = TempDir::new("tls");
    let d = dir.0.clone();
    let authority = ca("switchboard test CA");
    let clients = ca("client CA");
    let stranger = ca("an unrelated CA");
    let (cert, key) = leaf(&["localhost", "127.0.0.1"], None, &authority);
    let (good_cert, good_key) = client_leaf("alice", &clients);
    let (bad_cert, bad_key) = client_leaf("mallory", &stranger);
    let ca_pem = write_file(&d, "ca.pem", &authority.0.pem());
    let client_ca = write_file(&d, "client-ca.pem", &clients.0.pem());
    let cert = write_file(&d, "server.pem", &cert);
    let key = write_file(&d, "server.key", &key);
    let good = (
        write_file(&d, "alice.pem", &good_cert),
        write_file(&d, "alice.key", &good_key),
    );
    let bad = (
        write_file(&d, "mallory.pem", &bad_cert),
        write_file(&d, "mallory.key", &bad_key),
    );
    let server = start_tls(&cert, &key, &["--tls-client-ca", &client_ca]);
    let bus_tls = server.addr("bus-tls").to_string();

    let ok = curl_stats(&bus_tls, &ca_pem, Some((&good.0, &good.1)));
    assert_eq!(
        (ok.code, ok.http.as_str()),
        (0, "200"),
        "a client with a good certificate: {}",
        ok.stderr
    );
    // TLS 1.3: the handshake completes on the client's side, then the
    // server's alert ends the first read (curl's exit 56, "failure in
    // receiving network data"; a time-out would be 28). The alert says why.
    let none = curl_stats(&bus_tls, &ca_pem, None);
    assert_eq!(
        (none.code, none.http.as_str()),
        (56, "000"),
        "a client without a certificate: {}",
        none.stderr
    );
    assert!(
        none.stderr.contains("alert certificate required"),
        "a client without a certificate: {}",
        none.stderr
    );
    let bad = curl_stats(&bus_tls, &ca_pem, Some((&bad.0, &bad.1)));
    assert_eq!(
        (bad.code, bad.http.as_str()),
        (56, "000"),
        "a certificate from another CA: {}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("alert unknown ca"),
        "a certificate from another CA: {}",
        bad.stderr
    );
    // The plain doors do not ask for certificates, and the server lives on.
    let mut plain = connect(server.line());
    line_sync(&mut plain, "plain");

    // A client CA file without a certificate stops the server at start.
    let (status, _stdout, stderr) = start_failing(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &key,
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!("switchboard: --tls-client-ca {key}: no CERTIFICATE block found in the file\n")
    );
}

// ---------------------------------------------------------------------
// --tls-client-ca on the line door, --secret on the HTTPS bus,
// --request-timeout on handshakes, more start-up errors

/// A client configuration trusting `ca` that presents `client` (a
/// certificate and key file), or no certificate at all.
fn client_config_with(ca: &str, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("read the client certificate")
                    .collect::<Result<_, _>>()
                    .expect("a client certificate"),
                PrivateKeyDer::from_pem_file(key).expect("the client key"),
            )
            .expect("a client configuration with a certificate"),
    })
}

/// What the server answered a client refused by `--tls-client-ca` on the
/// line door: the TLS 1.3 handshake completes on the client's side, then
/// the server's alert ends the first read.
fn refused_alert(addr: &str, config: Arc<rustls::ClientConfig>) -> rustls::AlertDescription {
    let mut c = match Client::connect_tls(addr, "localhost", config) {
        Ok(c) => c,
        Err(Error::Tls(rustls::Error::AlertReceived(alert))) => return alert,
        Err(e) => panic!("connect: {e}"),
    };
    c.set_read_timeout(Some(PATIENCE)).expect("timeout");
    match c.sync() {
        Err(Error::Tls(rustls::Error::AlertReceived(alert))) => alert,
        Err(Error::Io(e)) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(alert)) => *alert,
            _ => panic!("expected a TLS alert, got {e:?}"),
        },
        other => panic!("a refused client was served: {other:?}"),
    }
}

#[test]
fn client_certificates_are_required_on_the_line_tls_door() {
    let dir = TempDir::new("tls");
    let d = dir.0.clone();
    let authority = ca("switchboard test CA");
    let clients = ca("client CA");
    let stranger = ca("an unrelated CA");
    let (cert, key) = leaf(&["localhost", "127.0.0.1"], None, &authority);
    let (good_cert, good_key) = client_leaf("alice", &clients);
    let (bad_cert, bad_key) = client_leaf("mallory", &stranger);
    let ca_pem = write_file(&d, "ca.pem", &authority.0.pem());
    let client_ca = write_file(&d, "client-ca.pem", &clients.0.pem());
    let cert = write_file(&d, "server.pem", &cert);
    let key = write_file(&d, "server.key", &key);
    let good = (
        write_file(&d, "alice.pem", &good_cert),
        write_file(&d, "alice.key", &good_key),
    );
    let bad = (
        write_file(&d, "mallory.pem", &bad_cert),
        write_file(&d, "mallory.key", &bad_key),
    );
    let server = start_tls(&cert, &key, &["--tls-client-ca", &client_ca]);
    let line_tls = server.addr("line-tls").to_string();

    // A client with a certificate from the client CA is served.
    let mut alice = Client::connect_tls(
        &line_tls,
        "localhost",
        client_config_with(&ca_pem, Some((&good.0, &good.1))),
    )
    .expect("connect with a good client certificate");
    alice.set_read_timeout(Some(PATIENCE)).expect("timeout");
    alice.subscribe("mtls").expect("subscribe");
    alice.sync().expect("sync");
    let mut plain = Client::connect_tcp(server.line()).expect("plain client");
    plain
        .publish("mtls", Some("text/plain"), b"to alice")
        .expect("publish");
    match alice.next_event().expect("a publication") {
        Event::Publication(p) => assert_eq!(text(&p.body), "to alice"),
        other => panic!("unexpected {other:?}"),
    }

    // Without a certificate, or with one from another CA: refused, and
    // the alert says why.
    assert_eq!(
        refused_alert(&line_tls, client_config_with(&ca_pem, None)),
        rustls::AlertDescription::CertificateRequired,
        "a client without a certificate"
    );
    assert_eq!(
        refused_alert(
            &line_tls,
            client_config_with(&ca_pem, Some((&bad.0, &bad.1)))
        ),
        rustls::AlertDescription::UnknownCA,
        "a certificate from another CA"
    );
    // The served client goes on; the plain door asks for nothing.
    alice.sync().expect("sync after the refusals");
    plain.sync().expect("the plain door");
    alice.quit().expect("quit");
}

#[test]
fn the_secret_guards_the_https_bus() {
    require("curl");
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &["--secret", "s3cret"]);
    let port = port_of(server.addr("bus-tls")).to_string();
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let curl = |args: &[&str], path: &str| {
        run(Command::new(common::program("curl"))
            .args(["-sS", "--max-time", "20", "--cacert", &pki.ca])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(url(path)))
    };
    // Missing and wrong credentials: 401, on the stats page and the bus.
    for (args, path) in [
        (&[][..], "/msgbus-stats"),
        (&["-u", "bob:wrong"][..], "/msgbus-stats"),
        (
            &["-H", "Content-Type: text/plain", "--data-binary", "x"][..],
            "/msgbus/news",
        ),
        (
            &[
                "-u",
                "bob:wrong",
                "-H",
                "Content-Type: text/plain",
                "--data-binary",
                "x",
            ][..],
            "/msgbus/news",
        ),
    ] {
        let out = curl(args, path);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "401", "{args:?} {path}");
    }
    // With the secret: a subscriber, a publisher whose name becomes From.
    let mut sub = Guard(
        Command::new(common::program("curl"))
            .args(["-sS", "-N", "--max-time", "60", "--cacert", &pki.ca])
            .args(["-u", "alice:s3cret"])
            .arg(url("/msgbus/news"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start curl"),
    );
    let rx = byte_channel(sub.0.stdout.take().expect("curl stdout"));
    let mut seen = Vec::new();
    wait_for(&rx, &mut seen, "--00MsgBus00\r\n", "curl subscriber");
    let out = curl(
        &[
            "-u",
            "bob:s3cret",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "over https",
        ],
        "/msgbus/news",
    );
    assert_eq!(text(&out.stdout), "204", "{}", text(&out.stderr));
    wait_for(
        &rx,
        &mut seen,
        "--00MsgBus00\r\nFrom: bob\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n\
         over https\r\n--00MsgBus00\r\n",
        "curl subscriber",
    );
    // Nothing was published by the refused requests.
    let mut stats =
        common::Stats::open_with(server.bus(), "Authorization: Basic Ym9iOnMzY3JldA==\r\n");
    assert_eq!(common::stat(&stats.get(), "published"), 1);
}

#[test]
fn a_stalled_tls_handshake_is_closed_after_the_request_timeout() {
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &["--request-timeout", "1"]);
    let mut stats = common::Stats::open(server.bus());
    // A client that completed its handshake and then idles is left alone.
    let mut idle = Client::connect_tls(server.addr("line-tls"), "localhost", pki.client_config())
        .expect("connect");
    idle.set_read_timeout(Some(PATIENCE)).expect("timeout");
    idle.sync().expect("sync");
    // Two that stop in the middle of their ClientHello, one per TLS door.
    let mut stalled: Vec<TcpStream> = ["line-tls", "bus-tls"]
        .iter()
        .map(|door| {
            let mut s = TcpStream::connect(server.addr(door)).expect("connect");
            s.write_all(&[0x16, 0x03, 0x01, 0x02]).expect("write");
            s
        })
        .collect();
    for (door, s) in ["line-tls", "bus-tls"].iter().zip(&mut stalled) {
        let got = expect_closed(s, &format!("a stalled handshake on {door}"));
        // At most a TLS alert record.
        assert!(got.is_empty() || got[0] == 0x15, "{door}: {:?}", text(&got));
    }
    let v = stats.get();
    assert_eq!(
        common::stat(&v, "connections.closed_by.request_timeout"),
        2,
        "{v}"
    );
    idle.sync().expect("the idle TLS client after the closes");
    idle.quit().expect("quit");
}

#[test]
fn more_start_up_errors_stop_the_server_before_it_listens() {
    require("openssl");
    let pki = Pki::new();
    // A passphrase-protected key, as openssl writes it.
    let encrypted = pki.path("encrypted.key");
    let out = run(Command::new(common::program("openssl"))
        .args([
            "pkey",
            "-in",
            &pki.key,
            "-aes256",
            "-passout",
            "pass:secret",
        ])
        .args(["-out", &encrypted]));
    assert!(out.status.success(), "openssl pkey: {}", text(&out.stderr));
    assert!(std::fs::read_to_string(&encrypted)
        .expect("the encrypted key")
        .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    // A PEM block whose base64 does not decode.
    let bad_pem = write_file(
        &pki.dir.0,
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\nnot@base64\n-----END CERTIFICATE-----\n",
    );
    // A path that cannot be read as a file.
    let a_dir = pki.path("a-directory");
    std::fs::create_dir(&a_dir).expect("a directory");
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "encrypted key",
            vec!["--tls-cert", &pki.cert, "--tls-key", &encrypted],
            format!(
                "switchboard: --tls-key {encrypted}: the private key is encrypted; give an \
                 unencrypted key (for example from `openssl pkey -in KEY -out KEY.plain`)\n"
            ),
        ),
        (
            "a PEM block that does not decode",
            vec!["--tls-cert", &bad_pem, "--tls-key", &pki.key],
            format!("switchboard: --tls-cert {bad_pem}: not valid PEM: "),
        ),
        (
            "a directory as the certificate",
            vec!["--tls-cert", &a_dir, "--tls-key", &pki.key],
            format!("switchboard: --tls-cert {a_dir}: Is a directory (os error 21)\n"),
        ),
        (
            "a directory as the key",
            vec!["--tls-cert", &pki.cert, "--tls-key", &a_dir],
            format!("switchboard: --tls-key {a_dir}: Is a directory (os error 21)\n"),
        ),
    ];
    for (what, args, want) in &cases {
        let (status, stdout, stderr) = start_failing(args);
        assert_eq!(status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.starts_with(want.as_str()), "{what}: {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
        assert!(!stdout.contains("listening"), "{what}: {stdout}");
    }

    // A file its owner may not read: only meaningful when this test does
    // not run as root (root reads it anyway).
    let locked = pki.path("locked.key");
    std::fs::copy(&pki.key, &locked).expect("copy the key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    if std::fs::read(&locked).is_err() {
        let (status, stdout, stderr) =
            start_failing(&["--tls-cert", &pki.cert, "--tls-key", &locked]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr,
            format!("switchboard: --tls-key {locked}: Permission denied (os error 13)\n")
        );
        assert!(!stdout.contains("listening"), "{stdout}");
    } else {
        eprintln!("running as root: the unreadable-file case is covered by the directory cases");
    }

    // The HTTPS door's address taken by another listener: exit status 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let out = run(Command::new(SERVER)
        .args([
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "127.0.0.1:0",
        ])
        .args(["--tls-cert", &pki.cert, "--tls-key", &pki.key])
        .args(["--bus-tls-listen", &addr]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "switchboard: --bus-tls-listen {addr}: cannot listen: Address already in use \
             (os error 98)\n"
        )),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("listening"));
}

/// `rediss://` with a password: the start-up check goes through TLS and
/// `AUTH` as the links do, so a node starts against a Redis that takes its
/// certificate and password, and exits 2 with the reason when Redis
/// refuses the password or this side refuses Redis' certificate (the
/// password in neither message).
#[test]
fn a_rediss_cluster_url_is_checked_with_tls_and_the_password_at_start() {
    const PASSWORD: &str = "tls-s3cret";
    const WRONG: &str = "n0t-it";
    let pki = Pki::new();
    let redis = common::RedisServer::start(
        "--tls-port",
        &[
            "--tls-cert-file",
            &pki.cert,
            "--tls-key-file",
            &pki.key,
            "--tls-ca-cert-file",
            &pki.ca,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
        ],
    );
    let at = format!("127.0.0.1:{}", redis.port);
    let good = format!("rediss://:{PASSWORD}@{at}");
    let node = Server::start(&["--cluster", &good, "--hooks-ca", &pki.ca]);
    common::Stats::open(node.bus()).wait_for("the cluster link", |v| v["cluster"]["up"] == true);

    let wrong = format!("rediss://:{WRONG}@{at}");
    let no_password = format!("rediss://{at}");
    for (what, url, ca, reason) in [
        (
            "a wrong password",
            &wrong,
            &pki.ca,
            "refused the user and password",
        ),
        ("no password", &no_password, &pki.ca, "wants a password"),
        (
            "a certificate of another CA",
            &good,
            &pki.other_ca,
            "certificate",
        ),
    ] {
        let out = run(Command::new(SERVER).args([
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "127.0.0.1:0",
            "--cluster",
            url,
            "--hooks-ca",
            ca,
        ]));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains("--cluster: Redis at 127.0.0.1") && stderr.contains(reason),
            "{what}: {stderr}"
        );
        assert!(
            !stderr.contains(PASSWORD) && !stderr.contains(WRONG),
            "{stderr}"
        );
        assert!(!text(&out.stdout).contains("listening"), "{what}");
    }
}

// ---------------------------------------------------------------------
// What the mutation round of src/server/tls.rs and transport.rs found untested

/// An idle HTTPS bus stream gets its heartbeats as a plain one does: a TLS
/// connection with no records left to write is not taken for one still
/// writing (which the heartbeat sweep skips).
#[test]
fn heartbeats_reach_an_idle_https_stream() {
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &["--heartbeat", "1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let conn = rustls::ClientConnection::new(pki.client_config(), name).expect("a client");
    let sock = TcpStream::connect(server.addr("bus-tls")).expect("connect");
    sock.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(b"GET /msgbus/idle HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .expect("subscribe");
    common::read_until(&mut s, b": subscribed\n\n");
    let heartbeat = b": heartbeat\n\n";
    assert_eq!(common::read_exact_n(&mut s, heartbeat.len()), heartbeat);
}

/// A TLS connection the server closes (here after the line client's `.`)
/// ends with close_notify: the client sees a clean end of the stream, not
/// a truncation.
#[test]
fn a_tls_connection_the_server_closes_ends_with_close_notify() {
    let pki = Pki::new();
    let server = start_tls(&pki.cert, &pki.key, &[]);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let conn = rustls::ClientConnection::new(pki.client_config(), name).expect("a client");
    let sock = TcpStream::connect(server.addr("line-tls")).expect("connect");
    sock.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(b".\r\n").expect("quit");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("a clean end (close_notify), not a truncated stream");
}
