//! The contract between the IO shell and the doors.
//!
//! A *door* is one protocol a listener speaks (the line protocol, the HTTP
//! bus, …). This room sits below both the shell (`server`) and the doors
//! (`line`, `http`): it names what the shell asks of a door ([`Door`]), what a
//! door may use while it runs ([`Cx`]), and the words both sides share
//! ([`Next`], [`CloseReason`], [`Stats`]). It never sees a socket.
//!
//! What the shell does for every door, so that no door has to remember it:
//! it seals the broker's open fan-out batch after each door call (and [`Cx`]
//! seals it before a door's own output), reads ahead while a door is paused
//! and stops reading while its output backs up, resumes a door once its wait
//! is answered, closes with a typed reason, and times out a connection that
//! holds an incomplete request for longer than `--request-timeout`.

use std::cell::Cell;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};

pub use crate::broker::{Answer, Delivery, Dial};
use crate::broker::{Broker, ConnId, Millis, Outbox};

/// Defines a fieldless enum together with `ALL` (every variant, in order)
/// and `COUNT`, so that tables indexed by it can never be too short.
#[macro_export]
macro_rules! counted_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident ),+ $(,)? }
    ) => {
        $(#[$meta])*
        $vis enum $name { $( $(#[$vmeta])* $variant ),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant ),+ ];
            /// The number of variants.
            pub const COUNT: usize = $name::ALL.len();
        }
    };
}

/// What the connection should do after a door call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read more input.
    Read,
    /// An answer is pending (a line-protocol wait, a parked request): leave
    /// further input unprocessed until the door is resumed.
    Paused,
    /// Send what is queued, then close for this reason (`.` or a request
    /// without keep-alive: [`CloseReason::Quit`]; malformed input:
    /// [`CloseReason::ProtocolError`]).
    Close(CloseReason),
}

counted_enum! {
    /// Why a connection was closed; counted per reason.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum CloseReason {
        PeerClosed,
        Quit,
        ProtocolError,
        SlowSubscriber,
        ReadError,
        WriteError,
        LingerTimeout,
        RequestTimeout,
        /// An outbound connection could not be opened (name, connect, timeout).
        ConnectFailed,
        /// An outbound connection's peer did not answer in time.
        ResponseTimeout,
        /// Its answers waited for records the store failed to write
        /// (`--data-dir`): they are not sent.
        StoreFailed,
    }
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer closed",
            CloseReason::Quit => "quit",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::SlowSubscriber => "slow subscriber",
            CloseReason::ReadError => "read error",
            CloseReason::WriteError => "write error",
            CloseReason::LingerTimeout => "linger timeout",
            CloseReason::RequestTimeout => "request timeout",
            CloseReason::ConnectFailed => "connect failed",
            CloseReason::ResponseTimeout => "response timeout",
            CloseReason::StoreFailed => "store failed",
        }
    }

    /// The name on the stats page (`peer_closed`, …).
    pub fn key(self) -> String {
        self.as_str().replace(' ', "_")
    }
}

/// The loop's counters, lent (read-only) to every door call for the stats
/// pages. The two counters the outbox bumps in the middle of a door call are
/// cells, so that the door and the outbox can hold them at once.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    pub closed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub accept_errors: u64,
    /// Channel messages dropped for slow subscribers.
    pub dropped: Cell<u64>,
    /// Slow subscribers disconnected.
    pub slow_disconnects: Cell<u64>,
    /// Open connections by door, in the order of [`Stats::door_names`].
    pub open: Vec<u64>,
    pub door_names: Vec<&'static str>,
    /// Closed connections by reason, indexed by `CloseReason as usize`.
    pub closed_by: [u64; CloseReason::COUNT],
    /// The longest loop turn since start, in µs: the longest any client has
    /// had to wait for the loop to come back to it.
    pub turn_max_us: u64,
    /// The longest loop turn of the last 10 s (and of the current window so far).
    pub turn_max_recent_us: u64,
    /// Counters by door, in the order of [`Stats::door_names`] (empty in
    /// unit tests that do not need them).
    pub doors: Vec<DoorCounters>,
    /// How long loop turns took.
    pub turns: TurnHistogram,
}

/// One door's counters. Only `delivered` is a cell: the outbox bumps it in
/// the middle of a door call.
#[derive(Debug, Default)]
pub struct DoorCounters {
    /// Connections accepted (for a dial door: opened).
    pub accepted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Messages its connections published or sent to queues.
    pub messages_in: u64,
    /// Channel messages and queue messages handed to its connections.
    pub delivered: Cell<u64>,
}

