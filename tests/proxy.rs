//! The msglite HTTP proxy door, end to end: HTTP clients on raw sockets, and
//! handlers that are raw line-protocol sockets, against the real server.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{connect, line_sync, Server};
use serde_json::Value;

const QUEUE: &str = "msglite.httpRequests";

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--proxy-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// A handler: one raw line-protocol connection.

/// A queue message as a handler gets it.
#[derive(Debug)]
struct Msg {
    to: String,
    reply: Option<String>,
    body: Vec<u8>,
}

/// A request as a handler takes it: the envelope and its reply address.
#[derive(Debug)]
struct Taken {
    env: Value,
    reply: String,
}

impl Taken {
    fn url(&self) -> &str {
        self.env["url"].as_str().unwrap_or_default()
    }
    fn body_addr(&self) -> &str {
        self.env["bodyAddr"].as_str().expect("bodyAddr")
    }
    fn id(&self) -> &str {
        self.env["id"].as_str().expect("id")
    }
}

struct Handler {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Handler {
    fn connect(server: &Server) -> Handler {
        let w = connect(server.line());
        let r = BufReader::new(w.try_clone().expect("clone"));
        Handler { w, r }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write");
    }

    /// `> LEN 30 TO [REPLY]` + body.
    fn send(&mut self, to: &str, reply: Option<&str>, body: &[u8]) {
        let mut frame = match reply {
            Some(r) => format!("> {} 30 {to} {r}\r\n", body.len()).into_bytes(),
            None => format!("> {} 30 {to}\r\n", body.len()).into_bytes(),
        };
        if !body.is_empty() {
            frame.extend_from_slice(body);
            frame.extend_from_slice(b"\r\n");
        }
        self.write(&frame);
    }

    /// Reads one answer: a message, or `None` for `*`.
    fn read_answer(&mut self) -> Option<Msg> {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read a line");
        assert!(!line.is_empty(), "the server closed the handler");
        let line = line.trim_end();
        if line == "*" {
            return None;
        }
        let f: Vec<&str> = line.split(' ').collect();
        assert!(f.len() >= 4 && f[0] == ">", "not an answer: {line:?}");
        let len: usize = f[1].parse().expect("length");
        let mut body = vec![0u8; len];
        if len > 0 {
            self.r.read_exact(&mut body).expect("body");
            let mut crlf = [0u8; 2];
            self.r.read_exact(&mut crlf).expect("crlf");
            assert_eq!(&crlf, b"\r\n");
        }
        Some(Msg {
            to: f[3].to_string(),
            reply: f.get(4).map(|s| s.to_string()),
            body,
        })
    }

    /// `< TIMEOUT ADDR…` and its answer.
    fn ready(&mut self, timeout_s: u64, addrs: &[&str]) -> Option<Msg> {
        self.write(format!("< {timeout_s} {}\r\n", addrs.join(" ")).as_bytes());
        self.read_answer()
    }

    /// Takes the next request from `queue`.
    fn take_from(&mut self, queue: &str) -> Taken {
        let m = self
            .ready(10, &[queue])
            .unwrap_or_else(|| panic!("no request on {queue}"));
        assert_eq!(m.to, queue);
        let env: Value = serde_json::from_slice(&m.body).expect("the envelope is JSON");
        Taken {
            env,
            reply: m.reply.expect("a request has a reply address"),
        }
    }

    fn take(&mut self) -> Taken {
        self.take_from(QUEUE)
    }

    /// Reads the request body from its body address.
    fn body(&mut self, t: &Taken) -> Vec<u8> {
        let addr = t.body_addr().to_string();
        self.ready(10, &[&addr]).expect("the request body").body
    }

    fn head(&mut self, reply: &str, head: &str) {
        self.send(reply, None, head.as_bytes());
    }

    /// A whole answer: head, body messages, the empty end.
    fn answer(&mut self, reply: &str, head: &str, parts: &[&[u8]]) {
        self.head(reply, head);
        for p in parts {
            self.send(reply, None, p);
        }
        self.send(reply, None, b"");
    }
}

// ---------------------------------------------------------------------------
// An HTTP client on a raw socket.

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn text(&self) -> String {
        show(&self.body)
    }
}

struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(server: &Server) -> Http {
        Http {
            s: connect(server.addr("proxy")),
            buf: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
    }

    fn get(&mut self, target: &str) {
        self.write(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).expect("read from the proxy");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    fn take_until(&mut self, needle: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(needle.len()).position(|w| w == needle) {
                let rest = self.buf.split_off(i + needle.len());
                return std::mem::replace(&mut self.buf, rest);
            }
            assert!(
                self.fill(),
                "closed before {:?}; have {:?}",
                show(needle),
                show(&self.buf)
            );
        }
    }

    fn take_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "closed after {} of {n} bytes", self.buf.len());
        }
        let rest = self.buf.split_off(n);
        std::mem::replace(&mut self.buf, rest)
    }

    fn read_head(&mut self) -> (u16, String) {
        let head = show(&self.take_until(b"\r\n\r\n"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a response: {head:?}"));
        (status, head)
    }

    /// The next chunk of a chunked body (empty: the last one, which has no
    /// trailers here).
    fn read_chunk(&mut self) -> Vec<u8> {
        let line = show(&self.take_until(b"\r\n"));
        let size = usize::from_str_radix(line.trim_end(), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
        let data = self.take_n(size);
        assert_eq!(self.take_n(2), b"\r\n");
        data
    }

    /// One whole response (`head_only` for the answer to HEAD).
    fn response_to(&mut self, head_only: bool) -> Resp {
        let (status, head) = self.read_head();
        let mut r = Resp {
            status,
            head,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return r;
        }
        if let Some(n) = r.header("Content-Length") {
            r.body = self.take_n(n.parse().expect("a length"));
        } else if r.header("Transfer-Encoding") == Some("chunked") {
            loop {
                let c = self.read_chunk();
                if c.is_empty() {
                    break;
                }
                r.body.extend_from_slice(&c);
            }
        } else {
            while self.fill() {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }

    fn response(&mut self) -> Resp {
        self.response_to(false)
    }

    /// True once the server has closed the connection (and nothing more
    /// came).
    fn closed(&mut self) -> bool {
        !self.fill() && self.buf.is_empty()
    }
}

/// `/msgbus-stats` of the bus door.
fn stats(server: &Server) -> Value {
    let mut s = connect(server.bus());
    s.write_all(b"GET /msgbus-stats HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = show(&all);
    let body = text.split_once("\r\n\r\n").expect("a response").1;
    serde_json::from_str(body).expect("stats are JSON")
}

/// Waits (polling the stats page) until the broker's queue counter `key`
/// (`queued`: messages in queues, `waiting`: receivers) is `n`.
fn wait_stat(server: &Server, key: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = stats(server)["queues"][key].as_u64().unwrap_or(0);
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{key}: {now}, want {n}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_queued(server: &Server, n: u64) {
    wait_stat(server, "queued", n);
}

const TEXT_HEAD: &str = r#"["200", ["Content-Type", "text/plain"]]"#;

// ---------------------------------------------------------------------------

#[test]
fn status_headers_and_body() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    c.write(b"GET /hello/there?x=1&y=2 HTTP/1.1\r\nHost: example.org\r\nx-custom: one\r\nX-Custom: two\r\nUser-Agent: t\r\n\r\n");
    let t = h.take();
    assert_eq!(t.env["method"], "GET");
    assert_eq!(t.env["url"], "/hello/there?x=1&y=2");
    assert_eq!(t.env["protocol"], "HTTP/1.1");
    assert_eq!(
        t.env["headers"],
        serde_json::json!({"Host": "example.org", "X-Custom": "one,two", "User-Agent": "t"})
    );
    assert!(!t.id().is_empty());
    // A GET's body is an empty message.
    assert_eq!(h.body(&t), b"");
    h.answer(
        &t.reply,
        r#"["201", ["Content-Type", "text/plain", "X-Reply", "yes", "Set-Cookie", "a=1", "Set-Cookie", "b=2"]]"#,
        &[b"hello, ", b"world"],
    );
    let r = c.response();
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.head.starts_with("HTTP/1.1 201 Created\r\n"), "{}", r.head);
    assert_eq!(r.header("Server"), Some("switchboard"));
    assert_eq!(r.header("X-Reply"), Some("yes"));
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert!(r
        .head
        .contains("\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"));
    assert_eq!(r.text(), "hello, world");
    // Keep-alive: the next request on the same connection.
    c.get("/again");
    let t = h.take();
    assert_eq!(t.url(), "/again");
    h.answer(
        &t.reply,
        r#"["200", ["Content-Length", "2"]]"#,
        &[b"o", b"k"],
    );
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("Content-Length"), Some("2"));
    assert_eq!(r.header("Transfer-Encoding"), None);
    // HEAD: the head the handler gives, no body even if it sends one.
    c.write(b"HEAD /h HTTP/1.1\r\n\r\n");
    let t = h.take();
    assert_eq!(t.env["method"], "HEAD");
    h.answer(&t.reply, r#"["200", ["Content-Length", "5"]]"#, &[b"hello"]);
    let r = c.response_to(true);
    assert_eq!(r.header("Content-Length"), Some("5"));
    c.get("/after-head");
    let t = h.take();
    h.answer(&t.reply, TEXT_HEAD, &[b"still in step"]);
    assert_eq!(c.response().text(), "still in step");
}

#[test]
fn post_bodies_including_a_megabyte() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    let small = b"name=switchboard&x=1";
    c.write(
        format!(
            "POST /form HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            small.len()
        )
        .as_bytes(),
    );
    c.write(small);
    let t = h.take();
    assert_eq!(t.env["method"], "POST");
    assert_eq!(t.env["headers"]["Content-Length"], small.len().to_string());
    assert_eq!(h.body(&t), small);
    h.answer(&t.reply, TEXT_HEAD, &[b"got it"]);
    assert_eq!(c.response().text(), "got it");

    // 1 MB, echoed back with its length.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    c.write(
        format!(
            "POST /upload HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    c.write(&big);
    let t = h.take();
    assert_eq!(t.env["headers"]["Content-Length"], "1048576");
    let got = h.body(&t);
    assert!(got == big, "the 1 MB body differs ({} bytes)", got.len());
    let head = format!(
        r#"["200", ["Content-Type", "application/octet-stream", "Content-Length", "{}"]]"#,
        big.len()
    );
    let (a, b) = got.split_at(300_000);
    h.answer(&t.reply, &head, &[a, b]);
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(
        r.body == big,
        "the 1 MB echo differs ({} bytes)",
        r.body.len()
    );

    // A chunked request body reaches the handler whole, with its length.
    c.write(b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let t = h.take();
    assert_eq!(t.env["headers"]["Content-Length"], "11");
    assert_eq!(t.env["headers"].get("Transfer-Encoding"), None);
    assert_eq!(h.body(&t), b"hello world");
    h.answer(&t.reply, TEXT_HEAD, &[]);
    let r = c.response();
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn two_requests_answered_in_reverse_order() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut first = Http::connect(&server);
    let mut second = Http::connect(&server);
    first.get("/first");
    let t1 = h.take();
    second.get("/second");
    let t2 = h.take();
    assert_eq!((t1.url(), t2.url()), ("/first", "/second"));
    assert_ne!(t1.id(), t2.id());
    assert_ne!(t1.reply, t2.reply);
    // The second is answered, and arrives, while the first still waits.
    h.answer(&t2.reply, TEXT_HEAD, &[b"two"]);
    assert_eq!(second.response().text(), "two");
    h.answer(&t1.reply, TEXT_HEAD, &[b"one"]);
    assert_eq!(first.response().text(), "one");
}

#[test]
fn five_concurrent_requests_answered_in_reverse() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut clients: Vec<Http> = (0..5).map(|_| Http::connect(&server)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.get(&format!("/n/{i}"));
    }
    let mut taken: Vec<Taken> = (0..5).map(|_| h.take()).collect();
    let mut urls: Vec<String> = taken.iter().map(|t| t.url().to_string()).collect();
    urls.sort();
    assert_eq!(urls, (0..5).map(|i| format!("/n/{i}")).collect::<Vec<_>>());
    taken.reverse();
    for t in &taken {
        let body = format!("answer to {}", t.url());
        h.answer(&t.reply, TEXT_HEAD, &[body.as_bytes()]);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.response().text(), format!("answer to /n/{i}"));
    }
}

#[test]
fn a_reply_address_passed_to_another_client() {
    let server = start(&[]);
    let mut front = Handler::connect(&server);
    let mut worker = Handler::connect(&server);
    let mut c = Http::connect(&server);
    c.get("/delegate");
    let t = front.take();
    // The front handler passes the reply address on with the work.
    front.send("work", Some(&t.reply), t.url().as_bytes());
    let job = worker.ready(10, &["work"]).expect("the job");
    assert_eq!(job.body, b"/delegate");
    let reply = job.reply.expect("the passed reply address");
    assert_eq!(reply, t.reply);
    worker.answer(&reply, TEXT_HEAD, &[b"from the worker"]);
    assert_eq!(c.response().text(), "from the worker");
}

#[test]
fn a_streamed_response_reaches_the_client_chunk_by_chunk() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    c.get("/stream");
    let t = h.take();
    let t0 = Instant::now();
    let (arrived_tx, arrived_rx) = mpsc::channel::<(usize, Vec<u8>, Duration)>();
    let reader = std::thread::spawn(move || {
        let (status, head) = c.read_head();
        assert_eq!(status, 200);
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        let mut i = 0;
        loop {
            let chunk = c.read_chunk();
            arrived_tx.send((i, chunk.clone(), t0.elapsed())).unwrap();
            if chunk.is_empty() {
                return c;
            }
            i += 1;
        }
    });
    h.head(
        &t.reply,
        r#"["200", ["Content-Type", "text/event-stream"]]"#,
    );
    let mut log = Vec::new();
    for i in 0..5 {
        let data = format!("data: event {i}\n\n");
        let sent_at = t0.elapsed();
        h.send(&t.reply, None, data.as_bytes());
        // The client has this chunk before the next one (or the end) is
        // even sent: nothing is held back until the end of the response.
        let (n, got, at) = arrived_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("chunk {i} did not arrive before the next was sent"));
        assert_eq!((n, show(&got)), (i, data));
        log.push(format!("chunk {i}: sent at {sent_at:?}, arrived at {at:?}"));
    }
    let end_sent = t0.elapsed();
    h.send(&t.reply, None, b"");
    let (n, last, at) = arrived_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((n, last.len()), (5, 0));
    log.push(format!("end: sent at {end_sent:?}, arrived at {at:?}"));
    println!("{}", log.join("\n"));
    // The connection carries the next request.
    let mut c = reader.join().unwrap();
    c.get("/next");
    let t = h.take();
    h.answer(&t.reply, TEXT_HEAD, &[b"next"]);
    assert_eq!(c.response().text(), "next");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    c.write(
        b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\ntwoGET /3 HTTP/1.1\r\n\r\n",
    );
    for (i, want_body) in [(1, &b""[..]), (2, b"two"), (3, b"")] {
        let t = h.take();
        assert_eq!(t.url(), format!("/{i}"));
        assert_eq!(h.body(&t), want_body);
        // The next request is not sent to the queue while this one waits.
        assert!(h.ready(0, &[QUEUE]).is_none());
        let body = format!("response {i}");
        h.answer(&t.reply, TEXT_HEAD, &[body.as_bytes()]);
    }
    for i in 1..=3 {
        assert_eq!(c.response().text(), format!("response {i}"));
    }
}

#[test]
fn http_10_clients() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    // Without a length the body ends with the connection.
    let mut c = Http::connect(&server);
    c.write(b"GET /old HTTP/1.0\r\n\r\n");
    let t = h.take();
    assert_eq!(t.env["protocol"], "HTTP/1.0");
    h.answer(&t.reply, TEXT_HEAD, &[b"one ", b"two"]);
    let r = c.response();
    assert!(r.head.starts_with("HTTP/1.0 200 OK\r\n"), "{}", r.head);
    assert_eq!(r.header("Transfer-Encoding"), None);
    assert_eq!(r.text(), "one two");
    // Keep-alive, with a length.
    let mut c = Http::connect(&server);
    c.write(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let t = h.take();
    assert_eq!(t.env["headers"].get("Connection"), None);
    h.answer(&t.reply, r#"["200", ["Content-Length", "3"]]"#, &[b"abc"]);
    let r = c.response();
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert_eq!(r.text(), "abc");
    c.write(b"GET /ka2 HTTP/1.0\r\n\r\n");
    let t = h.take();
    h.answer(&t.reply, r#"["200", ["Content-Length", "3"]]"#, &[b"def"]);
    let r = c.response();
    assert_eq!(r.header("Connection"), None);
    assert_eq!(r.text(), "def");
    assert!(c.closed());
}

#[test]
fn requests_wait_while_no_handler_runs() {
    let server = start(&[]);
    let mut clients: Vec<Http> = (0..3).map(|_| Http::connect(&server)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.get(&format!("/queued/{i}"));
    }
    // Each request is two queued messages: its envelope and its body.
    wait_queued(&server, 6);
    let mut h = Handler::connect(&server);
    for _ in 0..3 {
        let t = h.take();
        let body = format!("late answer to {}", t.url());
        h.answer(&t.reply, TEXT_HEAD, &[body.as_bytes()]);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.response().text(), format!("late answer to /queued/{i}"));
    }
}

#[test]
fn a_killed_handler_loses_no_queued_request() {
    let server = start(&[]);
    // One handler answers a request, takes another, and dies mid-request;
    // a second one dies while waiting for work.
    let mut doomed = Handler::connect(&server);
    let mut c0 = Http::connect(&server);
    c0.get("/before");
    let t = doomed.take();
    assert_eq!(doomed.body(&t), b"");
    doomed.answer(&t.reply, TEXT_HEAD, &[b"before"]);
    assert_eq!(c0.response().text(), "before");
    let mut lost = Http::connect(&server);
    lost.get("/in-flight");
    let in_flight = doomed.take();
    assert_eq!(in_flight.url(), "/in-flight");
    assert_eq!(doomed.body(&in_flight), b"");
    doomed.w.shutdown(Shutdown::Both).unwrap();
    drop(doomed);
    let mut idle = Handler::connect(&server);
    idle.write(format!("< 60 {QUEUE}\r\n").as_bytes());
    // Two waits: the idle handler's, and the in-flight request's on its
    // reply address.
    wait_stat(&server, "waiting", 2);
    idle.w.shutdown(Shutdown::Both).unwrap();
    drop(idle);
    // Once the server has seen it go, nothing is handed to it.
    wait_stat(&server, "waiting", 1);
    // Requests come while no handler runs.
    // Each is queued before the next is sent: requests on different
    // connections read in one turn of the loop may be queued in any order.
    let mut clients: Vec<Http> = (0..4).map(|_| Http::connect(&server)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.get(&format!("/r/{i}"));
        // The envelope and the empty body of each.
        wait_queued(&server, 2 * (i as u64 + 1));
    }
    // The restarted handler gets every one of them.
    let mut h = Handler::connect(&server);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let t = h.take();
        seen.push(t.url().to_string());
        let body = format!("restarted: {}", t.url());
        h.answer(&t.reply, TEXT_HEAD, &[body.as_bytes()]);
    }
    assert_eq!(seen, (0..4).map(|i| format!("/r/{i}")).collect::<Vec<_>>());
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.response().text(), format!("restarted: /r/{i}"));
    }
    // The request the dead handler held can still be answered by anyone
    // who has its reply address.
    h.answer(&in_flight.reply, TEXT_HEAD, &[b"rescued"]);
    assert_eq!(lost.response().text(), "rescued");
}

