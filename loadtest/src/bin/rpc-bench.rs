//! `rpc-bench`: request/reply round trips per second and their latency,
//! through switchboard's message-switch API, through its line protocol's
//! `?`, and through a NATS server's request/reply, in one run.
//!
//! Each pattern gets N callers (threads, one connection each, one call at a
//! time) and one server (one thread, one connection). Every call carries a
//! body of `--body` bytes which the server sends back. A call's latency is
//! from the caller writing its request to it holding the reply.
//!
//! - switch: the caller sends `POST /request/rpc.svc/REPLY` (its ack of the
//!   previous response pipelined before it) and transfers on its transient
//!   reply queue until the response comes; the server transfers on
//!   `rpc.svc` and, for every request a transfer returns, pipelines `POST
//!   /response/…` and `GET /ack/…`.
//! - line: the caller sends `? LEN 30 rpc.line`; the server loops `< 1
//!   rpc.line` and answers with `> LEN 30 REPLY`, on one connection, or on
//!   `--line-handlers N` connections (a `<` takes one message: one
//!   connection serves one call per round trip).
//! - nats: the caller publishes to `rpc.nats` with a reply subject under its
//!   own inbox subscription and reads the `MSG`; the server subscribes to
//!   `rpc.nats` and publishes each body back to the reply subject. The
//!   client speaks NATS' text protocol (CONNECT, SUB, PUB, MSG, PING/PONG).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use loadtest::hist::Histogram;
use serde_json::Value;
use switchboard::client::Client;

#[derive(Parser, Debug)]
#[command(
    name = "rpc-bench",
    about = "RPC round trips: switchboard's message-switch API vs its line protocol's ? vs NATS request/reply"
)]
struct Args {
    /// switchboard's message-switch door (`--switch-listen`)
    #[arg(long, value_name = "HOST:PORT")]
    switch: Option<String>,
    /// switchboard's line-protocol door
    #[arg(long, value_name = "HOST:PORT")]
    line: Option<String>,
    /// a NATS server
    #[arg(long, value_name = "HOST:PORT")]
    nats: Option<String>,
    /// Concurrent callers
    #[arg(long, default_value_t = 10)]
    callers: usize,
    /// Seconds measured per pattern (after one second of warm-up)
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Body bytes of each request and reply
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Connections the line service waits on `<` with (one thread each):
    /// a `<` takes one message, so one connection serves one call per
    /// round trip
    #[arg(long, default_value_t = 1)]
    line_handlers: usize,
    /// Print one JSON line per pattern instead of the table
    #[arg(long)]
    json: bool,
}

type Fallible<T> = Result<T, String>;

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn main() {
    let args = Args::parse();
    let mut results = Vec::new();
    let patterns: [(&str, &Option<String>); 3] = [
        ("switch", &args.switch),
        ("line", &args.line),
        ("nats", &args.nats),
    ];
    for (name, addr) in patterns {
        let Some(addr) = addr else { continue };
        match run_pattern(name, addr, &args) {
            Ok(r) => results.push((name, r)),
            Err(e) => {
                eprintln!("rpc-bench: {name} at {addr}: {e}");
                std::process::exit(2);
            }
        }
    }
    if results.is_empty() {
        eprintln!("rpc-bench: give at least one of --switch, --line, --nats");
        std::process::exit(2);
    }
    if !args.json {
        println!(
            "{:<8} {:>8} {:>10} {:>9} {:>9} {:>9}",
            "pattern", "calls", "calls/s", "p50 µs", "p99 µs", "max µs"
        );
    }
    for (name, (h, secs)) in results {
        let name = if name == "line" && args.line_handlers > 1 {
            format!("line×{}", args.line_handlers)
        } else {
            name.to_string()
        };
        let rate = h.count() as f64 / secs;
        let us = |ns: u64| ns as f64 / 1000.0;
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "pattern": name, "callers": args.callers, "body": args.body,
                    "calls": h.count(), "calls_per_s": rate.round(),
                    "p50_us": us(h.quantile(0.5)), "p99_us": us(h.quantile(0.99)),
                    "max_us": us(h.max()),
                })
            );
        } else {
            println!(
                "{:<8} {:>8} {:>10.0} {:>9.1} {:>9.1} {:>9.1}",
                name,
                h.count(),
                rate,
                us(h.quantile(0.5)),
                us(h.quantile(0.99)),
                us(h.max())
            );
        }
    }
}

