//! How request-targets are decoded: in a path only `%XX` escapes mean
//! anything, so `/a+b.txt` names `a+b.txt`; `+` means a space only in a
//! query string. (`GET /a+b.txt` used to serve `a b.txt`.)

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use base64::Engine;
use common::{connect, read_to_close, read_until, send, Server, TempDir};

/// `GET target` over HTTP/1.0; returns the status code and the body.
fn get(addr: &str, target: &str) -> (u16, Vec<u8>) {
    let mut s = connect(addr);
    send(&mut s, format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes());
    let got = read_to_close(&mut s);
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&got)));
    let status = std::str::from_utf8(&got[9..12]).unwrap().parse().unwrap();
    (status, got[end + 4..].to_vec())
}

#[test]
fn plus_in_a_path_is_a_plus_sign() {
    let dir = TempDir::new("paths");
    std::fs::write(dir.path().join("a+b.txt"), "plus\n").unwrap();
    std::fs::write(dir.path().join("a b.txt"), "space\n").unwrap();
    let server = Server::start(&["--docroot", dir.path().to_str().unwrap()]);
    let bus = server.bus();

    for (target, want) in [
        ("/a+b.txt", "plus\n"),
        ("/a%2Bb.txt", "plus\n"),
        ("/a%2bb.txt", "plus\n"),
        ("/a%20b.txt", "space\n"),
        // A query string does not change which file a path names.
        ("/a+b.txt?x=a+b", "plus\n"),
    ] {
        let (status, body) = get(bus, target);
        assert_eq!(status, 200, "{target}");
        assert_eq!(String::from_utf8_lossy(&body), want, "{target}");
    }

    // Without `a+b.txt`, `/a+b.txt` is not found: never the file with a space.
    std::fs::remove_file(dir.path().join("a+b.txt")).unwrap();
    assert_eq!(get(bus, "/a+b.txt").0, 404);
    assert_eq!(get(bus, "/a%20b.txt"), (200, b"space\n".to_vec()));
}

/// Publishes `body` to `channel` as `user` (HTTP Basic, no secret).
fn publish_as(addr: &str, channel: &str, user: &str, body: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:x"));
    let mut s = connect(addr);
    send(
        &mut s,
        format!(
            "POST /msgbus/{channel} HTTP/1.0\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let got = read_to_close(&mut s);
    assert!(
        got.starts_with(b"HTTP/1.0 204 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn plus_in_a_query_is_a_space() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = connect(bus);
    send(&mut sub, b"GET /msgbus/q?sender=bob+smith HTTP/1.0\r\n\r\n");
    // The head and the opening delimiter: subscribed.
    let opened = read_until(&mut sub, b"\r\n\r\n--00MsgBus00\r\n");
    assert!(opened.starts_with(b"HTTP/1.0 200 OK\r\n"));
    assert!(
        opened.ends_with(b"\r\n\r\n--00MsgBus00\r\n"),
        "read too far"
    );

    // Filtered out, then let through: had the first passed, it would be
    // the first part to arrive.
    publish_as(bus, "q", "bob+smith", "plus");
    publish_as(bus, "q", "bob smith", "space");
    let part = b"From: bob smith\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n\
                 space\r\n--00MsgBus00\r\n";
    let got = read_until(&mut sub, b"space\r\n--00MsgBus00\r\n");
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(part));
}
