//! flood-sub's event loop: opens the subscriber connections (at most
//! `concurrency` being set up at a time), confirms each subscription, reads
//! and checks every delivery, and ends by itself (`--count`, `--duration`,
//! idle or overall timeout, or a stop signal).
//!
//! One process, one thread, one mio `Poll`. Registration is edge-triggered
//! for reading and writing, done once; every socket is read until it would
//! block. A connection keeps its parser state and sequence sets, and no read
//! buffer: all reads go into one scratch buffer. Reports go to a callback,
//! so the same loop serves a single process and a worker process.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

use crate::cli::Proto;
use crate::clock::now_ns;
use crate::codec::Event;
use crate::hist::Histogram;
use crate::net::{self, TlsSetup, Transport};
use crate::report::SubTotals;
use crate::seqset::PerPublisher;
use crate::{http, line, peers, sse, stamp, ws};

/// Everything a subscriber run needs to know.
#[derive(Clone)]
pub struct SubOptions {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub host: String,
    pub channel: String,
    /// With more than one: connection number i subscribes to `CHANNEL.K`,
    /// K = i mod `channels` (see `cli::channel_name`).
    pub channels: usize,
    /// HTTP, SSE, WebSocket: what comes before the channel in the request
    /// path (`/msgbus/`).
    pub http_path: String,
    /// Global connection numbers this process opens (source address and
    /// probe channel follow the global number).
    pub range: Range<usize>,
    /// Messages each connection expects.
    pub count: Option<u64>,
    /// Run this long after all connections are set up.
    pub duration: Option<Duration>,
    /// With `count`: give up after this long without a delivery.
    pub idle_timeout: Duration,
    /// Give up after this long in all.
    pub timeout: Option<Duration>,
    /// Connections not subscribed after this long fail.
    pub setup_timeout: Duration,
    pub sources: usize,
    pub http10: bool,
    pub auth: Option<String>,
    pub expect_type: Option<String>,
    pub tls: Option<TlsSetup>,
    /// Connections being set up at once.
    pub concurrency: usize,
    /// Period of `Report::Tick`.
    pub interval: Duration,
}

/// What the loop tells its caller while it runs.
pub enum Report<'a> {
    /// All connections are set up (subscribed or failed).
    Ready {
        subscribed: u64,
        failed: u64,
        secs: f64,
    },
    /// Once a second, whatever `interval` is: how many connections are
    /// subscribed (flood-sub announces it on the ready channel).
    Subscribed { subscribed: u64 },
    /// Periodic: counts so far, and the latencies seen since the last tick.
    Tick {
        elapsed_s: f64,
        subscribed: u64,
        received: u64,
        errors: u64,
        interval: &'a Histogram,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Connecting,
    Subscribing,
    Active,
    Closed,
}

enum Parser {
    Line(line::Parser),
    Http(Box<http::SubParser>),
    Sse(Box<sse::SseParser>),
    Ws(Box<ws::WsParser>),
    Peer(Box<peers::Parser>),
}

struct Conn {
    /// Global connection number.
    index: usize,
    phase: Phase,
    io: Option<Transport>,
    /// The subscription request not yet written, and how much of it was.
    out: Vec<u8>,
    out_pos: usize,
    parser: Parser,
    /// Line protocol: the private channel whose probe confirms `+`.
    probe: Option<String>,
    started_ns: u64,
    seen: PerPublisher,
    unique: u64,
}

/// Counters of the whole process.
#[derive(Default)]
struct Stats {
    received: u64,
    duplicated: u64,
    bad: u64,
    first_bad: Option<String>,
    first_ns: Option<u64>,
    last_ns: u64,
    complete: u64,
    hist: Histogram,
    interval: Histogram,
}

/// What a delivery handler needs besides the connection.
struct Ctx<'a> {
    channel: &'a [u8],
    expect_type: Option<&'a [u8]>,
    count: Option<u64>,
}

/// Bytes of the scratch read buffer.
const SCRATCH: usize = 256 * 1024;

fn subscribe_request(
    opts: &SubOptions,
    probe: Option<&str>,
    index: usize,
    channel: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    let path = format!("{}{channel}", opts.http_path);
    match opts.proto {
        Proto::Line => {
            line::encode_subscribe(&mut out, channel);
            if let Some(p) = probe {
                line::encode_subscribe(&mut out, p);
                line::encode_publish(&mut out, p, "text/plain", b"p");
                line::encode_unsubscribe(&mut out, p);
            }
        }
        Proto::Http => {
            http::encode_subscribe(
                &mut out,
                &opts.host,
                &path,
                opts.http10,
                opts.auth.as_deref(),
            );
        }
        Proto::Sse => {
            sse::encode_subscribe(&mut out, &opts.host, &path, opts.auth.as_deref());
        }
        Proto::Ws => {
            ws::encode_handshake(&mut out, &opts.host, &path, false, opts.auth.as_deref());
        }
        Proto::Nats | Proto::Redis | Proto::Mqtt => {
            let client = peers::client_id("sub", index);
            peers::subscribe(&mut out, opts.proto, channel, &client);
        }
    }
    out
}

