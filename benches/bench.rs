//! `cargo bench`: switchboard's benches, printed as one table.
//!
//! Every figure is the median of several runs (5, or 3 with `quick`), with the
//! smallest and largest run next to it. Three groups:
//!
//! - `parser`: the line-protocol and HTTP decoders over big buffers of
//!   pipelined input, in memory. The line decoder is measured through
//!   `decode` (owned commands) and through `decode_raw` used the way the line
//!   session uses it (a publish read in place, anything else made owned);
//! - `fanout`: publish + seal through `Channels` to 1, 1000 and 10 000 line
//!   subscribers, with an outbox that only counts (and drops) the frames;
//! - `e2e`: the real server binary over loopback, one publisher and 100 or
//!   1000 line-protocol subscribers.
//!
//! Arguments (after `cargo bench --`): `quick` for fewer and shorter runs, and
//! any other word keeps only the figures whose group or name contains it, e.g.
//! `cargo bench -- parser`, `cargo bench -- quick fanout`.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::cell::Cell;
use std::hint::black_box;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use mio::{Events, Interest, Poll, Token};

use switchboard::broker::{Answer, Channels, ConnId, Outbox, Subscription};
use switchboard::http::codec::{Decoder as HttpDecoder, Event, Limits as HttpLimits};
use switchboard::line::codec::{Decoder as LineDecoder, Ranges, Raw};

// ---------------------------------------------------------------------------
// Options, cases and the table

struct Opts {
    quick: bool,
    filters: Vec<String>,
    /// A section title, printed before the first row under it.
    section: Cell<Option<&'static str>>,
    /// Figures that failed; any makes the bench exit with status 1.
    failures: Cell<usize>,
}

impl Opts {
    fn from_args() -> Opts {
        let mut quick = false;
        let mut filters = Vec::new();
        // cargo passes `--bench`; flags are ignored.
        for arg in std::env::args().skip(1) {
            if arg.starts_with('-') {
                continue;
            }
            if arg == "quick" {
                quick = true;
            } else {
                filters.push(arg.to_lowercase());
            }
        }
        Opts {
            quick,
            filters,
            section: Cell::new(None),
            failures: Cell::new(0),
        }
    }

    fn runs(&self) -> usize {
        if self.quick {
            3
        } else {
            5
        }
    }

    /// The time one run of a CPU-bound figure is measured for, at least.
    fn run_time(&self) -> Duration {
        Duration::from_millis(if self.quick { 60 } else { 150 })
    }

    fn wants(&self, group: &str, name: &str) -> bool {
        let text = format!("{group} {name}").to_lowercase();
        self.filters.is_empty() || self.filters.iter().any(|f| text.contains(f.as_str()))
    }
}

/// One measured quantity of a run: its name, unit and value.
struct Metric {
    what: &'static str,
    unit: &'static str,
    value: f64,
}

fn metric(what: &'static str, unit: &'static str, value: f64) -> Metric {
    Metric { what, unit, value }
}

type RunResult = Result<Vec<Metric>, String>;

const NAME_W: usize = 62;

fn print_header(opts: &Opts) {
    println!();
    println!(
        "switchboard benches: median of {} runs, with the min and max run{}",
        opts.runs(),
        if opts.quick { " (quick)" } else { "" }
    );
    println!();
    println!(
        "{:<NAME_W$} {:>10} {:>10} {:>10}  unit",
        "figure", "median", "min", "max"
    );
    println!("{}", "-".repeat(NAME_W + 3 * 11 + 16));
}

fn print_pending_section(opts: &Opts) {
    if let Some(title) = opts.section.take() {
        println!("{title}");
    }
}

fn print_failure(opts: &Opts, name: &str, e: &str) {
    opts.failures.set(opts.failures.get() + 1);
    print_pending_section(opts);
    println!("  {name:<w$} FAILED: {e}", w = NAME_W - 2);
}

