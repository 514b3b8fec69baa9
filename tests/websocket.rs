//! WebSocket on the HTTP bus (RFC 6455), and the heartbeat of idle streams,
//! against the real binary: a raw-socket client for the handshake, the
//! framing and every protocol error; Python's `websockets` package as a
//! real client (plain and over TLS); headless Chromium with a page that
//! subscribes and publishes.
//!
//! Python's `websockets` package must be installed (`.ci/run` installs it
//! with pip); without it the tests that use it fail and say so.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::webdriver::Browser;
use common::{connect, read_exact_n, read_to_close, read_until, send, Server, Stats, TempDir};
use serde_json::json;

/// The key and accept value of RFC 6455's example (§1.3).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// How long a child process may take.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------
// A raw client

fn handshake_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Opens a WebSocket on `path`; returns the connection after the `101`.
fn open_ws(bus: &str, path: &str) -> TcpStream {
    open_ws_with(bus, path, "")
}

fn open_ws_with(bus: &str, path: &str, extra: &str) -> TcpStream {
    let mut s = connect(bus);
    send(&mut s, handshake_request(path, extra).as_bytes());
    let head = read_until(&mut s, b"\r\n\r\n");
    let head = String::from_utf8_lossy(&head);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "bytes after the head: {head:?}");
    s
}

/// A client frame, masked unless `masked` is false.
fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x1f, 0x80, 0x3c, 0x55];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads one server frame: (FIN, opcode, payload). Server frames must not
/// be masked.
fn read_frame(s: &mut impl Read) -> (bool, u8, Vec<u8>) {
    let h = read_exact_n(s, 2);
    assert_eq!(h[1] & 0x80, 0, "a server frame was masked");
    let len = match h[1] & 0x7F {
        126 => u16::from_be_bytes(read_exact_n(s, 2).try_into().unwrap()) as usize,
        127 => u64::from_be_bytes(read_exact_n(s, 8).try_into().unwrap()) as usize,
        n => n as usize,
    };
    (h[0] & 0x80 != 0, h[0] & 0x0F, read_exact_n(s, len))
}

/// Reads frames until the close frame; returns its code and reason, and
/// checks that the server then closes the connection.
fn read_close(s: &mut TcpStream) -> (u16, String) {
    loop {
        let (fin, op, payload) = read_frame(s);
        if op == 0x8 {
            assert!(fin);
            let rest = read_to_close(s);
            assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return (code, String::from_utf8(payload[2..].to_vec()).unwrap());
        }
    }
}

fn publish(bus: &str, channel: &str, content_type: &str, body: &[u8]) {
    publish_as(bus, channel, content_type, body, "");
}

