//! Several nodes as one bus through Redis (`--cluster`): Debian's
//! `redis-server`, started here on a free loopback port, and real
//! switchboard nodes.
//!
//! The port: one the kernel hands out for a listener bound to port 0,
//! released and given to `redis-server --port`; if another process takes
//! it first, Redis fails to bind and exits, and the start is retried on a
//! new port. (`--port 0` makes Redis listen on no TCP port at all.) A
//! restart reuses the port it had.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{connect, program, send, stat, Server, Stats, TempDir};

/// A `redis-server` of this test, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: TempDir,
    /// Settings given to `redis-server` after the port's.
    args: Vec<String>,
}

impl Redis {
    /// Starts Redis on a free port.
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Starts Redis on a free port with more settings (`--requirepass`).
    fn start_with(args: &[&str]) -> Redis {
        let dir = TempDir::new("redis");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(child) = spawn_redis(port, &dir, &args) {
                return Redis {
                    child,
                    port,
                    dir,
                    args,
                };
            }
        }
        panic!("redis-server did not start on any of 20 free ports");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it at once (no shutdown: connections just break).
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts it again on the same port.
    fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = spawn_redis(self.port, &self.dir, &self.args) {
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again on port {}",
                self.port
            );
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `redis-server` on `port`; `None` when it exits before it is ready
/// (the port was taken).
fn spawn_redis(port: u16, dir: &TempDir, args: &[String]) -> Option<Child> {
    let mut child = Command::new(program("redis-server"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ready to accept connections") {
                let _ = tx.send(true);
            }
        }
        let _ = tx.send(false);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(true) => Some(child),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--cluster", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Waits until the node's cluster link is up and Redis has confirmed
/// `subscriptions` subscriptions of it.
fn wait_joined(server: &Server, subscriptions: u64) {
    Stats::open(server.bus()).wait_for("the cluster link", |v| {
        v["cluster"]["up"] == true && stat(v, "cluster.confirmed") == subscriptions
    });
}

/// A connection a subscriber reads: plain TCP, or TLS over it.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A plain connection to `addr`.
fn plain(addr: &str) -> Box<dyn Stream> {
    Box::new(connect(addr))
}

/// A CA and a certificate for `localhost` and `127.0.0.1` signed by it,
/// made for this test; the PEM files live in a temp dir.
struct Pki {
    _dir: TempDir,
    cert: String,
    key: String,
    client: std::sync::Arc<rustls::ClientConfig>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let dir = TempDir::new("cluster-tls");
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_str().unwrap().to_string()
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "cluster test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file = write("ca.pem", &ca.pem());
        let client = switchboard::client::tls_config(std::path::Path::new(&ca_file)).unwrap();
        Pki {
            cert: write("node.pem", &cert.pem()),
            key: write("node.key", &key.serialize_pem()),
            client,
            _dir: dir,
        }
    }

    /// The arguments that give a node the TLS doors (`line-tls`, `bus-tls`).
    fn args(&self) -> Vec<&str> {
        vec![
            "--tls-cert",
            &self.cert,
            "--tls-key",
            &self.key,
            "--line-tls-listen",
            "127.0.0.1:0",
            "--bus-tls-listen",
            "127.0.0.1:0",
        ]
    }

    /// A TLS connection to `addr`, the certificate checked for `localhost`
    /// against the test's CA (the handshake runs with the first write).
    fn connect(&self, addr: &str) -> Box<dyn Stream> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(self.client.clone(), name).unwrap();
        Box::new(rustls::StreamOwned::new(conn, connect(addr)))
    }
}

/// How a subscriber subscribes: on the line protocol, or on the HTTP bus as
/// an event stream, a multipart stream or a WebSocket.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Line,
    Sse,
    Multipart,
    Ws,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Line, Kind::Sse, Kind::Multipart, Kind::Ws];

    /// The door it uses, in the clear (`line`, `bus`) or over TLS.
    fn door(self, tls: bool) -> &'static str {
        match (self, tls) {
            (Kind::Line, false) => "line",
            (Kind::Line, true) => "line-tls",
            (_, false) => "bus",
            (_, true) => "bus-tls",
        }
    }
}

/// A subscriber of any door; it collects message bodies.
enum Sub {
    Stream(Kind, BufReader<Box<dyn Stream>>),
    /// A webhook receiver attached to the channel ([`Hook`]).
    Hook(Hook),
}

/// Reads from `r` through the first `needle`; returns what it read.
fn read_through(r: &mut impl BufRead, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(needle) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap_or_else(|e| {
            panic!(
                "waiting for {:?}: {e}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&got)
            )
        });
        got.push(b[0]);
    }
    got
}

impl Sub {
    fn line(server: &Server, channel: &str) -> Sub {
        Sub::open(Kind::Line, plain(server.line()), channel)
    }

    fn sse(server: &Server, channel: &str) -> Sub {
        Sub::open(Kind::Sse, plain(server.bus()), channel)
    }

    fn ws(server: &Server, channel: &str) -> Sub {
        Sub::open(Kind::Ws, plain(server.bus()), channel)
    }

    /// Subscribes on `s` and returns once the node has registered the
    /// subscription (an answer it sent after registering it).
    fn open(kind: Kind, mut s: Box<dyn Stream>, channel: &str) -> Sub {
        let request = match kind {
            // `=` is answered in order after the `+`.
            Kind::Line => format!("+ {channel}\r\n= {channel}\r\n"),
            Kind::Sse => format!(
                "GET /msgbus/{channel} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
            ),
            Kind::Multipart => format!("GET /msgbus/{channel} HTTP/1.0\r\n\r\n"),
            Kind::Ws => format!(
                "GET /msgbus/{channel} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
        };
        send(&mut s, request.as_bytes());
        s.flush().unwrap();
        let mut r = BufReader::new(s);
        let (want, end): (String, &[u8]) = match kind {
            Kind::Line => (format!("= {channel} "), b"\r\n"),
            Kind::Sse => ("HTTP/1.1 200 ".into(), b": subscribed\n\n"),
            Kind::Multipart => ("HTTP/1.0 200 ".into(), b"\r\n\r\n--00MsgBus00\r\n"),
            Kind::Ws => ("HTTP/1.1 101 ".into(), b"\r\n\r\n"),
        };
        let head = String::from_utf8_lossy(&read_through(&mut r, end)).into_owned();
        assert!(head.starts_with(&want), "{kind:?} {channel}: {head:?}");
        Sub::Stream(kind, r)
    }

    /// The next message body.
    fn next(&mut self) -> String {
        let (kind, r) = match self {
            Sub::Stream(kind, r) => (*kind, r),
            Sub::Hook(hook) => return hook.next(),
        };
        match kind {
            Kind::Line => {
                let mut head = String::new();
                r.read_line(&mut head).unwrap();
                let fields: Vec<&str> = head.split_whitespace().collect();
                assert!(
                    fields.len() == 4 && fields[0] == "!",
                    "not a message: {head:?}"
                );
                let len: usize = fields[1].parse().unwrap();
                let mut body = vec![0u8; len + 2];
                r.read_exact(&mut body).unwrap();
                body.truncate(len);
                String::from_utf8(body).unwrap()
            }
            Kind::Sse => loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                assert!(!line.is_empty(), "the event stream ended");
                if let Some(data) = line.strip_prefix("data: ") {
                    return data.trim_end_matches('\n').to_string();
                }
            },
            Kind::Multipart => {
                let head = String::from_utf8_lossy(&read_through(r, b"\r\n\r\n")).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: ")?.trim().parse().ok())
                    .unwrap_or_else(|| panic!("a part without Content-Length: {head:?}"));
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                let mut delimiter = [0u8; 16];
                r.read_exact(&mut delimiter).unwrap();
                assert_eq!(&delimiter, b"\r\n--00MsgBus00\r\n");
                String::from_utf8(body).unwrap()
            }
            Kind::Ws => loop {
                let mut h = [0u8; 2];
                r.read_exact(&mut h).unwrap();
                assert_eq!(h[1] & 0x80, 0, "a masked frame from the server");
                let len = match h[1] & 0x7F {
                    126 => {
                        let mut n = [0u8; 2];
                        r.read_exact(&mut n).unwrap();
                        u16::from_be_bytes(n) as usize
                    }
                    127 => {
                        let mut n = [0u8; 8];
                        r.read_exact(&mut n).unwrap();
                        usize::try_from(u64::from_be_bytes(n)).unwrap()
                    }
                    n => n as usize,
                };
                let mut payload = vec![0u8; len];
                r.read_exact(&mut payload).unwrap();
                match h[0] {
                    // A text message in one frame.
                    0x81 => return String::from_utf8(payload).unwrap(),
                    // A heartbeat ping.
                    0x89 => {}
                    other => panic!("unexpected frame {other:#x}: {payload:?}"),
                }
            },
        }
    }
}

