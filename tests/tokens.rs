//! Signed tokens (`--token-key`) and the shared secret on every door that
//! takes them: HTTP subscribe and publish (`Authorization: Bearer`, and
//! `?token=` for EventSource), the line protocol's `@`; exact names and
//! patterns; expiry; a token signed by another key; claims of the wrong
//! type. Each refusal has its status and touches no other client.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{connect, read_exact_n, read_to_close, read_until, send, Server, TempDir};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const HS_SECRET: &str = "a test secret of more than thirty-two bytes";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs_token(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A server whose token key is the HS256 secret above (in a file with a
/// final newline, as `echo` writes it), plus `extra` flags.
fn start(dir: &TempDir, extra: &[&str]) -> Server {
    let key = dir.path().join("hs.key");
    std::fs::write(&key, format!("{HS_SECRET}\n")).unwrap();
    let mut args = vec!["--token-key", key.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// One HTTP/1.0 request; the whole answer.
fn exchange(addr: &str, request: &str) -> String {
    let mut s = connect(addr);
    send(&mut s, request.as_bytes());
    String::from_utf8_lossy(&read_to_close(&mut s)).into_owned()
}

/// Opens a multipart subscription (HTTP/1.0) and returns it after the head.
fn subscribe(addr: &str, target: &str, headers: &str) -> TcpStream {
    let mut s = connect(addr);
    send(
        &mut s,
        format!("GET {target} HTTP/1.0\r\n{headers}\r\n").as_bytes(),
    );
    let head = read_until(&mut s, b"\r\n\r\n");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.0 200"), "{target}: {head}");
    s
}

fn publish(addr: &str, channel: &str, headers: &str, body: &str) -> String {
    exchange(
        addr,
        &format!(
            "POST /msgbus/{channel} HTTP/1.0\r\n{headers}Content-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Reads a multipart stream (its head already read) until the part whose
/// body is `probe`; returns the bodies of the parts before it and the
/// headers of the probe's part.
fn parts_until(s: &mut TcpStream, probe: &str) -> (Vec<String>, String) {
    let end = format!("\r\n\r\n{probe}\r\n--00MsgBus00\r\n");
    let got = String::from_utf8_lossy(&read_until(s, end.as_bytes())).into_owned();
    let mut bodies = Vec::new();
    for part in got.split("--00MsgBus00\r\n").filter(|p| !p.is_empty()) {
        let (head, body) = part
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{part:?}"));
        let body = body.strip_suffix("\r\n").unwrap_or(body);
        if body == probe {
            return (bodies, head.to_string());
        }
        bodies.push(body.to_string());
    }
    panic!("no probe part in {got:?}")
}

#[test]
fn http_requests_need_a_token_that_covers_the_channel() {
    let dir = TempDir::new("tokens-http");
    let server = start(&dir, &[]);
    let bus = server.bus();
    let reader = hs_token(serde_json::json!({
        "sub": "reader", "exp": now() + 600, "subscribe": ["news", "sensors.>"]
    }));
    let writer = hs_token(serde_json::json!({
        "sub": "alice", "exp": now() + 600, "publish": ["news", "chat.*"]
    }));

    // No credentials, a bad token, an expired one, one signed by another
    // key, claims of the wrong type: 401 with a Bearer challenge.
    let expired = hs_token(serde_json::json!({"exp": now() - 10, "subscribe": ["news"]}));
    let other_key = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"exp": now() + 600, "subscribe": ["news"]}),
        &EncodingKey::from_secret(b"another key, also longer than 32 bytes"),
    )
    .unwrap();
    let wrong_type = hs_token(serde_json::json!({"exp": now() + 600, "subscribe": "news"}));
    for (what, headers, says) in [
        ("none", String::new(), "credentials required"),
        ("garbage", bearer("not.a.token"), "invalid"),
        ("expired", bearer(&expired), "expired"),
        ("other key", bearer(&other_key), "invalid"),
        ("wrong claim type", bearer(&wrong_type), "invalid"),
    ] {
        let got = exchange(bus, &format!("GET /msgbus/news HTTP/1.0\r\n{headers}\r\n"));
        assert!(got.starts_with("HTTP/1.0 401 "), "{what}: {got}");
        assert!(
            got.contains("WWW-Authenticate: Bearer realm="),
            "{what}: {got}"
        );
        assert!(got.contains(says), "{what}: {got}");
    }

    // A subscriber with a good token, by header; one by `?token=` on an
    // event stream (what EventSource can do).
    let mut sub = subscribe(bus, "/msgbus/news", &bearer(&reader));
    let mut sse = connect(bus);
    send(
        &mut sse,
        format!("GET /msgbus/sensors.a.temp?token={reader} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    );
    let head = String::from_utf8_lossy(&read_until(&mut sse, b"\r\n\r\n")).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Channels the token does not cover, and the root: 403.
    for target in [
        "/msgbus/secret",
        "/msgbus/",
        "/msgbus/sensors",
        "/msgbus/news.x",
    ] {
        let got = exchange(
            bus,
            &format!("GET {target} HTTP/1.0\r\n{}\r\n", bearer(&reader)),
        );
        assert!(got.starts_with("HTTP/1.0 403 "), "{target}: {got}");
        assert!(got.contains("does not allow subscribe"), "{target}: {got}");
    }
    // The reader may not publish; the writer may, on its channels only.
    let got = publish(bus, "news", &bearer(&reader), "from the reader");
    assert!(got.starts_with("HTTP/1.0 403 "), "{got}");
    let got = publish(bus, "secret", &bearer(&writer), "x");
    assert!(got.starts_with("HTTP/1.0 403 "), "{got}");
    let got = publish(bus, "news", "", "anonymous");
    assert!(got.starts_with("HTTP/1.0 401 "), "{got}");
    let got = publish(bus, "news", &bearer(&writer), "probe");
    assert!(got.starts_with("HTTP/1.0 204 "), "{got}");

    // The refused publishes reached nobody: the probe is the first part,
    // and its sender is the token's subject.
    let (before, head) = parts_until(&mut sub, "probe");
    assert!(before.is_empty(), "refused publishes arrived: {before:?}");
    assert!(head.contains("From: alice\r\n"), "{head}");

    // The event-stream subscriber by `?token=` gets a publish to its channel.
    let sensors = hs_token(serde_json::json!({"exp": now() + 600, "publish": ["sensors.>"]}));
    let got = publish(bus, "sensors.a.temp", &bearer(&sensors), "21.5");
    assert!(got.starts_with("HTTP/1.0 204 "), "{got}");
    let event = String::from_utf8_lossy(&read_until(&mut sse, b"data: 21.5\n")).into_owned();
    assert!(event.contains("channel=sensors.a.temp"), "{event}");
}

#[test]
fn public_keys_rs256_and_eddsa_verify_tokens() {
    let dir = TempDir::new("tokens-pem");
    for (name, genpkey, alg) in [
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            Algorithm::RS256,
        ),
        ("ed", &["-algorithm", "ed25519"][..], Algorithm::EdDSA),
    ] {
        let private = dir.path().join(format!("{name}.pem"));
        let public = dir.path().join(format!("{name}.pub.pem"));
        let ok = Command::new("openssl")
            .arg("genpkey")
            .args(genpkey)
            .arg("-out")
            .arg(&private)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (Debian package openssl)");
        assert!(ok.success());
        let ok = Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap();
        assert!(ok.success());
        let pem = std::fs::read(&private).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ed_pem(&pem).unwrap(),
        };
        let server = Server::start(&["--token-key", public.to_str().unwrap()]);
        let claims = serde_json::json!({"exp": now() + 600, "subscribe": ["news"]});
        let good = encode(&Header::new(alg), &claims, &key).unwrap();
        let _sub = subscribe(server.bus(), "/msgbus/news", &bearer(&good));
        // The same claims signed with the HS256 secret: refused (the
        // algorithm is the key's, not the token's choice).
        let hs = hs_token(claims);
        let got = exchange(
            server.bus(),
            &format!("GET /msgbus/news HTTP/1.0\r\n{}\r\n", bearer(&hs)),
        );
        assert!(got.starts_with("HTTP/1.0 401 "), "{name}: {got}");
    }
}

#[test]
fn bad_token_keys_stop_the_start_with_a_reason() {
    let dir = TempDir::new("tokens-badkey");
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too short\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "127.0.0.1:0",
        ])
        .arg("--token-key")
        .arg(&short)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-key") && err.contains("at least 32"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--token-key", "/nonexistent/key"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/key"));
}