fn publish_as(bus: &str, channel: &str, content_type: &str, body: &[u8], extra: &str) {
    let mut s = connect(bus);
    let head = format!(
        "POST /msgbus/{channel} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    send(&mut s, head.as_bytes());
    send(&mut s, body);
    let answer = read_to_close(&mut s);
    assert!(
        answer.starts_with(b"HTTP/1.1 204 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// A raw multipart subscriber of `channel`, its head and opening read.
fn multipart_subscriber(bus: &str, channel: &str) -> TcpStream {
    let mut s = connect(bus);
    send(
        &mut s,
        format!("GET /msgbus/{channel} HTTP/1.0\r\n\r\n").as_bytes(),
    );
    read_until(&mut s, b"--00MsgBus00\r\n");
    s
}

fn basic(user: &str, password: &str) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {enc}\r\n")
}

// ---------------------------------------------------------------------
// Handshake and delivery

#[test]
fn handshake_answers_101_and_messages_arrive_as_frames() {
    let server = Server::start(&[]);
    let mut s = connect(server.bus());
    send(&mut s, handshake_request("/msgbus/news", "").as_bytes());
    let want = format!(
        "HTTP/1.1 101 Switching Protocols\r\nServer: switchboard\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    );
    let head = read_exact_n(&mut s, want.len());
    assert_eq!(String::from_utf8_lossy(&head), want);

    publish(server.bus(), "news", "text/plain", b"hello");
    assert_eq!(read_frame(&mut s), (true, 0x1, b"hello".to_vec()));
    publish(server.bus(), "news", "application/json", b"{\"a\":1}");
    assert_eq!(read_frame(&mut s), (true, 0x1, b"{\"a\":1}".to_vec()));
    publish(server.bus(), "news", "image/png", b"\x89PNG");
    assert_eq!(read_frame(&mut s), (true, 0x2, b"\x89PNG".to_vec()));
    // A text type whose body is not UTF-8 cannot be a text frame.
    publish(server.bus(), "news", "text/plain", b"\xff\xfe");
    assert_eq!(read_frame(&mut s), (true, 0x2, b"\xff\xfe".to_vec()));
    // Each length form.
    for len in [125usize, 126, 65535, 65536, 200_000] {
        let body: Vec<u8> = (0..len).map(|i| (i % 250) as u8).collect();
        publish(server.bus(), "news", "application/octet-stream", &body);
        let (fin, op, got) = read_frame(&mut s);
        assert!(fin && op == 0x2 && got == body, "length {len}");
    }
    // A burst: one WebSocket message per channel message, in order.
    let mut publisher = connect(server.bus());
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend_from_slice(
            format!(
                "POST /msgbus/news HTTP/1.1\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\nm{i}",
                format!("m{i}").len()
            )
            .as_bytes(),
        );
    }
    send(&mut publisher, &burst);
    for i in 0..50 {
        assert_eq!(
            read_frame(&mut s),
            (true, 0x1, format!("m{i}").into_bytes())
        );
    }
}

#[test]
fn json_format_and_the_root_subscription() {
    let server = Server::start(&[]);
    let mut json_sub = open_ws(server.bus(), "/msgbus/news?format=json");
    let mut root = open_ws(server.bus(), "/msgbus/?format=json");
    let mut filtered = open_ws(server.bus(), "/msgbus/news?type=image/*");
    publish_as(
        server.bus(),
        "news",
        "text/plain",
        b"two\nlines",
        &basic("alice", "x"),
    );
    publish(server.bus(), "news", "image/png", b"\x00");
    for s in [&mut json_sub, &mut root] {
        let (_, op, payload) = read_frame(s);
        assert_eq!(op, 0x1);
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v,
            json!({"channel": "news", "type": "text/plain", "from": "alice", "body": "two\nlines"})
        );
        let (_, op, payload) = read_frame(s);
        assert_eq!(op, 0x1);
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["from"], json!(null));
        assert_eq!(v["type"], json!("image/png"));
    }
    // The type filter let only the PNG through.
    assert_eq!(read_frame(&mut filtered), (true, 0x2, b"\x00".to_vec()));
}

/// The JSON frame of one message, as a value.
fn read_json(s: &mut impl Read) -> serde_json::Value {
    let (_, op, payload) = read_frame(s);
    assert_eq!(op, 0x1, "{payload:?}");
    serde_json::from_slice(&payload).unwrap()
}

/// Opens a WebSocket whose first frames may come in the same read as the
/// `101` (a resume's replay); returns a reader of the frames.
fn open_ws_frames(bus: &str, path: &str) -> impl Read {
    let mut s = connect(bus);
    send(&mut s, handshake_request(path, "").as_bytes());
    let got = read_until(&mut s, b"\r\n\r\n");
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..end]);
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    std::io::Cursor::new(got[end..].to_vec()).chain(s)
}