/// Runs `run` `opts.runs()` times (after `warmup` untimed runs) and prints one
/// row per metric.
fn report(opts: &Opts, name: &str, warmup: usize, mut run: impl FnMut(usize) -> RunResult) {
    for i in 0..warmup {
        if let Err(e) = run(i) {
            print_failure(opts, name, &e);
            return;
        }
    }
    let mut rows: Vec<(&'static str, &'static str, Vec<f64>)> = Vec::new();
    for i in 0..opts.runs() {
        match run(warmup + i) {
            Ok(metrics) => {
                for m in metrics {
                    match rows.iter_mut().find(|r| r.0 == m.what) {
                        Some(r) => r.2.push(m.value),
                        None => rows.push((m.what, m.unit, vec![m.value])),
                    }
                }
            }
            Err(e) => {
                print_failure(opts, name, &format!("run {}: {e}", i + 1));
                return;
            }
        }
    }
    print_pending_section(opts);
    for (what, unit, mut values) in rows {
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        let label = format!("{name}, {what}");
        println!(
            "  {label:<w$} {:>10} {:>10} {:>10}  {unit}",
            fmt(median),
            fmt(values[0]),
            fmt(values[values.len() - 1]),
            w = NAME_W - 2
        );
    }
}

/// About three significant digits.
fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Calls `prep` (untimed) and `work` (timed) until the timed part adds up to
/// `at_least`; returns the summed time and what `work` returned, summed.
fn timed<T>(
    at_least: Duration,
    mut prep: impl FnMut() -> T,
    mut work: impl FnMut(T) -> u64,
) -> (Duration, u64) {
    let mut spent = Duration::ZERO;
    let mut units = 0;
    while spent < at_least {
        let input = prep();
        let t = Instant::now();
        units += work(input);
        spent += t.elapsed();
    }
    (spent, units)
}

// ---------------------------------------------------------------------------
// Machine facts

