//! The readiness loop: one thread, one `mio::Poll`, every connection.
//!
//! A turn of the loop:
//! 1. poll, with the timeout of the earliest deadline (broker timers, lingering
//!    closes, accept back-off), or zero when work is left over;
//! 2. dispatch events: accept until `WouldBlock`; read until `WouldBlock` or
//!    the per-turn budget, decoding and running commands as input arrives;
//!    note writability;
//! 3. run due timers, resume connections whose wait was answered, continue
//!    connections that ran out of budget;
//! 4. flush every dirty connection once, with vectored writes, then close the
//!    connections marked for closing (which may dirty others: flush again).
//!
//! Sockets are registered once for both directions (edge-triggered); the
//! readiness bits live in [`Conn`]. Connections are freed only at the end of a
//! turn, and each carries a generation, so nothing stale reaches a reused slot.

use std::io::{self, Read, Write};
use std::mem;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::{TcpListener, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::conn::{CloseReason, Conn, Door};
use super::outq::{Flushed, OutQueue};
use super::tls::TlsStream;
use super::transport::Transport;
use crate::broker::{Broker, ConnId, Millis, Outbox};
use crate::config::{Config, Limits, Listen, SlowPolicy};
use crate::http::session::{HttpContext, HttpSession};
use crate::line::session::{LineSession, Next};

/// Listener tokens sit at the top of the token space; connection tokens are
/// slab keys and never get there.
const LISTENER_BASE: usize = usize::MAX - 64;
const SIGNAL: Token = Token(usize::MAX - 1);

/// Bytes read from one connection per turn before others get a go.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes written to one connection per turn.
const FLUSH_BUDGET: usize = 1024 * 1024;
/// Size of the loop-wide read buffer.
const SCRATCH: usize = 64 * 1024;
/// Input a waiting line connection may hold unprocessed before reading stops.
const READ_AHEAD: usize = 64 * 1024;
/// How long a closing connection may take to drain its output.
const LINGER_MS: Millis = 5_000;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF_MS: Millis = 100;
/// How long shutdown waits for queued output to drain.
const SHUTDOWN_FLUSH_MS: u64 = 2_000;
/// How often connections are swept for incomplete requests that stalled.
const SWEEP_MS: Millis = 1_000;
/// Minimum interval between two slow-subscriber log lines for one connection.
const SLOW_LOG_MS: Millis = 10_000;

/// The kinds of door a listener opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorKind {
    Line,
    Bus,
}

enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

struct Listener {
    kind: DoorKind,
    name: &'static str,
    socket: ListenSocket,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// Counters of the IO shell, read by the stats page.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopStats {
    pub accepted: u64,
    pub closed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dropped: u64,
    pub slow_disconnects: u64,
    pub accept_errors: u64,
    /// Open connections by door.
    pub open_line: u64,
    pub open_bus: u64,
    /// Closed connections by reason, indexed by `CloseReason as usize`.
    pub closed_by: [u64; CloseReason::COUNT],
}

impl LoopStats {
    fn count_close(&mut self, reason: CloseReason) {
        if let Some(n) = self.closed_by.get_mut(reason as usize) {
            *n += 1;
        }
    }

    fn count_open(&mut self, door: &Door, delta: i64) {
        let n = match door {
            Door::Line(_) => &mut self.open_line,
            Door::Http(_) | Door::Stream(_) => &mut self.open_bus,
            Door::Detached => return,
        };
        *n = n.saturating_add_signed(delta);
    }
}

pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    broker: Broker,
    limits: Limits,
    http: HttpContext,
    start: Instant,
    next_gen: u32,
    dirty: Vec<usize>,
    resume: Vec<usize>,
    still_ready: Vec<usize>,
    to_close: Vec<(usize, CloseReason)>,
    /// Connections closing once drained, with their deadlines.
    lingering: Vec<(usize, Millis)>,
    scratch: BytesMut,
    /// What each `read` fills, zeroed once; its bytes are then appended to
    /// `scratch` or to the connection's own partial input.
    read_buf: Vec<u8>,
    stats: LoopStats,
    accept_backoff_until: Option<Millis>,
    accept_full: bool,
    /// When the next sweep for stalled requests is due.
    next_sweep: Millis,
    signal: Option<UnixStream>,
    shutting_down: bool,
}

