//! flood-pub's event loop: opens the publisher connections, waits until each
//! is ready, then publishes stamped messages, pipelined, as fast as the
//! sockets take them or at `rate` msgs/s (spread evenly over the
//! connections), and ends once the server has confirmed every publish.
//!
//! Confirmation: on the HTTP bus every POST is answered (`2xx` counts, at
//! most `pipeline` unanswered per connection); on the line protocol each
//! connection subscribes to a private probe channel, publishes one probe
//! before the run (ready) and one after its last message: when that probe
//! comes back, the server has processed everything before it.
//!
//! One thread, one mio `Poll`, edge-triggered; the same shape as
//! `subscriber`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

use crate::cli::Proto;
use crate::clock::now_ns;
use crate::codec::Event;
use crate::net::{self, TlsSetup, Transport};
use crate::report::PubTotals;
use crate::stamp::{self, Body, Stamp};
use crate::{http, line, peers, ws};

/// Everything a publisher run needs to know.
#[derive(Clone)]
pub struct PubOptions {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub host: String,
    pub channel: String,
    /// With more than one, message n of connection j goes to channel
    /// `CHANNEL.K`, K = (n × connections + j) mod `channels`: with a
    /// count that is a multiple of both, every channel gets count /
    /// channels messages.
    pub channels: usize,
    /// HTTP, WebSocket: what comes before the channel in the request path
    /// (`/msgbus/`).
    pub http_path: String,
    pub ctype: String,
    /// The body template (padding or file contents after the stamp).
    pub body: Body,
    pub connections: usize,
    /// Messages in all, split over the connections.
    pub count: Option<u64>,
    /// Stop publishing after this long.
    pub duration: Option<Duration>,
    /// Messages per second in all.
    pub rate: Option<f64>,
    /// HTTP and Redis: most unanswered POSTs (PUBLISHes) per connection.
    pub pipeline: u64,
    pub auth: Option<String>,
    pub tls: Option<TlsSetup>,
    pub sources: usize,
    pub interval: Duration,
    /// Connections not ready after this long fail.
    pub setup_timeout: Duration,
    /// How long to wait for the server's confirmations after the last publish.
    pub confirm_timeout: Duration,
}

/// What the loop tells its caller while it runs.
pub enum PubReport {
    /// All connections are ready (or failed); publishing starts.
    Started { connected: u64, secs: f64 },
    Tick {
        elapsed_s: f64,
        sent: u64,
        confirmed: u64,
        errors: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// Line protocol: the start probe is on its way.
    Starting,
    Ready,
    Sending,
    /// All sent; waiting for the end probe or the last responses.
    Ending,
    Done,
    Closed,
}

enum Parser {
    Line(line::Parser),
    Http(http::RespParser),
    Ws(ws::WsParser),
    Peer(peers::Parser),
}

struct Conn {
    index: usize,
    phase: Phase,
    io: Option<Transport>,
    out: Vec<u8>,
    out_pos: usize,
    parser: Parser,
    publisher: u64,
    probe: String,
    quota: Option<u64>,
    sent: u64,
    confirmed: u64,
    inflight: u64,
    /// This connection's share of the rate, msgs/s.
    rate: Option<f64>,
    done_ns: u64,
    /// Reached `Ready` once (counts as connected).
    was_ready: bool,
    /// The last write would have blocked: the socket's writable edge will
    /// wake the loop. When false and there is more to send, nothing else
    /// will, and the loop must come back at once.
    blocked: bool,
}

/// Bytes buffered per connection before waiting for the socket.
const OUT_HIGH: usize = 64 * 1024;
const SCRATCH: usize = 64 * 1024;

struct Loop<'a> {
    opts: &'a PubOptions,
    /// The channel names, and their HTTP request paths.
    names: Vec<String>,
    paths: Vec<String>,
    poll: Poll,
    conns: Vec<Conn>,
    body: Body,
    scratch: Vec<u8>,
    t0: Option<u64>,
    stopping: bool,
    errors: u64,
    first_error: Option<String>,
}

