//! The message-switch HTTP API over real sockets: every path, the JSON it
//! answers, sessions and transient queues, blocking transfers and trace
//! polls parked in the loop, bad paths and bodies, keep-alive, shutdown,
//! the Unix socket door, and one namespace with the line protocol.
//!
//! Each test starts its own server through the shared harness (port 0,
//! addresses read from what the server prints).

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, line_sync, read_exact_n, send, Server, TempDir};
use serde_json::{json, Value};
use switchboard::client::switch::SwitchClient;

/// Longest any condition may take to come true before a test fails.
const PATIENCE: Duration = Duration::from_secs(10);

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--switch-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A raw HTTP/1.1 keep-alive connection to the switch door.
struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One response: status, head (as text) and body.
struct Got {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Got {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

impl Http {
    fn open(server: &Server) -> Http {
        Http {
            s: connect(server.addr("switch")),
            buf: Vec::new(),
        }
    }

    fn write(&mut self, method: &str, path: &str, body: &[u8]) {
        send(&mut self.s, &request_bytes(method, path, body));
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.s.read(&mut chunk).expect("read a response");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one response (every response of this door has a
    /// Content-Length).
    fn read(&mut self) -> Got {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let len: usize = common::content_length(&head);
        while self.buf.len() < head_end + len {
            self.fill();
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Got { status, head, body }
    }

    fn ask(&mut self, method: &str, path: &str, body: &[u8]) -> Got {
        self.write(method, path, body);
        self.read()
    }

    fn get(&mut self, path: &str) -> Got {
        self.ask("GET", path, b"")
    }

    /// A call that must answer 200.
    fn ok(&mut self, method: &str, path: &str, body: &[u8]) -> Got {
        let got = self.ask(method, path, body);
        assert_eq!(got.status, 200, "{method} {path}: {}", got.text());
        got
    }

    fn login(&mut self, token: &str) {
        let got = self.ok("GET", &format!("/login/{token}"), b"");
        assert_eq!(got.body, b"");
    }

    fn transfer(&mut self, body: Value) -> Value {
        self.ok("POST", "/transfer", body.to_string().as_bytes())
            .json()
    }
}

/// The bus door's stats page (the server's counters).
fn stats(server: &Server) -> Value {
    let mut s = connect(server.bus());
    send(
        &mut s,
        b"GET /msgbus-stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read stats");
    let text = String::from_utf8_lossy(&all);
    let body = text.split("\r\n\r\n").nth(1).expect("a stats body");
    serde_json::from_str(body).expect("stats JSON")
}

/// Closed connections so far: the positive barrier that the server has
/// processed a close.
fn closed_count(server: &Server) -> u64 {
    stats(server)["connections"]["closed"]
        .as_u64()
        .expect("closed count")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Re-checks a condition the server changes asynchronously; no
        // ordering depends on this pause.
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn calls_without_a_session_are_refused_and_keep_alive_holds() {
    let server = start(&[]);
    let mut h = Http::open(&server);
    for (method, path) in [
        ("GET", "/persistent/q"),
        ("GET", "/transient/q"),
        ("GET", "/destroy/q"),
        ("GET", "/ack/q/0"),
        ("GET", "/list/"),
        ("GET", "/list/alive/"),
        ("POST", "/transfer"),
        ("POST", "/request/q/r"),
        ("POST", "/response/q/r/0"),
        ("POST", "/shutdown"),
    ] {
        let got = h.ask(method, path, b"");
        assert_eq!(got.status, 404, "{method} {path}");
        assert_eq!(got.text(), "Please log in.", "{method} {path}");
    }
    // The exact answer, on the same connection still.
    let got = h.get("/list/x");
    assert_eq!(
        got.head,
        "HTTP/1.1 404 Not Found\r\nServer: switchboard\r\nContent-Type: text/plain\r\n\
         Content-Length: 14\r\n\r\n"
    );
    // Diagnostics and trace need no session.
    assert_eq!(h.get("/").status, 200);
    assert_eq!(h.get("/trace").json(), json!({"events": []}));
}

#[test]
fn bad_paths_methods_and_bodies_get_a_reason() {
    let server = start(&[]);
    let mut h = Http::open(&server);
    h.login("s");
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("GET", "/nothing", b"", 404, "no such call"),
        ("GET", "/list", b"", 404, "no such call"),
        ("GET", "/login/a/b", b"", 404, "no such call"),
        ("POST", "/login/s", b"", 405, "takes GET"),
        ("GET", "/transfer", b"", 405, "takes POST"),
        ("DELETE", "/destroy/q", b"", 405, "takes GET"),
        ("GET", "/ack/q/first", b"", 400, "integer"),
        ("GET", "/trace/x/1", b"", 400, "FROM"),
        ("GET", "/trace/0/soon", b"", 400, "TIMEOUT"),
        ("POST", "/response/r/q/x", b"", 400, "FROM_N"),
        ("GET", "/list/", b"a body", 400, "no body"),
        ("POST", "/transfer", b"not json", 400, "JSON"),
        ("POST", "/transfer", b"[]", 400, "object"),
        ("POST", "/transfer", br#"{"queues": []}"#, 400, "timeout"),
        ("POST", "/transfer", br#"{"timeout": 1}"#, 400, "queues"),
        (
            "POST",
            "/transfer",
            br#"{"timeout": 1, "queues": [3]}"#,
            400,
            "strings",
        ),
        (
            "POST",
            "/transfer",
            br#"{"from": "x", "timeout": 1, "queues": []}"#,
            400,
            "from",
        ),
        ("GET", "/persistent/a%20b", b"", 400, "spaces"),
        ("GET", "/persistent/a%0Ab", b"", 400, "control"),
        ("POST", "/request/q/a%20b", b"x", 400, "spaces"),
    ];
    for (method, path, body, status, reason) in cases {
        let got = h.ask(method, path, body);
        assert_eq!(got.status, *status, "{method} {path}: {}", got.text());
        assert!(
            got.text().contains(reason),
            "{method} {path}: {}",
            got.text()
        );
    }
    let long = "x".repeat(1025);
    assert_eq!(h.get(&format!("/persistent/{long}")).status, 400);
    let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    let body = json!({"timeout": 0, "queues": many}).to_string();
    let got = h.ask("POST", "/transfer", body.as_bytes());
    assert_eq!(got.status, 400);
    assert!(got.text().contains("at most 64"), "{}", got.text());
    // Still the same connection, still logged in.
    assert_eq!(h.get("/list/").json(), json!([]));
}

#[test]
fn queues_are_created_listed_and_destroyed() {
    let server = start(&[]);
    let mut h = Http::open(&server);
    h.login("me%20too");
    let got = h.ok("GET", "/persistent/svc.b", b"");
    assert_eq!(got.text(), "svc.b");
    assert!(
        got.head.contains("Content-Type: text/plain\r\n"),
        "{}",
        got.head
    );
    assert_eq!(h.ok("GET", "/persistent/svc%2Ea", b"").text(), "svc.a");
    assert_eq!(h.ok("GET", "/transient/reply", b"").text(), "reply");
    // Creating again is fine.
    assert_eq!(h.ok("GET", "/persistent/svc.a", b"").text(), "svc.a");
    assert_eq!(h.get("/list/").json(), json!(["reply", "svc.a", "svc.b"]));
    assert_eq!(h.get("/list/svc.").json(), json!(["svc.a", "svc.b"]));
    assert_eq!(h.get("/list/alive/").json(), json!([]));
    // A queue is alive once a transfer named it.
    h.transfer(json!({"timeout": 0, "queues": ["svc.b"]}));
    assert_eq!(h.get("/list/alive/").json(), json!(["svc.b"]));
    assert_eq!(h.get("/list/alive/svc.a").json(), json!([]));
    let got = h.ok("GET", "/destroy/svc.b", b"");
    assert_eq!(got.body, b"");
    assert_eq!(h.get("/list/svc").json(), json!(["svc.a"]));
    // Destroying what does not exist is fine too.
    h.ok("GET", "/destroy/never", b"");
}

#[test]
fn requests_transfers_acks_and_responses_in_message_switch_json() {
    let server = start(&[]);
    let mut client = Http::open(&server);
    client.login("client");
    client.ok("GET", "/transient/client.reply", b"");
    client.ok("GET", "/persistent/svc", b"");
    let got = client.ok("POST", "/request/svc/client.reply", b"hello");
    assert!(got.head.contains("Content-Type: application/json\r\n"));
    assert_eq!(got.json(), json!([["svc", 0]]));
    assert_eq!(
        client
            .ok("POST", "/request/svc/client.reply", b"again")
            .json(),
        json!([["svc", 1]])
    );
    // A queue that does not exist drops the message: [].
    assert_eq!(
        client
            .ok("POST", "/request/nowhere/client.reply", b"x")
            .json(),
        json!([])
    );

    let mut service = Http::open(&server);
    service.login("service");
    let t = service.transfer(json!({"timeout": 5.0, "queues": ["svc"]}));
    assert_eq!(
        t,
        json!({
            "messages": [
                [["svc", 0], {"payload": "hello", "kind": ["Request", "client.reply"]}],
                [["svc", 1], {"payload": "again", "kind": ["Request", "client.reply"]}],
            ],
            "next": "1",
        })
    );
    // Not removed until acked; `from` skips what was seen.
    let t = service.transfer(json!({"from": "0", "timeout": 0, "queues": ["svc"]}));
    assert_eq!(t["messages"].as_array().map(Vec::len), Some(1));
    let got = service.ok("POST", "/response/client.reply/svc/0", b"HELLO");
    assert_eq!(got.json(), json!([["client.reply", 0]]));
    assert_eq!(service.ok("GET", "/ack/svc/0", b"").body, b"");
    // Unknown ids and queues are ignored.
    service.ok("GET", "/ack/svc/99", b"");
    service.ok("GET", "/ack/nowhere/0", b"");
    service.ok("GET", "/ack/svc/-1", b"");
    let t = service.transfer(json!({"timeout": 0, "queues": ["svc"]}));
    assert_eq!(t["messages"][0][0], json!(["svc", 1]));

    let t = client.transfer(json!({"timeout": 5.0, "queues": ["client.reply"]}));
    assert_eq!(
        t,
        json!({
            "messages": [[["client.reply", 0],
                {"payload": "HELLO", "kind": ["Response", ["svc", 0]]}]],
            "next": "0",
        })
    );
    // Nothing after `from`: an empty list and `next` is `from`.
    let t = client.transfer(json!({"from": "0", "timeout": 0, "queues": ["client.reply"]}));
    assert_eq!(t, json!({"messages": [], "next": "0"}));
    let t = client.transfer(json!({"timeout": 0, "queues": ["nowhere"]}));
    assert_eq!(t, json!({"messages": [], "next": "-1"}));
}

#[test]
fn a_blocking_transfer_parks_until_a_message_and_the_pipeline_waits_behind_it() {
    let server = start(&[]);
    let mut listener = Http::open(&server);
    listener.login("listener");
    listener.ok("GET", "/persistent/jobs", b"");
    // A transfer that parks, and a list pipelined behind it.
    let mut both = request_bytes(
        "POST",
        "/transfer",
        json!({"timeout": 30, "queues": ["jobs"]})
            .to_string()
            .as_bytes(),
    );
    both.extend_from_slice(&request_bytes("GET", "/list/", b""));
    send(&mut listener.s, &both);

    let mut sender = Http::open(&server);
    sender.login("sender");
    wait_until("the transfer to park", || {
        stats(&server)["switch"]["parked_transfers"] == 1
    });
    assert_eq!(
        sender.ok("POST", "/request/jobs/", b"work").json(),
        json!([["jobs", 0]])
    );
    let got = listener.read();
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json(),
        json!({"messages": [[["jobs", 0], {"payload": "work", "kind": ["Request", ""]}]], "next": "0"})
    );
    // Then the pipelined request, in order.
    assert_eq!(listener.read().json(), json!(["jobs"]));
}

#[test]
fn a_blocking_transfer_answers_empty_at_its_timeout() {
    let server = start(&[]);
    let mut h = Http::open(&server);
    h.login("s");
    h.ok("GET", "/persistent/idle", b"");
    let t = h.transfer(json!({"from": "3", "timeout": 0.2, "queues": ["idle"]}));
    assert_eq!(t, json!({"messages": [], "next": "3"}));
    // Still usable.
    assert_eq!(h.get("/list/alive/").json(), json!(["idle"]));
}

#[test]
fn a_transient_queue_goes_when_its_sessions_last_connection_closes() {
    let server = start(&[]);
    let mut one = Http::open(&server);
    let mut two = Http::open(&server);
    one.login("owner");
    two.login("owner");
    one.ok("GET", "/transient/owned", b"");
    one.ok("POST", "/request/owned/", b"kept with the queue");
    let mut other = Http::open(&server);
    other.login("other");
    assert_eq!(other.get("/list/").json(), json!(["owned"]));

    let closed = closed_count(&server);
    drop(one);
    wait_until("the first close", || closed_count(&server) > closed);
    assert_eq!(
        other.get("/list/").json(),
        json!(["owned"]),
        "one connection is left"
    );
    let t = other.transfer(json!({"timeout": 0, "queues": ["owned"]}));
    assert_eq!(t["messages"].as_array().map(Vec::len), Some(1));

    drop(two);
    wait_until("the queue to go", || {
        other.get("/list/").json() == json!([])
    });
    // Its messages went with it; a new queue of that name starts empty.
    other.ok("GET", "/persistent/owned", b"");
    let t = other.transfer(json!({"timeout": 0, "queues": ["owned"]}));
    assert_eq!(t["messages"], json!([]));
}

#[test]
fn unacked_messages_are_handed_again_after_their_consumer_dies() {
    let server = start(&[]);
    let mut producer = Http::open(&server);
    producer.login("producer");
    producer.ok("GET", "/persistent/work", b"");
    producer.ok("POST", "/request/work/", b"job 1");
    let mut consumer = Http::open(&server);
    consumer.login("consumer");
    let t = consumer.transfer(json!({"timeout": 0, "queues": ["work"]}));
    assert_eq!(t["messages"][0][1]["payload"], "job 1");
    let closed = closed_count(&server);
    drop(consumer);
    wait_until("the consumer's close", || closed_count(&server) > closed);
    let diag = producer.get("/").json();
    assert_eq!(
        diag["permanent_queues"]["work"]["queue_contents"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let mut again = Http::open(&server);
    again.login("consumer");
    let t = again.transfer(json!({"timeout": 0, "queues": ["work"]}));
    assert_eq!(t["messages"][0][0], json!(["work", 0]));
    again.ok("GET", "/ack/work/0", b"");
    let t = again.transfer(json!({"timeout": 0, "queues": ["work"]}));
    assert_eq!(t["messages"], json!([]));
}

#[test]
fn diagnostics_show_queues_contents_origins_and_times() {
    let server = start(&[]);
    let mut h = Http::open(&server);
    h.login("caller");
    h.ok("GET", "/persistent/svc", b"");
    h.ok("GET", "/transient/caller.reply", b"");
    h.ok("POST", "/request/svc/caller.reply", b"hello");
    h.transfer(json!({"timeout": 0, "queues": ["caller.reply"]}));
    let d = h.get("/").json();
    let start = d["start_time"].as_u64().expect("start_time");
    let now = d["current_time"].as_u64().expect("current_time");
    assert!(now >= start);
    let svc = &d["permanent_queues"]["svc"];
    assert!(svc.get("next_transfer_expected").is_none(), "{svc}");
    let entry = &svc["queue_contents"][0];
    assert_eq!(entry[0], json!(["svc", 0]));
    assert_eq!(entry[1]["origin"], json!(["Name", "caller"]));
    assert_eq!(
        entry[1]["message"],
        json!({"payload": "hello", "kind": ["Request", "caller.reply"]})
    );
    let sent_at = entry[1]["time"].as_u64().expect("time");
    assert!(start <= sent_at && sent_at <= now);
    let reply = &d["transient_queues"]["caller.reply"];
    assert_eq!(reply["queue_contents"], json!([]));
    assert!(reply["next_transfer_expected"].as_u64().is_some());
    assert!(d["permanent_queues"].get("caller.reply").is_none());
}

#[test]
fn trace_records_events_and_a_trace_poll_parks_until_one() {
    let server = start(&[]);
    let mut h = Http::open(&server);
    h.login("s");
    h.ok("GET", "/persistent/q", b"");
    h.ok("POST", "/request/q/", b"m0");
    h.transfer(json!({"timeout": 0, "queues": ["q"]}));
    h.ok("GET", "/ack/q/0", b"");
    let events = h.get("/trace").json();
    let list = events["events"].as_array().expect("events");
    assert_eq!(list.len(), 3, "{events}");
    assert_eq!(list[0][0], 0);
    assert_eq!(list[0][1]["input"], "s");
    assert_eq!(list[0][1]["queue"], "q");
    assert!(list[0][1].get("output").is_none());
    assert_eq!(
        list[0][1]["message"],
        json!(["Message", ["q", 0], {"payload": "m0", "kind": ["Request", ""]}])
    );
    assert!(list[0][1]["time"].as_f64().is_some());
    assert_eq!(list[1][1]["output"], "s");
    assert_eq!(list[2][1]["message"], json!(["Ack", ["q", 0]]));
    // From 2 on, at once.
    let tail = h.get("/trace/2/5").json();
    assert_eq!(tail["events"].as_array().map(Vec::len), Some(1));

    // A poll for event 3 parks until it happens (no session needed).
    let mut watcher = Http::open(&server);
    watcher.write("GET", "/trace/3/30", b"");
    wait_until("the trace poll to park", || {
        stats(&server)["switch"]["parked_traces"] == 1
    });
    h.ok("POST", "/request/q/", b"m1");
    let got = watcher.read().json();
    let events = got["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{got}");
    assert_eq!(events[0][0], 3);
    // A poll that times out answers with nothing.
    assert_eq!(h.get("/trace/100/0.1").json(), json!({"events": []}));
}

#[test]
fn shutdown_needs_the_flag() {
    let server = start(&[]);
    let mut h = Http::open(&server);
    h.login("s");
    let got = h.ask("POST", "/shutdown", b"");
    assert_eq!(got.status, 403);
    assert!(got.text().contains("--allow-shutdown"));
    assert_eq!(h.get("/list/").json(), json!([]));

    let dir = TempDir::new("switch-shutdown");
    let sock = dir.path().join("switch.sock");
    let mut server = start(&["--allow-shutdown", "--switch-unix", sock.to_str().unwrap()]);
    let mut h = Http::open(&server);
    h.login("s");
    let got = h.ask("POST", "/shutdown", b"");
    assert_eq!(got.status, 200);
    wait_until("the server to exit", || !server.alive());
    assert!(!sock.exists(), "the socket file is removed at exit");
}

#[test]
fn the_unix_socket_door_speaks_the_same_api() {
    let dir = TempDir::new("switch-unix");
    let sock = dir.path().join("switch.sock");
    let server = start(&["--switch-unix", sock.to_str().unwrap()]);
    assert_eq!(server.addr("switch-unix"), sock.to_str().unwrap());
    let mut c = SwitchClient::connect(sock.to_str().unwrap()).expect("connect to the socket");
    c.login("unix").unwrap();
    c.create_persistent("over.unix").unwrap();
    assert_eq!(
        c.request("over.unix", "", b"hi").unwrap(),
        Some(("over.unix".into(), 0))
    );
    // The same namespace as the TCP door.
    let mut h = Http::open(&server);
    h.login("tcp");
    assert_eq!(h.get("/list/").json(), json!(["over.unix"]));
}

#[test]
fn a_switch_call_is_served_by_a_line_handler() {
    let server = start(&[]);
    let mut handler = connect(server.line());
    send(&mut handler, b"< 30 svc\r\n");
    line_sync_after_wait(&server);

    let mut caller = Http::open(&server);
    caller.login("caller");
    caller.ok("GET", "/transient/caller.reply", b"");
    caller.ok("GET", "/persistent/svc", b"");
    assert_eq!(
        caller
            .ok("POST", "/request/svc/caller.reply", b"hello")
            .json(),
        json!([["svc", 0]])
    );
    let want = b"> 5 30 svc caller.reply\r\nhello\r\n";
    assert_eq!(read_exact_n(&mut handler, want.len()), want);
    // The handler answers over the line protocol.
    send(&mut handler, b"> 5 30 caller.reply\r\nHELLO\r\n");
    let t = caller.transfer(json!({"timeout": 10, "queues": ["caller.reply"]}));
    assert_eq!(
        t,
        json!({"messages": [[["caller.reply", 0],
            {"payload": "HELLO", "kind": ["Response", ["svc", 0]]}]], "next": "0"})
    );
    // The request was taken: nothing stays in svc.
    let t = caller.transfer(json!({"timeout": 0, "queues": ["svc"]}));
    assert_eq!(t["messages"], json!([]));
}

/// Waits until the stats page counts one line receiver waiting: the
/// positive barrier that a `<` sent on another connection has been run.
fn line_sync_after_wait(server: &Server) {
    wait_until("the line receiver to wait", || {
        stats(server)["queues"]["waiting"] == 1
    });
}

#[test]
fn a_line_send_reaches_a_transfer_and_a_line_query_a_switch_server() {
    let server = start(&[]);
    let mut service = Http::open(&server);
    service.login("service");
    service.ok("GET", "/persistent/svc", b"");
    // A line send to a switch queue joins it.
    let mut line = connect(server.line());
    send(&mut line, b"> 4 30 svc\r\nnote\r\n");
    line_sync(&mut line, "a");
    let t = service.transfer(json!({"timeout": 10, "queues": ["svc"]}));
    assert_eq!(
        t,
        json!({"messages": [[["svc", 0], {"payload": "note", "kind": ["Request", ""]}]], "next": "0"})
    );
    service.ok("GET", "/ack/svc/0", b"");

    // A line query, served by the switch client.
    send(&mut line, b"? 4 30 svc\r\nping\r\n");
    let t = service.transfer(json!({"from": "0", "timeout": 10, "queues": ["svc"]}));
    let msg = &t["messages"][0];
    assert_eq!(msg[0], json!(["svc", 1]));
    assert_eq!(msg[1]["payload"], "ping");
    let reply_to = msg[1]["kind"][1].as_str().expect("a reply-to").to_string();
    let path = format!("/response/{reply_to}/svc/1");
    assert_eq!(
        service.ok("POST", &path, b"pong").json(),
        json!([[reply_to.clone(), 0]])
    );
    service.ok("GET", "/ack/svc/1", b"");
    let want = format!("> 4 30 {reply_to}\r\npong\r\n");
    let got = read_exact_n(&mut line, want.len());
    assert_eq!(String::from_utf8_lossy(&got), want);
    // The line connection goes on.
    line.write_all(b".\r\n").unwrap();
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const SWITCH_PIECES: &[&[u8]] = &[
    b"GET /login/chaos HTTP/1.1\r\n\r\n",
    b"GET /persistent/chaos.q HTTP/1.1\r\n\r\n",
    b"GET /transient/chaos.t HTTP/1.1\r\n\r\n",
    b"GET /destroy/chaos.q HTTP/1.1\r\n\r\n",
    b"GET /ack/chaos.q/0 HTTP/1.1\r\n\r\n",
    b"GET /ack/chaos.q/99999999999999999999999 HTTP/1.1\r\n\r\n",
    b"GET /list/ HTTP/1.1\r\n\r\n",
    b"GET /list/alive/%zz HTTP/1.1\r\n\r\n",
    b"GET /trace/0/0.01 HTTP/1.1\r\n\r\n",
    b"GET /trace/-9223372036854775808/1e308 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST /transfer HTTP/1.1\r\nContent-Length: 45\r\n\r\n{\"timeout\": 0.05, \"queues\": [\"chaos.q\", \"x\"]}",
    b"POST /transfer HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"from\":[",
    b"POST /transfer HTTP/1.1\r\nContent-Length: 44\r\n\r\n{\"from\": \"-5\", \"timeout\": NaN, \"queues\": []}",
    b"POST /request/chaos.q/chaos.t HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /request/chaos.q/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /response/chaos.t/chaos.q/0 HTTP/1.1\r\nContent-Length: 2\r\n\r\nok",
    b"POST /request/%00/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"POST /shutdown HTTP/1.1\r\n\r\n",
    b"HEAD /list/ HTTP/1.1\r\n\r\n",
    b"GET /login/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/2.0\r\n\r\n",
    b"\r\n",
];

/// Sends random pieces (whole, cut, or noise) on one connection and reads
/// whatever comes back, ignoring errors: the server may close.
fn stir(addr: &str, seed: u64, rounds: usize) {
    let mut rng = Rng(seed);
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    // Only stops a read that has nothing to take.
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    for _ in 0..rounds {
        let piece = SWITCH_PIECES[rng.below(SWITCH_PIECES.len() as u64) as usize];
        let mut chunk = piece.to_vec();
        match rng.below(4) {
            0 => chunk.truncate(rng.below(chunk.len() as u64 + 1) as usize),
            1 => chunk = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            _ => {}
        }
        if s.write_all(&chunk).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        // What comes back (or nothing, or an error) does not matter here.
        let _ = s.read(&mut buf);
    }
}

#[test]
fn random_input_on_the_switch_door_harms_nobody() {
    let server = start(&["--max-body", "4096", "--request-timeout", "2"]);
    let addr = server.addr("switch").to_string();
    let mut good = Http::open(&server);
    good.login("good");
    good.ok("GET", "/persistent/good.q", b"");
    let workers: Vec<_> = (0..16u64)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for round in 0..5u64 {
                    stir(&addr, 0x9e37_79b9_7f4a_7c15 ^ (i << 8) ^ round, 40);
                }
            })
        })
        .collect();
    for k in 0..50u64 {
        let sent = good.ok("POST", "/request/good.q/", format!("m{k}").as_bytes());
        assert_eq!(sent.json(), json!([["good.q", k]]));
        let t = good.transfer(
            json!({"from": (k as i64 - 1).to_string(), "timeout": 5, "queues": ["good.q"]}),
        );
        assert_eq!(t["messages"][0][1]["payload"], format!("m{k}"));
    }
    for w in workers {
        w.join().expect("a chaos thread");
    }
    assert_eq!(good.get("/list/good").json(), json!(["good.q"]));
    assert!(stats(&server)["switch"]["sessions"].as_u64() >= Some(1));
}

// ---------------------------------------------------------------------
// What the mutation round of src/http/switch.rs found untested

/// The switch door takes its request limits from `--max-body` and
/// `--max-header`, as the other HTTP doors do: one byte over either is
/// refused (413, 431) before any call runs; at the limit is fine.
#[test]
fn the_switch_door_keeps_the_servers_body_and_head_limits() {
    let server = start(&["--max-body", "1000", "--max-header", "2048"]);
    let mut h = Http::open(&server);
    h.login("s");
    h.ok("GET", "/persistent/q", b"");
    h.ok("POST", "/request/q/r", &[b'x'; 1000]);
    let mut over = Http::open(&server);
    let got = over.ask("POST", "/request/q/r", &[b'x'; 1001]);
    assert_eq!(got.status, 413, "{}", got.text());
    // A head of 2048 bytes and one of 2049, padded by one header.
    let head = |total: usize| {
        let bare = "GET /list/ HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n".len();
        format!(
            "GET /list/ HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(total - bare)
        )
    };
    send(&mut h.s, head(2048).as_bytes());
    assert_eq!(h.read().status, 200);
    let mut over = Http::open(&server);
    send(&mut over.s, head(2049).as_bytes());
    let got = over.read();
    assert_eq!(got.status, 431, "{}", got.text());
}

/// Diagnostics give times in nanoseconds since the Unix epoch, as
/// message-switch does: the server's start, its clock now and when a
/// message was queued all fall within the test's own reading of the wall
/// clock (a few seconds of slack either way for clock steps).
#[test]
fn diagnostics_times_are_nanoseconds_since_the_epoch() {
    let wall_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    };
    let slack = 5_000_000_000;
    let before = wall_ns();
    let server = start(&[]);
    let mut h = Http::open(&server);
    h.login("s");
    h.ok("GET", "/persistent/q", b"");
    h.ok("POST", "/request/q/", b"m");
    let d = h.get("/").json();
    let after = wall_ns();
    let times = [
        ("start_time", d["start_time"].as_u64()),
        ("current_time", d["current_time"].as_u64()),
        (
            "queued",
            d["permanent_queues"]["q"]["queue_contents"][0][1]["time"].as_u64(),
        ),
    ];
    for (what, t) in times {
        let t = t.unwrap_or_else(|| panic!("no {what} in {d}"));
        assert!(
            before - slack <= t && t <= after + slack,
            "{what} {t} is not between {before} and {after}"
        );
    }
}
