//! The readiness loop: one thread, one `mio::Poll`, every connection.
//!
//! A turn of the loop:
//! 1. poll, with the timeout of the earliest deadline (the broker's and the
//!    shell's timers), or zero when work is left over;
//! 2. dispatch events: accept until `WouldBlock`; read until `WouldBlock`, a
//!    plain socket's short read, or the per-turn budget, running the
//!    connection's door as input arrives;
//!    note writability;
//! 3. run due timers, resume doors whose wait was answered, continue
//!    connections that ran out of budget;
//! 4. flush every dirty connection once, with vectored writes, then close the
//!    connections marked for closing (which may dirty others: flush again).
//!
//! Sockets are registered once for both directions (edge-triggered); the
//! readiness bits live in [`Conn`]. Connections are freed only at the end of a
//! turn, and each carries a generation, so nothing stale reaches a reused slot.
//! Doors are known only through [`crate::door::Door`] and the registry
//! [`crate::doors::DOORS`]; after every door call the loop seals the broker's
//! fan-out batch itself.
//!
//! Connections the server opens itself (asked for by the broker) join the
//! same slab: `connect.rs`, a child module, does their lookups, connects and
//! deadlines; from their connect on they are served like any other.

use std::ffi::OsString;
use std::io::{self, Read};
use std::mem;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::conn::{Conn, Detached, Life};
use super::listen::{self, Listener};
use super::outq::Flushed;
use super::post::Post;
use super::transport::Transport;
use crate::broker::{Answer, Broker, ConnId, Millis, Outbox};
use crate::config::{Config, Limits};
use crate::door::{CloseReason, Cx, Door, Live, Next, Opener, Stats};
use crate::doors::DOORS;
use crate::server::blocking::{self, Blocking};
use crate::server::reload::{Reload, Reloaded};
use crate::timer::Timers;

#[path = "connect.rs"]
mod connect;
pub use connect::check_redis;
#[path = "durable.rs"]
mod durable;

/// Listener tokens sit at the top of the token space; connection tokens are
/// slab keys and never get there.
const LISTENER_BASE: usize = usize::MAX - 64;
const SIGNAL: Token = Token(usize::MAX - 1);
/// SIGHUP's socket pair (the waker is `usize::MAX - 2`).
const HANGUP: Token = Token(usize::MAX - 3);

/// Bytes read from one connection per turn before others get a go.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes written to one connection per turn.
const FLUSH_BUDGET: usize = 1024 * 1024;
/// Size of the loop-wide read buffer.
const SCRATCH: usize = 64 * 1024;
/// Input a paused connection may hold unprocessed before reading stops.
const READ_AHEAD: usize = 64 * 1024;
/// How long a closing connection may take to drain its output.
const LINGER_MS: Millis = 5_000;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF_MS: Millis = 100;
/// Minimum interval between two log lines about accept errors.
const ACCEPT_LOG_MS: Millis = 10_000;
/// The window of the stats page's recent longest loop turn.
const TURN_WINDOW_MS: Millis = 10_000;
/// How long shutdown waits for queued output to drain.
const SHUTDOWN_FLUSH_MS: u64 = 2_000;

/// What a deadline of the shell is for. Each is checked against the
/// connection's state when it comes due, so stale ones are harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    /// A lingering connection's output had until now to drain.
    Linger(ConnId),
    /// A connection may have held an incomplete request for too long.
    Request(ConnId),
    /// A door asked to be woken.
    Door(ConnId),
    /// Accepting may start again after running out of file descriptors.
    AcceptBackoff,
    /// An outbound connection had until now to connect.
    Connect(ConnId),
}

pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    openers: Vec<Option<Opener>>,
    conns: Slab<Conn>,
    broker: Broker,
    limits: Limits,
    start: Instant,
    /// Milliseconds since `start`, read once when a poll returns and once
    /// before the work after the events ([`Server::tick`]): everything done
    /// in between is stamped with the same time, as one clock read costs
    /// more than a proxied request's own bookkeeping.
    clock: Millis,
    next_gen: u32,
    dirty: Vec<usize>,
    resume: Vec<usize>,
    still_ready: Vec<usize>,
    to_close: Vec<(usize, CloseReason)>,
    timers: Timers<Deadline>,
    scratch: BytesMut,
    /// What each `read` fills, zeroed once; its bytes are then appended to
    /// `scratch` or to the connection's own partial input.
    read_buf: Vec<u8>,
    stats: Stats,
    accept_backoff: bool,
    accept_full: bool,
    accept_logged_at: Option<Millis>,
    /// The longest loop turn of the current window, and when it started.
    turn_window: (Millis, u64),
    signal: Option<UnixStream>,
    /// SIGHUP's end of its socket pair.
    hangup: Option<UnixStream>,
    /// What a reload needs (`None`: the server was not given its command
    /// line, and SIGHUP only says so).
    reload: Option<Reload>,
    /// The settings a reload may change, lent to every door call.
    live: Live,
    shutting_down: bool,
    outbound: connect::Outbound,
    /// The doors' blocking work (started on first use).
    blocking: Option<Blocking>,
    /// `--data-dir`: the store and the connections whose output waits for it.
    durable: Option<durable::Durable>,
    /// `--heartbeat` in ms (0: off), and when the next heartbeat sweep is
    /// due (see [`Server::sweep_heartbeats`]).
    heartbeat_ms: Millis,
    next_sweep: Millis,
}