/// Sends `@ credential` and proves it was taken: a round trip through a
/// channel the credential must allow (`sync.TAG`).
fn line_auth(server: &Server, credential: &str, tag: &str) -> TcpStream {
    let mut s = connect(server.line());
    send(&mut s, format!("@ {credential}\r\n").as_bytes());
    common::line_sync(&mut s, tag);
    s
}

#[test]
fn the_line_protocol_authenticates_with_at_before_anything_else() {
    let dir = TempDir::new("tokens-line");
    let server = start(&dir, &["--secret", "s3cret"]);

    // Anything before `@` is refused, and the connection closed.
    for first in [
        "+ news\r\n",
        "! 1 news\r\nx\r\n",
        "> 1 0 jobs\r\nx\r\n",
        "< 1 jobs\r\n",
        "~ news\r\n",
    ] {
        let mut s = connect(server.line());
        send(&mut s, first.as_bytes());
        let got = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
        assert_eq!(
            got, "- unauthorized: authenticate first: @ credential\r\n",
            "{first:?}"
        );
    }
    // A wrong credential and an expired token: refused and closed.
    let expired = hs_token(serde_json::json!({"exp": now() - 5, "subscribe": [">"]}));
    for (bad, says) in [
        ("nope", "invalid credentials"),
        (expired.as_str(), "token expired"),
    ] {
        let mut s = connect(server.line());
        send(&mut s, format!("@ {bad}\r\n+ news\r\n").as_bytes());
        let got = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
        assert!(
            got.starts_with("- unauthorized: ") && got.contains(says),
            "{got}"
        );
    }
    let mut s = connect(server.line());
    send(&mut s, b"@\r\n");
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut s)),
        "- auth format: @ credential\r\n"
    );

    // The shared secret allows everything.
    let mut by_secret = line_auth(&server, "s3cret", "secret");

    // A token allows what it names; the rest is `- forbidden`, and the
    // connection stays open.
    let token = hs_token(serde_json::json!({
        "sub": "bob", "exp": now() + 600,
        "subscribe": ["news", "sync.>"], "publish": ["sync.>", "chat.*"],
        "send": ["jobs"], "receive": ["jobs", "replies.*"]
    }));
    let mut s = line_auth(&server, &token, "token");
    for (cmd, want) in [
        ("+ secret\r\n", "- forbidden: subscribe secret\r\n"),
        ("+ *\r\n", "- forbidden: subscribe >\r\n"),
        ("! 1 news\r\nx\r\n", "- forbidden: publish news\r\n"),
        ("> 1 0 other\r\nx\r\n", "- forbidden: send other\r\n"),
        ("? 1 5 other\r\nx\r\n", "- forbidden: send other\r\n"),
        ("< 1 jobs other\r\n", "- forbidden: receive other\r\n"),
    ] {
        send(&mut s, cmd.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&read_exact_n(&mut s, want.len())),
            want,
            "{cmd:?}"
        );
    }
    // Still open, and what is allowed works: subscribe news, and a
    // message from the secret's connection arrives.
    send(&mut s, b"+ news\r\n");
    common::line_sync(&mut s, "token2");
    send(&mut by_secret, b"! 5 news\r\nhello\r\n");
    let want = "! 5 news application/octet-stream\r\nhello\r\n";
    assert_eq!(
        String::from_utf8_lossy(&read_exact_n(&mut s, want.len())),
        want
    );
    // Queues: send to jobs, receive it.
    send(&mut s, b"> 3 10 jobs\r\njob\r\n< 5 jobs\r\n");
    let want = "> 3 10 jobs\r\njob\r\n";
    assert_eq!(
        String::from_utf8_lossy(&read_exact_n(&mut s, want.len())),
        want
    );

    // A token's publishes carry its subject as the sender.
    let mut watcher = subscribe(
        server.bus(),
        "/msgbus/chat.room",
        "Authorization: Basic eDpzM2NyZXQ=\r\n",
    );
    send(&mut s, b"! 2 chat.room\r\nhi\r\n");
    let (before, head) = parts_until(&mut watcher, "hi");
    assert!(before.is_empty(), "{before:?}");
    assert!(head.contains("From: bob\r\n"), "{head}");
}