/// A webhook receiver on a loopback port of this test: it answers `200` to
/// every request, on as many keep-alive connections as the node opens, and
/// hands on each request's JSON body.
struct Hook {
    port: u16,
    got: mpsc::Receiver<Result<serde_json::Value, String>>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, got) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let tx = tx.clone();
                std::thread::spawn(move || serve_hook(conn, &tx));
            }
        });
        Hook { port, got }
    }

    /// Attaches it to `channel` on `server`'s hooks door.
    fn attach(&self, server: &Server, channel: &str) -> u64 {
        let body = serde_json::json!({
            "ClientURL": format!("http://127.0.0.1:{}/{channel}", self.port),
            "mode": "receive",
            "channel": channel,
        });
        let v = hooks_call(server, "/connect/", &body);
        v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
    }

    /// The body of the next message delivered; a delivery of another
    /// channel than `feed` (the tests' channel) fails.
    fn next(&mut self) -> String {
        let v = self
            .got
            .recv_timeout(Duration::from_secs(20))
            .expect("the webhook receiver got nothing for 20 s")
            .unwrap_or_else(|e| panic!("the webhook receiver: {e}"));
        assert_eq!(v["channel"], "feed", "{v}");
        v["body"]
            .as_str()
            .unwrap_or_else(|| panic!("no body in {v}"))
            .to_string()
    }
}

/// Serves one connection of a [`Hook`] until the node closes it.
fn serve_hook(s: TcpStream, tx: &mpsc::Sender<Result<serde_json::Value, String>>) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            match r.read(&mut b) {
                Ok(1) => head.push(b[0]),
                // Closed (or broken) between requests: nothing was lost.
                _ if head.is_empty() => return,
                _ => {
                    let _ = tx.send(Err(format!(
                        "a request cut short: {:?}",
                        String::from_utf8_lossy(&head)
                    )));
                    return;
                }
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let len = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
        let Some(len) = len.filter(|_| head.starts_with("POST ")) else {
            let _ = tx.send(Err(format!("not a POST with a length: {head:?}")));
            return;
        };
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            let _ = tx.send(Err(format!("a body cut short after {head:?}")));
            return;
        }
        let parsed = serde_json::from_slice(&body)
            .map_err(|e| format!("not JSON ({e}): {:?}", String::from_utf8_lossy(&body)));
        if tx.send(parsed).is_err()
            || w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .is_err()
        {
            return;
        }
    }
}

