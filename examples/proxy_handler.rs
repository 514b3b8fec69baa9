//! A fast handler for the msglite HTTP proxy door, over the line protocol,
//! used by `benches/proxy-compare.sh`: every request gets `200` and a fixed
//! body with its `Content-Length`.
//!
//! ```text
//! cargo run --release --example proxy_handler -- 127.0.0.1:9813 [CONNECTIONS] [QUEUE] [threads|loop] [BATCH] [parts|whole]
//! cargo run --release --example proxy_handler -- /tmp/line.sock [CONNECTIONS] [QUEUE] [threads|loop] [BATCH]
//! ```
//!
//! Each connection pipelines: once it has a request, one write carries the
//! wait for the request's body (if it has one), the head, the body, the end
//! and the wait for the next request; then it reads their answers. With
//! `threads` (the default) each connection has a thread of its own and
//! blocking sockets, and asks for up to BATCH requests at a time, one by
//! default (`<< BATCH 60 QUEUE`: one wait, then what is already queued), so
//! that under load one wake-up serves several requests, each answered on
//! its own;
//! with `loop` one thread serves every connection from a readiness loop, as
//! an upstream server in one process does, so a wake-up serves every
//! connection that has input. With `whole` (threads only) each answer is one
//! message, the complete HTTP response, instead of head, body and end.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

const BODY: &[u8] = b"hello, world\n";

/// The body address of a request that has a body (a `Content-Length` in
/// its envelope). A request without one has an empty body, which need not
/// be read: the proxy drops it once the response has ended.
fn body_to_read(env: &str) -> Option<Option<&str>> {
    let addr = env.split("\"bodyAddr\":\"").nth(1)?.split('"').next()?;
    Some(env.contains("\"Content-Length\":").then_some(addr))
}

/// Reads one answer (`> LEN TIMEOUT TO [REPLY]` + body, or `*`): the reply
/// address and the body.
fn answer(r: &mut impl BufRead, line: &mut String, body: &mut Vec<u8>) -> Option<Option<String>> {
    line.clear();
    if r.read_line(line).ok()? == 0 {
        return None;
    }
    let mut f = line.split_ascii_whitespace();
    if f.next()? != ">" {
        return Some(None);
    }
    let len: usize = f.next()?.parse().ok()?;
    let reply = f.nth(2).map(str::to_string);
    body.clear();
    if len > 0 {
        body.resize(len + 2, 0);
        r.read_exact(body).ok()?;
        body.truncate(len);
    }
    Some(reply)
}

/// `HOST:PORT`, or a Unix socket path.
fn serve(addr: &str, queue: &str, batch: usize, whole: bool) -> Option<()> {
    if addr.starts_with('/') {
        let w = UnixStream::connect(addr).ok()?;
        let r = w.try_clone().ok()?;
        return serve_on(r, w, queue, batch, whole);
    }
    let w = TcpStream::connect(addr).ok()?;
    w.set_nodelay(true).ok()?;
    let r = w.try_clone().ok()?;
    serve_on(r, w, queue, batch, whole)
}

/// One connection of the `threads` mode. It asks for up to `batch`
/// requests at a time (`<< BATCH 60 QUEUE`: a wait, then up to `batch - 1`
/// requests already queued, and `*` when fewer came; `< 60 QUEUE` for one),
/// so that when requests queue up, one read takes several; each gets its
/// own answer, and the answers leave in one write.
fn serve_on(r: impl Read, mut w: impl Write, queue: &str, batch: usize, whole: bool) -> Option<()> {
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let head = format!(
        r#"["200", ["Content-Type", "text/plain", "Content-Length", "{}"]]"#,
        BODY.len()
    );
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    response.extend_from_slice(BODY);
    let asks = if batch > 1 {
        format!("<< {batch} 60 {queue}\r\n")
    } else {
        format!("< 60 {queue}\r\n")
    };
    w.write_all(asks.as_bytes()).ok()?;
    let (mut line, mut body) = (String::new(), Vec::new());
    let mut out = Vec::with_capacity(512 * batch);
    let mut requests: Vec<(String, Option<String>)> = Vec::with_capacity(batch);
    loop {
        requests.clear();
        while requests.len() < batch {
            // `*`: no more came (none in 60 s, or no more queued).
            let Some(reply) = answer(&mut r, &mut line, &mut body)? else {
                break;
            };
            let env = std::str::from_utf8(&body).ok()?;
            let body_addr = body_to_read(env)?.map(str::to_string);
            requests.push((reply, body_addr));
        }
        out.clear();
        for (reply, body_addr) in &requests {
            if let Some(body_addr) = body_addr {
                write!(out, "< 5 {body_addr}\r\n").ok()?;
            }
            if whole {
                write!(out, "> {} 180 {reply}\r\n", response.len()).ok()?;
                out.extend_from_slice(&response);
                out.extend_from_slice(b"\r\n");
                continue;
            }
            write!(out, "> {} 180 {reply}\r\n{head}\r\n", head.len()).ok()?;
            write!(out, "> {} 180 {reply}\r\n", BODY.len()).ok()?;
            out.extend_from_slice(BODY);
            write!(out, "\r\n> 0 180 {reply}\r\n").ok()?;
        }
        out.extend_from_slice(asks.as_bytes());
        w.write_all(&out).ok()?;
        // The request bodies.
        for _ in requests.iter().filter(|(_, body_addr)| body_addr.is_some()) {
            answer(&mut r, &mut line, &mut body)?;
        }
    }
}