fn machine_facts() {
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .map_or(String::new(), |(_, m)| format!(", {} MHz", m.trim()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("machine: nproc {nproc}, CPU {model}{mhz}");
    println!(
        "         Linux {}, load average {} at start",
        kernel.trim(),
        load.join(" ")
    );
}

// ---------------------------------------------------------------------------
// (a) parsers

const BODY64: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/";

/// Pipelined line-protocol input: 70 % publishes, 20 % sends (both with
/// 64-byte bodies), 10 % readies. Returns the bytes and the command count.
fn line_input(bytes: usize) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(bytes + 256);
    let mut n = 0u64;
    while out.len() < bytes {
        match n % 10 {
            0..=6 => {
                let ch = n % 4;
                out.extend_from_slice(
                    format!("! 64 prices.ch{ch} application/octet-stream\r\n").as_bytes(),
                );
                out.extend_from_slice(BODY64);
                out.extend_from_slice(b"\r\n");
            }
            7 | 8 => {
                out.extend_from_slice(format!("> 64 30 jobs.render reply.{n}\r\n").as_bytes());
                out.extend_from_slice(BODY64);
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(b"< 30 jobs.render jobs.mail\r\n"),
        }
        n += 1;
    }
    (out, n)
}

fn decode_line_all(dec: &mut LineDecoder, buf: &mut BytesMut) -> u64 {
    let mut n = 0;
    loop {
        match dec.decode(buf) {
            Ok(Some(cmd)) => {
                black_box(&cmd);
                n += 1;
            }
            Ok(None) => return n,
            Err(e) => panic!("line decoder refused bench input: {e}"),
        }
    }
}

/// Decodes like the line session does: `decode_raw`, a publish used straight
/// from the buffer and skipped, any other command split off and made owned.
fn decode_line_raw_all(dec: &mut LineDecoder, buf: &mut BytesMut) -> u64 {
    let mut n = 0;
    loop {
        let (raw, len) = match dec.decode_raw(buf) {
            Ok(Some(found)) => found,
            Ok(None) => return n,
            Err(e) => panic!("line decoder refused bench input: {e}"),
        };
        match raw {
            Raw::Publish { channel, body, .. } => {
                black_box((channel, body));
                buf.advance(len);
            }
            _ => {
                let ranges = Ranges::of(&raw, buf);
                let frame = buf.split_to(len).freeze();
                black_box(ranges.to_command(&frame));
            }
        }
        n += 1;
    }
}

fn bench_line_parser(opts: &Opts) {
    let size = if opts.quick { 4 << 20 } else { 16 << 20 };
    let (data, commands) = line_input(size);
    let mb = data.len() as f64 / 1e6;
    type DecodeAll = fn(&mut LineDecoder, &mut BytesMut) -> u64;
    let apis: [(&str, DecodeAll); 2] = [
        ("decode", decode_line_all),
        ("decode_raw", decode_line_raw_all),
    ];
    for (api, decode_all) in apis {
        for whole in [true, false] {
            let name = format!(
                "line {api}, {mb:.0} MB mixed, {}",
                if whole { "whole" } else { "1500 B reads" }
            );
            if !opts.wants("parser", &name) {
                continue;
            }
            report(opts, &name, 1, |_| {
                let (t, n) = timed(
                    opts.run_time(),
                    || {
                        if whole {
                            BytesMut::from(&data[..])
                        } else {
                            BytesMut::with_capacity(4096)
                        }
                    },
                    |mut buf| {
                        let mut dec = LineDecoder::new(4096, 16 << 20);
                        let mut n = 0;
                        if whole {
                            n += decode_all(&mut dec, &mut buf);
                        } else {
                            // Each read is appended to the connection's buffer.
                            for read in data.chunks(1500) {
                                buf.extend_from_slice(read);
                                n += decode_all(&mut dec, &mut buf);
                            }
                        }
                        assert!(buf.is_empty());
                        n
                    },
                );
                if n % commands != 0 {
                    return Err(format!(
                        "decoded {n} commands, not a multiple of {commands}"
                    ));
                }
                let passes = n / commands;
                let s = t.as_secs_f64();
                Ok(vec![
                    metric("MB/s", "MB/s", mb * passes as f64 / s),
                    metric("commands/s", "M/s", n as f64 / s / 1e6),
                ])
            });
        }
    }
}

/// Pipelined `POST /msgbus/...` requests with 64-byte bodies.
fn http_input(bytes: usize, chunked: bool) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(bytes + 512);
    let mut n = 0u64;
    while out.len() < bytes {
        let ch = n % 4;
        out.extend_from_slice(
            format!(
                "POST /msgbus/prices.ch{ch} HTTP/1.1\r\nHost: 127.0.0.1:8888\r\n\
                 User-Agent: bench/1\r\nContent-Type: text/plain\r\n"
            )
            .as_bytes(),
        );
        if chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n40\r\n");
            out.extend_from_slice(BODY64);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
        } else {
            out.extend_from_slice(b"Content-Length: 64\r\n\r\n");
            out.extend_from_slice(BODY64);
        }
        n += 1;
    }
    (out, n)
}