/// Binds every door of `config`, prints `listening DOOR ADDRESS` for each, and
/// serves until SIGINT or SIGTERM.
pub fn run(config: Config) -> io::Result<()> {
    let mut server = Server::bind(&config)?;
    server.catch_signals()?;
    server.serve()
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Errors that mean the process or system is out of a resource: accepting
/// again at once would spin.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

impl Server {
    /// Opens every listener of `config`; nothing is served until [`Server::serve`].
    pub fn bind(config: &Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        let tls = config.tls.as_ref();
        // Every TCP door: (kind, name, address, flag, TLS settings).
        let tcp_doors = [
            (
                DoorKind::Line,
                "line",
                &config.line_listen,
                "--line-listen",
                None,
            ),
            (
                DoorKind::Bus,
                "bus",
                &config.bus_listen,
                "--bus-listen",
                None,
            ),
            (
                DoorKind::Bus,
                "bus-tls",
                tls.map_or(&Listen::Off, |t| &t.bus_listen),
                "--bus-tls-listen",
                tls.map(|t| t.config.clone()),
            ),
            (
                DoorKind::Line,
                "line-tls",
                tls.map_or(&Listen::Off, |t| &t.line_listen),
                "--line-tls-listen",
                tls.map(|t| t.config.clone()),
            ),
        ];
        for (kind, name, listen, flag, tls) in tcp_doors {
            if let Listen::At(addr) = listen {
                listeners.push(Listener {
                    kind,
                    name,
                    socket: ListenSocket::Tcp(bind_tcp(*addr, flag)?),
                    tls,
                });
            }
        }
        if let Some(path) = &config.line_unix {
            listeners.push(Listener {
                kind: DoorKind::Line,
                name: "line-unix",
                socket: ListenSocket::Unix(bind_unix(path)?, path.clone()),
                tls: None,
            });
        }
        if listeners.is_empty() {
            return Err(io::Error::other("every door is off: nothing to serve"));
        }
        let mut out = io::stdout().lock();
        for (i, l) in listeners.iter_mut().enumerate() {
            let token = Token(LISTENER_BASE + i);
            let shown = match &mut l.socket {
                ListenSocket::Tcp(s) => {
                    poll.registry().register(s, token, Interest::READABLE)?;
                    s.local_addr()?.to_string()
                }
                ListenSocket::Unix(s, path) => {
                    poll.registry().register(s, token, Interest::READABLE)?;
                    path.display().to_string()
                }
            };
            writeln!(out, "listening {} {}", l.name, shown)?;
            log::info!("{} door listening on {}", l.name, shown);
        }
        out.flush()?;
        let epoch_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let broker = Broker {
            queues: crate::broker::Queues::new(epoch_s),
            ..Broker::default()
        };
        Ok(Server {
            poll,
            listeners,
            conns: Slab::new(),
            broker,
            limits: config.limits.clone(),
            http: HttpContext::new(config),
            start: Instant::now(),
            next_gen: 0,
            dirty: Vec::new(),
            resume: Vec::new(),
            still_ready: Vec::new(),
            to_close: Vec::new(),
            lingering: Vec::new(),
            scratch: BytesMut::with_capacity(SCRATCH),
            read_buf: vec![0; SCRATCH],
            stats: LoopStats::default(),
            accept_backoff_until: None,
            accept_full: false,
            next_sweep: SWEEP_MS,
            signal: None,
            shutting_down: false,
        })
    }

    /// Routes SIGINT and SIGTERM into the loop through a socket pair.
    pub fn catch_signals(&mut self) -> io::Result<()> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
        }
        let mut read = UnixStream::from_std(read);
        self.poll
            .registry()
            .register(&mut read, SIGNAL, Interest::READABLE)?;
        self.signal = Some(read);
        Ok(())
    }

    fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    /// Serves until a signal asks it to stop, then drains output briefly.
    pub fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.shutting_down {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                self.dispatch(event.token(), event.is_readable(), event.is_writable());
            }
            self.after_events();
        }
        self.shutdown();
        Ok(())
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        match token {
            SIGNAL => self.on_signal(),
            Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
            Token(key) => {
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                if c.closing {
                    return;
                }
                if writable && !c.writable {
                    c.writable = true;
                    if (!c.outq.is_empty() || c.transport.has_pending()) && !c.dirty {
                        c.dirty = true;
                        self.dirty.push(key);
                    }
                }
                if readable {
                    c.readable = true;
                    self.on_readable(key);
                }
            }
        }
    }

    /// Work of a turn after its events: timers, resumed and unfinished
    /// connections, then flushes and closes.
    fn after_events(&mut self) {
        let now = self.now();
        {
            let (broker, mut post, _) = self.split(now);
            broker.on_timers(now, &mut post);
        }
        self.check_lingering(now);
        if self.limits.request_timeout_s > 0 && now >= self.next_sweep {
            self.next_sweep = now + SWEEP_MS;
            self.sweep_stalled(now);
        }
        if self.accept_backoff_until.is_some_and(|t| t <= now) {
            self.accept_backoff_until = None;
            self.accept_all();
        }
        for key in mem::take(&mut self.resume) {
            self.on_resume(key);
        }
        for key in mem::take(&mut self.still_ready) {
            self.on_readable(key);
        }
        loop {
            self.flush_dirty();
            if self.to_close.is_empty() {
                break;
            }
            self.close_marked();
        }
        if self.accept_full && self.conns.len() < self.limits.max_connections * 9 / 10 + 1 {
            self.accept_full = false;
            self.accept_all();
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.resume.is_empty() || !self.still_ready.is_empty() || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        let lingering = self.lingering.iter().map(|&(_, at)| at);
        let next = self
            .broker
            .next_deadline()
            .into_iter()
            .chain(self.accept_backoff_until)
            .chain(lingering)
            .chain(
                (self.limits.request_timeout_s > 0 && !self.conns.is_empty())
                    .then_some(self.next_sweep),
            )
            .min()?;
        Some(Duration::from_millis(next.saturating_sub(now)))
    }

    /// Splits the server into the broker, the outbox over the connections,
    /// and the HTTP settings (read-only), so a door can use all three.
    fn split(&mut self, now: Millis) -> (&mut Broker, Post<'_>, &HttpContext) {
        (
            &mut self.broker,
            Post {
                conns: &mut self.conns,
                dirty: &mut self.dirty,
                resume: &mut self.resume,
                to_close: &mut self.to_close,
                limits: &self.limits,
                stats: &mut self.stats,
                now,
            },
            &self.http,
        )
    }

    fn on_signal(&mut self) {
        if let Some(s) = &mut self.signal {
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        log::info!("signal received: shutting down");
        self.shutting_down = true;
    }

    fn accept_all(&mut self) {
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    fn accept(&mut self, index: usize) {
        if self.shutting_down || self.accept_backoff_until.is_some() {
            return;
        }
        loop {
            if self.conns.len() >= self.limits.max_connections {
                if !self.accept_full {
                    log::warn!(
                        "connection limit {} reached: accepting paused",
                        self.limits.max_connections
                    );
                }
                self.accept_full = true;
                return;
            }
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let kind = listener.kind;
            let accepted = match &listener.socket {
                ListenSocket::Tcp(l) => l.accept().and_then(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    match &listener.tls {
                        Some(cfg) => {
                            TlsStream::new(s, cfg.clone()).map(|t| Transport::Tls(Box::new(t)))
                        }
                        None => Ok(Transport::Tcp(s)),
                    }
                }),
                ListenSocket::Unix(l, _) => l.accept().map(|(s, _)| Transport::Unix(s)),
            };
            match accepted {
                Ok(transport) => self.add_conn(kind, transport),
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    self.stats.accept_errors += 1;
                    log::warn!("accept: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms");
                    self.accept_backoff_until = Some(self.now() + ACCEPT_BACKOFF_MS);
                    return;
                }
                Err(e) => {
                    self.stats.accept_errors += 1;
                    log::debug!("accept: {e}");
                }
            }
        }
    }

    fn add_conn(&mut self, kind: DoorKind, mut transport: Transport) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = transport.register(self.poll.registry(), Token(key)) {
            log::warn!("register: {e}");
            return;
        }
        let door = match kind {
            DoorKind::Line => Door::Line(LineSession::new(
                self.limits.max_line,
                self.limits.max_body,
                self.limits.max_subscriptions,
            )),
            DoorKind::Bus => Door::Http(Box::new(HttpSession::new(&self.limits))),
        };
        let id = ConnId {
            key: key as u32,
            gen: self.next_gen,
        };
        log::debug!(
            "conn {key}: {} door, from {}",
            door.name(),
            transport.peer()
        );
        self.stats.count_open(&door, 1);
        entry.insert(Conn {
            id,
            transport,
            door,
            outq: OutQueue::default(),
            input: BytesMut::new(),
            readable: false,
            writable: true,
            dirty: false,
            close_after_flush: None,
            closing: false,
            dropped: 0,
            incomplete_since: None,
            slow_logged_at: None,
        });
        self.stats.accepted += 1;
    }

    /// Reads and processes input until the socket would block, the connection
    /// pauses or closes, or its budget for this turn is spent.
    fn on_readable(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.closing || c.close_after_flush.is_some() || !c.readable {
                return;
            }
            if is_paused(&c.door) {
                self.read_ahead(key);
                return;
            }
            // Output backpressure: a client that does not read what it asked
            // for is not read from either, until its queue drains below the
            // backlog limit (flush_dirty puts it back on `still_ready`).
            if c.outq.bytes() >= self.limits.backlog {
                return;
            }
            let from_scratch = c.input.is_empty();
            let buf = if from_scratch {
                &mut self.scratch
            } else {
                &mut c.input
            };
            let got = c.transport.read(&mut self.read_buf);
            if c.transport.has_pending() && !c.dirty {
                // TLS handshake records to send.
                c.dirty = true;
                self.dirty.push(key);
            }
            let n = match got {
                Ok(n) => {
                    buf.extend_from_slice(self.read_buf.get(..n).unwrap_or_default());
                    n
                }
                Err(e) => {
                    if is_would_block(&e) {
                        c.readable = false;
                        return;
                    }
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if e.kind() == io::ErrorKind::InvalidData {
                        log::info!("conn {key} ({}): TLS: {e}; closing it", c.transport.peer());
                    } else {
                        log::debug!("conn {key}: read: {e}");
                    }
                    self.mark_close(key, CloseReason::ReadError);
                    return;
                }
            };
            if n == 0 {
                c.readable = false;
                let id = c.id;
                log::debug!("conn {}: peer closed", id.key);
                self.linger(key, CloseReason::PeerClosed);
                return;
            }
            self.stats.bytes_in += n as u64;
            budget = budget.saturating_sub(n);
            let next = if from_scratch {
                let mut input = mem::take(&mut self.scratch);
                let next = self.process(key, &mut input);
                if let Some(c) = self.conns.get_mut(key) {
                    if !input.is_empty() {
                        c.input = BytesMut::from(&input[..]);
                    }
                }
                input.clear();
                self.scratch = input;
                next
            } else {
                self.process_own_input(key)
            };
            if !self.after_input(key, next) {
                return;
            }
            if budget == 0 {
                self.still_ready.push(key);
                return;
            }
        }
    }

    /// A line connection whose wait is pending runs no commands, but its
    /// input is still read (unprocessed, up to [`READ_AHEAD`] bytes) so that
    /// a client that goes away while waiting is noticed: its wait is
    /// withdrawn at once, before any message can be handed to it and lost.
    fn read_ahead(&mut self, key: usize) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            let waiting = matches!(&c.door, Door::Line(s) if s.is_waiting());
            if !waiting || c.closing || c.close_after_flush.is_some() || !c.readable {
                return;
            }
            if c.input.len() >= READ_AHEAD {
                return;
            }
            let got = c.transport.read(&mut self.read_buf);
            let reason = match got {
                Ok(0) => CloseReason::PeerClosed,
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    c.input
                        .extend_from_slice(self.read_buf.get(..n).unwrap_or_default());
                    if !c.dirty {
                        // A transport may have records of its own to answer.
                        c.dirty = true;
                        self.dirty.push(key);
                    }
                    continue;
                }
                Err(e) if is_would_block(&e) => {
                    c.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("conn {key}: read: {e}");
                    CloseReason::ReadError
                }
            };
            c.readable = false;
            if let Door::Line(s) = &mut c.door {
                s.withdraw_wait(&mut self.broker);
            }
            log::debug!("conn {key}: {} while waiting", reason.as_str());
            match reason {
                CloseReason::PeerClosed => self.linger(key, reason),
                _ => self.mark_close(key, reason),
            }
            return;
        }
    }

    /// Acts on what a door said after its input; true when reading may go on.
    fn after_input(&mut self, key: usize, next: Next) -> bool {
        match next {
            Next::Read => true,
            Next::Paused => {
                // Notices a client that wrote its wait and went away.
                self.read_ahead(key);
                false
            }
            Next::Close => {
                self.linger(key, CloseReason::Quit);
                false
            }
            Next::Refused => {
                self.linger(key, CloseReason::ProtocolError);
                false
            }
        }
    }

    /// Processes input the connection already holds (after a resume).
    fn process_own_input(&mut self, key: usize) -> Next {
        let Some(c) = self.conns.get_mut(key) else {
            return Next::Close;
        };
        let mut input = mem::take(&mut c.input);
        let next = self.process(key, &mut input);
        if let Some(c) = self.conns.get_mut(key) {
            c.input = if input.is_empty() {
                BytesMut::new()
            } else {
                input
            };
        }
        next
    }

    /// Runs the door of connection `key` over `input`.
    fn process(&mut self, key: usize, input: &mut BytesMut) -> Next {
        let now = self.now();
        let Some(c) = self.conns.get_mut(key) else {
            return Next::Close;
        };
        // Only the HTTP door (its stats page) reads the loop's counters.
        let snapshot = matches!(c.door, Door::Http(_)).then_some(self.stats);
        let id = c.id;
        let before = input.len();
        let mut door = mem::replace(&mut c.door, Door::Detached);
        let next = {
            let (broker, mut post, http) = self.split(now);
            match &mut door {
                Door::Line(s) => s.on_input(id, now, input, broker, &mut post),
                Door::Http(s) => {
                    let stats = snapshot.unwrap_or_default();
                    s.on_input(id, now, input, broker, &mut post, http, &stats)
                }
                Door::Stream(s) => s.on_input(input),
                Door::Detached => Next::Close,
            }
        };
        if let Door::Http(s) = &mut door {
            if let Some(stream) = s.take_stream() {
                door = Door::Stream(stream);
            }
        }
        if let Some(c) = self.conns.get_mut(key) {
            c.door = door;
            if input.len() < before {
                // Whole frames were consumed: whatever is left is new.
                c.incomplete_since = None;
            }
        }
        next
    }

    fn on_resume(&mut self, key: usize) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        if c.closing || c.close_after_flush.is_some() {
            return;
        }
        if !c.input.is_empty() {
            let next = self.process_own_input(key);
            if !self.after_input(key, next) {
                return;
            }
        }
        self.on_readable(key);
    }

    /// Closes once queued output has drained, or after [`LINGER_MS`].
    fn linger(&mut self, key: usize, reason: CloseReason) {
        let deadline = self.now() + LINGER_MS;
        if let Some(c) = self.conns.get_mut(key) {
            if c.close_after_flush.is_none() {
                c.close_after_flush = Some((reason, deadline));
                self.lingering.push((key, deadline));
            }
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Closes connections that have held an incomplete request, command or
    /// TLS handshake for longer than `--request-timeout`. Runs once a second;
    /// a connection that waits on the broker (its held input is not stalled)
    /// or holds nothing incomplete is left alone, however long it idles.
    fn sweep_stalled(&mut self, now: Millis) {
        let limit = self.limits.request_timeout_s.saturating_mul(1000);
        for (key, c) in self.conns.iter_mut() {
            let incomplete =
                (!c.input.is_empty() && !is_paused(&c.door)) || c.transport.is_handshaking();
            if !incomplete || c.closing {
                c.incomplete_since = None;
                continue;
            }
            let since = *c.incomplete_since.get_or_insert(now);
            if now.saturating_sub(since) >= limit {
                log::info!(
                    "conn {key} ({}): request incomplete for {} s; closing it",
                    c.transport.peer(),
                    self.limits.request_timeout_s
                );
                c.closing = true;
                self.to_close.push((key, CloseReason::RequestTimeout));
            }
        }
    }

    /// Closes lingering connections whose deadline passed. Only the
    /// lingering ones are looked at, never every connection.
    fn check_lingering(&mut self, now: Millis) {
        let conns = &mut self.conns;
        let to_close = &mut self.to_close;
        self.lingering.retain(|&(key, at)| {
            let Some(c) = conns.get_mut(key) else {
                return false;
            };
            if c.closing || c.close_after_flush.map(|(_, a)| a) != Some(at) {
                return false;
            }
            if at <= now {
                c.closing = true;
                to_close.push((key, CloseReason::LingerTimeout));
                return false;
            }
            true
        });
    }

    fn mark_close(&mut self, key: usize, reason: CloseReason) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.closing {
                c.closing = true;
                self.to_close.push((key, reason));
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut again = Vec::new();
        for key in mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if c.closing || !c.writable {
                continue;
            }
            match c.outq.flush(&mut c.transport, FLUSH_BUDGET) {
                Ok((n, outcome)) => {
                    self.stats.bytes_out += n as u64;
                    if c.readable && n > 0 && c.outq.bytes() < self.limits.backlog {
                        // Input left unread (budget or backpressure): go on.
                        self.still_ready.push(key);
                    }
                    match outcome {
                        Flushed::All => match c.transport.flush_pending() {
                            Ok(true) => {
                                if let Some((reason, _)) = c.close_after_flush {
                                    c.closing = true;
                                    self.to_close.push((key, reason));
                                }
                            }
                            Ok(false) => c.writable = false,
                            Err(e) => {
                                log::debug!("conn {key}: write: {e}");
                                c.closing = true;
                                self.to_close.push((key, CloseReason::WriteError));
                            }
                        },
                        Flushed::WouldBlock => c.writable = false,
                        Flushed::Budget => {
                            c.dirty = true;
                            again.push(key);
                        }
                    }
                }
                Err(e) => {
                    log::debug!("conn {key}: write: {e}");
                    c.closing = true;
                    self.to_close.push((key, CloseReason::WriteError));
                }
            }
        }
        self.dirty.extend(again);
    }

    fn close_marked(&mut self) {
        let now = self.now();
        for (key, reason) in mem::take(&mut self.to_close) {
            if !self.conns.contains(key) {
                continue;
            }
            let mut c = self.conns.remove(key);
            if !matches!(reason, CloseReason::WriteError | CloseReason::ReadError) {
                // Unread input at close() would make the kernel reset the
                // connection, and the peer could lose the last answer.
                c.transport.drain();
                c.transport.close();
            }
            self.stats.count_close(reason);
            c.transport.deregister(self.poll.registry());
            log::debug!("conn {key}: closed ({})", reason.as_str());
            if c.dropped > 0 {
                log::info!(
                    "conn {key} ({}) closed after {} messages were dropped for it",
                    c.transport.peer(),
                    c.dropped
                );
            }
            let id = c.id;
            let (broker, mut post, _) = self.split(now);
            match &mut c.door {
                Door::Line(s) => s.on_close(id, broker, &mut post),
                Door::Http(s) => s.on_close(id, broker, &mut post),
                Door::Stream(s) => s.on_close(id, broker, &mut post),
                Door::Detached => {}
            }
            self.stats.closed += 1;
            self.stats.count_open(&c.door, -1);
        }
    }

    /// Stops accepting, gives queued output a short while to drain, and
    /// removes the Unix socket files.
    fn shutdown(&mut self) {
        for l in self.listeners.drain(..) {
            if let ListenSocket::Unix(_, path) = &l.socket {
                let _ = std::fs::remove_file(path);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_FLUSH_MS);
        let mut events = Events::with_capacity(1024);
        loop {
            for (key, c) in self.conns.iter_mut() {
                if (!c.outq.is_empty() || c.transport.has_pending()) && !c.dirty && !c.closing {
                    c.dirty = true;
                    self.dirty.push(key);
                }
            }
            self.flush_dirty();
            let pending = self
                .conns
                .iter()
                .any(|(_, c)| (!c.outq.is_empty() || c.transport.has_pending()) && !c.closing);
            let left = deadline.saturating_duration_since(Instant::now());
            if !pending || left.is_zero() {
                break;
            }
            let wait = if self.dirty.is_empty() {
                left
            } else {
                Duration::ZERO
            };
            if self.poll.poll(&mut events, Some(wait)).is_err() {
                break;
            }
            for event in events.iter() {
                if let Some(c) = self.conns.get_mut(event.token().0) {
                    if event.is_writable() {
                        c.writable = true;
                    }
                }
            }
        }
        log::info!(
            "stopped: {} connections served, {} still open",
            self.stats.accepted,
            self.conns.len()
        );
    }
}

/// A line connection whose wait is pending runs no commands.
fn is_paused(door: &Door) -> bool {
    matches!(door, Door::Line(s) if s.is_waiting()) || matches!(door, Door::Detached)
}

fn bind_tcp(addr: std::net::SocketAddr, flag: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("{flag} {addr}: cannot listen: {e}")))
}

