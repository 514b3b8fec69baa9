//! A fast handler for the msglite HTTP proxy door, over the line protocol,
//! used by `benches/proxy-compare.sh`: every request gets `200` and a fixed
//! body with its `Content-Length`.
//!
//! ```text
//! cargo run --release --example proxy_handler -- 127.0.0.1:9813 [CONNECTIONS] [QUEUE]
//! cargo run --release --example proxy_handler -- /tmp/line.sock [CONNECTIONS] [QUEUE]
//! ```
//!
//! Each connection (one thread) pipelines: once it has a request, one write
//! carries the wait for the request's body, the head, the body, the end and
//! the wait for the next request; then it reads the two answers.

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
fn serve(addr: &str, queue: &str) -> Option<()> {
    if addr.starts_with('/') {
        let w = UnixStream::connect(addr).ok()?;
        let r = w.try_clone().ok()?;
        return serve_on(r, w, queue);
    }
    let w = TcpStream::connect(addr).ok()?;
    w.set_nodelay(true).ok()?;
    let r = w.try_clone().ok()?;
    serve_on(r, w, queue)
}

fn serve_on(r: impl Read, mut w: impl Write, queue: &str) -> Option<()> {
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let head = format!(
        r#"["200", ["Content-Type", "text/plain", "Content-Length", "{}"]]"#,
        BODY.len()
    );
    let wait = format!("< 60 {queue}\r\n");
    w.write_all(wait.as_bytes()).ok()?;
    let (mut line, mut body) = (String::new(), Vec::new());
    let mut out = Vec::with_capacity(512);
    loop {
        let Some(reply) = answer(&mut r, &mut line, &mut body)? else {
            // `*`: nothing came in 60 s.
            w.write_all(wait.as_bytes()).ok()?;
            continue;
        };
        let env = std::str::from_utf8(&body).ok()?;
        let body_addr = env.split("\"bodyAddr\":\"").nth(1)?.split('"').next()?;
        out.clear();
        write!(out, "< 5 {body_addr}\r\n").ok()?;
        write!(out, "> {} 180 {reply}\r\n{head}\r\n", head.len()).ok()?;
        write!(out, "> {} 180 {reply}\r\n", BODY.len()).ok()?;
        out.extend_from_slice(BODY);
        write!(out, "\r\n> 0 180 {reply}\r\n{wait}").ok()?;
        w.write_all(&out).ok()?;
        // The request body.
        answer(&mut r, &mut line, &mut body)?;
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
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (addr, queue) = (addr.clone(), queue.clone());
            std::thread::spawn(move || serve(&addr, &queue))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
