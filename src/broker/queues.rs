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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use slab::Slab;

use super::frames::{line_message, line_message_head};
use super::{ConnId, Millis, Outbox};

/// The most addresses one `<` may wait on.
pub const MAX_ADDRESSES: usize = 8;

/// The longest timeout honoured, in seconds (larger ones are clamped): ten years.
pub const MAX_TIMEOUT_S: u64 = 10 * 365 * 24 * 3600;

/// The answer to a timed-out wait.
pub const TIMEOUT_FRAME: &[u8] = b"*\r\n";

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
}

struct Message {
    reply: Option<Bytes>,
    timeout_s: u64,
    body: Bytes,
    deadline: Millis,
}

#[derive(Default)]
struct Address {
    messages: VecDeque<Message>,
    waits: VecDeque<WaitId>,
    /// Entries of `waits` known to be answered elsewhere.
    stale: usize,
    /// Expiry timers that fired while their message sat behind a live one.
    expired_inside: usize,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Wait(usize, u64),
    Expire(Bytes),
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Millis,
    seq: u64,
    kind: TimerKind,
}

/// All queue addresses and the waits on them.
pub struct Queues {
    addresses: HashMap<Bytes, Address>,
    waits: Slab<Wait>,
    timers: BinaryHeap<Reverse<Timer>>,
    next_gen: u64,
    timer_seq: u64,
    reply_prefix: String,
    reply_seq: u64,
    queued_in: u64,
    queued_out: u64,
    expired: u64,
    /// Messages waiting in all address queues.
    queued_now: usize,
}

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
            addresses: HashMap::new(),
            waits: Slab::new(),
            timers: BinaryHeap::new(),
            next_gen: 0,
            timer_seq: 0,
            reply_prefix: format!("{epoch_s:X}"),
            reply_seq: 0,
            queued_in: 0,
            queued_out: 0,
            expired: 0,
            queued_now: 0,
        }
    }

    /// (messages in, messages out, expired).
    pub fn stats(&self) -> (u64, u64, u64) {
        (self.queued_in, self.queued_out, self.expired)
    }

    /// Messages waiting for a receiver, over all addresses.
    pub fn queued(&self) -> usize {
        self.queued_now
    }

    /// Receivers waiting.
    pub fn waiting(&self) -> usize {
        self.waits.len()
    }

    /// A fresh address nobody else has been given.
    pub fn unique_address(&mut self) -> Bytes {
        self.reply_seq += 1;
        Bytes::from(format!("{}.{:X}", self.reply_prefix, self.reply_seq))
    }

    fn add_timer(&mut self, at: Millis, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(Timer {
            at,
            seq: self.timer_seq,
            kind,
        }));
        // Timers of answered waits and delivered messages are left in the
        // heap (lazy invalidation); once they outnumber the live ones, drop
        // them all at once, so the heap stays proportional to what is pending.
        if self.timers.len() > 2 * (self.waits.len() + self.queued_now) + 1024 {
            let (waits, addresses) = (&self.waits, &self.addresses);
            self.timers.retain(|Reverse(t)| match &t.kind {
                TimerKind::Wait(slot, gen) => waits.get(*slot).is_some_and(|w| w.gen == *gen),
                TimerKind::Expire(addr) => {
                    addresses.get(addr).is_some_and(|a| !a.messages.is_empty())
                }
            });
        }
    }

    /// The map's own key for `addr`: an exact-size copy made once per
    /// address, so that neither the map nor the timers keep alive the (much
    /// larger) read buffer `addr` was sliced from.
    fn key(&self, addr: &Bytes) -> Bytes {
        match self.addresses.get_key_value(&addr[..]) {
            Some((k, _)) => k.clone(),
            None => Bytes::copy_from_slice(addr),
        }
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    /// Sends a message to `to`: straight to the longest-waiting receiver, or
    /// into the queue until one comes or `timeout_s` passes.
    pub fn send(
        &mut self,
        now: Millis,
        to: Bytes,
        reply: Option<Bytes>,
        timeout_s: u64,
        body: Bytes,
        out: &mut impl Outbox,
    ) {
        self.queued_in += 1;
        let msg = Message {
            reply,
            timeout_s,
            body,
            deadline: deadline(now, timeout_s),
        };
        // A waiter whose connection is already closing refuses the frame:
        // the message then goes to the next waiter, or into the queue.
        while let Some(wait) = self.pop_live_wait(&to) {
            if deliver_message(out, wait.conn, &to, &msg) {
                self.queued_out += 1;
                out.wait_done(wait.conn);
                return;
            }
        }
        if msg.deadline <= now {
            self.expired += 1;
            return;
        }
        // A queued message may wait long: its small parts become exact-size
        // copies so they do not keep the read buffer they came in alive.
        let mut msg = msg;
        if msg.body.len() < SHARED_BODY {
            msg.body = Bytes::copy_from_slice(&msg.body);
        }
        msg.reply = msg.reply.map(|r| Bytes::copy_from_slice(&r));
        let at = msg.deadline;
        let key = self.key(&to);
        self.addresses
            .entry(key.clone())
            .or_default()
            .messages
            .push_back(msg);
        self.queued_now += 1;
        self.add_timer(at, TimerKind::Expire(key));
    }

    /// Waits on up to [`MAX_ADDRESSES`] addresses. Answers at once when a
    /// message is queued on one of them (first address first); otherwise
    /// registers the wait and returns its id.
    pub fn ready(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        addresses: Vec<Bytes>,
        out: &mut impl Outbox,
    ) -> Option<WaitId> {
        for addr in &addresses {
            if let Some(msg) = self.pop_live_message(now, addr) {
                if deliver_message(out, conn, addr, &msg) {
                    self.queued_out += 1;
                    out.wait_done(conn);
                } else {
                    // The connection is closing: the message stays first in line.
                    let key = self.key(addr);
                    self.addresses
                        .entry(key)
                        .or_default()
                        .messages
                        .push_front(msg);
                    self.queued_now += 1;
                }
                return None;
            }
        }
        let at = deadline(now, timeout_s);
        if at <= now {
            out.deliver(conn, Bytes::from_static(TIMEOUT_FRAME), 0);
            out.wait_done(conn);
            return None;
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let slot = self.waits.insert(Wait {
            conn,
            gen,
            addresses: Vec::new(),
        });
        let id = WaitId { slot, gen };
        let mut keys: Vec<Bytes> = Vec::with_capacity(addresses.len());
        for addr in &addresses {
            // An address named twice waits once.
            if keys.iter().any(|k| k == addr) {
                continue;
            }
            let key = self.key(addr);
            self.addresses
                .entry(key.clone())
                .or_default()
                .waits
                .push_back(id);
            keys.push(key);
        }
        if let Some(w) = self.waits.get_mut(slot) {
            w.addresses = keys;
        }
        self.add_timer(at, TimerKind::Wait(slot, gen));
        Some(id)
    }

    /// `?`: sends `body` to `to` with a fresh reply address and waits on it.
    pub fn query(
        &mut self,
        now: Millis,
        conn: ConnId,
        timeout_s: u64,
        to: Bytes,
        body: Bytes,
        out: &mut impl Outbox,
    ) -> Option<WaitId> {
        let reply = self.unique_address();
        let wait = self.ready(now, conn, timeout_s, vec![reply.clone()], out);
        self.send(now, to, Some(reply), timeout_s, body, out);
        wait
    }

    /// Withdraws a wait whose connection went away; no answer is sent.
    pub fn cancel(&mut self, id: WaitId) {
        if self.waits.get(id.slot).is_some_and(|w| w.gen == id.gen) {
            let wait = self.waits.remove(id.slot);
            self.mark_stale(&wait.addresses, None);
        }
    }

    /// Runs every timer due at `now`.
    pub fn on_timers(&mut self, now: Millis, out: &mut impl Outbox) {
        while self.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            let Some(Reverse(timer)) = self.timers.pop() else {
                break;
            };
            match timer.kind {
                TimerKind::Wait(slot, gen) => {
                    if self.waits.get(slot).is_some_and(|w| w.gen == gen) {
                        let wait = self.waits.remove(slot);
                        self.mark_stale(&wait.addresses, None);
                        out.deliver(wait.conn, Bytes::from_static(TIMEOUT_FRAME), 0);
                        out.wait_done(wait.conn);
                    }
                }
                TimerKind::Expire(addr) => self.expire_front(now, &addr),
            }
        }
    }

    /// A message on `addr` reached its deadline. Expired messages at the
    /// front go at once; one stuck behind a live message is counted, and the
    /// queue is swept once such messages could be half of it, so dropping
    /// costs amortised O(1) per message.
    fn expire_front(&mut self, now: Millis, addr: &Bytes) {
        let Some(a) = self.addresses.get_mut(addr) else {
            return;
        };
        let before = a.messages.len();
        while a.messages.front().is_some_and(|m| m.deadline <= now) {
            a.messages.pop_front();
        }
        if a.messages.len() == before {
            a.expired_inside += 1;
            if a.expired_inside * 2 >= a.messages.len() {
                a.messages.retain(|m| m.deadline > now);
                a.expired_inside = 0;
            }
        }
        let gone = before - a.messages.len();
        self.expired += gone as u64;
        self.queued_now -= gone;
        self.forget_if_empty(addr);
    }

    fn pop_live_message(&mut self, now: Millis, addr: &Bytes) -> Option<Message> {
        let a = self.addresses.get_mut(addr)?;
        let mut found = None;
        while let Some(m) = a.messages.pop_front() {
            self.queued_now -= 1;
            if m.deadline > now {
                found = Some(m);
                break;
            }
            self.expired += 1;
        }
        self.forget_if_empty(addr);
        found
    }

    /// Takes the longest-waiting live wait on `addr` out of the slab.
    fn pop_live_wait(&mut self, addr: &Bytes) -> Option<Wait> {
        let a = self.addresses.get_mut(addr)?;
        let mut found = None;
        while let Some(id) = a.waits.pop_front() {
            if self.waits.get(id.slot).is_some_and(|w| w.gen == id.gen) {
                found = Some(self.waits.remove(id.slot));
                break;
            }
            a.stale = a.stale.saturating_sub(1);
        }
        if let Some(w) = &found {
            self.mark_stale(&w.addresses, Some(addr));
        }
        self.forget_if_empty(addr);
        found
    }

    /// Counts the entries of an answered or withdrawn wait as stale in each of
    /// its queues (except `popped`, where it was already removed), compacting a
    /// queue once most of it is stale.
    fn mark_stale(&mut self, addresses: &[Bytes], popped: Option<&Bytes>) {
        for addr in addresses {
            if Some(addr) == popped {
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
            self.forget_if_empty(addr);
        }
    }

    fn forget_if_empty(&mut self, addr: &Bytes) {
        if let Some(a) = self.addresses.get(addr) {
            if a.messages.is_empty() && a.waits.len() <= a.stale {
                self.addresses.remove(addr);
            }
        }
    }
}

/// Bodies from this size on are queued as they are, between a header frame
/// and a CRLF, instead of being copied into one frame.
const SHARED_BODY: usize = 16 * 1024;

/// Queues `> LEN TIMEOUT TO [REPLY]` + body for `conn`; false when refused.
fn deliver_message(out: &mut impl Outbox, conn: ConnId, to: &[u8], msg: &Message) -> bool {
    let mut head = BytesMut::new();
    if msg.body.len() < SHARED_BODY {
        line_message(
            &mut head,
            to,
            msg.reply.as_deref(),
            msg.timeout_s,
            &msg.body,
        );
        return out.deliver(conn, head.freeze(), 0);
    }
    line_message_head(
        &mut head,
        to,
        msg.reply.as_deref(),
        msg.timeout_s,
        msg.body.len(),
    );
    // All three go to one connection in one step: accepted or refused alike.
    out.deliver(conn, head.freeze(), 0)
        && out.deliver(conn, msg.body.clone(), 0)
        && out.deliver(conn, Bytes::from_static(b"\r\n"), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::RecordingOutbox;

    fn conn(key: u32) -> ConnId {
        ConnId { key, gen: 1 }
    }
    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn queued_message_goes_to_a_later_receiver_in_order() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.send(0, b("a"), None, 10, b("one"), &mut out);
        q.send(0, b("a"), Some(b("r")), 10, b("two"), &mut out);
        assert!(out.frames.is_empty());
        assert!(q.ready(5, conn(1), 5, vec![b("a")], &mut out).is_none());
        assert!(q.ready(5, conn(1), 5, vec![b("a")], &mut out).is_none());
        assert_eq!(
            out.bytes_for(conn(1)),
            b"> 3 10 a\r\none\r\n> 3 10 a r\r\ntwo\r\n"
        );
        assert_eq!(out.done, vec![conn(1), conn(1)]);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn longest_waiting_receiver_first() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for k in 1..=3 {
            assert!(q.ready(0, conn(k), 60, vec![b("a")], &mut out).is_some());
        }
        for body in ["x", "y", "z"] {
            q.send(1, b("a"), None, 0, b(body), &mut out);
        }
        let order: Vec<_> = out
            .frames
            .iter()
            .map(|(c, f, _)| (c.key, f.clone()))
            .collect();
        assert_eq!(
            order,
            vec![
                (1, b("> 1 0 a\r\nx\r\n")),
                (2, b("> 1 0 a\r\ny\r\n")),
                (3, b("> 1 0 a\r\nz\r\n"))
            ]
        );
    }

    #[test]
    fn multi_address_wait_takes_exactly_one() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.ready(0, conn(1), 60, vec![b("a"), b("b")], &mut out)
            .unwrap();
        q.send(1, b("b"), None, 60, b("1"), &mut out);
        q.send(1, b("a"), None, 60, b("2"), &mut out);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(q.queued(), 1);
        // The stale entry on `a` does not swallow the queued message.
        q.ready(2, conn(2), 60, vec![b("a")], &mut out);
        assert_eq!(out.bytes_for(conn(2)), b"> 1 60 a\r\n2\r\n");
    }

    #[test]
    fn first_address_with_a_message_wins() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.send(0, b("b"), None, 60, b("B"), &mut out);
        q.send(0, b("a"), None, 60, b("A"), &mut out);
        q.ready(1, conn(1), 60, vec![b("a"), b("b")], &mut out);
        assert_eq!(out.bytes_for(conn(1)), b"> 1 60 a\r\nA\r\n");
    }

    #[test]
    fn expired_message_is_never_delivered() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.send(0, b("a"), None, 1, b("late"), &mut out);
        assert_eq!(q.next_deadline(), Some(1000));
        q.on_timers(1000, &mut out);
        assert_eq!(q.queued(), 0);
        q.ready(1000, conn(1), 1, vec![b("a")], &mut out);
        assert!(out.frames.is_empty());
        q.on_timers(1999, &mut out);
        assert!(out.frames.is_empty());
        q.on_timers(2000, &mut out);
        assert_eq!(out.bytes_for(conn(1)), b"*\r\n");
        assert_eq!(q.stats().2, 1);
    }

    #[test]
    fn expiry_is_checked_on_delivery_too() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.send(0, b("a"), None, 1, b("late"), &mut out);
        // Timers not yet run, but the deadline has passed.
        q.ready(1500, conn(1), 0, vec![b("a")], &mut out);
        assert_eq!(out.bytes_for(conn(1)), b"*\r\n");
    }

    #[test]
    fn zero_timeouts() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.send(0, b("a"), None, 0, b("x"), &mut out);
        assert_eq!(q.queued(), 0);
        assert!(q.ready(0, conn(1), 0, vec![b("a")], &mut out).is_none());
        assert_eq!(out.bytes_for(conn(1)), b"*\r\n");
    }

    #[test]
    fn cancelled_wait_does_not_swallow_a_message() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        let w = q.ready(0, conn(1), 60, vec![b("a")], &mut out).unwrap();
        q.cancel(w);
        q.send(1, b("a"), None, 60, b("m"), &mut out);
        assert!(out.frames.is_empty());
        q.ready(2, conn(2), 60, vec![b("a")], &mut out);
        assert_eq!(out.bytes_for(conn(2)), b"> 1 60 a\r\nm\r\n");
        // A cancelled wait's timer is ignored.
        q.on_timers(100_000, &mut out);
        assert_eq!(out.frames.len(), 1);
    }

    #[test]
    fn query_reply_routing() {
        let mut q = Queues::new(0xAB);
        let mut out = RecordingOutbox::default();
        assert!(q
            .query(0, conn(1), 30, b("svc"), b("ping"), &mut out)
            .is_some());
        q.ready(1, conn(2), 30, vec![b("svc")], &mut out);
        let got = out.bytes_for(conn(2));
        assert_eq!(got, b"> 4 30 svc AB.1\r\nping\r\n");
        q.send(2, b("AB.1"), None, 30, b("pong"), &mut out);
        assert_eq!(out.bytes_for(conn(1)), b"> 4 30 AB.1\r\npong\r\n");
        assert_eq!(q.unique_address(), b("AB.2"));
    }

    #[test]
    fn a_refusing_waiter_passes_the_message_on() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.ready(0, conn(1), 60, vec![b("a")], &mut out).unwrap();
        q.ready(0, conn(2), 60, vec![b("a")], &mut out).unwrap();
        out.refuse.push(conn(1));
        q.send(1, b("a"), None, 60, b("m"), &mut out);
        assert_eq!(out.bytes_for(conn(2)), b"> 1 60 a\r\nm\r\n");
        // With nobody left to take it, the next one is queued, not lost.
        out.refuse.push(conn(3));
        q.ready(2, conn(3), 60, vec![b("b")], &mut out).unwrap();
        q.send(3, b("b"), None, 60, b("n"), &mut out);
        assert_eq!(q.queued(), 1);
        // And a refused `<` leaves a queued message first in line.
        q.ready(4, conn(3), 60, vec![b("b")], &mut out);
        assert_eq!(q.queued(), 1);
        q.ready(5, conn(4), 60, vec![b("b")], &mut out);
        assert_eq!(out.bytes_for(conn(4)), b"> 1 60 b\r\nn\r\n");
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn timers_of_answered_waits_do_not_pile_up() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for k in 0..100_000 {
            q.ready(0, conn(k), 3600, vec![b("jobs")], &mut out);
            q.send(0, b("jobs"), None, 3600, b("j"), &mut out);
        }
        assert_eq!(q.waiting(), 0);
        assert!(q.timers.len() <= 1024 + 1, "{} timers left", q.timers.len());
    }

    #[test]
    fn expired_messages_behind_a_live_one_are_swept() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.send(0, b("a"), None, 3600, b("long"), &mut out);
        for _ in 0..100 {
            q.send(0, b("a"), None, 1, b("short"), &mut out);
        }
        assert_eq!(q.queued(), 101);
        q.on_timers(1000, &mut out);
        assert_eq!(q.queued(), 1);
        assert_eq!(q.stats().2, 100);
        q.ready(1001, conn(1), 1, vec![b("a")], &mut out);
        assert_eq!(out.bytes_for(conn(1)), b"> 4 3600 a\r\nlong\r\n");
    }

    #[test]
    fn an_address_named_twice_is_forgotten_after_the_answer() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        q.ready(0, conn(1), 60, vec![b("x"), b("x"), b("y")], &mut out)
            .unwrap();
        q.send(1, b("x"), None, 60, b("m"), &mut out);
        assert_eq!(out.frames.len(), 1);
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
        q.send(0, b("big"), None, 60, body.clone(), &mut out);
        q.ready(1, conn(1), 60, vec![b("big")], &mut out);
        let mut want = b"> 100000 60 big\r\n".to_vec();
        want.extend_from_slice(&body);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out.bytes_for(conn(1)), want);
        assert!(out
            .frames
            .iter()
            .any(|(_, f, _)| f.as_ptr() == body.as_ptr()));
    }

    #[test]
    fn stale_entries_are_compacted() {
        let mut q = Queues::new(1);
        let mut out = RecordingOutbox::default();
        for k in 0..1000 {
            q.ready(0, conn(k), 60, vec![b("busy"), b("quiet")], &mut out);
            q.send(0, b("busy"), None, 60, b("m"), &mut out);
        }
        assert!(q
            .addresses
            .get(&b("quiet"))
            .is_none_or(|a| a.waits.len() < 40));
        assert_eq!(q.waiting(), 0);
    }
}