fn bench_http_parser(opts: &Opts) {
    let size = if opts.quick { 4 << 20 } else { 16 << 20 };
    for chunked in [false, true] {
        let (data, requests) = http_input(size, chunked);
        let mb = data.len() as f64 / 1e6;
        let name = format!(
            "HTTP parser, {:.0} MB POSTs, {}",
            mb,
            if chunked { "chunked" } else { "Content-Length" }
        );
        if !opts.wants("parser", &name) {
            continue;
        }
        report(opts, &name, 1, |_| {
            let (t, n) = timed(
                opts.run_time(),
                || BytesMut::from(&data[..]),
                |mut buf| {
                    let mut dec = HttpDecoder::new(HttpLimits::default());
                    let mut n = 0;
                    loop {
                        match dec.decode(&mut buf) {
                            Ok(Some(Event::Request(req))) => {
                                assert_eq!(req.body.len(), 64);
                                black_box(&req);
                                n += 1;
                            }
                            Ok(Some(Event::Continue)) => {}
                            Ok(None) => break,
                            Err(e) => panic!("HTTP decoder refused bench input: {e}"),
                        }
                    }
                    assert!(buf.is_empty());
                    n
                },
            );
            if n % requests != 0 {
                return Err(format!(
                    "decoded {n} requests, not a multiple of {requests}"
                ));
            }
            let passes = n / requests;
            let s = t.as_secs_f64();
            Ok(vec![
                metric("MB/s", "MB/s", mb * passes as f64 / s),
                metric("requests/s", "M/s", n as f64 / s / 1e6),
            ])
        });
    }
}

// ---------------------------------------------------------------------------
// (b) fan-out framing through Channels

/// An outbox that counts what it is given and drops it.
#[derive(Default)]
struct CountingOutbox {
    frames: u64,
    messages: u64,
    bytes: u64,
}

impl Outbox for CountingOutbox {
    fn deliver(&mut self, _conn: ConnId, frame: Bytes, messages: u32) -> bool {
        self.frames += 1;
        self.messages += u64::from(messages);
        self.bytes += frame.len() as u64;
        true
    }
    fn answer(&mut self, _conn: ConnId, _answer: Answer<'_>) -> bool {
        false
    }
}

fn bench_fanout(opts: &Opts) {
    let channel = Bytes::from_static(b"prices.eurusd");
    let content_type = Bytes::from_static(b"application/octet-stream");
    for subs in [1u32, 1000, 10_000] {
        for batch in [1u64, 64] {
            let name = if batch == 1 {
                format!("fan-out to {subs} subs, publish+seal 1 msg")
            } else {
                format!("fan-out to {subs} subs, {batch} publishes+seal")
            };
            if !opts.wants("fanout fan-out", &name) {
                continue;
            }
            let mut channels = Channels::default();
            let mut out = CountingOutbox::default();
            for key in 0..subs {
                // An exact channel name: never refused.
                let _ = channels.subscribe(
                    ConnId { key, gen: 1 },
                    channel.clone(),
                    Subscription::line(),
                    &mut out,
                );
            }
            report(opts, &name, 1, |_| {
                let before = out.messages;
                let (t, msgs) = timed(
                    opts.run_time(),
                    || (),
                    |()| {
                        // Enough rounds per timing to make the clock's cost small.
                        let rounds = (20_000 / (u64::from(subs) * batch)).max(1);
                        for _ in 0..rounds {
                            for _ in 0..batch {
                                channels.publish(&channel, &content_type, None, BODY64, &mut out);
                            }
                            channels.seal(&mut out);
                        }
                        rounds * batch
                    },
                );
                let delivered = out.messages - before;
                if delivered != msgs * u64::from(subs) {
                    return Err(format!(
                        "{delivered} deliveries for {msgs} messages to {subs} subscribers"
                    ));
                }
                let ns_per_msg = t.as_nanos() as f64 / msgs as f64;
                let mut metrics = vec![metric("ns per message", "ns", ns_per_msg)];
                if subs > 1 {
                    metrics.push(metric(
                        "ns per delivery",
                        "ns",
                        ns_per_msg / f64::from(subs),
                    ));
                }
                Ok(metrics)
            });
            black_box((out.frames, out.bytes));
        }
    }
}

// ---------------------------------------------------------------------------
// (c) end to end over loopback

/// The server binary as a child process, killed when dropped.
struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    line_addr: SocketAddr,
}