/// A POST of `body` to `path` on the node's hooks door; the JSON of its
/// `200` answer.
fn hooks_call(server: &Server, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let body = body.to_string();
    let mut s = connect(server.addr("hooks"));
    send(
        &mut s,
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let answer = String::from_utf8_lossy(&common::read_to_close(&mut s)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{path}: {answer}");
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: {e}: {json:?}"))
}

/// Publishes `p{publisher}-{i}` for `range` to `channel` on a line
/// connection.
fn publish(s: &mut TcpStream, channel: &str, publisher: usize, range: std::ops::Range<usize>) {
    let mut out = Vec::new();
    for i in range {
        let body = format!("p{publisher}-{i}");
        out.extend_from_slice(
            format!("! {} {channel} text/plain\r\n{body}\r\n", body.len()).as_bytes(),
        );
    }
    send(s, &out);
}

/// Publishes `p{publisher}-{i}` for `range` to `channel` with pipelined
/// `POST`s on one keep-alive connection to the HTTP bus, and reads their
/// `204`s.
fn http_publish(s: &mut TcpStream, channel: &str, publisher: usize, range: std::ops::Range<usize>) {
    let count = range.len();
    let mut out = Vec::new();
    for i in range {
        let body = format!("p{publisher}-{i}");
        out.extend_from_slice(
            format!(
                "POST /msgbus/{channel} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    send(s, &out);
    let answer = "HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n";
    let got = common::read_exact_n(s, answer.len() * count);
    assert_eq!(String::from_utf8_lossy(&got), answer.repeat(count));
}

/// Reads `count` messages and checks that each publisher's come in
/// order and once each; returns the numbers seen per publisher.
fn collect(sub: &mut Sub, count: usize) -> HashMap<usize, Vec<usize>> {
    let mut seen: HashMap<usize, Vec<usize>> = HashMap::new();
    for _ in 0..count {
        let body = sub.next();
        let (p, i) = body
            .strip_prefix('p')
            .and_then(|r| r.split_once('-'))
            .unwrap_or_else(|| panic!("not a test message: {body:?}"));
        let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
        let list = seen.entry(p).or_default();
        if let Some(&last) = list.last() {
            assert!(i > last, "publisher {p}: {i} after {last}");
        }
        list.push(i);
    }
    seen
}

/// Reads until publisher `p`'s message `n - 1` has arrived for each of
/// `publishers`, checking that each publisher's messages come in order;
/// then checks that each came once and none is missing.
fn collect_all(name: &str, sub: &mut Sub, publishers: usize, n: usize) {
    let mut seen: Vec<Vec<usize>> = vec![Vec::new(); publishers];
    while seen.iter().any(|l| l.last() != Some(&(n - 1))) {
        let body = sub.next();
        let (p, i) = body
            .strip_prefix('p')
            .and_then(|r| r.split_once('-'))
            .unwrap_or_else(|| panic!("{name}: not a test message: {body:?}"));
        let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
        let list = &mut seen[p];
        if let Some(&last) = list.last() {
            assert!(i > last, "{name}: publisher {p}: {i} after {last}");
        }
        list.push(i);
    }
    for (p, list) in seen.iter().enumerate() {
        assert_eq!(*list, (0..n).collect::<Vec<_>>(), "{name}: publisher {p}");
    }
}

#[test]
fn every_subscriber_on_every_node_gets_every_message_once_in_order() {
    const N: usize = 150;
    let redis = Redis::start();
    let pki = Pki::new();
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            let mut args = pki.args();
            if i == 1 {
                args.extend(["--hooks-listen", "127.0.0.1:0"]);
            }
            node(&redis, &args)
        })
        .collect();
    // On every node a subscriber of each kind in the clear; over TLS a
    // line subscriber and an event stream on node 0, a multipart stream
    // on node 1, a WebSocket on node 2.
    let mut subs: Vec<(String, Sub)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for kind in Kind::ALL {
            let sub = Sub::open(kind, plain(n.addr(kind.door(false))), "feed");
            subs.push((format!("{kind:?} on node {i}"), sub));
        }
    }
    for (i, kind) in [
        (0, Kind::Line),
        (0, Kind::Sse),
        (1, Kind::Multipart),
        (2, Kind::Ws),
    ] {
        let sub = Sub::open(kind, pki.connect(nodes[i].addr(kind.door(true))), "feed");
        subs.push((format!("{kind:?} over TLS on node {i}"), sub));
    }
    // An all-channel subscriber on the last node: it subscribes by
    // pattern too, and must still get each message once.
    subs.push(("all channels on node 2".into(), Sub::line(&nodes[2], "*")));
    // A webhook receiver attached to the channel on node 1.
    let hook = Hook::start();
    hook.attach(&nodes[1], "feed");
    subs.push(("webhook on node 1".into(), Sub::Hook(hook)));
    for (i, n) in nodes.iter().enumerate() {
        wait_joined(n, if i == 2 { 2 } else { 1 });
    }
    // Two publishers on each node: 2i on the line protocol, 2i + 1 with
    // POSTs on the HTTP bus.
    let mut lines: Vec<TcpStream> = nodes.iter().map(|n| connect(n.line())).collect();
    let mut posts: Vec<TcpStream> = nodes.iter().map(|n| connect(n.bus())).collect();
    for i in 0..3 {
        publish(&mut lines[i], "feed", 2 * i, 0..N);
        http_publish(&mut posts[i], "feed", 2 * i + 1, 0..N);
    }
    for (name, sub) in &mut subs {
        collect_all(name, sub, 6, N);
    }
    // Nothing more comes: each line publisher's `end`, published once
    // every subscriber (on every node) has had everything, reaches each
    // subscriber after any late copy of another node's messages (one
    // link, one Redis connection, in order) and after any echo of its own
    // node's (Redis had sent those before it took the `end`s of the others).
    for (i, s) in lines.iter_mut().enumerate() {
        publish_one(s, "feed", &format!("end{i}"));
    }
    for (name, sub) in &mut subs {
        let mut ends: Vec<String> = (0..3).map(|_| sub.next()).collect();
        ends.sort();
        assert_eq!(ends, ["end0", "end1", "end2"], "{name}");
    }
    for n in &nodes {
        let v = Stats::open(n.bus()).get();
        assert_eq!(stat(&v, "cluster.sent"), 2 * N as u64 + 1, "{v}");
        assert_eq!(stat(&v, "cluster.received"), 2 * (2 * N as u64 + 1), "{v}");
        assert_eq!(stat(&v, "cluster.dropped"), 0, "{v}");
    }
}

#[test]
fn a_webhook_receiver_is_enough_for_its_node_to_get_the_channel_from_the_others() {
    let redis = Redis::start();
    let a = node(&redis, &["--hooks-listen", "127.0.0.1:0"]);
    let b = node(&redis, &[]);
    wait_joined(&a, 0);
    wait_joined(&b, 0);
    // No subscriber of `feed` on A: the receiver alone subscribes A to it.
    let hook = Hook::start();
    let id = hook.attach(&a, "feed");
    wait_joined(&a, 1);
    let mut publisher = connect(b.line());
    publish(&mut publisher, "feed", 0, 0..20);
    let mut hook = Sub::Hook(hook);
    assert_eq!(collect(&mut hook, 20)[&0], (0..20).collect::<Vec<_>>());
    // Detached, it takes A's subscription with it.
    let v = hooks_call(&a, "/disconnect/", &serde_json::json!({ "id": id }));
    assert_eq!(v["message"], "Disconnected.", "{v}");
    wait_joined(&a, 0);
    // A subscriber, then a receiver, then the subscriber gone: A stays
    // subscribed while either is there.
    let mut sub = BufReader::new(connect(a.line()));
    send(sub.get_mut(), b"+ feed\r\n= feed\r\n");
    let mut answer = String::new();
    sub.read_line(&mut answer).unwrap();
    assert!(answer.starts_with("= feed 1 "), "{answer:?}");
    wait_joined(&a, 1);
    let mut hook = Hook::start();
    hook.attach(&a, "feed");
    // The subscriber leaves `feed` and takes another channel: once Redis
    // has confirmed that one, it has taken whatever A asked before it.
    send(sub.get_mut(), b"~ feed\r\n+ other\r\n");
    wait_joined(&a, 2);
    publish(&mut publisher, "feed", 0, 20..30);
    let got: Vec<String> = (0..10).map(|_| hook.next()).collect();
    assert_eq!(got, (20..30).map(|i| format!("p0-{i}")).collect::<Vec<_>>());
}

#[test]
fn a_killed_node_costs_the_others_nothing() {
    const N: usize = 400;
    let redis = Redis::start();
    let mut nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    let mut subs: Vec<Sub> = vec![
        Sub::line(&nodes[0], "feed"),
        Sub::sse(&nodes[1], "feed"),
        Sub::ws(&nodes[1], "feed"),
    ];
    let _doomed_sub = Sub::line(&nodes[2], "feed");
    for n in &nodes {
        wait_joined(n, 1);
    }
    let mut publishers: Vec<TcpStream> = nodes.iter().map(|n| connect(n.line())).collect();
    for (p, s) in publishers.iter_mut().enumerate() {
        publish(s, "feed", p, 0..N / 2);
    }
    // Node 2 dies mid-stream; the others go on publishing.
    let mut gone = nodes.pop().unwrap();
    gone.signal(9);
    gone.wait_exit(Duration::from_secs(10));
    for (p, s) in publishers.iter_mut().enumerate().take(2) {
        publish(s, "feed", p, N / 2..N);
    }
    // A probe from each live node after everything else: once both have
    // arrived, every message of the live publishers has.
    for (p, s) in publishers.iter_mut().enumerate().take(2) {
        let probe = format!("probe{p}");
        send(
            s,
            format!("! {} feed text/plain\r\n{probe}\r\n", probe.len()).as_bytes(),
        );
    }
    for sub in &mut subs {
        let mut seen: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut probes = 0;
        while probes < 2 {
            let body = sub.next();
            if body.starts_with("probe") {
                probes += 1;
                continue;
            }
            let (p, i) = body[1..].split_once('-').unwrap();
            let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
            let list = seen.entry(p).or_default();
            assert!(
                list.last().is_none_or(|&l| i > l),
                "publisher {p} out of order"
            );
            list.push(i);
        }
        for p in 0..2 {
            assert_eq!(seen[&p], (0..N).collect::<Vec<_>>(), "publisher {p}");
        }
        // What the dead node published before it died: a prefix, in order.
        let dead = seen.get(&2).cloned().unwrap_or_default();
        assert_eq!(dead, (0..dead.len()).collect::<Vec<_>>());
    }
}

#[test]
fn after_a_redis_restart_delivery_resumes_and_the_gap_is_counted() {
    let mut redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut remote = Sub::sse(&b, "feed");
    let mut remote_ws = Sub::ws(&b, "feed");
    let mut local = Sub::line(&a, "feed");
    let mut root = Sub::line(&b, "*");
    wait_joined(&a, 1);
    wait_joined(&b, 2);
    let mut publisher = connect(a.line());
    publish(&mut publisher, "feed", 0, 0..50);
    for sub in [&mut remote, &mut remote_ws, &mut local, &mut root] {
        assert_eq!(collect(sub, 50)[&0], (0..50).collect::<Vec<_>>());
    }

    redis.kill();
    for n in [&a, &b] {
        Stats::open(n.bus()).wait_for("both links down", |v| stat(v, "cluster.links_up") == 0);
        let health = http_get(n.bus(), "/healthz");
        assert!(health.starts_with("HTTP/1.1 503 "), "{health}");
    }
    // While Redis is away local subscribers still get everything; the
    // other node's get nothing, and the publishes are counted as dropped.
    publish(&mut publisher, "feed", 0, 50..70);
    assert_eq!(collect(&mut local, 20)[&0], (50..70).collect::<Vec<_>>());
    let v = Stats::open(a.bus()).get();
    assert_eq!(stat(&v, "cluster.dropped"), 20);

    redis.restart();
    // Node b's subscriptions (the channel and the pattern) are restored.
    wait_joined(&a, 1);
    wait_joined(&b, 2);
    publish(&mut publisher, "feed", 0, 70..120);
    // The first message after the gap is 70: nothing of the gap is
    // delivered late, nothing after it is lost.
    for sub in [&mut remote, &mut remote_ws, &mut root] {
        assert_eq!(collect(sub, 50)[&0], (70..120).collect::<Vec<_>>());
    }
    assert_eq!(collect(&mut local, 50)[&0], (70..120).collect::<Vec<_>>());
    for n in [&a, &b] {
        let v = Stats::open(n.bus()).get();
        assert!(stat(&v, "cluster.link_downs") >= 2, "{v}");
        let health = http_get(n.bus(), "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 "), "{health}");
    }
}

/// One message with body `body` to `channel`.
fn publish_one(s: &mut TcpStream, channel: &str, body: &str) {
    send(
        s,
        format!("! {} {channel} text/plain\r\n{body}\r\n", body.len()).as_bytes(),
    );
}

#[test]
fn pattern_subscribers_get_other_nodes_messages_once_also_after_a_redis_restart() {
    const N: usize = 100;
    let mut redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    // On node b, four subscriptions that each match sensors.x.temp: Redis
    // sends b one copy per match (the channel, two globs, the root's).
    let mut star = Sub::line(&b, "sensors.*.temp");
    let mut exact = Sub::line(&b, "sensors.x.temp");
    let mut rest = Sub::line(&b, "sensors.>");
    let mut root = Sub::line(&b, "*");
    // On the publishing node: its own messages once, no echo.
    let mut local = Sub::line(&a, "sensors.*.temp");
    wait_joined(&a, 1);
    wait_joined(&b, 4);
    let mut publisher = connect(a.line());
    for round in 0..2 {
        let range = round * N..(round + 1) * N;
        publish(&mut publisher, "sensors.x.temp", 0, range.clone());
        // Matches `sensors.>` and the root only (Redis' glob for
        // `sensors.*.temp` matches it too: b must not deliver it there).
        publish_one(&mut publisher, "sensors.x.y.temp", "deeper");
        publish_one(&mut publisher, "sensors.x.temp", "probe");
        for sub in [&mut star, &mut exact, &mut local] {
            assert_eq!(collect(sub, N)[&0], range.clone().collect::<Vec<_>>());
            assert_eq!(sub.next(), "probe");
        }
        for sub in [&mut rest, &mut root] {
            assert_eq!(collect(sub, N)[&0], range.clone().collect::<Vec<_>>());
            assert_eq!(sub.next(), "deeper");
            assert_eq!(sub.next(), "probe");
        }
        if round == 0 {
            // Redis restarts: the patterns are asked for again.
            redis.kill();
            for n in [&a, &b] {
                Stats::open(n.bus())
                    .wait_for("both links down", |v| stat(v, "cluster.links_up") == 0);
            }
            redis.restart();
            wait_joined(&a, 1);
            wait_joined(&b, 4);
        }
    }
    let v = Stats::open(b.bus()).get();
    assert_eq!(stat(&v, "cluster.received"), 2 * (N as u64 + 2), "{v}");
    assert_eq!(
        stat(&v, "cluster.copies"),
        2 * (3 * N as u64 + 3 + 2),
        "{v}"
    );
    let v = Stats::open(a.bus()).get();
    assert_eq!(stat(&v, "cluster.echoes"), 2 * (N as u64 + 2), "{v}");
    // The pattern's last subscriber on b leaves: so does b's subscription.
    drop(star);
    wait_joined(&b, 3);
}

/// The installed `redis-server`'s major version.
fn redis_major() -> u32 {
    let out = Command::new(program("redis-server"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no version in {text:?}"))
}

/// `PUBSUB what channel` on its own connection to Redis: the number it
/// answers for the channel.
fn pubsub_count(redis: &Redis, what: &str, channel: &str) -> i64 {
    let mut s = connect(&format!("127.0.0.1:{}", redis.port));
    let args = ["PUBSUB", what, channel];
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    send(&mut s, cmd.as_bytes());
    // *2, the channel, then :N
    let mut answer = Vec::new();
    let mut count = None;
    while count.is_none() {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        answer.push(b[0]);
        if answer.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&answer).into_owned();
            count = text
                .rsplit_once("\r\n:")
                .map(|(_, n)| n.trim().parse::<i64>().unwrap());
        }
    }
    assert!(answer.starts_with(b"*2\r\n"), "{answer:?}");
    count.unwrap()
}

#[test]
fn sharded_pub_sub_when_redis_has_it_and_restored_after_a_restart() {
    let mut redis = Redis::start();
    let sharded = redis_major() >= 7;
    let a = node(&redis, &["--cluster-sharded"]);
    let b = node(&redis, &["--cluster-sharded"]);
    let mut remote = Sub::line(&b, "feed");
    let mut local = Sub::line(&a, "feed");
    let mut publisher = connect(a.line());
    for round in 0..2 {
        wait_joined(&a, 1);
        wait_joined(&b, 1);
        for n in [&a, &b] {
            let v = Stats::open(n.bus()).get();
            assert_eq!(v["cluster"]["sharded"], sharded, "{v}");
        }
        // Redis holds the subscriptions as shard channels (or classic
        // ones, before 7.0).
        let (kind, other) = if sharded {
            ("SHARDNUMSUB", "NUMSUB")
        } else {
            ("NUMSUB", "NUMSUB")
        };
        assert_eq!(pubsub_count(&redis, kind, "switchboard:feed"), 2);
        if sharded {
            assert_eq!(pubsub_count(&redis, other, "switchboard:feed"), 0);
        }
        let range = round * 50..(round + 1) * 50;
        publish(&mut publisher, "feed", 0, range.clone());
        for sub in [&mut remote, &mut local] {
            assert_eq!(collect(sub, 50)[&0], range.clone().collect::<Vec<_>>());
        }
        if round == 0 {
            redis.kill();
            for n in [&a, &b] {
                Stats::open(n.bus())
                    .wait_for("both links down", |v| stat(v, "cluster.links_up") == 0);
            }
            redis.restart();
        }
    }
}

#[test]
fn sharded_pub_sub_falls_back_to_classic_when_redis_refuses_it() {
    if redis_major() < 7 {
        // The test above checks the fallback on this Redis: it has no
        // sharded pub/sub (and its ACLs do not know the commands).
        return;
    }
    // An ACL user that may not use the sharded commands.
    let redis = Redis::start_with(&[
        "--user",
        "plain",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-ssubscribe",
        "-sunsubscribe",
        "-spublish",
    ]);
    let url = format!("redis://plain:pw@127.0.0.1:{}", redis.port);
    let a = Server::start(&["--cluster", &url, "--cluster-sharded"]);
    let b = Server::start(&["--cluster", &url, "--cluster-sharded"]);
    let mut remote = Sub::line(&b, "feed");
    wait_joined(&a, 0);
    wait_joined(&b, 1);
    for n in [&a, &b] {
        let v = Stats::open(n.bus()).get();
        assert_eq!(v["cluster"]["sharded"], false, "{v}");
        let log = n.wait_log("has no sharded pub/sub");
        assert!(log.contains("NOPERM"), "{log}");
    }
    assert_eq!(pubsub_count(&redis, "NUMSUB", "switchboard:feed"), 1);
    let mut publisher = connect(a.line());
    publish(&mut publisher, "feed", 0, 0..50);
    assert_eq!(collect(&mut remote, 50)[&0], (0..50).collect::<Vec<_>>());
}

#[test]
fn redis_unreachable_at_start_exits_2_unless_optional() {
    // A port that takes connections and closes them unanswered: nobody
    // else can be listening there while the test holds it.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = mute.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in mute.incoming() {
            drop(conn);
        }
    });
    let url = format!("redis://127.0.0.1:{port}");
    let out = run_to_exit(&[
        "--cluster",
        &url,
        "--line-listen",
        "127.0.0.1:0",
        "--bus-listen",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unreachable") && err.contains("--cluster-optional"),
        "{err}"
    );

    let bad = run_to_exit(&["--cluster", "http://x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--cluster:"));

    // Optional: it starts alone, healthy, and says the link is down.
    let redis = Redis::start();
    let url = redis.url();
    let mut gone = redis;
    gone.kill();
    let lone = Server::start(&["--cluster", &url, "--cluster-optional"]);
    // The failed connect names the address it tried, the Redis of the URL.
    let log = lone.wait_log("link to Redis at");
    assert!(
        log.contains(&format!(
            "link to Redis at 127.0.0.1:{} failed: connect 127.0.0.1:{}: ",
            gone.port, gone.port
        )),
        "{log}"
    );
    let health = http_get(lone.bus(), "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200 ") && health.contains("cluster link down"),
        "{health}"
    );
    let v = Stats::open(lone.bus()).get();
    assert_eq!(v["cluster"]["up"], false);
    // Redis comes: the node joins.
    gone.restart();
    wait_joined(&lone, 0);
    let health = http_get(lone.bus(), "/healthz");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
}

