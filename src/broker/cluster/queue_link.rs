//! Line-protocol queues across nodes: the *queue link* (see
//! docs/cluster.md, "Queues across nodes").
//!
//! A send to an address with no receiver waiting on this node becomes one
//! `EVALSHA` of [`SEND_SCRIPT`] on the queue link: the message joins the
//! address' stream (`QPREFIX + address`, QPREFIX being the cluster prefix
//! with `q` before it, `Q` when the prefix starts with `q`), the stream's
//! expiry is made at least the message's timeout, and a notification is
//! published on the channel of the same name. A node with receivers
//! waiting on an address subscribes to that channel (on the subscriber
//! link) while it has them, and takes messages for them with
//! [`TAKE_SCRIPT`], which reads and deletes up to as many entries as the
//! node has receivers there, dropping the expired ones. The notification
//! names never start with the cluster prefix: no channel of the node and
//! no pattern subscription (`PREFIX*`) can meet them.
//!
//! Replies on the queue link are matched in order against [`QCmd`]s, a
//! FIFO of what each command was for.

use std::collections::{HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use super::resp::{self, Frame};
use super::{Cluster, Link, State};
use crate::broker::queues::{Queues, MAX_TIMEOUT_S};
use crate::broker::{Delivery, Millis, Outbox};

/// The most entries one take asks for (a reply holds 4 per entry, and 3
/// more elements).
pub const MAX_TAKE: usize = 32;
/// Entries an address' stream keeps at most (about: `MAXLEN ~`); older
/// ones are trimmed, counted under `queue_trimmed`.
pub const STREAM_MAXLEN: u64 = 100_000;
/// Entries one take looks at, at most (expired ones included).
const TAKE_SCAN: u64 = 1_000;
/// How often addresses whose receivers have gone are unsubscribed: one
/// that had none at two sweeps in a row.
pub const SWEEP_MS: Millis = 1_000;

/// `KEYS[1]` the stream; `ARGV`: the notification channel, the timeout in
/// ms, the timeout in seconds (as sent), the reply address (`+ADDR`, or
/// `-`), the body, the stream's bound. Returns the entries trimmed.
pub const SEND_SCRIPT: &str = r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('XADD', KEYS[1], '*', 'd', tostring(now + ttl), 't', ARGV[3], 'r', ARGV[4], 'b', ARGV[5])
local trimmed = redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[6])
local left = redis.call('PTTL', KEYS[1])
if left < ttl + 1000 then redis.call('PEXPIRE', KEYS[1], ttl + 1000) end
redis.call('PUBLISH', ARGV[1], '1')
return trimmed";

/// `KEYS[1]` the stream; `ARGV`: how many live entries to take, how many
/// entries to look at. Deletes what it looks at; returns `{expired, more,
/// left_ms, timeout_s, reply, body, …}` (`more`: 1 when it stopped at the
/// look-at bound).
pub const TAKE_SCRIPT: &str = r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want = tonumber(ARGV[1])
local budget = tonumber(ARGV[2])
local out = {0, 0}
local live = 0
while live < want do
  if budget <= 0 then out[2] = 1 break end
  local es = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(want - live, budget))
  if #es == 0 then break end
  for _, e in ipairs(es) do
    budget = budget - 1
    redis.call('XDEL', KEYS[1], e[1])
    local m = {}
    for i = 1, #e[2], 2 do m[e[2][i]] = e[2][i + 1] end
    local left = (tonumber(m['d']) or 0) - now
    if left > 0 and m['t'] and m['r'] and m['b'] then
      live = live + 1
      out[#out + 1] = left
      out[#out + 1] = m['t']
      out[#out + 1] = m['r']
      out[#out + 1] = m['b']
    else
      out[1] = out[1] + 1
    end
  end
end
return out";

/// What a command on the queue link was for (its answer is matched in
/// order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum QCmd {
    /// `AUTH` or `PING`, first.
    Hello,
    /// `SELECT DB` (a database other than 0).
    Select,
    /// `SCRIPT LOAD` of the send (0) or take (1) script.
    Load(usize),
    /// A message sent to this address' stream (`bytes` of command).
    Send { addr: Bytes, bytes: usize },
    /// A take of up to `count` entries of this address' stream.
    Take { addr: Bytes, count: usize },
    /// A message-switch command (see [`super::switch_link`]).
    Switch(Box<super::switch_link::SwCmd>),
}

/// Whether the node listens for an address' notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Listen {
    No,
    /// `SUBSCRIBE` written, not confirmed.
    Asked,
    Yes,
}

/// An address the queue link is busy with, or listens for.
#[derive(Debug)]
pub(super) struct Watch {
    /// Sends to its stream written and not yet answered.
    sends: u32,
    /// A take is in flight.
    taking: bool,
    /// Something may have arrived since the take in flight was asked.
    again: bool,
    listen: Listen,
    /// `SUBSCRIBE`s and `UNSUBSCRIBE`s of its channel not yet confirmed:
    /// it is listened for once the last of them, a `SUBSCRIBE`, is.
    acks: u32,
    /// No receiver was waiting at the last sweep.
    idle: bool,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            sends: 0,
            taking: false,
            again: false,
            listen: Listen::No,
            acks: 0,
            idle: false,
        }
    }
}

/// An entry taken from a stream, to hand to a receiver here.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Arrived {
    pub addr: Bytes,
    pub left_ms: Millis,
    pub timeout_s: u64,
    pub reply: Option<Bytes>,
    pub body: Bytes,
}

/// The queue link's state (a part of [`Cluster`]).
#[derive(Default)]
pub(super) struct QueueState {
    pub fifo: VecDeque<QCmd>,
    /// Bytes of sends written and not yet answered.
    pub pending_bytes: usize,
    /// The scripts' SHA1s, as `SCRIPT LOAD` answered them: the send and
    /// take scripts, then the switch's ([`super::switch_link::scripts`]).
    pub sha: [Option<Bytes>; 9],
    pub watches: HashMap<Bytes, Watch>,
    /// Addresses to look at in the next pump (may repeat).
    pub wake: Vec<Bytes>,
    /// Entries taken, to hand over in the next pump.
    pub arrived: VecDeque<Arrived>,
    /// Notification channels Redis has confirmed on the subscriber link.
    pub notify_confirmed: u64,
    /// The next sweep of idle addresses, while some are watched.
    pub sweep_at: Option<Millis>,
    /// The message-switch queues' part.
    pub sw: super::switch_link::SwitchState,
}

/// The queue namespace: the cluster prefix with `q` before it (`Q` when
/// the prefix starts with `q`), so that it never starts with the prefix.
pub fn queue_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(prefix.len() + 1);
    q.push(if prefix.first() == Some(&b'q') {
        b'Q'
    } else {
        b'q'
    });
    q.extend_from_slice(prefix);
    q
}