/// Plain frames carry the body alone, so a subscription whose messages
/// come from more than one channel (a pattern, a `?channel=` list) must ask
/// for the JSON form, which names each message's channel; such a
/// subscription has no channel to publish to. A list is the subscription
/// (not every channel), and `?since=` resumes as on the other framings.
#[test]
fn patterns_and_lists_take_the_json_form() {
    let server = Server::start(&["--history", "10"]);
    let bus = server.bus();
    for path in [
        "/msgbus/sensors.*.temp",
        "/msgbus/sensors.>",
        "/msgbus/?channel=news&channel=weather",
        "/msgbus/?channel=sensors.*.temp",
    ] {
        let mut s = connect(bus);
        send(&mut s, handshake_request(path, "").as_bytes());
        let got = String::from_utf8_lossy(&read_until(&mut s, b"not its channel\n")).into_owned();
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{path}: {got}"
        );
        assert!(got.contains("needs ?format=json"), "{path}: {got}");
    }
    // Plain frames carry no ids: resuming one is refused too.
    for path in ["/msgbus/news?since=0", "/msgbus/?since=3"] {
        let mut s = connect(bus);
        send(&mut s, handshake_request(path, "").as_bytes());
        let got =
            String::from_utf8_lossy(&read_until(&mut s, b"told from a message\n")).into_owned();
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{path}: {got}"
        );
        assert!(
            got.contains("(?since=) needs ?format=json"),
            "{path}: {got}"
        );
    }
    // One channel in a list, and the root, stay plain (the root's frames
    // carry no channel, as documented).
    let mut one = open_ws(bus, "/msgbus/?channel=news");
    let mut root = open_ws(bus, "/msgbus/");
    let mut pattern = open_ws(bus, "/msgbus/sensors.*.temp?format=json");
    let mut list = open_ws(
        bus,
        "/msgbus/?channel=news&channel=sensors.a.temp&format=json",
    );
    for (channel, body) in [
        ("sensors.a.temp", "21"),
        ("sensors.b.hum", "40"),
        ("news", "n"),
        ("sensors.z.temp", "end"),
        ("news", "end"),
    ] {
        publish(bus, channel, "text/plain", body.as_bytes());
    }
    let got = |s: &mut TcpStream, n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|_| {
                let v = read_json(s);
                let text = |k: &str| v[k].as_str().unwrap().to_string();
                (text("channel"), text("body"))
            })
            .collect()
    };
    let pair = |c: &str, b: &str| (c.to_string(), b.to_string());
    assert_eq!(
        got(&mut pattern, 2),
        [pair("sensors.a.temp", "21"), pair("sensors.z.temp", "end")]
    );
    // Only the listed channels: nothing of sensors.b.hum or sensors.z.temp
    // came before the last message of news.
    assert_eq!(
        got(&mut list, 3),
        [
            pair("sensors.a.temp", "21"),
            pair("news", "n"),
            pair("news", "end")
        ]
    );
    assert_eq!(read_frame(&mut one), (true, 0x1, b"n".to_vec()));
    assert_eq!(read_frame(&mut one), (true, 0x1, b"end".to_vec()));
    for body in ["21", "40", "n", "end", "end"] {
        assert_eq!(read_frame(&mut root), (true, 0x1, body.as_bytes().to_vec()));
    }
    // The one channel listed is where its client publishes.
    send(&mut one, &frame(true, 0x1, b"hi", true));
    assert_eq!(read_frame(&mut one), (true, 0x1, b"hi".to_vec()));
    assert_eq!(got(&mut list, 1), [pair("news", "hi")]);
    // Nowhere to publish to: the client's message closes with 1008.
    for s in [&mut pattern, &mut list] {
        send(s, &frame(true, 0x1, b"hi", true));
        assert_eq!(
            read_close(s),
            (
                1008,
                "a subscription to a pattern or to several channels does not publish".to_string()
            )
        );
    }

    // Resuming: everything kept from 0; from an id of an earlier run a
    // gap first, naming the first id it gets.
    let mut all = open_ws_frames(bus, "/msgbus/sensors.*.temp?format=json&since=0");
    let first = read_json(&mut all);
    assert_eq!(
        (first["channel"].clone(), first["body"].clone()),
        (json!("sensors.a.temp"), json!("21"))
    );
    let first_id = first["id"].as_u64().unwrap();
    assert_eq!(read_json(&mut all)["body"], json!("end"));
    let mut behind = open_ws_frames(
        bus,
        "/msgbus/?channel=news&channel=sensors.a.temp&format=json&since=1",
    );
    assert_eq!(read_json(&mut behind), json!({ "gap": first_id }));
    assert_eq!(read_json(&mut behind)["id"], json!(first_id));
    assert_eq!(read_json(&mut behind)["body"], json!("n"));
    assert_eq!(read_json(&mut behind)["body"], json!("end"));
    assert_eq!(read_json(&mut behind)["body"], json!("hi"));
    publish(bus, "news", "text/plain", b"live");
    assert_eq!(read_json(&mut behind)["body"], json!("live"));
}

#[test]
fn bad_handshakes_get_clear_statuses() {
    let server = Server::start(&["--secret", "s3cret"]);
    let bus = server.bus();
    let cases: Vec<(String, &str)> = vec![
        (
            handshake_request("/msgbus/x", &basic("u", "s3cret"))
                .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            "HTTP/1.1 426 Upgrade Required\r\n",
        ),
        (
            handshake_request("/msgbus/x", &basic("u", "s3cret"))
                .replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            handshake_request("/msgbus/x", &basic("u", "s3cret")).replace(KEY, "c2hvcnQ="),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            handshake_request("/msgbus/x", &basic("u", "s3cret"))
                .replace("Connection: Upgrade", "Connection: keep-alive"),
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            handshake_request("/msgbus/x", &basic("u", "s3cret")).replace("HTTP/1.1", "HTTP/1.0"),
            "HTTP/1.0 400 Bad Request\r\n",
        ),
        (
            handshake_request("/msgbus/x", &basic("u", "wrong")),
            "HTTP/1.1 401 Unauthorized\r\n",
        ),
    ];
    for (request, want) in cases {
        let mut s = connect(bus);
        send(&mut s, request.as_bytes());
        let got = read_until(&mut s, b"\r\n\r\n");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with(want), "{request:?} got {got}");
        if want.contains("426") {
            assert!(got.contains("Sec-WebSocket-Version: 13\r\n"), "{got}");
        }
    }
    // With the right credentials it opens.
    open_ws_with(bus, "/msgbus/x", &basic("u", "s3cret"));
}

