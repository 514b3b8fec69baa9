//! Reload on SIGHUP, end to end: the configuration file, the TLS
//! certificate and key, the secret and the docroot are read again while
//! connections stay open; a reload that fails keeps everything; a setting
//! that needs a restart is logged as such.
//!
//! Certificates are made with rcgen in each test (with serial numbers the
//! test chooses), and the certificate a new handshake gets is read with
//! `openssl s_client` and `openssl x509 -serial`.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, read_to_close, read_until, Server, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use switchboard::client::{tls_config, Client, Event};

/// Longest any step may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(30);
const SIGHUP: i32 = 1;

fn ca() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "reload test CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

/// A certificate for `localhost` with serial number `serial`, and its key.
fn leaf(serial: u64, issuer: &(rcgen::Certificate, KeyPair)) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer.0, &issuer.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Fails the test when `openssl` is missing.
fn require_openssl() {
    let ok = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl is needed on PATH (apt-get install openssl)");
}

/// The serial number (hex, as `openssl x509 -serial` prints it) of the
/// certificate a new TLS handshake with `addr` gets.
fn serial_of(addr: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run openssl s_client");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let pem_start = shown
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from {addr}: {shown}"));
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    x509.stdin
        .take()
        .unwrap()
        .write_all(&shown.as_bytes()[pem_start..])
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl x509: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("no serial in {text}"))
        .to_string()
}