#[test]
fn a_password_protected_redis_takes_the_credentials_of_the_url_and_they_are_never_logged() {
    const PASSWORD: &str = "s3cret-default";
    const ALICE: &str = "w0nderland-alice";
    const WRONG: &str = "n0t-the-password";
    let mut redis = Redis::start_with(&[
        "--requirepass",
        PASSWORD,
        "--user",
        "alice",
        "on",
        &format!(">{ALICE}"),
        "~*",
        "&*",
        "+@all",
    ]);
    let at = format!("127.0.0.1:{}", redis.port);
    // The default user (`:PASSWORD@`) and an ACL user (`USER:PASSWORD@`,
    // its password %-escaped in part).
    let default_url = format!("redis://:{PASSWORD}@{at}");
    let alice_url = format!("redis://alice:w0nderland%2Dalice@{at}/0");
    let a = Server::start(&["--cluster", &default_url, "--log-level", "debug"]);
    let b = Server::start(&["--cluster", &alice_url, "--log-level", "debug"]);
    let mut remote = Sub::line(&b, "feed");
    wait_joined(&a, 0);
    wait_joined(&b, 1);
    let mut publisher = connect(a.line());
    publish(&mut publisher, "feed", 0, 0..20);
    assert_eq!(collect(&mut remote, 20)[&0], (0..20).collect::<Vec<_>>());
    // Redis restarts: each link authenticates again before it subscribes.
    redis.kill();
    for n in [&a, &b] {
        Stats::open(n.bus()).wait_for("both links down", |v| stat(v, "cluster.links_up") == 0);
    }
    redis.restart();
    wait_joined(&a, 0);
    wait_joined(&b, 1);
    publish(&mut publisher, "feed", 0, 20..40);
    assert_eq!(collect(&mut remote, 20)[&0], (20..40).collect::<Vec<_>>());

    // A wrong password, or none: exit 2 with a reason, the password not in it.
    let wrong_url = format!("redis://:{WRONG}@{at}");
    for (url, reason) in [
        (wrong_url.as_str(), "refused the user and password"),
        (redis.url().as_str(), "wants a password"),
    ] {
        let out = run_to_exit(&[
            "--cluster",
            url,
            "--line-listen",
            "127.0.0.1:0",
            "--bus-listen",
            "127.0.0.1:0",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(reason) && !err.contains(WRONG), "{err}");
    }
    // A URL that cannot be read is refused without showing the password.
    let bad = run_to_exit(&["--cluster", &format!("redis://:{WRONG}@{at}/x")]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("***@") && !err.contains(WRONG), "{err}");

    // With --cluster-optional the node starts, says why its links are
    // refused, and counts it; the link is not up.
    let refused = Server::start(&[
        "--cluster",
        &wrong_url,
        "--cluster-optional",
        "--log-level",
        "debug",
    ]);
    let log = refused.wait_log("refused the publisher link");
    refused.wait_log("refused the subscriber link");
    assert!(log.contains("WRONGPASS"), "{log}");
    let v = Stats::open(refused.bus()).get();
    assert_eq!(v["cluster"]["up"], false);
    assert!(stat(&v, "cluster.errors") >= 2, "{v}");
    let health = http_get(refused.bus(), "/healthz");
    assert!(health.contains("cluster link down"), "{health}");

    for (server, secret) in [(&a, PASSWORD), (&b, ALICE), (&refused, WRONG)] {
        let log = server.stderr_text();
        assert!(log.contains("cluster"), "{log}");
        assert!(!log.contains(secret), "the password is in the log: {log}");
    }
}

/// Runs the server with `args` and waits for it to exit by itself: one
/// that is still running after 20 s is killed and the test fails.
fn run_to_exit(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "switchboard {args:?} did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// One GET on its own connection; the whole answer.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = connect(addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    String::from_utf8_lossy(&common::read_to_close(&mut s)).into_owned()
}

// ---- Line-protocol queues across nodes -------------------------------

/// A message as a receiver reads it: `(to, reply, timeout, body)`, or
/// `None` for `*` (the wait timed out).
type QueueMessage = Option<(String, Option<String>, u64, String)>;

/// Reads one answer to `<` or `?`.
fn read_answer(r: &mut BufReader<TcpStream>) -> QueueMessage {
    let mut head = String::new();
    r.read_line(&mut head).unwrap();
    if head == "*\r\n" {
        return None;
    }
    let fields: Vec<&str> = head.split_whitespace().collect();
    assert!(
        (4..=5).contains(&fields.len()) && fields[0] == ">",
        "not a queue message: {head:?}"
    );
    let len: usize = fields[1].parse().unwrap();
    let mut body = vec![0u8; len + 2];
    r.read_exact(&mut body).unwrap();
    body.truncate(len);
    Some((
        fields[3].to_string(),
        fields.get(4).map(|s| s.to_string()),
        fields[2].parse().unwrap(),
        String::from_utf8(body).unwrap(),
    ))
}

/// `> LEN TIMEOUT TO [REPLY]` + body.
fn queue_send(s: &mut impl Write, to: &str, reply: Option<&str>, timeout: u64, body: &str) {
    let reply = reply.map_or(String::new(), |r| format!(" {r}"));
    send(
        s,
        format!("> {} {timeout} {to}{reply}\r\n{body}\r\n", body.len()).as_bytes(),
    );
}

/// A line connection that waits (`< TIMEOUT ADDRESS`) and reads answers.
fn receiver(server: &Server) -> BufReader<TcpStream> {
    BufReader::new(connect(server.line()))
}

fn ready(r: &mut BufReader<TcpStream>, timeout: u64, address: &str) {
    send(r.get_mut(), format!("< {timeout} {address}\r\n").as_bytes());
}

/// Waits until the node listens for `n` queue addresses in Redis
/// (receivers wait there and the notification channels are subscribed)
/// and has `waiting` receivers.
fn wait_listening(server: &Server, n: u64, waiting: u64) {
    Stats::open(server.bus()).wait_for("the node listening for queue addresses", |v| {
        stat(v, "cluster.queues.listening") == n
            && stat(v, "queues.waiting") == waiting
            && stat(v, "cluster.queues.in_flight") == 0
    });
}

/// One command on its own connection to Redis; its answer's first line
/// (an integer, a simple string, or a bulk's length).
fn redis_cmd(redis: &Redis, args: &[&str]) -> String {
    let mut s = connect(&format!("127.0.0.1:{}", redis.port));
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    send(&mut s, cmd.as_bytes());
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn a_queue_message_sent_on_one_node_reaches_a_receiver_on_another() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    // All-channel subscribers on both nodes: queue traffic must not reach
    // them.
    let mut roots = [Sub::line(&a, "*"), Sub::line(&b, "*")];
    wait_joined(&a, 1);
    wait_joined(&b, 1);
    // A receiver waits on b; the sender is on a.
    let mut rx = receiver(&b);
    ready(&mut rx, 30, "jobs");
    wait_listening(&b, 1, 1);
    let mut tx = connect(a.line());
    queue_send(&mut tx, "jobs", Some("back"), 30, "first");
    assert_eq!(
        read_answer(&mut rx),
        Some(("jobs".into(), Some("back".into()), 30, "first".into()))
    );
    // Sent while nobody waits anywhere: kept in Redis, taken by a
    // receiver that comes later on the other node.
    queue_send(&mut tx, "later", None, 30, "kept");
    Stats::open(a.bus()).wait_for("the send in Redis", |v| {
        stat(v, "cluster.queues.sent") == 2 && stat(v, "cluster.queues.watched") == 0
    });
    ready(&mut rx, 30, "later");
    assert_eq!(
        read_answer(&mut rx),
        Some(("later".into(), None, 30, "kept".into()))
    );
    let v = Stats::open(b.bus()).get();
    assert_eq!(stat(&v, "cluster.queues.read"), 2, "{v}");
    assert_eq!(stat(&v, "queues.queued"), 0, "{v}");
    // A receiver and a sender on one node: handed over there, not through
    // Redis.
    let mut local = receiver(&a);
    ready(&mut local, 30, "here");
    wait_listening(&a, 1, 1);
    queue_send(&mut tx, "here", None, 30, "local");
    assert_eq!(
        read_answer(&mut local),
        Some(("here".into(), None, 30, "local".into()))
    );
    assert_eq!(stat(&Stats::open(a.bus()).get(), "cluster.queues.sent"), 2);
    // The first thing the all-channel subscribers get is a channel
    // message published after all of it.
    publish_one(&mut tx, "probe", "probe");
    for root in &mut roots {
        assert_eq!(root.next(), "probe");
    }
    for n in [&a, &b] {
        let v = Stats::open(n.bus()).get();
        assert_eq!(stat(&v, "cluster.errors"), 0, "{v}");
    }
}

#[test]
fn a_query_on_one_node_is_answered_by_a_handler_on_another() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_joined(&a, 0);
    wait_joined(&b, 0);
    let mut handler = receiver(&b);
    ready(&mut handler, 30, "svc");
    wait_listening(&b, 1, 1);
    let mut asker = receiver(&a);
    send(asker.get_mut(), b"? 4 30 svc\r\nping\r\n");
    let (to, reply, _, body) = read_answer(&mut handler).unwrap();
    assert_eq!((to.as_str(), body.as_str()), ("svc", "ping"));
    let reply = reply.expect("a reply address");
    // The reply crosses back to the asker's node.
    queue_send(handler.get_mut(), &reply, None, 30, "pong");
    assert_eq!(
        read_answer(&mut asker),
        Some((reply.clone(), None, 30, "pong".into()))
    );
    // The reply address' stream expires from Redis by itself (its
    // messages' timeout, 30 s, plus a second; here made short by a
    // query of 1 s).
    send(asker.get_mut(), b"? 5 1 svc\r\nping2\r\n");
    ready(&mut handler, 30, "svc");
    let (_, reply, _, body) = read_answer(&mut handler).unwrap();
    assert_eq!(body, "ping2");
    let reply = reply.unwrap();
    queue_send(handler.get_mut(), &reply, None, 1, "pong2");
    assert_eq!(read_answer(&mut asker).unwrap().3, "pong2");
    let key = format!("qswitchboard:{reply}");
    let ttl: i64 = redis_cmd(&redis, &["PTTL", &key])[1..].parse().unwrap();
    assert!(ttl > 0 && ttl <= 2_000, "PTTL {key}: {ttl}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_cmd(&redis, &["EXISTS", &key]) != ":0" {
        assert!(Instant::now() < deadline, "{key} still in Redis");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_senders_queue_messages_keep_their_order_across_nodes() {
    const N: usize = 300;
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_joined(&a, 0);
    wait_joined(&b, 0);
    let mut tx = connect(a.line());
    let mut rx = receiver(&b);
    // Half sent before the receiver comes, half while it takes them.
    let mut out = Vec::new();
    for i in 0..N / 2 {
        let body = format!("m{i}");
        out.extend_from_slice(format!("> {} 30 ordered\r\n{body}\r\n", body.len()).as_bytes());
    }
    send(&mut tx, &out);
    for i in 0..N {
        if i == N / 2 {
            let mut out = Vec::new();
            for j in N / 2..N {
                let body = format!("m{j}");
                out.extend_from_slice(
                    format!("> {} 30 ordered\r\n{body}\r\n", body.len()).as_bytes(),
                );
            }
            send(&mut tx, &out);
        }
        ready(&mut rx, 30, "ordered");
        let got = read_answer(&mut rx).unwrap().3;
        assert_eq!(got, format!("m{i}"));
    }
}

#[test]
fn a_queue_message_expires_in_redis() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_joined(&a, 0);
    wait_joined(&b, 0);
    let mut tx = connect(a.line());
    // A message of 1 s, then the probe, of 30 s (which also keeps the
    // stream from expiring as a whole).
    queue_send(&mut tx, "exp", None, 1, "stale");
    queue_send(&mut tx, "exp", None, 30, "probe");
    Stats::open(a.bus()).wait_for("the sends in Redis", |v| {
        stat(v, "cluster.queues.sent") == 2 && stat(v, "cluster.queues.watched") == 0
    });
    // Redis' own clock passes the message's deadline (1 s after it came).
    let time = |r: &Redis| -> u64 {
        let mut s = connect(&format!("127.0.0.1:{}", r.port));
        send(&mut s, b"*1\r\n$4\r\nTIME\r\n");
        let mut r = BufReader::new(s);
        let mut lines = Vec::new();
        for _ in 0..5 {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            lines.push(l.trim_end().to_string());
        }
        lines[2].parse::<u64>().unwrap()
    };
    let start = time(&redis);
    let deadline = Instant::now() + Duration::from_secs(20);
    while time(&redis) < start + 2 {
        assert!(Instant::now() < deadline, "Redis' clock stands still");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The receiver gets the probe, never the expired message before it.
    let mut rx = receiver(&b);
    ready(&mut rx, 30, "exp");
    assert_eq!(read_answer(&mut rx).unwrap().3, "probe");
    let v = Stats::open(b.bus()).get();
    assert_eq!(stat(&v, "cluster.queues.expired"), 1, "{v}");
    assert_eq!(stat(&v, "cluster.queues.read"), 1, "{v}");
}

#[test]
fn queue_sends_stay_local_while_redis_is_away_and_cross_again_after() {
    let mut redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    wait_joined(&a, 0);
    wait_joined(&b, 0);
    let mut tx = connect(a.line());
    let mut rx = receiver(&b);
    ready(&mut rx, 60, "work");
    wait_listening(&b, 1, 1);
    queue_send(&mut tx, "work", None, 30, "before");
    assert_eq!(read_answer(&mut rx).unwrap().3, "before");

    redis.kill();
    for n in [&a, &b] {
        Stats::open(n.bus()).wait_for("the links down", |v| stat(v, "cluster.links_up") == 0);
    }
    // While Redis is away a send stays on its node, counted, for that
    // node's receivers.
    ready(&mut rx, 60, "work");
    queue_send(&mut tx, "work", None, 30, "while away");
    Stats::open(a.bus()).wait_for("the send kept here", |v| {
        stat(v, "cluster.queues.local") == 1 && stat(v, "queues.queued") == 1
    });
    let mut here = receiver(&a);
    ready(&mut here, 30, "work");
    assert_eq!(read_answer(&mut here).unwrap().3, "while away");

    redis.restart();
    wait_joined(&a, 0);
    wait_joined(&b, 0);
    // b's receiver, waiting since before, is listened for again.
    wait_listening(&b, 1, 1);
    queue_send(&mut tx, "work", None, 30, "after");
    assert_eq!(read_answer(&mut rx).unwrap().3, "after");
    let v = Stats::open(a.bus()).get();
    assert_eq!(stat(&v, "cluster.queues.sent"), 2, "{v}");
    assert_eq!(stat(&v, "cluster.queues.local"), 1, "{v}");
}

#[test]
fn a_proxy_request_on_one_node_is_served_by_a_handler_on_another() {
    let redis = Redis::start();
    let a = node(&redis, &["--proxy-listen", "127.0.0.1:0"]);
    let b = node(&redis, &[]);
    wait_joined(&a, 0);
    wait_joined(&b, 0);
    let mut handler = receiver(&b);
    ready(&mut handler, 30, "msglite.httpRequests");
    wait_listening(&b, 1, 1);
    let mut client = connect(a.addr("proxy"));
    send(
        &mut client,
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nworld",
    );
    let (_, reply, _, envelope) = read_answer(&mut handler).unwrap();
    let env: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(env["url"], "/hello", "{env}");
    // The request body, sent by node a, from b.
    ready(&mut handler, 30, env["bodyAddr"].as_str().unwrap());
    assert_eq!(read_answer(&mut handler).unwrap().3, "world");
    let reply = reply.unwrap();
    let w = handler.get_mut();
    queue_send(
        w,
        &reply,
        None,
        30,
        r#"["200", ["Content-Type", "text/plain"]]"#,
    );
    queue_send(w, &reply, None, 30, "hello, ");
    queue_send(w, &reply, None, 30, "world");
    send(w, format!("> 0 30 {reply}\r\n").as_bytes());
    let response = String::from_utf8_lossy(&common::read_to_close(&mut client)).into_owned();
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(
        response.ends_with("\r\n\r\n7\r\nhello, \r\n5\r\nworld\r\n0\r\n\r\n"),
        "{response}"
    );
}

#[test]
fn receivers_on_several_nodes_share_one_senders_messages_once_each() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const N: usize = 200;
    let redis = Redis::start();
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    for n in &nodes {
        wait_joined(n, 0);
    }
    // Three receivers on each of the first two nodes; the sender on the
    // third.
    let got = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for n in &nodes[..2] {
        for _ in 0..3 {
            let mut rx = receiver(n);
            let got = Arc::clone(&got);
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut mine = Vec::new();
                while got.load(Ordering::SeqCst) < N {
                    assert!(Instant::now() < deadline, "only {got:?} of {N} taken");
                    ready(&mut rx, 1, "shared");
                    if let Some((_, _, _, body)) = read_answer(&mut rx) {
                        mine.push(body[1..].parse::<usize>().unwrap());
                        got.fetch_add(1, Ordering::SeqCst);
                    }
                }
                mine
            }));
        }
    }
    let mut tx = connect(nodes[2].line());
    let mut out = Vec::new();
    for i in 0..N {
        let body = format!("m{i}");
        out.extend_from_slice(format!("> {} 60 shared\r\n{body}\r\n", body.len()).as_bytes());
    }
    send(&mut tx, &out);
    let mut all = Vec::new();
    for t in threads {
        let mine = t.join().unwrap();
        // One sender's messages: each receiver gets them in order.
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        all.extend(mine);
    }
    all.sort_unstable();
    assert_eq!(all, (0..N).collect::<Vec<_>>());
}

