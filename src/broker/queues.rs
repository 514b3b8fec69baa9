//! Queues: point-to-point addresses, receivers that wait on them, timeouts.
//!
//! A message goes to exactly one receiver: the one that has waited longest on
//! its address. A receiver waiting on several addresses (at most
//! [`MAX_ADDRESSES`]) takes the first message on any of them, once. Messages
//! on one address keep their order. A message not taken before its timeout is
//! dropped and never delivered; a wait not answered before its timeout gets
//! `*`.
//!
//! Waits sit in every address queue they wait on; when one is answered its
//! other entries go stale and are skipped (and compacted away in bulk), so no
//! answer costs a scan of the other queues.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use slab::Slab;

use super::{short, Answer, ConnId, Delivery, Millis, Outbox};
use crate::store::{log::LineMessage, Journal};
use crate::timer::Timers;

/// The most addresses one `<` may wait on.
pub const MAX_ADDRESSES: usize = 8;

/// The longest timeout honoured, in seconds (larger ones are clamped): ten years.
pub const MAX_TIMEOUT_S: u64 = 10 * 365 * 24 * 3600;

/// Bytes counted for each queued message on top of its body and reply
/// address, so that a flood of empty messages is bounded too.
pub const MESSAGE_OVERHEAD: usize = 64;

/// How much queued messages may hold, counted as body + reply address +
/// [`MESSAGE_OVERHEAD`] each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// On one address.
    pub per_address: usize,
    /// Over all addresses.
    pub total: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            per_address: 64 << 20,
            total: 512 << 20,
        }
    }
}

/// A send refused: the queue is over its byte limits (`Full`), or the
/// store cannot record the message now (`Store`: a failed write a moment
/// ago, or a disk that is far behind; with `--data-dir` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueFull {
    Full,
    Store,
}

impl std::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueFull::Full => f.write_str("queue full"),
            QueueFull::Store => f.write_str("store unavailable"),
        }
    }
}

/// What a wait got at once.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// A queued message, taken now.
    Message(Taken),
    /// Nothing queued and a timeout of 0.
    TimedOut,
    /// Registered: the answer comes through the outbox.
    Waiting(WaitId),
}

/// A queue message taken by a receiver, owned.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    pub to: Bytes,
    pub reply: Option<Bytes>,
    pub timeout_s: u64,
    pub body: Bytes,
}

impl Taken {
    pub fn delivery(&self) -> Delivery<'_> {
        Delivery {
            to: &self.to,
            reply: self.reply.as_deref(),
            timeout_s: self.timeout_s,
            body: &self.body,
        }
    }
}

/// A pending wait, by slot and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitId {
    slot: usize,
    gen: u64,
}

struct Wait {
    conn: ConnId,
    gen: u64,
    addresses: Vec<Bytes>,
    /// How many messages it may take after the next one (a `<<` of COUNT
    /// starts at COUNT − 1; a plain wait at 0).
    more: u32,
    /// Answered once and kept open for the rest of the turn (on
    /// `Queues::open`).
    open: bool,
}

struct Message {
    reply: Option<Bytes>,
    timeout_s: u64,
    body: Bytes,
    deadline: Millis,
    /// Its place among all messages ever queued: an address's messages
    /// leave from the front, so its expiry timer is stale once the front
    /// message is a later one.
    seq: u64,
}

impl Message {
    fn delivery<'a>(&'a self, to: &'a [u8]) -> Delivery<'a> {
        Delivery {
            to,
            reply: self.reply.as_deref(),
            timeout_s: self.timeout_s,
            body: &self.body,
        }
    }

    /// What it counts against the queue limits.
    fn size(&self) -> usize {
        self.body.len() + self.reply.as_ref().map_or(0, |r| r.len()) + MESSAGE_OVERHEAD
    }
}

#[derive(Default)]
struct Address {
    messages: VecDeque<Message>,
    waits: VecDeque<WaitId>,
    /// Entries of `waits` known to be answered elsewhere.
    stale: usize,
    /// Expiry timers that fired while their message sat behind a live one.
    expired_inside: usize,
    /// What its messages count against the limits.
    bytes: usize,
}

impl Address {
    /// Nothing queued and no live wait: the address can be forgotten.
    fn is_unused(&self) -> bool {
        self.messages.is_empty() && self.waits.len() <= self.stale
    }
}

/// What a queue deadline is for.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Wait(usize, u64),
    /// The message with this `seq` on this address.
    Expire(Bytes, u64),
    /// The empty message on fresh address number N (see
    /// [`Queues::fresh_holding_empty`]).
    Empty(u64),
}

/// An empty message on a fresh address, kept as a number (see
/// [`Queues::fresh_holding_empty`]).
#[derive(Clone, Copy)]
struct Empty {
    deadline: Millis,
    timeout_s: u64,
}

/// All queue addresses and the waits on them.
pub struct Queues {
    /// Hashed with foldhash rather than std's SipHash: the lookups by
    /// address were about an eighth of the proxy's instructions per
    /// request. Addresses are chosen by clients, so the hasher is still
    /// seeded at random per map (`RandomState`): without the seed no one
    /// can compute keys that collide in advance.
    addresses: HashMap<Bytes, Address, foldhash::fast::RandomState>,
    waits: Slab<Wait>,
    timers: Timers<TimerKind>,
    next_gen: u64,
    reply_prefix: String,
    reply_seq: u64,
    /// Where `unique_address` writes an address before copying it.
    scratch: Vec<u8>,
    /// The `seq` of the next queued message.
    next_seq: u64,
    queued_in: u64,
    queued_out: u64,
    expired: u64,
    /// Messages waiting in all address queues.
    queued_now: usize,
    /// What they count against the limits.
    bytes_now: usize,
    limits: QueueLimits,
    /// Sends refused because a queue was full.
    refused_full: u64,
    /// With `--data-dir`: where queued messages are recorded.
    journal: Option<Journal>,
    /// The empty messages of [`Queues::fresh_holding_empty`], by the
    /// number of their address.
    empties: HashMap<u64, Empty, foldhash::fast::RandomState>,
    /// Entries of addresses that went unused, emptied, kept with their
    /// queues' room for the next new address (at most [`SPARE_ADDRESSES`],
    /// each with room for at most [`SPARE_ROOM`] messages and waits): a
    /// request's reply address and a queue that handlers keep draining
    /// come and go once a request, and growing their queues from nothing
    /// each time was about a thirtieth of the proxy's instructions.
    spare: Vec<Address>,
    /// Waits for several messages that took one this turn and keep their
    /// place at the front of their queues for what else arrives in it;
    /// `close_open` ends them (see [`Queues::wait_for`]).
    open: Vec<WaitId>,
}

/// See `Queues::spare`.
const SPARE_ADDRESSES: usize = 32;
const SPARE_ROOM: usize = 64;

impl Default for Queues {
    fn default() -> Self {
        Queues::new(0)
    }
}

fn deadline(now: Millis, timeout_s: u64) -> Millis {
    now.saturating_add(timeout_s.min(MAX_TIMEOUT_S) * 1000)
}

impl Queues {
    /// `epoch_s` makes reply addresses unique across restarts (the server
    /// passes its start time in seconds).
    pub fn new(epoch_s: u64) -> Queues {
        Queues {
            addresses: HashMap::default(),
            waits: Slab::new(),
            timers: Timers::default(),
            next_gen: 0,
            reply_prefix: format!("{epoch_s:X}"),
            reply_seq: 0,
            scratch: Vec::new(),
            next_seq: 0,
            queued_in: 0,
            queued_out: 0,
            expired: 0,
            queued_now: 0,
            bytes_now: 0,
            limits: QueueLimits::default(),
            refused_full: 0,
            journal: None,
            empties: HashMap::default(),
            spare: Vec::new(),
            open: Vec::new(),
        }
    }

    /// Records every message that joins or leaves a queue in `journal`.
    pub fn with_journal(mut self, journal: Journal) -> Queues {
        self.journal = Some(journal);
        self
    }

    /// The sequence number the next queued message gets (kept across
    /// restarts by the store).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Puts back messages a store kept, in sequence order; `epoch_ms` is
    /// the wall clock at `now`. Expired ones are dropped; the limits are
    /// not applied (they held these messages before).
    pub fn restore(
        &mut self,
        now: Millis,
        epoch_ms: u64,
        next_seq: u64,
        messages: impl IntoIterator<Item = (u64, LineMessage)>,
    ) -> usize {
        self.next_seq = self.next_seq.max(next_seq);
        let mut restored = 0;
        for (seq, m) in messages {
            let wall_now = epoch_ms.saturating_add(now);
            if m.deadline <= wall_now {
                if let Some(j) = &self.journal {
                    j.dequeue(seq, true);
                }
                continue;
            }
            let msg = Message {
                reply: m.reply.map(|r| Bytes::copy_from_slice(&r)),
                timeout_s: m.timeout_s,
                body: Bytes::copy_from_slice(&m.body),
                deadline: now.saturating_add(m.deadline - wall_now),
                seq,
            };
            let size = msg.size();
            let (at, msg_seq) = (msg.deadline, msg.seq);
            let key = self.key(&m.to);
            let a = self.entry(key.clone());
            a.messages.push_back(msg);
            a.bytes += size;
            self.bytes_now += size;
            self.queued_now += 1;
            self.next_seq = self.next_seq.max(seq + 1);
            self.add_timer(at, TimerKind::Expire(key, msg_seq));
            restored += 1;
        }
        restored
    }

    /// Every queued message as the store records it, by address, oldest
    /// first: `(seq, to, reply, timeout_s, deadline in ms on the clock of
    /// \`now\`, body)`.
    pub fn for_each_queued(
        &self,
        mut f: impl FnMut(u64, &[u8], Option<&[u8]>, u64, Millis, &[u8]),
    ) {
        for (to, a) in &self.addresses {
            for m in &a.messages {
                f(
                    m.seq,
                    to,
                    m.reply.as_deref(),
                    m.timeout_s,
                    m.deadline,
                    &m.body,
                );
            }
        }
    }

    /// Sets the byte limits of queued messages.
    pub fn with_limits(mut self, limits: QueueLimits) -> Queues {
        self.limits = limits;
        self
    }