impl Server {
    fn start() -> Result<Server, String> {
        let bin = env!("CARGO_BIN_EXE_switchboard");
        let mut child = Command::new(bin)
            .args([
                "--line-listen",
                "127.0.0.1:0",
                "--bus-listen",
                "off",
                "--log-level",
                "warn",
                // Far above what a run queues, so that no message is dropped.
                "--backlog-limit",
                "268435456",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {bin}: {e}"))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("no stdout".into());
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match stdout.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{bin} exited before printing its address"));
                }
                Ok(_) => {}
            }
            if let Some(addr) = line.trim().strip_prefix("listening line ") {
                let Ok(line_addr) = addr.parse() else {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("cannot parse address in {line:?}"));
                };
                return Ok(Server {
                    child,
                    _stdout: stdout,
                    line_addr,
                });
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of a process, from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based);
    // /proc reports them in USER_HZ, which is 100 on Linux.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// How many threads read the subscribers' sockets, each with its own epoll.
const READERS: usize = 2;

/// One line-protocol subscriber: its socket and the state of its frame parser.
struct Sub {
    sock: mio::net::TcpStream,
    probe: Vec<u8>,
    /// A header line split across reads.
    partial: Vec<u8>,
    /// Body bytes (and CRLF) still to skip.
    skip: usize,
    got: u64,
    confirmed: bool,
}

/// What every subscriber of a run expects: the channel and the exact bytes of
/// one delivery.
struct Expect {
    channel: Vec<u8>,
    frame: Vec<u8>,
}

impl Sub {
    /// Parses `! LEN CH TYPE\r\n` + body + `\r\n` frames, split anywhere. A
    /// whole delivery that is byte for byte the published frame is counted
    /// with one comparison; anything else goes through the general parser.
    fn feed(&mut self, mut data: &[u8], want: &Expect) -> Result<(), String> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            if self.partial.is_empty() {
                if let Some(rest) = data.strip_prefix(&want.frame[..]) {
                    self.got += 1;
                    data = rest;
                    continue;
                }
            }
            let Some(nl) = memchr::memchr(b'\n', data) else {
                self.partial.extend_from_slice(data);
                if self.partial.len() > 4096 {
                    return Err("header line longer than 4096 bytes".into());
                }
                return Ok(());
            };
            let mut joined = std::mem::take(&mut self.partial);
            let line = if joined.is_empty() {
                &data[..nl]
            } else {
                joined.extend_from_slice(&data[..nl]);
                &joined[..]
            };
            data = &data[nl + 1..];
            self.header(line, &want.channel)?;
            joined.clear();
            self.partial = joined;
        }
        Ok(())
    }

    fn header(&mut self, line: &[u8], channel: &[u8]) -> Result<(), String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut fields = line.split(|&b| b == b' ');
        let verb = fields.next().unwrap_or_default();
        if verb != b"!" {
            return Err(format!(
                "unexpected line from the server: {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let len: usize = fields
            .next()
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("bad frame header {:?}", String::from_utf8_lossy(line)))?;
        let ch = fields.next().unwrap_or_default();
        if ch == channel {
            if len != BODY64.len() {
                return Err(format!("delivery of {len} bytes, published 64"));
            }
            self.got += 1;
        } else if ch == &self.probe[..] {
            self.confirmed = true;
        } else {
            return Err(format!(
                "delivery on unexpected channel {:?}",
                String::from_utf8_lossy(ch)
            ));
        }
        self.skip = if len > 0 { len + 2 } else { 0 };
        Ok(())
    }
}

/// One reader thread's share of the subscribers.
struct Reader {
    poll: Poll,
    events: Events,
    subs: Vec<Sub>,
    buf: Vec<u8>,
}

