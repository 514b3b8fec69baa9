//! The broker: queues (point-to-point) and channels (fan-out), free of IO.
//!
//! It takes commands with the current time of a virtual clock ([`Millis`]) and
//! hands its deliveries to an [`Outbox`]; it never sees a socket, and never
//! reads the clock itself. The IO shell owns the clock and the connections.
//!
//! Frames are built here, once per message per [`frames::Framing`], and the
//! same `Bytes` goes to every connection that wants that framing.

pub mod channels;
pub mod cluster;
pub mod filter;
pub mod frames;
pub mod history;
pub mod hooks;
pub mod pattern;
pub mod queues;
pub mod short;
pub mod switch;

use bytes::Bytes;

pub use channels::{Channels, Presence, PresenceKind, Subscription};
pub use queues::{Parts, QueueFull, Queues, Ready, Taken, WaitId};
pub use switch::Switch;

/// Milliseconds on the server's monotonic clock.
pub use crate::timer::Millis;

/// A connection, by slab key and generation: a stale id (of a connection that
/// has closed and whose slot was reused) never matches the slot's new tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub key: u32,
    pub gen: u32,
}

/// A queue message, as the broker hands it to the receiver's door. Every
/// field is borrowed: the door frames what it needs and keeps nothing.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// The address it was sent to.
    pub to: &'a [u8],
    /// Where answers go, when the sender gave one.
    pub reply: Option<&'a [u8]>,
    /// The timeout it was sent with, in seconds.
    pub timeout_s: u64,
    pub body: &'a Bytes,
}