// ---------------------------------------------------------------------
// The client's frames

#[test]
fn client_messages_publish_to_the_channel_with_the_handshake_user() {
    let server = Server::start(&["--secret", "pw"]);
    let bus = server.bus().to_string();
    let mut sub = connect(&bus);
    send(
        &mut sub,
        format!(
            "GET /msgbus/room HTTP/1.0\r\n{}\r\n",
            basic("watcher", "pw")
        )
        .as_bytes(),
    );
    read_until(&mut sub, b"--00MsgBus00\r\n");
    let mut ws = open_ws_with(&bus, "/msgbus/room", &basic("carol", "pw"));
    send(&mut ws, &frame(true, 0x1, "héllo".as_bytes(), true));
    send(&mut ws, &frame(true, 0x2, b"\x00\x01\x02", true));
    // Fragments, with a ping between them.
    send(&mut ws, &frame(false, 0x1, b"frag", true));
    send(&mut ws, &frame(true, 0x9, b"are you there", true));
    send(&mut ws, &frame(false, 0x0, b"men", true));
    send(&mut ws, &frame(true, 0x0, b"ted", true));
    let want = "From: carol\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhéllo\r\n--00MsgBus00\r\n\
                From: carol\r\nContent-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\n\x00\x01\x02\r\n--00MsgBus00\r\n\
                From: carol\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nfragmented\r\n--00MsgBus00\r\n";
    let got = read_exact_n(&mut sub, want.len());
    assert_eq!(String::from_utf8_lossy(&got), want);
    // The client is subscribed too: its own messages come back, and the
    // pong comes in order with them.
    assert_eq!(
        read_frame(&mut ws),
        (true, 0x1, "héllo".as_bytes().to_vec())
    );
    assert_eq!(read_frame(&mut ws), (true, 0x2, b"\x00\x01\x02".to_vec()));
    assert_eq!(read_frame(&mut ws), (true, 0xA, b"are you there".to_vec()));
    assert_eq!(read_frame(&mut ws), (true, 0x1, b"fragmented".to_vec()));
}

#[test]
fn the_close_handshake() {
    let server = Server::start(&[]);
    let mut stats = Stats::open(server.bus());
    let mut ws = open_ws(server.bus(), "/msgbus/c");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    send(&mut ws, &frame(true, 0x8, &payload, true));
    assert_eq!(read_close(&mut ws), (1000, String::new()));
    // An empty close is answered with an empty one.
    let mut ws = open_ws(server.bus(), "/msgbus/c");
    send(&mut ws, &frame(true, 0x8, b"", true));
    assert_eq!(read_frame(&mut ws), (true, 0x8, vec![]));
    assert!(read_to_close(&mut ws).is_empty());
    let v = stats.wait_for("both closes counted", |v| {
        v["connections"]["closed_by"]["quit"] == json!(2)
    });
    assert_eq!(v["subscribers"], json!(0));
}

/// Each protocol error: the close code, and the connection closed.
#[test]
fn protocol_errors_fail_the_connection_with_their_close_code() {
    let server = Server::start(&["--max-body", "100"]);
    let bus = server.bus();
    let too_long_control = frame(true, 0x9, &[b'p'; 126], true);
    let mut rsv = frame(true, 0x1, b"x", true);
    rsv[0] |= 0x40;
    let mut fragmented_too_big = frame(false, 0x2, &[1; 60], true);
    fragmented_too_big.extend(frame(true, 0x0, &[1; 41], true));
    let mut interleaved = frame(false, 0x1, b"a", true);
    interleaved.extend(frame(true, 0x1, b"b", true));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", frame(true, 0x1, b"hello", false), 1002),
        ("bad UTF-8", frame(true, 0x1, b"\xc3\x28", true), 1007),
        ("frame too big", frame(true, 0x2, &[0; 101], true), 1009),
        ("message too big", fragmented_too_big, 1009),
        ("reserved bits", rsv, 1002),
        ("unknown opcode", frame(true, 0x3, b"", true), 1002),
        ("long control", too_long_control, 1002),
        ("lone continuation", frame(true, 0x0, b"x", true), 1002),
        ("interleaved", interleaved, 1002),
        (
            "close code 1005",
            frame(true, 0x8, &1005u16.to_be_bytes(), true),
            1002,
        ),
    ];
    let mut stats = Stats::open(bus);
    let n = cases.len();
    for (what, bytes, code) in cases {
        let mut ws = open_ws(bus, "/msgbus/errors");
        send(&mut ws, &bytes);
        let (got, reason) = read_close(&mut ws);
        assert_eq!(got, code, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}: a reason");
    }
    // The largest message allowed passes.
    let mut ws = open_ws(bus, "/msgbus/errors");
    send(&mut ws, &frame(true, 0x2, &[7; 100], true));
    assert_eq!(read_frame(&mut ws), (true, 0x2, vec![7; 100]));
    let v = stats.wait_for("every failure counted", |v| {
        v["connections"]["closed_by"]["protocol_error"] == json!(n)
    });
    assert_eq!(v["subscribers"], json!(1));
}