// ---- message-switch queues across nodes ----

/// A keep-alive HTTP/1.1 connection to a node's message-switch door.
struct Switch {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Switch {
    fn open(server: &Server) -> Switch {
        Switch {
            s: connect(server.addr("switch")),
            buf: Vec::new(),
        }
    }

    /// One call: (status, body).
    fn ask(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut r = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        send(&mut self.s, &r);
        self.read()
    }

    /// The next response: (status, body).
    fn read(&mut self) -> (u16, String) {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head[9..12].parse().unwrap();
        let len: usize = common::content_length(&head);
        while self.buf.len() < head_end + len {
            self.fill();
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + len]).into_owned();
        self.buf.drain(..head_end + len);
        (status, body)
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.s.read(&mut chunk).unwrap();
        assert!(n > 0, "the node closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// A call that must answer 200; its body.
    fn ok(&mut self, method: &str, path: &str, body: &str) -> String {
        let (status, got) = self.ask(method, path, body.as_bytes());
        assert_eq!(status, 200, "{method} {path}: {got}");
        got
    }

    fn json(&mut self, method: &str, path: &str, body: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(method, path, body)).unwrap()
    }

    /// Opens a connection logged in to `session`.
    fn session(server: &Server, session: &str) -> Switch {
        let mut c = Switch::open(server);
        assert_eq!(c.ok("GET", &format!("/login/{session}"), ""), "");
        c
    }