impl Reader {
    /// Waits for readiness, then reads every ready subscriber until
    /// `WouldBlock`. Returns the deliveries seen and how many subscribers
    /// reached `msgs` (or, while `confirming`, got their probe back).
    fn drain(
        &mut self,
        want: &Expect,
        msgs: u64,
        confirming: bool,
    ) -> Result<(u64, usize), String> {
        self.poll
            .poll(&mut self.events, Some(Duration::from_millis(100)))
            .map_err(|e| format!("poll: {e}"))?;
        let (mut delivered, mut finished) = (0, 0);
        for ev in self.events.iter() {
            let k = ev.token().0;
            let Some(sub) = self.subs.get_mut(k) else {
                continue;
            };
            let (got, confirmed) = (sub.got, sub.confirmed);
            loop {
                match sub.sock.read(&mut self.buf) {
                    Ok(0) => return Err("the server closed a subscriber".into()),
                    Ok(n) => sub.feed(&self.buf[..n], want)?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("subscriber read: {e}")),
                }
            }
            delivered += sub.got - got;
            let done = if confirming {
                !confirmed && sub.confirmed
            } else {
                got < msgs && sub.got >= msgs
            };
            finished += usize::from(done);
        }
        Ok((delivered, finished))
    }

    /// Reads until every subscriber got its probe back, reports that on
    /// `ready`, then reads until every one got `msgs` messages. Returns when
    /// the last arrived, and the deliveries counted.
    fn run(
        mut self,
        want: &Expect,
        msgs: u64,
        ready: mpsc::Sender<Result<(), String>>,
    ) -> Result<(Instant, u64), String> {
        let n = self.subs.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut confirmed = 0;
        while confirmed < n {
            if Instant::now() > deadline {
                let e = format!("{} subscriptions unconfirmed after 30 s", n - confirmed);
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
            match self.drain(want, msgs, true) {
                Ok((_, done)) => confirmed += done,
                Err(e) => {
                    let _ = ready.send(Err(e.clone()));
                    return Err(e);
                }
            }
        }
        let _ = ready.send(Ok(()));
        let expected = msgs * n as u64;
        let (mut total, mut finished) = (0, 0);
        let mut last_progress = Instant::now();
        while finished < n {
            let (delivered, done) = self.drain(want, msgs, false)?;
            total += delivered;
            finished += done;
            if delivered > 0 {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "no progress for 10 s: {total} of {expected} deliveries ({} lost)",
                    expected - total
                ));
            }
        }
        Ok((Instant::now(), total))
    }
}