#[test]
fn a_websocket_subscriber_that_does_not_read_is_disconnected() {
    let server = Server::start(&[
        "--backlog-limit",
        "100000",
        "--slow-subscriber",
        "disconnect",
    ]);
    let bus = server.bus().to_string();
    let ws = open_ws(&bus, "/msgbus/flood");
    let mut stats = Stats::open(&bus);
    let body = vec![b'x'; 50_000];
    let mut publisher = connect(&bus);
    let mut sent = 0;
    // Far more than socket buffers and the backlog hold.
    while stats.get()["slow_disconnects"] == json!(0) {
        assert!(sent < 2000, "never disconnected after {sent} messages");
        let head = format!(
            "POST /msgbus/flood HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        send(&mut publisher, head.as_bytes());
        send(&mut publisher, &body);
        read_until(&mut publisher, b"204 OK\r\nServer: switchboard\r\n\r\n");
        sent += 1;
    }
    assert_eq!(
        stats.get()["connections"]["closed_by"]["slow_subscriber"],
        json!(1)
    );
    drop(ws);
}

// ---------------------------------------------------------------------
// Python's websockets package

fn require_websockets() {
    let out = Command::new("python3")
        .args(["-c", "import websockets; print(websockets.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3 on PATH ({e})"));
    assert!(
        out.status.success(),
        "this test needs Python's `websockets` package: install it with \
         `python3 -m pip install websockets` (.ci/run does); import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real client: receives what is published over HTTP, publishes text and
/// binary, pings, then closes. Prints one line per step.
const PY_CLIENT: &str = r#"
import asyncio, ssl, sys
import websockets

async def main(url, cafile):
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    async with websockets.connect(url, ssl=ctx) as ws:
        print("open", flush=True)
        for _ in range(2):
            m = await ws.recv()
            print("recv", type(m).__name__, m if isinstance(m, str) else m.hex(), flush=True)
        await ws.send("from python")
        await ws.send(b"\x00\x01\xfe")
        for _ in range(2):
            m = await ws.recv()
            print("echo", type(m).__name__, m if isinstance(m, str) else m.hex(), flush=True)
        pong = await ws.ping(b"hb")
        await asyncio.wait_for(pong, 10)
        print("pong", flush=True)
        await ws.close(1000, "done")
        print("closed", ws.close_code, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
"#;

/// Sends a message over the limit and reports the close code it gets.
const PY_TOO_BIG: &str = r#"
import asyncio, sys
import websockets

async def main(url):
    async with websockets.connect(url) as ws:
        await ws.send("x" * 200)
        try:
            await asyncio.wait_for(ws.recv(), 10)
            print("no close")
        except websockets.exceptions.ConnectionClosed as e:
            print("closed", e.rcvd.code if e.rcvd else None, flush=True)

asyncio.run(main(sys.argv[1]))
"#;

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Child2 {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Child2 {
    fn spawn(cmd: &mut Command) -> Child2 {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a child process");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            sink.lock().unwrap().push_str(&s);
        });
        Child2 {
            child,
            lines,
            stderr,
        }
    }

    fn line(&self, what: &str) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(e) => {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "{what}: no line from the client ({e}); stderr: {}",
                    self.stderr.lock().unwrap()
                )
            }
        }
    }

    fn finish(mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "client failed: {status}; stderr: {}",
                    self.stderr.lock().unwrap()
                );
                return;
            }
            assert!(Instant::now() < deadline, "the client did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs [`PY_CLIENT`] against `url` while a multipart subscriber on
/// `plain_bus` watches the channel.
fn python_client_round_trip(url: &str, cafile: Option<&str>, plain_bus: &str) {
    let mut sub = multipart_subscriber(plain_bus, "py");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PY_CLIENT, url]);
    if let Some(ca) = cafile {
        cmd.arg(ca);
    }
    let client = Child2::spawn(&mut cmd);
    assert_eq!(client.line("open"), "open");
    publish(plain_bus, "py", "text/plain", "grüße".as_bytes());
    publish(plain_bus, "py", "image/png", b"\x89PNG");
    assert_eq!(client.line("text"), "recv str grüße");
    assert_eq!(client.line("binary"), "recv bytes 89504e47");
    let want: &[u8] = b"Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nfrom python\r\n\
        --00MsgBus00\r\nContent-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\n\
        \x00\x01\xfe\r\n--00MsgBus00\r\n";
    // Everything the channel carried, in order, read in one go (what
    // `read_until` reads past its needle is not kept).
    let got = read_until(&mut sub, want);
    assert!(
        got.starts_with(
            "Content-Type: text/plain\r\nContent-Length: 7\r\n\r\ngrüße\r\n--00MsgBus00\r\n"
                .as_bytes()
        ),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.ends_with(want));
    assert_eq!(client.line("echo text"), "echo str from python");
    assert_eq!(client.line("echo binary"), "echo bytes 0001fe");
    assert_eq!(client.line("pong"), "pong");
    assert_eq!(client.line("close"), "closed 1000");
    client.finish();
}