/// Binds every door of `config`, prints `listening DOOR ADDRESS` for each, and
/// serves until SIGINT or SIGTERM; SIGHUP reloads what may change while
/// connections stay open, reading `argv` (the command line `config` was
/// made from, before its `--config` file was read) again.
pub fn run(config: Config, argv: Vec<OsString>) -> io::Result<()> {
    // Caught before the listeners open: a signal sent as soon as the
    // server says it listens waits in its pair instead of ending it (a
    // SIGTERM then still stops it cleanly, with exit status 0).
    let hangup = signal_pair(&[signal_hook::consts::SIGHUP])?;
    let stop = signal_pair(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let mut server = Server::bind(&config)?;
    server.reload = Some(Reload::new(argv).map_err(io::Error::other)?);
    server.catch_signals(stop)?;
    server.watch_hangup(hangup)?;
    server.serve()
}

/// A socket pair whose write end the signals `sigs` write to; its read end.
fn signal_pair(sigs: &[i32]) -> io::Result<UnixStream> {
    let (read, write) = std::os::unix::net::UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    for &sig in sigs {
        signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
    }
    Ok(UnixStream::from_std(read))
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

/// How often the heartbeat sweep runs for a heartbeat every `every` ms: a
/// quarter of it (at least 1 ms).
fn sweep_period(every: Millis) -> Millis {
    (every / 4).max(1)
}

fn mark_dirty(dirty: &mut Vec<usize>, c: &mut Conn, key: usize) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(key);
    }
}

/// A node id for the cluster link: 16 random hex digits, new at each start.
fn node_id() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 8];
    let mut id = [b'0'; 16];
    if ring::rand::SystemRandom::new().fill(&mut raw).is_err() {
        // No system randomness: the clock and the process id still differ
        // between nodes.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        raw = (t ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
    }
    for (i, b) in raw.iter().enumerate() {
        let hex = b"0123456789abcdef";
        if let (Some(hi), Some(lo)) = (hex.get(usize::from(b >> 4)), hex.get(usize::from(b & 15))) {
            if let Some(slot) = id.get_mut(2 * i..2 * i + 2) {
                slot.copy_from_slice(&[*hi, *lo]);
            }
        }
    }
    id
}

impl Server {
    /// Opens every listener of `config`; nothing is served until [`Server::serve`].
    pub fn bind(config: &Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        // The clock's 0 and the wall clock read together: restored deadlines
        // (wall clock) become instants on this clock.
        let start = Instant::now();
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let epoch_ms = u64::try_from(since_epoch.as_millis()).unwrap_or(0);
        let outbound = connect::Outbound::new(config, poll.registry())?;
        let (durable, state, epoch_s) = match &config.data_dir {
            Some(dir) => {
                let opened = crate::store::Store::open(
                    dir,
                    config.fsync,
                    config.store_sizes,
                    epoch_ms,
                    outbound.waker(),
                )
                .map_err(io::Error::other)?;
                let d = durable::Durable::new(opened.store, opened.epoch_s);
                (Some(d), Some(opened.state), opened.epoch_s)
            }
            None => (None, None, since_epoch.as_secs()),
        };
        let mut queues = crate::broker::Queues::new(epoch_s).with_limits(config.limits.queues);
        let mut switch = crate::broker::Switch::new(epoch_ms).with_limits(config.limits.queues);
        if let Some(d) = &durable {
            queues = queues.with_journal(d.store.journal.clone());
            switch = switch.with_journal(d.store.journal.clone());
        }
        let node = node_id();
        if config.cluster.is_some() {
            // Reply addresses must be unique across the nodes.
            queues.set_node(&node);
        }
        let mut broker = Broker {
            queues,
            switch,
            hooks: crate::broker::hooks::Hooks::new(config.hooks_settings(), since_epoch.as_secs()),
            channels: config.channels(),
            cluster: crate::broker::cluster::Cluster::new(config.cluster.clone(), node),
        };
        // History ids start after the wall clock in microseconds (after
        // the store's epoch too, which is later than every earlier start
        // kept in the data directory): below 2^53 until the year 2255.
        let epoch_us = u64::try_from(since_epoch.as_micros())
            .unwrap_or(0)
            .max(epoch_s.saturating_mul(1_000_000));
        broker.channels.start_ids_after(epoch_us);
        if broker.cluster.is_on() {
            // The links are dialed by the first turn's timers.
            broker.channels.mirror();
        }
        if let Some(state) = state {
            let (line, switch) = broker.restore(0, epoch_ms, state);
            log::info!("restored {line} queued line messages and {switch} switch messages");
            if switch > 0 && broker.cluster.is_on() {
                // With --cluster the message-switch door asks Redis, not
                // this node's model: say where the restored ones went.
                log::warn!(
                    "{switch} switch messages restored from --data-dir stay in this node's own queues: with --cluster the message-switch API serves the queues in Redis, and only line receivers on this node reach these (docs/cluster.md, \"What stays on each node\")"
                );
            }
        }
        // The doors are printed once the store is read: a client that
        // waits for `listening` finds the queues restored.
        let bound = listen::bind_all(config, poll.registry(), LISTENER_BASE)?;
        let stats = Stats::for_doors(connect::door_names());
        let live = Live {
            access: config.access(),
            docroot: config.docroot.as_ref().and_then(|d| d.canonicalize().ok()),
        };
        Ok(Server {
            poll,
            listeners: bound.listeners,
            openers: bound.openers,
            conns: Slab::new(),
            broker,
            limits: config.limits.clone(),
            start,
            clock: 0,
            next_gen: 0,
            dirty: Vec::new(),
            resume: Vec::new(),
            still_ready: Vec::new(),
            to_close: Vec::new(),
            timers: Timers::default(),
            scratch: BytesMut::with_capacity(SCRATCH),
            read_buf: vec![0; SCRATCH],
            stats,
            accept_backoff: false,
            accept_full: false,
            accept_logged_at: None,
            turn_window: (0, 0),
            signal: None,
            hangup: None,
            reload: None,
            live,
            shutting_down: false,
            outbound,
            blocking: None,
            durable,
            heartbeat_ms: config.heartbeat_s.saturating_mul(1000),
            next_sweep: sweep_period(config.heartbeat_s.saturating_mul(1000)),
        })
    }