fn e2e_run(server: &Server, run: usize, n_subs: usize, msgs: u64) -> RunResult {
    let channel = format!("e2e.r{run}");
    let mut frame = format!("! 64 {channel} application/octet-stream\r\n").into_bytes();
    frame.extend_from_slice(BODY64);
    frame.extend_from_slice(b"\r\n");
    let want = Expect {
        channel: channel.clone().into_bytes(),
        frame,
    };

    // Subscribe, each with a probe on its own channel behind the `+`.
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        readers.push(Reader {
            poll: Poll::new().map_err(|e| e.to_string())?,
            events: Events::with_capacity(1024),
            subs: Vec::new(),
            buf: vec![0u8; 64 * 1024],
        });
    }
    for k in 0..n_subs {
        let mut s = TcpStream::connect(server.line_addr)
            .map_err(|e| format!("connect subscriber {k}: {e}"))?;
        let probe = format!("{channel}.c{k}");
        let hello = format!("+ {channel}\r\n+ {probe}\r\n! 1 {probe}\r\nc\r\n~ {probe}\r\n");
        s.write_all(hello.as_bytes()).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut sock = mio::net::TcpStream::from_std(s);
        let reader = &mut readers[k % READERS];
        reader
            .poll
            .registry()
            .register(&mut sock, Token(reader.subs.len()), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        reader.subs.push(Sub {
            sock,
            probe: probe.into_bytes(),
            partial: Vec::new(),
            skip: 0,
            got: 0,
            confirmed: false,
        });
    }

    // The publisher: every message pipelined, in one write_all.
    let frames = want.frame.repeat(msgs as usize);
    let mut publisher =
        TcpStream::connect(server.line_addr).map_err(|e| format!("connect publisher: {e}"))?;
    publisher.set_nodelay(true).map_err(|e| e.to_string())?;

    let pid = server.pid().to_string();
    thread::scope(|scope| {
        let (ready_tx, ready_rx) = mpsc::channel();
        let want = &want;
        let handles: Vec<_> = readers
            .into_iter()
            .map(|r| {
                let ready = ready_tx.clone();
                scope.spawn(move || r.run(want, msgs, ready))
            })
            .collect();
        let join_all = |handles: Vec<thread::ScopedJoinHandle<'_, _>>| {
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("reader thread panicked".to_string()))
                })
                .collect::<Vec<Result<(Instant, u64), String>>>()
        };
        for _ in 0..READERS {
            if let Ok(Err(e)) | Err(e) = ready_rx.recv().map_err(|e| e.to_string()) {
                drop(publisher);
                join_all(handles);
                return Err(e);
            }
        }
        let server_cpu0 = cpu_seconds(&pid);
        let self_cpu0 = cpu_seconds("self");
        let t0 = Instant::now();
        let written = publisher.write_all(&frames);
        let results = join_all(handles);
        let server_cpu = cpu_seconds(&pid) - server_cpu0;
        let self_cpu = cpu_seconds("self") - self_cpu0;
        written.map_err(|e| format!("publisher: {e}"))?;
        let mut end = t0;
        let mut delivered = 0;
        for r in results {
            let (at, n) = r?;
            end = end.max(at);
            delivered += n;
        }
        let elapsed = (end - t0).as_secs_f64();
        let expected = msgs * n_subs as u64;
        if delivered != expected {
            return Err(format!("{delivered} deliveries, expected {expected}"));
        }
        Ok(vec![
            metric("deliveries/s", "M/s", delivered as f64 / elapsed / 1e6),
            metric("server CPU", "% of 1 core", 100.0 * server_cpu / elapsed),
            metric(
                "bench client CPU",
                "% of 1 core",
                100.0 * self_cpu / elapsed,
            ),
        ])
    })
}

fn bench_e2e(opts: &Opts) {
    let cases: [(usize, u64); 2] = if opts.quick {
        [(100, 25_000), (1000, 2_500)]
    } else {
        [(100, 50_000), (1000, 5_000)]
    };
    for (n_subs, msgs) in cases {
        let name = format!("e2e, 1 pub -> {n_subs} subs, {msgs} x 64 B");
        if !opts.wants("e2e loopback", &name) {
            continue;
        }
        let server = match Server::start() {
            Ok(s) => s,
            Err(e) => {
                print_failure(opts, &name, &e);
                continue;
            }
        };
        report(opts, &name, 1, |run| e2e_run(&server, run, n_subs, msgs));
    }
}

// ---------------------------------------------------------------------------

type BenchFn = fn(&Opts);

fn main() -> std::process::ExitCode {
    let opts = Opts::from_args();
    let started = Instant::now();
    machine_facts();
    print_header(&opts);
    let groups: [(&'static str, BenchFn); 4] = [
        ("(a) parsers, in memory", bench_line_parser),
        ("", bench_http_parser),
        (
            "(b) fan-out framing, Channels + counting outbox",
            bench_fanout,
        ),
        (
            "(c) end to end, server binary over loopback, line protocol",
            bench_e2e,
        ),
    ];
    for (title, f) in groups {
        if !title.is_empty() {
            opts.section.set(Some(title));
        }
        f(&opts);
    }
    println!("{}", "-".repeat(NAME_W + 3 * 11 + 16));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "total {:.1} s, load average {} at the end",
        started.elapsed().as_secs_f64(),
        load.join(" ")
    );
    match opts.failures.get() {
        0 => std::process::ExitCode::SUCCESS,
        n => {
            eprintln!("bench: {n} figure(s) FAILED");
            std::process::ExitCode::FAILURE
        }
    }
}