#[test]
fn python_websockets_client_subscribes_publishes_pings_and_closes() {
    require_websockets();
    let server = Server::start(&[]);
    let url = format!("ws://{}/msgbus/py", server.bus());
    python_client_round_trip(&url, None, server.bus());
}

#[test]
fn python_websockets_client_is_told_1009_for_a_message_over_the_limit() {
    require_websockets();
    let server = Server::start(&["--max-body", "100"]);
    let url = format!("ws://{}/msgbus/big", server.bus());
    let client = Child2::spawn(Command::new("python3").args(["-c", PY_TOO_BIG, &url]));
    assert_eq!(client.line("close"), "closed 1009");
    client.finish();
}

/// A CA and a certificate for localhost signed by it, as PEM files.
fn pki(dir: &Path) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "websocket test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[test]
fn python_websockets_client_over_the_https_door() {
    require_websockets();
    let dir = TempDir::new("websocket-tls");
    let (ca, cert, key) = pki(dir.path());
    let server = Server::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--bus-tls-listen",
        "127.0.0.1:0",
    ]);
    let port = server
        .addr("bus-tls")
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let url = format!("wss://127.0.0.1:{port}/msgbus/py");
    python_client_round_trip(&url, Some(&ca), server.bus());
}

// ---------------------------------------------------------------------
// A browser

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>switchboard websocket</title>
<style>body { font: 16px sans-serif; margin: 2em; } li { margin: .3em 0; }
#state { font-weight: bold; }</style></head>
<body><h1>WebSocket on the bus</h1>
<p>state: <span id="state">connecting</span></p>
<ul id="log"></ul>
<script>
const log = text => {
  const li = document.createElement('li');
  li.textContent = text;
  document.getElementById('log').append(li);
};
const ws = new WebSocket(`ws://${location.host}/msgbus/wschat?format=json`);
ws.onopen = () => {
  document.getElementById('state').textContent = 'open';
  document.body.dataset.open = 'true';
};
ws.onmessage = e => {
  const m = JSON.parse(e.data);
  log(`${m.channel} ${m.type} ${m.from ?? '-'}: ${m.body}`);
};
ws.onclose = e => {
  document.getElementById('state').textContent = 'closed ' + e.code;
};
// A second socket without ?format=json: text frames arrive as strings,
// binary frames as ArrayBuffers.
const raw = new WebSocket(`ws://${location.host}/msgbus/wschat`);
raw.binaryType = 'arraybuffer';
raw.onopen = () => { document.body.dataset.rawOpen = 'true'; };
raw.onmessage = e => log(typeof e.data === 'string'
  ? `raw text: ${e.data}`
  : `raw binary: ${[...new Uint8Array(e.data)].join(',')}`);
window.sendText = t => ws.send(t);
window.sendBytes = a => ws.send(new Uint8Array(a));
</script></body></html>
"#;

fn has_item(text: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#log li')].some(li => li.textContent === {});",
        serde_json::to_string(text).unwrap()
    )
}