/// Runs one pattern: its server, then its callers for warm-up + the
/// measured seconds. Returns the merged latencies and the seconds measured.
fn run_pattern(name: &str, addr: &str, args: &Args) -> Fallible<(Histogram, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (name, addr, stop) = (name.to_string(), addr.to_string(), stop.clone());
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let handlers = args.line_handlers.max(1);
        let h = thread::spawn(move || match name.as_str() {
            "switch" => switch_server(&addr, &stop, &r),
            "line" => line_servers(&addr, handlers, &stop, &r),
            _ => nats_server(&addr, &stop, &r),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.load(Ordering::Acquire) {
            if h.is_finished() || Instant::now() > deadline {
                return Err("the server side did not start".into());
            }
            thread::sleep(Duration::from_millis(5));
        }
        h
    };
    let body = vec![b'x'; args.body];
    let start = Instant::now();
    let warm = start + Duration::from_secs(1);
    let end = warm + Duration::from_secs(args.seconds);
    let callers: Vec<_> = (0..args.callers)
        .map(|i| {
            let (name, addr, body) = (name.to_string(), addr.to_string(), body.clone());
            thread::spawn(move || -> Fallible<Histogram> {
                let mut hist = Histogram::new();
                let mut call: Box<dyn FnMut() -> Fallible<()>> = match name.as_str() {
                    "switch" => switch_caller(&addr, i, body)?,
                    "line" => line_caller(&addr, body)?,
                    _ => nats_caller(&addr, i, body)?,
                };
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        return Ok(hist);
                    }
                    call()?;
                    if t0 >= warm {
                        hist.record(t0.elapsed().as_nanos() as u64);
                    }
                }
            })
        })
        .collect();
    let mut all = Histogram::new();
    let mut failure = None;
    for c in callers {
        match c.join() {
            Ok(Ok(h)) => all.merge(&h),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a caller panicked".into()),
        }
    }
    stop.store(true, Ordering::Release);
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failure = failure.or(Some(format!("server side: {e}"))),
        Err(_) => failure = failure.or(Some("the server side panicked".into())),
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok((all, args.seconds as f64))
}

// ---------------------------------------------------------------------------
// The message-switch API over keep-alive HTTP/1.1.

struct Http {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Http {
    fn connect(addr: &str) -> Fallible<Http> {
        let s = TcpStream::connect(addr).map_err(io("connect"))?;
        s.set_nodelay(true).map_err(io("nodelay"))?;
        let w = s.try_clone().map_err(io("clone"))?;
        Ok(Http {
            r: BufReader::new(s),
            w,
        })
    }

    fn push(out: &mut Vec<u8>, method: &str, path: &str, body: &[u8]) {
        out.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
    }

    fn write(&mut self, bytes: &[u8]) -> Fallible<()> {
        self.w.write_all(bytes).map_err(io("write"))
    }