/// The broker's answer to a connection's wait.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// A message for it.
    Message(Delivery<'a>),
    /// The wait timed out.
    Timeout,
    /// The answer to a parked call of the message-switch API (a transfer
    /// or a trace poll), which only that door waits for and formats.
    Switch(&'a switch::Polled),
    /// The result of blocking work the door asked for
    /// (`Cx::run_blocking`), done on a helper thread; the door that asked
    /// knows its type.
    Done(&'a (dyn std::any::Any + Send)),
}

/// Where the broker puts its output. The IO shell implements it over its
/// connections; tests implement it over a `Vec`.
///
/// Output is door-neutral: channel frames are built once per framing (a
/// subscriber chose its framing when it subscribed), and an answer to a
/// wait is handed over as an [`Answer`] that the receiver's door frames.
pub trait Outbox {
    /// Queues `frame` for `conn`; a connection that is gone ignores it.
    /// `messages` is the number of channel messages the frame carries, which
    /// the slow-subscriber policy may drop; frames that must never be dropped
    /// (a door's own answers and responses) pass 0. Returns false when the
    /// frame was not queued (the connection is gone or closing, or a channel
    /// frame was dropped by the slow-subscriber policy).
    fn deliver(&mut self, conn: ConnId, frame: Bytes, messages: u32) -> bool;
    /// Answers the pending wait of `conn` (a message, or its timeout).
    /// Returns false when refused (the connection is gone, closing, or not
    /// waiting): a message then goes to the next receiver.
    fn answer(&mut self, conn: ConnId, answer: Answer<'_>) -> bool;
    /// True when `conn` already holds as much unsent output as it may: a
    /// door stops answering its pipelined requests until it drains.
    fn is_backlogged(&self, conn: ConnId) -> bool {
        let _ = conn;
        false
    }
}

/// An outbound connection the broker wants opened: the IO shell connects to
/// `host:port` (resolving a name off the loop), with TLS when `tls`, and
/// runs the dial door called `door` (a row of [`crate::doors::DIALS`]) on
/// it, made with `tag` so that the door knows what it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    pub door: &'static str,
    pub tag: u64,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// How long the name lookup and the connect may take together.
    pub timeout_ms: Millis,
}

/// What the broker asks of the IO shell about outbound connections. The
/// shell takes these with [`Broker::take_links`] once per turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkRequest {
    Dial(Dial),
    /// Close this outbound connection: no longer wanted, or (`timed_out`)
    /// its peer did not answer in time.
    HangUp {
        conn: ConnId,
        timed_out: bool,
    },
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

/// The whole broker: one namespace of queue addresses (the line
/// protocol's queues and message-switch's queues, see [`switch`]), one of
/// channels.
#[derive(Default)]
pub struct Broker {
    pub queues: Queues,
    pub channels: Channels,
    pub switch: Switch,
    /// Webhook delivery (off until configured).
    pub hooks: hooks::Hooks,
    /// Channels across nodes (off without `--cluster`).
    pub cluster: cluster::Cluster,
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

    /// Messages taken in so far: published to channels and sent to queues
    /// (the shell attributes the growth over a door call to its door).
    pub fn messages_in(&self) -> u64 {
        self.queues.stats().0 + self.channels.stats().0
    }

    /// Sends any open fan-out batch. The broker's own calls seal before they
    /// deliver anything else, and the IO shell seals after every door call,
    /// so output keeps the order in which it was caused.
    pub fn seal(&mut self, out: &mut (impl Outbox + ?Sized)) {
        self.channels.seal(out);
        self.hooks.take_published(&mut self.channels);
        if self.cluster.is_on() {
            self.cluster.after_seal(&mut self.channels, out);
        }
    }

    /// Sends a message to queue address `to` (see [`Queues::send`]); an
    /// address that is a switch queue keeps it there when no receiver
    /// waits (see [`switch`]).
    pub fn send(
        &mut self,
        now: Millis,
        to: Bytes,
        reply: Option<Bytes>,
        timeout_s: u64,
        body: Bytes,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), QueueFull> {
        self.send_as(now, to, reply, timeout_s, body, Parts::Read, out)
    }

    /// [`Broker::send`], saying how the body and the reply address were
    /// made (see [`Parts`]).
    #[allow(clippy::too_many_arguments)]
    pub fn send_as(
        &mut self,
        now: Millis,
        to: Bytes,
        reply: Option<Bytes>,
        timeout_s: u64,
        body: Bytes,
        parts: Parts,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), QueueFull> {
        self.channels.seal(out);
        if !self.switch.has_no_queues() && self.switch.has_queue(&to) {
            return self.line_send_to_switch(now, to, reply, timeout_s, body, out);
        }
        if self.cluster.is_on() && timeout_s > 0 {
            // A receiver waiting here takes it at once, unless Redis holds
            // (or is being asked for) earlier messages to the address.
            if !self.cluster.queue_busy(&to) {
                let d = Delivery {
                    to: &to,
                    reply: reply.as_deref(),
                    timeout_s,
                    body: &body,
                };
                if self.queues.hand_to_waiter(d, out) {
                    return Ok(());
                }
            }
            if self
                .cluster
                .queue_send(&to, reply.as_deref(), timeout_s, &body)
            {
                self.queues.count_sent();
                return Ok(());
            }
        }
        self.queues
            .send_as(now, to, reply, timeout_s, body, parts, out)
    }

    /// A fresh address holding one empty message sent with `timeout_s`
    /// (see [`Queues::fresh_holding_empty`]): the proxy's body address of a
    /// request without a body. With the cluster on, a real message sent
    /// there, which handlers on other nodes can read through Redis.
    pub fn fresh_holding_empty(
        &mut self,
        now: Millis,
        timeout_s: u64,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Bytes, QueueFull> {
        self.channels.seal(out);
        if self.cluster.is_on() {
            let addr = self.queues.unique_address();
            return self
                .send(now, addr.clone(), None, timeout_s, Bytes::new(), out)
                .map(|()| addr);
        }
        self.queues.fresh_holding_empty(now, timeout_s, out)
    }

    /// A frame from a cluster link (see [`cluster::Cluster::on_frame`]),
    /// and what it brings for queue receivers here. False: close the link.
    pub fn cluster_frame(
        &mut self,
        tag: u64,
        frame: cluster::resp::Frame,
        now: Millis,
        out: &mut (impl Outbox + ?Sized),
    ) -> bool {
        let ok = self
            .cluster
            .on_frame(tag, frame, now, &mut self.channels, out);
        self.channels.seal(out);
        self.cluster.pump(now, &mut self.queues, out);
        ok
    }

    /// With `--cluster`: receivers wait on `addresses` here with nothing
    /// queued here for them; the node listens for and takes what other
    /// nodes sent them through Redis.
    fn wanted(
        &mut self,
        now: Millis,
        ready: &Ready,
        addresses: &[Bytes],
        out: &mut (impl Outbox + ?Sized),
    ) {
        if self.cluster.is_on() && matches!(ready, Ready::Waiting(_)) {
            self.cluster.queue_wanted(addresses);
            self.cluster.pump(now, &mut self.queues, out);
        }
    }

    /// Waits on queue addresses (see [`Queues::ready`]); a switch queue
    /// among them gives its oldest message no switch client has seen.
    pub fn ready(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        addresses: Vec<Bytes>,
        out: &mut (impl Outbox + ?Sized),
    ) -> Ready {
        self.ready_for(now, conn, timeout_s, addresses, 1, out)
    }

    /// [`Broker::ready`] for up to `count` messages (`<<`): a wait it
    /// registers takes the messages of the turn that answers it, up to
    /// `count` (see [`Queues::wait_for`]).
    pub fn ready_for(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        addresses: Vec<Bytes>,
        count: u32,
        out: &mut (impl Outbox + ?Sized),
    ) -> Ready {
        self.channels.seal(out);
        let wanted = self.cluster.is_on().then(|| addresses.clone());
        let ready = match self.take_queued(now, &addresses, out) {
            Some(taken) => Ready::Message(taken),
            None => self.queues.wait_for(now, conn, timeout_s, addresses, count),
        };
        if let Some(addresses) = wanted {
            self.wanted(now, &ready, &addresses, out);
        }
        ready
    }

    /// The oldest message already queued on the first of `addresses` that
    /// has one, without waiting: what [`Broker::ready`] gives with timeout
    /// 0, without making a wait to time out at once (the polls of `<<`).
    pub fn poll(
        &mut self,
        now: Millis,
        addresses: &[Bytes],
        out: &mut (impl Outbox + ?Sized),
    ) -> Option<Taken> {
        self.channels.seal(out);
        self.take_queued(now, addresses, out)
    }

    /// The oldest live message on the first of `addresses` that has one: a
    /// queue's, or a switch queue's that no switch client has seen.
    fn take_queued(
        &mut self,
        now: Millis,
        addresses: &[Bytes],
        out: &mut (impl Outbox + ?Sized),
    ) -> Option<Taken> {
        if self.switch.has_no_queues() {
            addresses.iter().find_map(|a| self.queues.take(now, a))
        } else {
            self.line_take(now, addresses, out)
        }
    }

    /// A fresh address and a wait on it (see [`Queues::wait_on_fresh`]):
    /// the proxy's reply address.
    pub fn wait_on_fresh(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        out: &mut (impl Outbox + ?Sized),
    ) -> (Bytes, Ready) {
        self.channels.seal(out);
        let (reply, ready) = self.queues.wait_on_fresh(now, conn, timeout_s);
        self.wanted(now, &ready, std::slice::from_ref(&reply), out);
        (reply, ready)
    }

    /// Sends with a fresh reply address and waits on it (see [`Queues::query`]).
    pub fn query(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        to: Bytes,
        body: Bytes,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Ready, QueueFull> {
        self.channels.seal(out);
        let switch = !self.switch.has_no_queues() && self.switch.has_queue(&to);
        if !switch && !self.cluster.is_on() {
            return self.queues.query(now, conn, timeout_s, to, body, out);
        }
        // As [`Queues::query`], with the send going to the switch queue,
        // or through the cluster.
        let (reply, ready) = self.queues.wait_on_fresh(now, conn, timeout_s);
        self.wanted(now, &ready, std::slice::from_ref(&reply), out);
        if let Err(full) = self.send(now, to, Some(reply), timeout_s, body, out) {
            if let Ready::Waiting(w) = ready {
                self.queues.cancel(w);
            }
            return Err(full);
        }
        match ready {
            Ready::Waiting(w) if !self.queues.is_pending(w) => Ok(Ready::TimedOut),
            other => Ok(other),
        }
    }

    /// Withdraws a wait unanswered (its connection went away).
    pub fn cancel(&mut self, wait: WaitId) {
        self.queues.cancel(wait);
    }

    /// Runs every timer due at `now`.
    pub fn on_timers(&mut self, now: Millis, out: &mut (impl Outbox + ?Sized)) {
        self.seal(out);
        self.queues.on_timers(now, out);
        self.hooks.on_timers(now, out);
        self.cluster.on_timers(now);
        self.cluster.sweep(now, &self.queues, out);
        self.cluster.switch_tick(now, out);
    }

    /// Ends the turn's open waits for several messages (see
    /// [`Queues::close_open`]); the loop calls it after each turn's events.
    pub fn close_open(&mut self, out: &mut (impl Outbox + ?Sized)) {
        self.queues.close_open(out);
    }

    /// True while [`Broker::close_open`] has work: the loop must not sleep.
    pub fn has_open(&self) -> bool {
        self.queues.has_open()
    }

    /// The earliest pending deadline, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.queues
            .next_deadline()
            .into_iter()
            .chain(self.hooks.next_deadline())
            .chain(self.cluster.next_deadline())
            .min()
    }

    /// Puts back what a store kept (`--data-dir`): line messages that have
    /// not expired, persistent switch queues and their messages, the id
    /// counters. `epoch_ms` is the wall clock at `now`. Returns (line
    /// messages, switch messages) restored.
    pub fn restore(
        &mut self,
        now: Millis,
        epoch_ms: u64,
        state: crate::store::log::State,
    ) -> (usize, usize) {
        let line = self
            .queues
            .restore(now, epoch_ms, state.next_seq, state.line);
        let switch = self
            .switch
            .restore(now, epoch_ms, state.loose_ids, state.switch);
        (line, switch)
    }

    /// Every live record of the durable state, a snapshot marker first
    /// (`epoch_s`: the start's epoch, kept so that later starts pick a
    /// later one); `epoch_ms` is the wall clock at `now` 0.
    pub fn snapshot(&self, epoch_ms: u64, epoch_s: u64, buf: &mut Vec<u8>) {
        use crate::store::record::{encode, Record};
        encode(
            buf,
            &Record::Snapshot {
                next_seq: self.queues.next_seq(),
                loose_ids: self.switch.loose_ids(),
                epoch_s,
            },
        );
        self.switch.snapshot(epoch_ms, buf);
        self.queues
            .for_each_queued(|seq, to, reply, timeout_s, deadline, body| {
                let w =
                    crate::store::record::Writer::begin(buf, crate::store::record::kind::ENQUEUE)
                        .u64(seq)
                        .u64(epoch_ms.saturating_add(deadline))
                        .u64(timeout_s)
                        .bytes(to)
                        .opt(reply)
                        .bytes(body);
                w.end();
            });
    }

    /// Bytes of live durable data (what the store's files are compared with).
    pub fn durable_bytes(&self) -> u64 {
        (self.queues.queued_bytes() + self.switch.stored_bytes()) as u64
    }

    /// The outbound connections to open or close, asked for since the last
    /// call.
    pub fn take_links(&mut self) -> Vec<LinkRequest> {
        let mut links = self.hooks.take_links();
        links.extend(self.cluster.take_links());
        links
    }
}

/// What a [`RecordingOutbox`] saw for one answer: the message's address,
/// reply address, timeout and body, or `None` for a timeout.
pub type RecordedAnswer = Option<(Bytes, Option<Bytes>, u64, Bytes)>;

/// An [`Outbox`] that records everything, for tests.
#[derive(Default, Debug)]
pub struct RecordingOutbox {
    pub frames: Vec<(ConnId, Bytes, u32)>,
    pub answers: Vec<(ConnId, RecordedAnswer)>,
    /// Answers to parked message-switch calls.
    pub polled: Vec<(ConnId, switch::Polled)>,
    /// Connections that refuse deliveries, as closing ones do.
    pub refuse: Vec<ConnId>,
    /// Connections whose output counts as backlogged.
    pub backlogged: Vec<ConnId>,
}

impl Outbox for RecordingOutbox {
    fn deliver(&mut self, conn: ConnId, frame: Bytes, messages: u32) -> bool {
        if self.refuse.contains(&conn) {
            return false;
        }
        self.frames.push((conn, frame, messages));
        true
    }
    fn is_backlogged(&self, conn: ConnId) -> bool {
        self.backlogged.contains(&conn)
    }
    fn answer(&mut self, conn: ConnId, answer: Answer<'_>) -> bool {
        if self.refuse.contains(&conn) {
            return false;
        }
        let recorded = match answer {
            Answer::Message(d) => Some((
                Bytes::copy_from_slice(d.to),
                d.reply.map(Bytes::copy_from_slice),
                d.timeout_s,
                d.body.clone(),
            )),
            Answer::Timeout => None,
            Answer::Switch(p) => {
                self.polled.push((conn, p.clone()));
                return true;
            }
            // Blocking work is the shell's, never the broker's.
            Answer::Done(_) => return false,
        };
        self.answers.push((conn, recorded));
        true
    }
}

impl RecordingOutbox {
    /// The answers `conn` got, in order.
    pub fn answers_for(&self, conn: ConnId) -> Vec<RecordedAnswer> {
        self.answers
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// All bytes delivered to `conn`, in order.
    pub fn bytes_for(&self, conn: ConnId) -> Vec<u8> {
        self.frames
            .iter()
            .filter(|(c, _, _)| *c == conn)
            .flat_map(|(_, f, _)| f.iter().copied())
            .collect()
    }
}

/// Helpers the broker's unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::ConnId;
    use bytes::Bytes;

    /// Connection `key` of the first generation.
    pub fn conn(key: u32) -> ConnId {
        ConnId { key, gen: 1 }
    }

    /// A name or body from text.
    pub fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{b, conn};
    use super::*;

    /// A query to a switch queue takes the broker's own path (wait, then
    /// send). Sent to its own reply address (guessed: the first one a
    /// broker of epoch 0 gives is `0.1`), here a switch queue's name too,
    /// the send hands the message to the caller's wait, which the running
    /// caller refuses: it must not be left waiting on that wait.
    #[test]
    fn a_query_to_its_own_reply_address_that_is_a_switch_queue_gets_no_wait() {
        let mut br = Broker::new();
        let mut out = RecordingOutbox::default();
        br.switch_login(conn(2), b"b").unwrap();
        br.switch_create(0, conn(2), &b("0.1"), false, &mut out)
            .unwrap();
        out.refuse.push(conn(1));
        let got = br.query(0, conn(1), 30, b("0.1"), b("x"), &mut out);
        assert_eq!(got, Ok(Ready::TimedOut));
        assert_eq!(br.queues.waiting(), 0);
        assert!(out.answers.is_empty());
        // The message went to the switch queue.
        assert_eq!(br.switch.stored(), 1);
    }
}