/// Reads a take's answer: (expired, more, entries) for `addr`; `None`
/// when it is not of that form.
pub(super) fn parse_take(addr: &Bytes, frame: &Frame) -> Option<(u64, bool, Vec<Arrived>)> {
    let Frame::Array(Some(items)) = frame else {
        return None;
    };
    let int = |f: &Frame| match f {
        Frame::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let expired = int(items.first()?)?;
    let more = int(items.get(1)?)? != 0;
    let rest = items.get(2..)?;
    if rest.len() % 4 != 0 || rest.len() / 4 > MAX_TAKE {
        return None;
    }
    let mut entries = Vec::with_capacity(rest.len() / 4);
    for e in rest.chunks(4) {
        let [left, t, r, b] = e else {
            return None;
        };
        let left_ms = int(left)?;
        let timeout_s: u64 = std::str::from_utf8(t.as_bytes()?).ok()?.parse().ok()?;
        let r = r.as_bytes()?;
        let reply = match r.first() {
            Some(b'+') if r.len() > 1 => Some(r.slice(1..)),
            Some(b'-') if r.len() == 1 => None,
            _ => return None,
        };
        entries.push(Arrived {
            addr: addr.clone(),
            left_ms,
            timeout_s,
            reply,
            body: b.as_bytes()?.clone(),
        });
    }
    Some((expired, more, entries))
}

impl Cluster {
    /// The queue link is up: sends may go through Redis.
    pub fn queues_up(&self) -> bool {
        self.is_on() && matches!(queue_of(&self.links).state, State::Up(_))
    }

    /// The queue link's first commands, after the connect: `AUTH` or
    /// `PING`, `SELECT` for a database other than 0, the scripts.
    pub(super) fn queue_hello(&mut self) {
        let Some(s) = &self.settings else {
            return;
        };
        let (auth, db) = (s.auth.clone(), s.db);
        self.q = QueueState {
            watches: std::mem::take(&mut self.q.watches),
            notify_confirmed: self.q.notify_confirmed,
            sweep_at: self.q.sweep_at,
            sw: std::mem::take(&mut self.q.sw),
            ..QueueState::default()
        };
        let link = queue_of_mut(&mut self.links);
        super::hello_command(&mut link.out, auth.as_ref());
        self.q.fifo.push_back(QCmd::Hello);
        if db != 0 {
            resp::command(&mut link.out, &[b"SELECT", db.to_string().as_bytes()]);
            self.q.fifo.push_back(QCmd::Select);
        }
        let switch = super::switch_link::scripts();
        let all = [SEND_SCRIPT, TAKE_SCRIPT]
            .into_iter()
            .chain(switch.iter().map(String::as_str));
        for (i, script) in all.enumerate() {
            resp::command(&mut link.out, &[b"SCRIPT", b"LOAD", script.as_bytes()]);
            self.q.fifo.push_back(QCmd::Load(i));
        }
    }

    /// The queue link went down: nothing in flight will be answered.
    pub(super) fn queue_down(&mut self) {
        let lost = self
            .q
            .fifo
            .iter()
            .filter(|c| matches!(c, QCmd::Send { .. }))
            .count() as u64;
        if lost > 0 {
            self.stats.queue_unconfirmed += lost;
            log::warn!(
                "cluster: the queue link went down with {lost} sends unanswered; each reached Redis or was lost"
            );
        }
        let fifo: Vec<QCmd> = self.q.fifo.drain(..).collect();
        self.switch_down(&fifo);
        self.q.pending_bytes = 0;
        self.q.arrived.clear();
        for w in self.q.watches.values_mut() {
            w.sends = 0;
            w.taking = false;
            w.again = false;
        }
        self.q
            .watches
            .retain(|_, w| w.listen != Listen::No || w.acks > 0);
    }

    /// An answer on the queue link. False: the link is out of step with
    /// its commands (or refused this node), close it.
    pub(super) fn queue_answer(&mut self, frame: Frame, now: Millis) -> bool {
        let Some(cmd) = self.q.fifo.pop_front() else {
            log::warn!("cluster: Redis answered the queue link more than was asked; closing it");
            self.stats.errors += 1;
            return false;
        };
        let hello = matches!(cmd, QCmd::Hello | QCmd::Select | QCmd::Load(_));
        if let Frame::Error(e) = &frame {
            self.stats.errors += 1;
            let e = String::from_utf8_lossy(e);
            if hello {
                let link = queue_of(&self.links);
                if link.backoff == super::BACKOFF_MIN || link.backoff >= super::BACKOFF_MAX {
                    log::warn!(
                        "cluster: Redis at {} refused the queue link: {e}; retrying in {} ms",
                        self.address(),
                        link.backoff
                    );
                }
                return false;
            }
            if e.starts_with("NOSCRIPT") {
                log::warn!(
                    "cluster: Redis lost the queue scripts ({e}); the queue link reconnects"
                );
                if let QCmd::Switch(c) = cmd {
                    self.switch_answer(*c, frame);
                }
                return false;
            }
            // The first, then at each power of two: a key of another
            // kind under the queue namespace answers every send alike.
            if self.stats.errors.is_power_of_two() {
                log::warn!(
                    "cluster: Redis answered the queue link with an error: {e} ({} errors so far)",
                    self.stats.errors
                );
            }
        }
        match cmd {
            QCmd::Hello | QCmd::Select => {}
            QCmd::Load(i) => {
                let sha = frame.as_bytes().filter(|s| s.len() == 40).cloned();
                if sha.is_none() {
                    log::warn!("cluster: Redis answered SCRIPT LOAD with {frame:?}; closing the queue link");
                    self.stats.errors += 1;
                    return false;
                }
                if let Some(slot) = self.q.sha.get_mut(i) {
                    *slot = sha;
                }
            }
            QCmd::Send { addr, bytes } => {
                self.q.pending_bytes = self.q.pending_bytes.saturating_sub(bytes);
                match frame {
                    Frame::Integer(n) => {
                        self.stats.queue_trimmed += u64::try_from(n).unwrap_or(0);
                    }
                    Frame::Error(_) => {}
                    other => {
                        self.stats.errors += 1;
                        log::warn!("cluster: Redis answered a queue send with {other:?}");
                    }
                }
                if let Some(w) = self.q.watches.get_mut(&addr) {
                    w.sends = w.sends.saturating_sub(1);
                }
                self.forget_watch(&addr);
            }
            QCmd::Take { addr, count } => {
                let again = match self.q.watches.get_mut(&addr) {
                    Some(w) => {
                        w.taking = false;
                        std::mem::take(&mut w.again)
                    }
                    None => false,
                };
                let mut wake = again;
                if !matches!(frame, Frame::Error(_)) {
                    match parse_take(&addr, &frame) {
                        Some((expired, more, entries)) => {
                            self.stats.queue_expired += expired;
                            self.stats.queue_read += entries.len() as u64;
                            wake |= more || entries.len() >= count;
                            self.q.arrived.extend(entries);
                        }
                        None => {
                            self.stats.errors += 1;
                            log::warn!(
                                "cluster: Redis answered a queue take with what is not a take's answer; dropped"
                            );
                        }
                    }
                }
                if wake {
                    self.q.wake.push(addr.clone());
                }
                self.forget_watch(&addr);
            }
            QCmd::Switch(c) => self.switch_answer(*c, frame),
        }
        if hello && self.q.fifo.is_empty() {
            return self.queue_link_ready(now);
        }
        true
    }

    /// The last answer of the queue link's hello came: it is up.
    fn queue_link_ready(&mut self, now: Millis) -> bool {
        let link = queue_of_mut(&mut self.links);
        let State::Hello(conn) = link.state else {
            return true;
        };
        link.state = State::Up(conn);
        link.backoff = super::BACKOFF_MIN;
        let gap = link.down_since.take().map(|t| now.saturating_sub(t));
        log::info!(
            "cluster: queue link up{}",
            gap.map_or(String::new(), |ms| format!(" again after {ms} ms"))
        );
        // What arrived while it was down: a take for every watched address.
        let watched: Vec<Bytes> = self.q.watches.keys().cloned().collect();
        self.q.wake.extend(watched);
        self.switch_link_ready(now);
        if self.is_up() {
            self.joined_log();
        }
        true
    }

    /// Drops the record of an address nothing is pending or listening for.
    fn forget_watch(&mut self, addr: &[u8]) {
        if self
            .q
            .watches
            .get(addr)
            .is_some_and(|w| w.sends == 0 && !w.taking && w.listen == Listen::No && w.acks == 0)
        {
            self.q.watches.remove(addr);
        }
    }

    /// True while a send or take of `addr` is in flight on the queue link,
    /// or a take is to follow a subscription: a send to it then goes
    /// through Redis too, behind them, even with a receiver waiting here,
    /// so that one sender's messages keep their order.
    pub fn queue_busy(&self, addr: &[u8]) -> bool {
        self.q
            .watches
            .get(addr)
            .is_some_and(|w| w.sends > 0 || w.taking || w.listen == Listen::Asked)
    }

    /// Sends a message through Redis: false when the queue link is down or
    /// over its pending bytes (then the message stays on this node,
    /// counted under `queue_local`).
    pub fn queue_send(
        &mut self,
        to: &Bytes,
        reply: Option<&[u8]>,
        timeout_s: u64,
        body: &[u8],
    ) -> bool {
        let Some(s) = &self.settings else {
            return false;
        };
        let link = queue_of_mut(&mut self.links);
        let (State::Up(_), Some(sha)) = (link.state, self.q.sha[0].as_ref()) else {
            self.note_local(to, "the queue link to Redis is down");
            return false;
        };
        let size = body.len() + to.len() * 2 + reply.map_or(0, <[u8]>::len) + 256;
        if self.q.pending_bytes + size > s.max_pending {
            self.note_local(to, "Redis is behind");
            return false;
        }
        let qp = queue_prefix(&s.prefix);
        let ms = (timeout_s.min(MAX_TIMEOUT_S) * 1000).to_string();
        let secs = timeout_s.to_string();
        let maxlen = STREAM_MAXLEN.to_string();
        let buf = &mut link.out;
        let before = buf.len();
        resp::header(buf, b'*', 10);
        for a in [&b"EVALSHA"[..], sha, b"1"] {
            bulk(buf, &[a]);
        }
        bulk(buf, &[&qp, to]);
        bulk(buf, &[&qp, to]);
        bulk(buf, &[ms.as_bytes()]);
        bulk(buf, &[secs.as_bytes()]);
        match reply {
            Some(r) => bulk(buf, &[b"+", r]),
            None => bulk(buf, &[b"-"]),
        }
        bulk(buf, &[body]);
        bulk(buf, &[maxlen.as_bytes()]);
        let bytes = buf.len() - before;
        self.q.pending_bytes += bytes;
        self.q.fifo.push_back(QCmd::Send {
            addr: to.clone(),
            bytes,
        });
        let w = self.q.watches.entry(to.clone()).or_insert_with(Watch::new);
        w.sends += 1;
        self.stats.queue_sent += 1;
        true
    }

    fn note_local(&mut self, to: &[u8], why: &str) {
        self.stats.queue_local += 1;
        if self.stats.queue_local.is_power_of_two() {
            log::warn!(
                "cluster: a message to {} stays on this node ({why}); {} so far",
                String::from_utf8_lossy(to),
                self.stats.queue_local
            );
        }
    }

    /// Receivers began waiting on `addresses` here, with nothing queued
    /// here for them: the node listens for them and takes what Redis has.
    pub fn queue_wanted(&mut self, addresses: &[Bytes]) {
        if !self.is_on() {
            return;
        }
        for a in addresses {
            let w = self.q.watches.entry(a.clone()).or_insert_with(Watch::new);
            w.idle = false;
            self.q.wake.push(a.clone());
        }
    }

    /// A notification (or a confirmed subscription) for the channel `ch`
    /// of the subscriber link; false when `ch` is not a queue's.
    pub(super) fn queue_notified(&mut self, ch: &[u8], confirmed: Option<bool>) -> bool {
        let Some(s) = &self.settings else {
            return false;
        };
        let qp = queue_prefix(&s.prefix);
        let Some(addr) = ch.strip_prefix(&qp[..]) else {
            return false;
        };
        if let Some(on) = confirmed {
            if on {
                self.q.notify_confirmed += 1;
            } else {
                self.q.notify_confirmed = self.q.notify_confirmed.saturating_sub(1);
            }
            if let Some(w) = self.q.watches.get_mut(addr) {
                w.acks = w.acks.saturating_sub(1);
                if w.acks == 0 && w.listen == Listen::Asked {
                    w.listen = Listen::Yes;
                }
            }
            if !on {
                self.forget_watch(addr);
                return true;
            }
        }
        if self.q.watches.contains_key(addr) {
            self.q.wake.push(Bytes::copy_from_slice(addr));
        }
        true
    }

    /// The subscriber link came back (or went): every watched address is
    /// listened for again.
    pub(super) fn queue_resubscribe(&mut self) {
        for (addr, w) in &mut self.q.watches {
            w.listen = Listen::No;
            w.acks = 0;
            self.q.wake.push(addr.clone());
        }
        self.q.notify_confirmed = 0;
        self.switch_resubscribe();
    }

    /// Hands over what was taken, subscribes and takes for addresses with
    /// receivers waiting (see [`Cluster::queue_wanted`]).
    pub fn pump(&mut self, now: Millis, queues: &mut Queues, out: &mut (impl Outbox + ?Sized)) {
        if !self.is_on() {
            return;
        }
        while let Some(a) = self.q.arrived.pop_front() {
            let d = Delivery {
                to: &a.addr,
                reply: a.reply.as_deref(),
                timeout_s: a.timeout_s,
                body: &a.body,
            };
            if queues.hand_remote(d, out) {
                continue;
            }
            // The receiver went away meanwhile: kept here, for this node's
            // receivers, for the time it had left.
            self.stats.queue_kept += 1;
            if !queues.keep_remote(now, a.addr, a.reply, a.timeout_s, a.left_ms, a.body) {
                self.stats.queue_local_full += 1;
            }
        }
        let mut wake = std::mem::take(&mut self.q.wake);
        wake.sort_unstable();
        wake.dedup();
        let Some(s) = &self.settings else {
            return;
        };
        let qp = queue_prefix(&s.prefix);
        let sub_up = matches!(sub_of(&self.links).state, State::Up(_));
        let queue_up = matches!(queue_of(&self.links).state, State::Up(_));
        for addr in wake {
            let waiting = queues.waiters_on(&addr);
            let Some(w) = self.q.watches.get_mut(&addr) else {
                continue;
            };
            if waiting == 0 {
                continue;
            }
            if w.listen == Listen::No {
                if sub_up {
                    let buf = &mut sub_of_mut(&mut self.links).out;
                    resp::header(buf, b'*', 2);
                    bulk(buf, &[b"SUBSCRIBE"]);
                    bulk(buf, &[&qp, &addr]);
                    w.listen = Listen::Asked;
                    w.acks += 1;
                }
                // The take follows the confirmation: whatever Redis gets
                // after it is notified, whatever it had before is taken.
                continue;
            }
            if w.listen == Listen::Asked || !queue_up {
                continue;
            }
            if w.taking {
                w.again = true;
                continue;
            }
            let Some(sha) = self.q.sha[1].as_ref() else {
                continue;
            };
            let count = waiting.min(MAX_TAKE);
            let buf = &mut queue_of_mut(&mut self.links).out;
            resp::header(buf, b'*', 6);
            for a in [&b"EVALSHA"[..], sha, b"1"] {
                bulk(buf, &[a]);
            }
            bulk(buf, &[&qp, &addr]);
            bulk(buf, &[count.to_string().as_bytes()]);
            bulk(buf, &[TAKE_SCAN.to_string().as_bytes()]);
            w.taking = true;
            self.q.fifo.push_back(QCmd::Take { addr, count });
        }
        if self.q.sweep_at.is_none() && !self.q.watches.is_empty() {
            self.q.sweep_at = Some(now + SWEEP_MS);
        }
        self.flush(out);
    }

    /// Unsubscribes from addresses without receivers at two sweeps in a
    /// row.
    pub fn sweep(&mut self, now: Millis, queues: &Queues, out: &mut (impl Outbox + ?Sized)) {
        let Some(s) = &self.settings else {
            return;
        };
        if self.q.sweep_at.is_none_or(|at| at > now) {
            return;
        }
        let qp = queue_prefix(&s.prefix);
        let sub_up = matches!(sub_of(&self.links).state, State::Up(_));
        let mut gone = Vec::new();
        for (addr, w) in &mut self.q.watches {
            if queues.waiters_on(addr) > 0 {
                w.idle = false;
                continue;
            }
            if !w.idle {
                w.idle = true;
                continue;
            }
            if w.listen != Listen::No {
                if sub_up {
                    let buf = &mut sub_of_mut(&mut self.links).out;
                    resp::header(buf, b'*', 2);
                    bulk(buf, &[b"UNSUBSCRIBE"]);
                    bulk(buf, &[&qp, addr]);
                    w.acks += 1;
                }
                w.listen = Listen::No;
            }
            if w.sends == 0 && !w.taking && w.acks == 0 {
                gone.push(addr.clone());
            }
        }
        for addr in gone {
            self.q.watches.remove(&addr);
        }
        self.q.sweep_at = (!self.q.watches.is_empty()).then_some(now + SWEEP_MS);
        self.flush(out);
    }

    /// Addresses watched (listened for, or with commands in flight).
    pub fn queue_watches(&self) -> usize {
        self.q.watches.len()
    }

    /// Addresses whose notifications Redis has confirmed.
    pub fn queue_listening(&self) -> usize {
        self.q
            .watches
            .values()
            .filter(|w| w.listen == Listen::Yes)
            .count()
    }

    /// Commands on the queue link not yet answered.
    pub fn queue_in_flight(&self) -> usize {
        self.q.fifo.len()
    }
}

/// The queue link's state.
pub(super) fn queue_state(links: &[Link; 3]) -> State {
    queue_of(links).state
}

/// Where commands for the queue link are written.
pub(super) fn queue_out(links: &mut [Link; 3]) -> &mut BytesMut {
    &mut queue_of_mut(links).out
}

fn queue_of(links: &[Link; 3]) -> &Link {
    let [_, _, q] = links;
    q
}

fn queue_of_mut(links: &mut [Link; 3]) -> &mut Link {
    let [_, _, q] = links;
    q
}

fn sub_of(links: &[Link; 3]) -> &Link {
    let [s, _, _] = links;
    s
}

fn sub_of_mut(links: &mut [Link; 3]) -> &mut Link {
    let [s, _, _] = links;
    s
}

/// One bulk string made of `parts`.
fn bulk(buf: &mut BytesMut, parts: &[&[u8]]) {
    resp::header(buf, b'$', parts.iter().map(|p| p.len()).sum());
    for p in parts {
        buf.put_slice(p);
    }
    buf.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bulk, confirm, conn, pong, sent_to, up};
    use super::*;
    use crate::broker::{Broker, Ready, RecordingOutbox};

    const SUB: u64 = 1 << 2;
    const QUEUE: u64 = 1 << 2 | 2;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// A broker whose three cluster links are up (queue link: conn 110,
    /// subscriber link: conn 100).
    fn broker(out: &mut RecordingOutbox) -> Broker {
        Broker {
            cluster: up(out),
            ..Broker::default()
        }
    }

    fn take_answer(entries: &[(u64, &str, Option<&str>, &str)], expired: i64) -> Frame {
        let mut items = vec![Frame::Integer(expired), Frame::Integer(0)];
        for (left, t, r, body) in entries {
            items.push(Frame::Integer(*left as i64));
            items.push(bulk(t.as_bytes()));
            items.push(bulk(
                r.map_or("-".to_string(), |r| format!("+{r}")).as_bytes(),
            ));
            items.push(bulk(body.as_bytes()));
        }
        Frame::Array(Some(items))
    }

    /// No take goes out on the queue link (conn 110) for `qsb:a` until the
    /// subscriber link (`link`) confirms its subscription; then one does.
    /// A receiver (conn 1) that waits on `a`: its subscription confirmed,
    /// its first take found nothing. Its wait.
    fn confirmed_wait(br: &mut Broker, out: &mut RecordingOutbox) -> crate::broker::WaitId {
        let Ready::Waiting(w) = br.ready(0, conn(1), 30, vec![b("a")], out) else {
            panic!("not waiting")
        };
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:a", 1), 0, out));
        assert!(br.cluster_frame(QUEUE, take_answer(&[], 0), 0, out));
        w
    }

    fn takes_once_subscribed(br: &mut Broker, link: u64, now: Millis, out: &mut RecordingOutbox) {
        assert!(
            sent_to(out, 110).is_empty(),
            "no take before the subscription"
        );
        assert!(br.cluster_frame(link, confirm("subscribe", "qsb:a", 1), now, out));
        assert_eq!(br.cluster.queue_listening(), 1);
        assert!(sent_to(out, 110).contains("qsb:a"));
    }

    #[test]
    fn the_queue_namespace_never_starts_with_the_prefix() {
        assert_eq!(queue_prefix(b"switchboard:"), b"qswitchboard:");
        assert_eq!(queue_prefix(b"q:"), b"Qq:");
        assert_eq!(queue_prefix(b"qqq"), b"Qqqq");
        for p in [&b"sb:"[..], b"q", b"qq:", b"Q"] {
            assert!(!queue_prefix(p).starts_with(p));
        }
    }

    #[test]
    fn take_answers_are_read_and_junk_is_refused() {
        let addr = b("jobs");
        let good = take_answer(&[(500, "30", Some("back"), "one"), (9, "1", None, "")], 2);
        let (expired, more, entries) = parse_take(&addr, &good).unwrap();
        assert_eq!((expired, more, entries.len()), (2, false, 2));
        assert_eq!(
            entries[0],
            Arrived {
                addr: addr.clone(),
                left_ms: 500,
                timeout_s: 30,
                reply: Some(b("back")),
                body: b("one"),
            }
        );
        assert_eq!(entries[1].reply, None);
        let junk = [
            Frame::Integer(1),
            Frame::Array(None),
            Frame::Array(Some(vec![Frame::Integer(0)])),
            Frame::Array(Some(vec![
                Frame::Integer(0),
                Frame::Integer(0),
                Frame::Integer(1),
            ])),
            Frame::Array(Some(vec![Frame::Integer(-1), Frame::Integer(0)])),
            take_answer(&[(5, "x", None, "b")], 0),
            take_answer(&[(5, "1", Some(""), "b")], 0),
        ];
        for (i, j) in junk.iter().enumerate() {
            assert!(parse_take(&addr, j).is_none(), "{i}: {j:?}");
        }
        // A reply marker other than `+` or a lone `-`.
        let mut items = vec![Frame::Integer(0), Frame::Integer(0)];
        items.extend([Frame::Integer(1), bulk(b"1"), bulk(b"-x"), bulk(b"b")]);
        assert!(parse_take(&addr, &Frame::Array(Some(items))).is_none());
        // More entries than a take asks for.
        let many: Vec<(u64, &str, Option<&str>, &str)> =
            (0..=MAX_TAKE).map(|_| (1, "1", None, "")).collect();
        assert!(parse_take(&addr, &take_answer(&many, 0)).is_none());
    }

    #[test]
    fn a_send_goes_to_redis_and_a_receiver_here_takes_it_in_order() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        br.send(0, b("jobs"), Some(b("back")), 30, b("one"), &mut out)
            .unwrap();
        br.seal(&mut out);
        let sha = "a".repeat(40);
        assert_eq!(
            sent_to(&out, 110),
            format!(
                "*10\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n1\r\n$8\r\nqsb:jobs\r\n$8\r\nqsb:jobs\r\n$5\r\n30000\r\n$2\r\n30\r\n$5\r\n+back\r\n$3\r\none\r\n$6\r\n100000\r\n"
            )
        );
        assert!(br.cluster.queue_busy(b"jobs"));
        assert_eq!(br.cluster.stats().queue_sent, 1);
        assert_eq!(br.stats().queued_in, 1);
        // A receiver comes here: the node listens for the address first.
        let mut out = RecordingOutbox::default();
        let w = br.ready(0, conn(1), 30, vec![b("jobs")], &mut out);
        assert!(matches!(w, Ready::Waiting(_)));
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$9\r\nSUBSCRIBE\r\n$8\r\nqsb:jobs\r\n"
        );
        assert!(
            sent_to(&out, 110).is_empty(),
            "no take before the subscription"
        );
        // A second send while the first is in flight goes behind it, not
        // to the receiver here.
        br.send(0, b("jobs"), None, 30, b("two"), &mut out).unwrap();
        br.seal(&mut out);
        assert!(out.answers.is_empty());
        assert_eq!(br.cluster.stats().queue_sent, 2);
        assert!(br.cluster_frame(QUEUE, Frame::Integer(0), 0, &mut out));
        assert!(br.cluster_frame(QUEUE, Frame::Integer(3), 0, &mut out));
        assert_eq!(br.cluster.stats().queue_trimmed, 3);
        // Subscribed: the take follows; the notification channel is not
        // counted among the confirmed subscriptions.
        let mut out = RecordingOutbox::default();
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:jobs", 1), 0, &mut out));
        assert_eq!(br.cluster.stats().confirmed, 0);
        let sha = "b".repeat(40);
        assert_eq!(
            sent_to(&out, 110),
            format!("*6\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n1\r\n$8\r\nqsb:jobs\r\n$1\r\n1\r\n$4\r\n1000\r\n")
        );
        // A notification while the take is in flight: one more take after.
        let note = Frame::Array(Some(vec![bulk(b"message"), bulk(b"qsb:jobs"), bulk(b"1")]));
        assert!(br.cluster_frame(SUB, note, 0, &mut out));
        let answer = take_answer(&[(29_000, "30", Some("back"), "one")], 1);
        let mut out = RecordingOutbox::default();
        assert!(br.cluster_frame(QUEUE, answer, 10, &mut out));
        assert_eq!(
            out.answers_for(conn(1)),
            [Some((b("jobs"), Some(b("back")), 30, b("one")))]
        );
        let s = br.cluster.stats();
        assert_eq!((s.queue_read, s.queue_expired), (1, 1));
        assert_eq!(br.stats().queued_out, 1);
        // Nobody waits now: no take, though one was due.
        assert!(sent_to(&out, 110).is_empty());
        // The next receiver's take brings "two", but it went away before
        // the answer: "two" is kept here for the time it had left.
        let mut out = RecordingOutbox::default();
        let Ready::Waiting(w) = br.ready(10, conn(2), 30, vec![b("jobs")], &mut out) else {
            panic!("not waiting")
        };
        assert!(sent_to(&out, 110).contains("qsb:jobs"));
        br.cancel(w);
        let answer = take_answer(&[(500, "30", None, "two")], 0);
        assert!(br.cluster_frame(QUEUE, answer, 20, &mut out));
        assert_eq!(br.cluster.stats().queue_kept, 1);
        assert_eq!(br.queues.queued(), 1);
        assert!(!br.cluster.queue_busy(b"jobs"));
        // A receiver here takes it before its time is up, not after.
        let mut out = RecordingOutbox::default();
        match br.ready(400, conn(3), 30, vec![b("jobs")], &mut out) {
            Ready::Message(m) => assert_eq!(m.body, b("two")),
            other => panic!("{other:?}"),
        }
        br.send(400, b("jobs"), None, 30, b("three"), &mut out)
            .unwrap();
        let answer = take_answer(&[(100, "30", None, "three")], 0);
        assert!(br.cluster_frame(QUEUE, Frame::Integer(0), 400, &mut out));
        let Ready::Waiting(w) = br.ready(400, conn(4), 30, vec![b("jobs")], &mut out) else {
            panic!("not waiting")
        };
        br.cancel(w);
        assert!(br.cluster_frame(QUEUE, answer, 400, &mut out));
        assert_eq!(br.queues.queued(), 1);
        let mut out = RecordingOutbox::default();
        assert!(matches!(
            br.ready(500, conn(5), 30, vec![b("jobs")], &mut out),
            Ready::Waiting(_)
        ));
    }

    #[test]
    fn a_receiver_here_takes_a_send_at_once_when_nothing_is_in_flight() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        assert!(matches!(
            br.ready(0, conn(1), 30, vec![b("here")], &mut out),
            Ready::Waiting(_)
        ));
        // Sent before the subscription is confirmed: the take to come may
        // bring an earlier message of the same sender, so this one goes
        // behind it, through Redis.
        br.send(0, b("here"), None, 30, b("early"), &mut out)
            .unwrap();
        br.seal(&mut out);
        assert!(out.answers.is_empty());
        assert!(sent_to(&out, 110).contains("EVALSHA"));
        assert!(br.cluster_frame(QUEUE, Frame::Integer(0), 0, &mut out));
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:here", 1), 0, &mut out));
        let early = take_answer(&[(30_000, "30", None, "early")], 0);
        assert!(br.cluster_frame(QUEUE, early, 0, &mut out));
        assert_eq!(
            out.answers_for(conn(1)),
            [Some((b("here"), None, 30, b("early")))]
        );
        // Waiting again, with the subscription confirmed and nothing in
        // flight once the take is answered: the next send is handed over
        // here.
        assert!(matches!(
            br.ready(0, conn(1), 30, vec![b("here")], &mut out),
            Ready::Waiting(_)
        ));
        assert!(br.cluster_frame(QUEUE, take_answer(&[], 0), 0, &mut out));
        let mut out = RecordingOutbox::default();
        br.send(0, b("here"), None, 30, b("x"), &mut out).unwrap();
        br.seal(&mut out);
        assert_eq!(
            out.answers_for(conn(1)),
            [Some((b("here"), None, 30, b("x")))]
        );
        assert!(sent_to(&out, 110).is_empty());
        assert_eq!(br.cluster.stats().queue_sent, 1);
        // Without receivers at two sweeps in a row, the node stops
        // listening for it, and forgets it once Redis confirms.
        br.on_timers(SWEEP_MS, &mut out);
        assert!(sent_to(&out, 100).is_empty());
        br.on_timers(2 * SWEEP_MS, &mut out);
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$11\r\nUNSUBSCRIBE\r\n$8\r\nqsb:here\r\n"
        );
        assert_eq!(br.cluster.queue_watches(), 1);
        assert!(br.cluster_frame(SUB, confirm("unsubscribe", "qsb:here", 0), 0, &mut out));
        assert_eq!(br.cluster.queue_watches(), 0);
        assert_eq!(br.cluster.next_deadline(), Some(3 * SWEEP_MS));
        br.on_timers(3 * SWEEP_MS, &mut out);
        assert_eq!(br.cluster.next_deadline(), None);
    }

    #[test]
    fn sends_stay_here_while_the_link_is_down_or_behind_and_are_counted() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        // Over the pending bytes (1024 in these settings): the second stays.
        let big = Bytes::from(vec![b'x'; 600]);
        br.send(0, b("a"), None, 30, big.clone(), &mut out).unwrap();
        br.send(0, b("a"), None, 30, big.clone(), &mut out).unwrap();
        let s = br.cluster.stats();
        assert_eq!((s.queue_sent, s.queue_local), (1, 1));
        assert_eq!(br.queues.queued(), 1);
        // The link goes with the first unanswered: counted as unconfirmed.
        br.cluster.link_closed(QUEUE, 5);
        assert!(!br.cluster.queue_busy(b"a"));
        assert!(!br.cluster.is_up());
        let s = br.cluster.stats();
        assert_eq!((s.queue_unconfirmed, s.queue_up), (1, false));
        br.send(5, b("a"), None, 30, b("y"), &mut out).unwrap();
        assert_eq!(br.cluster.stats().queue_local, 2);
        assert_eq!(br.queues.queued(), 2);
        // A timeout of 0 never goes to Redis.
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        br.send(0, b("a"), None, 0, b("z"), &mut out).unwrap();
        br.seal(&mut out);
        assert!(sent_to(&out, 110).is_empty());
        assert_eq!(br.stats().expired, 1);
    }

    #[test]
    fn answers_out_of_step_or_unreadable_are_errors_never_panics() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        // An answer nobody asked for: the link closes.
        assert!(!br.cluster_frame(QUEUE, Frame::Integer(0), 0, &mut out));
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        assert!(matches!(
            br.ready(0, conn(1), 30, vec![b("q")], &mut out),
            Ready::Waiting(_)
        ));
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:q", 1), 0, &mut out));
        // A take answered with junk: counted, the link stays.
        assert!(br.cluster_frame(QUEUE, bulk(b"junk"), 0, &mut out));
        assert_eq!(br.cluster.stats().errors, 1);
        // An error answer to a send: counted, the link stays.
        br.send(0, b("other"), None, 30, b("x"), &mut out).unwrap();
        let wrongtype = Frame::Error(b("WRONGTYPE Operation against a key"));
        assert!(br.cluster_frame(QUEUE, wrongtype, 0, &mut out));
        assert_eq!(br.cluster.stats().errors, 2);
        // The scripts gone from Redis: the link reconnects (and loads them).
        br.send(0, b("other"), None, 30, b("x"), &mut out).unwrap();
        let noscript = Frame::Error(b("NOSCRIPT No matching script"));
        assert!(!br.cluster_frame(QUEUE, noscript, 0, &mut out));
        // A refused hello closes the link too.
        br.cluster.link_closed(QUEUE, 0);
        br.cluster.on_timers(10_000);
        assert_eq!(br.cluster.take_links().len(), 1);
        assert!(br.cluster.link_up(2 << 2 | 2, conn(111), 0, &mut out));
        assert!(br.cluster_frame(2 << 2 | 2, pong(), 0, &mut out));
        let refused = Frame::Error(b("NOPERM this user has no permissions to run 'script'"));
        assert!(!br.cluster_frame(2 << 2 | 2, refused, 0, &mut out));
        assert!(!br.cluster.queues_up());
    }

    #[test]
    fn a_take_answer_may_hold_as_many_entries_as_a_take_asks_for() {
        let addr = b("jobs");
        for n in [3, MAX_TAKE] {
            let entries: Vec<(u64, &str, Option<&str>, &str)> =
                (0..n).map(|_| (1, "1", None, "x")).collect();
            let (_, _, got) = parse_take(&addr, &take_answer(&entries, 0)).unwrap();
            assert_eq!(got.len(), n);
        }
    }

    #[test]
    fn the_pending_bytes_take_a_send_that_fills_them_exactly() {
        // The estimate of a send: body + 2 × address + reply + 256; the
        // bound in these settings is 1024.
        let to = b("a");
        for (body, goes) in [(763, true), (764, false)] {
            let mut out = RecordingOutbox::default();
            let mut c = up(&mut out);
            let sent = c.queue_send(&to, Some(b"rrr"), 30, &vec![b'x'; body]);
            assert_eq!(sent, goes, "a body of {body}");
            assert_eq!(c.stats().queue_local, u64::from(!goes));
        }
        // Once written, the bytes of the commands themselves are pending,
        // until Redis answers each.
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        assert!(c.queue_send(&to, None, 30, b"one"));
        assert!(c.queue_send(&to, None, 30, b"two"));
        c.flush(&mut out);
        let written = sent_to(&out, 110).len();
        assert_eq!(c.q.pending_bytes, written);
        let mut ch = crate::broker::channels::Channels::default();
        assert!(c.on_frame(QUEUE, Frame::Integer(0), 0, &mut ch, &mut out));
        assert_eq!(c.q.pending_bytes, written / 2);
        assert!(c.on_frame(QUEUE, Frame::Integer(0), 0, &mut ch, &mut out));
        assert_eq!(c.q.pending_bytes, 0);
    }

    #[test]
    fn every_unreadable_answer_is_counted_once() {
        let mut ch = crate::broker::channels::Channels::default();
        // An answer nobody asked for.
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        assert!(!c.on_frame(QUEUE, Frame::Integer(0), 0, &mut ch, &mut out));
        assert_eq!(c.stats().errors, 1);
        // A send answered with what is neither a count nor an error.
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        assert!(c.queue_send(&b("a"), None, 30, b"x"));
        assert!(c.on_frame(QUEUE, bulk(b"what"), 0, &mut ch, &mut out));
        assert_eq!(c.stats().errors, 1);
        // A take refused by Redis: counted as an error, not also as junk.
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        br.ready(0, conn(1), 30, vec![b("q")], &mut out);
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:q", 1), 0, &mut out));
        assert_eq!(br.cluster.queue_in_flight(), 1);
        let refused = Frame::Error(b("BUSY Redis is busy running a script"));
        assert!(br.cluster_frame(QUEUE, refused, 0, &mut out));
        assert_eq!(br.cluster.stats().errors, 1);
        assert_eq!(br.cluster.queue_in_flight(), 0);
        // A SCRIPT LOAD answered with what is not a SHA1: counted, closed.
        let mut c = Cluster::new(Some(super::super::tests::settings()), *b"aaaaaaaaaaaaaaaa");
        c.on_timers(0);
        c.take_links();
        let mut out = RecordingOutbox::default();
        assert!(c.link_up(QUEUE, conn(110), 0, &mut out));
        assert_eq!(c.queue_in_flight(), 10);
        assert!(c.on_frame(QUEUE, pong(), 0, &mut ch, &mut out));
        assert!(!c.on_frame(QUEUE, bulk(b"not a sha1"), 0, &mut ch, &mut out));
        assert_eq!(c.stats().errors, 1);
        assert!(!c.queues_up());
    }

    #[test]
    fn a_take_that_brings_all_it_asked_for_is_followed_by_another() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        // More receivers than one take asks for.
        let n = MAX_TAKE as u32 + 1;
        for i in 1..=n {
            br.ready(0, conn(i), 30, vec![b("jobs")], &mut out);
        }
        let mut out = RecordingOutbox::default();
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:jobs", 1), 0, &mut out));
        let take = |count: usize| {
            let sha = "b".repeat(40);
            format!("*6\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n1\r\n$8\r\nqsb:jobs\r\n${}\r\n{count}\r\n$4\r\n1000\r\n", count.to_string().len())
        };
        assert_eq!(sent_to(&out, 110), take(MAX_TAKE));
        let all: Vec<(u64, &str, Option<&str>, &str)> =
            (0..MAX_TAKE).map(|_| (1000, "30", None, "m")).collect();
        let mut out = RecordingOutbox::default();
        assert!(br.cluster_frame(QUEUE, take_answer(&all, 0), 0, &mut out));
        assert_eq!(out.answers.len(), MAX_TAKE);
        assert_eq!(sent_to(&out, 110), take(1), "the one left waiting");
        // Fewer than asked for, and Redis looked at all it had: no more.
        let mut out = RecordingOutbox::default();
        assert!(br.cluster_frame(QUEUE, take_answer(&[], 0), 0, &mut out));
        assert!(sent_to(&out, 110).is_empty());
        // Fewer than asked for, but Redis stopped at its look-at bound
        // (`more`): another take.
        let note = Frame::Array(Some(vec![bulk(b"message"), bulk(b"qsb:jobs"), bulk(b"1")]));
        assert!(br.cluster_frame(SUB, note, 0, &mut out));
        assert_eq!(sent_to(&out, 110), take(1));
        let mut out = RecordingOutbox::default();
        let stopped = Frame::Array(Some(vec![Frame::Integer(1000), Frame::Integer(1)]));
        assert!(br.cluster_frame(QUEUE, stopped, 0, &mut out));
        assert_eq!(br.cluster.stats().queue_expired, 1000);
        assert_eq!(sent_to(&out, 110), take(1));
    }

    #[test]
    fn the_queue_link_going_keeps_what_is_listened_for_and_takes_again_once_back() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        // b: a send in flight, no receiver.
        br.send(0, b("b"), None, 30, b("x"), &mut out).unwrap();
        // a: listened for, a receiver waiting.
        br.ready(0, conn(1), 30, vec![b("a")], &mut out);
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:a", 1), 0, &mut out));
        assert!(br.cluster_frame(QUEUE, Frame::Integer(0), 0, &mut out));
        assert!(br.cluster_frame(QUEUE, take_answer(&[], 0), 0, &mut out));
        // d: listened for, then its receiver went: unsubscribed at the
        // second sweep, not yet confirmed.
        let Ready::Waiting(w) = br.ready(0, conn(4), 30, vec![b("d")], &mut out) else {
            panic!("not waiting")
        };
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:d", 2), 0, &mut out));
        assert!(br.cluster_frame(QUEUE, take_answer(&[], 0), 0, &mut out));
        br.cancel(w);
        // b's second send, unanswered through both sweeps: b is kept.
        br.send(0, b("b"), None, 30, b("y"), &mut out).unwrap();
        br.on_timers(SWEEP_MS, &mut out);
        let mut out = RecordingOutbox::default();
        br.on_timers(2 * SWEEP_MS, &mut out);
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$11\r\nUNSUBSCRIBE\r\n$5\r\nqsb:d\r\n"
        );
        assert!(br.cluster.queue_busy(b"b"));
        // c: a receiver waiting, its subscription not yet confirmed.
        br.ready(2 * SWEEP_MS, conn(3), 30, vec![b("c")], &mut out);
        assert_eq!(br.cluster.queue_watches(), 4);
        assert_eq!(br.cluster.queue_listening(), 1);
        // Down: b goes, a (listened for), c and d (confirmations to come)
        // stay.
        br.cluster.link_closed(QUEUE, 2500);
        let mut kept: Vec<Bytes> = br.cluster.q.watches.keys().cloned().collect();
        kept.sort();
        assert_eq!(kept, [b("a"), b("c"), b("d")]);
        assert_eq!(br.cluster.queue_listening(), 1);
        assert!(!br.cluster.queue_busy(b"b"));
        // Back: a take for the address listened for with a receiver; the
        // notification channels are still not counted as subscriptions,
        // and the sweep keeps its time.
        br.cluster.on_timers(2600);
        assert_eq!(br.cluster.take_links().len(), 1);
        let tag = 2 << 2 | 2;
        let mut out = RecordingOutbox::default();
        assert!(br.cluster.link_up(tag, conn(111), 2600, &mut out));
        assert!(br.cluster_frame(tag, pong(), 2600, &mut out));
        for x in b'a'..=b'i' {
            assert!(br.cluster_frame(tag, bulk(&[x; 40]), 2600, &mut out));
        }
        assert!(br.cluster.queues_up());
        let q = sent_to(&out, 111);
        assert!(
            q.ends_with("$5\r\nqsb:a\r\n$1\r\n1\r\n$4\r\n1000\r\n"),
            "{q}"
        );
        assert_eq!(q.matches("qsb:").count(), 1, "{q}");
        assert_eq!(br.cluster.stats().confirmed, 0);
        assert_eq!(br.cluster.next_deadline(), Some(3 * SWEEP_MS));
    }

    #[test]
    fn a_subscription_asked_again_before_its_unsubscribe_is_confirmed_waits_for_its_own_confirmation(
    ) {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        let w = confirmed_wait(&mut br, &mut out);
        br.cancel(w);
        br.on_timers(SWEEP_MS, &mut out);
        br.on_timers(2 * SWEEP_MS, &mut out);
        assert_eq!(br.cluster.queue_listening(), 0);
        // A receiver comes before Redis confirms the unsubscribe.
        let mut out = RecordingOutbox::default();
        br.ready(2 * SWEEP_MS, conn(2), 30, vec![b("a")], &mut out);
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nqsb:a\r\n"
        );
        assert!(br.cluster.queue_busy(b"a"));
        // The unsubscribe's confirmation is not the subscription's.
        let mut out = RecordingOutbox::default();
        assert!(br.cluster_frame(SUB, confirm("unsubscribe", "qsb:a", 0), 0, &mut out));
        assert_eq!(br.cluster.queue_listening(), 0);
        assert_eq!(br.cluster.queue_watches(), 1);
        takes_once_subscribed(&mut br, SUB, 0, &mut out);
    }

    #[test]
    fn the_sweep_comes_a_second_after_the_first_address_is_watched() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        assert_eq!(br.cluster.next_deadline(), None);
        br.ready(500, conn(1), 30, vec![b("a")], &mut out);
        assert_eq!(br.cluster.next_deadline(), Some(500 + SWEEP_MS));
        // Later pumps leave it where it is.
        br.ready(700, conn(2), 30, vec![b("b")], &mut out);
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:a", 1), 900, &mut out));
        assert_eq!(br.cluster.next_deadline(), Some(500 + SWEEP_MS));
        // Not before its time.
        let mut out = RecordingOutbox::default();
        br.cluster.sweep(500 + SWEEP_MS - 1, &br.queues, &mut out);
        assert_eq!(br.cluster.next_deadline(), Some(500 + SWEEP_MS));
        br.cluster.sweep(500 + SWEEP_MS, &br.queues, &mut out);
        assert_eq!(br.cluster.next_deadline(), Some(500 + 2 * SWEEP_MS));
    }

    #[test]
    fn the_subscriber_link_coming_back_listens_again() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        br.ready(0, conn(1), 30, vec![b("a")], &mut out);
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:a", 1), 0, &mut out));
        assert!(br.cluster_frame(QUEUE, take_answer(&[], 0), 0, &mut out));
        assert_eq!(br.cluster.queue_listening(), 1);
        br.cluster.link_closed(SUB, 10);
        assert_eq!(br.cluster.queue_listening(), 0);
        assert_eq!(br.cluster.stats().confirmed, 0);
        br.cluster.on_timers(110);
        assert_eq!(br.cluster.take_links().len(), 1);
        let tag = 2 << 2;
        let mut out = RecordingOutbox::default();
        assert!(br.cluster.link_up(tag, conn(120), 110, &mut out));
        assert!(br.cluster_frame(tag, pong(), 110, &mut out));
        assert_eq!(
            sent_to(&out, 120),
            "*1\r\n$4\r\nPING\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nqsb:a\r\n"
        );
        takes_once_subscribed(&mut br, tag, 110, &mut out);
    }

    #[test]
    fn an_entry_taken_for_a_receiver_gone_and_too_big_to_keep_is_counted() {
        let mut out = RecordingOutbox::default();
        let mut br = Broker {
            cluster: up(&mut out),
            queues: Queues::new(0).with_limits(crate::broker::queues::QueueLimits {
                per_address: 1024,
                total: 1024,
            }),
            ..Broker::default()
        };
        let Ready::Waiting(w) = br.ready(0, conn(1), 30, vec![b("a")], &mut out) else {
            panic!("not waiting")
        };
        assert!(br.cluster_frame(SUB, confirm("subscribe", "qsb:a", 1), 0, &mut out));
        br.cancel(w);
        let big = "x".repeat(2000);
        let entries = [
            (500, "30", None, &big[..]),
            (500, "30", None, "small"),
            (500, "30", None, &big[..]),
        ];
        assert!(br.cluster_frame(QUEUE, take_answer(&entries, 0), 0, &mut out));
        let s = br.cluster.stats();
        assert_eq!((s.queue_kept, s.queue_local_full), (3, 2));
        assert_eq!(br.queues.queued(), 1);
    }

    #[test]
    fn an_address_nobody_waits_on_is_forgotten_by_the_sweep_while_the_subscriber_link_is_down() {
        let mut out = RecordingOutbox::default();
        let mut br = broker(&mut out);
        let w = confirmed_wait(&mut br, &mut out);
        br.cluster.link_closed(SUB, 10);
        br.cancel(w);
        br.on_timers(SWEEP_MS, &mut out);
        assert_eq!(br.cluster.queue_watches(), 1);
        br.on_timers(2 * SWEEP_MS, &mut out);
        assert_eq!(br.cluster.queue_watches(), 0);
        // No sweep left (the subscriber link is being dialed again).
        assert_eq!(br.cluster.next_deadline(), None);
    }
}