    fn transfer(&mut self, timeout: f64, queues: &[&str]) -> serde_json::Value {
        let body = serde_json::json!({"timeout": timeout, "queues": queues}).to_string();
        self.json("POST", "/transfer", &body)
    }

    fn list(&mut self, prefix: &str) -> serde_json::Value {
        self.json("GET", &format!("/list/{prefix}"), "")
    }
}

/// A node with the message-switch door, once its queue link is up.
fn switch_node(redis: &Redis) -> Server {
    switch_node_with(redis, &[])
}

fn switch_node_with(redis: &Redis, extra: &[&str]) -> Server {
    let mut args = vec!["--switch-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let n = node(redis, &args);
    Stats::open(n.bus()).wait_for("the queue link", |v| v["cluster"]["queues"]["up"] == true);
    n
}

/// Waits until a transfer waits on the node, its queue's notifications
/// confirmed by Redis.
fn wait_switch_parked(server: &Server) {
    Stats::open(server.bus()).wait_for("a transfer parked on Redis", |v| {
        stat(v, "cluster.queues.switch_waiting") == 1
            && stat(v, "cluster.queues.switch_listening") == 1
    });
}

#[test]
fn a_message_switch_queue_on_one_node_is_served_by_a_handler_on_another() {
    let redis = Redis::start();
    let a = switch_node(&redis);
    let b = switch_node(&redis);
    let c = switch_node(&redis);
    let mut admin = Switch::session(&a, "admin");
    assert_eq!(admin.ok("GET", "/persistent/svc", ""), "svc");
    // Creating it again, elsewhere, does nothing.
    let mut other = Switch::session(&c, "other");
    assert_eq!(other.ok("GET", "/persistent/svc", ""), "svc");
    // The handler on C waits first: its transfer parks, listening in Redis.
    let mut handler = Switch::session(&c, "handler");
    let t = serde_json::json!({"timeout": 30, "queues": ["svc"]}).to_string();
    let req = format!(
        "POST /transfer HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{t}",
        t.len()
    );
    send(&mut handler.s, req.as_bytes());
    wait_switch_parked(&c);
    // The caller on B: its reply queue, the request.
    let mut caller = Switch::session(&b, "caller");
    assert_eq!(
        caller.ok("GET", "/transient/caller.reply", ""),
        "caller.reply"
    );
    let sent = caller.json("POST", "/request/svc/caller.reply", "hello");
    assert_eq!(sent, serde_json::json!([["svc", 0]]));
    // The handler's parked transfer is answered.
    let (status, body) = {
        let head_end = loop {
            if let Some(i) = handler.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            handler.fill();
        };
        let head = String::from_utf8_lossy(&handler.buf[..head_end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: ")?.trim().parse().ok())
            .unwrap();
        while handler.buf.len() < head_end + len {
            handler.fill();
        }
        let body = String::from_utf8_lossy(&handler.buf[head_end..head_end + len]).into_owned();
        handler.buf.drain(..head_end + len);
        (head[9..12].to_string(), body)
    };
    assert_eq!(status, "200", "{body}");
    let got: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"messages": [[["svc", 0],
            {"payload": "hello", "kind": ["Request", "caller.reply"]}]], "next": "0"})
    );
    // The handler answers and acks; the caller on B gets the response.
    let r = handler.json("POST", "/response/caller.reply/svc/0", "HELLO");
    assert_eq!(r, serde_json::json!([["caller.reply", 0]]));
    assert_eq!(handler.ok("GET", "/ack/svc/0", ""), "");
    let got = caller.transfer(30.0, &["caller.reply"]);
    assert_eq!(
        got,
        serde_json::json!({"messages": [[["caller.reply", 0],
            {"payload": "HELLO", "kind": ["Response", ["svc", 0]]}]], "next": "0"})
    );
    // The ack on C removed it for every node.
    for n in [&a, &b, &c] {
        let mut s = Switch::session(n, "look");
        let t = s.transfer(0.0, &["svc"]);
        assert_eq!(t, serde_json::json!({"messages": [], "next": "-1"}));
    }
    // Every node lists both; alive: the ones some transfer named.
    assert_eq!(admin.list(""), serde_json::json!(["caller.reply", "svc"]));
    assert_eq!(admin.list("sv"), serde_json::json!(["svc"]));
    assert_eq!(
        admin.json("GET", "/list/alive/", ""),
        serde_json::json!(["caller.reply", "svc"])
    );
    // A send to a queue that does not exist is dropped.
    assert_eq!(
        admin.json("POST", "/request/nosuch/x", "lost"),
        serde_json::json!([])
    );
    // A second request gets the next id; a transfer from 0 returns it only.
    assert_eq!(
        admin.json("POST", "/request/svc/", "two"),
        serde_json::json!([["svc", 1]])
    );
    let body = serde_json::json!({"from": "0", "timeout": 0, "queues": ["svc"]}).to_string();
    let t = other.json("POST", "/transfer", &body);
    assert_eq!(t["next"], "1");
    assert_eq!(t["messages"][0][0], serde_json::json!(["svc", 1]));
    // The caller's session ends on B: its transient queue goes from Redis.
    drop(caller);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.list("") != serde_json::json!(["svc"]) {
        assert!(
            Instant::now() < deadline,
            "caller.reply stayed: {}",
            admin.list("")
        );
        // Re-checks a condition Redis changes by itself; no ordering
        // depends on this pause.
        std::thread::sleep(Duration::from_millis(50));
    }
    // Acks of ids that are not there, the greatest one included, are
    // answered and ignored.
    assert_eq!(admin.ok("GET", "/ack/svc/7", ""), "");
    assert_eq!(admin.ok("GET", "/ack/svc/18446744073709551615", ""), "");
    assert_eq!(admin.ok("GET", "/ack/nosuch/0", ""), "");
    // Destroyed on one node, gone for all.
    assert_eq!(other.ok("GET", "/destroy/svc", ""), "");
    assert_eq!(admin.list(""), serde_json::json!([]));
    assert_eq!(
        admin.json("POST", "/request/svc/", "x"),
        serde_json::json!([])
    );
    for n in [&a, &b, &c] {
        let v = Stats::open(n.bus()).get();
        assert_eq!(stat(&v, "cluster.errors"), 0, "{v}");
    }
}

#[test]
fn a_killed_nodes_unacked_messages_go_to_a_handler_on_another_node() {
    let redis = Redis::start();
    let mut a = switch_node(&redis);
    let b = switch_node(&redis);
    let mut client = Switch::session(&b, "client");
    assert_eq!(client.ok("GET", "/persistent/work", ""), "work");
    for job in ["one", "two"] {
        client.ok("POST", "/request/work/", job);
    }
    // A handler on A takes both, and a transient queue of its session,
    // then A dies without acking.
    let mut doomed = Switch::session(&a, "doomed");
    assert_eq!(
        doomed.ok("GET", "/transient/doomed.reply", ""),
        "doomed.reply"
    );
    let t = doomed.transfer(0.0, &["work"]);
    assert_eq!(t["next"], "1", "{t}");
    assert_eq!(doomed.ok("GET", "/ack/work/0", ""), "");
    a.signal(9);
    a.wait_exit(Duration::from_secs(10));
    // A handler on B gets what A took and did not ack.
    let mut rescuer = Switch::session(&b, "rescuer");
    let t = rescuer.transfer(0.0, &["work"]);
    assert_eq!(
        t,
        serde_json::json!({"messages": [[["work", 1],
            {"payload": "two", "kind": ["Request", ""]}]], "next": "1"})
    );
    // The dead node's transient queue is removed by B once A's liveness
    // key has expired in Redis.
    let deadline = Instant::now() + Duration::from_secs(40);
    while client.list("") != serde_json::json!(["work"]) {
        assert!(Instant::now() < deadline, "stayed: {}", client.list(""));
        // Re-checks a condition Redis changes by itself; no ordering
        // depends on this pause.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn message_switch_calls_answer_503_while_redis_is_away() {
    let mut redis = Redis::start();
    let a = switch_node(&redis);
    let mut c = Switch::session(&a, "s");
    assert_eq!(c.ok("GET", "/persistent/q", ""), "q");
    // A transfer parked on Redis while it goes: it waits on, and is
    // answered by a message sent once Redis is back.
    let mut waiter = Switch::session(&a, "w");
    let t = serde_json::json!({"timeout": 60, "queues": ["q"]}).to_string();
    let req = format!(
        "POST /transfer HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{t}",
        t.len()
    );
    send(&mut waiter.s, req.as_bytes());
    wait_switch_parked(&a);
    redis.kill();
    Stats::open(a.bus()).wait_for("the queue link down", |v| {
        v["cluster"]["queues"]["up"] == false
    });
    let (status, body) = c.ask("POST", "/request/q/", b"x");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("queue link"), "{body}");
    let (status, _) = c.ask("GET", "/list/", b"");
    assert_eq!(status, 503);
    redis.restart();
    Stats::open(a.bus()).wait_for("the queue link up again", |v| {
        v["cluster"]["queues"]["up"] == true
    });
    // Redis came back empty (no persistence here): the queue is made again.
    assert_eq!(c.ok("GET", "/persistent/q", ""), "q");
    assert_eq!(
        c.json("POST", "/request/q/", "back"),
        serde_json::json!([["q", 0]])
    );
    let mut body = Vec::new();
    let head = loop {
        if let Some(i) = waiter.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        waiter.fill();
    };
    while !String::from_utf8_lossy(&waiter.buf[head..]).contains("\"next\"") {
        waiter.fill();
    }
    body.extend_from_slice(&waiter.buf[head..]);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("\"payload\":\"back\""), "{text}");
}