/// Handles one parsed event of connection `conn`; returns true when the
/// event confirmed the subscription.
fn on_event(
    ev: Event<'_>,
    now: u64,
    probe: &Option<String>,
    seen: &mut PerPublisher,
    unique: &mut u64,
    stats: &mut Stats,
    ctx: &Ctx<'_>,
) -> bool {
    match ev {
        // A NATS subscriber's PONG: its SUB is in place.
        Event::Subscribed | Event::Pong => true,
        Event::Response { .. } | Event::Closed { .. } | Event::Ping => false,
        Event::Message {
            channel,
            ctype,
            prefix,
            len,
        } => {
            if let Some(p) = probe {
                if channel == p.as_bytes() {
                    return true;
                }
            }
            if !channel.is_empty() && channel != ctx.channel {
                // Another channel (a late probe): not ours to count.
                return false;
            }
            if let Some(t) = ctx.expect_type {
                if ctype != t {
                    stats.bad += 1;
                    if stats.first_bad.is_none() {
                        stats.first_bad = Some(format!(
                            "content type `{}` instead of `{}`",
                            String::from_utf8_lossy(ctype),
                            String::from_utf8_lossy(t)
                        ));
                    }
                    return false;
                }
            }
            let Some(s) = stamp::parse(prefix) else {
                stats.bad += 1;
                if stats.first_bad.is_none() {
                    let shown = &prefix[..prefix.len().min(48)];
                    stats.first_bad = Some(format!(
                        "a {len}-byte body without a flood-pub stamp: {:?}",
                        String::from_utf8_lossy(shown)
                    ));
                }
                return false;
            };
            stats.received += 1;
            stats.first_ns.get_or_insert(now);
            stats.last_ns = now;
            if seen.insert(s.publisher, s.seq) {
                *unique += 1;
                let lat = now.saturating_sub(s.sent_ns);
                stats.hist.record(lat);
                stats.interval.record(lat);
                if ctx.count == Some(*unique) {
                    stats.complete += 1;
                }
            } else {
                stats.duplicated += 1;
            }
            false
        }
    }
}

struct Loop<'a> {
    opts: &'a SubOptions,
    /// The channel names; connection i subscribes to `names[i % len]`.
    names: Vec<String>,
    poll: Poll,
    conns: Vec<Conn>,
    stats: Stats,
    scratch: Vec<u8>,
    next_start: usize,
    in_setup: usize,
    subscribed: u64,
    /// Subscribed and not closed.
    active: u64,
    failed: u64,
    /// Closed before receiving `count` messages.
    closed_incomplete: u64,
    errors: u64,
    first_error: Option<String>,
}