    /// Bytes queued messages count against the limits, over all addresses.
    pub fn queued_bytes(&self) -> usize {
        self.bytes_now
    }

    /// Sends refused because a queue was full.
    pub fn refused_full(&self) -> u64 {
        self.refused_full
    }

    /// (messages in, messages out, expired).
    pub fn stats(&self) -> (u64, u64, u64) {
        (self.queued_in, self.queued_out, self.expired)
    }

    /// Messages waiting for a receiver, over all addresses.
    pub fn queued(&self) -> usize {
        self.queued_now
    }

    /// How long the oldest live queued message has waited at `now`, in ms
    /// (`None` when nothing is queued). Scans the front of every address:
    /// for a scrape, not for a hot path.
    pub fn oldest_age_ms(&self, now: Millis) -> Option<Millis> {
        self.addresses
            .values()
            .filter_map(|a| a.messages.iter().find(|m| m.deadline > now))
            .map(|m| {
                let arrived = m
                    .deadline
                    .saturating_sub(m.timeout_s.min(MAX_TIMEOUT_S) * 1000);
                now.saturating_sub(arrived)
            })
            .max()
    }

    /// The `n` addresses with the most messages waiting (most first), with
    /// their depth and how long their oldest live message has waited at
    /// `now` (ms). One pass over the addresses with a heap of at most `n`:
    /// for a page someone looks at, never for a hot path.
    pub fn top_by_depth(&self, n: usize, now: Millis) -> Vec<(Bytes, usize, Millis)> {
        let depths = self.addresses.iter().filter_map(|(name, a)| {
            let live = a.messages.len().saturating_sub(a.expired_inside);
            (live > 0).then_some((live, name))
        });
        super::channels::top_n(depths, n)
            .into_iter()
            .map(|(depth, name)| {
                let age = self
                    .addresses
                    .get(name)
                    .and_then(|a| a.messages.iter().find(|m| m.deadline > now))
                    .map_or(0, |m| {
                        let arrived = m
                            .deadline
                            .saturating_sub(m.timeout_s.min(MAX_TIMEOUT_S) * 1000);
                        now.saturating_sub(arrived)
                    });
                (name.clone(), depth, age)
            })
            .collect()
    }

    /// Receivers waiting.
    pub fn waiting(&self) -> usize {
        self.waits.len()
    }

    /// A fresh address (as [`Queues::unique_address`]) that holds one
    /// empty message, as if sent there with `timeout_s`: the proxy's body
    /// address of a request without a body. Nearly all of these are never
    /// read, so the message is kept as the address' number in a table (no
    /// address entry, no queue, no copy of the address) and only becomes a
    /// message when someone takes it. It counts as any queued message (in
    /// [`Queues::queued`], the limits, the stats), but it is neither
    /// journaled nor listed by address ([`Queues::top_by_depth`],
    /// [`Queues::for_each_queued`]): it belongs to an HTTP request, which
    /// does not outlive the process. Full queues refuse it as any message.
    pub fn fresh_holding_empty(
        &mut self,
        now: Millis,
        timeout_s: u64,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Bytes, QueueFull> {
        let addr = self.unique_address();
        let deadline = deadline(now, timeout_s);
        // Someone who guessed the address and waits there, or an expired
        // message: as any send.
        if deadline <= now || self.addresses.contains_key(&addr[..]) {
            return self
                .send(now, addr.clone(), None, timeout_s, Bytes::new(), out)
                .map(|()| addr);
        }
        if self.bytes_now + MESSAGE_OVERHEAD > self.limits.total {
            self.refused_full += 1;
            return Err(QueueFull::Full);
        }
        let n = self.reply_seq;
        self.empties.insert(
            n,
            Empty {
                deadline,
                timeout_s,
            },
        );
        self.bytes_now += MESSAGE_OVERHEAD;
        self.queued_now += 1;
        self.queued_in += 1;
        self.add_timer(deadline, TimerKind::Empty(n));
        Ok(addr)
    }

    /// The number of `addr` when it holds an empty message of
    /// [`Queues::fresh_holding_empty`]: `PREFIX.N` as `unique_address`
    /// writes it (upper-case hex, no leading zero).
    fn empty_number(&self, addr: &[u8]) -> Option<u64> {
        if self.empties.is_empty() {
            return None;
        }
        let digits = addr
            .strip_prefix(self.reply_prefix.as_bytes())?
            .strip_prefix(b".")?;
        // (No digits makes 0, which no address has; more than 16 would wrap.)
        if digits.len() > 16 || digits.first() == Some(&b'0') {
            return None;
        }
        let mut n = 0u64;
        for &b in digits {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'A'..=b'F' => b - b'A' + 10,
                _ => return None,
            };
            n = (n << 4) + u64::from(d);
        }
        self.empties.contains_key(&n).then_some(n)
    }

    /// Removes the empty message held by `addr`, live or not, if it holds
    /// one (the caller counts how it left).
    fn take_empty(&mut self, addr: &[u8]) -> Option<Empty> {
        let n = self.empty_number(addr)?;
        self.remove_empty(n)
    }

    /// Removes the empty message of fresh address number `n`.
    fn remove_empty(&mut self, n: u64) -> Option<Empty> {
        let e = self.empties.remove(&n)?;
        self.queued_now -= 1;
        self.bytes_now -= MESSAGE_OVERHEAD;
        Some(e)
    }

    /// A fresh address nobody else has been given.
    pub fn unique_address(&mut self) -> Bytes {
        self.reply_seq += 1;
        // `PREFIX.SEQ` with SEQ in upper-case hex, written without `format!`
        // (two of these per proxied request), then copied as a short string
        // (see `short`): it is cloned at once.
        let digits = (64 - self.reply_seq.leading_zeros()).div_ceil(4).max(1);
        let addr = &mut self.scratch;
        addr.clear();
        addr.extend_from_slice(self.reply_prefix.as_bytes());
        addr.push(b'.');
        for i in (0..digits).rev() {
            let d = (self.reply_seq >> (4 * i)) & 0xf;
            addr.push(b"0123456789ABCDEF".get(d as usize).copied().unwrap_or(b'0'));
        }
        short::copy(addr)
    }

    fn add_timer(&mut self, at: Millis, kind: TimerKind) {
        self.timers.add(at, kind);
        // Timers of answered waits and delivered messages are left in the
        // heap (lazy invalidation); once they outnumber the live ones, drop
        // them all at once, so the heap stays proportional to what is pending.
        if self.timers.len() > 2 * (self.waits.len() + self.queued_now) + 1024 {
            let (waits, addresses, empties) = (&self.waits, &self.addresses, &self.empties);
            self.timers.retain(|_, kind| match kind {
                TimerKind::Wait(slot, gen) => waits.get(*slot).is_some_and(|w| w.gen == *gen),
                TimerKind::Expire(addr, seq) => addresses
                    .get(addr)
                    .and_then(|a| a.messages.front())
                    .is_some_and(|front| front.seq <= *seq),
                TimerKind::Empty(n) => empties.contains_key(n),
            });
        }
    }

    /// The map's own key for `addr`: an exact-size copy made once per
    /// address, so that neither the map nor the timers keep alive the (much
    /// larger) read buffer `addr` was sliced from.
    fn key(&self, addr: &Bytes) -> Bytes {
        match self.addresses.get_key_value(&addr[..]) {
            Some((k, _)) => k.clone(),
            None => short::copy(addr),
        }
    }

    /// The entry of `key`, made from a spare one when it is new.
    fn entry(&mut self, key: Bytes) -> &mut Address {
        let spare = &mut self.spare;
        self.addresses
            .entry(key)
            .or_insert_with(|| spare.pop().unwrap_or_default())
    }

    /// Forgets `addr`, whose entry is unused, keeping the entry as a spare
    /// while there is room.
    fn forget(&mut self, addr: &[u8]) {
        let Some(mut a) = self.addresses.remove(addr) else {
            return;
        };
        if self.spare.len() < SPARE_ADDRESSES
            && a.messages.capacity() <= SPARE_ROOM
            && a.waits.capacity() <= SPARE_ROOM
        {
            a.messages.clear();
            a.waits.clear();
            a.stale = 0;
            a.expired_inside = 0;
            a.bytes = 0;
            self.spare.push(a);
        }
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next()
    }

    /// Sends a message to `to`: straight to the longest-waiting receiver, or
    /// into the queue until one comes or `timeout_s` passes. A message that
    /// would take the queue past its byte limits is refused.
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

