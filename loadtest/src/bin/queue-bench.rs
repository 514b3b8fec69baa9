//! `queue-bench`: queued sends per second, pipelined, on switchboard's
//! line protocol or its message-switch API (the load of
//! `benches/durable-compare.sh`).
//!
//! N connections (one thread each) each write `--pipeline` sends at once
//! and then wait for the answers:
//!
//! - line: `--pipeline` × `> LEN 3600 qbench.I` (no receiver: every message
//!   is queued), then `< 0 sync.I` and its `*`. The `*` comes after the
//!   sends were taken (with `--fsync always`, after they were durable:
//!   the answer waits for the batch of the connection's records);
//! - switch: `GET /login/bench.I` once, then `--pipeline` × `POST
//!   /request/qbench.I/` (a persistent queue made first), each answered
//!   `200` with the message's id once it is stored (with `--fsync always`,
//!   durable).
//!
//! A send counts once its answer (or the `*` after it) is read. One second
//! of warm-up, then `--seconds` measured; prints one line: mode,
//! connections, pipeline, sends, sends/s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "queue-bench", about = "Queued sends per second, pipelined")]
struct Args {
    /// `line` or `switch`
    mode: String,
    /// The door's HOST:PORT
    addr: String,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Sends written at once before their answers are read
    #[arg(long, default_value_t = 16)]
    pipeline: usize,
    #[arg(long, default_value_t = 100)]
    body: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Send this many messages in all (split over the connections, whole
    /// pipelines) instead of running for `--seconds`; no warm-up
    #[arg(long)]
    total: Option<u64>,
}

/// Whether a connection goes on: until `stop`, or until it has sent its
/// share of `--total`.
fn more(args: &Args, stop: &AtomicBool, sent: u64) -> bool {
    match args.total {
        Some(total) => sent < total.div_ceil(args.connections as u64),
        None => !stop.load(Ordering::Relaxed),
    }
}

type Fallible<T> = Result<T, String>;

fn line_conn(
    addr: &str,
    i: usize,
    args: &Args,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Fallible<()> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let body = vec![b'x'; args.body];
    let mut batch = Vec::new();
    for _ in 0..args.pipeline {
        batch.extend_from_slice(format!("> {} 3600 qbench.{i}\r\n", args.body).as_bytes());
        batch.extend_from_slice(&body);
        batch.extend_from_slice(b"\r\n");
    }
    batch.extend_from_slice(format!("< 0 sync.{i}\r\n").as_bytes());
    let mut line = String::new();
    let mut sent = 0;
    while more(args, stop, sent) {
        sent += args.pipeline as u64;
        w.write_all(&batch).map_err(|e| format!("write: {e}"))?;
        line.clear();
        r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        if line != "*\r\n" {
            return Err(format!("unexpected answer {line:?}"));
        }
        done.fetch_add(args.pipeline as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads one HTTP response (Content-Length bodies); returns the status.
fn response(r: &mut BufReader<TcpStream>) -> Fallible<u16> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a status line: {line:?}"))?;
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v
                    .trim()
                    .parse()
                    .map_err(|_| "bad Content-Length".to_string())?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    Ok(status)
}

fn switch_conn(
    addr: &str,
    i: usize,
    args: &Args,
    stop: &AtomicBool,
    done: &AtomicU64,
) -> Fallible<()> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let head = |m: &str, p: &str, n: usize| {
        format!("{m} {p} HTTP/1.1\r\nHost: b\r\nContent-Length: {n}\r\n\r\n").into_bytes()
    };
    w.write_all(&head("GET", &format!("/login/bench.{i}"), 0))
        .map_err(|e| e.to_string())?;
    w.write_all(&head("GET", &format!("/persistent/qbench.{i}"), 0))
        .map_err(|e| e.to_string())?;
    for _ in 0..2 {
        if response(&mut r)? != 200 {
            return Err("login or queue creation refused".into());
        }
    }
    let body = vec![b'x'; args.body];
    let mut batch = Vec::new();
    for _ in 0..args.pipeline {
        batch.extend_from_slice(&head("POST", &format!("/request/qbench.{i}/"), args.body));
        batch.extend_from_slice(&body);
    }
    let mut sent = 0;
    while more(args, stop, sent) {
        sent += args.pipeline as u64;
        w.write_all(&batch).map_err(|e| format!("write: {e}"))?;
        for _ in 0..args.pipeline {
            let status = response(&mut r)?;
            if status != 200 {
                return Err(format!("a send was answered {status}"));
            }
        }
        done.fetch_add(args.pipeline as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn main() {
    let args = Arc::new(Args::parse());
    if args.mode != "line" && args.mode != "switch" {
        eprintln!("queue-bench: the mode is `line` or `switch`");
        std::process::exit(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for i in 0..args.connections {
        let (args, stop, done) = (Arc::clone(&args), Arc::clone(&stop), Arc::clone(&done));
        threads.push(thread::spawn(move || {
            let run = if args.mode == "line" {
                line_conn
            } else {
                switch_conn
            };
            run(&args.addr, i, &args, &stop, &done)
        }));
    }
    let started = Instant::now();
    let (took, n0, n1) = if args.total.is_some() {
        (Duration::ZERO, 0, 0)
    } else {
        thread::sleep(Duration::from_secs(1));
        let (t0, n0) = (Instant::now(), done.load(Ordering::Relaxed));
        thread::sleep(Duration::from_secs(args.seconds));
        (t0.elapsed(), n0, done.load(Ordering::Relaxed))
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("queue-bench: {e}");
                std::process::exit(1);
            }
            Err(_) => std::process::exit(1),
        }
    }
    let (took, sends) = match args.total {
        Some(_) => (started.elapsed(), done.load(Ordering::Relaxed)),
        None => (took, n1 - n0),
    };
    println!(
        "{} {} {} {} {:.0}",
        args.mode,
        args.connections,
        args.pipeline,
        sends,
        sends as f64 / took.as_secs_f64()
    );
}