fn bind_unix(path: &PathBuf) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            // A stale socket from an earlier run: nobody answers on it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "--line-unix {}: another server is listening there",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("--line-unix {}: exists and is not a socket", path.display()),
            ));
        }
    }
    UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("--line-unix {}: cannot listen: {e}", path.display()),
        )
    })
}

/// The outbox over the connections: deliveries become queued frames, under
/// the backlog limit.
pub struct Post<'a> {
    conns: &'a mut Slab<Conn>,
    dirty: &'a mut Vec<usize>,
    resume: &'a mut Vec<usize>,
    to_close: &'a mut Vec<(usize, CloseReason)>,
    limits: &'a Limits,
    stats: &'a mut LoopStats,
    now: Millis,
}

impl Outbox for Post<'_> {
    fn deliver(&mut self, conn: ConnId, frame: bytes::Bytes, messages: u32) -> bool {
        let key = conn.key as usize;
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if c.id != conn || c.closing {
            return false;
        }
        // A connection on its way out gets its answers, not more channel
        // messages.
        if messages > 0 && c.close_after_flush.is_some() {
            return false;
        }
        let queued = c.outq.bytes();
        if messages > 0 && queued > 0 && queued + frame.len() > self.limits.backlog {
            match self.limits.slow_policy {
                SlowPolicy::Drop => {
                    c.dropped += u64::from(messages);
                    self.stats.dropped += u64::from(messages);
                    if c.slow_logged_at.is_none_or(|t| self.now >= t + SLOW_LOG_MS) {
                        c.slow_logged_at = Some(self.now);
                        log::warn!(
                            "slow subscriber conn {key} ({}): {} bytes unsent, {} messages dropped so far",
                            c.transport.peer(),
                            queued,
                            c.dropped
                        );
                    }
                }
                SlowPolicy::Disconnect => {
                    c.closing = true;
                    self.stats.slow_disconnects += 1;
                    log::warn!(
                        "slow subscriber conn {key} ({}): {} bytes unsent, disconnecting",
                        c.transport.peer(),
                        queued
                    );
                    self.to_close.push((key, CloseReason::SlowSubscriber));
                }
            }
            return false;
        }
        c.outq.push(frame);
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
        true
    }

    fn wait_done(&mut self, conn: ConnId) {
        let key = conn.key as usize;
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.id != conn {
            return;
        }
        // A detached door is the one running right now: it learns of the
        // answer from the broker's return value.
        if let Door::Line(s) = &mut c.door {
            if s.is_waiting() {
                s.wait_answered();
                self.resume.push(key);
            }
        }
    }
}