/// The upper bounds (inclusive, in µs) of the loop turn histogram's buckets;
/// one more bucket counts the turns above the last bound.
pub const TURN_BUCKETS_US: [u64; 14] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000,
];

/// Loop turn durations, counted into [`TURN_BUCKETS_US`] (not cumulative:
/// the exposition adds them up).
#[derive(Debug, Default)]
pub struct TurnHistogram {
    pub counts: [u64; TURN_BUCKETS_US.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl TurnHistogram {
    /// Counts one turn of `us` µs. Most turns are short, so the scan from
    /// the smallest bucket stops early.
    pub fn record(&mut self, us: u64) {
        let ix = TURN_BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(TURN_BUCKETS_US.len());
        if let Some(n) = self.counts.get_mut(ix) {
            *n += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

impl Stats {
    /// Stats for the doors called `names`, every counter at zero.
    pub fn for_doors(names: Vec<&'static str>) -> Stats {
        Stats {
            open: vec![0; names.len()],
            doors: names.iter().map(|_| DoorCounters::default()).collect(),
            door_names: names,
            ..Stats::default()
        }
    }

    /// Adds `n` messages delivered to a connection of door `door_ix`.
    pub fn count_delivered(&self, door_ix: u8, n: u64) {
        if let Some(d) = self.doors.get(usize::from(door_ix)) {
            d.delivered.set(d.delivered.get() + n);
        }
    }

    /// The counters of door `door_ix`, to bump.
    pub fn door_mut(&mut self, door_ix: u8) -> Option<&mut DoorCounters> {
        self.doors.get_mut(usize::from(door_ix))
    }

    pub fn open_total(&self) -> u64 {
        self.open.iter().sum()
    }

    /// Open connections of the door called `name` (0 when there is none).
    pub fn open_of(&self, name: &str) -> u64 {
        self.door_names
            .iter()
            .zip(&self.open)
            .find(|(n, _)| **n == name)
            .map_or(0, |(_, n)| *n)
    }
}

/// The settings a reload (SIGHUP) may change while connections stay open:
/// owned by the shell, replaced whole by a reload that succeeded, and lent
/// (read-only) to every door call as [`Cx::live`]. A door reads them per
/// request, never keeps a copy.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// `--secret` and `--token-key`: what the doors that ask for
    /// credentials check them against (see
    /// `http::conn::Settings::checks_credentials`; the line door).
    pub access: crate::auth::Access,
    /// `--docroot`, canonical: where the bus serves static files from.
    pub docroot: Option<PathBuf>,
}

impl Live {
    /// Nothing set: no secret, no docroot.
    pub const NONE: Live = Live {
        access: crate::auth::Access {
            secret: None,
            tokens: None,
        },
        docroot: None,
    };
}

/// What a [`Cx`] lends when the caller gave no [`Live`] (unit tests).
static NO_LIVE: Live = Live::NONE;

/// One protocol spoken on a connection. The shell holds a `Box<dyn Door>` in
/// each connection and knows doors only through this trait.
pub trait Door {
    /// Runs every complete request or command in `input`; a partial one stays
    /// in `input` for the next call. Called with an empty `input` when the door
    /// is resumed.
    fn on_input(&mut self, cx: &mut Cx<'_>, input: &mut BytesMut) -> Next;

    /// The broker answers this connection's wait. Called from inside the
    /// broker: the door may only write frames with `send` (in order with
    /// everything else queued for the connection), not call the broker.
    /// Returns false to refuse the answer (nothing was waiting): the broker
    /// then passes a message on to the next receiver. After `true` the shell
    /// resumes the door ([`Door::on_input`] over its held input) in the same
    /// turn.
    fn on_answer(&mut self, answer: Answer<'_>, send: &mut dyn FnMut(Bytes)) -> bool;

    /// True while an answer is pending: input is read ahead (bounded) but not
    /// processed, and the request timeout does not run.
    fn is_paused(&self) -> bool;

    /// True while the door holds part of a request that is not in the input
    /// buffer (a request body being decoded): the request timeout runs.
    fn mid_request(&self) -> bool {
        false
    }

    /// The connection has held an incomplete request for longer than
    /// `--request-timeout` (see [`Door::mid_request`]); the door may queue
    /// a last answer (HTTP's `408`) before the connection closes.
    fn on_request_timeout(&mut self, cx: &mut Cx<'_>) -> Next {
        let _ = cx;
        Next::Close(CloseReason::RequestTimeout)
    }

    /// A deadline the door asked for with [`Cx::wake_at`] has come.
    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Next {
        let _ = cx;
        Next::Read
    }

    /// A stream that must not fall silent behind proxies (`--heartbeat`)
    /// returns the bytes of one heartbeat. The shell's heartbeat sweep asks
    /// an open connection that has nothing queued and has written nothing
    /// since `last_write` for most of the period, at `now`; it queues what
    /// comes back. Other doors return `None` (the default). No per-stream
    /// timer is kept for it.
    fn heartbeat(&mut self, now: Millis, last_write: Millis) -> Option<&'static [u8]> {
        let _ = (now, last_write);
        None
    }

    /// The connection is closing: withdraw everything held in the broker.
    /// Called once.
    fn on_close(&mut self, cx: &mut Cx<'_>);

    /// An outbound connection (one the server opened, see [`Dial`]) is
    /// connected (`Ok`), or could not be (`Err`: the name did not resolve,
    /// the connect failed or timed out). After an `Err` the connection is
    /// closed ([`CloseReason::ConnectFailed`]) whatever the door answers.
    /// Never called on accepted connections. Output queued before the
    /// connect completes is written once it has.
    fn on_connect(&mut self, cx: &mut Cx<'_>, result: Result<(), &std::io::Error>) -> Next {
        let _ = (cx, result);
        Next::Read
    }

    /// After a call, a door may hand over its connection to another door
    /// (the HTTP bus to a subscriber's stream, which drops the request
    /// parser). The shell asks after every call.
    fn upgrade(&mut self) -> Option<Box<dyn Door>> {
        None
    }
}

/// Makes the door state of each new connection on a door's listeners. A
/// door's `opener(&Config) -> Opener` is called once at start-up (the place
/// to prepare settings its connections share) and its result once per
/// accepted connection.
pub type Opener = Box<dyn Fn() -> Box<dyn Door>>;

/// Makes the door of each outbound connection of a dial door (see
/// [`crate::doors::DIALS`]), from the tag of its [`Dial`]: the door knows
/// by it what the connection is for.
pub type DialOpener = Box<dyn Fn(u64) -> Box<dyn Door>>;

/// Work that may block (reading a file): run on a helper thread by
/// [`Cx::run_blocking`], its result handed back to the door that asked as
/// [`Answer::Done`].
pub type Job = Box<dyn FnOnce() -> Box<dyn std::any::Any + Send> + Send>;

/// What a door may use during one call: the broker, the outbox, the clock,
/// the loop's counters, and requests to the shell.
pub struct Cx<'a> {
    /// The connection being served.
    pub me: ConnId,
    pub now: Millis,
    pub broker: &'a mut Broker,
    pub out: &'a mut dyn Outbox,
    pub stats: &'a Stats,
    /// The settings a reload may change (see [`Live`]).
    pub live: &'a Live,
    /// Set by [`Cx::progress`]: a whole request or command was taken.
    pub(crate) progressed: bool,
    /// Set by [`Cx::wake_at`].
    pub(crate) wake_at: Option<Millis>,
    /// Bytes queued for this connection and not yet written (see
    /// [`Cx::unsent`]).
    pub(crate) unsent: usize,
    /// When bytes were last written to this connection's socket (see
    /// [`Cx::last_write`]).
    pub(crate) last_write: Millis,
    /// Set by [`Cx::stop_server`].
    pub(crate) stop: bool,
    /// Blocking work asked for in this call (see [`Cx::run_blocking`]).
    pub(crate) jobs: Vec<Job>,
    /// How many more jobs the helper threads take now.
    pub(crate) job_room: usize,
}

impl<'a> Cx<'a> {
    pub fn new(
        me: ConnId,
        now: Millis,
        broker: &'a mut Broker,
        out: &'a mut dyn Outbox,
        stats: &'a Stats,
    ) -> Cx<'a> {
        Cx {
            me,
            now,
            broker,
            out,
            stats,
            live: &NO_LIVE,
            progressed: false,
            wake_at: None,
            unsent: 0,
            last_write: 0,
            stop: false,
            jobs: Vec::new(),
            job_room: 0,
        }
    }

    /// Runs `job` on a helper thread; its result comes back to this
    /// connection's door as [`Answer::Done`] (through
    /// [`Door::on_answer`]), so the door should wait for it (a parked
    /// request). False when the helper threads take no more work now (the
    /// job is dropped): the door answers at once instead.
    pub fn run_blocking(&mut self, job: Job) -> bool {
        if self.job_room == 0 {
            return false;
        }
        self.job_room -= 1;
        self.jobs.push(job);
        true
    }

    /// Lends the settings a reload may change (the shell does; tests may).
    pub fn with_live(mut self, live: &'a Live) -> Cx<'a> {
        self.live = live;
        self
    }

    /// Sets how many jobs [`Cx::run_blocking`] takes (the shell does; tests may).
    pub fn with_job_room(mut self, room: usize) -> Cx<'a> {
        self.job_room = room;
        self
    }

    /// Queues a frame of the door's own (an answer, a response) for this
    /// connection, after any channel batch this connection's input opened.
    /// Returns false when the connection no longer takes output.
    pub fn send(&mut self, frame: Bytes) -> bool {
        self.broker.seal(self.out);
        let len = frame.len();
        let queued = self.out.deliver(self.me, frame, 0);
        if queued {
            self.note_queued(len);
        }
        queued
    }

    /// Counts `len` bytes the door queued for this connection by itself
    /// (through `out`) in [`Cx::unsent`].
    pub fn note_queued(&mut self, len: usize) {
        self.unsent = self.unsent.saturating_add(len);
    }

    /// True when this connection holds as much unsent output as it may: the
    /// door should stop taking requests from its input (leave them there);
    /// the shell calls it again once the output has drained.
    pub fn backlogged(&self) -> bool {
        self.out.is_backlogged(self.me)
    }

    /// Says that a whole request or command was taken from the input: the
    /// request timeout starts again.
    pub fn progress(&mut self) {
        self.progressed = true;
    }

    /// Asks for [`Door::on_timer`] at `at` (the earliest of several asks in
    /// one call wins). A door that no longer needs it ignores the call.
    pub fn wake_at(&mut self, at: Millis) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// Bytes queued for this connection and not yet written to its socket:
    /// those queued when the call began, and those the door queued since
    /// through [`Cx::send`] (or [`Cx::note_queued`]). A door that streams
    /// uses it to stop a client that does not read.
    pub fn unsent(&self) -> usize {
        self.unsent
    }

    /// Sets what [`Cx::unsent`] says (the shell does; tests may).
    pub fn with_unsent(mut self, unsent: usize) -> Cx<'a> {
        self.unsent = unsent;
        self
    }

    /// When bytes were last written to this connection's socket (0: never),
    /// on the same clock as [`Cx::now`]. A stream that must not stay silent
    /// for long (a heartbeat) tells by it whether it has been idle, without
    /// any work per message.
    pub fn last_write(&self) -> Millis {
        self.last_write
    }

    /// Sets what [`Cx::last_write`] says (the shell does; tests may).
    pub fn with_last_write(mut self, at: Millis) -> Cx<'a> {
        self.last_write = at;
        self
    }

    /// Asks the server to stop as a signal would: it stops accepting,
    /// flushes what is queued (this call's output included) and exits.
    pub fn stop_server(&mut self) {
        self.stop = true;
    }

    pub fn stop_requested(&self) -> bool {
        self.stop
    }

    pub fn progressed(&self) -> bool {
        self.progressed
    }

    pub fn wake_requested(&self) -> Option<Millis> {
        self.wake_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_counts_what_the_door_queues() {
        use crate::broker::{Broker, ConnId, RecordingOutbox};
        let me = ConnId { key: 1, gen: 1 };
        let (mut broker, stats) = (Broker::new(), Stats::default());
        let mut out = RecordingOutbox::default();
        let mut cx = Cx::new(me, 0, &mut broker, &mut out, &stats).with_unsent(10);
        assert!(cx.send(Bytes::from_static(b"abc")));
        assert_eq!(cx.unsent(), 13);
        cx.note_queued(7);
        assert_eq!(cx.unsent(), 20);
        // A frame the connection does not take is not counted.
        let mut out = RecordingOutbox {
            refuse: vec![me],
            ..RecordingOutbox::default()
        };
        let mut cx = Cx::new(me, 0, &mut broker, &mut out, &stats);
        assert!(!cx.send(Bytes::from_static(b"abc")));
        assert_eq!(cx.unsent(), 0);
    }

    #[test]
    fn counted_enum_counts() {
        assert_eq!(CloseReason::COUNT, 11);
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        assert_eq!(CloseReason::PeerClosed.key(), "peer_closed");
    }
}