#[test]
fn message_switch_names_like_the_keys_in_redis_are_queues_like_any_and_limits_hold() {
    let redis = Redis::start();
    let a = switch_node_with(&redis, &["--max-queued-bytes-per-address", "1000"]);
    let mut c = Switch::session(&a, "s");
    let names = [
        "queues",
        "ids",
        "bytes",
        "alive",
        "nodes",
        "s:x",
        "n:x",
        "live:x",
        "t:x",
        "%C3%A9t%C3%A9",
    ];
    for n in names {
        c.ok("GET", &format!("/persistent/{n}"), "");
        let id = c.json("POST", &format!("/request/{n}/"), n);
        assert_eq!(id[0][1], 0, "{n}: {id}");
    }
    assert_eq!(
        c.list(""),
        serde_json::json!([
            "alive",
            "bytes",
            "ids",
            "live:x",
            "n:x",
            "nodes",
            "queues",
            "s:x",
            "t:x",
            "\u{e9}t\u{e9}"
        ])
    );
    for n in ["queues", "s:x", "\u{e9}t\u{e9}"] {
        let t = c.transfer(0.0, &[n]);
        assert_eq!(t["messages"][0][0], serde_json::json!([n, 0]), "{t}");
    }
    // A message over the queue's bytes is refused; acks make room.
    let (status, body) = c.ask("POST", "/request/queues/", &[b'x'; 1000]);
    assert_eq!(status, 503);
    assert!(body.contains("queue full"), "{body}");
    let half = "y".repeat(400);
    assert_eq!(c.json("POST", "/request/queues/", &half)[0][1], 1);
    let (status, _) = c.ask("POST", "/request/queues/", half.as_bytes());
    assert_eq!(status, 503);
    c.ok("GET", "/ack/queues/1", "");
    assert_eq!(c.json("POST", "/request/queues/", &half)[0][1], 2);
    // Bad names and too many queues are refused as without --cluster.
    let (status, _) = c.ask("GET", "/persistent/a%20b", b"");
    assert_eq!(status, 400);
    let many: Vec<String> = (0..65).map(|i| format!("q{i}")).collect();
    let body = serde_json::json!({"timeout": 0, "queues": many}).to_string();
    let (status, _) = c.ask("POST", "/transfer", body.as_bytes());
    assert_eq!(status, 400);
    let v = Stats::open(a.bus()).get();
    assert_eq!(stat(&v, "cluster.errors"), 0, "{v}");
}