#[test]
fn chromium_page_subscribes_and_publishes_over_websocket() {
    let docroot = TempDir::new("websocket-page");
    std::fs::write(docroot.path().join("index.html"), PAGE).unwrap();
    let server = Server::start(&["--docroot", docroot.path().to_str().unwrap()]);
    let bus = server.bus().to_string();
    let mut sub = multipart_subscriber(&bus, "wschat");
    let browser = Browser::launch();
    browser.navigate(&format!("http://{bus}/"));
    browser.wait_until(
        "the WebSocket to open",
        "return document.body.dataset.open === 'true' && document.body.dataset.rawOpen === 'true';",
    );

    publish_as(
        &bus,
        "wschat",
        "text/plain",
        b"hello from curl's cousin",
        &basic("alice", "x"),
    );
    browser.wait_until(
        "the HTTP publish on the page",
        &has_item("wschat text/plain alice: hello from curl's cousin"),
    );

    browser.script("sendText('hello from chromium'); return true;");
    let want = "Content-Type: text/plain\r\nContent-Length: 19\r\n\r\nhello from chromium\r\n";
    read_until(&mut sub, want.as_bytes());
    browser.wait_until(
        "the page's own message back",
        &has_item("wschat text/plain -: hello from chromium"),
    );
    browser.wait_until(
        "the raw socket's text frame",
        &has_item("raw text: hello from chromium"),
    );
    browser.script("sendBytes([1, 2, 3]); return true;");
    let want =
        "Content-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\n\x01\x02\x03\r\n";
    read_until(&mut sub, want.as_bytes());
    browser.wait_until(
        "the binary message back as JSON",
        &has_item("wschat application/octet-stream -: \u{1}\u{2}\u{3}"),
    );
    browser.wait_until(
        "the raw socket's binary frame",
        &has_item("raw binary: 1,2,3"),
    );
    assert_eq!(
        browser.script("return document.getElementById('state').textContent;"),
        json!("open")
    );
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/websocket-chromium.png");
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.display());
}

// ---------------------------------------------------------------------
// Heartbeats

#[test]
fn heartbeats_reach_idle_streams_of_every_kind() {
    let server = Server::start(&["--heartbeat", "1"]);
    let bus = server.bus();

    let mut sse = connect(bus);
    send(
        &mut sse,
        b"GET /msgbus/idle HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
    );
    let head = read_until(&mut sse, b"\r\n\r\nretry: 3000\n: subscribed\n\n");
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(head.ends_with(b"no-cache\r\n\r\nretry: 3000\n: subscribed\n\n"));
    let heartbeat = b": heartbeat\n\n";
    assert_eq!(read_exact_n(&mut sse, heartbeat.len()), heartbeat);

    let mut chunked = connect(bus);
    send(&mut chunked, b"GET /msgbus/idle HTTP/1.1\r\n\r\n");
    read_until(&mut chunked, b"e\r\n--00MsgBus00\r\n\r\n");
    assert_eq!(
        read_exact_n(&mut chunked, 22),
        b"10\r\nX-Heartbeat: 1\r\n\r\n"
    );

    let mut plain = multipart_subscriber(bus, "idle");
    assert_eq!(read_exact_n(&mut plain, 16), b"X-Heartbeat: 1\r\n");

    let mut ws = open_ws(bus, "/msgbus/idle");
    assert_eq!(read_frame(&mut ws), (true, 0x9, vec![]));
    // The client answers; the stream stays open and takes messages, and a
    // multipart part after heartbeats carries them as header lines that a
    // parser skips.
    send(&mut ws, &frame(true, 0xA, b"", true));
    publish(bus, "idle", "text/plain", b"after");
    assert_eq!(
        read_frame_skipping_pings(&mut ws),
        (true, 0x1, b"after".to_vec())
    );
    let part = read_until(&mut plain, b"after\r\n--00MsgBus00\r\n");
    let part = String::from_utf8_lossy(&part);
    assert!(
        part.ends_with(
            "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nafter\r\n--00MsgBus00\r\n"
        ),
        "{part:?}"
    );
    assert!(
        part.lines().all(|l| l.is_empty()
            || l == "X-Heartbeat: 1"
            || l.starts_with("Content-")
            || l == "after"
            || l == "--00MsgBus00"),
        "{part:?}"
    );
    read_until(&mut sse, b"data: after\n\n");
}

fn read_frame_skipping_pings(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    loop {
        let f = read_frame(s);
        if f.1 != 0x9 {
            return f;
        }
    }
}