impl<'a> Loop<'a> {
    fn fail(&mut self, i: usize, why: String) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Closed {
            return;
        }
        if matches!(c.phase, Phase::Connecting | Phase::Subscribing) {
            self.in_setup -= 1;
            self.failed += 1;
        }
        if c.phase == Phase::Active {
            self.active -= 1;
        }
        // A connection that already has all its messages stays complete.
        if self.opts.count.is_none_or(|n| c.unique < n) {
            self.closed_incomplete += 1;
        }
        c.phase = Phase::Closed;
        if let Some(mut io) = c.io.take() {
            let _ = self.poll.registry().deregister(io.socket());
        }
        c.out = Vec::new();
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("connection {}: {why}", c.index));
        }
    }

    fn start_one(&mut self, i: usize, now: u64) {
        let opts = self.opts;
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        let src = net::source_for(c.index, opts.sources);
        let io = net::connect(opts.addr, src).and_then(|s| Transport::new(s, opts.tls.as_ref()));
        let mut io = match io {
            Ok(io) => io,
            Err(e) => {
                c.phase = Phase::Connecting;
                self.in_setup += 1;
                let from = src.map(|s| format!(" from {s}")).unwrap_or_default();
                self.fail(i, format!("connect to {}{from}: {e}", opts.addr));
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            io.socket(),
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            c.phase = Phase::Connecting;
            self.in_setup += 1;
            self.fail(i, format!("register: {e}"));
            return;
        }
        c.io = Some(io);
        c.phase = Phase::Connecting;
        c.started_ns = now;
        self.in_setup += 1;
    }

    /// Starts connects while fewer than `concurrency` are being set up.
    fn start_more(&mut self, now: u64) {
        while self.in_setup < self.opts.concurrency && self.next_start < self.conns.len() {
            let i = self.next_start;
            self.next_start += 1;
            self.start_one(i, now);
        }
    }

    /// Writes what is pending; `Err` closes the connection.
    fn flush(&mut self, i: usize) -> Result<(), String> {
        let Some(c) = self.conns.get_mut(i) else {
            return Ok(());
        };
        let Some(io) = c.io.as_mut() else {
            return Ok(());
        };
        io.flush().map_err(|e| format!("write: {e}"))?;
        while c.out_pos < c.out.len() {
            match io.write(&c.out[c.out_pos..]) {
                Ok(0) => return Err("write: the socket accepted nothing".into()),
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if !c.out.is_empty() {
            c.out = Vec::new();
            c.out_pos = 0;
        }
        Ok(())
    }

    /// Reads until the socket would block; `Ok(true)` when the subscription
    /// was confirmed during this read.
    fn read(&mut self, i: usize) -> Result<bool, String> {
        let index = self.conns.get(i).map_or(0, |c| c.index);
        let name = &self.names[index % self.names.len()];
        let ctx = Ctx {
            channel: name.as_bytes(),
            expect_type: self.opts.expect_type.as_deref().map(str::as_bytes),
            count: self.opts.count,
        };
        let Some(c) = self.conns.get_mut(i) else {
            return Ok(false);
        };
        let stats = &mut self.stats;
        let scratch = &mut self.scratch;
        let mut confirmed = false;
        let mut pings = 0u32;
        let proto = self.opts.proto;
        loop {
            if pings > 0 {
                // Answered after the read, on the same connection.
                for _ in 0..std::mem::take(&mut pings) {
                    peers::answer_ping(&mut c.out, proto);
                }
            }
            let Some(io) = c.io.as_mut() else {
                return Ok(confirmed);
            };
            let n = match io.read(scratch) {
                Ok(0) => return Err("connection closed by the server".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(confirmed),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let now = now_ns();
            let Conn {
                parser,
                probe,
                seen,
                unique,
                ..
            } = &mut *c;
            let mut on = |ev: Event<'_>| {
                if ev == Event::Ping {
                    pings += 1;
                }
                if on_event(ev, now, probe, seen, unique, stats, &ctx) {
                    confirmed = true;
                }
            };
            let data = scratch.get(..n).unwrap_or_default();
            let r = match parser {
                Parser::Line(p) => p.feed(data, &mut on),
                Parser::Http(p) => p.feed(data, &mut on),
                Parser::Sse(p) => p.feed(data, &mut on),
                Parser::Ws(p) => p.feed(data, &mut on),
                Parser::Peer(p) => p.feed(data, &mut on),
            };
            r.map_err(|e| e.to_string())?;
        }
    }

    fn on_ready_event(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Connecting {
            let Some(io) = c.io.as_mut() else { return };
            match net::connect_finished(io.socket()) {
                Ok(true) => {
                    c.phase = Phase::Subscribing;
                    let name = &self.names[c.index % self.names.len()];
                    c.out = subscribe_request(self.opts, c.probe.as_deref(), c.index, name);
                    c.out_pos = 0;
                }
                Ok(false) => return,
                Err(e) => {
                    let why = format!("connect to {}: {e}", self.opts.addr);
                    self.fail(i, why);
                    return;
                }
            }
        }
        if let Err(e) = self.flush(i) {
            self.fail(i, e);
            return;
        }
        match self.read(i) {
            Ok(true) => self.confirm(i),
            Ok(false) => {}
            Err(e) => {
                // A confirmation in the same read still counts.
                self.fail(i, e);
                return;
            }
        }
        // Answers to the server's pings.
        if self.conns.get(i).is_some_and(|c| c.out_pos < c.out.len()) {
            if let Err(e) = self.flush(i) {
                self.fail(i, e);
            }
        }
    }

    fn confirm(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Subscribing {
            c.phase = Phase::Active;
            c.probe = None;
            self.in_setup -= 1;
            self.subscribed += 1;
            self.active += 1;
        }
    }

    /// Fails the connections still being set up after `setup_timeout`.
    fn expire_setups(&mut self, now: u64) {
        let limit = self.opts.setup_timeout.as_nanos() as u64;
        let late: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                matches!(c.phase, Phase::Connecting | Phase::Subscribing)
                    && now.saturating_sub(c.started_ns) > limit
            })
            .map(|(i, _)| i)
            .collect();
        for i in late {
            let secs = self.opts.setup_timeout.as_secs_f64();
            self.fail(i, format!("not subscribed within {secs} s"));
        }
    }

    fn setup_done(&self) -> bool {
        self.next_start >= self.conns.len() && self.in_setup == 0
    }

    fn totals(&self) -> SubTotals {
        let n = self.conns.len() as u64;
        let lost = match self.opts.count {
            Some(c) => self.conns.iter().map(|k| c.saturating_sub(k.unique)).sum(),
            None => 0,
        };
        SubTotals {
            connections: n,
            subscribed: self.subscribed,
            received: self.stats.received,
            unique: self.conns.iter().map(|c| c.unique).sum(),
            duplicated: self.stats.duplicated,
            bad: self.stats.bad,
            lost,
            expected: self.opts.count.map(|c| c * n),
            errors: self.errors,
            first_error: self.first_error.clone(),
            first_bad: self.stats.first_bad.clone(),
            first_ns: self.stats.first_ns,
            last_ns: self.stats.first_ns.map(|_| self.stats.last_ns),
            hist: self.stats.hist.clone(),
        }
    }
}

/// Runs the subscribers of `opts.range` to the end and returns the totals.
/// `Err` only when the loop itself cannot run (no `Poll`).
pub fn run(opts: &SubOptions, report: &mut dyn FnMut(Report<'_>)) -> Result<SubTotals, String> {
    let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    let pid = std::process::id();
    let conns = opts
        .range
        .clone()
        .map(|index| Conn {
            index,
            phase: Phase::NotStarted,
            io: None,
            out: Vec::new(),
            out_pos: 0,
            parser: match opts.proto {
                Proto::Line => Parser::Line(line::Parser::default()),
                Proto::Http => Parser::Http(Box::default()),
                Proto::Sse => Parser::Sse(Box::default()),
                Proto::Ws => Parser::Ws(Box::default()),
                Proto::Nats | Proto::Redis | Proto::Mqtt => match peers::Parser::new(opts.proto) {
                    Some(p) => Parser::Peer(Box::new(p)),
                    None => Parser::Line(line::Parser::default()),
                },
            },
            probe: (opts.proto == Proto::Line)
                .then(|| format!("{}.probe.{pid}.{index}", opts.channel)),
            started_ns: 0,
            seen: PerPublisher::default(),
            unique: 0,
        })
        .collect();
    let mut lp = Loop {
        opts,
        names: crate::cli::channel_names(&opts.channel, opts.channels),
        poll,
        conns,
        stats: Stats::default(),
        scratch: vec![0; SCRATCH],
        next_start: 0,
        in_setup: 0,
        subscribed: 0,
        active: 0,
        failed: 0,
        closed_incomplete: 0,
        errors: 0,
        first_error: None,
    };
    let mut events = Events::with_capacity(1024);
    let start = now_ns();
    let mut ready_ns: Option<u64> = None;
    let interval = opts.interval.as_nanos().max(1) as u64;
    let mut next_tick = start + interval;
    let mut next_subscribed = start + 1_000_000_000;
    let mut last_expire = start;
    lp.start_more(start);

    loop {
        match lp.poll.poll(&mut events, Some(Duration::from_millis(100))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            lp.on_ready_event(ev.token().0);
        }
        let now = now_ns();
        if ready_ns.is_none() {
            if now.saturating_sub(last_expire) > 100_000_000 {
                last_expire = now;
                lp.expire_setups(now);
            }
            lp.start_more(now);
            if lp.setup_done() {
                ready_ns = Some(now);
                report(Report::Ready {
                    subscribed: lp.subscribed,
                    failed: lp.failed,
                    secs: now.saturating_sub(start) as f64 / 1e9,
                });
            }
        }
        if now >= next_subscribed {
            report(Report::Subscribed {
                subscribed: lp.subscribed,
            });
            while next_subscribed <= now {
                next_subscribed += 1_000_000_000;
            }
        }
        if now >= next_tick {
            report(Report::Tick {
                elapsed_s: now.saturating_sub(start) as f64 / 1e9,
                subscribed: lp.subscribed,
                received: lp.stats.received,
                errors: lp.errors,
                interval: &lp.stats.interval,
            });
            lp.stats.interval.clear();
            while next_tick <= now {
                next_tick += interval;
            }
        }

        // Ends.
        if net::stop_requested() {
            break;
        }
        if let Some(t) = opts.timeout {
            if now.saturating_sub(start) >= t.as_nanos() as u64 {
                break;
            }
        }
        let Some(ready) = ready_ns else { continue };
        if lp.subscribed == 0 {
            break;
        }
        if lp.active == 0 {
            break;
        }
        if let Some(d) = opts.duration {
            if now.saturating_sub(ready) >= d.as_nanos() as u64 {
                break;
            }
        }
        if opts.count.is_some() {
            if lp.stats.complete + lp.closed_incomplete >= lp.conns.len() as u64 {
                break;
            }
            let idle = now.saturating_sub(lp.stats.last_ns);
            if lp.stats.first_ns.is_some() && idle >= opts.idle_timeout.as_nanos() as u64 {
                break;
            }
        }
    }
    Ok(lp.totals())
}