/// Sends SIGHUP and waits until the server logged the `n`th reload
/// outcome (`reload done` or `reload failed`); returns its log so far.
fn reload(server: &Server, n: usize) -> String {
    server.signal(SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = server.stderr_text();
        if log.matches("reload done").count() + log.matches("reload failed").count() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "no reload outcome #{n}: {log}");
        // Polls the log; the outcome line itself is the barrier.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `GET path` with `Connection: close` and maybe Basic credentials;
/// returns the status and the body.
fn get(addr: &str, path: &str, password: Option<&str>) -> (u16, String) {
    use base64_like::encode;
    let mut s = connect(addr);
    let auth = password.map_or(String::new(), |p| {
        format!("Authorization: Basic {}\r\n", encode(&format!("ops:{p}")))
    });
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    parse(&read_to_close(&mut s))
}

fn parse(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Base64 for the Basic credentials (the test crate has no base64 crate).
mod base64_like {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(text: &str) -> String {
        let mut out = String::new();
        for chunk in text.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn known_values() {
        assert_eq!(encode("ops:pw"), "b3BzOnB3");
        assert_eq!(encode("a:b"), "YTpi");
        assert_eq!(encode("ab:cd"), "YWI6Y2Q=");
    }
}

/// The next publication on `client` (a TLS subscriber), as text.
fn next_body(client: &mut Client) -> String {
    match client.next_event().expect("a publication") {
        Event::Publication(p) => String::from_utf8(p.body.to_vec()).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_new_certificate_for_new_handshakes_and_old_connections_stay() {
    require_openssl();
    let dir = TempDir::new("reload-tls");
    let authority = ca();
    let (cert_a, key_a) = leaf(0x1001, &authority);
    let (cert_b, key_b) = leaf(0x2002, &authority);
    let (cert, key, ca_file) = (
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("ca.pem"),
    );
    write(&cert, &cert_a);
    write(&key, &key_a);
    write(&ca_file, &authority.0.pem());
    // Reload reads the same paths again (here from the command line).
    let server = Server::start(&[
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&key),
        "--line-tls-listen",
        "127.0.0.1:0",
        "--log-level",
        "info",
    ]);
    let tls_addr = server.addr("line-tls").to_string();
    let client_tls: Arc<rustls::ClientConfig> = tls_config(&ca_file).unwrap();

    // A TLS subscriber from before the reload.
    let mut old = Client::connect_tls(&tls_addr, "localhost", client_tls.clone()).unwrap();
    old.set_read_timeout(Some(PATIENCE)).unwrap();
    old.subscribe("news").unwrap();
    old.sync().unwrap();
    assert_eq!(serial_of(&tls_addr), "1001");

    // The new certificate: new handshakes get it.
    write(&cert, &cert_b);
    write(&key, &key_b);
    let log = reload(&server, 1);
    assert!(log.contains("reload done"), "{log}");
    assert_eq!(serial_of(&tls_addr), "2002");
    let mut publisher = Client::connect_tcp(server.line()).unwrap();
    publisher
        .publish("news", None, b"after the reload")
        .unwrap();
    publisher.sync().unwrap();
    assert_eq!(next_body(&mut old), "after the reload");
    // A client that trusts the CA handshakes with the new one, too.
    let mut fresh = Client::connect_tls(&tls_addr, "localhost", client_tls).unwrap();
    fresh.sync().unwrap();

    // A broken certificate: the reload fails, says why, and changes nothing.
    write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let log = reload(&server, 2);
    let failed = log
        .lines()
        .find(|l| l.contains("reload failed"))
        .unwrap_or_else(|| panic!("no failure logged: {log}"));
    assert!(failed.contains("--tls-cert"), "{failed}");
    assert!(failed.contains(s(&cert)), "{failed}");
    assert_eq!(serial_of(&tls_addr), "2002");
    publisher.publish("news", None, b"still here").unwrap();
    publisher.sync().unwrap();
    assert_eq!(next_body(&mut old), "still here");

    // A key that does not match the certificate: refused the same way.
    write(&cert, &cert_a);
    let log = reload(&server, 3);
    assert_eq!(log.matches("reload failed").count(), 2, "{log}");
    assert!(log.contains("does not match"), "{log}");
    assert_eq!(serial_of(&tls_addr), "2002");
}

#[test]
fn secret_and_docroot_apply_to_new_requests_and_restart_settings_are_named() {
    let dir = TempDir::new("reload-http");
    let (one, two) = (dir.path().join("www1"), dir.path().join("www2"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    write(&one.join("hello.txt"), "one");
    write(&two.join("hello.txt"), "two");
    let conf = dir.path().join("switchboard.toml");
    write(
        &conf,
        &format!(
            "secret = \"old\"\ndocroot = \"{}\"\nmax-line = 4096\n",
            s(&one)
        ),
    );
    let server = Server::start(&["--config", s(&conf), "--log-level", "info"]);
    let bus = server.bus().to_string();
    assert_eq!(get(&bus, "/hello.txt", Some("old")), (200, "one".into()));
    assert_eq!(get(&bus, "/hello.txt", None).0, 401);

    // A keep-alive connection opened before the reload.
    let mut kept = connect(&bus);
    write!(
        kept,
        "GET /hello.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n",
        base64_like::encode("ops:old")
    )
    .unwrap();
    let first = read_until(&mut kept, b"one");
    assert!(first.starts_with(b"HTTP/1.1 200 "), "{first:?}");

    write(
        &conf,
        &format!(
            "secret = \"new\"\ndocroot = \"{}\"\nmax-line = 8192\n",
            s(&two)
        ),
    );
    let log = reload(&server, 1);
    let done = log.lines().find(|l| l.contains("reload done")).unwrap();
    assert!(
        done.contains("secret") && done.contains("docroot"),
        "{done}"
    );
    assert!(
        log.contains("`max-line` changed and needs a restart"),
        "{log}"
    );
    assert!(
        !log.contains("\"new\""),
        "the secret is never logged: {log}"
    );
    // A server without TLS listeners says nothing of TLS certificates.
    assert!(
        !log.contains("no TLS certificate any more"),
        "a server without TLS warned of its certificate: {log}"
    );
    assert_eq!(get(&bus, "/hello.txt", Some("old")).0, 401);
    assert_eq!(get(&bus, "/hello.txt", Some("new")), (200, "two".into()));
    // The connection from before: its next request meets the new secret.
    write!(
        kept,
        "GET /hello.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
        base64_like::encode("ops:old")
    )
    .unwrap();
    assert_eq!(parse(&read_to_close(&mut kept)).0, 401);

    // A file the server refuses: nothing changes, and the log names the key.
    write(&conf, "secret = \"newer\"\nno-such-setting = 1\n");
    let log = reload(&server, 2);
    let failed = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(failed.contains("no-such-setting"), "{failed}");
    assert_eq!(get(&bus, "/hello.txt", Some("new")), (200, "two".into()));
    assert_eq!(get(&bus, "/hello.txt", Some("newer")).0, 401);

    // A docroot that is gone: refused, the running one stays.
    write(
        &conf,
        &format!("secret = \"new\"\ndocroot = \"{}/gone\"\n", s(dir.path())),
    );
    let log = reload(&server, 3);
    assert_eq!(log.matches("reload failed").count(), 2, "{log}");
    assert!(log.contains("--docroot"), "{log}");
    assert_eq!(get(&bus, "/hello.txt", Some("new")), (200, "two".into()));

    // Without the secret: the bus is open again.
    write(&conf, &format!("docroot = \"{}\"\n", s(&one)));
    reload(&server, 4);
    assert_eq!(get(&bus, "/hello.txt", None), (200, "one".into()));
}

#[test]
fn a_sighup_as_soon_as_the_server_listens_reloads_and_ends_nothing() {
    let mut server = Server::start(&["--log-level", "info"]);
    // Sent right after the `listening` lines, before the first request.
    let log = reload(&server, 1);
    assert!(log.contains("reload done: changed nothing"), "{log}");
    assert!(server.alive());
    let mut client = Client::connect_tcp(server.line()).unwrap();
    client.sync().unwrap();
}