/// With `--token-key`, a WebSocket takes its token from `?token=` (a
/// browser's WebSocket cannot set headers): the handshake needs subscribe
/// rights on the channel, and what the client sends is published only when
/// the token allows publishing there; otherwise the first message closes
/// the connection with 1008 and reaches nobody.
#[test]
fn tokens_decide_what_a_websocket_may_do() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let dir = TempDir::new("ws-tokens");
    let secret = "a websocket test secret, longer than 32 bytes";
    let key = dir.path().join("hs.key");
    std::fs::write(&key, secret).unwrap();
    let server = Server::start(&["--token-key", key.to_str().unwrap()]);
    let bus = server.bus().to_string();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |claims: serde_json::Value| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let reader = token(serde_json::json!({"exp": exp, "subscribe": ["room"]}));
    let talker = token(
        serde_json::json!({"sub": "dan", "exp": exp, "subscribe": ["room"], "publish": ["room"]}),
    );

    // No token, and a channel the token does not cover: refused before 101.
    for (path, want) in [
        ("/msgbus/room".to_string(), "HTTP/1.1 401 "),
        (format!("/msgbus/other?token={reader}"), "HTTP/1.1 403 "),
    ] {
        let mut s = connect(&bus);
        send(&mut s, handshake_request(&path, "").as_bytes());
        let head = String::from_utf8_lossy(&read_until(&mut s, b"\r\n\r\n")).into_owned();
        assert!(head.starts_with(want), "{path}: {head}");
    }

    // A subscriber that watches the channel (by header).
    let mut watcher = connect(&bus);
    send(
        &mut watcher,
        format!("GET /msgbus/room HTTP/1.0\r\nAuthorization: Bearer {reader}\r\n\r\n").as_bytes(),
    );
    read_until(&mut watcher, b"--00MsgBus00\r\n");

    // The reader's WebSocket may listen, not talk.
    let mut ws = open_ws(&bus, &format!("/msgbus/room?token={reader}"));
    send(&mut ws, &frame(true, 0x1, b"not allowed", true));
    let (code, _) = read_close(&mut ws);
    assert_eq!(code, 1008);

    // The talker's is published, with its token's subject as the sender;
    // it is the first part the watcher gets.
    let mut ws = open_ws(&bus, &format!("/msgbus/room?token={talker}"));
    send(&mut ws, &frame(true, 0x1, b"hello", true));
    let want = "From: dan\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n";
    let got = read_exact_n(&mut watcher, want.len());
    assert_eq!(String::from_utf8_lossy(&got), want);
}

// ---------------------------------------------------------------------
// What the unit tests of src/http/websocket.rs leave to the wire (its
// mutation round, docs/testing.md)

/// `--request-timeout` runs while a fragmented message is unfinished
/// (`Decoder::mid_message`): a WebSocket that sent a first fragment and
/// stalls is closed and counted as `request_timeout`; one that sits idle
/// between whole messages is not, and still hears the channel afterwards.
#[test]
fn a_stalled_fragmented_message_is_closed_by_the_request_timeout() {
    let server = Server::start(&["--request-timeout", "1", "--heartbeat", "0"]);
    let bus = server.bus().to_string();
    let mut idle = open_ws(&bus, "/msgbus/room");
    let mut stalled = open_ws(&bus, "/msgbus/other");
    send(&mut stalled, &frame(false, 0x1, b"the first half", true));
    assert_eq!(read_to_close(&mut stalled), b"", "the stalled WebSocket");
    let v = Stats::open(&bus).get();
    assert_eq!(
        common::stat(&v, "connections.closed_by.request_timeout"),
        1,
        "{v}"
    );
    publish(&bus, "room", "text/plain", b"still here");
    assert_eq!(read_frame(&mut idle), (true, 0x1, b"still here".to_vec()));
}

/// A WebSocket on the root `/msgbus/` publishes what its client sends to
/// the root channel, as `POST /msgbus/` does; one that lists
/// `?channel=*` (every channel, as a pattern) does not publish: 1008.
#[test]
fn the_root_websocket_publishes_and_a_listed_every_channel_does_not() {
    let server = Server::start(&[]);
    let bus = server.bus().to_string();
    let mut watcher = open_ws(&bus, "/msgbus/");
    let mut root = open_ws(&bus, "/msgbus/");
    send(&mut root, &frame(true, 0x1, b"from the root", true));
    assert_eq!(
        read_frame(&mut watcher),
        (true, 0x1, b"from the root".to_vec())
    );
    let mut listed = open_ws(&bus, "/msgbus/?channel=*&format=json");
    send(&mut listed, &frame(true, 0x1, b"not published", true));
    let (code, reason) = read_close(&mut listed);
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("does not publish"), "{reason}");
}
