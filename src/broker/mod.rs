//! The broker: queues (point-to-point) and channels (fan-out), free of IO.
//!
//! It takes commands with the current time of a virtual clock ([`Millis`]) and
//! hands its deliveries to an [`Outbox`]; it never sees a socket, and never
//! reads the clock itself. The IO shell owns the clock and the connections.
//!
//! Frames are built here, once per message per [`frames::Framing`], and the
//! same `Bytes` goes to every connection that wants that framing.

pub mod channels;
pub mod filter;
pub mod frames;
pub mod queues;

use bytes::Bytes;

pub use channels::{Channels, Subscription};
pub use queues::{Queues, WaitId};

/// Milliseconds on the server's monotonic clock.
pub type Millis = u64;

/// A connection, by slab key and generation: a stale id (of a connection that
/// has closed and whose slot was reused) never matches the slot's new tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub key: u32,
    pub gen: u32,
}

/// Where the broker puts its output. The IO shell implements it over its
/// connections; tests implement it over a `Vec`.
pub trait Outbox {
    /// Queues `frame` for `conn`; a connection that is gone ignores it.
    /// `messages` is the number of channel messages the frame carries, which
    /// the slow-subscriber policy may drop; frames that must never be dropped
    /// (queue deliveries, answers, responses) pass 0. Returns false when the
    /// frame was not queued (the connection is gone or closing, or a channel
    /// frame was dropped by the slow-subscriber policy).
    fn deliver(&mut self, conn: ConnId, frame: Bytes, messages: u32) -> bool;
    /// The line-protocol wait of `conn` has been answered (message or `*`):
    /// the connection may go on with its next command.
    fn wait_done(&mut self, conn: ConnId);
}

/// Counters kept by the broker, read by the stats page and the benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Messages sent to queues.
    pub queued_in: u64,
    /// Queue messages handed to a receiver.
    pub queued_out: u64,
    /// Queue messages that timed out undelivered.
    pub expired: u64,
    /// Messages published to channels.
    pub published: u64,
    /// Channel deliveries (one per message per subscriber).
    pub fanned_out: u64,
}

/// The whole broker: one namespace of queue addresses, one of channels.
#[derive(Default)]
pub struct Broker {
    pub queues: Queues,
    pub channels: Channels,
}

impl Broker {
    pub fn new() -> Broker {
        Broker::default()
    }

    pub fn stats(&self) -> BrokerStats {
        let q = self.queues.stats();
        let c = self.channels.stats();
        BrokerStats {
            queued_in: q.0,
            queued_out: q.1,
            expired: q.2,
            published: c.0,
            fanned_out: c.1,
        }
    }

    /// Sends any open fan-out batch. Call before anything else that may deliver
    /// and at the end of each connection's input, so order is kept.
    pub fn seal(&mut self, out: &mut impl Outbox) {
        self.channels.seal(out);
    }

    /// Runs every timer due at `now`.
    pub fn on_timers(&mut self, now: Millis, out: &mut impl Outbox) {
        self.channels.seal(out);
        self.queues.on_timers(now, out);
    }

    /// The earliest pending deadline, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.queues.next_deadline()
    }
}

/// An [`Outbox`] that records everything, for tests.
#[derive(Default, Debug)]
pub struct RecordingOutbox {
    pub frames: Vec<(ConnId, Bytes, u32)>,
    pub done: Vec<ConnId>,
    /// Connections that refuse deliveries, as closing ones do.
    pub refuse: Vec<ConnId>,
}

impl Outbox for RecordingOutbox {
    fn deliver(&mut self, conn: ConnId, frame: Bytes, messages: u32) -> bool {
        if self.refuse.contains(&conn) {
            return false;
        }
        self.frames.push((conn, frame, messages));
        true
    }
    fn wait_done(&mut self, conn: ConnId) {
        self.done.push(conn);
    }
}

impl RecordingOutbox {
    /// All bytes delivered to `conn`, in order.
    pub fn bytes_for(&self, conn: ConnId) -> Vec<u8> {
        self.frames
            .iter()
            .filter(|(c, _, _)| *c == conn)
            .flat_map(|(_, f, _)| f.iter().copied())
            .collect()
    }
}
