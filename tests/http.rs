//! The HTTP bus end to end: the real `switchboard` binary, raw bytes over
//! TCP, and real clients (curl, Python's `http.client`).
//!
//! Most cases replay the msgbus reference transcript, with switchboard's
//! deliberate differences (docs/http.md, "Differences from msgbus"): every
//! multipart part uses CRLF and carries `Content-Length`, the delimiter is
//! preceded by CRLF, `Server: switchboard`, no `Date`, and so on.
//!
//! Ordering is never left to timing. A subscriber is registered once its
//! response head and opening delimiter have arrived (the server registers it
//! in the same step that queues the head). A publisher's `204` is queued
//! after the message has been queued to every subscriber. A line-protocol
//! subscriber proves its `+` was run with a round trip (`common::line_sync`).
//! "Nothing more arrives" is never checked by waiting: a subscriber is sent a
//! probe message, which must be the very next thing it receives; a
//! keep-alive connection is sent one more request, whose answer must be the
//! very next thing on it; where no probe can pass a filter, the stats page's
//! count of deliveries must be exact.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::Server;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Head and opening delimiter of an HTTP/1.0 multipart subscription.
const HEAD_10: &[u8] = b"HTTP/1.0 200 OK\r\nServer: switchboard\r\n\
Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\nCache-Control: no-cache\r\n\r\n\
--00MsgBus00\r\n";

/// Head and opening delimiter (its own chunk) of an HTTP/1.1 subscription.
const HEAD_11: &[u8] = b"HTTP/1.1 200 OK\r\nServer: switchboard\r\n\
Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\nCache-Control: no-cache\r\n\
Transfer-Encoding: chunked\r\n\r\ne\r\n--00MsgBus00\r\n\r\n";

/// The delimiter that ends every part.
const DELIMITER: &[u8] = b"\r\n--00MsgBus00\r\n";

const NO_CONTENT_10: &[u8] = b"HTTP/1.0 204 OK\r\nServer: switchboard\r\n\r\n";
const NO_CONTENT_11: &[u8] = b"HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n";

const NOT_FOUND_10: &[u8] = b"HTTP/1.0 404 Not Found\r\nServer: switchboard\r\n\
Content-Type: text/html\r\nContent-Length: 18\r\n\r\n<h1>Not Found</h1>";
const NOT_FOUND_11: &[u8] = b"HTTP/1.1 404 Not Found\r\nServer: switchboard\r\n\
Content-Type: text/html\r\nContent-Length: 18\r\n\r\n<h1>Not Found</h1>";

const UNAUTHORIZED_10: &[u8] = b"HTTP/1.0 401 Unauthorized\r\nServer: switchboard\r\n\
WWW-Authenticate: Basic realm=\"msgbus\"\r\nContent-Type: text/html\r\nContent-Length: 21\r\n\r\n\
<h1>Unauthorized</h1>";

const NOT_IMPLEMENTED_BODY: &[u8] =
    b"501 Not Implemented: the bus takes GET (subscribe) and POST (publish)\n";

/// Bytes shown with escapes, for readable assertion messages.
fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn basic(user_pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// A client connection with its own read buffer, so nothing read past what
/// a step wanted is lost.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One complete (non-streaming) response.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl Conn {
    fn open(addr: &str) -> Conn {
        Conn {
            s: common::connect(addr),
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        common::send(&mut self.s, bytes);
    }

    /// Reads once more; false at the end of the stream.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read: {e}; have {}", show(&self.buf)),
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill(),
                "closed after {} of {n} bytes: {}",
                self.buf.len(),
                show(&self.buf)
            );
        }
        self.buf.drain(..n).collect()
    }

    /// The next bytes are exactly `want`.
    fn expect(&mut self, want: &[u8]) {
        let got = self.take(want.len());
        assert_eq!(show(&got), show(want));
    }

    /// Everything up to and including `needle`.
    fn take_until(&mut self, needle: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, needle) {
                return self.buf.drain(..i + needle.len()).collect();
            }
            assert!(
                self.fill(),
                "closed before {}; have {}",
                show(needle),
                show(&self.buf)
            );
        }
    }

    /// Everything until the server closes.
    fn rest(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }

    /// Reads one response; `head_request`: it answers a HEAD (no body).
    fn response_to(&mut self, head_request: bool) -> Response {
        let head = String::from_utf8(self.take_until(b"\r\n\r\n")).expect("UTF-8 head");
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
        };
        assert_eq!(r.header("Server"), Some("switchboard"), "{}", r.head);
        assert_eq!(r.header("Date"), None, "{}", r.head);
        if head_request || status < 200 || status == 204 || status == 304 {
            return r;
        }
        r.body = match r.header("Content-Length") {
            Some(n) => {
                let n = n.parse().expect("Content-Length");
                self.take(n)
            }
            None => self.rest(),
        };
        r
    }

    fn response(&mut self) -> Response {
        self.response_to(false)
    }

    /// Nothing more came on this keep-alive HTTP/1.1 connection: the answer
    /// to one more request (a `404`) is the very next thing on it.
    fn assert_idle(&mut self) {
        self.send(b"GET /nothere HTTP/1.1\r\nHost: x\r\n\r\n");
        self.expect(NOT_FOUND_11);
    }

    /// The server closes without sending anything more.
    fn assert_closed(&mut self) {
        let rest = self.rest();
        assert!(rest.is_empty(), "bytes before close: {}", show(&rest));
    }

    /// The data of one chunk, or `None` when the stream ends before the
    /// whole chunk arrived.
    fn try_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(eol) = find(&self.buf, b"\r\n") {
                let size = std::str::from_utf8(&self.buf[..eol])
                    .ok()
                    .and_then(|h| usize::from_str_radix(h, 16).ok())
                    .unwrap_or_else(|| panic!("bad chunk size line: {}", show(&self.buf)));
                let end = eol + 2 + size + 2;
                if self.buf.len() >= end {
                    assert_eq!(&self.buf[end - 2..end], b"\r\n", "chunk not ended by CRLF");
                    let data = self.buf[eol + 2..end - 2].to_vec();
                    self.buf.drain(..end);
                    return Some(data);
                }
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// The data of one chunk of a chunked stream.
    fn chunk(&mut self) -> Vec<u8> {
        let line = self.take_until(b"\r\n");
        let size = std::str::from_utf8(&line[..line.len() - 2])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("bad chunk size line: {}", show(&line)));
        let data = self.take(size);
        self.expect(b"\r\n");
        data
    }
}