#[test]
fn without_credentials_configured_the_line_protocol_is_open() {
    let server = Server::start(&[]);
    let mut s = connect(server.line());
    // `@` is accepted and changes nothing.
    send(&mut s, b"@ anything\r\n");
    common::line_sync(&mut s, "open");
}

/// SIGHUP reads the token key again: tokens of the old key are refused
/// from the next request and line command on, tokens of the new one taken;
/// a line connection authenticated before keeps what it was granted.
#[test]
fn a_reload_reads_the_token_key_again() {
    let dir = TempDir::new("tokens-reload");
    let server = start(&dir, &["--log-level", "info"]);
    let old = hs_token(
        serde_json::json!({"exp": now() + 600, "subscribe": ["news", "sync.>"], "publish": ["sync.>"]}),
    );
    let mut before = line_auth(&server, &old, "before");
    // A keep-alive HTTP connection that presented the old token (twice:
    // the second is taken from what the connection verified).
    let mut kept = connect(server.bus());
    let stats =
        format!("GET /msgbus-stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {old}\r\n\r\n");
    for _ in 0..2 {
        send(&mut kept, stats.as_bytes());
        let got = read_until(&mut kept, b"\r\n\r\n");
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        read_exact_n(&mut kept, len - (got.len() - end));
    }
    let new_secret = "the next secret, also of more than thirty-two bytes";
    std::fs::write(dir.path().join("hs.key"), new_secret).unwrap();
    server.signal(1); // SIGHUP
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !server.stderr_text().contains("reload done") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            server.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let got = exchange(
        server.bus(),
        &format!("GET /msgbus/news HTTP/1.0\r\n{}\r\n", bearer(&old)),
    );
    assert!(got.starts_with("HTTP/1.0 401 "), "{got}");
    // The kept connection too: what it verified was under the old key.
    send(&mut kept, stats.as_bytes());
    let head = String::from_utf8_lossy(&read_until(&mut kept, b"\r\n\r\n")).into_owned();
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    let new = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"exp": now() + 600, "subscribe": ["news", "sync.>"], "publish": ["sync.>"]}),
        &EncodingKey::from_secret(new_secret.as_bytes()),
    )
    .unwrap();
    let _sub = subscribe(server.bus(), "/msgbus/news", &bearer(&new));
    let _line = line_auth(&server, &new, "after");
    // The connection authenticated before the reload keeps its grant.
    common::line_sync(&mut before, "kept");
}