#[test]
fn no_answer_in_time_is_504() {
    let server = start(&["--proxy-timeout", "1"]);
    // No handler at all.
    let mut c = Http::connect(&server);
    c.get("/nobody");
    let r = c.response();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.head.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
    assert!(
        r.text().contains("no answer from a handler"),
        "{}",
        r.text()
    );
    // A handler that takes it and says nothing; the connection stays
    // usable.
    let mut h = Handler::connect(&server);
    c.get("/silent");
    let t = h.take();
    assert_eq!(t.url(), "/silent");
    assert_eq!(c.response().status, 504);
    c.get("/answered");
    let t = h.take();
    h.answer(&t.reply, TEXT_HEAD, &[b"in time"]);
    assert_eq!(c.response().text(), "in time");
    // A body that stops: the connection closes without the last chunk.
    c.get("/stalls");
    let t = h.take();
    h.head(&t.reply, TEXT_HEAD);
    h.send(&t.reply, None, b"partial");
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    assert_eq!(c.read_chunk(), b"partial");
    assert!(c.closed(), "the cut response must end the connection");
}

#[test]
fn every_kind_of_bad_head_is_502() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    let bad: &[(&str, &str)] = &[
        ("not json", "not JSON"),
        (r#"{"status": "200"}"#, "not a JSON array"),
        ("[]", "an empty array"),
        (r#"["abc", []]"#, "is not a number"),
        (r#"["299", []]"#, "unknown status 299"),
        (r#"["101", []]"#, "not a final status"),
        (r#"[true, []]"#, "not a string or a number"),
        (r#"["200", ["X-A"]]"#, "odd number"),
        (r#"["200", ["X-A", 1]]"#, "not a string"),
        (r#"["200", [["X-A"], "v"]]"#, "not a string"),
        (r#"["200", "X-A: v"]"#, "not an array"),
        (r#"["200", ["X-A\r\nX-B", "v"]]"#, "not a token"),
        (
            r#"["200", ["X-A", "v\r\nSet-Cookie: evil=1"]]"#,
            "control character",
        ),
        (r#"["200", ["Content-Length", "ten"]]"#, "not a number"),
    ];
    for (head, says) in bad {
        c.get("/bad");
        let t = h.take();
        h.answer(&t.reply, head, &[b"never shown"]);
        let r = c.response();
        assert_eq!(r.status, 502, "{head}: {r:?}");
        assert!(r.head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(
            r.text().contains("invalid reply head") && r.text().contains(says),
            "{head}: {}",
            r.text()
        );
        assert!(!r.head.contains("evil"), "{}", r.head);
    }
    // Numbers are statuses too, and the connection still works.
    c.get("/good");
    let t = h.take();
    h.answer(
        &t.reply,
        r#"[404, ["Content-Type", "text/plain"]]"#,
        &[b"nope"],
    );
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (404, "nope"));
}

#[test]
fn hop_by_hop_headers_are_not_passed_through() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    c.write(
        b"GET /hop HTTP/1.1\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: h2c\r\nX-End: kept\r\n\r\n",
    );
    let t = h.take();
    assert_eq!(
        t.env["headers"],
        serde_json::json!({"X-End": "kept"}),
        "{}",
        t.env
    );
    h.answer(
        &t.reply,
        r#"["200", ["Connection", "close, X-Private", "X-Private", "p", "Keep-Alive", "timeout=5",
            "Transfer-Encoding", "gzip", "Upgrade", "websocket", "Proxy-Connection", "close",
            "Trailer", "X-T", "X-Kept", "yes"]]"#,
        &[b"body"],
    );
    let r = c.response();
    assert_eq!(r.text(), "body");
    assert_eq!(r.header("X-Kept"), Some("yes"));
    for gone in [
        "X-Private",
        "Keep-Alive",
        "Upgrade",
        "Proxy-Connection",
        "Trailer",
        "Connection",
    ] {
        assert_eq!(r.header(gone), None, "{gone} in {}", r.head);
    }
    // Only the proxy's own framing.
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    // The handler's `Connection: close` did not close the connection.
    c.get("/still-open");
    let t = h.take();
    h.answer(&t.reply, TEXT_HEAD, &[b"open"]);
    assert_eq!(c.response().text(), "open");
}

#[test]
fn past_the_pending_cap_503_at_once() {
    let server = start(&["--proxy-max-pending", "2"]);
    let mut waiting: Vec<Http> = (0..2).map(|_| Http::connect(&server)).collect();
    for (i, c) in waiting.iter_mut().enumerate() {
        c.get(&format!("/w/{i}"));
    }
    wait_queued(&server, 4);
    let mut refused = Http::connect(&server);
    for n in 1..=2 {
        refused.get("/one-too-many");
        let r = refused.response();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("Retry-After"), Some("1"));
        assert!(
            r.text().contains(&format!(
                "2 requests wait for a handler (--proxy-max-pending 2); refused so far: {n}"
            )),
            "{}",
            r.text()
        );
    }
    // Nothing of the refused requests reached the queue.
    wait_queued(&server, 4);
    // Once the handler answers, there is room again.
    let mut h = Handler::connect(&server);
    for _ in 0..2 {
        let t = h.take();
        h.answer(&t.reply, TEXT_HEAD, &[b"ok"]);
    }
    for c in &mut waiting {
        assert_eq!(c.response().text(), "ok");
    }
    refused.get("/room-now");
    let t = h.take();
    assert_eq!(t.url(), "/room-now");
    h.answer(&t.reply, TEXT_HEAD, &[b"welcome"]);
    assert_eq!(refused.response().text(), "welcome");
}

#[test]
fn a_client_that_goes_away_is_announced_and_its_replies_dropped() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut watcher = Handler::connect(&server);
    watcher.write(b"+ msglite.httpClosed\r\n");
    line_sync(&mut watcher.w, "sub");
    // Gone before the head.
    let mut c = Http::connect(&server);
    c.get("/leaves");
    let t = h.take();
    c.s.shutdown(Shutdown::Both).unwrap();
    drop(c);
    let notice = read_notice(&mut watcher);
    assert_eq!(notice["id"], t.id());
    assert_eq!(notice["replyAddr"], t.reply.as_str());
    // The handler's late answer is not an error.
    h.answer(&t.reply, TEXT_HEAD, &[b"too late"]);
    line_sync(&mut h.w, "late");
    // Gone in the middle of a streamed body.
    let mut c = Http::connect(&server);
    c.get("/stream-leaves");
    let t = h.take();
    h.head(&t.reply, TEXT_HEAD);
    h.send(&t.reply, None, b"first");
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    assert_eq!(c.read_chunk(), b"first");
    c.s.shutdown(Shutdown::Both).unwrap();
    drop(c);
    let notice = read_notice(&mut watcher);
    assert_eq!(notice["id"], t.id());
    h.send(&t.reply, None, b"second");
    h.send(&t.reply, None, b"");
    line_sync(&mut h.w, "late2");
    // The door serves on.
    let mut c = Http::connect(&server);
    c.get("/next");
    let t = h.take();
    h.answer(&t.reply, TEXT_HEAD, &[b"fine"]);
    assert_eq!(c.response().text(), "fine");
}

/// Reads one `! LEN msglite.httpClosed application/json` frame.
fn read_notice(h: &mut Handler) -> Value {
    let mut line = String::new();
    h.r.read_line(&mut line).expect("a notice");
    let f: Vec<&str> = line.trim_end().split(' ').collect();
    assert_eq!(f.len(), 4, "{line:?}");
    assert_eq!(
        (f[0], f[2], f[3]),
        ("!", "msglite.httpClosed", "application/json")
    );
    let mut body = vec![0u8; f[1].parse().unwrap()];
    h.r.read_exact(&mut body).unwrap();
    let mut crlf = [0u8; 2];
    h.r.read_exact(&mut crlf).unwrap();
    serde_json::from_slice(&body).expect("the notice is JSON")
}

#[test]
fn prefix_routes_longest_wins() {
    let server = start(&[
        "--proxy-route",
        "/api=api.requests",
        "--proxy-route",
        "/api/admin=admin.requests",
        "--proxy-queue",
        "site.requests",
    ]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    for (target, queue) in [
        ("/api/users?id=1", "api.requests"),
        ("/api/admin/users", "admin.requests"),
        ("/api", "api.requests"),
        ("/apiary", "api.requests"),
        ("/ap", "site.requests"),
        ("/", "site.requests"),
        ("/admin/api", "site.requests"),
    ] {
        c.get(target);
        let t = h.take_from(queue);
        assert_eq!(t.url(), target);
        h.answer(&t.reply, TEXT_HEAD, &[queue.as_bytes()]);
        assert_eq!(c.response().text(), queue, "{target}");
    }
}

#[test]
fn request_ids_are_unique_and_logged() {
    let server = start(&["--log-level", "info", "--proxy-timeout", "1"]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    let mut ids = Vec::new();
    for _ in 0..3 {
        c.get("/id");
        let t = h.take();
        ids.push(t.id().to_string());
        h.answer(&t.reply, "[\"oops\"]", &[]);
        assert_eq!(c.response().status, 502);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{ids:?}");
    // The failure is logged with the request's id (the harness drains the
    // server's stderr; wait for the lines to arrive there).
    for id in &ids {
        let want = format!("proxy {id}: invalid reply head");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.stderr_text().contains(&want) {
            assert!(Instant::now() < deadline, "no log line names {id}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_proxy_is_off_by_default() {
    let server = Server::start(&[]);
    assert!(!server.doors.contains_key("proxy"), "{:?}", server.doors);
}

#[test]
fn handlers_on_one_queue_share_the_load_longest_waiting_first() {
    let server = start(&[]);
    let mut first = Handler::connect(&server);
    let mut second = Handler::connect(&server);
    first.write(format!("< 10 {QUEUE}\r\n").as_bytes());
    wait_stat(&server, "waiting", 1);
    second.write(format!("< 10 {QUEUE}\r\n").as_bytes());
    wait_stat(&server, "waiting", 2);
    let mut a = Http::connect(&server);
    a.get("/a");
    let got = first.read_answer().expect("the first request");
    let reply_a = got.reply.expect("a reply address");
    let mut b = Http::connect(&server);
    b.get("/b");
    let got_b = second.read_answer().expect("the second request");
    let env_a: Value = serde_json::from_slice(&got.body).unwrap();
    let env_b: Value = serde_json::from_slice(&got_b.body).unwrap();
    assert_eq!(
        (env_a["url"].as_str(), env_b["url"].as_str()),
        (Some("/a"), Some("/b"))
    );
    second.answer(&got_b.reply.unwrap(), TEXT_HEAD, &[b"from the second"]);
    first.answer(&reply_a, TEXT_HEAD, &[b"from the first"]);
    assert_eq!(b.response().text(), "from the second");
    assert_eq!(a.response().text(), "from the first");
}

#[test]
fn a_stream_to_a_client_that_does_not_read_is_cut_at_the_backlog_limit() {
    let server = start(&["--backlog-limit", "100000"]);
    let mut h = Handler::connect(&server);
    let mut watcher = Handler::connect(&server);
    watcher.write(b"+ msglite.httpClosed\r\n");
    line_sync(&mut watcher.w, "sub");
    let mut c = Http::connect(&server);
    c.get("/firehose");
    let t = h.take();
    h.head(&t.reply, TEXT_HEAD);
    // 19 MB, far more than the socket buffers hold, to a client that reads
    // nothing until the end.
    let chunk = vec![b'x'; 64 * 1024];
    let chunks = 300;
    for _ in 0..chunks {
        h.send(&t.reply, None, &chunk);
    }
    h.send(&t.reply, None, b"");
    // The handler is told that nobody reads any more.
    let notice = read_notice(&mut watcher);
    assert_eq!(notice["id"], t.id());
    // The client gets the head and part of the body, then the close.
    let (status, _) = c.read_head();
    assert_eq!(status, 200);
    while c.fill() {}
    let got = c.buf.len();
    assert!(
        got < chunks * chunk.len(),
        "the whole body went out ({got} bytes)"
    );
    assert!(!c.buf.ends_with(b"0\r\n\r\n"), "the stream was not cut");
    // The handler's connection is fine.
    line_sync(&mut h.w, "after");
}

#[test]
fn the_bus_secret_does_not_apply_to_the_proxy() {
    // `--secret` guards the bus and the line protocol; the proxy's requests
    // carry the application's own credentials (or none), untouched.
    let server = start(&["--secret", "s3cret"]);
    let mut h = Handler::connect(&server);
    h.write(b"@ s3cret\r\n");
    let mut c = Http::connect(&server);
    c.get("/no-credentials");
    let t = h.take();
    assert_eq!(t.url(), "/no-credentials");
    h.answer(&t.reply, TEXT_HEAD, &[b"served"]);
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "served"), "{r:?}");
    // A wrong password for the bus is the application's business.
    c.write(b"GET /app HTTP/1.1\r\nHost: t\r\nAuthorization: Basic eDp3cm9uZw==\r\n\r\n");
    let t = h.take();
    assert_eq!(t.env["headers"]["Authorization"], "Basic eDp3cm9uZw==");
    h.answer(&t.reply, TEXT_HEAD, &[b"also served"]);
    assert_eq!(c.response().text(), "also served");
}

// ---------------------------------------------------------------------------
// Whole replies: one message that is the complete HTTP response.

#[test]
fn a_whole_reply_is_the_response_in_one_message() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    c.get("/whole");
    let t = h.take();
    assert_eq!(h.body(&t), b"");
    h.send(
        &t.reply,
        None,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nX-Form: whole\r\n\r\nhello, world",
    );
    let r = c.response();
    assert_eq!((r.status, r.text().as_str()), (200, "hello, world"));
    assert_eq!(r.header("Content-Length"), Some("12"));
    assert_eq!(r.header("X-Form"), Some("whole"));
    assert_eq!(r.header("Server"), Some("switchboard"));
    assert_eq!(r.header("Transfer-Encoding"), None);
    assert_eq!(r.header("Connection"), None, "{}", r.head);
    // Keep-alive, and the next request may be answered in msglite's form.
    c.get("/next");
    let t = h.take();
    assert_eq!(t.url(), "/next");
    h.answer(&t.reply, TEXT_HEAD, &[b"in parts"]);
    assert_eq!(c.response().text(), "in parts");
    // A megabyte posted and echoed whole.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    c.write(
        format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    c.write(&big);
    let t = h.take();
    let body = h.body(&t);
    assert_eq!(body.len(), big.len());
    let mut whole =
        b"HTTP/1.1 201 Created\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    whole.extend_from_slice(&body);
    h.send(&t.reply, None, &whole);
    let r = c.response();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("Content-Length"), Some("1000000"));
    assert!(r.body == big, "the echoed megabyte differs");
    // An HTTP/1.0 client that asked for keep-alive keeps it.
    c.write(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let t = h.take();
    h.send(
        &t.reply,
        None,
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold",
    );
    let r = c.response();
    assert!(r.head.starts_with("HTTP/1.0 200 OK\r\n"), "{}", r.head);
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert_eq!(r.text(), "old");
    c.get("/still");
    let t = h.take();
    h.send(&t.reply, None, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(c.response().status, 204);
}

#[test]
fn a_bad_whole_reply_is_502_and_the_connection_stays() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    let bad: &[(&[u8], &str)] = &[
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", "without its end"),
        (
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nSet-Cookie\r\n\r\n",
            "not an HTTP/1.x response",
        ),
        (b"HTTP/1.1 299 Odd\r\n\r\n", "unknown status 299"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "Content-Length 10 but 5 bytes follow",
        ),
    ];
    for (message, says) in bad {
        c.get("/bad");
        let t = h.take();
        h.send(&t.reply, None, message);
        let r = c.response();
        assert_eq!(r.status, 502, "{}: {r:?}", show(message));
        assert!(
            r.text().contains("invalid reply: ") && r.text().contains(says),
            "{says}: {}",
            r.text()
        );
    }
    c.get("/good");
    let t = h.take();
    h.send(&t.reply, None, b"HTTP/1.1 200 OK\r\n\r\nfine");
    assert_eq!(c.response().text(), "fine");
}

/// The messages in queues now, as the stats page counts them.
fn queued(server: &Server) -> u64 {
    stats(server)["queues"]["queued"].as_u64().unwrap()
}

#[test]
fn an_empty_body_nobody_read_is_dropped_when_the_response_ends() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut probe = Handler::connect(&server);
    let mut c = Http::connect(&server);
    // Answered in parts, its empty body never read: once the response is
    // out, nothing waits on the body address, though the connection stays
    // open and idle. (The drop comes in the turn that ends the response,
    // before any later request of the stats page or the probe is read:
    // no polling.)
    c.get("/parts");
    let t = h.take();
    assert_eq!(queued(&server), 1);
    h.answer(&t.reply, TEXT_HEAD, &[b"parts"]);
    assert_eq!(c.response().text(), "parts");
    assert_eq!(queued(&server), 0);
    assert!(probe.ready(0, &[t.body_addr()]).is_none());
    // Answered whole.
    c.get("/whole");
    let t = h.take();
    h.send(&t.reply, None, b"HTTP/1.1 200 OK\r\n\r\nwhole");
    assert_eq!(c.response().text(), "whole");
    assert_eq!(queued(&server), 0);
    assert!(probe.ready(0, &[t.body_addr()]).is_none());
    // The client goes away before the head.
    let mut gone = Http::connect(&server);
    gone.get("/gone");
    let t = h.take();
    gone.s.shutdown(Shutdown::Both).unwrap();
    drop(gone);
    wait_queued(&server, 0);
    assert!(probe.ready(0, &[t.body_addr()]).is_none());
    // Read before the answer, as msglite's handlers do: still there.
    c.get("/read");
    let t = h.take();
    assert_eq!(h.body(&t), b"");
    h.answer(&t.reply, TEXT_HEAD, &[b"read"]);
    assert_eq!(c.response().text(), "read");
}

#[test]
fn a_body_with_bytes_waits_for_its_handler_after_the_response() {
    let server = start(&[]);
    let mut h = Handler::connect(&server);
    let mut c = Http::connect(&server);
    c.write(b"POST /later HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    let t = h.take();
    // Answered first (202), read afterwards: a handler may do that.
    h.answer(&t.reply, r#"["202"]"#, &[]);
    assert_eq!(c.response().status, 202);
    assert_eq!(queued(&server), 1);
    assert_eq!(h.body(&t), b"hello");
    assert_eq!(queued(&server), 0);
}

#[test]
fn a_full_queue_is_503_and_leaves_no_body_behind() {
    // Room on an address for a small body (its bytes and 64), not for an
    // envelope (about 200 bytes and 64).
    let server = start(&["--max-queued-bytes-per-address", "200"]);
    let mut c = Http::connect(&server);
    c.write(b"POST /full HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789");
    let r = c.response();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(
        r.text().contains("the handlers' queue is full"),
        "{}",
        r.text()
    );
    // The body went in before the envelope was refused; nobody will ever
    // learn its address, so it is gone too.
    assert_eq!(queued(&server), 0);
    assert_eq!(stats(&server)["queues"]["full"].as_u64(), Some(1));
}