impl<'a> Loop<'a> {
    fn error(&mut self, why: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why);
        }
    }

    fn fail(&mut self, i: usize, why: String) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if matches!(c.phase, Phase::Closed) {
            return;
        }
        c.phase = Phase::Closed;
        if let Some(mut io) = c.io.take() {
            let _ = self.poll.registry().deregister(io.socket());
        }
        let index = c.index;
        self.error(format!("connection {index}: {why}"));
    }

    fn flush(&mut self, i: usize) -> Result<(), String> {
        let Some(c) = self.conns.get_mut(i) else {
            return Ok(());
        };
        let Some(io) = c.io.as_mut() else {
            return Ok(());
        };
        io.flush().map_err(|e| format!("write: {e}"))?;
        c.blocked = false;
        while c.out_pos < c.out.len() {
            match io.write(&c.out[c.out_pos..]) {
                Ok(0) => return Err("write: the socket accepted nothing".into()),
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos > OUT_HIGH {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        Ok(())
    }

    /// Builds as many publishes as the quota, rate, pipeline and buffer
    /// allow, writes them, and moves to `Ending` when done.
    fn produce(&mut self, i: usize, now: u64) {
        let (Some(t0), Some(c)) = (self.t0, self.conns.get_mut(i)) else {
            return;
        };
        if c.phase != Phase::Sending {
            return;
        }
        let by_rate = match c.rate {
            None => u64::MAX,
            Some(r) => (r * now.saturating_sub(t0) as f64 / 1e9).floor() as u64 + 1,
        };
        let limit = c
            .quota
            .unwrap_or(u64::MAX)
            .min(by_rate)
            .min(stamp::MAX_SEQ + 1);
        let opts = self.opts;
        let k = self.names.len() as u64;
        let n_conns = self.conns.len() as u64 % k;
        let c = &mut self.conns[i];
        while !self.stopping
            && c.sent < limit
            && c.out.len() - c.out_pos < OUT_HIGH
            && (matches!(
                opts.proto,
                Proto::Line | Proto::Ws | Proto::Nats | Proto::Mqtt
            ) || c.inflight < opts.pipeline)
        {
            let ch = ((c.sent % k) * n_conns + c.index as u64 % k) % k;
            let name = &self.names[ch as usize];
            let body = self.body.stamp(Stamp {
                sent_ns: now_ns(),
                publisher: c.publisher,
                seq: c.sent,
            });
            match opts.proto {
                Proto::Line => line::encode_publish(&mut c.out, name, &opts.ctype, body),
                Proto::Http => {
                    http::encode_publish(
                        &mut c.out,
                        &opts.host,
                        &self.paths[ch as usize],
                        &opts.ctype,
                        body,
                        opts.auth.as_deref(),
                    );
                    c.inflight += 1;
                }
                Proto::Ws => {
                    let text = opts.ctype.starts_with("text/");
                    ws::encode_message(&mut c.out, text, body, mask_of(c.publisher, c.sent));
                }
                Proto::Nats | Proto::Mqtt => peers::publish(&mut c.out, opts.proto, name, body),
                // Every PUBLISH is answered.
                Proto::Redis => {
                    peers::publish(&mut c.out, opts.proto, name, body);
                    c.inflight += 1;
                }
                // Refused at start: SSE only subscribes.
                Proto::Sse => {}
            }
            c.sent += 1;
        }
        let finished =
            self.stopping || c.quota.is_some_and(|q| c.sent >= q) || c.sent > stamp::MAX_SEQ;
        if finished {
            c.phase = Phase::Ending;
            if opts.proto == Proto::Line {
                line::encode_publish(&mut c.out, &c.probe, "text/plain", b"e");
            } else if opts.proto == Proto::Ws {
                // Answered once the server has taken every message before.
                ws::encode_close(&mut c.out, mask_of(c.publisher, c.sent));
            } else if peers::end_publisher(&mut c.out, opts.proto) {
                // The Pong ends it.
            } else if c.inflight == 0 {
                c.phase = Phase::Done;
                c.done_ns = now;
            }
        }
        if let Err(e) = self.flush(i) {
            self.fail(i, e);
        }
    }

    fn read(&mut self, i: usize) -> Result<(), String> {
        let Some(c) = self.conns.get_mut(i) else {
            return Ok(());
        };
        let scratch = &mut self.scratch;
        // Answers other than 2xx: how many, and the first status.
        let mut refused = 0u64;
        let mut first_refused: Option<u16> = None;
        let mut pings = 0u32;
        while let Some(io) = c.io.as_mut() {
            for _ in 0..std::mem::take(&mut pings) {
                peers::answer_ping(&mut c.out, self.opts.proto);
            }
            let n = match io.read(scratch) {
                // A WebSocket closes after the close handshake.
                Ok(0) if c.phase == Phase::Done => return Ok(()),
                Ok(0) => return Err("connection closed by the server".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let now = now_ns();
            let Conn {
                parser,
                phase,
                probe,
                sent,
                confirmed,
                inflight,
                done_ns,
                was_ready,
                ..
            } = &mut *c;
            let mut on = |ev: Event<'_>| match ev {
                Event::Message { channel, .. } if channel == probe.as_bytes() => match *phase {
                    Phase::Starting => {
                        *phase = Phase::Ready;
                        *was_ready = true;
                    }
                    Phase::Ending => {
                        *phase = Phase::Done;
                        *confirmed = *sent;
                        *done_ns = now;
                    }
                    _ => {}
                },
                Event::Subscribed | Event::Pong if *phase == Phase::Starting => {
                    *phase = Phase::Ready;
                    *was_ready = true;
                }
                Event::Pong if *phase == Phase::Ending => {
                    *phase = Phase::Done;
                    *confirmed = *sent;
                    *done_ns = now;
                }
                Event::Ping => pings += 1,
                Event::Closed { .. } if *phase == Phase::Ending => {
                    *phase = Phase::Done;
                    *confirmed = *sent;
                    *done_ns = now;
                }
                Event::Response { status } => {
                    *inflight = inflight.saturating_sub(1);
                    if (200..300).contains(&status) {
                        *confirmed += 1;
                    } else {
                        refused += 1;
                        first_refused.get_or_insert(status);
                    }
                    if *phase == Phase::Ending && *inflight == 0 {
                        *phase = Phase::Done;
                        *done_ns = now;
                    }
                }
                _ => {}
            };
            let data = scratch.get(..n).unwrap_or_default();
            let r = match parser {
                Parser::Line(p) => p.feed(data, &mut on),
                Parser::Http(p) => p.feed(data, &mut on),
                Parser::Ws(p) => p.feed(data, &mut on),
                Parser::Peer(p) => p.feed(data, &mut on),
            };
            r.map_err(|e| e.to_string())?;
        }
        let index = c.index;
        if let Some(status) = first_refused {
            self.errors += refused - 1;
            self.error(format!("connection {index}: POST answered {status}"));
        }
        Ok(())
    }

    fn on_event(&mut self, i: usize, now: u64) {
        let opts = self.opts;
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.phase == Phase::Closed {
            return;
        }
        if c.phase == Phase::Connecting {
            let Some(io) = c.io.as_mut() else { return };
            match net::connect_finished(io.socket()) {
                Ok(true) => {
                    if opts.proto == Proto::Line {
                        line::encode_subscribe(&mut c.out, &c.probe);
                        line::encode_publish(&mut c.out, &c.probe, "text/plain", b"s");
                        c.phase = Phase::Starting;
                    } else if peers::start_publisher(
                        &mut c.out,
                        opts.proto,
                        &peers::client_id("pub", c.index),
                    ) {
                        c.phase = Phase::Starting;
                    } else if opts.proto == Proto::Ws {
                        ws::encode_handshake(
                            &mut c.out,
                            &opts.host,
                            &format!("{}{}", opts.http_path, opts.channel),
                            true,
                            opts.auth.as_deref(),
                        );
                        c.phase = Phase::Starting;
                    } else {
                        c.phase = Phase::Ready;
                        c.was_ready = true;
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    self.fail(i, format!("connect to {}: {e}", opts.addr));
                    return;
                }
            }
        }
        if let Err(e) = self.flush(i) {
            self.fail(i, e);
            return;
        }
        if let Err(e) = self.read(i) {
            self.fail(i, e);
            return;
        }
        // Answers to the server's pings (written now, or with the publishes).
        if let Err(e) = self.flush(i) {
            self.fail(i, e);
            return;
        }
        self.produce(i, now);
    }

    fn totals(&self, now: u64) -> PubTotals {
        let end = self
            .conns
            .iter()
            .filter(|c| c.phase == Phase::Done)
            .map(|c| c.done_ns)
            .max()
            .unwrap_or(now);
        PubTotals {
            connections: self.conns.len() as u64,
            connected: self.conns.iter().filter(|c| c.was_ready).count() as u64,
            sent: self.conns.iter().map(|c| c.sent).sum(),
            confirmed: self.conns.iter().map(|c| c.confirmed).sum(),
            errors: self.errors,
            first_error: self.first_error.clone(),
            elapsed_s: self
                .t0
                .map_or(0.0, |t0| end.saturating_sub(t0) as f64 / 1e9),
        }
    }
}

/// Runs the publishers to the end and returns the totals. `Err` only when
/// the loop itself cannot run.
pub fn run(opts: &PubOptions, report: &mut dyn FnMut(PubReport)) -> Result<PubTotals, String> {
    let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    let pid = u64::from(std::process::id());
    let n = opts.connections.max(1);
    let names = crate::cli::channel_names(&opts.channel, opts.channels);
    let paths = names
        .iter()
        .map(|n| format!("{}{n}", opts.http_path))
        .collect();
    let mut lp = Loop {
        opts,
        names,
        paths,
        poll,
        conns: Vec::with_capacity(n),
        body: opts.body.clone(),
        scratch: vec![0; SCRATCH],
        t0: None,
        stopping: false,
        errors: 0,
        first_error: None,
    };
    let start = now_ns();
    for index in 0..n {
        let quota = opts
            .count
            .map(|c| c / n as u64 + u64::from((index as u64) < c % n as u64));
        lp.conns.push(Conn {
            index,
            phase: Phase::Connecting,
            io: None,
            out: Vec::new(),
            out_pos: 0,
            parser: match opts.proto {
                Proto::Line => Parser::Line(line::Parser::default()),
                Proto::Http | Proto::Sse => Parser::Http(http::RespParser::default()),
                Proto::Ws => Parser::Ws(ws::WsParser::default()),
                Proto::Nats | Proto::Redis | Proto::Mqtt => match peers::Parser::new(opts.proto) {
                    Some(p) => Parser::Peer(p),
                    None => Parser::Line(line::Parser::default()),
                },
            },
            publisher: ((pid << 16) | index as u64) & stamp::MAX_PUBLISHER,
            probe: format!("{}.pub.{pid}.{index}", opts.channel),
            quota,
            sent: 0,
            confirmed: 0,
            inflight: 0,
            rate: opts.rate.map(|r| r / n as f64),
            done_ns: 0,
            was_ready: false,
            blocked: false,
        });
        let src = net::source_for(index, opts.sources);
        let io = net::connect(opts.addr, src).and_then(|s| Transport::new(s, opts.tls.as_ref()));
        match io {
            Ok(mut io) => {
                match lp.poll.registry().register(
                    io.socket(),
                    Token(index),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(()) => {
                        if let Some(c) = lp.conns.get_mut(index) {
                            c.io = Some(io);
                        }
                    }
                    Err(e) => lp.fail(index, format!("register: {e}")),
                }
            }
            Err(e) => lp.fail(index, format!("connect to {}: {e}", opts.addr)),
        }
    }

    let mut events = Events::with_capacity(1024);
    let interval = opts.interval.as_nanos().max(1) as u64;
    let mut next_tick = start + interval;
    let mut ending_since: Option<u64> = None;
    loop {
        let timeout = next_wakeup(&lp, now_ns());
        match lp.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let now = now_ns();
        for ev in events.iter() {
            lp.on_event(ev.token().0, now);
        }
        if net::stop_requested() && !lp.stopping {
            lp.stopping = true;
            if lp.t0.is_none() {
                break;
            }
        }

        match lp.t0 {
            None => {
                let waiting = lp
                    .conns
                    .iter()
                    .filter(|c| matches!(c.phase, Phase::Connecting | Phase::Starting))
                    .count();
                if waiting > 0 && now.saturating_sub(start) > opts.setup_timeout.as_nanos() as u64 {
                    let late: Vec<usize> = lp
                        .conns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| matches!(c.phase, Phase::Connecting | Phase::Starting))
                        .map(|(i, _)| i)
                        .collect();
                    for i in late {
                        let secs = opts.setup_timeout.as_secs_f64();
                        lp.fail(i, format!("not ready within {secs} s"));
                    }
                    continue;
                }
                if waiting == 0 {
                    let connected =
                        lp.conns.iter().filter(|c| c.phase == Phase::Ready).count() as u64;
                    report(PubReport::Started {
                        connected,
                        secs: now.saturating_sub(start) as f64 / 1e9,
                    });
                    if connected == 0 {
                        break;
                    }
                    lp.t0 = Some(now);
                    for c in lp.conns.iter_mut().filter(|c| c.phase == Phase::Ready) {
                        c.phase = Phase::Sending;
                    }
                }
            }
            Some(t0) => {
                if let Some(d) = opts.duration {
                    if now.saturating_sub(t0) >= d.as_nanos() as u64 {
                        lp.stopping = true;
                    }
                }
            }
        }
        if lp.t0.is_some() {
            for i in 0..lp.conns.len() {
                lp.produce(i, now);
            }
        }

        if now >= next_tick {
            let t = lp.totals(now);
            report(PubReport::Tick {
                elapsed_s: now.saturating_sub(start) as f64 / 1e9,
                sent: t.sent,
                confirmed: t.confirmed,
                errors: t.errors,
            });
            while next_tick <= now {
                next_tick += interval;
            }
        }

        if lp.t0.is_none() {
            continue;
        }
        let open = lp
            .conns
            .iter()
            .filter(|c| !matches!(c.phase, Phase::Done | Phase::Closed))
            .count();
        if open == 0 {
            break;
        }
        let all_ending = lp
            .conns
            .iter()
            .all(|c| matches!(c.phase, Phase::Ending | Phase::Done | Phase::Closed));
        if all_ending {
            let since = *ending_since.get_or_insert(now);
            if now.saturating_sub(since) > opts.confirm_timeout.as_nanos() as u64 {
                let late: Vec<usize> = lp
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.phase == Phase::Ending)
                    .map(|(i, _)| i)
                    .collect();
                for i in late {
                    let secs = opts.confirm_timeout.as_secs_f64();
                    lp.fail(
                        i,
                        format!("the server did not confirm the publishes within {secs} s"),
                    );
                }
                break;
            }
        }
    }
    Ok(lp.totals(now_ns()))
}

/// A client frame's mask: it need not be secret here, only vary.
fn mask_of(publisher: u64, seq: u64) -> [u8; 4] {
    ((seq as u32).wrapping_mul(0x9e37_79b1) ^ publisher as u32).to_be_bytes()
}

/// How long `poll` may sleep: until the next rate-limited publish is due,
/// at most 100 ms; not at all while a connection could send more and no
/// socket event would say so.
fn next_wakeup(lp: &Loop<'_>, now: u64) -> Duration {
    let cap = 100_000_000u64;
    let (Some(t0), false) = (lp.t0, lp.stopping) else {
        return Duration::from_nanos(cap);
    };
    let mut wait = cap;
    let pipelined = matches!(lp.opts.proto, Proto::Http | Proto::Redis);
    for c in lp.conns.iter().filter(|c| c.phase == Phase::Sending) {
        match c.rate {
            // Unlimited: socket readiness drives sending while the socket
            // is full, answers while the pipeline is; otherwise nothing
            // would wake the loop before its next timeout.
            None => {
                let more = c.quota.is_none_or(|q| c.sent < q);
                let room = !pipelined || c.inflight < lp.opts.pipeline;
                if more && room && !c.blocked {
                    return Duration::ZERO;
                }
            }
            Some(r) if r > 0.0 => {
                let due = t0 + (c.sent as f64 * 1e9 / r) as u64;
                wait = wait.min(due.saturating_sub(now));
            }
            Some(_) => {}
        }
    }
    Duration::from_nanos(wait)
}