/// A keep-alive connection verifies a token once and reuses what it
/// verified only for the same token: another token on the same
/// connection is verified on its own, and refused on its own terms.
#[test]
fn another_token_on_a_kept_connection_is_verified_again() {
    let dir = TempDir::new("tokens-kept");
    let server = start(&dir, &[]);
    let a = hs_token(serde_json::json!({"exp": now() + 600, "publish": ["a.>"]}));
    let b = hs_token(serde_json::json!({"exp": now() + 600, "publish": ["b.>"]}));
    let mut kept = connect(server.bus());
    let mut ask = |token: &str| -> String {
        let request = format!(
            "POST /msgbus/a.x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
        send(&mut kept, request.as_bytes());
        let got = read_until(&mut kept, b"\r\n\r\n");
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        let len = if head.starts_with("HTTP/1.1 204 ") {
            0
        } else {
            common::content_length(&head)
        };
        read_exact_n(&mut kept, len - (got.len() - end));
        head
    };
    for (token, status) in [
        (a.as_str(), "204"),
        (a.as_str(), "204"),
        (b.as_str(), "403"),
        ("not.a.token", "401"),
        (a.as_str(), "204"),
    ] {
        let head = ask(token);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status} expected: {head}"
        );
    }
}

// ---------------------------------------------------------------------
// What the mutation round of src/http/bus.rs found untested

/// `*` alone names every channel, in the path as in `?channel=`: a token
/// must cover `>` (every channel) to subscribe to it; a token for the
/// one-word channels (the pattern `*`) is refused.
#[test]
fn every_channel_needs_a_token_that_covers_every_channel() {
    let dir = TempDir::new("tokens-every");
    let server = start(&dir, &[]);
    let bus = server.bus();
    let one_word = hs_token(serde_json::json!({"exp": now() + 600, "subscribe": ["*"]}));
    let every = hs_token(serde_json::json!({"exp": now() + 600, "subscribe": [">"]}));
    for target in ["/msgbus/*", "/msgbus/?channel=*"] {
        let mut s = connect(bus);
        send(
            &mut s,
            format!("GET {target} HTTP/1.0\r\n{}\r\n", bearer(&one_word)).as_bytes(),
        );
        let head = String::from_utf8_lossy(&read_until(&mut s, b"\r\n\r\n")).into_owned();
        assert!(head.starts_with("HTTP/1.0 403 "), "{target}: {head}");
        subscribe(bus, target, &bearer(&every));
    }
    // The one-word token still covers a one-word channel.
    subscribe(bus, "/msgbus/news", &bearer(&one_word));
}