    /// One response; its body (a status other than 200 is an error).
    fn read(&mut self) -> Fallible<Vec<u8>> {
        let mut line = String::new();
        let mut status = 0;
        let mut len = 0;
        loop {
            line.clear();
            if self.r.read_line(&mut line).map_err(io("read"))? == 0 {
                return Err("the server closed the connection".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(rest) = l.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some(v) = l.strip_prefix("Content-Length: ") {
                len = v.trim().parse().map_err(|_| format!("bad length {v}"))?;
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).map_err(io("read body"))?;
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    }

    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Fallible<Vec<u8>> {
        let mut out = Vec::new();
        Http::push(&mut out, method, path, body);
        self.write(&out)?;
        self.read()
    }

    fn transfer(&mut self, from: &Option<String>, timeout: f64, queue: &str) -> Fallible<Value> {
        let mut req = serde_json::json!({"timeout": timeout, "queues": [queue]});
        if let (Some(f), Some(o)) = (from, req.as_object_mut()) {
            o.insert("from".into(), Value::String(f.clone()));
        }
        let body = self.call("POST", "/transfer", req.to_string().as_bytes())?;
        serde_json::from_slice(&body).map_err(|e| format!("transfer: {e}"))
    }
}

const SWITCH_SERVICE: &str = "rpc.svc";

fn switch_server(addr: &str, stop: &AtomicBool, ready: &AtomicBool) -> Fallible<()> {
    let mut h = Http::connect(addr)?;
    h.call("GET", "/login/rpc-server", b"")?;
    h.call("GET", &format!("/persistent/{SWITCH_SERVICE}"), b"")?;
    let mut from: Option<String> = None;
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        // The first transfer returns at once: then the service is alive.
        let t = h.transfer(&from, if first { 0.0 } else { 0.5 }, SWITCH_SERVICE)?;
        if first {
            ready.store(true, Ordering::Release);
            first = false;
        }
        let messages = t["messages"].as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        for m in &messages {
            let n = m[0][1].as_u64().ok_or("a message id")?;
            let reply = m[1]["kind"][1].as_str().ok_or("a reply-to")?;
            let payload = m[1]["payload"].as_str().unwrap_or("");
            let path = format!("/response/{reply}/{SWITCH_SERVICE}/{n}");
            Http::push(&mut out, "POST", &path, payload.as_bytes());
            Http::push(&mut out, "GET", &format!("/ack/{SWITCH_SERVICE}/{n}"), b"");
        }
        if !messages.is_empty() {
            h.write(&out)?;
            for _ in 0..messages.len() * 2 {
                h.read()?;
            }
        }
        if let Some(next) = t["next"].as_str() {
            from = Some(next.to_string());
        }
    }
    Ok(())
}

type Call = Box<dyn FnMut() -> Fallible<()>>;

fn switch_caller(addr: &str, i: usize, body: Vec<u8>) -> Fallible<Call> {
    let mut h = Http::connect(addr)?;
    let reply = format!("rpc-caller-{}-{i}", std::process::id());
    h.call("GET", &format!("/login/{reply}"), b"")?;
    h.call("GET", &format!("/transient/{reply}"), b"")?;
    let mut from: Option<String> = None;
    let mut unacked: Option<String> = None;
    Ok(Box::new(move || {
        let mut out = Vec::new();
        if let Some(ack) = unacked.take() {
            Http::push(&mut out, "GET", &ack, b"");
        }
        let acks = usize::from(!out.is_empty());
        let path = format!("/request/{SWITCH_SERVICE}/{reply}");
        Http::push(&mut out, "POST", &path, &body);
        h.write(&out)?;
        for _ in 0..acks {
            h.read()?;
        }
        let sent: Value = serde_json::from_slice(&h.read()?).map_err(|e| e.to_string())?;
        let id = sent[0][1].as_u64().ok_or("the request was dropped")?;
        loop {
            let t = h.transfer(&from, 5.0, &reply)?;
            from = t["next"].as_str().map(str::to_string);
            for m in t["messages"].as_array().into_iter().flatten() {
                let kind = &m[1]["kind"];
                if kind[0] == "Response" && kind[1][1].as_u64() == Some(id) {
                    unacked = Some(format!("/ack/{reply}/{}", m[0][1]));
                    return Ok(());
                }
            }
        }
    }))
}

// ---------------------------------------------------------------------------
// The line protocol.

/// The line service: `handlers` connections, one thread each.
fn line_servers(
    addr: &str,
    handlers: usize,
    stop: &Arc<AtomicBool>,
    ready: &AtomicBool,
) -> Fallible<()> {
    let threads: Vec<_> = (0..handlers)
        .map(|_| {
            let (addr, stop) = (addr.to_string(), stop.clone());
            let c = Client::connect_tcp(&addr).map_err(|e| e.to_string());
            thread::spawn(move || line_server(c?, &stop))
        })
        .collect();
    ready.store(true, Ordering::Release);
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err("a line handler panicked".into()),
        }
    }
    result
}

fn line_server(mut c: Client, stop: &AtomicBool) -> Fallible<()> {
    while !stop.load(Ordering::Acquire) {
        let got = c.ready(1, &["rpc.line"]).map_err(|e| e.to_string())?;
        if let Some(m) = got {
            let reply = m.reply.ok_or("a query without a reply address")?;
            c.send(&m.body, 30, &reply, None)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn line_caller(addr: &str, body: Vec<u8>) -> Fallible<Call> {
    let mut c = Client::connect_tcp(addr).map_err(|e| e.to_string())?;
    Ok(Box::new(move || {
        match c.query(&body, 30, "rpc.line").map_err(|e| e.to_string())? {
            Some(m) if m.body.len() == body.len() => Ok(()),
            Some(_) => Err("a reply of the wrong length".into()),
            None => Err("a query timed out".into()),
        }
    }))
}

// ---------------------------------------------------------------------------
// NATS' text protocol.

struct Nats {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

/// A message received: its reply subject and payload.
struct NatsMsg {
    reply: Option<String>,
    payload: Vec<u8>,
}

impl Nats {
    fn connect(addr: &str) -> Fallible<Nats> {
        let s = TcpStream::connect(addr).map_err(io("connect"))?;
        s.set_nodelay(true).map_err(io("nodelay"))?;
        let w = s.try_clone().map_err(io("clone"))?;
        let mut n = Nats {
            r: BufReader::new(s),
            w,
        };
        let mut info = String::new();
        n.r.read_line(&mut info).map_err(io("read INFO"))?;
        if !info.starts_with("INFO ") {
            return Err(format!("not a NATS server: {info:?}"));
        }
        n.w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
            .map_err(io("write"))?;
        // PONG: the server has taken CONNECT.
        n.next_msg()?;
        Ok(n)
    }

    /// The next MSG; PINGs are answered on the way. After CONNECT, a PONG
    /// ends the wait with an empty message.
    fn next_msg(&mut self) -> Fallible<NatsMsg> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.r.read_line(&mut line).map_err(io("read"))? == 0 {
                return Err("the NATS server closed the connection".into());
            }
            let l = line.trim_end();
            if l == "PING" {
                self.w.write_all(b"PONG\r\n").map_err(io("write"))?;
                continue;
            }
            if l == "PONG" {
                return Ok(NatsMsg {
                    reply: None,
                    payload: Vec::new(),
                });
            }
            if l.starts_with("+OK") || l.starts_with("INFO ") {
                continue;
            }
            if l.starts_with("-ERR") {
                return Err(format!("NATS: {l}"));
            }
            let fields: Vec<&str> = l.split(' ').collect();
            let (reply, len) = match fields.as_slice() {
                ["MSG", _subject, _sid, len] => (None, len),
                ["MSG", _subject, _sid, reply, len] => (Some(reply.to_string()), len),
                _ => return Err(format!("unexpected from NATS: {l:?}")),
            };
            let len: usize = len.parse().map_err(|_| format!("bad length in {l:?}"))?;
            let mut payload = vec![0; len + 2];
            self.r.read_exact(&mut payload).map_err(io("read"))?;
            payload.truncate(len);
            return Ok(NatsMsg { reply, payload });
        }
    }

    fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) -> Fallible<()> {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        let mut out = head.into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.w.write_all(&out).map_err(io("write"))
    }

    /// Subscribes, and waits until the server has taken it.
    fn subscribe(&mut self, subject: &str, sid: u32) -> Fallible<()> {
        self.w
            .write_all(format!("SUB {subject} {sid}\r\nPING\r\n").as_bytes())
            .map_err(io("write"))?;
        self.next_msg().map(drop)
    }
}

fn nats_server(addr: &str, stop: &AtomicBool, ready: &AtomicBool) -> Fallible<()> {
    let mut n = Nats::connect(addr)?;
    n.subscribe("rpc.nats", 1)?;
    n.r.get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(io("timeout"))?;
    ready.store(true, Ordering::Release);
    while !stop.load(Ordering::Acquire) {
        match n.next_msg() {
            Ok(m) => {
                if let Some(reply) = m.reply {
                    n.publish(&reply, None, &m.payload)?;
                }
            }
            Err(e) if e.contains("timed out") || e.contains("temporarily") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn nats_caller(addr: &str, i: usize, body: Vec<u8>) -> Fallible<Call> {
    let mut n = Nats::connect(addr)?;
    let inbox = format!("_INBOX.rpc{}.{i}", std::process::id());
    n.subscribe(&format!("{inbox}.*"), 1)?;
    let mut seq = 0u64;
    Ok(Box::new(move || {
        seq += 1;
        let reply = format!("{inbox}.{seq}");
        n.publish("rpc.nats", Some(&reply), &body)?;
        let m = n.next_msg()?;
        if m.payload.len() != body.len() {
            return Err("a reply of the wrong length".into());
        }
        Ok(())
    }))
}