    /// Routes SIGINT and SIGTERM into the loop through the socket pair
    /// they write to (see [`run`]).
    fn catch_signals(&mut self, mut read: UnixStream) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut read, SIGNAL, Interest::READABLE)?;
        self.signal = Some(read);
        Ok(())
    }

    /// Watches the socket pair SIGHUP writes to (see [`run`]): each SIGHUP
    /// reloads, one that came before this call too.
    fn watch_hangup(&mut self, mut read: UnixStream) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut read, HANGUP, Interest::READABLE)?;
        self.hangup = Some(read);
        Ok(())
    }

    /// The time of this part of the turn (see `clock`).
    fn now(&self) -> Millis {
        self.clock
    }

    /// Reads the clock; [`Server::now`] gives this time until the next tick.
    fn tick(&mut self) -> Millis {
        self.tick_at(Instant::now())
    }

    /// [`Server::tick`] with a time already read.
    fn tick_at(&mut self, at: Instant) -> Millis {
        self.clock = at.duration_since(self.start).as_millis() as Millis;
        self.clock
    }

    /// Serves until a signal asks it to stop, then drains output briefly.
    pub fn serve(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while !self.shutting_down {
            self.tick();
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn = Instant::now();
            self.tick_at(turn);
            for event in events.iter() {
                // A read that comes back short ends the reading of a socket
                // whose peer has not shut down: edge-triggered readiness
                // reports the next data or the shutdown as a new event.
                let short_read_drains = !(event.is_read_closed() || event.is_error());
                self.dispatch(
                    event.token(),
                    event.is_readable(),
                    event.is_writable(),
                    short_read_drains,
                );
            }
            self.after_events();
            self.count_turn(turn.elapsed());
        }
        self.shutdown();
        Ok(())
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool, short_read_drains: bool) {
        match token {
            SIGNAL => self.on_signal(),
            HANGUP => self.on_hangup(),
            connect::WAKER => {
                self.on_wake();
                self.on_blocking_done();
                self.on_reload_done();
                self.on_store_wake();
            }
            Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE),
            Token(key) => {
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                if c.is_closing() {
                    return;
                }
                if c.life == Life::Connecting {
                    self.on_connect_event(key);
                    return;
                }
                if writable && !c.writable {
                    c.writable = true;
                    if !c.outq.is_empty() || c.transport.has_pending() {
                        mark_dirty(&mut self.dirty, c, key);
                    }
                }
                if readable {
                    c.readable = true;
                    self.on_readable(key, short_read_drains);
                }
            }
        }
    }

    /// Work of a turn after its events: timers, resumed and unfinished
    /// connections, then flushes and closes.
    fn after_events(&mut self) {
        let now = self.tick();
        {
            let (broker, mut post) = self.split(now);
            broker.on_timers(now, &mut post);
            // The turn's `<<` waits that took messages end here, before
            // their connections resume.
            broker.close_open(&mut post);
        }
        self.run_timers(now);
        self.sweep_heartbeats(now);
        for key in mem::take(&mut self.resume) {
            self.on_resume(key);
        }
        for key in mem::take(&mut self.still_ready) {
            if let Some(c) = self.conns.get_mut(key) {
                c.ready_listed = false;
            }
            self.on_readable(key, false);
        }
        loop {
            let linked = self.run_link_requests();
            self.store_turn();
            self.flush_dirty();
            if self.to_close.is_empty() && !linked {
                break;
            }
            self.close_marked();
        }
        if self.accept_full && self.inbound_open() < self.limits.max_connections * 9 / 10 + 1 {
            self.accept_full = false;
            self.accept_all();
        }
    }

    /// Keeps the longest loop turn, since start and over the last window.
    fn count_turn(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let now = self.now();
        let (start, max) = &mut self.turn_window;
        if now >= *start + TURN_WINDOW_MS {
            self.stats.turn_max_recent_us = *max;
            *start = now;
            *max = 0;
        }
        *max = (*max).max(us);
        self.stats.turns.record(us);
        self.stats.turn_max_us = self.stats.turn_max_us.max(us);
        self.stats.turn_max_recent_us = self.stats.turn_max_recent_us.max(*max);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.resume.is_empty()
            || !self.still_ready.is_empty()
            || !self.dirty.is_empty()
            || self.broker.has_open()
        {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        let next = self
            .broker
            .next_deadline()
            .into_iter()
            .chain(self.timers.next())
            .chain((self.heartbeat_ms > 0).then_some(self.next_sweep))
            .chain(self.store_deadline(now))
            .min()?;
        Some(Duration::from_millis(next.saturating_sub(now)))
    }

    /// Splits the server into the broker and the outbox over the
    /// connections, so a door call or a broker call can use both.
    fn split(&mut self, now: Millis) -> (&mut Broker, Post<'_>) {
        let (broker, post, _) = self.split_live(now);
        (broker, post)
    }

    /// [`Server::split`], and the settings a reload may change, for a door
    /// call.
    fn split_live(&mut self, now: Millis) -> (&mut Broker, Post<'_>, &Live) {
        (
            &mut self.broker,
            Post {
                conns: &mut self.conns,
                dirty: &mut self.dirty,
                resume: &mut self.resume,
                to_close: &mut self.to_close,
                limits: &self.limits,
                stats: &self.stats,
                now,
            },
            &self.live,
        )
    }

    /// Runs `call` on the door of connection `key`, taken out of the
    /// connection meanwhile, then seals the broker's batch, lets the door
    /// hand over to another door, and notes a requested wake-up.
    fn with_door(
        &mut self,
        key: usize,
        call: impl FnOnce(&mut dyn Door, &mut Cx<'_>) -> Next,
    ) -> Option<(Next, bool)> {
        let now = self.now();
        let c = self.conns.get_mut(key)?;
        let id = c.id;
        let (unsent, last_write) = (c.outq.bytes(), c.last_write);
        let door_ix = c.door_ix;
        let recorded = self.durable.as_ref().map(|d| d.store.journal.records());
        let mut door = mem::replace(&mut c.door, Box::new(Detached));
        let job_room = self
            .blocking
            .as_ref()
            .map_or(blocking::MAX_PENDING, Blocking::room);
        let messages_before = self.broker.messages_in();
        let (next, progressed, wake, stop, jobs) = {
            let (broker, mut post, live) = self.split_live(now);
            let stats = post.stats;
            let mut cx = Cx::new(id, now, broker, &mut post, stats)
                .with_live(live)
                .with_unsent(unsent)
                .with_job_room(job_room)
                .with_last_write(last_write);
            let next = call(door.as_mut(), &mut cx);
            let (progressed, wake, stop) =
                (cx.progressed(), cx.wake_requested(), cx.stop_requested());
            let jobs = mem::take(&mut cx.jobs);
            broker.seal(&mut post);
            (next, progressed, wake, stop, jobs)
        };
        if !jobs.is_empty() {
            let waker = self.outbound.waker();
            let pool = self.blocking.get_or_insert_with(|| Blocking::new(waker));
            for job in jobs {
                // Room was counted when the door asked; a failure here is a
                // helper thread that could not start.
                if let Err(e) = pool.run(id, job) {
                    log::error!("conn {key}: blocking work not started: {e}; closing");
                    self.to_close.push((key, CloseReason::ProtocolError));
                }
            }
        }
        let messages_in = self.broker.messages_in().saturating_sub(messages_before);
        if messages_in > 0 {
            if let Some(d) = self.stats.door_mut(door_ix) {
                d.messages_in += messages_in;
            }
        }
        if stop && !self.shutting_down {
            log::info!("conn {key} asked the server to stop: shutting down");
            self.shutting_down = true;
        }
        if let Some(next_door) = door.upgrade() {
            door = next_door;
        }
        if let Some(before) = recorded {
            self.hold_if_recorded(key, before);
        }
        let c = self.conns.get_mut(key)?;
        c.door = door;
        if let Some(at) = wake {
            if c.wake_at.is_none_or(|w| at < w) {
                c.wake_at = Some(at);
                self.timers.add(at, Deadline::Door(id));
            }
        }
        Some((next, progressed))
    }

    /// The waker rang: blocking work of the doors has finished. Each
    /// result goes to its connection's door as an answer (the door is then
    /// resumed in this turn); a connection that is gone drops it.
    fn on_blocking_done(&mut self) {
        let Some(pool) = self.blocking.as_mut() else {
            return;
        };
        let done = pool.results();
        if done.is_empty() {
            return;
        }
        let now = self.now();
        let (_, mut post) = self.split(now);
        for d in done {
            post.answer(d.conn, Answer::Done(&*d.result));
        }
    }

    fn on_signal(&mut self) {
        if let Some(s) = &mut self.signal {
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        log::info!("signal received: shutting down");
        self.shutting_down = true;
    }

    /// SIGHUP: reads the configuration again on a helper thread (see
    /// [`Server::on_reload_done`]).
    fn on_hangup(&mut self) {
        if let Some(s) = &mut self.hangup {
            let mut buf = [0u8; 64];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
        let waker = self.outbound.waker();
        match &mut self.reload {
            Some(reload) => {
                log::info!("SIGHUP received: reloading the configuration");
                reload.start(waker);
            }
            None => log::warn!("SIGHUP received: this server cannot reload; ignored"),
        }
    }

    /// A reload's result came back: swaps in what may change, or keeps
    /// everything when it failed.
    fn on_reload_done(&mut self) {
        let Some((result, again)) = self.reload.as_mut().and_then(Reload::take) else {
            return;
        };
        match result {
            Ok(new) => self.apply_reload(new),
            Err(e) => log::error!("reload failed, the running settings stay: {e}"),
        }
        if again {
            let waker = self.outbound.waker();
            if let Some(reload) = &mut self.reload {
                reload.start(waker);
            }
        }
    }

    fn apply_reload(&mut self, new: Reloaded) {
        let Some(reload) = &mut self.reload else {
            return;
        };
        for key in reload.needs_restart(&new.effective) {
            log::warn!("reload: `{key}` changed and needs a restart; the running value stays");
        }
        let changed = reload.take_reloaded(&new.effective);
        let had_tls = self.listeners.iter().any(Listener::is_tls);
        let tls = match (&new.config.tls, had_tls) {
            (Some(t), true) => {
                for l in &mut self.listeners {
                    l.set_tls(&t.config);
                }
                "; new TLS handshakes use the certificate and key read now"
            }
            (None, true) => {
                log::warn!(
                    "reload: no TLS certificate any more; the TLS listeners keep the running \
                     one until a restart closes them"
                );
                ""
            }
            (Some(_), false) => {
                log::warn!(
                    "reload: a TLS certificate was given, but TLS listeners open only at a restart"
                );
                ""
            }
            (None, false) => "",
        };
        self.live = Live {
            access: new.config.access(),
            docroot: new.docroot,
        };
        let changed = if changed.is_empty() {
            "nothing".to_string()
        } else {
            changed.join(", ")
        };
        log::info!("reload done: changed {changed}{tls}");
    }

    fn accept_all(&mut self) {
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    fn accept(&mut self, index: usize) {
        if self.shutting_down || self.accept_backoff {
            return;
        }
        loop {
            if self.inbound_open() >= self.limits.max_connections {
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
            let door_ix = listener.door_ix;
            match listener.accept() {
                Ok(transport) => self.add_conn(door_ix, transport),
                Err(e) if is_would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    self.stats.accept_errors += 1;
                    let now = self.now();
                    if self
                        .accept_logged_at
                        .is_none_or(|t| now >= t + ACCEPT_LOG_MS)
                    {
                        log::warn!(
                            "accept: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms \
                             ({} accept errors so far; logged at most every {} s)",
                            self.stats.accept_errors,
                            ACCEPT_LOG_MS / 1000
                        );
                        self.accept_logged_at = Some(now);
                    }
                    self.accept_backoff = true;
                    let at = self.now() + ACCEPT_BACKOFF_MS;
                    self.timers.add(at, Deadline::AcceptBackoff);
                    return;
                }
                Err(e) => {
                    self.stats.accept_errors += 1;
                    log::debug!("accept: {e}");
                }
            }
        }
    }

    fn add_conn(&mut self, door_ix: u8, mut transport: Transport) {
        let Some(Some(opener)) = self.openers.get(usize::from(door_ix)) else {
            return;
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = transport.register(self.poll.registry(), Token(key)) {
            log::warn!("register: {e}");
            return;
        }
        let id = ConnId {
            key: key as u32,
            gen: self.next_gen,
        };
        let name = DOORS.get(usize::from(door_ix)).map_or("?", |d| d.name);
        log::debug!("conn {key}: {name} door, from {}", transport.peer());
        let conn = entry.insert(Conn::new(
            id,
            transport,
            opener(),
            door_ix,
            Life::Open,
            true,
        ));
        if let Some(n) = self.stats.open.get_mut(usize::from(door_ix)) {
            *n += 1;
        }
        self.stats.accepted += 1;
        if let Some(d) = self.stats.door_mut(door_ix) {
            d.accepted += 1;
        }
        // A TLS handshake that never completes is an incomplete request.
        if conn.holds_incomplete() {
            let now = self.now();
            self.note_progress(key, now, false);
        }
    }

    /// Reads and processes input until the socket would block, the connection
    /// pauses or closes, or its budget for this turn is spent.
    /// Reads and runs a connection's input until `WouldBlock` or the budget.
    /// With `short_read_drains`, a plain socket's read that fills less than
    /// the buffer also ends it (the socket was empty: the `WouldBlock` read
    /// after it is saved); never for TLS, whose reads come from its own
    /// buffer, nor when the peer may have shut down (its end of file would
    /// never be reported again).
    fn on_readable(&mut self, key: usize, short_read_drains: bool) {
        let mut budget = READ_BUDGET;
        loop {
            // The store's writer is far behind: input waits (read again
            // once it caught up).
            if self.durable.is_some() && self.store_is_behind(key) {
                return;
            }
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if !c.is_open() || !c.readable {
                return;
            }
            if c.door.is_paused() {
                self.read_ahead(key);
                return;
            }
            // Output backpressure: a client that does not read what it asked
            // for is not read from either, until its queue drains below the
            // backlog limit (flush_dirty puts it back on `still_ready`).
            if c.outq.cost() >= self.limits.backlog {
                return;
            }
            let door_ix = c.door_ix;
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
                    if short_read_drains
                        && n > 0
                        && n < self.read_buf.len()
                        && c.transport.is_plain_socket()
                    {
                        c.readable = false;
                    }
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
                log::debug!("conn {key}: peer closed");
                self.linger(key, CloseReason::PeerClosed);
                return;
            }
            self.stats.bytes_in += n as u64;
            if let Some(d) = self.stats.door_mut(door_ix) {
                d.bytes_in += n as u64;
            }
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
                if let Some(c) = self.conns.get_mut(key) {
                    if !c.ready_listed {
                        c.ready_listed = true;
                        self.still_ready.push(key);
                    }
                }
                return;
            }
        }
    }

    /// A paused connection runs no input, but its input is still read
    /// (unprocessed, up to [`READ_AHEAD`] bytes) so that a client that goes
    /// away while waiting is noticed: it lingers at once, and from then on
    /// takes no answer that could be lost with it.
    fn read_ahead(&mut self, key: usize) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if !c.door.is_paused() || !c.is_open() || !c.readable {
                return;
            }
            // Read at most what is left of the read-ahead, so a paused
            // connection never holds more than READ_AHEAD of unrun input
            // through reading ahead.
            let room = READ_AHEAD.saturating_sub(c.input.len());
            if room == 0 {
                return;
            }
            let room = room.min(self.read_buf.len());
            let buf = self.read_buf.get_mut(..room).unwrap_or_default();
            let got = c.transport.read(buf);
            let reason = match got {
                Ok(0) => CloseReason::PeerClosed,
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    if let Some(d) = self.stats.doors.get_mut(usize::from(c.door_ix)) {
                        d.bytes_in += n as u64;
                    }
                    c.input
                        .extend_from_slice(self.read_buf.get(..n).unwrap_or_default());
                    // A transport may have records of its own to answer.
                    mark_dirty(&mut self.dirty, c, key);
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
            log::debug!("conn {key}: {} while paused", reason.as_str());
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
            Next::Close(reason) => {
                self.linger(key, reason);
                false
            }
        }
    }

    /// Processes input the connection already holds (after a resume).
    fn process_own_input(&mut self, key: usize) -> Next {
        let Some(c) = self.conns.get_mut(key) else {
            return Next::Close(CloseReason::ReadError);
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
        let Some((next, progressed)) = self.with_door(key, |door, cx| door.on_input(cx, input))
        else {
            return Next::Close(CloseReason::ReadError);
        };
        // The leftover is not yet back in the connection: judge by `input`.
        let held = !input.is_empty();
        let backlog = self.limits.backlog;
        if let Some(c) = self.conns.get_mut(key) {
            // Whole requests left in the input because the door stopped at
            // the backlog: the flush that drains it resumes the door.
            c.held_back = held && !c.door.is_paused() && c.outq.cost() >= backlog;
        }
        self.note_progress_with(key, now, progressed, held);
        next
    }

    fn note_progress(&mut self, key: usize, now: Millis, progressed: bool) {
        let held = self.conns.get(key).is_some_and(|c| !c.input.is_empty());
        self.note_progress_with(key, now, progressed, held);
    }

    /// Keeps the request-timeout clock of connection `key`: it runs while
    /// the connection holds an incomplete request, and starts again from
    /// `now` whenever a whole one was taken.
    fn note_progress_with(&mut self, key: usize, now: Millis, progressed: bool, held: bool) {
        let limit = self.limits.request_timeout_s.saturating_mul(1000);
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let incomplete =
            (held && !c.door.is_paused()) || c.door.mid_request() || c.transport.is_handshaking();
        if !incomplete {
            c.incomplete_since = None;
            return;
        }
        if progressed || c.incomplete_since.is_none() {
            c.incomplete_since = Some(now);
        }
        if limit > 0 && !c.request_timer {
            c.request_timer = true;
            self.timers.add(now + limit, Deadline::Request(c.id));
        }
    }

    fn on_resume(&mut self, key: usize) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        if !c.is_open() || c.door.is_paused() {
            return;
        }
        let next = self.process_own_input(key);
        if !self.after_input(key, next) {
            return;
        }
        self.on_readable(key, false);
    }

    /// Runs the shell's deadlines that are due.
    fn run_timers(&mut self, now: Millis) {
        while let Some((at, deadline)) = self.timers.pop_due(now) {
            match deadline {
                Deadline::AcceptBackoff => {
                    self.accept_backoff = false;
                    self.accept_all();
                }
                Deadline::Linger(id) => {
                    if let Some(c) = self.conn_of(id) {
                        if let Life::Lingering { deadline, .. } = c.life {
                            if deadline <= now {
                                self.mark_close(id.key as usize, CloseReason::LingerTimeout);
                            }
                        }
                    }
                }
                Deadline::Request(id) => self.check_stalled(id, now),
                Deadline::Connect(id) => self.check_connect(id),
                Deadline::Door(id) => {
                    let key = id.key as usize;
                    let due = self
                        .conn_of(id)
                        .is_some_and(|c| c.is_open() && c.wake_at == Some(at));
                    if !due {
                        continue;
                    }
                    if let Some(c) = self.conns.get_mut(key) {
                        c.wake_at = None;
                    }
                    if let Some((next, _)) = self.with_door(key, |door, cx| door.on_timer(cx)) {
                        if self.after_input(key, next) {
                            self.resume.push(key);
                        }
                    }
                }
            }
        }
    }

    /// Heartbeats for streams that would otherwise fall silent behind
    /// proxies (`--heartbeat`), without a timer per stream: every quarter
    /// of the period one pass over the connections asks each open one that
    /// has nothing queued and has written nothing for three quarters of
    /// the period or more for its heartbeat ([`Door::heartbeat`]; doors
    /// that are not streams have none). An idle stream thus gets one every
    /// three quarters to one whole period, and is never silent for longer
    /// than the period (plus the loop's lateness). A pass reads each
    /// connection's state once and calls no door but those due, four times
    /// a period; it is not timed here, and all of it runs in one turn.
    fn sweep_heartbeats(&mut self, now: Millis) {
        if self.heartbeat_ms == 0 || now < self.next_sweep {
            return;
        }
        let period = sweep_period(self.heartbeat_ms);
        self.next_sweep = now.saturating_add(period);
        let quiet = self.heartbeat_ms.saturating_sub(period);
        for (key, c) in self.conns.iter_mut() {
            if !c.is_open()
                || !c.outq.is_empty()
                || c.hold > 0
                || c.transport.has_pending()
                || now.saturating_sub(c.last_write) < quiet
            {
                continue;
            }
            if let Some(beat) = c.door.heartbeat(now, c.last_write) {
                c.outq.push(Bytes::from_static(beat));
                mark_dirty(&mut self.dirty, c, key);
            }
        }
    }

    /// The connection `id` names, if it is still the same one.
    fn conn_of(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.key as usize).filter(|c| c.id == id)
    }

    /// Closes a connection that has held an incomplete request, command or
    /// TLS handshake for longer than `--request-timeout`; one that made
    /// progress meanwhile gets its deadline moved.
    fn check_stalled(&mut self, id: ConnId, now: Millis) {
        let limit = self.limits.request_timeout_s.saturating_mul(1000);
        let timeout_s = self.limits.request_timeout_s;
        let backlog = self.limits.backlog;
        let Some(c) = self.conn_of(id) else {
            return;
        };
        c.request_timer = false;
        if !c.is_open() || !c.holds_incomplete() {
            c.incomplete_since = None;
            return;
        }
        if c.outq.cost() >= backlog {
            // The server stopped reading it (output backpressure): a client
            // that reads slowly is not a stalled one. Count from now.
            c.incomplete_since = Some(now);
        }
        let since = *c.incomplete_since.get_or_insert(now);
        if now.saturating_sub(since) >= limit {
            log::info!(
                "conn {} ({}): request incomplete for {timeout_s} s; closing it",
                id.key,
                c.transport.peer(),
            );
            let key = id.key as usize;
            if c.transport.is_handshaking() {
                // Nothing can be said before the TLS handshake is done.
                self.mark_close(key, CloseReason::RequestTimeout);
                return;
            }
            // The door may answer (HTTP: 408) before the connection closes.
            let next = self
                .with_door(key, |door, cx| door.on_request_timeout(cx))
                .map_or(Next::Close(CloseReason::RequestTimeout), |(next, _)| next);
            match next {
                Next::Close(reason) => self.linger(key, reason),
                _ => self.mark_close(key, CloseReason::RequestTimeout),
            }
        } else {
            c.request_timer = true;
            self.timers.add(since + limit, Deadline::Request(id));
        }
    }

    /// Closes once queued output has drained, or after [`LINGER_MS`].
    fn linger(&mut self, key: usize, reason: CloseReason) {
        let deadline = self.now() + LINGER_MS;
        if let Some(c) = self.conns.get_mut(key) {
            if c.is_open() {
                c.life = Life::Lingering { reason, deadline };
                self.timers.add(deadline, Deadline::Linger(c.id));
            }
            mark_dirty(&mut self.dirty, c, key);
        }
    }

    fn mark_close(&mut self, key: usize, reason: CloseReason) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.is_closing() {
                c.life = Life::Closing;
                self.to_close.push((key, reason));
            }
        }
    }

    fn flush_dirty(&mut self) {
        let now = self.now();
        let mut again = Vec::new();
        for key in mem::take(&mut self.dirty) {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if c.is_closing() || !c.writable {
                continue;
            }
            if c.hold > 0 {
                // Its answers wait for the store (durable::release).
                continue;
            }
            let reason = match c.outq.flush(&mut c.transport, FLUSH_BUDGET) {
                Ok((n, outcome)) => {
                    self.stats.bytes_out += n as u64;
                    if let Some(d) = self.stats.doors.get_mut(usize::from(c.door_ix)) {
                        d.bytes_out += n as u64;
                    }
                    if n > 0 {
                        c.last_write = now;
                    }
                    if n > 0 && c.outq.cost() < self.limits.backlog && c.is_open() {
                        if c.held_back {
                            // Requests held back by backpressure: run them,
                            // then read on.
                            c.held_back = false;
                            self.resume.push(key);
                        } else if c.readable && !c.ready_listed {
                            // Input left unread (budget or backpressure): go on.
                            c.ready_listed = true;
                            self.still_ready.push(key);
                        }
                    }
                    match outcome {
                        Flushed::All => match c.transport.flush_pending() {
                            Ok(true) => match c.life {
                                Life::Lingering { reason, .. } => Some(reason),
                                _ => None,
                            },
                            Ok(false) => {
                                c.writable = false;
                                None
                            }
                            Err(e) => {
                                log::debug!("conn {key}: write: {e}");
                                Some(CloseReason::WriteError)
                            }
                        },
                        Flushed::WouldBlock => {
                            c.writable = false;
                            None
                        }
                        Flushed::Budget => {
                            c.dirty = true;
                            again.push(key);
                            None
                        }
                    }
                }
                Err(e) => {
                    log::debug!("conn {key}: write: {e}");
                    Some(CloseReason::WriteError)
                }
            };
            if let Some(reason) = reason {
                c.life = Life::Closing;
                self.to_close.push((key, reason));
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
            if let Some(n) = self.stats.closed_by.get_mut(reason as usize) {
                *n += 1;
            }
            c.transport.deregister(self.poll.registry());
            log::debug!("conn {key}: closed ({})", reason.as_str());
            if c.dropped > 0 {
                log::info!(
                    "conn {key} ({}) closed after {} messages were dropped for it",
                    c.transport.peer(),
                    c.dropped
                );
            }
            {
                let (broker, mut post, live) = self.split_live(now);
                let stats = post.stats;
                let mut cx = Cx::new(c.id, now, broker, &mut post, stats).with_live(live);
                c.door.on_close(&mut cx);
                broker.seal(&mut post);
            }
            self.stats.closed += 1;
            if let Some(n) = self.stats.open.get_mut(usize::from(c.door_ix)) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Stops accepting, gives queued output a short while to drain, and
    /// removes the Unix socket files.
    fn shutdown(&mut self) {
        for l in self.listeners.drain(..) {
            l.remove_socket_file();
        }
        self.close_store();
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_FLUSH_MS);
        let mut events = Events::with_capacity(1024);
        loop {
            for (key, c) in self.conns.iter_mut() {
                if (!c.outq.is_empty() || c.transport.has_pending()) && !c.is_closing() {
                    mark_dirty(&mut self.dirty, c, key);
                }
            }
            self.flush_dirty();
            let pending = self
                .conns
                .iter()
                .any(|(_, c)| (!c.outq.is_empty() || c.transport.has_pending()) && !c.is_closing());
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
            self.tick();
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