/// The bytes of one part as switchboard frames it.
fn part(from: Option<&str>, location: Option<&str>, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    if let Some(user) = from {
        p.extend_from_slice(format!("From: {user}\r\n").as_bytes());
    }
    if let Some(channel) = location {
        p.extend_from_slice(format!("Content-Location: /msgbus/{channel}\r\n").as_bytes());
    }
    p.extend_from_slice(
        format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    p.extend_from_slice(body);
    p.extend_from_slice(DELIMITER);
    p
}

/// `data` as one chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

/// The body of every probe message.
const PROBE: &[u8] = b"probe";

/// Publishes the probe (`text/plain`, anonymous) to `channel`.
fn publish_probe(addr: &str, channel: &str) {
    publish(addr, channel, "text/plain", PROBE);
}

/// The probe as a multipart subscriber of `channel` gets it: a plain
/// stream (HTTP/1.0) or chunks (HTTP/1.1); `root`: a subscriber of
/// `/msgbus/`, whose parts name the channel.
fn probe_part(http11: bool, root: bool, channel: &str) -> Vec<u8> {
    let p = part(None, root.then_some(channel), "text/plain", PROBE);
    if http11 {
        chunk(&p)
    } else {
        p
    }
}

/// Opens a subscription and checks its head and opening delimiter exactly.
fn subscribe(addr: &str, target: &str, http11: bool) -> Conn {
    subscribe_as(addr, target, http11, None)
}

fn subscribe_as(addr: &str, target: &str, http11: bool, user_pass: Option<&str>) -> Conn {
    let mut c = Conn::open(addr);
    let mut req = format!("GET {target} HTTP/1.{}\r\n", u8::from(http11));
    if http11 {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    if let Some(up) = user_pass {
        req.push_str(&format!("Authorization: {}\r\n", basic(up)));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    c.expect(if http11 { HEAD_11 } else { HEAD_10 });
    c
}

/// Sends one request on a fresh connection and returns every byte until the
/// server closes.
fn exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut c = Conn::open(addr);
    c.send(request);
    c.rest()
}

/// An HTTP/1.0 publish; returns the whole answer.
fn post(addr: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("POST {target} HTTP/1.0\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    exchange(addr, &bytes)
}

/// Publishes and checks the `204`.
fn publish(addr: &str, channel: &str, content_type: &str, body: &[u8]) {
    let got = post(
        addr,
        &format!("/msgbus/{channel}"),
        &[("Content-Type", content_type)],
        body,
    );
    assert_eq!(show(&got), show(NO_CONTENT_10));
}

fn publish_as(addr: &str, channel: &str, content_type: &str, user_pass: &str, body: &[u8]) {
    let auth = basic(user_pass);
    let got = post(
        addr,
        &format!("/msgbus/{channel}"),
        &[("Content-Type", content_type), ("Authorization", &auth)],
        body,
    );
    assert_eq!(show(&got), show(NO_CONTENT_10));
}

/// The stats page, parsed.
fn stats(addr: &str) -> serde_json::Value {
    let mut c = Conn::open(addr);
    c.send(b"GET /msgbus-stats HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    // HTTP/1.0: closed once answered, so it no longer counts as open.
    c.assert_closed();
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("stats are not JSON ({e}): {}", show(&r.body)))
}

/// A fresh directory under the system's temp dir.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-http-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// Subscribing: heads and parts, byte for byte (transcript section A)

#[test]
fn subscribe_http10_plain_stream() {
    let server = Server::start(&[]);
    let mut sub = subscribe(server.bus(), "/msgbus/foo", false);
    let got = exchange(
        server.bus(),
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(show(&got), show(NO_CONTENT_10));
    sub.expect(b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n");
    let got = exchange(
        server.bus(),
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n\
          \xff\xd8\xff\xe0\x00\x10JFIF",
    );
    assert_eq!(show(&got), show(NO_CONTENT_10));
    sub.expect(
        b"Content-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n\
          \xff\xd8\xff\xe0\x00\x10JFIF\r\n--00MsgBus00\r\n",
    );
    publish_probe(server.bus(), "foo");
    sub.expect(&probe_part(false, false, "foo"));
}

#[test]
fn subscribe_http11_one_chunk_per_message() {
    let server = Server::start(&[]);
    let mut sub = Conn::open(server.bus());
    sub.send(b"GET /msgbus/foo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    sub.expect(
        b"HTTP/1.1 200 OK\r\nServer: switchboard\r\n\
          Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\
          Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n\
          e\r\n--00MsgBus00\r\n\r\n",
    );
    publish(server.bus(), "foo", "text/plain", b"hello");
    sub.expect(
        b"44\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n\r\n",
    );
    publish(
        server.bus(),
        "foo",
        "image/jpeg",
        b"\xff\xd8\xff\xe0\x00\x10JFIF",
    );
    sub.expect(
        b"4a\r\nContent-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n\
          \xff\xd8\xff\xe0\x00\x10JFIF\r\n--00MsgBus00\r\n\r\n",
    );
    // The stream never ends by itself: no last chunk before the next part.
    publish_probe(server.bus(), "foo");
    sub.expect(&probe_part(true, false, "foo"));
}

#[test]
fn subscribe_head_ignores_connection_header() {
    let server = Server::start(&[]);
    // HTTP/1.0 + keep-alive: still a plain stream, and no `Content-Length: 0`.
    let mut a = Conn::open(server.bus());
    a.send(b"GET /msgbus/foo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    a.expect(HEAD_10);
    // HTTP/1.1 + close: the stream stays open and chunked.
    let mut b = Conn::open(server.bus());
    b.send(b"GET /msgbus/foo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    b.expect(HEAD_11);
    // A body on the subscribe GET is read and ignored.
    let mut c = Conn::open(server.bus());
    c.send(b"GET /msgbus/foo HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
    c.expect(HEAD_10);
    publish(server.bus(), "foo", "text/plain", b"hi");
    let p = part(None, None, "text/plain", b"hi");
    a.expect(&p);
    b.expect(&chunk(&p));
    c.expect(&p);
}

#[test]
fn head_on_a_channel_answers_without_subscribing() {
    let server = Server::start(&[]);
    let mut c = Conn::open(server.bus());
    c.send(b"HEAD /msgbus/foo HTTP/1.1\r\nHost: x\r\n\r\nGET /nothere HTTP/1.1\r\nHost: x\r\n\r\n");
    c.expect(
        b"HTTP/1.1 200 OK\r\nServer: switchboard\r\n\
          Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\
          Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    // No opening delimiter, no subscription; the connection goes on.
    c.expect(NOT_FOUND_11);
    let mut d = Conn::open(server.bus());
    d.send(b"HEAD /msgbus/foo HTTP/1.0\r\n\r\n");
    d.expect(
        b"HTTP/1.0 200 OK\r\nServer: switchboard\r\n\
          Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\
          Cache-Control: no-cache\r\n\r\n",
    );
    d.assert_closed();
    assert_eq!(stats(server.bus())["subscribers"], 0);
}

// ---------------------------------------------------------------------------
// Root subscription and channel names (section B)

#[test]
fn root_subscription_gets_every_channel_with_content_location() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut root10 = subscribe(bus, "/msgbus/", false);
    let mut root11 = subscribe(bus, "/msgbus/", true);
    let mut foo = subscribe(bus, "/msgbus/foo", false);
    let mut foobar = subscribe(bus, "/msgbus/foo/bar", false);
    let mut pct = subscribe(bus, "/msgbus/foo%20bar", false);

    publish(bus, "foo", "text/plain", b"hello");
    publish(bus, "bar", "image/jpeg", b"\xff\xd8");
    publish(bus, "foo/bar", "text/plain", b"deep");
    publish(bus, "", "text/plain", b"to-root");
    publish(bus, "foo?x=1&type=zzz", "text/plain", b"query-on-post");
    publish(bus, "foo%20bar", "text/plain", b"pct");

    let expected_root = [
        part(None, Some("foo"), "text/plain", b"hello"),
        part(None, Some("bar"), "image/jpeg", b"\xff\xd8"),
        part(None, Some("foo/bar"), "text/plain", b"deep"),
        // A root POST is delivered once (msgbus delivered it twice).
        part(None, Some(""), "text/plain", b"to-root"),
        part(None, Some("foo"), "text/plain", b"query-on-post"),
        part(None, Some("foo%20bar"), "text/plain", b"pct"),
    ];
    for p in &expected_root {
        root10.expect(p);
        root11.expect(&chunk(p));
    }
    foo.expect(&part(None, None, "text/plain", b"hello"));
    foo.expect(&part(None, None, "text/plain", b"query-on-post"));
    foobar.expect(&part(None, None, "text/plain", b"deep"));
    pct.expect(&part(None, None, "text/plain", b"pct"));
    // Nothing else came: the probes are next, each where it belongs.
    for ch in ["foo", "foo/bar", "foo%20bar"] {
        publish_probe(bus, ch);
        root10.expect(&probe_part(false, true, ch));
        root11.expect(&probe_part(true, true, ch));
    }
    foo.expect(&probe_part(false, false, "foo"));
    foobar.expect(&probe_part(false, false, "foo/bar"));
    pct.expect(&probe_part(false, false, "foo%20bar"));
}

#[test]
fn channel_paths_that_are_not_the_bus() {
    let server = Server::start(&[]);
    for target in ["/msgbus", "/MSGBUS/foo", "http://127.0.0.1/msgbus/foo", "/"] {
        let got = exchange(
            server.bus(),
            format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes(),
        );
        assert_eq!(show(&got), show(NOT_FOUND_10), "{target}");
    }
    // `/msgbus/../index.html` is the channel `../index.html`.
    let _sub = subscribe(server.bus(), "/msgbus/../index.html", false);
}

// ---------------------------------------------------------------------------
// Senders and filters (sections C and G2)

#[test]
fn from_header_for_basic_auth_publishers_without_secret() {
    let server = Server::start(&[]);
    let mut sub = subscribe(server.bus(), "/msgbus/foo", false);
    // Without --secret the password is not checked; the user becomes From.
    publish_as(server.bus(), "foo", "text/plain", "alice:anything", b"a");
    publish(server.bus(), "foo", "text/plain", b"anon");
    publish_as(server.bus(), "foo", "text/plain", ":", b"empty");
    // Credentials that do not parse leave the publisher anonymous.
    publish_as(server.bus(), "foo", "text/plain", "bob:x:extra", b"b");
    sub.expect(&part(Some("alice"), None, "text/plain", b"a"));
    sub.expect(&part(None, None, "text/plain", b"anon"));
    sub.expect(&part(Some(""), None, "text/plain", b"empty"));
    sub.expect(&part(None, None, "text/plain", b"b"));
    publish_probe(server.bus(), "foo");
    sub.expect(&probe_part(false, false, "foo"));
}

#[test]
fn from_header_with_secret() {
    let server = Server::start(&["--secret", "secret"]);
    let bus = server.bus();
    let mut foo = Conn::open(bus);
    foo.send(b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n");
    foo.expect(HEAD_10);
    let mut root = Conn::open(bus);
    root.send(
        b"GET /msgbus/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n",
    );
    root.expect(HEAD_11);
    let mut only_bob = Conn::open(bus);
    only_bob.send(
        b"GET /msgbus/foo?sender=bob HTTP/1.0\r\nAuthorization: Basic YWxpY2U6c2VjcmV0\r\n\r\n",
    );
    only_bob.expect(HEAD_10);

    for (auth, body) in [
        ("Ym9iOnNlY3JldA==", "hi-bob"),
        ("Y2Fyb2w6c2VjcmV0", "hi-carol"),
        ("OnNlY3JldA==", "hi-empty"),
    ] {
        let req = format!(
            "POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nAuthorization: Basic {auth}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(show(&exchange(bus, req.as_bytes())), show(NO_CONTENT_10));
    }
    foo.expect(
        b"From: bob\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhi-bob\r\n--00MsgBus00\r\n\
          From: carol\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nhi-carol\r\n--00MsgBus00\r\n\
          From: \r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nhi-empty\r\n--00MsgBus00\r\n",
    );
    root.expect(
        b"6f\r\nFrom: bob\r\nContent-Location: /msgbus/foo\r\nContent-Type: text/plain\r\n\
          Content-Length: 6\r\n\r\nhi-bob\r\n--00MsgBus00\r\n\r\n",
    );
    root.expect(&chunk(&part(
        Some("carol"),
        Some("foo"),
        "text/plain",
        b"hi-carol",
    )));
    root.expect(&chunk(&part(
        Some(""),
        Some("foo"),
        "text/plain",
        b"hi-empty",
    )));
    only_bob.expect(&part(Some("bob"), None, "text/plain", b"hi-bob"));
    // A probe from bob, the one sender all three take, comes next.
    publish_as(bus, "foo", "text/plain", "bob:secret", PROBE);
    let p = part(Some("bob"), None, "text/plain", PROBE);
    foo.expect(&p);
    only_bob.expect(&p);
    root.expect(&chunk(&part(Some("bob"), Some("foo"), "text/plain", PROBE)));
}

#[test]
fn type_and_sender_filters() {
    let server = Server::start(&[]);
    let bus = server.bus();
    // (name, content type, sender) in publishing order; the name is the body.
    let messages: [(&str, &str, Option<&str>); 7] = [
        ("anon-text", "text/plain", None),
        ("anon-jpeg", "image/jpeg", None),
        ("anon-json", "application/json", None),
        ("alice-text", "text/plain", Some("alice")),
        ("alice-png", "image/png", Some("alice")),
        ("bob-html", "text/html", Some("bob")),
        ("anon-TextPlain", "Text/Plain", None),
    ];
    let all: Vec<&str> = messages.iter().map(|m| m.0).collect();
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "/msgbus/foo?type=text/*,image/*",
            vec![
                "anon-text",
                "anon-jpeg",
                "alice-text",
                "alice-png",
                "bob-html",
            ],
        ),
        (
            "/msgbus/foo?type=text/plain",
            vec!["anon-text", "alice-text"],
        ),
        (
            "/msgbus/foo?type=text%2F*",
            vec!["anon-text", "alice-text", "bob-html"],
        ),
        (
            "/msgbus/foo?type=*,!image/*",
            vec![
                "anon-text",
                "anon-json",
                "alice-text",
                "bob-html",
                "anon-TextPlain",
            ],
        ),
        // A list needs one positive match: a lone negation matches nothing.
        ("/msgbus/foo?type=!image/*", vec![]),
        // Case-sensitive.
        ("/msgbus/foo?type=TEXT/*", vec![]),
        ("/msgbus/foo?type=*", all.clone()),
        ("/msgbus/foo?type", all.clone()),
        // The first occurrence wins.
        (
            "/msgbus/foo?type=text/plain&type=image/jpeg",
            vec!["anon-text", "alice-text"],
        ),
        // Anonymous messages do not pass a sender filter (msgbus let them
        // through).
        ("/msgbus/foo?sender=alice", vec!["alice-text", "alice-png"]),
        ("/msgbus/foo?sender=al*&type=text/*", vec!["alice-text"]),
        // An anonymous sender is the empty name, which `*` matches.
        (
            "/msgbus/foo?sender=*,!bob",
            vec![
                "anon-text",
                "anon-jpeg",
                "anon-json",
                "alice-text",
                "alice-png",
                "anon-TextPlain",
            ],
        ),
        // The empty pattern matches the empty sender: anonymous only.
        (
            "/msgbus/foo?sender=",
            vec!["anon-text", "anon-jpeg", "anon-json", "anon-TextPlain"],
        ),
        ("/msgbus/?type=image/*", vec!["anon-jpeg", "alice-png"]),
    ];
    let mut subs: Vec<Conn> = cases
        .iter()
        .map(|(target, _)| subscribe(bus, target, false))
        .collect();
    for (name, content_type, sender) in messages {
        match sender {
            Some(user) => publish_as(
                bus,
                "foo",
                content_type,
                &format!("{user}:pw"),
                name.as_bytes(),
            ),
            None => publish(bus, "foo", content_type, name.as_bytes()),
        }
    }
    for ((target, want), sub) in cases.iter().zip(&mut subs) {
        let root = target.starts_with("/msgbus/?");
        for name in want {
            let (_, content_type, sender) = messages.iter().find(|m| m.0 == *name).unwrap();
            let location = root.then_some("foo");
            sub.expect(&part(*sender, location, content_type, name.as_bytes()));
        }
    }
    // No subscriber got anything more: some filters let no probe through,
    // so the server's count of deliveries must be exactly what arrived
    // (it counts a delivery when it queues it, before the publisher's 204).
    let wanted: usize = cases.iter().map(|(_, want)| want.len()).sum();
    assert_eq!(stats(bus)["messages_out"], wanted);
}

// ---------------------------------------------------------------------------
// Publishing (section D)

#[test]
fn post_answers_and_keep_alive() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/foo", false);

    // HTTP/1.0: 204 "OK", then the server closes.
    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    );
    c.expect(NO_CONTENT_10);
    c.assert_closed();

    // HTTP/1.1: keep-alive; a second POST on the same connection.
    let mut c = Conn::open(bus);
    c.send(b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\none");
    c.expect(NO_CONTENT_11);
    c.send(b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\ntwo");
    c.expect(NO_CONTENT_11);
    // `Connection: close` on HTTP/1.1 is answered in kind.
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nConnection: close\r\n\
          Content-Length: 5\r\n\r\nthree",
    );
    c.expect(b"HTTP/1.1 204 OK\r\nServer: switchboard\r\nConnection: close\r\n\r\n");
    c.assert_closed();

    // HTTP/1.0 + keep-alive stays open.
    let mut c = Conn::open(bus);
    for _ in 0..2 {
        c.send(
            b"POST /msgbus/foo HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\n\
              Content-Length: 2\r\n\r\nka",
        );
        c.expect(b"HTTP/1.0 204 OK\r\nServer: switchboard\r\nConnection: keep-alive\r\n\r\n");
    }
    // Still open, and nothing else came: one more request is answered next.
    c.send(b"GET /nothere HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 404, "{}", r.head);
    assert_eq!(r.header("Connection"), Some("keep-alive"), "{}", r.head);

    for (t, b) in [
        ("text/plain", &b"hello"[..]),
        ("text/plain", b"one"),
        ("image/jpeg", b"two"),
        ("text/plain", b"three"),
        ("text/plain", b"ka"),
        ("text/plain", b"ka"),
    ] {
        sub.expect(&part(None, None, t, b));
    }
    publish_probe(bus, "foo");
    sub.expect(&probe_part(false, false, "foo"));
}

#[test]
fn post_without_content_type_is_400() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/foo", false);
    let got = exchange(
        bus,
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(
        show(&got),
        show(
            b"HTTP/1.0 400 Bad Request\r\nServer: switchboard\r\n\
              Content-Type: text/plain; charset=utf-8\r\nContent-Length: 48\r\n\r\n\
              400 Bad Request: a publish needs a Content-Type\n"
        )
    );
    // On HTTP/1.1 the body was read whole, so the connection stays usable.
    let mut c = Conn::open(bus);
    c.send(b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert_eq!(r.body, b"400 Bad Request: a publish needs a Content-Type\n");
    c.send(b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
    c.expect(NO_CONTENT_11);
    sub.expect(&part(None, None, "text/plain", b"ok"));
    publish_probe(bus, "foo");
    sub.expect(&probe_part(false, false, "foo"));
}

#[test]
fn post_variants_are_delivered_as_sent() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/foo", false);
    let requests: [&[u8]; 9] = [
        // An empty Content-Type is accepted and copied.
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type:\r\nContent-Length: 3\r\n\r\nabc",
        // HTTP/1.0 without Content-Length: an empty body, published at once.
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\n\r\n",
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
        // Two Content-Types: the first wins.
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Type: image/png\r\n\
          Content-Length: 3\r\n\r\nabc",
        // Header names are case-insensitive; the value is copied verbatim.
        b"POST /msgbus/foo HTTP/1.0\r\ncontent-type: Text/Plain; charset=UTF-8\r\nContent-Length: 3\r\n\r\nabc",
        // obs-fold continuation lines are joined with a space.
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\n Folded: continuation\r\n\
          Content-Length: 3\r\n\r\nabc",
        // A body that looks like a delimiter is passed through unchanged;
        // Content-Length tells a client where it really ends.
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n\
          line1\r\n--00MsgBus00\nz",
        // Only Content-Length bytes are published; HTTP/1.0 then closes.
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nhelloworld",
        // A query string on a POST is ignored.
        b"POST /msgbus/foo?type=zzz HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nq",
    ];
    for req in requests {
        assert_eq!(
            show(&exchange(bus, req)),
            show(NO_CONTENT_10),
            "{}",
            show(req)
        );
    }
    // On HTTP/1.1 the excess is the next request.
    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n\
          abcGET /nothere HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    c.expect(NO_CONTENT_11);
    c.expect(NOT_FOUND_11);

    for (t, b) in [
        ("", &b"abc"[..]),
        ("text/plain", b""),
        ("text/plain", b""),
        ("text/plain", b"abc"),
        ("Text/Plain; charset=UTF-8", b"abc"),
        ("text/plain Folded: continuation", b"abc"),
        ("text/plain", b"line1\r\n--00MsgBus00\nz"),
        ("text/plain", b"hel"),
        ("text/plain", b"q"),
        ("text/plain", b"abc"),
    ] {
        sub.expect(&part(None, None, t, b));
    }
    publish_probe(bus, "foo");
    sub.expect(&probe_part(false, false, "foo"));
}

#[test]
fn other_methods_on_the_bus_are_501() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let body_501 = |v: u8| {
        let mut r = format!(
            "HTTP/1.{v} 501 Not Implemented\r\nServer: switchboard\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            NOT_IMPLEMENTED_BODY.len()
        )
        .into_bytes();
        r.extend_from_slice(NOT_IMPLEMENTED_BODY);
        r
    };
    for method in ["PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "FOO", "get"] {
        let req = format!(
            "{method} /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        );
        assert_eq!(
            show(&exchange(bus, req.as_bytes())),
            show(&body_501(0)),
            "{method}"
        );
    }
    // HTTP/1.1: the connection stays open.
    let mut c = Conn::open(bus);
    c.send(b"PUT /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
    c.expect(&body_501(1));
    c.send(b"DELETE /msgbus/foo HTTP/1.1\r\nHost: x\r\n\r\n");
    c.expect(&body_501(1));
    c.assert_idle();
}

#[test]
fn not_found_without_docroot() {
    let server = Server::start(&[]);
    let bus = server.bus();
    for req in [
        &b"GET /nothere HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST /nothere HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
        b"PUT /index.html HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    ] {
        assert_eq!(
            show(&exchange(bus, req)),
            show(NOT_FOUND_10),
            "{}",
            show(req)
        );
    }
    // HTTP/1.1 keeps the connection; HEAD gets the head only, so the next
    // pipelined answer is not mistaken for a body.
    let mut c = Conn::open(bus);
    c.send(
        b"GET /nothere HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nothere HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nothere HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    c.expect(NOT_FOUND_11);
    c.expect(
        b"HTTP/1.1 404 Not Found\r\nServer: switchboard\r\nContent-Type: text/html\r\n\
          Content-Length: 18\r\n\r\n",
    );
    c.expect(NOT_FOUND_11);
    c.assert_idle();
}

// ---------------------------------------------------------------------------
// Shared secret (section G)

#[test]
fn secret_refuses_missing_and_wrong_credentials() {
    let server = Server::start(&["--secret", "secret"]);
    let bus = server.bus();
    let refused: [&[u8]; 12] = [
        b"GET /msgbus/foo HTTP/1.0\r\n\r\n",
        b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Basic Ym9iOndyb25n\r\n\r\n",
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
        b"POST /msgbus/foo HTTP/1.0\r\nAuthorization: Basic Ym9iOndyb25n\r\nContent-Type: text/plain\r\n\
          Content-Length: 1\r\n\r\nx",
        // Checked before routing.
        b"GET /nothere HTTP/1.0\r\n\r\n",
        b"GET /msgbus-stats HTTP/1.0\r\n\r\n",
        b"PUT /msgbus/foo HTTP/1.0\r\n\r\n",
        // No colon, another scheme, bad base64.
        b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Basic c2VjcmV0\r\n\r\n",
        b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Digest Ym9iOnNlY3JldA==\r\n\r\n",
        b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Basic !!!notbase64\r\n\r\n",
        // Split at the first colon: the password `secret:extra` is wrong.
        b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Basic Ym9iOnNlY3JldDpleHRyYQ==\r\n\r\n",
        b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Basic Ym9iOnNlY3JldFg=\r\n\r\n",
    ];
    for req in refused {
        assert_eq!(
            show(&exchange(bus, req)),
            show(UNAUTHORIZED_10),
            "{}",
            show(req)
        );
    }
    // HTTP/1.1 keeps the connection; HEAD gets no body.
    let mut c = Conn::open(bus);
    c.send(
        b"GET /msgbus/foo HTTP/1.1\r\nHost: x\r\n\r\nHEAD /msgbus/foo HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm=\"msgbus\""));
    assert_eq!(r.body, b"<h1>Unauthorized</h1>");
    c.expect(
        b"HTTP/1.1 401 Unauthorized\r\nServer: switchboard\r\nWWW-Authenticate: Basic realm=\"msgbus\"\r\n\
          Content-Type: text/html\r\nContent-Length: 21\r\n\r\n",
    );
    // Nothing else came: one more request is answered next.
    c.send(b"GET /nothere HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 401, "{}", r.head);
    assert_eq!(r.body, b"<h1>Unauthorized</h1>");
    assert_eq!(stats_with(bus, "bob:secret")["published"], 0);
}

fn stats_with(addr: &str, user_pass: &str) -> serde_json::Value {
    let mut c = Conn::open(addr);
    c.send(
        format!(
            "GET /msgbus-stats HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
            basic(user_pass)
        )
        .as_bytes(),
    );
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.head);
    serde_json::from_slice(&r.body).expect("JSON")
}

#[test]
fn secret_accepts_any_user_including_the_empty_one() {
    let server = Server::start(&["--secret", "secret"]);
    let bus = server.bus();
    // `:secret` (empty user) and a lower-case scheme are accepted.
    let mut empty = Conn::open(bus);
    empty.send(b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: Basic OnNlY3JldA==\r\n\r\n");
    empty.expect(HEAD_10);
    let mut lower = Conn::open(bus);
    lower.send(b"GET /msgbus/foo HTTP/1.0\r\nAuthorization: basic Ym9iOnNlY3JldA==\r\n\r\n");
    lower.expect(HEAD_10);
    publish_as(bus, "foo", "text/plain", ":secret", b"from-nobody");
    let p = part(Some(""), None, "text/plain", b"from-nobody");
    empty.expect(&p);
    lower.expect(&p);
}

#[test]
fn user_names_with_control_characters_are_refused() {
    // A user name is written into the parts it publishes; with a CR or LF
    // it could forge a delimiter, a part or an SSE event.
    let evil = "x\r\n\r\nFAKE\r\n--00MsgBus00\r\n\n\ndata\n\n";
    let open = Server::start(&[]);
    let mut sub = subscribe(open.bus(), "/msgbus/foo", false);
    let mut sse = Conn::open(open.bus());
    sse.send(b"GET /msgbus/foo HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    sse.take_until(b": subscribed\n\n");
    // Without --secret such credentials leave the publisher anonymous.
    publish_as(
        open.bus(),
        "foo",
        "text/plain",
        &format!("{evil}:pw"),
        b"real",
    );
    sub.expect(&part(None, None, "text/plain", b"real"));
    sse.expect(b": channel=foo type=text/plain\ndata: real\n\n");
    publish_probe(open.bus(), "foo");
    sub.expect(&probe_part(false, false, "foo"));
    sse.expect(b": channel=foo type=text/plain\ndata: probe\n\n");

    // With --secret they are refused.
    let guarded = Server::start(&["--secret", "pw"]);
    for user in [evil, "tab\there", "nul\0"] {
        let got = post(
            guarded.bus(),
            "/msgbus/foo",
            &[
                ("Content-Type", "text/plain"),
                ("Authorization", &basic(&format!("{user}:pw"))),
            ],
            b"real",
        );
        assert_eq!(show(&got), show(UNAUTHORIZED_10), "{user:?}");
    }
    // Other characters are fine.
    let mut sub = subscribe_as(guarded.bus(), "/msgbus/foo", false, Some("any:pw"));
    publish_as(
        guarded.bus(),
        "foo",
        "text/plain",
        "Zoë O'Brien (ops)@host:pw",
        b"ok",
    );
    sub.expect(&part(
        Some("Zoë O'Brien (ops)@host"),
        None,
        "text/plain",
        b"ok",
    ));
}

// ---------------------------------------------------------------------------
// Static files (section F)

struct Docroot {
    base: PathBuf,
    root: PathBuf,
}

impl Drop for Docroot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

const SECRET: &str = "TOP-SECRET-BYTES";

fn docroot(name: &str) -> Docroot {
    let base = scratch_dir(name);
    // The sibling shares the docroot's name as a prefix: `www` and `www2`.
    let root = base.join("www");
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    w("index.html", b"<html>index</html>\n");
    w("sub/index.html", b"sub index\n");
    w("a.txt", b"hello text\n");
    w("p.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR");
    w("app.js", b"var x;\n");
    w("noext", b"noext file\n");
    w("%2e%2e/x.txt", b"pct dir file\n");
    w("sp ace.txt", b"space\n");
    let big: Vec<u8> = (0..11000u32).map(|i| b'a' + (i % 26) as u8).collect();
    w("big.txt", &big);
    std::fs::create_dir_all(root.join("emptydir")).unwrap();
    std::fs::create_dir_all(base.join("www2")).unwrap();
    std::fs::write(base.join("www2/secret.txt"), SECRET).unwrap();
    std::fs::write(base.join("outside.txt"), SECRET).unwrap();
    std::os::unix::fs::symlink(base.join("outside.txt"), root.join("link-out")).unwrap();
    std::os::unix::fs::symlink(base.join("www2"), root.join("dir-out")).unwrap();
    std::os::unix::fs::symlink(root.join("a.txt"), root.join("link-in")).unwrap();
    Docroot { base, root }
}

fn file_response(v: u8, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.{v} 200 OK\r\nServer: switchboard\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn docroot_serves_files_with_types() {
    let dr = docroot("files");
    let server = Server::start(&["--docroot", dr.root.to_str().unwrap()]);
    let bus = server.bus();
    let html = "text/html; charset=utf-8";
    let text = "text/plain; charset=utf-8";
    let big = std::fs::read(dr.root.join("big.txt")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("/", file_response(0, html, b"<html>index</html>\n")),
        (
            "/index.html",
            file_response(0, html, b"<html>index</html>\n"),
        ),
        // The query string is not part of the file name.
        (
            "/index.html?x=1",
            file_response(0, html, b"<html>index</html>\n"),
        ),
        ("/sub", file_response(0, html, b"sub index\n")),
        ("/sub/", file_response(0, html, b"sub index\n")),
        ("/a.txt", file_response(0, text, b"hello text\n")),
        (
            "/p.png",
            file_response(0, "image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
        ),
        (
            "/app.js",
            file_response(0, "text/javascript; charset=utf-8", b"var x;\n"),
        ),
        // No extension: served (twice: msgbus crashed the second time).
        (
            "/noext",
            file_response(0, "application/octet-stream", b"noext file\n"),
        ),
        (
            "/noext",
            file_response(0, "application/octet-stream", b"noext file\n"),
        ),
        // Not truncated at 4096 bytes.
        ("/big.txt", file_response(0, text, &big)),
        // Paths are percent-decoded.
        ("/sp%20ace.txt", file_response(0, text, b"space\n")),
        ("/%61.txt", file_response(0, text, b"hello text\n")),
        // A directory literally named `%2e%2e` is reached by escaping the `%`.
        (
            "/%252e%252e/x.txt",
            file_response(0, text, b"pct dir file\n"),
        ),
        // No symbolic link under the docroot is followed, even one that
        // stays inside (checking where a link leads and then opening it is
        // a race; opening without following is not).
        ("/link-in", NOT_FOUND_10.to_vec()),
        ("/emptydir/", NOT_FOUND_10.to_vec()),
        ("/nothere", NOT_FOUND_10.to_vec()),
    ];
    for (path, want) in &cases {
        let got = exchange(bus, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        assert_eq!(show(&got), show(want), "{path}");
    }
    // HTTP/1.1 keeps the connection; HEAD has the GET's head and no body.
    let mut c = Conn::open(bus);
    c.send(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHEAD /index.html HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    c.expect(&file_response(1, html, b"<html>index</html>\n"));
    c.expect(
        b"HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Type: text/html; charset=utf-8\r\n\
          Content-Length: 19\r\n\r\n",
    );
    c.expect(&file_response(1, text, b"hello text\n"));
    c.assert_idle();
    // The bus is still the bus.
    let _sub = subscribe(bus, "/msgbus/../index.html", false);
}

#[test]
fn docroot_refuses_other_methods_with_405() {
    let dr = docroot("methods");
    let server = Server::start(&["--docroot", dr.root.to_str().unwrap()]);
    let want_405 = |v: u8| {
        format!(
            "HTTP/1.{v} 405 Method Not Allowed\r\nServer: switchboard\r\nAllow: GET, HEAD\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 55\r\n\r\n\
             405 Method Not Allowed: static files take GET and HEAD\n"
        )
    };
    for req in [
        &b"POST /index.html HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"[..],
        b"PUT /index.html HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /index.html HTTP/1.0\r\n\r\n",
        // Even for a file that does not exist.
        b"POST /nothere HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
    ] {
        let got = exchange(server.bus(), req);
        assert_eq!(show(&got), show(want_405(0).as_bytes()), "{}", show(req));
    }
    let mut c = Conn::open(server.bus());
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    c.expect(want_405(1).as_bytes());
    c.assert_idle();
}

#[test]
fn docroot_never_serves_anything_outside() {
    let dr = docroot("traversal");
    let server = Server::start(&["--docroot", dr.root.to_str().unwrap()]);
    for target in [
        "/../outside.txt",
        "/../../etc/passwd",
        "/../../../../../../etc/passwd",
        "/%2e%2e/outside.txt",
        "/%2E%2E/outside.txt",
        "/%2e%2E/%2E%2e/etc/passwd",
        "/..%2foutside.txt",
        "/..%2Foutside.txt",
        "/%2e%2e%2foutside.txt",
        "/sub/../../outside.txt",
        "/sub/%2e%2e/%2e%2e/outside.txt",
        "/.%2e/outside.txt",
        "/..%5coutside.txt",
        "/%2f..%2foutside.txt",
        // The sibling whose name starts with the docroot's name.
        "/../www2/secret.txt",
        "/%2e%2e/www2/secret.txt",
        "/..%2fwww2%2fsecret.txt",
        // Symlinks pointing out, to a file and to a directory.
        "/link-out",
        "/dir-out/secret.txt",
        "/dir-out/",
        // NUL.
        "/%00",
        "/index.html%00",
        "/index.html%00.txt",
        "/link-out%00",
        "//etc/passwd",
        "/..",
        "/%2e%2e",
        "http://127.0.0.1/../outside.txt",
    ] {
        let got = exchange(
            server.bus(),
            format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes(),
        );
        assert!(
            !String::from_utf8_lossy(&got).contains(SECRET),
            "{target} leaked the secret: {}",
            show(&got)
        );
        assert_eq!(show(&got), show(NOT_FOUND_10), "{target}");
        let mut c = Conn::open(server.bus());
        c.send(format!("HEAD {target} HTTP/1.0\r\n\r\n").as_bytes());
        let r = c.response_to(true);
        assert_eq!(r.status, 404, "HEAD {target}");
        c.assert_closed();
    }
}

// ---------------------------------------------------------------------------
// Keep-alive, pipelining, request bodies (sections D and H)

#[test]
fn pipelined_requests_in_one_write() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/foo", false);

    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\none\
          POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 3\r\n\r\ntwo",
    );
    c.expect(NO_CONTENT_11);
    c.expect(NO_CONTENT_11);
    c.assert_idle();
    sub.expect(&part(None, None, "text/plain", b"one"));
    sub.expect(&part(None, None, "image/jpeg", b"two"));

    // Three, the last with `Connection: close`.
    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\na\
          POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nb\
          POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nConnection: close\r\n\
          Content-Length: 1\r\n\r\nc",
    );
    c.expect(NO_CONTENT_11);
    c.expect(NO_CONTENT_11);
    c.expect(b"HTTP/1.1 204 OK\r\nServer: switchboard\r\nConnection: close\r\n\r\n");
    c.assert_closed();
    for b in [b"a", b"b", b"c"] {
        sub.expect(&part(None, None, "text/plain", b));
    }

    // POST then GET: the connection becomes a subscriber.
    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\none\
          GET /msgbus/foo HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    c.expect(NO_CONTENT_11);
    c.expect(HEAD_11);
    sub.expect(&part(None, None, "text/plain", b"one"));
    publish(bus, "foo", "text/plain", b"from-other-conn");
    let p = part(None, None, "text/plain", b"from-other-conn");
    c.expect(&chunk(&p));
    sub.expect(&p);
    publish_probe(bus, "foo");
    sub.expect(&probe_part(false, false, "foo"));
    c.expect(&probe_part(true, false, "foo"));
}

#[test]
fn subscriber_later_requests_are_ignored() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut watcher = subscribe(bus, "/msgbus/foo", false);
    let mut c = subscribe(bus, "/msgbus/foo", true);
    c.send(b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\none");
    c.send(b"GET /nothere HTTP/1.1\r\nHost: x\r\n\r\n");
    c.send(b"this is not even HTTP\r\n\r\n");
    publish(bus, "foo", "text/plain", b"from-other-conn");
    let p = part(None, None, "text/plain", b"from-other-conn");
    // Nothing was published or answered for the subscriber's own requests.
    watcher.expect(&p);
    c.expect(&chunk(&p));
    publish_probe(bus, "foo");
    watcher.expect(&probe_part(false, false, "foo"));
    c.expect(&probe_part(true, false, "foo"));
}

#[test]
fn expect_100_continue() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/foo", false);
    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\n\
          Content-Length: 3\r\n\r\n",
    );
    // The answer comes only with the body: had the server answered at once
    // (an empty publish), the bytes below would not be the next ones.
    c.expect(b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"abc");
    c.expect(NO_CONTENT_11);
    sub.expect(&part(None, None, "text/plain", b"abc"));
    // Chunked body after the interim answer.
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    );
    c.expect(b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"2\r\nde\r\n0\r\n\r\n");
    c.expect(NO_CONTENT_11);
    sub.expect(&part(None, None, "text/plain", b"de"));
    // HTTP/1.0 has no interim responses.
    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\n\
          Content-Length: 3\r\n\r\n",
    );
    // No `100 Continue` on HTTP/1.0: the 204 is the first thing to come.
    c.send(b"xyz");
    c.expect(NO_CONTENT_10);
    c.assert_closed();
    sub.expect(&part(None, None, "text/plain", b"xyz"));
}

#[test]
fn chunked_request_body_is_dechunked() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/foo", true);
    let mut c = Conn::open(bus);
    c.send(
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nchunk\r\n0\r\n\r\n",
    );
    c.expect(NO_CONTENT_11);
    sub.expect(&chunk(&part(None, None, "text/plain", b"chunk")));
    // Several chunks, an extension, upper-case hex, a trailer; sent in
    // pieces.
    let pieces: [&[u8]; 5] = [
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n3;name=value\r\nabc\r\n",
        b"A\r\n0123456789\r\n1",
        b"\r\n!\r\n0\r\nX-Trailer: t\r\n",
        b"\r\n",
    ];
    // Each piece is read by the server before the next is sent: a round
    // trip on another connection, begun after the piece was written, is
    // answered only after the server's loop has seen it.
    for p in pieces {
        c.send(p);
        let answer = exchange(bus, b"GET /nothere HTTP/1.0\r\n\r\n");
        assert_eq!(show(&answer), show(NOT_FOUND_10));
    }
    c.expect(NO_CONTENT_11);
    sub.expect(&chunk(&part(
        None,
        None,
        "application/octet-stream",
        b"abc0123456789!",
    )));
    // The connection goes on after a chunked request.
    c.send(b"GET /nothere HTTP/1.1\r\nHost: x\r\n\r\n");
    c.expect(NOT_FOUND_11);
    publish_probe(bus, "foo");
    sub.expect(&probe_part(true, false, "foo"));
}

// ---------------------------------------------------------------------------
// Request limits and malformed requests (section J)

/// Sends `request` and checks the error answer: HTTP/1.1, the status, a
/// one-line text body starting with the status, `Connection: close`, closed.
fn assert_refused(addr: &str, request: &[u8], status: u16) {
    let mut c = Conn::open(addr);
    c.send(request);
    let r = c.response();
    assert_eq!(r.status, status, "{} -> {}", show(request), r.head);
    assert!(r.head.starts_with("HTTP/1.1 "), "{}", r.head);
    assert_eq!(r.header("Connection"), Some("close"), "{}", r.head);
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(body.starts_with(&format!("{status} ")), "{body}");
    assert!(body.ends_with('\n') && body.lines().count() == 1, "{body}");
    c.assert_closed();
}

#[test]
fn header_block_too_large_is_431() {
    let server = Server::start(&["--max-header", "1024"]);
    let bus = server.bus();
    let head = |filler: usize| {
        format!(
            "GET /msgbus/foo HTTP/1.0\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(filler)
        )
    };
    assert_refused(bus, head(2000).as_bytes(), 431);
    // Many short header lines count the same.
    let many: String = (0..60)
        .map(|i| format!("X-H{i:02}: vvvvvvvvvv\r\n"))
        .collect();
    assert_refused(
        bus,
        format!("GET /msgbus/foo HTTP/1.0\r\n{many}\r\n").as_bytes(),
        431,
    );
    // More than 64 header fields, however short.
    let server2 = Server::start(&[]);
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_refused(
        server2.bus(),
        format!("GET /msgbus/foo HTTP/1.0\r\n{many}\r\n").as_bytes(),
        431,
    );
    // Just under the limit is fine.
    let mut ok = Conn::open(bus);
    let req = head(900);
    assert!(req.len() < 1024);
    ok.send(req.as_bytes());
    ok.expect(HEAD_10);
}

#[test]
fn body_too_large_is_413() {
    let server = Server::start(&["--max-body", "1000"]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/foo", false);
    // Refused from the head alone, before any body byte is sent.
    assert_refused(
        bus,
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1001\r\n\r\n",
        413,
    );
    assert_refused(
        bus,
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 99999999999999999999999\r\n\r\n",
        413,
    );
    // Chunked: refused when the sizes add up past the limit.
    assert_refused(
        bus,
        b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
          3e9\r\n",
        413,
    );
    let mut over = b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                     Transfer-Encoding: chunked\r\n\r\n1f4\r\n"
        .to_vec();
    over.extend_from_slice(&[b'x'; 500]);
    over.extend_from_slice(b"\r\n1f5\r\n");
    assert_refused(bus, &over, 413);
    // Exactly the limit is accepted.
    let body = vec![b'z'; 1000];
    publish(bus, "foo", "text/plain", &body);
    sub.expect(&part(None, None, "text/plain", &body));
    publish_probe(bus, "foo");
    sub.expect(&probe_part(false, false, "foo"));
}

#[test]
fn uri_too_long_is_414() {
    let server = Server::start(&[]);
    let long = format!(
        "GET /msgbus/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "c".repeat(9000)
    );
    assert_refused(server.bus(), long.as_bytes(), 414);
    let long = format!("GET /{} HTTP/1.0\r\n\r\n", "a".repeat(9000));
    assert_refused(server.bus(), long.as_bytes(), 414);
    // A long channel name under the limit is a channel.
    let name = "c".repeat(8000);
    let mut sub = subscribe(server.bus(), &format!("/msgbus/{name}"), false);
    publish(server.bus(), &name, "text/plain", b"long");
    sub.expect(&part(None, None, "text/plain", b"long"));
}

#[test]
fn malformed_requests_are_400() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let cases: [&[u8]; 16] = [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /msgbus/foo\r\n\r\n",
        b"GET /msgbus/foo FOO/1.0\r\n\r\n",
        b"GET /msgbus/foo HTTP/1.0 extra\r\n\r\n",
        b"GET /msgbus/f o HTTP/1.0\r\n\r\n",
        b"GET /msgbus/f\x00o HTTP/1.0\r\n\r\n",
        b"\r\n\r\nGET /nothere HTTP/1.0\r\n\r\n",
        b"GET /msgbus/foo HTTP/1.0\r\nBadHeaderNoColon\r\n\r\n",
        b"GET /msgbus/foo HTTP/1.0\r\n: novalue\r\n\r\n",
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: -1\r\n\r\n",
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: abc\r\n\r\n",
        b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
          Content-Length: 4\r\n\r\n",
        b"POST /msgbus/foo HTTP/1.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
          Content-Length: 3\r\n\r\n",
        b"POST /msgbus/foo HTTP/1.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /msgbus/foo HTTP/1.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabcX",
    ];
    for req in cases {
        assert_refused(bus, req, 400);
    }
    // One leading empty line (between pipelined requests) is allowed.
    let got = exchange(bus, b"\r\nGET /nothere HTTP/1.0\r\n\r\n");
    assert_eq!(show(&got), show(NOT_FOUND_10));
    // A transfer-coding other than chunked is not implemented.
    assert_refused(
        bus,
        b"POST /msgbus/foo HTTP/1.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    );
    // The server is still up and nothing was published.
    assert_eq!(stats(bus)["published"], 0);
}

#[test]
fn other_http_versions_are_505() {
    let server = Server::start(&[]);
    for version in ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "HTTP/3.0"] {
        assert_refused(
            server.bus(),
            format!("GET /msgbus/foo {version}\r\n\r\n").as_bytes(),
            505,
        );
    }
    let mut c = Conn::open(server.bus());
    c.send(b"GET /msgbus/foo HTTP/1.2\r\n\r\n");
    c.expect(
        b"HTTP/1.1 505 HTTP Version Not Supported\r\nServer: switchboard\r\n\
          Content-Type: text/plain; charset=utf-8\r\nContent-Length: 73\r\nConnection: close\r\n\r\n\
          505 HTTP Version Not Supported: only HTTP/1.0 and HTTP/1.1 are supported\n",
    );
    c.assert_closed();
}

// ---------------------------------------------------------------------------
// Stats page

#[test]
fn stats_page_counts_subscribers_and_messages() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let s = stats(bus);
    for key in [
        "uptime_s",
        "channels",
        "subscribers",
        "published",
        "messages_in",
        "messages_out",
        "bytes_in",
        "bytes_out",
        "drops",
        "slow_disconnects",
    ] {
        assert!(s[key].is_u64(), "{key} in {s}");
    }
    assert_eq!(s["subscribers"], 0);
    assert_eq!(s["published"], 0);

    // The line subscriber first: its sync round trip is one more message.
    let mut line = common::connect(server.line());
    common::send(&mut line, b"+ bar\r\n");
    common::line_sync(&mut line, "stats");
    let mut foo = subscribe(bus, "/msgbus/foo", false);
    let mut root = subscribe(bus, "/msgbus/", true);
    for i in 0..3 {
        publish(bus, "foo", "text/plain", format!("m{i}").as_bytes());
    }
    publish(bus, "bar", "text/plain", b"to-line");
    publish(bus, "nobody", "text/plain", b"lost");
    for i in 0..3 {
        let body = format!("m{i}");
        foo.expect(&part(None, None, "text/plain", body.as_bytes()));
        root.expect(&chunk(&part(
            None,
            Some("foo"),
            "text/plain",
            body.as_bytes(),
        )));
    }
    let s = stats(bus);
    assert_eq!(s["subscribers"], 3, "{s}");
    // foo and bar (the root is not a channel).
    assert_eq!(s["channels"], 2, "{s}");
    // Five here and the sync round trip's one.
    assert_eq!(s["published"], 6, "{s}");
    // The sync message to its own sender, then 3 to foo, 5 to the root and
    // 1 to the line subscriber of bar.
    assert_eq!(s["messages_out"], 1 + 3 + 5 + 1, "{s}");
    assert_eq!(s["connections"]["line"], 1, "{s}");
    // Two subscribers and the stats request itself.
    assert_eq!(s["connections"]["bus"], 3, "{s}");
    assert_eq!(s["drops"], 0);

    drop(foo);
    drop(root);
    let deadline = Instant::now() + IO_TIMEOUT;
    while stats(bus)["subscribers"] != 1 {
        assert!(
            Instant::now() < deadline,
            "closed subscribers still counted"
        );
    }

    // HEAD and keep-alive.
    let mut c = Conn::open(bus);
    c.send(b"HEAD /msgbus-stats HTTP/1.1\r\nHost: x\r\n\r\nGET /msgbus-stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = c.response_to(true);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("Cache-Control"), Some("no-cache"));
    let g = c.response();
    let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(v["subscribers"], 1);
    c.assert_idle();
}

// ---------------------------------------------------------------------------
// Server-Sent Events

#[test]
fn event_stream_subscribers() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let sse_head = |v: u8| {
        format!(
            "HTTP/1.{v} 200 OK\r\nServer: switchboard\r\nContent-Type: text/event-stream\r\n\
             Cache-Control: no-cache\r\n\r\nretry: 3000\n: subscribed\n\n"
        )
    };
    let mut a = Conn::open(bus);
    a.send(b"GET /msgbus/foo HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    a.expect(sse_head(1).as_bytes());
    let mut root = Conn::open(bus);
    root.send(
        b"GET /msgbus/?type=text/* HTTP/1.0\r\nAccept: text/html, text/event-stream;q=0.9\r\n\r\n",
    );
    root.expect(sse_head(0).as_bytes());

    publish(bus, "foo", "text/plain", b"hello");
    publish_as(bus, "foo", "text/plain", "bob:pw", b"a\r\nb\nc");
    publish(bus, "foo", "image/png", b"\x89PNG");
    a.expect(b": channel=foo type=text/plain\ndata: hello\n\n");
    a.expect(b": channel=foo type=text/plain from=bob\ndata: a\ndata: b\ndata: c\n\n");
    a.expect(b": channel=foo type=image/png\ndata: \x89PNG\n\n");
    root.expect(b": channel=foo type=text/plain\nevent: foo\ndata: hello\n\n");
    root.expect(
        b": channel=foo type=text/plain from=bob\nevent: foo\ndata: a\ndata: b\ndata: c\n\n",
    );
    // The png did not pass the root's filter: the probe is next for both.
    publish_probe(bus, "foo");
    a.expect(b": channel=foo type=text/plain\ndata: probe\n\n");
    root.expect(b": channel=foo type=text/plain\nevent: foo\ndata: probe\n\n");
}

#[test]
fn json_event_stream_subscribers() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut j = Conn::open(bus);
    j.send(b"GET /msgbus/foo?format=json HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    j.expect(
        b"HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Type: text/event-stream\r\n\
          Cache-Control: no-cache\r\n\r\nretry: 3000\n: subscribed\n\n",
    );
    publish(bus, "foo", "text/plain", b"hello");
    publish_as(bus, "foo", "text/plain", "bob:pw", b"a\r\n\"b\"");
    j.expect(
        b"data: {\"body\":\"hello\",\"channel\":\"foo\",\"from\":null,\"type\":\"text/plain\"}\n\n",
    );
    j.expect(
        b"data: {\"body\":\"a\\r\\n\\\"b\\\"\",\"channel\":\"foo\",\"from\":\"bob\",\"type\":\"text/plain\"}\n\n",
    );
    publish_probe(bus, "foo");
    j.expect(
        b"data: {\"body\":\"probe\",\"channel\":\"foo\",\"from\":null,\"type\":\"text/plain\"}\n\n",
    );
}

// ---------------------------------------------------------------------------
// Slow subscribers

/// The sequence number of a flood part (`seq=NNNNN;` starts the body).
fn seq_of(part: &[u8]) -> usize {
    assert!(part.ends_with(DELIMITER), "{}", show(part));
    let body_at = find(part, b"\r\n\r\n").unwrap() + 4;
    std::str::from_utf8(&part[body_at + 4..body_at + 9])
        .unwrap()
        .parse()
        .unwrap()
}

/// Publishes `n` bodies of `size` bytes, each starting with `seq=NNNNN;`, on
/// the line protocol, in rounds of `round` messages: each round waits until
/// the reading subscriber has had all of it, so that only the subscriber
/// that does not read falls behind. The reading subscriber runs on a thread
/// and reports every sequence number it sees.
fn paced_flood(server: &Server, mut reader: Conn, n: usize, size: usize, round: usize) {
    let (tx, rx) = mpsc::channel();
    let reading = std::thread::spawn(move || {
        for _ in 0..n {
            if tx.send(seq_of(&reader.chunk())).is_err() {
                return;
            }
        }
    });
    let mut line = common::connect(server.line());
    let mut seen = 0;
    for i in 0..n {
        let mut frame = format!("! {size} flood text/plain\r\nseq={i:05};").into_bytes();
        frame.resize(frame.len() + size - 10, b'.');
        frame.extend_from_slice(b"\r\n");
        common::send(&mut line, &frame);
        if (i + 1) % round == 0 || i + 1 == n {
            while seen <= i {
                let seq = rx
                    .recv_timeout(IO_TIMEOUT)
                    .expect("the reading subscriber stopped receiving");
                assert_eq!(seq, seen, "the reading subscriber lost a message");
                seen += 1;
            }
        }
    }
    reading.join().unwrap();
}

/// The sequence number of the marker that ends a slow subscriber's stream.
const MARKER: usize = 99_999;

/// Reads a slow subscriber's chunked parts up to a marker message published
/// after the flood; returns the sequence numbers before it. While the
/// subscriber's backlog is over the limit the marker is itself dropped (the
/// stats page counts it): the reader then reads on (at least 256 KiB, far
/// less than the backlog it is behind) and the marker is published again.
fn read_to_marker(bus: &str, c: &mut Conn) -> Vec<usize> {
    let mut stats = common::Stats::open(bus);
    let mut drops = common::stat(&stats.get(), "drops");
    let mut seqs = Vec::new();
    loop {
        publish(
            bus,
            "flood",
            "text/plain",
            format!("seq={MARKER};").as_bytes(),
        );
        let now = common::stat(&stats.get(), "drops");
        let dropped = now > drops;
        drops = now;
        let mut read = 0;
        while !dropped || read < 256 * 1024 {
            let p = c.chunk();
            read += p.len();
            let seq = seq_of(&p);
            if seq == MARKER {
                assert!(!dropped, "a dropped marker arrived");
                return seqs;
            }
            seqs.push(seq);
        }
    }
}

/// Reads chunked parts until the server closes the stream (a read timeout
/// fails); returns the sequence numbers of the complete parts (a
/// disconnected subscriber may see its last part cut short).
fn read_to_disconnect(c: &mut Conn) -> Vec<usize> {
    let mut seqs = Vec::new();
    while let Some(p) = c.try_chunk() {
        seqs.push(seq_of(&p));
    }
    seqs
}

#[test]
fn slow_subscriber_drops_messages_and_memory_stays_bounded() {
    const N: usize = 400;
    const SIZE: usize = 64 * 1024;
    // The default backlog limit (1,000,000 bytes, as msgbus).
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut slow = subscribe(bus, "/msgbus/flood", true);
    let reader = subscribe(bus, "/msgbus/flood", true);
    let rss_before = server.rss_kib();
    paced_flood(&server, reader, N, SIZE, 8);
    let rss = server.rss_kib();
    let s = stats(bus);
    let drops = s["drops"].as_u64().unwrap();
    assert!(drops > 0, "{s}");
    assert_eq!(s["slow_disconnects"], 0);
    // 26 MB went the slow subscriber's way; the server kept about the
    // backlog limit of it.
    assert!(
        rss < rss_before + 16 * 1024,
        "server RSS grew from {rss_before} to {rss} KiB"
    );

    let seqs = read_to_marker(bus, &mut slow);
    assert_eq!(seqs.first(), Some(&0));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(
        (N - seqs.len()) as u64,
        drops,
        "every message is delivered or counted as dropped"
    );
    // The subscription works again once it has caught up.
    publish(bus, "flood", "text/plain", b"seq=99999;after");
    assert_eq!(seq_of(&slow.chunk()), 99999);
}

#[test]
fn slow_subscriber_disconnect_policy() {
    const N: usize = 400;
    const SIZE: usize = 64 * 1024;
    let server = Server::start(&["--slow-subscriber", "disconnect"]);
    let bus = server.bus();
    let mut slow = subscribe(bus, "/msgbus/flood", true);
    let slow_addr = slow.s.local_addr().unwrap();
    let reader = subscribe(bus, "/msgbus/flood", true);
    paced_flood(&server, reader, N, SIZE, 8);
    let s = stats(bus);
    assert_eq!(s["slow_disconnects"], 1, "{s}");
    // The log names it by its address.
    server.wait_log(&format!("({slow_addr}): "));
    assert_eq!(s["connections"]["closed_by"]["slow_subscriber"], 1, "{s}");
    assert_eq!(s["drops"], 0, "{s}");
    let seqs = read_to_disconnect(&mut slow);
    // What it got is an unbroken prefix.
    assert_eq!(seqs, (0..seqs.len()).collect::<Vec<_>>());
    assert!(seqs.len() < N);
}

// ---------------------------------------------------------------------------
// Line protocol <-> HTTP

#[test]
fn line_publish_reaches_http_and_http_publish_reaches_line() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut http10 = subscribe(bus, "/msgbus/news", false);
    let mut http11 = subscribe(bus, "/msgbus/news", true);
    let mut line = common::connect(server.line());
    common::send(&mut line, b"+ news\r\n");
    common::line_sync(&mut line, "news");

    // Line -> HTTP, with and without a type.
    let mut publisher = common::connect(server.line());
    common::send(
        &mut publisher,
        b"! 5 news text/plain\r\nhello\r\n! 3 news\r\n\x00\x01\x02\r\n",
    );
    common::line_sync(&mut publisher, "pub");
    let hello = part(None, None, "text/plain", b"hello");
    let raw = part(None, None, "application/octet-stream", b"\x00\x01\x02");
    http10.expect(&hello);
    http10.expect(&raw);
    http11.expect(&chunk(&hello));
    http11.expect(&chunk(&raw));
    // The line subscriber sees the line publications too.
    let want =
        b"! 5 news text/plain\r\nhello\r\n! 3 news application/octet-stream\r\n\x00\x01\x02\r\n";
    assert_eq!(
        show(&common::read_exact_n(&mut line, want.len())),
        show(want)
    );

    // HTTP -> line: TYPE is the POST's Content-Type, written without
    // whitespace so that the frame keeps its four fields.
    publish(bus, "news", "application/json", b"{\"a\":1}");
    publish_as(bus, "news", "text/plain; charset=utf-8", "alice:pw", b"");
    let want = b"! 7 news application/json\r\n{\"a\":1}\r\n! 0 news text/plain;charset=utf-8\r\n";
    assert_eq!(
        show(&common::read_exact_n(&mut line, want.len())),
        show(want)
    );
    for (http11, c) in [(false, &mut http10), (true, &mut http11)] {
        for p in [
            part(None, None, "application/json", b"{\"a\":1}"),
            part(Some("alice"), None, "text/plain; charset=utf-8", b""),
        ] {
            c.expect(&if http11 { chunk(&p) } else { p });
        }
    }
    publish_probe(bus, "news");
    http10.expect(&probe_part(false, false, "news"));
    http11.expect(&probe_part(true, false, "news"));
    let want = b"! 5 news text/plain\r\nprobe\r\n";
    assert_eq!(
        show(&common::read_exact_n(&mut line, want.len())),
        show(want)
    );
}

// ---------------------------------------------------------------------------
// Real clients

/// `curl`, which must be installed (.ci/setup installs it).
fn curl() -> Command {
    let mut c = Command::new(common::program("curl"));
    // A hung curl fails its test (exit 28) instead of hanging it.
    c.arg("--silent")
        .arg("--show-error")
        .args(["--max-time", "60"]);
    c
}

/// A child process whose stdout is read by a thread, so a test can wait for
/// output with a deadline.
struct Streaming {
    child: Child,
    rx: mpsc::Receiver<Vec<u8>>,
    got: Vec<u8>,
}

impl Streaming {
    fn spawn(mut cmd: Command) -> Streaming {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Streaming {
            child,
            rx,
            got: Vec::new(),
        }
    }

    /// Waits until the output holds `want` (from the start); returns it.
    fn wait_for_len(&mut self, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.got.len() < len {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(bytes) => self.got.extend(bytes),
                Err(_) => panic!(
                    "child output stopped at {} of {len} bytes: {}",
                    self.got.len(),
                    show(&self.got[..self.got.len().min(400)])
                ),
            }
        }
        self.got.drain(..len).collect()
    }

    fn expect(&mut self, want: &[u8]) {
        let got = self.wait_for_len(want.len());
        assert_eq!(show(&got), show(want));
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn curl_subscriber_and_publisher() {
    let server = Server::start(&[]);
    let bus = server.bus();
    let dir = scratch_dir("curl");
    let small = dir.join("note.txt");
    std::fs::write(&small, b"hello from a file\n").unwrap();
    // Over curl's threshold for `Expect: 100-continue` (1 MiB).
    let big_path = dir.join("big.bin");
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&big_path, &big).unwrap();

    let mut sub = Streaming::spawn({
        let mut c = curl();
        c.arg("-N").arg(format!("http://{bus}/msgbus/news"));
        c
    });
    // curl prints the de-chunked body: the opening delimiter first.
    sub.expect(b"--00MsgBus00\r\n");
    let mut sub10 = Streaming::spawn({
        let mut c = curl();
        c.args(["-N", "--http1.0"])
            .arg(format!("http://{bus}/msgbus/news?type=text/*"));
        c
    });
    sub10.expect(b"--00MsgBus00\r\n");

    let post_file = |path: &Path, content_type: &str| {
        let out = run_ok(
            curl()
                .args(["-v", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg("--data-binary")
                .arg(format!("@{}", path.display()))
                .args(["-H", &format!("Content-Type: {content_type}")])
                .arg(format!("http://{bus}/msgbus/news")),
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "204");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    post_file(&small, "text/plain");
    let p = part(None, None, "text/plain", b"hello from a file\n");
    sub.expect(&p);
    sub10.expect(&p);
    let trace = post_file(&big_path, "application/octet-stream");
    assert!(
        trace.contains("HTTP/1.1 100 Continue"),
        "curl did not get 100 Continue:\n{trace}"
    );
    sub.expect(&part(None, None, "application/octet-stream", &big));

    // Basic auth from curl becomes From; `-u` on the subscriber too.
    let server2 = Server::start(&["--secret", "s3cret"]);
    let bus2 = server2.bus();
    let mut authed = Streaming::spawn({
        let mut c = curl();
        c.args(["-N", "-u", "carol:s3cret"])
            .arg(format!("http://{bus2}/msgbus/"));
        c
    });
    authed.expect(b"--00MsgBus00\r\n");
    let out = run_ok(
        curl()
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-u", "dave:s3cret"])
            .args(["--data-binary", "hi", "-H", "Content-Type: text/plain"])
            .arg(format!("http://{bus2}/msgbus/room")),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "204");
    authed.expect(&part(Some("dave"), Some("room"), "text/plain", b"hi"));
    let out = run_ok(
        curl()
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-u", "dave:wrong"])
            .arg(format!("http://{bus2}/msgbus/room")),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let _ = std::fs::remove_dir_all(dir);
}

const PY_PUBLISHER: &str = r#"
import http.client, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, port, timeout=10)

# Keep-alive: one request after another on one connection.
sock = None
for i in range(n):
    conn.request("POST", "/msgbus/py", body=b"seq-%d" % i,
                 headers={"Content-Type": "text/plain"})
    r = conn.getresponse()
    assert r.read() == b""
    assert (r.status, r.reason) == (204, "OK"), (r.status, r.reason)
    assert r.getheader("Server") == "switchboard"
    assert r.getheader("Date") is None
    if sock is None:
        sock = conn.sock
    assert conn.sock is sock, "the connection was not kept alive"

# Pipelined: every request in one write on the same socket, then the
# answers parsed one after another by http.client from one buffered reader.
reqs = b"".join(
    b"POST /msgbus/py HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(b"seq-%d" % i), b"seq-%d" % i)
    for i in range(n, 2 * n))
sock.sendall(reqs)

class Shared:
    def __init__(self, fp): self.fp = fp
    def makefile(self, mode): return self.fp

class KeepOpen:
    def __init__(self, raw): self.raw = raw
    def __getattr__(self, name): return getattr(self.raw, name)
    def close(self): pass

fp = KeepOpen(sock.makefile("rb"))
for i in range(n):
    r = http.client.HTTPResponse(Shared(fp), method="POST")
    r.begin()
    assert r.read() == b""
    assert r.status == 204, r.status
    assert not r.will_close
print("ok", 2 * n)
"#;

#[test]
fn python_http_client_keep_alive_and_pipelined_publisher() {
    const N: usize = 50;
    let server = Server::start(&[]);
    let bus = server.bus();
    let mut sub = subscribe(bus, "/msgbus/py", true);
    let (host, port) = bus.rsplit_once(':').unwrap();
    let out = run_ok(
        Command::new(common::program("python3"))
            .arg("-c")
            .arg(PY_PUBLISHER)
            .args([host, port, &N.to_string()]),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok {}", 2 * N)
    );
    for i in 0..2 * N {
        let body = format!("seq-{i}");
        sub.expect(&chunk(&part(None, None, "text/plain", body.as_bytes())));
    }
    // One connection carried all of it.
    let s = stats(bus);
    // The subscriber, the Python client, and this stats request.
    assert_eq!(s["connections"]["accepted"], 3, "{s}");
    publish_probe(bus, "py");
    sub.expect(&probe_part(true, false, "py"));
}

// ---------------------------------------------------------------------------
// Stats page: closes by reason, queue traffic

#[test]
fn stats_page_counts_closes_by_reason() {
    let server = Server::start(&["--request-timeout", "1"]);
    let mut stats = common::Stats::open(server.bus());
    let line = server.line();
    // peer_closed: a client that hangs up.
    drop(common::connect(line));
    // quit and protocol_error: `.` and a bad command, read to the close.
    let mut quit = common::connect(line);
    common::send(&mut quit, b".\r\n");
    assert_eq!(common::read_to_close(&mut quit), b"");
    let mut bad = common::connect(line);
    common::send(&mut bad, b"bogus\r\n");
    assert_eq!(common::read_to_close(&mut bad), b"- invalid command\r\n");
    // request_timeout: a command that never ends.
    let mut stalled = common::connect(line);
    common::send(&mut stalled, b"> 3 30 q");
    assert_eq!(common::read_to_close(&mut stalled), b"");
    // read_error: a client that closes with input it never read, so its
    // kernel resets the connection.
    let mut reset = common::connect(line);
    common::send(&mut reset, b"+ reset\r\n");
    common::line_sync(&mut reset, "reset");
    let mut publisher = common::connect(line);
    common::send(&mut publisher, b"! 6 reset\r\nunread\r\n");
    common::line_sync(&mut publisher, "publisher");
    // The publication has arrived (peeked at, not read).
    let mut first = [0u8; 1];
    assert_eq!(reset.peek(&mut first).expect("peek"), 1);
    drop(reset);
    let v = stats.wait_for("five closes", |v| {
        common::stat(v, "connections.closed") == 5
    });
    let by = &v["connections"]["closed_by"];
    for (reason, n) in [
        ("peer_closed", 1),
        ("quit", 1),
        ("protocol_error", 1),
        ("request_timeout", 1),
        ("read_error", 1),
        ("slow_subscriber", 0),
        ("write_error", 0),
        ("linger_timeout", 0),
    ] {
        assert_eq!(by[reason], n, "{reason}: {v}");
    }
}

/// A subscriber whose output cannot drain and that then says `.`: the
/// server waits at most 5 s (the linger deadline) and closes it, counted as
/// `linger_timeout`.
#[test]
fn stats_page_counts_a_linger_timeout() {
    let server = Server::start(&[]);
    let mut stats = common::Stats::open(server.bus());
    let mut sub = common::connect(server.line());
    common::send(&mut sub, b"+ flood\r\n");
    common::line_sync(&mut sub, "sub");
    // 16 MiB it does not read: the sockets fill up, the rest waits in the
    // server (up to the backlog limit; what passes it is dropped).
    let mut publisher = common::connect(server.line());
    let mut frame = b"! 65536 flood\r\n".to_vec();
    frame.resize(frame.len() + 65536, b'x');
    frame.extend_from_slice(b"\r\n");
    for _ in 0..256 {
        common::send(&mut publisher, &frame);
    }
    common::line_sync(&mut publisher, "publisher");
    assert!(
        common::stat(&stats.get(), "drops") > 0,
        "the backlog never filled"
    );
    common::send(&mut sub, b".\r\n");
    let v = stats.wait_for("the linger deadline", |v| {
        common::stat(v, "connections.closed") == 1
    });
    assert_eq!(v["connections"]["closed_by"]["linger_timeout"], 1, "{v}");
}

#[test]
fn stats_page_counts_queue_traffic() {
    let server = Server::start(&[]);
    let mut stats = common::Stats::open(server.bus());
    let queues = |v: &serde_json::Value| {
        ["queued", "waiting", "sent", "delivered", "expired"]
            .map(|k| common::stat(v, &format!("queues.{k}")))
    };
    assert_eq!(queues(&stats.get()), [0, 0, 0, 0, 0]);
    let mut a = common::connect(server.line());
    let mut b = common::connect(server.line());
    // Two messages queued for nobody (a zero-second wait is the barrier).
    common::send(
        &mut a,
        b"> 1 30 q1\r\nx\r\n> 1 30 q1\r\ny\r\n< 0 barrier\r\n",
    );
    assert_eq!(common::read_exact_n(&mut a, 3), b"*\r\n");
    assert_eq!(queues(&stats.get()), [2, 0, 2, 0, 0]);
    // A receiver waits on another address.
    common::send(&mut b, b"< 30 q2\r\n");
    let v = stats.wait_for("a waiting receiver", |v| {
        common::stat(v, "queues.waiting") == 1
    });
    assert_eq!(queues(&v), [2, 1, 2, 0, 0]);
    // One queued message taken; one sent to the waiting receiver.
    common::send(&mut a, b"< 1 q1\r\n");
    assert_eq!(common::read_exact_n(&mut a, 14), b"> 1 30 q1\r\nx\r\n");
    common::send(&mut a, b"> 1 30 q2\r\nz\r\n");
    assert_eq!(common::read_exact_n(&mut b, 14), b"> 1 30 q2\r\nz\r\n");
    assert_eq!(queues(&stats.get()), [1, 0, 3, 2, 0]);
    // A message that expires (a later one-second wait is the clock).
    common::send(&mut a, b"> 1 1 q3\r\nv\r\n< 1 clock\r\n");
    assert_eq!(common::read_exact_n(&mut a, 3), b"*\r\n");
    let v = stats.get();
    assert_eq!(queues(&v), [1, 0, 4, 2, 1], "{v}");
    assert_eq!(common::stat(&v, "messages_in"), 4, "{v}");
    assert_eq!(common::stat(&v, "messages_out"), 2, "{v}");
}

/// docs/protocol.md: a line subscriber's frame always has a TYPE field,
/// `application/octet-stream` for an HTTP publish with an empty
/// `Content-Type`.
#[test]
fn an_empty_http_type_reaches_line_subscribers_as_octet_stream() {
    let server = Server::start(&[]);
    let mut sub = common::connect(server.line());
    common::send(&mut sub, b"+ empty-type\r\n");
    common::line_sync(&mut sub, "empty-type");
    let answer = common::read_to_close(&mut common::connect_and_send(
        server.bus(),
        b"POST /msgbus/empty-type HTTP/1.0\r\nContent-Type:\r\nContent-Length: 2\r\n\r\nhi",
    ));
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.0 204"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let want = b"! 2 empty-type application/octet-stream\r\nhi\r\n";
    assert_eq!(
        String::from_utf8_lossy(&common::read_exact_n(&mut sub, want.len())),
        String::from_utf8_lossy(want)
    );
}