    /// [`Queues::send`], saying how the body and the reply address were
    /// made: [`Parts::Made`] ones are queued as they are.
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
        let msg = Message {
            reply,
            timeout_s,
            body,
            deadline: deadline(now, timeout_s),
            seq: self.next_seq,
        };
        if self.hand_to_waiter(msg.delivery(&to), out) {
            return Ok(());
        }
        if msg.deadline <= now {
            self.queued_in += 1;
            self.expired += 1;
            return Ok(());
        }
        self.enqueue(to, msg, parts)?;
        self.queued_in += 1;
        Ok(())
    }

    /// Puts `msg` at the end of `to`'s queue, within the limits (and into
    /// the journal, with one).
    fn enqueue(&mut self, to: Bytes, msg: Message, parts: Parts) -> Result<(), QueueFull> {
        let size = msg.size();
        // The map's own key when the address is known (see `key`), and what
        // it holds, in one lookup.
        let (known, held) = match self.addresses.get_key_value(&to[..]) {
            Some((k, a)) => (Some(k.clone()), a.bytes),
            None => (None, 0),
        };
        if held + size > self.limits.per_address || self.bytes_now + size > self.limits.total {
            self.refused_full += 1;
            return Err(QueueFull::Full);
        }
        if let Some(j) = &self.journal {
            if j.refusal().is_some() {
                return Err(QueueFull::Store);
            }
            j.enqueue(
                msg.seq,
                j.epoch_ms().saturating_add(msg.deadline),
                msg.timeout_s,
                &to,
                msg.reply.as_deref(),
                &msg.body,
            );
        }
        // A queued message may wait long: its small parts become exact-size
        // copies so they do not keep the read buffer they came in alive.
        let mut msg = msg;
        if parts == Parts::Read {
            if msg.body.len() < SHARED_BODY {
                msg.body = Bytes::copy_from_slice(&msg.body);
            }
            // (A queued reply is moved out, not cloned: a plain copy.)
            msg.reply = msg.reply.map(|r| Bytes::copy_from_slice(&r));
        }
        let (at, msg_seq) = (msg.deadline, msg.seq);
        let key = known.unwrap_or_else(|| short::copy(&to));
        let a = self.entry(key.clone());
        a.messages.push_back(msg);
        a.bytes += size;
        self.bytes_now += size;
        self.queued_now += 1;
        self.next_seq += 1;
        self.add_timer(at, TimerKind::Expire(key, msg_seq));
        Ok(())
    }

    /// Counts a message sent to a queue that went elsewhere (to the
    /// cluster's Redis), as [`Queues::send`] counts its own.
    pub fn count_sent(&mut self) {
        self.queued_in += 1;
    }

    /// Hands a message that was sent on another node (read from the
    /// cluster's Redis) to the longest-waiting receiver on `d.to`; it
    /// counts as delivered here, not as sent here. False: nobody took it.
    pub fn hand_remote(&mut self, d: Delivery<'_>, out: &mut (impl Outbox + ?Sized)) -> bool {
        if self.hand_to_waiter(d, out) {
            self.queued_in -= 1;
            return true;
        }
        false
    }

    /// Keeps a message read from the cluster's Redis for a receiver that
    /// went away meanwhile: it joins `to`'s local queue with the `left_ms`
    /// it had left there. False: the local queue is full, it is dropped.
    pub fn keep_remote(
        &mut self,
        now: Millis,
        to: Bytes,
        reply: Option<Bytes>,
        timeout_s: u64,
        left_ms: Millis,
        body: Bytes,
    ) -> bool {
        let msg = Message {
            reply,
            timeout_s,
            body,
            deadline: now.saturating_add(left_ms.min(MAX_TIMEOUT_S * 1000)),
            seq: self.next_seq,
        };
        self.enqueue(to, msg, Parts::Read).is_ok()
    }

    /// Receivers waiting on `addr` now.
    pub fn waiters_on(&self, addr: &[u8]) -> usize {
        self.addresses
            .get(addr)
            .map_or(0, |a| a.waits.len().saturating_sub(a.stale))
    }

    /// Makes the reply addresses of [`Queues::unique_address`] unique
    /// across the nodes of a cluster too: `node` goes into each.
    pub fn set_node(&mut self, node: &[u8]) {
        self.reply_prefix = format!("{}.{}", self.reply_prefix, String::from_utf8_lossy(node));
    }

    /// Hands a message for `d.to` to the longest-waiting receiver there.
    /// A waiter whose connection is already closing refuses the answer: the
    /// message then goes to the next waiter. False when nobody took it.
    ///
    /// A wait for several messages (see [`Queues::wait_for`]) stays at the
    /// front of its queues after taking one, so that the messages arriving
    /// in the same turn go to it too, until it has them all, its
    /// connection's output is backlogged, or [`Queues::close_open`] ends
    /// the turn; the last two answer it with a timeout (`*`).
    pub fn hand_to_waiter(&mut self, d: Delivery<'_>, out: &mut (impl Outbox + ?Sized)) -> bool {
        // One lookup of the address a hand-off (a refused answer aside):
        // its entry stays borrowed while the wait is answered.
        loop {
            let Some(a) = self.addresses.get_mut(d.to) else {
                return false;
            };
            let (id, conn) = loop {
                let Some(&id) = a.waits.front() else {
                    if a.is_unused() {
                        self.forget(d.to);
                    }
                    return false;
                };
                match self.waits.get(id.slot) {
                    Some(w) if w.gen == id.gen => break (id, w.conn),
                    _ => {}
                }
                a.waits.pop_front();
                a.stale = a.stale.saturating_sub(1);
            };
            let took = out.answer(conn, Answer::Message(d));
            let mut ended_early = false;
            if took {
                self.queued_in += 1;
                self.queued_out += 1;
                if let Some(w) = self.waits.get_mut(id.slot) {
                    if w.more > 0 && !out.is_backlogged(conn) {
                        w.more -= 1;
                        if !w.open {
                            w.open = true;
                            self.open.push(id);
                        }
                        return true;
                    }
                    ended_early = w.more > 0;
                }
            }
            // The wait ends: it leaves the front of this address's waits,
            // and its entries elsewhere go stale.
            a.waits.pop_front();
            // `mark_stale` leaves `d.to` alone: whether it is unused is known now.
            let unused = a.is_unused();
            if let Some(wait) = self.waits.try_remove(id.slot) {
                self.mark_stale(&wait.addresses, Some(d.to));
            }
            if unused {
                self.forget(d.to);
            }
            if ended_early {
                out.answer(conn, Answer::Timeout);
            }
            if took {
                return true;
            }
        }
    }

    /// Ends the waits that took a message this turn and still had room:
    /// each is answered with a timeout (`*`), its messages having gone out
    /// already. The loop calls it once a turn, after the turn's events.
    pub fn close_open(&mut self, out: &mut (impl Outbox + ?Sized)) {
        for id in std::mem::take(&mut self.open) {
            if self.waits.get(id.slot).is_some_and(|w| w.gen == id.gen) {
                let wait = self.waits.remove(id.slot);
                self.mark_stale(&wait.addresses, None);
                out.answer(wait.conn, Answer::Timeout);
            }
        }
    }

    /// True while a wait is open (see [`Queues::close_open`]): the loop
    /// must not sleep before closing it.
    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Waits on up to [`MAX_ADDRESSES`] addresses. Takes a message at once
    /// when one is queued on one of them (first address first); otherwise
    /// registers the wait, which is answered later through the outbox.
    pub fn ready(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        addresses: Vec<Bytes>,
    ) -> Ready {
        for addr in &addresses {
            if let Some(taken) = self.take(now, addr) {
                return Ready::Message(taken);
            }
        }
        self.wait(now, conn, timeout_s, addresses)
    }

    /// Takes the oldest live message queued on `addr`, if there is one.
    pub fn take(&mut self, now: Millis, addr: &Bytes) -> Option<Taken> {
        // An empty message of `fresh_holding_empty` was sent before anything
        // else could be.
        if let Some(e) = self.take_empty(addr) {
            if e.deadline > now {
                self.queued_out += 1;
                return Some(Taken {
                    to: addr.clone(),
                    reply: None,
                    timeout_s: e.timeout_s,
                    body: Bytes::new(),
                });
            }
            self.expired += 1;
        }
        let msg = self.pop_live_message(now, addr)?;
        self.queued_out += 1;
        Some(Taken {
            to: addr.clone(),
            reply: msg.reply,
            timeout_s: msg.timeout_s,
            body: msg.body,
        })
    }

    /// Takes every live message queued on `addr`, oldest first, as
    /// `(reply, body)` (they move elsewhere: they count as delivered).
    pub fn take_all(&mut self, now: Millis, addr: &Bytes) -> Vec<(Option<Bytes>, Bytes)> {
        let mut all = Vec::new();
        while let Some(t) = self.take(now, addr) {
            all.push((t.reply, t.body));
        }
        all
    }

    /// Drops every message queued on `addr`, which nobody will take any
    /// more (the proxy's empty request body once its response has ended);
    /// they count as expired. Waits on `addr` stay. Returns how many went.
    pub fn discard(&mut self, addr: &[u8]) -> usize {
        // Dropped unread, it counts as expired.
        let empty = match self.take_empty(addr) {
            Some(_) => {
                self.expired += 1;
                1
            }
            None => 0,
        };
        let Some(a) = self.addresses.get_mut(addr) else {
            return empty;
        };
        let gone = a.messages.len();
        for m in a.messages.drain(..) {
            if let Some(j) = &self.journal {
                j.dequeue(m.seq, true);
            }
        }
        self.bytes_now -= a.bytes;
        a.bytes = 0;
        a.expired_inside = 0;
        self.queued_now -= gone;
        self.expired += gone as u64;
        if a.is_unused() {
            self.forget(addr);
        }
        gone + empty
    }

    /// Registers a wait on `addresses` without looking for queued messages
    /// (see [`Queues::ready`]); `TimedOut` for a timeout of 0.
    pub fn wait(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        addresses: Vec<Bytes>,
    ) -> Ready {
        self.wait_for(now, conn, timeout_s, addresses, 1)
    }

    /// [`Queues::wait`] for up to `count` messages (a `<<`): once it has
    /// taken one, it keeps its place for the rest of the turn, and the
    /// messages that arrive meanwhile go to it too, up to `count` (see
    /// [`Queues::hand_to_waiter`]). A turn's messages thus go to one
    /// waiter in one batch, instead of one to each waiter.
    pub fn wait_for(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        addresses: Vec<Bytes>,
        count: u32,
    ) -> Ready {
        // A poll (timeout 0) that found nothing: no keys to make.
        if deadline(now, timeout_s) <= now {
            return Ready::TimedOut;
        }
        // An address named twice waits once (where it is first named).
        let mut keys = addresses;
        for i in (1..keys.len()).rev() {
            let (before, rest) = keys.split_at(i);
            if rest.first().is_some_and(|a| before.contains(a)) {
                keys.remove(i);
            }
        }
        // The map's keys replace the addresses in their own vector.
        for addr in keys.iter_mut() {
            *addr = self.key(addr);
        }
        self.register(now, conn, timeout_s, keys, count.saturating_sub(1))
    }

    /// A fresh address (see [`Queues::unique_address`]) and a wait of
    /// `conn` on it, as [`Queues::ready`] would make: the reply address of
    /// `?` and of the proxy. The address is its own key in the map.
    pub fn wait_on_fresh(&mut self, now: Millis, conn: ConnId, timeout_s: u64) -> (Bytes, Ready) {
        let addr = self.unique_address();
        // Someone who guessed the address and sent there first: as any wait.
        if self.addresses.contains_key(&addr[..]) {
            let ready = self.ready(now, conn, timeout_s, vec![addr.clone()]);
            return (addr, ready);
        }
        let ready = self.register(now, conn, timeout_s, vec![addr.clone()], 0);
        (addr, ready)
    }

    /// Registers a wait on `keys`: distinct addresses, each the map's own
    /// key or one that is to become it. `more`: see `Wait::more`.
    fn register(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        keys: Vec<Bytes>,
        more: u32,
    ) -> Ready {
        let at = deadline(now, timeout_s);
        if at <= now {
            return Ready::TimedOut;
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let id = WaitId {
            slot: self.waits.vacant_key(),
            gen,
        };
        for key in &keys {
            self.entry(key.clone()).waits.push_back(id);
        }
        self.waits.insert(Wait {
            conn,
            gen,
            addresses: keys,
            more,
            open: false,
        });
        self.add_timer(at, TimerKind::Wait(id.slot, gen));
        Ready::Waiting(id)
    }

    /// `?`: sends `body` to `to` with a fresh reply address and waits on it.
    pub fn query(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        to: Bytes,
        body: Bytes,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Ready, QueueFull> {
        let (reply, ready) = self.wait_on_fresh(now, conn, timeout_s);
        if let Err(full) = self.send(now, to, Some(reply), timeout_s, body, out) {
            if let Ready::Waiting(w) = ready {
                self.cancel(w);
            }
            return Err(full);
        }
        // The send cannot have answered the wait of the caller: the caller
        // is running, not waiting, and refuses answers (a client that sends
        // to its own, guessed, reply address gets no answer, not a hang).
        match ready {
            Ready::Waiting(w) if !self.is_pending(w) => Ok(Ready::TimedOut),
            other => Ok(other),
        }
    }

    /// True while wait `id` is registered and unanswered.
    pub fn is_pending(&self, id: WaitId) -> bool {
        self.waits.get(id.slot).is_some_and(|w| w.gen == id.gen)
    }

    /// Withdraws a wait whose connection went away; no answer is sent.
    pub fn cancel(&mut self, id: WaitId) {
        if self.waits.get(id.slot).is_some_and(|w| w.gen == id.gen) {
            let wait = self.waits.remove(id.slot);
            self.mark_stale(&wait.addresses, None);
        }
    }

    /// Runs every timer due at `now`.
    pub fn on_timers(&mut self, now: Millis, out: &mut (impl Outbox + ?Sized)) {
        while let Some((_, kind)) = self.timers.pop_due(now) {
            match kind {
                TimerKind::Wait(slot, gen) => {
                    if self.waits.get(slot).is_some_and(|w| w.gen == gen) {
                        let wait = self.waits.remove(slot);
                        self.mark_stale(&wait.addresses, None);
                        out.answer(wait.conn, Answer::Timeout);
                    }
                }
                TimerKind::Expire(addr, seq) => self.expire_front(now, &addr, seq),
                TimerKind::Empty(n) => {
                    if self.empties.get(&n).is_some_and(|e| e.deadline <= now) {
                        self.remove_empty(n);
                        self.expired += 1;
                    }
                }
            }
        }
    }

    /// A message on `addr` reached its deadline. Expired messages at the
    /// front go at once; one stuck behind a live message is counted, and the
    /// queue is swept once such messages could be half of it, so dropping
    /// costs amortised O(1) per message.
    fn expire_front(&mut self, now: Millis, addr: &Bytes, seq: u64) {
        let Some(a) = self.addresses.get_mut(addr) else {
            return;
        };
        // Its message was taken (or swept) already.
        if a.messages.front().is_none_or(|front| front.seq > seq) {
            return;
        }
        let before = a.messages.len();
        let mut freed = 0;
        let journal = self.journal.as_ref();
        while a.messages.front().is_some_and(|m| m.deadline <= now) {
            if let Some(m) = a.messages.pop_front() {
                freed += m.size();
                if let Some(j) = journal {
                    j.dequeue(m.seq, true);
                }
            }
        }
        if a.messages.len() == before {
            a.expired_inside += 1;
            if a.expired_inside * 2 >= a.messages.len() {
                a.messages.retain(|m| {
                    let live = m.deadline > now;
                    if !live {
                        freed += m.size();
                        if let Some(j) = journal {
                            j.dequeue(m.seq, true);
                        }
                    }
                    live
                });
                a.expired_inside = 0;
            }
        }
        a.bytes -= freed;
        self.bytes_now -= freed;
        let gone = before - a.messages.len();
        let unused = a.is_unused();
        self.expired += gone as u64;
        self.queued_now -= gone;
        if unused {
            self.forget(&addr[..]);
        }
    }

    fn pop_live_message(&mut self, now: Millis, addr: &Bytes) -> Option<Message> {
        let a = self.addresses.get_mut(addr)?;
        let mut found = None;
        while let Some(m) = a.messages.pop_front() {
            self.queued_now -= 1;
            a.bytes -= m.size();
            self.bytes_now -= m.size();
            let live = m.deadline > now;
            if let Some(j) = &self.journal {
                j.dequeue(m.seq, !live);
            }
            if live {
                found = Some(m);
                break;
            }
            self.expired += 1;
        }
        if a.is_unused() {
            self.forget(&addr[..]);
        }
        found
    }

    /// Counts the entries of an answered or withdrawn wait as stale in each of
    /// its queues (except `popped`, where it was already removed), compacting a
    /// queue once most of it is stale.
    fn mark_stale(&mut self, addresses: &[Bytes], popped: Option<&[u8]>) {
        for addr in addresses {
            if popped == Some(&addr[..]) {
                continue;
            }
            let Some(a) = self.addresses.get_mut(addr) else {
                continue;
            };
            a.stale += 1;
            if a.stale >= 16 && a.stale * 2 >= a.waits.len() {
                let waits = &self.waits;
                a.waits
                    .retain(|id| waits.get(id.slot).is_some_and(|w| w.gen == id.gen));
                a.stale = 0;
            }
            if a.is_unused() {
                self.forget(&addr[..]);
            }
        }
    }
}

/// Bodies from this size on are queued as the `Bytes` they arrived in;
/// smaller ones become exact-size copies, so that a queued message does not
/// keep a whole read buffer alive.
const SHARED_BODY: usize = 16 * 1024;

/// Where a message's body and reply address come from, which says whether
/// a queued message keeps copies of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    /// Perhaps slices of a read buffer: a queued message keeps exact-size
    /// copies of the small ones (see [`SHARED_BODY`]).
    Read,
    /// Made for this message at their exact size, sharing no buffer (the
    /// proxy's envelope and fresh reply address): kept as they are.
    Made,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::test_support::{b, conn};
    use crate::broker::RecordingOutbox;

    /// `ready`, with what it takes at once recorded as an answer, as a door
    /// would frame it.
    fn ready(
        q: &mut Queues,
        now: Millis,
        c: ConnId,
        timeout_s: u64,
        addrs: Vec<Bytes>,
        out: &mut RecordingOutbox,
    ) -> Option<WaitId> {
        match q.ready(now, c, timeout_s, addrs) {
            Ready::Message(m) => {
                assert!(out.answer(c, Answer::Message(m.delivery())));
                None
            }
            Ready::TimedOut => {
                assert!(out.answer(c, Answer::Timeout));
                None
            }
            Ready::Waiting(w) => Some(w),
        }
    }

    #[test]
    fn unique_addresses_are_the_prefix_and_the_sequence_in_hex() {
        let mut q = Queues::new(0xAB);
        for seq in [0, 8, 9, 14, 15, 16, 255, 0xABC_DEF0, u64::MAX - 1] {
            q.reply_seq = seq;
            let want = format!("AB.{:X}", seq + 1);
            assert_eq!(q.unique_address(), Bytes::from(want));
        }
    }

    #[test]
    fn top_queues_by_depth_with_the_oldest_age() {
        let mut q = Queues::new(0);
        let mut out = RecordingOutbox::default();
        for (addr, n, at) in [("x", 1, 0), ("y", 3, 1_000), ("z", 2, 500)] {
            for _ in 0..n {
                q.send(at, b(addr), None, 60, b("m"), &mut out).unwrap();
            }
        }
        assert_eq!(
            q.top_by_depth(2, 3_000),
            [(b("y"), 3, 2_000), (b("z"), 2, 2_500)]
        );
        assert_eq!(q.top_by_depth(5, 3_000).len(), 3);
    }

    /// An address with receivers waiting and no message is not among the
    /// top queues; a message at its deadline is dead and its age not the
    /// address's.
    #[test]
    fn top_queues_are_those_with_live_messages() {
        let mut q = Queues::new(0);
        let mut out = RecordingOutbox::default();
        assert!(matches!(
            q.ready(0, conn(1), 60, vec![b("w")]),
            Ready::Waiting(_)
        ));
        q.send(0, b("x"), None, 5, b("m"), &mut out).unwrap();
        q.send(1_000, b("x"), None, 60, b("m"), &mut out).unwrap();
        assert_eq!(q.top_by_depth(5, 5_000), [(b("x"), 2, 4_000)]);
    }

    fn send(
        q: &mut Queues,
        now: Millis,
        to: Bytes,
        reply: Option<Bytes>,
        timeout_s: u64,
        body: Bytes,
        out: &mut RecordingOutbox,
    ) {
        q.send(now, to, reply, timeout_s, body, out)
            .expect("queue not full");
    }

    fn query(
        q: &mut Queues,
        now: Millis,
        c: ConnId,
        timeout_s: u64,
        to: Bytes,
        body: Bytes,
        out: &mut RecordingOutbox,
    ) -> Option<WaitId> {
        match q.query(now, c, timeout_s, to, body, out).expect("not full") {
            Ready::Waiting(w) => Some(w),
            _ => None,
        }
    }

    /// The answers `c` got, written as the line protocol writes them.
    fn text(out: &RecordingOutbox, c: ConnId) -> Vec<u8> {
        let mut v = Vec::new();
        for a in out.answers_for(c) {
            match a {
                None => v.extend_from_slice(b"*\r\n"),
                Some((to, reply, t, body)) => {
                    v.extend_from_slice(format!("> {} {t} ", body.len()).as_bytes());
                    v.extend_from_slice(&to);
                    if let Some(r) = reply {
                        v.push(b' ');
                        v.extend_from_slice(&r);
                    }
                    v.extend_from_slice(b"\r\n");
                    if !body.is_empty() {
                        v.extend_from_slice(&body);
                        v.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        v
    }

    #[test]
    fn oldest_age_is_the_longest_wait_of_a_live_message() {
        let mut q = Queues::default();
        let mut out = RecordingOutbox::default();
        assert_eq!(q.oldest_age_ms(0), None);
        assert_eq!(q.send(1_000, b("a"), None, 5, b("x"), &mut out), Ok(()));
        assert_eq!(q.send(2_000, b("b"), None, 60, b("y"), &mut out), Ok(()));
        assert_eq!(q.oldest_age_ms(3_000), Some(2_000));
        // Past its timeout the first one no longer counts, swept or not.
        assert_eq!(q.oldest_age_ms(6_000), Some(4_000));
        q.on_timers(6_000, &mut out);
        assert_eq!(q.oldest_age_ms(6_000), Some(4_000));
    }

    #[test]
    fn queued_message_goes_to_a_later_receiver_in_order() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("a"), None, 10, b("one"), &mut out);
        send(&mut q, 0, b("a"), Some(b("r")), 10, b("two"), &mut out);
        assert!(out.answers.is_empty());
        assert!(ready(&mut q, 5, conn(1), 5, vec![b("a")], &mut out).is_none());
        assert!(ready(&mut q, 5, conn(1), 5, vec![b("a")], &mut out).is_none());
        assert_eq!(
            text(&out, conn(1)),
            b"> 3 10 a\r\none\r\n> 3 10 a r\r\ntwo\r\n"
        );
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn longest_waiting_receiver_first() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for k in 1..=3 {
            assert!(ready(&mut q, 0, conn(k), 60, vec![b("a")], &mut out).is_some());
        }
        for body in ["x", "y", "z"] {
            send(&mut q, 1, b("a"), None, 0, b(body), &mut out);
        }
        let order: Vec<_> = out
            .answers
            .iter()
            .map(|(c, a)| (c.key, a.as_ref().map(|m| m.3.clone())))
            .collect();
        assert_eq!(
            order,
            vec![(1, Some(b("x"))), (2, Some(b("y"))), (3, Some(b("z")))]
        );
    }

    #[test]
    fn multi_address_wait_takes_exactly_one() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        ready(&mut q, 0, conn(1), 60, vec![b("a"), b("b")], &mut out).unwrap();
        send(&mut q, 1, b("b"), None, 60, b("1"), &mut out);
        send(&mut q, 1, b("a"), None, 60, b("2"), &mut out);
        assert_eq!(out.answers.len(), 1);
        assert_eq!(q.queued(), 1);
        // The stale entry on `a` does not swallow the queued message.
        ready(&mut q, 2, conn(2), 60, vec![b("a")], &mut out);
        assert_eq!(text(&out, conn(2)), b"> 1 60 a\r\n2\r\n");
    }

    #[test]
    fn first_address_with_a_message_wins() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("b"), None, 60, b("B"), &mut out);
        send(&mut q, 0, b("a"), None, 60, b("A"), &mut out);
        ready(&mut q, 1, conn(1), 60, vec![b("a"), b("b")], &mut out);
        assert_eq!(text(&out, conn(1)), b"> 1 60 a\r\nA\r\n");
    }

    #[test]
    fn discarded_messages_are_gone_and_counted_as_expired() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("other"), None, 60, b("kept"), &mut out);
        let (count, bytes) = (q.queued(), q.queued_bytes());
        send(&mut q, 0, b("a"), Some(b("r")), 60, b("one"), &mut out);
        send(&mut q, 0, b("a"), None, 1, b(""), &mut out);
        assert_eq!(q.discard(b"a"), 2);
        assert_eq!((q.queued(), q.queued_bytes()), (count, bytes));
        assert_eq!(q.stats(), (3, 0, 2));
        assert_eq!(q.discard(b"a"), 0);
        assert_eq!(q.discard(b"nowhere"), 0);
        // A later message on the address is not hit by the dropped ones'
        // expiry timers.
        send(&mut q, 500, b("a"), None, 60, b("new"), &mut out);
        q.on_timers(2000, &mut out);
        ready(&mut q, 2000, conn(1), 0, vec![b("a")], &mut out);
        assert_eq!(text(&out, conn(1)), b"> 3 60 a\r\nnew\r\n");
        ready(&mut q, 2000, conn(2), 0, vec![b("other")], &mut out);
        assert_eq!(text(&out, conn(2)), b"> 4 60 other\r\nkept\r\n");
    }

    /// The proxy's empty request body: a message on a fresh address that
    /// costs no queue until it is taken, and then behaves as any other.
    #[test]
    fn a_fresh_empty_message_is_taken_once_before_later_ones() {
        let mut q = Queues::new(0xAB);
        let mut out = RecordingOutbox::default();
        let addr = q.fresh_holding_empty(0, 60, &mut out).unwrap();
        assert_eq!(addr, b("AB.1"));
        assert_eq!((q.queued(), q.queued_bytes()), (1, MESSAGE_OVERHEAD));
        assert_eq!(q.addresses.len(), 0);
        // A later message on the address comes after it.
        send(&mut q, 1, addr.clone(), None, 60, b("later"), &mut out);
        ready(&mut q, 2, conn(1), 0, vec![addr.clone()], &mut out);
        ready(&mut q, 2, conn(2), 0, vec![addr.clone()], &mut out);
        ready(&mut q, 2, conn(3), 0, vec![addr.clone()], &mut out);
        assert_eq!(text(&out, conn(1)), b"> 0 60 AB.1\r\n");
        assert_eq!(text(&out, conn(2)), b"> 5 60 AB.1\r\nlater\r\n");
        assert_eq!(text(&out, conn(3)), b"*\r\n");
        assert_eq!((q.queued(), q.queued_bytes()), (0, 0));
        assert_eq!(q.stats(), (2, 2, 0));
        // Taken, it is gone: discarding finds nothing.
        assert_eq!(q.discard(&addr), 0);
        assert!(q.empties.is_empty());
    }

    #[test]
    fn a_fresh_empty_message_expires_or_is_discarded_as_any_other() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let short = q.fresh_holding_empty(0, 1, &mut out).unwrap();
        let dropped = q.fresh_holding_empty(0, 60, &mut out).unwrap();
        let kept = q.fresh_holding_empty(0, 60, &mut out).unwrap();
        assert_eq!(q.queued(), 3);
        q.on_timers(1_000, &mut out);
        assert_eq!(q.queued(), 2);
        // With a message sent there after it, both go.
        send(&mut q, 1_000, dropped.clone(), None, 60, b("m"), &mut out);
        assert_eq!(q.discard(&dropped), 2);
        assert_eq!(q.discard(&dropped), 0);
        assert_eq!((q.queued(), q.queued_bytes()), (1, MESSAGE_OVERHEAD));
        assert_eq!(q.stats(), (4, 0, 3));
        ready(&mut q, 1_000, conn(1), 0, vec![short, dropped], &mut out);
        assert_eq!(text(&out, conn(1)), b"*\r\n");
        // One whose timer fires late (the loop was busy) is dead all the
        // same when someone comes for it after its deadline.
        ready(&mut q, 60_000, conn(2), 0, vec![kept], &mut out);
        assert_eq!(text(&out, conn(2)), b"*\r\n");
        assert_eq!((q.queued(), q.queued_bytes()), (0, 0));
        assert_eq!(q.stats(), (4, 0, 4));
    }

    /// Only the exact address holds it: the same number written otherwise
    /// is another address.
    #[test]
    fn a_fresh_empty_message_is_held_by_its_exact_address_only() {
        let mut q = Queues::new(0xAB);
        let mut out = RecordingOutbox::default();
        q.reply_seq = 0x1E;
        assert_eq!(q.fresh_holding_empty(0, 60, &mut out).unwrap(), b("AB.1F"));
        let others = [
            "AB.01F",
            "AB.1f",
            "AB1F",
            "AB.1F0",
            "AC.1F",
            "AB.",
            "AB.1G",
            // 17 digits, which would wrap to 0x1F.
            "AB.1000000000000001F",
        ];
        for other in others {
            ready(&mut q, 1, conn(1), 0, vec![b(other)], &mut out);
        }
        assert_eq!(text(&out, conn(1)), b"*\r\n".repeat(others.len()));
        ready(&mut q, 1, conn(2), 0, vec![b("AB.1F")], &mut out);
        assert_eq!(text(&out, conn(2)), b"> 0 60 AB.1F\r\n");
        // All 16 digits.
        q.reply_seq = 0xF000_0000_0000_0000;
        let long = q.fresh_holding_empty(0, 60, &mut out).unwrap();
        assert_eq!(long, b("AB.F000000000000001"));
        ready(&mut q, 1, conn(3), 0, vec![long], &mut out);
        assert_eq!(text(&out, conn(3)), b"> 0 60 AB.F000000000000001\r\n");
    }

    /// Someone who guessed the next fresh address and waits there gets the
    /// message at once; full queues refuse it.
    #[test]
    fn a_fresh_empty_message_goes_to_a_waiter_and_is_refused_when_full() {
        let mut q = Queues::new(0xAB);
        let mut out = RecordingOutbox::default();
        ready(&mut q, 0, conn(1), 60, vec![b("AB.1")], &mut out);
        assert_eq!(q.fresh_holding_empty(0, 60, &mut out).unwrap(), b("AB.1"));
        assert_eq!(text(&out, conn(1)), b"> 0 60 AB.1\r\n");
        assert_eq!(q.queued(), 0);
        // Two fit exactly.
        let mut q = Queues::new(0xAB).with_limits(QueueLimits {
            per_address: 10 * MESSAGE_OVERHEAD,
            total: 2 * MESSAGE_OVERHEAD,
        });
        q.fresh_holding_empty(0, 60, &mut out).unwrap();
        q.fresh_holding_empty(0, 60, &mut out).unwrap();
        assert!(matches!(
            q.fresh_holding_empty(0, 60, &mut out),
            Err(QueueFull::Full)
        ));
        assert_eq!((q.queued(), q.refused_full()), (2, 1));
        assert_eq!(q.queued_bytes(), 2 * MESSAGE_OVERHEAD);
    }

    /// A wait for several messages takes those that arrive in the turn
    /// that answers it, ahead of the waiters behind it, up to its count;
    /// the turn's end answers it `*` if it has room left.
    #[test]
    fn a_wait_for_several_takes_its_turns_messages_then_ends_with_a_star() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let batch = q.wait_for(0, conn(1), 60, vec![b("a"), b("b")], 3);
        assert!(matches!(batch, Ready::Waiting(_)));
        ready(&mut q, 0, conn(2), 60, vec![b("a")], &mut out);
        send(&mut q, 1, b("a"), None, 60, b("1"), &mut out);
        send(&mut q, 1, b("b"), None, 60, b("2"), &mut out);
        assert_eq!(text(&out, conn(1)), b"> 1 60 a\r\n1\r\n> 1 60 b\r\n2\r\n");
        assert!(q.has_open());
        q.close_open(&mut out);
        assert!(!q.has_open());
        assert_eq!(
            text(&out, conn(1)),
            b"> 1 60 a\r\n1\r\n> 1 60 b\r\n2\r\n*\r\n"
        );
        // Ended: the next message goes to the waiter behind it, and its
        // timer is stale.
        send(&mut q, 2, b("a"), None, 60, b("3"), &mut out);
        assert_eq!(text(&out, conn(2)), b"> 1 60 a\r\n3\r\n");
        q.on_timers(100_000, &mut out);
        assert_eq!(out.answers_for(conn(1)).len(), 3);
        assert_eq!(q.waiting(), 0);
    }

    /// A wait for several ends without `*` once it has its count, and with
    /// `*` at once when its connection's output is backlogged; a plain wait
    /// never stays open.
    #[test]
    fn a_wait_for_several_ends_at_its_count_or_a_backlog() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.wait_for(0, conn(1), 60, vec![b("a")], 2);
        q.wait_for(0, conn(2), 60, vec![b("a")], 5);
        q.wait_for(0, conn(3), 60, vec![b("a")], 1);
        for body in ["1", "2", "3"] {
            send(&mut q, 1, b("a"), None, 60, b(body), &mut out);
        }
        // conn(1) has its two, without `*`; the third opens conn(2)'s.
        assert_eq!(text(&out, conn(1)), b"> 1 60 a\r\n1\r\n> 1 60 a\r\n2\r\n");
        assert_eq!(text(&out, conn(2)), b"> 1 60 a\r\n3\r\n");
        // Backlogged, conn(2) ends with this message and a `*`: the next
        // one goes to conn(3).
        out.backlogged.push(conn(2));
        send(&mut q, 1, b("a"), None, 60, b("4"), &mut out);
        send(&mut q, 1, b("a"), None, 60, b("5"), &mut out);
        assert_eq!(
            text(&out, conn(2)),
            b"> 1 60 a\r\n3\r\n> 1 60 a\r\n4\r\n*\r\n"
        );
        assert_eq!(text(&out, conn(3)), b"> 1 60 a\r\n5\r\n");
        // Nothing is left open to close, and nothing waits.
        q.close_open(&mut out);
        assert_eq!(out.answers.len(), 6);
        assert_eq!(q.waiting(), 0);
    }

    /// An address that goes unused leaves its entry, emptied, to the next
    /// new address, unless its queues grew large or enough are kept.
    #[test]
    fn unused_entries_are_kept_emptied_for_new_addresses_within_bounds() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for body in ["1", "2", "3"] {
            send(&mut q, 0, b("a"), None, 60, b(body), &mut out);
        }
        for c in 1..=3 {
            ready(&mut q, 0, conn(c), 0, vec![b("a")], &mut out);
        }
        assert!(q.addresses.is_empty());
        assert_eq!(q.spare.len(), 1);
        let room = q.spare.first().map(|a| a.messages.capacity());
        assert!(room >= Some(3));
        // Reused by the next new address, with its room.
        ready(&mut q, 0, conn(4), 60, vec![b("b")], &mut out);
        assert!(q.spare.is_empty());
        assert_eq!(
            q.addresses.get(&b"b"[..]).map(|a| a.messages.capacity()),
            room
        );
        send(&mut q, 0, b("b"), None, 60, b("x"), &mut out);
        ready(&mut q, 0, conn(5), 60, vec![b("c")], &mut out);
        send(&mut q, 0, b("c"), None, 60, b("y"), &mut out);
        assert_eq!(text(&out, conn(4)), b"> 1 60 b\r\nx\r\n");
        assert_eq!(text(&out, conn(5)), b"> 1 60 c\r\ny\r\n");
        assert!(q.addresses.is_empty());
        assert!(q
            .spare
            .iter()
            .all(|a| a.messages.is_empty() && a.waits.is_empty() && a.stale == 0 && a.bytes == 0));
        // A queue that grew past SPARE_ROOM is not kept.
        q.spare.clear();
        for _ in 0..=SPARE_ROOM {
            send(&mut q, 0, b("big"), None, 60, b("m"), &mut out);
        }
        assert_eq!(q.discard(b"big"), SPARE_ROOM + 1);
        assert!(q.spare.is_empty());
        // Nor more than SPARE_ADDRESSES of them.
        for i in 0..SPARE_ADDRESSES + 5 {
            ready(
                &mut q,
                0,
                conn(6),
                60,
                vec![Bytes::from(format!("w{i}"))],
                &mut out,
            );
        }
        q.on_timers(60_000, &mut out);
        assert!(q.addresses.is_empty());
        assert_eq!(q.spare.len(), SPARE_ADDRESSES);
    }

    #[test]
    fn discarding_leaves_the_waits_on_an_address() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        // Two waits on `a`, the first answered through `b`: one live and
        // one stale entry, and nothing queued.
        ready(&mut q, 0, conn(1), 60, vec![b("b"), b("a")], &mut out);
        ready(&mut q, 0, conn(2), 60, vec![b("a")], &mut out);
        send(&mut q, 0, b("b"), None, 60, b("x"), &mut out);
        assert_eq!(q.discard(b"a"), 0);
        send(&mut q, 1, b("a"), None, 60, b("y"), &mut out);
        assert_eq!(text(&out, conn(2)), b"> 1 60 a\r\ny\r\n");
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn expired_message_is_never_delivered() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("a"), None, 1, b("late"), &mut out);
        assert_eq!(q.next_deadline(), Some(1000));
        q.on_timers(1000, &mut out);
        assert_eq!(q.queued(), 0);
        ready(&mut q, 1000, conn(1), 1, vec![b("a")], &mut out);
        assert!(out.answers.is_empty());
        q.on_timers(1999, &mut out);
        assert!(out.answers.is_empty());
        q.on_timers(2000, &mut out);
        assert_eq!(text(&out, conn(1)), b"*\r\n");
        assert_eq!(q.stats().2, 1);
    }

    #[test]
    fn expiry_is_checked_on_delivery_too() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("a"), None, 1, b("late"), &mut out);
        // Timers not yet run, but the deadline has passed.
        ready(&mut q, 1500, conn(1), 0, vec![b("a")], &mut out);
        assert_eq!(text(&out, conn(1)), b"*\r\n");
    }

    #[test]
    fn zero_timeouts() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("a"), None, 0, b("x"), &mut out);
        assert_eq!(q.queued(), 0);
        assert!(ready(&mut q, 0, conn(1), 0, vec![b("a")], &mut out).is_none());
        assert_eq!(text(&out, conn(1)), b"*\r\n");
    }

    #[test]
    fn cancelled_wait_does_not_swallow_a_message() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let w = ready(&mut q, 0, conn(1), 60, vec![b("a")], &mut out).unwrap();
        q.cancel(w);
        send(&mut q, 1, b("a"), None, 60, b("m"), &mut out);
        assert!(out.answers.is_empty());
        ready(&mut q, 2, conn(2), 60, vec![b("a")], &mut out);
        assert_eq!(text(&out, conn(2)), b"> 1 60 a\r\nm\r\n");
        // A cancelled wait's timer is ignored.
        q.on_timers(100_000, &mut out);
        assert_eq!(out.answers.len(), 1);
    }

    #[test]
    fn query_reply_routing() {
        let mut q = Queues::new(0xAB);
        let mut out = RecordingOutbox::default();
        assert!(query(&mut q, 0, conn(1), 30, b("svc"), b("ping"), &mut out).is_some());
        ready(&mut q, 1, conn(2), 30, vec![b("svc")], &mut out);
        let got = text(&out, conn(2));
        assert_eq!(got, b"> 4 30 svc AB.1\r\nping\r\n");
        send(&mut q, 2, b("AB.1"), None, 30, b("pong"), &mut out);
        assert_eq!(text(&out, conn(1)), b"> 4 30 AB.1\r\npong\r\n");
        assert_eq!(q.unique_address(), b("AB.2"));
    }

    #[test]
    fn a_refusing_waiter_passes_the_message_on() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        ready(&mut q, 0, conn(1), 60, vec![b("a")], &mut out).unwrap();
        ready(&mut q, 0, conn(2), 60, vec![b("a")], &mut out).unwrap();
        out.refuse.push(conn(1));
        send(&mut q, 1, b("a"), None, 60, b("m"), &mut out);
        assert_eq!(text(&out, conn(2)), b"> 1 60 a\r\nm\r\n");
        // With nobody left to take it, the next one is queued, not lost.
        out.refuse.push(conn(3));
        ready(&mut q, 2, conn(3), 60, vec![b("b")], &mut out).unwrap();
        send(&mut q, 3, b("b"), None, 60, b("n"), &mut out);
        assert_eq!(q.queued(), 1);
        ready(&mut q, 5, conn(4), 60, vec![b("b")], &mut out);
        assert_eq!(text(&out, conn(4)), b"> 1 60 b\r\nn\r\n");
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn timers_of_answered_waits_do_not_pile_up() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for k in 0..100_000 {
            ready(&mut q, 0, conn(k), 3600, vec![b("jobs")], &mut out);
            send(&mut q, 0, b("jobs"), None, 3600, b("j"), &mut out);
        }
        assert_eq!(q.waiting(), 0);
        assert!(q.timers.len() <= 1024 + 1, "{} timers left", q.timers.len());
    }

    #[test]
    fn timers_of_taken_messages_on_a_busy_address_do_not_pile_up() {
        // A work queue that always holds a backlog: each message is taken
        // long before its timeout, and its expiry timer is stale from then
        // on although the address is never empty.
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for _ in 0..10 {
            send(&mut q, 0, b("jobs"), None, 3600, b("j"), &mut out);
        }
        for k in 0..100_000 {
            send(&mut q, 0, b("jobs"), None, 3600, b("j"), &mut out);
            assert!(ready(&mut q, 0, conn(k), 60, vec![b("jobs")], &mut out).is_none());
        }
        assert_eq!(q.queued(), 10);
        assert!(
            q.timers.len() <= 2 * 10 + 1024 + 1,
            "{} timers left",
            q.timers.len()
        );
        // Stale timers that come due leave the backlog alone.
        q.on_timers(3600 * 1000, &mut out);
        assert_eq!(q.queued(), 0, "the backlog itself expires");
        assert_eq!(q.stats().2, 10);
    }

    #[test]
    fn expired_messages_behind_a_live_one_are_swept() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("a"), None, 3600, b("long"), &mut out);
        for _ in 0..100 {
            send(&mut q, 0, b("a"), None, 1, b("short"), &mut out);
        }
        assert_eq!(q.queued(), 101);
        q.on_timers(1000, &mut out);
        assert_eq!(q.queued(), 1);
        assert_eq!(q.stats().2, 100);
        ready(&mut q, 1001, conn(1), 1, vec![b("a")], &mut out);
        assert_eq!(text(&out, conn(1)), b"> 4 3600 a\r\nlong\r\n");
    }

    #[test]
    fn an_address_named_twice_is_forgotten_after_the_answer() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        ready(
            &mut q,
            0,
            conn(1),
            60,
            vec![b("x"), b("x"), b("y")],
            &mut out,
        )
        .unwrap();
        send(&mut q, 1, b("x"), None, 60, b("m"), &mut out);
        assert_eq!(out.answers.len(), 1);
        assert!(
            q.addresses.is_empty(),
            "{} addresses left",
            q.addresses.len()
        );
    }

    #[test]
    fn large_bodies_are_queued_without_a_copy() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let body = Bytes::from(vec![b'x'; 100_000]);
        send(&mut q, 0, b("big"), None, 60, body.clone(), &mut out);
        ready(&mut q, 1, conn(1), 60, vec![b("big")], &mut out);
        let mut want = b"> 100000 60 big\r\n".to_vec();
        want.extend_from_slice(&body);
        want.extend_from_slice(b"\r\n");
        assert_eq!(text(&out, conn(1)), want);
        assert!(out
            .answers
            .iter()
            .any(|(_, a)| a.as_ref().is_some_and(|m| m.3.as_ptr() == body.as_ptr())));
    }

    #[test]
    fn stale_entries_are_compacted() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for k in 0..1000 {
            ready(
                &mut q,
                0,
                conn(k),
                60,
                vec![b("busy"), b("quiet")],
                &mut out,
            );
            send(&mut q, 0, b("busy"), None, 60, b("m"), &mut out);
        }
        assert!(q
            .addresses
            .get(&b("quiet"))
            .is_none_or(|a| a.waits.len() < 40));
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn queues_are_bounded_per_address_and_in_total() {
        let limits = QueueLimits {
            per_address: 3 * (MESSAGE_OVERHEAD + 10),
            total: 5 * (MESSAGE_OVERHEAD + 10),
        };
        let mut q = Queues::new(1).with_limits(limits);
        let mut out = RecordingOutbox::default();
        let body = || Bytes::from(vec![b'x'; 10]);
        for _ in 0..3 {
            assert_eq!(q.send(0, b("a"), None, 60, body(), &mut out), Ok(()));
        }
        assert_eq!(
            q.send(0, b("a"), None, 60, body(), &mut out),
            Err(QueueFull::Full)
        );
        for _ in 0..2 {
            assert_eq!(q.send(0, b("b"), None, 60, body(), &mut out), Ok(()));
        }
        assert_eq!(
            q.send(0, b("c"), None, 60, body(), &mut out),
            Err(QueueFull::Full)
        );
        assert_eq!(q.refused_full(), 2);
        assert_eq!(q.queued(), 5);
        assert_eq!(q.queued_bytes(), limits.total);
        // A waiting receiver takes a message even when the queues are full.
        let w = ready(&mut q, 1, conn(9), 60, vec![b("c")], &mut out);
        assert!(w.is_some());
        assert_eq!(q.send(1, b("c"), None, 60, body(), &mut out), Ok(()));
        assert_eq!(out.answers_for(conn(9)).len(), 1);
        // Taking and expiring give the bytes back.
        ready(&mut q, 2, conn(1), 60, vec![b("a")], &mut out);
        assert_eq!(q.send(2, b("c"), None, 1, body(), &mut out), Ok(()));
        q.on_timers(1000 + 2, &mut out);
        assert_eq!(q.queued(), 4);
        assert_eq!(q.queued_bytes(), 4 * (MESSAGE_OVERHEAD + 10));
        // A refused query leaves no wait behind.
        assert_eq!(
            q.query(
                3,
                conn(2),
                60,
                b("a"),
                Bytes::from(vec![b'x'; 200]),
                &mut out
            ),
            Err(QueueFull::Full)
        );
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn a_query_to_its_own_reply_address_gets_no_wait() {
        let mut q = Queues::new(0xAB);
        let mut out = RecordingOutbox::default();
        out.refuse.push(conn(1));
        // The caller is running and refuses answers; the guessed address
        // must not leave it waiting on a wait that was taken.
        let got = q.query(0, conn(1), 30, b("AB.1"), b("x"), &mut out);
        assert_eq!(got, Ok(Ready::TimedOut));
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn queue_full_reads_as_such() {
        assert_eq!(QueueFull::Full.to_string(), "queue full");
    }

    #[test]
    fn timeouts_are_clamped_to_ten_years() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 7, b("a"), None, u64::MAX, b("x"), &mut out);
        assert_eq!(q.next_deadline(), Some(7 + 315_360_000_000));
        let mut q = Queues::new(1);
        ready(&mut q, 7, conn(1), u64::MAX, vec![b("a")], &mut out).unwrap();
        assert_eq!(q.next_deadline(), Some(7 + 315_360_000_000));
        // And the time left of a message another node kept.
        let mut q = Queues::new(1);
        assert!(q.keep_remote(7, b("a"), None, 60, u64::MAX, b("x")));
        assert_eq!(q.next_deadline(), Some(7 + 315_360_000_000));
    }

    #[test]
    fn counters_of_every_path() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        // Straight to a waiting receiver.
        ready(&mut q, 0, conn(1), 60, vec![b("a")], &mut out).unwrap();
        send(&mut q, 0, b("a"), None, 60, b("x"), &mut out);
        assert_eq!(q.stats(), (1, 1, 0));
        // Nobody waits and the timeout is 0: in, and expired at once.
        send(&mut q, 0, b("a"), None, 0, b("y"), &mut out);
        assert_eq!(q.stats(), (2, 1, 1));
        // Queued, then taken by a later receiver.
        send(&mut q, 0, b("b"), None, 60, b("z"), &mut out);
        assert_eq!(q.stats(), (3, 1, 1));
        ready(&mut q, 1, conn(2), 60, vec![b("b")], &mut out);
        assert_eq!(q.stats(), (3, 2, 1));
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn small_bodies_are_copied_and_16_kib_ones_shared() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        // `SHARED_BODY` is 16 KiB.
        let small = Bytes::from(vec![b's'; 16 * 1024 - 1]);
        let shared = Bytes::from(vec![b'l'; 16 * 1024]);
        send(&mut q, 0, b("a"), None, 60, small.clone(), &mut out);
        send(&mut q, 0, b("a"), None, 60, shared.clone(), &mut out);
        ready(&mut q, 1, conn(1), 60, vec![b("a")], &mut out);
        ready(&mut q, 1, conn(1), 60, vec![b("a")], &mut out);
        let bodies: Vec<Bytes> = out
            .answers_for(conn(1))
            .into_iter()
            .map(|a| a.expect("a message").3)
            .collect();
        assert_eq!(bodies, vec![small.clone(), shared.clone()]);
        // The small one no longer points into the buffer it came from.
        assert_ne!(bodies[0].as_ptr(), small.as_ptr());
        assert_eq!(bodies[1].as_ptr(), shared.as_ptr());
    }

    #[test]
    fn a_wait_on_a_fresh_address_is_answered_there_and_a_guessed_one_takes_what_is_queued() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let (addr, ready) = q.wait_on_fresh(0, conn(1), 60);
        let Ready::Waiting(w) = ready else {
            panic!("a fresh address holds nothing")
        };
        assert!(q.is_pending(w));
        assert_eq!(q.waiters_on(&addr), 1);
        send(&mut q, 1, addr.clone(), None, 60, b("answer"), &mut out);
        assert!(!q.is_pending(w));
        assert_eq!(out.answers_for(conn(1))[0].as_ref().unwrap().3, b("answer"));
        // Its entry is gone with the wait.
        assert_eq!(q.waiters_on(&addr), 0);
        assert_eq!(q.addresses.len(), 0);
        // The next one, guessed and sent to before it was given out.
        let next = Bytes::from(format!("{}.{:X}", q.reply_prefix, q.reply_seq + 1));
        send(&mut q, 2, next.clone(), None, 60, b("early"), &mut out);
        let (addr, ready) = q.wait_on_fresh(3, conn(2), 60);
        assert_eq!(addr, next);
        let Ready::Message(m) = ready else {
            panic!("the guessed address' message is taken")
        };
        assert_eq!(m.body, b("early"));
        // A timeout of 0 waits for nothing.
        assert!(matches!(q.wait_on_fresh(4, conn(3), 0).1, Ready::TimedOut));
    }

    #[test]
    fn made_parts_are_queued_as_they_are_and_read_ones_copied() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let body = Bytes::from(vec![b'e'; 100]);
        let reply = q.unique_address();
        q.send_as(
            0,
            b("a"),
            Some(reply.clone()),
            60,
            body.clone(),
            Parts::Made,
            &mut out,
        )
        .unwrap();
        send(
            &mut q,
            0,
            b("a"),
            Some(reply.clone()),
            60,
            body.clone(),
            &mut out,
        );
        ready(&mut q, 1, conn(1), 60, vec![b("a")], &mut out);
        ready(&mut q, 1, conn(1), 60, vec![b("a")], &mut out);
        let got: Vec<(Option<Bytes>, Bytes)> = out
            .answers_for(conn(1))
            .into_iter()
            .map(|a| a.expect("a message"))
            .map(|m| (m.1, m.3))
            .collect();
        assert_eq!(got.len(), 2);
        for (r, b) in &got {
            assert_eq!(r.as_deref(), Some(&reply[..]));
            assert_eq!(b, &body);
        }
        // Made: the same buffer; read: a copy. (The outbox hands replies
        // over as slices, so only the bodies can be told apart.)
        assert_eq!(got[0].1.as_ptr(), body.as_ptr());
        assert_ne!(got[1].1.as_ptr(), body.as_ptr());
    }

    /// A queue whose timer heap holds `n` entries of waits already answered.
    fn stale_timers(n: u32) -> Queues {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for k in 0..n {
            ready(&mut q, 0, conn(k), 3600, vec![b("a")], &mut out).unwrap();
        }
        for _ in 0..n {
            send(&mut q, 0, b("a"), None, 3600, b("m"), &mut out);
        }
        assert_eq!((q.waiting(), q.queued()), (0, 0));
        assert_eq!(q.timers.len(), n as usize);
        q
    }

    #[test]
    fn stale_timers_go_once_they_pass_twice_the_live_ones_plus_1024() {
        let mut out = RecordingOutbox::default();
        // At the bound, nothing is dropped: 1 live wait, 1026 entries.
        let mut q = stale_timers(1025);
        ready(&mut q, 0, conn(9000), 60, vec![b("b")], &mut out).unwrap();
        assert_eq!(q.timers.len(), 1026);
        // 2 live waits, 1027 entries, bound 1028.
        ready(&mut q, 0, conn(9001), 60, vec![b("c")], &mut out).unwrap();
        assert_eq!(q.timers.len(), 1027);

        // One past the bound, only the live entries stay, and they still fire:
        // a queued message's expiry ...
        let mut q = stale_timers(1026);
        send(&mut q, 0, b("m"), None, 60, b("x"), &mut out);
        assert_eq!(q.timers.len(), 1);
        q.on_timers(60_000, &mut out);
        assert_eq!((q.queued(), q.stats().2), (0, 1));
        // ... and a wait's timeout.
        let mut q = stale_timers(1026);
        ready(&mut q, 0, conn(9002), 30, vec![b("w")], &mut out).unwrap();
        assert_eq!(q.timers.len(), 1);
        q.on_timers(30_000, &mut out);
        assert_eq!(out.answers_for(conn(9002)), vec![None]);
    }

    #[test]
    fn expired_messages_behind_a_live_one_wait_for_the_sweep() {
        // Room for exactly the three messages on the address.
        let limits = QueueLimits {
            per_address: 3 * MESSAGE_OVERHEAD + 8,
            total: 1 << 20,
        };
        let mut q = Queues::new(1).with_limits(limits);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("a"), None, 3600, b("long"), &mut out);
        send(&mut q, 0, b("a"), None, 1, b("s1"), &mut out);
        send(&mut q, 0, b("a"), None, 2, b("s2"), &mut out);
        // One expired message in three is only counted ...
        q.on_timers(1000, &mut out);
        assert_eq!((q.queued(), q.stats().2), (3, 0));
        // ... two in three are swept.
        q.on_timers(2000, &mut out);
        assert_eq!((q.queued(), q.stats().2), (1, 2));
        assert_eq!(q.queued_bytes(), MESSAGE_OVERHEAD + 4);
        // The address got the bytes of the swept messages back.
        send(&mut q, 2000, b("a"), None, 60, b("s3"), &mut out);
        send(&mut q, 2000, b("a"), None, 60, b("s4"), &mut out);
        ready(&mut q, 2001, conn(1), 1, vec![b("a")], &mut out);
        assert_eq!(text(&out, conn(1)), b"> 4 3600 a\r\nlong\r\n");
    }

    #[test]
    fn taking_a_message_gives_its_bytes_back_to_the_address() {
        let limits = QueueLimits {
            per_address: 3 * MESSAGE_OVERHEAD + 100,
            total: 1 << 20,
        };
        let mut q = Queues::new(1).with_limits(limits);
        let mut out = RecordingOutbox::default();
        let big = || Bytes::from(vec![b'x'; 100]);
        assert_eq!(q.send(0, b("a"), None, 60, Bytes::new(), &mut out), Ok(()));
        assert_eq!(q.send(0, b("a"), None, 60, big(), &mut out), Ok(()));
        // Taking the empty one leaves the big one: room for one more empty.
        ready(&mut q, 1, conn(1), 60, vec![b("a")], &mut out);
        assert_eq!(q.queued_bytes(), MESSAGE_OVERHEAD + 100);
        assert_eq!(q.send(1, b("a"), None, 60, Bytes::new(), &mut out), Ok(()));
        assert_eq!(q.send(1, b("a"), None, 60, Bytes::new(), &mut out), Ok(()));
        assert_eq!(
            q.send(1, b("a"), None, 60, Bytes::new(), &mut out),
            Err(QueueFull::Full)
        );
    }

    #[test]
    fn a_message_is_dead_at_its_deadline() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        send(&mut q, 0, b("a"), None, 1, b("late"), &mut out);
        // Timers not yet run; the deadline is now.
        ready(&mut q, 1000, conn(1), 0, vec![b("a")], &mut out);
        assert_eq!(text(&out, conn(1)), b"*\r\n");
        assert_eq!(q.stats(), (1, 0, 1));
        assert_eq!((q.queued(), q.queued_bytes()), (0, 0));
    }

    #[test]
    fn stale_entries_are_compacted_at_16_and_half_the_queue() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let held = |q: &Queues| q.addresses.get(&b("quiet")).map_or(0, |a| a.waits.len());
        for k in 0..20 {
            ready(&mut q, 0, conn(k), 60, vec![b("quiet")], &mut out).unwrap();
        }
        for k in 100..120 {
            ready(
                &mut q,
                0,
                conn(k),
                60,
                vec![b("busy"), b("quiet")],
                &mut out,
            )
            .unwrap();
            send(&mut q, 0, b("busy"), None, 60, b("m"), &mut out);
            if k == 118 {
                // 19 stale entries behind 20 live ones: kept.
                assert_eq!(held(&q), 39);
            }
        }
        // 20 stale entries of 40: compacted, the live ones kept in order.
        assert_eq!(held(&q), 20);
        assert_eq!(q.waiting(), 20);
        send(&mut q, 1, b("quiet"), None, 60, b("q"), &mut out);
        assert_eq!(text(&out, conn(0)), b"> 1 60 quiet\r\nq\r\n");
    }

    /// Sequence numbers go on from what a store kept: past its next one
    /// and past every message restored; each message queued takes one.
    #[test]
    fn sequence_numbers_go_on_after_a_restore() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        assert_eq!(q.next_seq(), 0);
        let kept = LineMessage {
            to: b("a"),
            reply: None,
            timeout_s: 60,
            deadline: 1_060_000,
            body: b("x"),
        };
        assert_eq!(q.restore(0, 1_000_000, 5, [(7, kept)]), 1);
        assert_eq!(q.next_seq(), 8);
        send(&mut q, 0, b("a"), None, 60, b("y"), &mut out);
        assert_eq!(q.next_seq(), 9);
    }

    /// A message sent on another node and handed to a receiver here
    /// counts as delivered here, not as sent here; with nobody waiting it
    /// is not taken and counts nothing.
    #[test]
    fn a_message_from_another_node_counts_as_delivered_only() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let body = b("x");
        let d = Delivery {
            to: b"a",
            reply: None,
            timeout_s: 60,
            body: &body,
        };
        assert!(!q.hand_remote(d, &mut out));
        assert_eq!(q.stats(), (0, 0, 0));
        ready(&mut q, 0, conn(1), 60, vec![b("a")], &mut out).unwrap();
        assert!(q.hand_remote(d, &mut out));
        assert_eq!(q.stats(), (0, 1, 0));
        assert_eq!(text(&out, conn(1)), b"> 1 60 a\r\nx\r\n");
    }

    /// In a cluster, reply addresses name the node too.
    #[test]
    fn reply_addresses_name_the_node() {
        let mut q = Queues::new(0xAB);
        q.set_node(b"n1");
        assert_eq!(q.unique_address(), b("AB.n1.1"));
    }

    #[test]
    fn a_journal_records_what_joins_and_leaves_a_queue() {
        use crate::store::record::{decode_all, Record};
        let journal = Journal::new(1_000_000);
        let mut q = Queues::new(1).with_journal(journal.clone());
        let mut out = RecordingOutbox::default();
        // Straight to a waiting receiver: nothing to record.
        assert!(ready(&mut q, 0, conn(1), 5, vec![b("a")], &mut out).is_some());
        send(&mut q, 0, b("a"), None, 10, b("direct"), &mut out);
        assert_eq!(journal.pending(), 0);
        send(&mut q, 0, b("a"), Some(b("r")), 10, b("one"), &mut out);
        send(&mut q, 0, b("a"), None, 1, b("short"), &mut out);
        send(&mut q, 0, b("b"), None, 10, b("two"), &mut out);
        assert!(ready(&mut q, 5, conn(2), 5, vec![b("a")], &mut out).is_none());
        q.on_timers(1_000, &mut out);
        let got = decode_all(&Bytes::from(journal.take())).unwrap();
        let enqueue =
            |seq, deadline, timeout_s, to: &str, reply: Option<&str>, body: &str| Record::Enqueue {
                seq,
                deadline,
                timeout_s,
                to: b(to),
                reply: reply.map(b),
                body: b(body),
            };
        assert_eq!(
            got,
            vec![
                enqueue(0, 1_010_000, 10, "a", Some("r"), "one"),
                enqueue(1, 1_001_000, 1, "a", None, "short"),
                enqueue(2, 1_010_000, 10, "b", None, "two"),
                Record::Take { seq: 0 },
                Record::Expire { seq: 1 },
            ]
        );
        // A refusing journal refuses what it would have to record.
        journal.set_refusal(Some(crate::store::Refusal::Failed));
        assert_eq!(
            q.send(0, b("c"), None, 10, b("x"), &mut out),
            Err(QueueFull::Store)
        );
    }
}