#[test]
fn switch_messages_restored_from_the_data_dir_of_a_node_without_cluster_are_reported_at_start() {
    let dir = TempDir::new("cluster-restore");
    let data = dir.path().to_str().unwrap().to_string();
    // A node without --cluster keeps one message in a switch queue, on disk
    // before it is answered.
    let mut alone = Server::start(&[
        "--switch-listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--fsync",
        "always",
    ]);
    {
        let mut c = Switch::session(&alone, "svc");
        assert_eq!(c.ok("GET", "/persistent/jobs", ""), "jobs");
        assert_eq!(c.ok("POST", "/request/jobs/r", "kept"), r#"[["jobs",0]]"#);
    }
    alone.signal(9);
    assert!(!alone.wait_exit(Duration::from_secs(10)).success());
    // The same directory, now with --cluster: the message is restored into
    // the node's own model, which the switch door does not serve, and the
    // node says so.
    let redis = Redis::start();
    let n = switch_node_with(&redis, &["--data-dir", &data, "--log-level", "info"]);
    let log = n.wait_log("restored 0 queued line messages and 1 switch messages");
    assert!(
        log.contains("1 switch messages restored from --data-dir stay in this node's own queues"),
        "{log}"
    );
    // A node with --cluster and nothing restored says nothing of it (the
    // warning would come at start, before the queue link is up).
    let quiet = TempDir::new("cluster-restore-empty");
    let m = switch_node_with(
        &redis,
        &[
            "--data-dir",
            quiet.path().to_str().unwrap(),
            "--log-level",
            "info",
        ],
    );
    let log = m.wait_log("cluster: queue link up");
    assert!(
        log.contains("restored 0 queued line messages and 0 switch messages"),
        "{log}"
    );
    assert!(!log.contains("restored from --data-dir stay"), "{log}");
}

// ---- what the mutation round of src/http/switch.rs found untested ----

/// On a node of a cluster, a blocking transfer that nothing answers ends at
/// its own timeout, empty, with the `next` it was given (-1 without
/// `from`), as on a single node; a transfer may name 64 queues, not 65.
#[test]
fn message_switch_blocking_transfers_end_empty_at_their_timeout_and_name_at_most_64_queues() {
    let redis = Redis::start();
    let a = switch_node(&redis);
    let mut c = Switch::session(&a, "s");
    assert_eq!(c.ok("GET", "/persistent/idle", ""), "idle");
    assert_eq!(
        c.transfer(0.3, &["idle"]),
        serde_json::json!({"messages": [], "next": "-1"})
    );
    let from = serde_json::json!({"from": "7", "timeout": 0.3, "queues": ["idle"]}).to_string();
    assert_eq!(
        c.json("POST", "/transfer", &from),
        serde_json::json!({"messages": [], "next": "7"})
    );
    let names: Vec<String> = (0..65).map(|i| format!("q{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        c.transfer(0.0, &names[..64]),
        serde_json::json!({"messages": [], "next": "-1"})
    );
    let body = serde_json::json!({"timeout": 0, "queues": names}).to_string();
    let (status, text) = c.ask("POST", "/transfer", body.as_bytes());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("at most 64"), "{text}");
}

/// A call Redis answers too late gets its `503`; when Redis' answer comes
/// after all, it is not taken for the answer of the connection's next
/// call. Redis is stopped (SIGSTOP) so that the first call's answer comes
/// only after the second call is sent.
#[test]
fn a_late_answer_from_redis_is_not_taken_for_the_next_calls() {
    let redis = Redis::start();
    let a = switch_node(&redis);
    let mut c = Switch::session(&a, "s");
    assert_eq!(c.ok("GET", "/persistent/made", ""), "made");
    let pid = redis.child.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    // The first call, and the second pipelined behind it: the second runs
    // once the first has its 503, while Redis still sleeps.
    let call = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    send(
        &mut c.s,
        format!("{}{}", call("/persistent/late"), call("/list/")).as_bytes(),
    );
    let (status, body) = c.read();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("did not answer in time"), "{body}");
    // A round trip through the node's loop: the pipelined call has run.
    Stats::open(a.bus()).get();
    signal("-CONT");
    // Redis answers both, in order: "late" is made, and the list asked
    // for second shows it.
    let (status, body) = c.read();
    assert_eq!(status, 200, "{body}");
    let mut listed: Vec<String> = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("the list's answer is not a JSON list ({e}): {body:?}"));
    listed.sort();
    assert_eq!(listed, vec!["late", "made"]);
}

// ---------------------------------------------------------------------
// What the mutation round of src/server/connect.rs found untested

/// A node's connections to Redis are counted, open and opened, under the
/// `cluster` door of `/metrics`, not under a listening door or the
/// webhooks' one.
#[test]
fn a_nodes_connections_to_redis_are_counted_under_the_cluster_door() {
    let redis = Redis::start();
    let n = node(&redis, &[]);
    let v = Stats::open(n.bus()).wait_for("the links up", |v| {
        v["cluster"]["up"] == true && v["cluster"]["queues"]["up"] == true
    });
    let links = stat(&v, "cluster.links_up");
    assert!(links >= 2, "{v}");
    let mut s = connect(n.bus());
    send(
        &mut s,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let mut text = String::new();
    s.read_to_string(&mut text).expect("the metrics");
    let metric = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let open = "switchboard_connections_open";
    assert_eq!(metric(&format!("{open}{{door=\"cluster\"}}")), links);
    assert_eq!(metric(&format!("{open}{{door=\"hooks-link\"}}")), 0);
    let opened = "switchboard_connections_accepted_total";
    assert_eq!(metric(&format!("{opened}{{door=\"cluster\"}}")), links);
}