/// One connection of the `loop` mode.
struct LoopConn {
    sock: LoopSock,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The next answer is the request body (not a request).
    body_next: bool,
}

enum LoopSock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl LoopSock {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            LoopSock::Tcp(s) => s,
            LoopSock::Unix(s) => s,
        }
    }
}

impl Read for LoopSock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            LoopSock::Tcp(s) => s.read(buf),
            LoopSock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for LoopSock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LoopSock::Tcp(s) => s.write(buf),
            LoopSock::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One complete answer at the front of `input`: its length in bytes, the
/// reply address (`None` for `*` or another line), the body's range.
fn parse_answer(input: &[u8]) -> Option<(usize, Option<&str>, std::ops::Range<usize>)> {
    let eol = input.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&input[..eol]).ok()?;
    let mut f = line.split_ascii_whitespace();
    if f.next() != Some(">") {
        return Some((eol + 2, None, 0..0));
    }
    let len: usize = f.next()?.parse().ok()?;
    let reply = f.nth(2);
    let start = eol + 2;
    if len == 0 {
        return Some((start, reply, start..start));
    }
    if input.len() < start + len + 2 {
        return None;
    }
    Some((start + len + 2, reply, start..start + len))
}

/// The `loop` mode: one thread, one poll, `n` connections.
fn serve_loop(addr: &str, n: usize, queue: &str) -> Option<()> {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().ok()?;
    let head = format!(
        r#"["200", ["Content-Type", "text/plain", "Content-Length", "{}"]]"#,
        BODY.len()
    );
    let wait = format!("< 60 {queue}\r\n");
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut sock = if addr.starts_with('/') {
            let s = UnixStream::connect(addr).ok()?;
            s.set_nonblocking(true).ok()?;
            LoopSock::Unix(mio::net::UnixStream::from_std(s))
        } else {
            let s = TcpStream::connect(addr).ok()?;
            s.set_nodelay(true).ok()?;
            s.set_nonblocking(true).ok()?;
            LoopSock::Tcp(mio::net::TcpStream::from_std(s))
        };
        poll.registry()
            .register(
                sock.source(),
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        conns.push(LoopConn {
            sock,
            input: Vec::with_capacity(64 * 1024),
            output: wait.clone().into_bytes(),
            body_next: false,
        });
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        poll.poll(&mut events, None).ok()?;
        for event in events.iter() {
            let c = conns.get_mut(event.token().0)?;
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        eprintln!(
                            "proxy_handler: the server closed connection {}",
                            event.token().0
                        );
                        return Some(());
                    }
                    Ok(k) => c.input.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return None,
                }
            }
            let mut used = 0;
            while let Some((len, reply, body)) = parse_answer(&c.input[used..]) {
                let at = used;
                used += len;
                if std::mem::take(&mut c.body_next) {
                    continue;
                }
                let Some(reply) = reply else {
                    // `*`: nothing came in 60 s.
                    c.output.extend_from_slice(wait.as_bytes());
                    continue;
                };
                let env = String::from_utf8_lossy(&c.input[at + body.start..at + body.end]);
                let Some(body_addr) = body_to_read(&env) else {
                    eprintln!("proxy_handler: not a request: {env}");
                    return None;
                };
                let out = &mut c.output;
                if let Some(body_addr) = body_addr {
                    write!(out, "< 5 {body_addr}\r\n").ok()?;
                    c.body_next = true;
                }
                write!(out, "> {} 180 {reply}\r\n{head}\r\n", head.len()).ok()?;
                write!(out, "> {} 180 {reply}\r\n", BODY.len()).ok()?;
                out.extend_from_slice(BODY);
                write!(out, "\r\n> 0 180 {reply}\r\n{wait}").ok()?;
            }
            c.input.drain(..used);
            while !c.output.is_empty() {
                match c.sock.write(&c.output) {
                    Ok(k) => {
                        c.output.drain(..k);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return None,
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9813".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let queue = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "msglite.httpRequests".into());
    if args.get(4).map(String::as_str) == Some("loop") {
        serve_loop(&addr, n, &queue);
        return;
    }
    let batch: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let whole = args.get(6).map(String::as_str) == Some("whole");
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (addr, queue) = (addr.clone(), queue.clone());
            std::thread::spawn(move || serve(&addr, &queue, batch, whole))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
