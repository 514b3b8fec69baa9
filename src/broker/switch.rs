//! The message-switch model: sessions, named queues that keep their messages
//! until they are acknowledged, blocking transfers, a trace ring, and the
//! view diagnostics print. Free of IO: time comes in as `now` (milliseconds
//! on the server's clock), answers to parked calls leave through the
//! [`Outbox`] as [`Answer::Switch`].
//!
//! Owns: which connection belongs to which session, which session owns
//! which transient queue, every switch queue and its messages (ids `(queue,
//! n)`, `n` a per-queue counter from 0), the parked transfers and trace
//! polls, the trace ring. Must not touch: how any of it is written on the
//! wire (the HTTP door formats JSON), sockets, the clock.
//!
//! One namespace with the line protocol's queues: a switch queue is a queue
//! address. [`Broker`]'s queue calls route between the two models:
//!
//! - a switch send to `N` goes first to a line receiver waiting on `N`
//!   (which takes it: take-on-delivery), then into switch queue `N`, and is
//!   dropped (`None`) when there is neither, as message-switch dropped
//!   sends to queues that do not exist;
//! - a line send to an address that is a switch queue, with no line
//!   receiver waiting there, joins that switch queue (without its timeout:
//!   switch messages stay until acked);
//! - a line receiver takes the oldest message of a switch queue that no
//!   switch client has been handed yet; taking it removes it, as an ack
//!   would;
//! - creating a switch queue moves the line messages queued on that address
//!   into it.
//!
//! A line receiver that takes a request whose reply-to `R` is a switch queue
//! leaves a note on `R`: the next line send to `R` without a reply address
//! becomes the response to that request (`Response (N, n)`), so that a
//! message-switch client, which matches responses by request id, takes it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use slab::Slab;

use super::queues::{QueueFull, QueueLimits, Taken};
use super::{Answer, Broker, ConnId, Delivery, Millis, Outbox};
use crate::store::log::SwitchQueue;
use crate::store::record::{self as rec, Record};
use crate::store::Journal;

/// The longest queue name or session token.
pub const MAX_NAME: usize = 1024;
/// The most switch queues at once.
pub const MAX_QUEUES: usize = 100_000;
/// The most queues one transfer may name.
pub const MAX_TRANSFER_QUEUES: usize = 64;
/// Events the trace ring keeps (older ones are overwritten).
pub const TRACE_EVENTS: usize = 1024;
/// Payload bytes a trace event keeps of its message.
pub const TRACE_PAYLOAD: usize = 1024;
/// Requests taken by line receivers whose response is still owed, over all
/// queues; past it a line answer is a plain request with no reply-to.
pub const MAX_OWED: usize = 65_536;
/// The timeout written in the `> LEN TIMEOUT NAME REPLY` line a line
/// receiver gets for a switch message (message-switch's default timeout).
pub const LINE_TIMEOUT_S: u64 = 30;
/// Bytes counted for each stored message on top of its payload and names.
pub const ENTRY_OVERHEAD: usize = 128;
/// Bodies below this size are copied into an exact-size buffer when stored,
/// so that a long-lived message does not keep a large read buffer alive.
const COPY_BELOW: usize = 16 * 1024;

/// The id of a message: its queue and its number there.
pub type MessageId = (Bytes, u64);

/// What a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request; its response goes to this queue (empty: none expected).
    Request(Bytes),
    /// The response to the request with this id.
    Response(MessageId),
}

/// A switch message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub payload: Bytes,
    pub kind: Kind,
}

impl Message {
    /// Where a response goes, when there is somewhere.
    fn reply_to(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Request(r) if !r.is_empty() => Some(r),
            _ => None,
        }
    }

    fn size(&self, queue: &[u8]) -> usize {
        let kind = match &self.kind {
            Kind::Request(r) => r.len(),
            Kind::Response((q, _)) => q.len(),
        };
        self.payload.len() + kind + queue.len() + ENTRY_OVERHEAD
    }
}

/// Who sent a stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A sender without a session (the line protocol).
    Anonymous(Bytes),
    /// A session, by its token.
    Name(Bytes),
}

/// The origin of messages sent over the line protocol.
pub const LINE_ORIGIN: &[u8] = b"line";

/// A stored message.
#[derive(Debug)]
pub struct Entry {
    pub origin: Origin,
    /// When it arrived.
    pub time: Millis,
    pub message: Message,
    /// Handed to a switch client by a transfer: line receivers leave it.
    seen: bool,
}

/// A switch queue.
#[derive(Debug)]
pub struct Queue {
    /// The session that owns a transient queue; `None`: persistent.
    owner: Option<Bytes>,
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    /// Entries no transfer has returned yet.
    unseen: usize,
    /// Every entry with a lower id has been returned by a transfer (or is
    /// gone), so line receivers look from here on.
    unseen_from: u64,
    /// What its entries count against the limits.
    bytes: usize,
    /// When the last transfer that named it expects to return (its
    /// deadline); `None` while nobody ever transferred from it.
    next_transfer_expected: Option<Millis>,
    /// Requests taken by line receivers that named this queue as reply-to,
    /// oldest first: the next line send here answers the first one.
    owed: VecDeque<MessageId>,
}

impl Queue {
    fn new(owner: Option<Bytes>) -> Queue {
        Queue {
            owner,
            next_id: 0,
            entries: BTreeMap::new(),
            unseen: 0,
            unseen_from: 0,
            bytes: 0,
            next_transfer_expected: None,
            owed: VecDeque::new(),
        }
    }

    pub fn owner(&self) -> Option<&Bytes> {
        self.owner.as_ref()
    }

    pub fn next_transfer_expected(&self) -> Option<Millis> {
        self.next_transfer_expected
    }

    /// Its messages, in id order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.iter().map(|(id, e)| (*id, e))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a switch call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchError {
    /// The connection has not logged in.
    NotLoggedIn,
    /// A name or token is empty, too long, or holds a space or a control
    /// character (a queue name is also a line-protocol address).
    BadName,
    /// [`MAX_QUEUES`] queues exist.
    TooManyQueues,
    /// A transfer named more than [`MAX_TRANSFER_QUEUES`] queues.
    TooManyTransferQueues,
    /// The queue, or all queues, are at their byte limit.
    Full,
    /// The store cannot record it now (a failed write a moment ago, or a
    /// disk far behind; with `--data-dir` only).
    Store,
}

impl std::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchError::NotLoggedIn => f.write_str("Please log in."),
            SwitchError::BadName => write!(
                f,
                "a queue name or token must be 1 to {MAX_NAME} bytes, without spaces or control characters"
            ),
            SwitchError::TooManyQueues => write!(f, "too many queues (the limit is {MAX_QUEUES})"),
            SwitchError::TooManyTransferQueues => write!(
                f,
                "a transfer may name at most {MAX_TRANSFER_QUEUES} queues"
            ),
            SwitchError::Full => f.write_str("queue full"),
            SwitchError::Store => f.write_str("store unavailable"),
        }
    }
}

/// Checks a queue name: 1 to [`MAX_NAME`] bytes, no byte that would split a
/// line-protocol command (space, control characters).
pub fn check_name(name: &[u8]) -> Result<(), SwitchError> {
    if name.is_empty() || name.len() > MAX_NAME || name.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(SwitchError::BadName);
    }
    Ok(())
}

/// What a transfer returns: every message with an id greater than `from`
/// in the queues it named, and the id to pass as the next `from`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    pub messages: Vec<(MessageId, Message)>,
    /// The greatest id returned, or the transfer's `from` (-1 for none).
    pub next: i64,
}

/// One trace event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub time: Millis,
    /// The session that sent or acked.
    pub input: Option<Bytes>,
    pub queue: Bytes,
    /// The session a transfer handed the message to.
    pub output: Option<Bytes>,
    pub message: Traced,
    /// For a response handed over: how long since its request arrived.
    pub processing_time: Option<Millis>,
}

/// What an event is about. A message's payload is cut to
/// [`TRACE_PAYLOAD`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traced {
    Message(MessageId, Message),
    Ack(MessageId),
}

/// The answer to a parked call, handed to its door as [`Answer::Switch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Polled {
    Transfer(Transferred),
    /// Trace events with their ids, oldest first.
    Trace(Vec<(u64, Event)>),
    /// With `--cluster`: Redis' answer to the call numbered `seq`.
    Cluster {
        seq: u64,
        reply: ClusterReply,
    },
}

/// What Redis answered a switch call with `--cluster` (see
/// `broker::cluster::switch_link`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterReply {
    /// Done (destroy, ack).
    Done,
    /// The queue exists (created now or before).
    Created(Bytes),
    /// A send's id, or `None`: there is no such queue, dropped.
    Sent(Option<MessageId>),
    List(Vec<Bytes>),
    Transfer(Transferred),
    /// Not done, or not known to be: a `503` with this reason.
    Unavailable(String),
}

/// What a transfer or a trace poll got at once.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll<T> {
    Ready(T),
    /// Parked: the answer comes through the outbox, or the caller withdraws
    /// it at its deadline.
    Waiting(SwitchWait),
}

/// A parked transfer or trace poll, by slot and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchWait {
    slot: usize,
    gen: u64,
}

struct TransferWait {
    conn: ConnId,
    gen: u64,
    from: Option<u64>,
    names: Vec<Bytes>,
    timeout_ms: Millis,
    session: Bytes,
}

struct TraceWait {
    conn: ConnId,
    gen: u64,
    from: i64,
}

/// The parked transfers on one queue name. Entries of waits answered
/// elsewhere stay until the list is compacted (once most of it is stale).
#[derive(Default)]
struct WaitList {
    keys: Vec<SwitchWait>,
    stale: usize,
}

struct Session {
    conns: usize,
    owned: HashSet<Bytes>,
}

/// Every switch queue, session, parked call and the trace ring.
pub struct Switch {
    queues: HashMap<Bytes, Queue>,
    sessions: HashMap<Bytes, Session>,
    logins: HashMap<ConnId, Bytes>,
    transfers: Slab<TransferWait>,
    waits_on: HashMap<Bytes, WaitList>,
    traces: Slab<TraceWait>,
    /// Trace polls by their `from`; entries of withdrawn polls are stale.
    trace_waits: BTreeMap<i64, Vec<SwitchWait>>,
    /// Entries in `trace_waits`, and how many of them are stale.
    trace_listed: usize,
    trace_stale: usize,
    ring: VecDeque<(u64, Event)>,
    next_event: u64,
    next_gen: u64,
    /// Ids of messages handed to line receivers on names that are no
    /// switch queue.
    loose_ids: u64,
    owed: usize,
    limits: QueueLimits,
    bytes: usize,
    refused_full: u64,
    /// The wall clock at the server's start, in ms since the Unix epoch:
    /// what the door adds to `now` to print times.
    epoch_ms: u64,
    /// With `--data-dir`: where persistent queues and their messages are
    /// recorded (transient ones die with their session, so with a restart).
    journal: Option<Journal>,
    /// Sessions whose last connection went since the broker last looked
    /// (their transient queues in Redis go, with `--cluster`).
    ended: Vec<Bytes>,
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new(0)
    }
}

impl Switch {
    pub fn new(epoch_ms: u64) -> Switch {
        Switch {
            queues: HashMap::new(),
            sessions: HashMap::new(),
            logins: HashMap::new(),
            transfers: Slab::new(),
            waits_on: HashMap::new(),
            traces: Slab::new(),
            ended: Vec::new(),
            trace_waits: BTreeMap::new(),
            trace_listed: 0,
            trace_stale: 0,
            ring: VecDeque::new(),
            next_event: 0,
            next_gen: 0,
            loose_ids: 0,
            owed: 0,
            limits: QueueLimits::default(),
            bytes: 0,
            refused_full: 0,
            epoch_ms,
            journal: None,
        }
    }

    /// Records persistent queues and their messages in `journal`.
    pub fn with_journal(mut self, journal: Journal) -> Switch {
        self.journal = Some(journal);
        self
    }

    /// The journal, when `name` is a persistent queue and there is one.
    fn journal_for(&self, name: &[u8]) -> Option<&Journal> {
        let j = self.journal.as_ref()?;
        self.queues
            .get(name)
            .is_some_and(|q| q.owner.is_none())
            .then_some(j)
    }

    /// `Err(Store)` when a journal refuses records now.
    fn check_journal(&self) -> Result<(), SwitchError> {
        match &self.journal {
            Some(j) if j.refusal().is_some() => Err(SwitchError::Store),
            _ => Ok(()),
        }
    }

    /// Counter of ids of messages handed over on names that are no queue.
    pub fn loose_ids(&self) -> u64 {
        self.loose_ids
    }

    /// Puts back the persistent queues a store kept; `epoch_ms` is the wall
    /// clock at `now`.
    pub fn restore(
        &mut self,
        now: Millis,
        epoch_ms: u64,
        loose_ids: u64,
        queues: impl IntoIterator<Item = (Bytes, SwitchQueue)>,
    ) -> usize {
        self.loose_ids = self.loose_ids.max(loose_ids);
        let mut restored = 0;
        for (name, sq) in queues {
            let mut q = Queue::new(None);
            q.next_id = sq.next_id;
            for (id, m) in sq.messages {
                let message = Message {
                    payload: Bytes::copy_from_slice(&m.payload),
                    kind: match m.kind {
                        rec::SwitchKind::Request(r) => Kind::Request(Bytes::copy_from_slice(&r)),
                        rec::SwitchKind::Response(rq, n) => {
                            Kind::Response((Bytes::copy_from_slice(&rq), n))
                        }
                    },
                };
                let origin = if m.origin.session {
                    Origin::Name(Bytes::copy_from_slice(&m.origin.name))
                } else {
                    Origin::Anonymous(Bytes::copy_from_slice(&m.origin.name))
                };
                let size = message.size(&name);
                if !m.seen {
                    q.unseen += 1;
                }
                q.bytes += size;
                self.bytes += size;
                q.next_id = q.next_id.max(id + 1);
                q.entries.insert(
                    id,
                    Entry {
                        origin,
                        time: now.saturating_sub(epoch_ms.saturating_sub(m.time)),
                        message,
                        seen: m.seen,
                    },
                );
                restored += 1;
            }
            self.queues.insert(Bytes::copy_from_slice(&name), q);
        }
        restored
    }

    /// Every persistent queue and its messages as records (for a
    /// snapshot); `epoch_ms` is the wall clock at `now` 0.
    pub fn snapshot(&self, epoch_ms: u64, buf: &mut Vec<u8>) {
        for (name, q) in &self.queues {
            if q.owner.is_some() {
                continue;
            }
            rec::encode(
                buf,
                &Record::QueueCreate {
                    name: name.clone(),
                    next_id: q.next_id,
                },
            );
            for (id, e) in &q.entries {
                rec::encode(buf, &store_record(epoch_ms, name, *id, e));
                if e.seen {
                    rec::encode(
                        buf,
                        &Record::SwitchSeen {
                            name: name.clone(),
                            id: *id,
                        },
                    );
                }
            }
        }
    }

    /// Sets the byte limits of stored messages (the queues' limits: per
    /// queue, and over all switch queues).
    pub fn with_limits(mut self, limits: QueueLimits) -> Switch {
        self.limits = limits;
        self
    }

    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// True when no switch queue exists (the line protocol's fast path).
    pub fn has_no_queues(&self) -> bool {
        self.queues.is_empty()
    }

    pub fn has_queue(&self, name: &[u8]) -> bool {
        self.queues.contains_key(name)
    }

    pub fn queue(&self, name: &[u8]) -> Option<&Queue> {
        self.queues.get(name)
    }

    /// Every queue, in name order.
    pub fn queues(&self) -> Vec<(&Bytes, &Queue)> {
        let mut all: Vec<_> = self.queues.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Messages stored over all queues.
    pub fn stored(&self) -> usize {
        self.queues.values().map(Queue::len).sum()
    }

    /// Bytes stored messages count against the limits.
    pub fn stored_bytes(&self) -> usize {
        self.bytes
    }

    /// Sends refused because a queue was full.
    pub fn refused_full(&self) -> u64 {
        self.refused_full
    }

    /// Parked transfers.
    pub fn parked_transfers(&self) -> usize {
        self.transfers.len()
    }

    /// Parked trace polls.
    pub fn parked_traces(&self) -> usize {
        self.traces.len()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The session of connection `conn`, once it has logged in.
    pub fn session_of(&self, conn: ConnId) -> Option<&Bytes> {
        self.logins.get(&conn)
    }

    fn session(&self, conn: ConnId) -> Result<Bytes, SwitchError> {
        self.logins
            .get(&conn)
            .cloned()
            .ok_or(SwitchError::NotLoggedIn)
    }

    /// Binds `conn` to the session `token` (a connection belongs to one
    /// session: logging in again moves it).
    pub fn login(&mut self, conn: ConnId, token: &[u8]) -> Result<(), SwitchError> {
        if token.is_empty() || token.len() > MAX_NAME {
            return Err(SwitchError::BadName);
        }
        if self.logins.get(&conn).is_some_and(|t| t[..] == *token) {
            return Ok(());
        }
        self.logout(conn);
        let token = Bytes::copy_from_slice(token);
        self.sessions
            .entry(token.clone())
            .or_insert_with(|| Session {
                conns: 0,
                owned: HashSet::new(),
            })
            .conns += 1;
        self.logins.insert(conn, token);
        Ok(())
    }

    /// The connection is gone (or logs in elsewhere): once its session has
    /// no connection left, the session's transient queues go, with their
    /// messages.
    pub fn logout(&mut self, conn: ConnId) {
        let Some(token) = self.logins.remove(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&token) else {
            return;
        };
        session.conns = session.conns.saturating_sub(1);
        if session.conns > 0 {
            return;
        }
        let owned = self
            .sessions
            .remove(&token)
            .map(|s| s.owned)
            .unwrap_or_default();
        self.ended.push(token);
        for name in owned {
            self.remove_queue(&name);
        }
    }

    /// Creates a queue (nothing happens when it exists): persistent, or
    /// transient (owned by the caller's session). True when it was created.
    pub fn create(
        &mut self,
        conn: ConnId,
        name: &Bytes,
        transient: bool,
    ) -> Result<bool, SwitchError> {
        let session = self.session(conn)?;
        check_name(name)?;
        if self.queues.contains_key(&name[..]) {
            return Ok(false);
        }
        if self.queues.len() >= MAX_QUEUES {
            return Err(SwitchError::TooManyQueues);
        }
        if !transient {
            self.check_journal()?;
        }
        let name = Bytes::copy_from_slice(name);
        if let (false, Some(j)) = (transient, &self.journal) {
            j.record(&Record::QueueCreate {
                name: name.clone(),
                next_id: 0,
            });
        }
        let owner = if transient {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.owned.insert(name.clone());
            }
            Some(session)
        } else {
            None
        };
        self.queues.insert(name, Queue::new(owner));
        Ok(true)
    }

    /// Removes a queue and its messages.
    pub fn destroy(&mut self, conn: ConnId, name: &[u8]) -> Result<(), SwitchError> {
        self.session(conn)?;
        if self.journal_for(name).is_some() {
            self.check_journal()?;
        }
        self.remove_queue(name);
        Ok(())
    }

    fn remove_queue(&mut self, name: &[u8]) {
        if let Some(j) = self.journal_for(name) {
            j.record(&Record::QueueDestroy {
                name: Bytes::copy_from_slice(name),
            });
        }
        let Some(q) = self.queues.remove(name) else {
            return;
        };
        self.bytes -= q.bytes;
        self.owed -= q.owed.len();
        if let Some(owner) = &q.owner {
            if let Some(s) = self.sessions.get_mut(owner) {
                s.owned.remove(name);
            }
        }
    }

    /// Queue names that start with `prefix`, in order; with `alive`, only
    /// those some transfer has named.
    pub fn list(
        &self,
        conn: ConnId,
        prefix: &[u8],
        alive: bool,
    ) -> Result<Vec<Bytes>, SwitchError> {
        self.session(conn)?;
        let mut names: Vec<Bytes> = self
            .queues
            .iter()
            .filter(|(n, q)| {
                n.starts_with(prefix) && (!alive || q.next_transfer_expected.is_some())
            })
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes a message (an unknown id is ignored) and traces the ack.
    pub fn ack(
        &mut self,
        now: Millis,
        conn: ConnId,
        name: &[u8],
        id: u64,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), SwitchError> {
        let session = self.session(conn)?;
        if self.journal_for(name).is_some() {
            self.check_journal()?;
        }
        let queue = match self.queues.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => Bytes::copy_from_slice(name),
        };
        self.remove_entry(&queue, id);
        self.trace(Event {
            time: now,
            input: Some(session),
            queue: queue.clone(),
            output: None,
            message: Traced::Ack((queue, id)),
            processing_time: None,
        });
        self.wake_traces(out);
        Ok(())
    }

    fn remove_entry(&mut self, name: &[u8], id: u64) -> Option<Entry> {
        let journal = self.journal_for(name).cloned();
        let q = self.queues.get_mut(name)?;
        let e = q.entries.remove(&id)?;
        if let Some(j) = journal {
            j.record(&Record::SwitchAck {
                name: Bytes::copy_from_slice(name),
                id,
            });
        }
        let size = e.message.size(name);
        q.bytes -= size;
        self.bytes -= size;
        if !e.seen {
            q.unseen -= 1;
        }
        Some(e)
    }

    /// The next id of `name`: from its counter, or, for a name that is no
    /// switch queue, from a counter of such messages.
    fn next_id(&mut self, name: &[u8]) -> u64 {
        match self.queues.get_mut(name) {
            Some(q) => {
                q.next_id += 1;
                q.next_id - 1
            }
            None => {
                self.loose_ids += 1;
                self.loose_ids - 1
            }
        }
    }

    /// An id used without a stored message (handed straight to a line
    /// receiver): recorded, so that it is not given again after a restart.
    fn record_id_used(&self, name: &[u8]) {
        let Some(j) = &self.journal else {
            return;
        };
        match self.queues.get(name) {
            Some(q) if q.owner.is_none() => j.record(&Record::SwitchIds {
                name: Bytes::copy_from_slice(name),
                next_id: q.next_id,
            }),
            Some(_) => {}
            None => j.record(&Record::LooseIds {
                next: self.loose_ids,
            }),
        }
    }

    /// Stores a message in switch queue `name`, wakes the transfers it
    /// satisfies and traces the send. `None` when there is no such queue.
    fn store(
        &mut self,
        now: Millis,
        origin: Origin,
        name: &Bytes,
        message: Message,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Option<MessageId>, SwitchError> {
        let size = message.size(name);
        let Some((key, q)) = self.queues.get_key_value(&name[..]) else {
            return Ok(None);
        };
        if q.bytes + size > self.limits.per_address || self.bytes + size > self.limits.total {
            self.refused_full += 1;
            return Err(SwitchError::Full);
        }
        let durable = q.owner.is_none();
        if durable {
            self.check_journal()?;
        }
        let key = key.clone();
        let input = match &origin {
            Origin::Name(s) => Some(s.clone()),
            Origin::Anonymous(_) => None,
        };
        let mut message = message;
        if message.payload.len() < COPY_BELOW {
            message.payload = Bytes::copy_from_slice(&message.payload);
        }
        let id = self.next_id(&key);
        self.trace(Event {
            time: now,
            input,
            queue: key.clone(),
            output: None,
            message: Traced::Message((key.clone(), id), traced(&message)),
            processing_time: None,
        });
        let entry = Entry {
            origin,
            time: now,
            message,
            seen: false,
        };
        if let (true, Some(j)) = (durable, &self.journal) {
            j.record(&store_record(j.epoch_ms(), &key, id, &entry));
        }
        if let Some(q) = self.queues.get_mut(&key) {
            q.entries.insert(id, entry);
            q.unseen += 1;
            q.bytes += size;
            self.bytes += size;
        }
        self.wake_transfers(now, &key, id, out);
        Ok(Some((key, id)))
    }

    /// A line send to `to`, a switch queue with no line receiver waiting:
    /// it joins the queue. Without a reply address it answers the oldest
    /// request a line receiver took with `to` as its reply-to, if any.
    fn store_from_line(
        &mut self,
        now: Millis,
        to: &Bytes,
        reply: Option<Bytes>,
        body: Bytes,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), QueueFull> {
        let kind = match reply {
            Some(r) => Kind::Request(r),
            None => match self
                .queues
                .get_mut(&to[..])
                .and_then(|q| q.owed.pop_front())
            {
                Some(request) => {
                    self.owed -= 1;
                    Kind::Response(request)
                }
                None => Kind::Request(Bytes::new()),
            },
        };
        let message = Message {
            payload: body,
            kind,
        };
        let origin = Origin::Anonymous(Bytes::from_static(LINE_ORIGIN));
        let stored = self.store(now, origin, to, message, out);
        self.wake_traces(out);
        match stored {
            Ok(_) => Ok(()),
            Err(SwitchError::Store) => Err(QueueFull::Store),
            Err(_) => Err(QueueFull::Full),
        }
    }

    /// A line receiver on `addr` takes the oldest message of switch queue
    /// `addr` that no transfer has returned yet.
    fn take_for_line(&mut self, now: Millis, addr: &Bytes) -> Option<Taken> {
        let q = self.queues.get_mut(&addr[..])?;
        if q.unseen == 0 {
            return None;
        }
        let found = q
            .entries
            .range(q.unseen_from..)
            .find(|(_, e)| !e.seen)
            .map(|(id, _)| *id);
        q.unseen_from = found.map_or(q.next_id, |id| id + 1);
        let id = found?;
        let entry = self.remove_entry(addr, id)?;
        let message = entry.message;
        self.handed_to_line(now, addr.clone(), id, &message);
        Some(Taken {
            to: addr.clone(),
            reply: message.reply_to().cloned(),
            timeout_s: LINE_TIMEOUT_S,
            body: message.payload,
        })
    }

    /// Traces a message a line receiver took, and notes the response its
    /// reply-to queue is owed.
    fn handed_to_line(&mut self, now: Millis, queue: Bytes, id: u64, message: &Message) {
        self.trace(Event {
            time: now,
            input: None,
            queue: queue.clone(),
            output: Some(Bytes::from_static(LINE_ORIGIN)),
            message: Traced::Message((queue.clone(), id), traced(message)),
            processing_time: None,
        });
        if let Some(reply) = message.reply_to() {
            if self.owed < MAX_OWED {
                if let Some(rq) = self.queues.get_mut(&reply[..]) {
                    rq.owed.push_back((queue, id));
                    self.owed += 1;
                }
            }
        }
    }

    /// Every message with an id greater than `from` in `names` (each named
    /// once, in the order given), in id order per queue.
    fn collect(&self, from: Option<u64>, names: &[Bytes]) -> Transferred {
        let lo = match from {
            None => Some(0),
            Some(f) => f.checked_add(1),
        };
        let mut messages = Vec::new();
        if let Some(lo) = lo {
            for (i, name) in names.iter().enumerate() {
                if names.get(..i).is_some_and(|before| before.contains(name)) {
                    continue;
                }
                let Some((key, q)) = self.queues.get_key_value(&name[..]) else {
                    continue;
                };
                for (id, e) in q.entries.range(lo..) {
                    messages.push(((key.clone(), *id), e.message.clone()));
                }
            }
        }
        let next = messages
            .iter()
            .map(|((_, id), _)| *id)
            .max()
            .map_or_else(|| from.map_or(-1, clamp_i64), clamp_i64);
        Transferred { messages, next }
    }

    /// A transfer hands `t` to `session`: its messages are seen (line
    /// receivers leave them), and each hand-over is traced.
    fn hand_over(&mut self, now: Millis, session: &Bytes, t: &Transferred) {
        for ((queue, id), message) in &t.messages {
            if let Some(q) = self.queues.get_mut(&queue[..]) {
                if let Some(e) = q.entries.get_mut(id) {
                    if !e.seen {
                        e.seen = true;
                        q.unseen -= 1;
                        if let (None, Some(j)) = (&q.owner, &self.journal) {
                            j.record(&Record::SwitchSeen {
                                name: queue.clone(),
                                id: *id,
                            });
                        }
                    }
                }
            }
            let processing_time = match &message.kind {
                Kind::Response((rq, rid)) => self
                    .queues
                    .get(&rq[..])
                    .and_then(|q| q.entries.get(rid))
                    .map(|e| now.saturating_sub(e.time)),
                Kind::Request(_) => None,
            };
            self.trace(Event {
                time: now,
                input: None,
                queue: queue.clone(),
                output: Some(session.clone()),
                message: Traced::Message((queue.clone(), *id), traced(message)),
                processing_time,
            });
        }
    }

    fn expect_transfer(&mut self, names: &[Bytes], at: Millis) {
        for name in names {
            if let Some(q) = self.queues.get_mut(&name[..]) {
                q.next_transfer_expected = Some(at);
            }
        }
    }

    /// Every message with an id greater than `from` in `names`, not removed;
    /// when there is none and `timeout_ms` > 0, parks until a message
    /// arrives (answered through the outbox) or the caller withdraws it at
    /// its deadline ([`Switch::transfer_deadline`]).
    pub fn transfer(
        &mut self,
        now: Millis,
        conn: ConnId,
        from: Option<u64>,
        timeout_ms: Millis,
        names: Vec<Bytes>,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Poll<Transferred>, SwitchError> {
        let session = self.session(conn)?;
        if names.len() > MAX_TRANSFER_QUEUES {
            return Err(SwitchError::TooManyTransferQueues);
        }
        self.expect_transfer(&names, now.saturating_add(timeout_ms));
        let t = self.collect(from, &names);
        if !t.messages.is_empty() || timeout_ms == 0 {
            self.hand_over(now, &session, &t);
            self.wake_traces(out);
            return Ok(Poll::Ready(t));
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let mut unique: Vec<Bytes> = Vec::with_capacity(names.len());
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let slot = self.transfers.insert(TransferWait {
            conn,
            gen,
            from,
            names: Vec::new(),
            timeout_ms,
            session,
        });
        let wait = SwitchWait { slot, gen };
        for name in &unique {
            self.waits_on
                .entry(name.clone())
                .or_default()
                .keys
                .push(wait);
        }
        if let Some(w) = self.transfers.get_mut(slot) {
            w.names = unique;
        }
        Ok(Poll::Waiting(wait))
    }

    fn transfer_live(&self, w: SwitchWait) -> bool {
        self.transfers.get(w.slot).is_some_and(|t| t.gen == w.gen)
    }

    /// Takes a parked transfer out, counting its entries on other names'
    /// lists as stale (compacting a list once most of it is stale).
    fn unpark_transfer(&mut self, w: SwitchWait, except: Option<&[u8]>) -> Option<TransferWait> {
        if !self.transfer_live(w) {
            return None;
        }
        let t = self.transfers.remove(w.slot);
        for name in &t.names {
            if except == Some(&name[..]) {
                continue;
            }
            let Some(list) = self.waits_on.get_mut(&name[..]) else {
                continue;
            };
            list.stale += 1;
            if list.stale * 2 >= list.keys.len() {
                let transfers = &self.transfers;
                list.keys
                    .retain(|k| transfers.get(k.slot).is_some_and(|t| t.gen == k.gen));
                list.stale = 0;
                if list.keys.is_empty() {
                    self.waits_on.remove(&name[..]);
                }
            }
        }
        Some(t)
    }

    /// Message `id` arrived on `name`: answers every transfer parked on it
    /// whose `from` is below `id`.
    fn wake_transfers(
        &mut self,
        now: Millis,
        name: &Bytes,
        id: u64,
        out: &mut (impl Outbox + ?Sized),
    ) {
        let Some(list) = self.waits_on.remove(&name[..]) else {
            return;
        };
        let mut kept = Vec::new();
        for key in list.keys {
            let satisfied = match self.transfers.get(key.slot) {
                Some(t) if t.gen == key.gen => t.from.is_none_or(|f| f < id),
                _ => continue,
            };
            if !satisfied {
                kept.push(key);
                continue;
            }
            let Some(wait) = self.unpark_transfer(key, Some(name)) else {
                continue;
            };
            let polled = Polled::Transfer(self.collect(wait.from, &wait.names));
            self.expect_transfer(&wait.names, now.saturating_add(wait.timeout_ms));
            // A connection that went away meanwhile refuses the answer: its
            // messages stay unseen, for line receivers too.
            if out.answer(wait.conn, Answer::Switch(&polled)) {
                if let Polled::Transfer(t) = &polled {
                    self.hand_over(now, &wait.session, t);
                }
            }
        }
        if !kept.is_empty() {
            self.waits_on.insert(
                name.clone(),
                WaitList {
                    keys: kept,
                    stale: 0,
                },
            );
        }
    }

    /// A parked transfer's deadline: it is withdrawn and answered with what
    /// there is (nothing, unless messages with ids at or below its `from`
    /// arrived). `None` when it is no longer parked.
    pub fn transfer_deadline(
        &mut self,
        now: Millis,
        wait: SwitchWait,
        out: &mut (impl Outbox + ?Sized),
    ) -> Option<Transferred> {
        let w = self.unpark_transfer(wait, None)?;
        let t = self.collect(w.from, &w.names);
        self.expect_transfer(&w.names, now.saturating_add(w.timeout_ms));
        self.hand_over(now, &w.session, &t);
        self.wake_traces(out);
        Some(t)
    }

    /// Withdraws a parked transfer or trace poll unanswered.
    pub fn cancel(&mut self, wait: SwitchWait) {
        self.unpark_transfer(wait, None);
        self.unpark_trace(wait);
    }

    fn trace(&mut self, event: Event) {
        if self.ring.len() >= TRACE_EVENTS {
            self.ring.pop_front();
        }
        self.ring.push_back((self.next_event, event));
        self.next_event += 1;
    }

    /// Trace events with ids from `from` on, oldest first.
    fn events_from(&self, from: i64) -> Vec<(u64, Event)> {
        self.ring
            .iter()
            .filter(|(id, _)| clamp_i64(*id) >= from)
            .cloned()
            .collect()
    }

    /// The trace ring from event `from` on; when no event at or after
    /// `from` has happened yet and `timeout_ms` > 0, parks until one does.
    pub fn trace_poll(
        &mut self,
        conn: ConnId,
        from: i64,
        timeout_ms: Millis,
    ) -> Poll<Vec<(u64, Event)>> {
        if clamp_i64(self.next_event) > from || timeout_ms == 0 {
            return Poll::Ready(self.events_from(from));
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let slot = self.traces.insert(TraceWait { conn, gen, from });
        let wait = SwitchWait { slot, gen };
        self.trace_waits.entry(from).or_default().push(wait);
        self.trace_listed += 1;
        Poll::Waiting(wait)
    }

    /// A parked trace poll's deadline: withdrawn, answered with what there
    /// is. `None` when it is no longer parked.
    pub fn trace_deadline(&mut self, wait: SwitchWait) -> Option<Vec<(u64, Event)>> {
        let from = self.unpark_trace(wait)?;
        Some(self.events_from(from))
    }

    fn unpark_trace(&mut self, w: SwitchWait) -> Option<i64> {
        if self.traces.get(w.slot).is_none_or(|t| t.gen != w.gen) {
            return None;
        }
        let t = self.traces.remove(w.slot);
        self.trace_stale += 1;
        if self.trace_stale * 2 >= self.trace_listed {
            let traces = &self.traces;
            self.trace_waits.retain(|_, keys| {
                keys.retain(|k| traces.get(k.slot).is_some_and(|t| t.gen == k.gen));
                !keys.is_empty()
            });
            self.trace_listed = self.trace_waits.values().map(Vec::len).sum();
            self.trace_stale = 0;
        }
        Some(t.from)
    }

    /// Answers the trace polls that the events recorded so far satisfy.
    fn wake_traces(&mut self, out: &mut (impl Outbox + ?Sized)) {
        let last = clamp_i64(self.next_event) - 1;
        while let Some(entry) = self.trace_waits.first_entry() {
            if *entry.key() > last {
                break;
            }
            let keys = entry.remove();
            self.trace_listed -= keys.len();
            for key in keys {
                let Some(t) = self.traces.get(key.slot).filter(|t| t.gen == key.gen) else {
                    self.trace_stale = self.trace_stale.saturating_sub(1);
                    continue;
                };
                let (conn, from) = (t.conn, t.from);
                self.traces.remove(key.slot);
                let events = self.events_from(from);
                out.answer(conn, Answer::Switch(&Polled::Trace(events)));
            }
        }
    }
}

/// The record of a stored message; `epoch_ms` is the wall clock at `now` 0.
fn store_record(epoch_ms: u64, name: &Bytes, id: u64, e: &Entry) -> Record {
    let origin = match &e.origin {
        Origin::Name(n) => rec::Origin {
            session: true,
            name: n.clone(),
        },
        Origin::Anonymous(n) => rec::Origin {
            session: false,
            name: n.clone(),
        },
    };
    Record::SwitchStore {
        name: name.clone(),
        id,
        time: epoch_ms.saturating_add(e.time),
        origin,
        kind: match &e.message.kind {
            Kind::Request(r) => rec::SwitchKind::Request(r.clone()),
            Kind::Response((q, n)) => rec::SwitchKind::Response(q.clone(), *n),
        },
        payload: e.message.payload.clone(),
    }
}

/// The message as a trace event keeps it: its payload cut to
/// [`TRACE_PAYLOAD`] bytes, in a buffer of its own.
fn traced(m: &Message) -> Message {
    let keep = m.payload.len().min(TRACE_PAYLOAD);
    Message {
        payload: Bytes::copy_from_slice(m.payload.get(..keep).unwrap_or_default()),
        kind: m.kind.clone(),
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The calls that cross the two models live on the broker: it holds both.
impl Broker {
    /// Logs connection `conn` in to session `token`.
    pub fn switch_login(&mut self, conn: ConnId, token: &[u8]) -> Result<(), SwitchError> {
        let r = self.switch.login(conn, token);
        self.sessions_ended();
        r
    }

    /// With `--cluster`, the transient queues of sessions that ended here
    /// go from Redis.
    fn sessions_ended(&mut self) {
        for token in std::mem::take(&mut self.switch.ended) {
            if self.cluster.is_on() {
                self.cluster.switch_session_ended(&token);
            }
        }
    }

    /// Creates a switch queue; line messages queued on that address move
    /// into it.
    pub fn switch_create(
        &mut self,
        now: Millis,
        conn: ConnId,
        name: &Bytes,
        transient: bool,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), SwitchError> {
        self.channels.seal(out);
        if !self.switch.create(conn, name, transient)? {
            return Ok(());
        }
        let key = Bytes::copy_from_slice(name);
        for (reply, body) in self.queues.take_all(now, &key) {
            // They were within the line limits a moment ago: move them even
            // past the switch's own, rather than lose them.
            let stored = self.switch.store_from_line(now, &key, reply, body, out);
            if stored.is_err() {
                log::warn!(
                    "switch queue {}: a line message moved in was over the limits and dropped",
                    String::from_utf8_lossy(&key)
                );
            }
        }
        Ok(())
    }

    /// Sends a switch message to `name`: to a line receiver waiting there
    /// (which takes it), else into switch queue `name`; `None` (dropped)
    /// when neither exists.
    pub fn switch_send(
        &mut self,
        now: Millis,
        conn: ConnId,
        name: Bytes,
        message: Message,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Option<MessageId>, SwitchError> {
        self.channels.seal(out);
        let session = self.switch.session(conn)?;
        check_name(&name)?;
        if let Kind::Request(r) = &message.kind {
            if !r.is_empty() {
                check_name(r)?;
            }
        }
        let delivery = Delivery {
            to: &name,
            reply: message.reply_to().map(|r| &r[..]),
            timeout_s: LINE_TIMEOUT_S,
            body: &message.payload,
        };
        if self.queues.hand_to_waiter(delivery, out) {
            let id = self.switch.next_id(&name);
            self.switch.record_id_used(&name);
            self.switch.trace(Event {
                time: now,
                input: Some(session),
                queue: name.clone(),
                output: None,
                message: Traced::Message((name.clone(), id), traced(&message)),
                processing_time: None,
            });
            self.switch.handed_to_line(now, name.clone(), id, &message);
            self.switch.wake_traces(out);
            return Ok(Some((name, id)));
        }
        let sent = self
            .switch
            .store(now, Origin::Name(session), &name, message, out);
        self.switch.wake_traces(out);
        sent
    }

    /// Acknowledges message `(name, id)`.
    pub fn switch_ack(
        &mut self,
        now: Millis,
        conn: ConnId,
        name: &[u8],
        id: u64,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), SwitchError> {
        self.channels.seal(out);
        self.switch.ack(now, conn, name, id, out)
    }

    /// A blocking transfer (see [`Switch::transfer`]).
    pub fn switch_transfer(
        &mut self,
        now: Millis,
        conn: ConnId,
        from: Option<u64>,
        timeout_ms: Millis,
        names: Vec<Bytes>,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Poll<Transferred>, SwitchError> {
        self.channels.seal(out);
        self.switch
            .transfer(now, conn, from, timeout_ms, names, out)
    }

    /// The connection closes: its parked call is withdrawn by its door;
    /// here it leaves its session.
    pub fn switch_close(&mut self, conn: ConnId) {
        self.switch.logout(conn);
        self.sessions_ended();
    }

    /// The byte limits of a switch queue and of all of them.
    pub fn switch_limits(&self) -> (usize, usize) {
        (self.switch.limits.per_address, self.switch.limits.total)
    }

    /// A line send to `to`, which is a switch queue: a line receiver
    /// waiting there takes it, else it joins the switch queue.
    pub(super) fn line_send_to_switch(
        &mut self,
        now: Millis,
        to: Bytes,
        reply: Option<Bytes>,
        timeout_s: u64,
        body: Bytes,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), QueueFull> {
        let delivery = Delivery {
            to: &to,
            reply: reply.as_deref(),
            timeout_s,
            body: &body,
        };
        if self.queues.hand_to_waiter(delivery, out) {
            return Ok(());
        }
        self.switch.store_from_line(now, &to, reply, body, out)
    }

    /// What a line receiver waiting on `addresses` takes at once: the first
    /// address with a line message or an unseen switch message wins.
    pub(super) fn line_take(
        &mut self,
        now: Millis,
        addresses: &[Bytes],
        out: &mut (impl Outbox + ?Sized),
    ) -> Option<Taken> {
        for addr in addresses {
            if let Some(t) = self.queues.take(now, addr) {
                return Some(t);
            }
            if let Some(t) = self.switch.take_for_line(now, addr) {
                self.switch.wake_traces(out);
                return Some(t);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::test_support::{b, conn};
    use crate::broker::{Ready, RecordingOutbox};

    fn request(payload: &str, reply: &str) -> Message {
        Message {
            payload: b(payload),
            kind: Kind::Request(b(reply)),
        }
    }

    /// A broker with connections 1 and 2 logged in as sessions "a" and "b".
    fn broker() -> (Broker, RecordingOutbox) {
        let mut br = Broker::new();
        br.switch_login(conn(1), b"a").unwrap();
        br.switch_login(conn(2), b"b").unwrap();
        (br, RecordingOutbox::default())
    }

    fn create(br: &mut Broker, out: &mut RecordingOutbox, c: ConnId, name: &str, transient: bool) {
        br.switch_create(0, c, &b(name), transient, out).unwrap();
    }

    fn send(
        br: &mut Broker,
        out: &mut RecordingOutbox,
        now: Millis,
        name: &str,
        m: Message,
    ) -> Option<MessageId> {
        br.switch_send(now, conn(1), b(name), m, out).unwrap()
    }

    fn ids(t: &Transferred) -> Vec<(String, u64)> {
        t.messages
            .iter()
            .map(|((q, id), _)| (String::from_utf8_lossy(q).into_owned(), *id))
            .collect()
    }

    fn ready(p: Poll<Transferred>) -> Transferred {
        match p {
            Poll::Ready(t) => t,
            Poll::Waiting(w) => panic!("parked: {w:?}"),
        }
    }

    fn parked<T: std::fmt::Debug>(p: Poll<T>) -> SwitchWait {
        match p {
            Poll::Waiting(w) => w,
            Poll::Ready(t) => panic!("answered at once: {t:?}"),
        }
    }

    /// The transfers answered through the outbox, per connection.
    fn answered(out: &mut RecordingOutbox) -> Vec<(u32, Polled)> {
        std::mem::take(&mut out.polled)
            .into_iter()
            .map(|(c, p)| (c.key, p))
            .collect()
    }

    #[test]
    fn nothing_without_a_session() {
        let (mut br, mut out) = broker();
        let stranger = conn(9);
        assert_eq!(
            br.switch_create(0, stranger, &b("q"), false, &mut out),
            Err(SwitchError::NotLoggedIn)
        );
        assert_eq!(
            br.switch_send(0, stranger, b("q"), request("x", ""), &mut out),
            Err(SwitchError::NotLoggedIn)
        );
        assert_eq!(
            br.switch_transfer(0, stranger, None, 0, vec![b("q")], &mut out),
            Err(SwitchError::NotLoggedIn)
        );
        assert_eq!(
            br.switch.list(stranger, b"", false),
            Err(SwitchError::NotLoggedIn)
        );
        assert_eq!(
            br.switch_ack(0, stranger, b"q", 0, &mut out),
            Err(SwitchError::NotLoggedIn)
        );
        assert_eq!(
            br.switch.destroy(stranger, b"q"),
            Err(SwitchError::NotLoggedIn)
        );
    }

    #[test]
    fn ids_count_per_queue_and_sends_to_missing_queues_are_dropped() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "p", false);
        create(&mut br, &mut out, conn(1), "q", false);
        assert_eq!(
            send(&mut br, &mut out, 0, "p", request("1", "r")),
            Some((b("p"), 0))
        );
        assert_eq!(
            send(&mut br, &mut out, 0, "p", request("2", "r")),
            Some((b("p"), 1))
        );
        assert_eq!(
            send(&mut br, &mut out, 0, "q", request("3", "r")),
            Some((b("q"), 0))
        );
        assert_eq!(
            send(&mut br, &mut out, 0, "missing", request("4", "r")),
            None
        );
        assert_eq!(br.switch.stored(), 3);
        // Creating again changes nothing.
        create(&mut br, &mut out, conn(2), "p", true);
        assert_eq!(br.switch.queue(b"p").map(Queue::len), Some(2));
        assert!(br.switch.queue(b"p").is_some_and(|q| q.owner().is_none()));
    }

    #[test]
    fn transfer_from_order_and_several_queues_without_removing() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "p", false);
        create(&mut br, &mut out, conn(1), "q", false);
        for i in 0..3 {
            send(&mut br, &mut out, 0, "p", request(&format!("p{i}"), "r"));
        }
        send(&mut br, &mut out, 0, "q", request("q0", "r"));
        let all = vec![b("p"), b("q")];
        let t = ready(
            br.switch_transfer(1, conn(2), None, 0, all.clone(), &mut out)
                .unwrap(),
        );
        assert_eq!(
            ids(&t),
            vec![
                ("p".into(), 0),
                ("p".into(), 1),
                ("p".into(), 2),
                ("q".into(), 0)
            ]
        );
        assert_eq!(t.next, 2);
        assert_eq!(
            t.messages.first().map(|m| m.1.payload.clone()),
            Some(b("p0"))
        );
        // Not removed: the same again, and from 0 only the later ones.
        let again = ready(
            br.switch_transfer(1, conn(2), None, 0, all.clone(), &mut out)
                .unwrap(),
        );
        assert_eq!(again.messages.len(), 4);
        let later = ready(
            br.switch_transfer(1, conn(2), Some(0), 0, all.clone(), &mut out)
                .unwrap(),
        );
        assert_eq!(ids(&later), vec![("p".into(), 1), ("p".into(), 2)]);
        // Nothing after `from`: empty, and `next` is `from`.
        let none = ready(
            br.switch_transfer(1, conn(2), Some(5), 0, all, &mut out)
                .unwrap(),
        );
        assert_eq!(
            none,
            Transferred {
                messages: vec![],
                next: 5
            }
        );
        let empty = ready(
            br.switch_transfer(1, conn(2), None, 0, vec![b("nope")], &mut out)
                .unwrap(),
        );
        assert_eq!(empty.next, -1);
    }

    #[test]
    fn a_blocking_transfer_is_answered_by_the_next_message() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "svc", false);
        let w = parked(
            br.switch_transfer(
                0,
                conn(2),
                None,
                5_000,
                vec![b("other"), b("svc")],
                &mut out,
            )
            .unwrap(),
        );
        assert_eq!(br.switch.parked_transfers(), 1);
        // A message on a queue it does not name wakes nothing.
        create(&mut br, &mut out, conn(1), "x", false);
        send(&mut br, &mut out, 10, "x", request("no", "r"));
        assert!(answered(&mut out).is_empty());
        send(&mut br, &mut out, 20, "svc", request("yes", "r"));
        let got = answered(&mut out);
        assert_eq!(got.len(), 1);
        let Some((2, Polled::Transfer(t))) = got.into_iter().next() else {
            panic!("not a transfer for conn 2");
        };
        assert_eq!(ids(&t), vec![("svc".into(), 0)]);
        assert_eq!(t.next, 0);
        assert_eq!(br.switch.parked_transfers(), 0);
        // Its deadline later finds nothing parked.
        assert_eq!(br.switch.transfer_deadline(5_000, w, &mut out), None);
        // Every listener sees every message: two parked, both answered.
        for c in [1, 2] {
            parked(
                br.switch_transfer(30, conn(c), Some(0), 5_000, vec![b("svc")], &mut out)
                    .unwrap(),
            );
        }
        send(&mut br, &mut out, 40, "svc", request("both", "r"));
        let keys: Vec<u32> = answered(&mut out).iter().map(|(c, _)| *c).collect();
        assert_eq!(keys, vec![1, 2]);
    }

    #[test]
    fn a_transfer_whose_connection_refuses_the_answer_leaves_the_message_unseen() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "svc", false);
        parked(
            br.switch_transfer(0, conn(2), None, 5_000, vec![b("svc")], &mut out)
                .unwrap(),
        );
        out.refuse.push(conn(2));
        send(&mut br, &mut out, 1, "svc", request("m", ""));
        assert_eq!(br.switch.parked_transfers(), 0);
        assert!(answered(&mut out).is_empty());
        // Nobody was handed it: a line receiver may take it.
        let got = br.ready(2, conn(20), 30, vec![b("svc")], &mut out);
        assert!(matches!(got, Ready::Message(_)), "{got:?}");
    }

    #[test]
    fn a_blocking_transfer_ignores_ids_at_or_below_from_and_times_out() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "a", false);
        create(&mut br, &mut out, conn(1), "b", false);
        for _ in 0..3 {
            send(&mut br, &mut out, 0, "a", request("a", "r"));
        }
        // `from` 2 (from queue a's numbering) also applies to queue b.
        let w = parked(
            br.switch_transfer(0, conn(2), Some(2), 1_000, vec![b("a"), b("b")], &mut out)
                .unwrap(),
        );
        send(&mut br, &mut out, 1, "b", request("b0", "r"));
        assert!(answered(&mut out).is_empty());
        // The deadline: withdrawn, answered with nothing above `from`.
        let t = br.switch.transfer_deadline(1_000, w, &mut out);
        assert_eq!(
            t,
            Some(Transferred {
                messages: vec![],
                next: 2
            })
        );
        assert_eq!(br.switch.parked_transfers(), 0);
        // A later message wakes nobody.
        send(&mut br, &mut out, 2_000, "a", request("a3", "r"));
        assert!(answered(&mut out).is_empty());
    }

    #[test]
    fn ack_removes_and_unknown_ids_are_ignored() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        send(&mut br, &mut out, 0, "q", request("m0", "r"));
        send(&mut br, &mut out, 0, "q", request("m1", "r"));
        br.switch_ack(1, conn(2), b"q", 0, &mut out).unwrap();
        br.switch_ack(1, conn(2), b"q", 99, &mut out).unwrap();
        br.switch_ack(1, conn(2), b"nowhere", 0, &mut out).unwrap();
        let t = ready(
            br.switch_transfer(2, conn(2), None, 0, vec![b("q")], &mut out)
                .unwrap(),
        );
        assert_eq!(ids(&t), vec![("q".into(), 1)]);
        br.switch_ack(3, conn(2), b"q", 1, &mut out).unwrap();
        assert_eq!(br.switch.stored(), 0);
        assert_eq!(br.switch.stored_bytes(), 0);
        // Ids keep counting after acks.
        assert_eq!(
            send(&mut br, &mut out, 4, "q", request("m2", "r")),
            Some((b("q"), 2))
        );
    }

    #[test]
    fn destroy_and_list() {
        let (mut br, mut out) = broker();
        for name in ["svc.b", "svc.a", "other"] {
            create(&mut br, &mut out, conn(1), name, false);
        }
        let names = |br: &Broker, prefix: &str, alive: bool| -> Vec<String> {
            br.switch
                .list(conn(1), prefix.as_bytes(), alive)
                .unwrap()
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect()
        };
        assert_eq!(names(&br, "svc.", false), vec!["svc.a", "svc.b"]);
        assert_eq!(names(&br, "", false).len(), 3);
        assert!(names(&br, "", true).is_empty());
        // Alive once a transfer named it.
        br.switch_transfer(0, conn(1), None, 0, vec![b("svc.b")], &mut out)
            .unwrap();
        assert_eq!(names(&br, "", true), vec!["svc.b"]);
        send(&mut br, &mut out, 0, "svc.b", request("x", "r"));
        br.switch.destroy(conn(2), b"svc.b").unwrap();
        assert_eq!(names(&br, "svc", false), vec!["svc.a"]);
        assert_eq!(br.switch.stored_bytes(), 0);
        // Sends to it are dropped now.
        assert_eq!(send(&mut br, &mut out, 0, "svc.b", request("y", "r")), None);
    }

    #[test]
    fn a_transient_queue_lives_while_its_session_has_a_connection() {
        let (mut br, mut out) = broker();
        // Two connections of session "a".
        br.switch_login(conn(3), b"a").unwrap();
        create(&mut br, &mut out, conn(3), "reply.a", true);
        create(&mut br, &mut out, conn(1), "service", false);
        send(&mut br, &mut out, 0, "reply.a", request("kept", ""));
        br.switch_close(conn(3));
        assert!(
            br.switch.has_queue(b"reply.a"),
            "gone with one connection of two"
        );
        // Another session closing changes nothing.
        br.switch_close(conn(2));
        assert!(br.switch.has_queue(b"reply.a"));
        br.switch_close(conn(1));
        assert!(!br.switch.has_queue(b"reply.a"));
        assert!(br.switch.has_queue(b"service"), "persistent queues stay");
        assert_eq!(br.switch.stored_bytes(), 0);
        assert_eq!(br.switch.session_count(), 0);
        // Logging in again to a new session starts from nothing.
        br.switch_login(conn(4), b"a").unwrap();
        assert_eq!(br.switch.session_count(), 1);
    }

    #[test]
    fn logging_in_elsewhere_leaves_the_old_session() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "mine", true);
        br.switch_login(conn(1), b"other").unwrap();
        assert!(!br.switch.has_queue(b"mine"));
        assert_eq!(br.switch.session_of(conn(1)), Some(&b("other")));
    }

    #[test]
    fn unacked_messages_stay_when_their_consumer_goes() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "jobs", false);
        send(&mut br, &mut out, 0, "jobs", request("job", ""));
        let t = ready(
            br.switch_transfer(0, conn(2), None, 0, vec![b("jobs")], &mut out)
                .unwrap(),
        );
        assert_eq!(t.messages.len(), 1);
        br.switch_close(conn(2));
        // A new consumer without `from` gets it again: at least once.
        br.switch_login(conn(5), b"c").unwrap();
        let again = ready(
            br.switch_transfer(1, conn(5), None, 0, vec![b("jobs")], &mut out)
                .unwrap(),
        );
        assert_eq!(ids(&again), vec![("jobs".into(), 0)]);
    }

    #[test]
    fn names_and_limits() {
        let (mut br, mut out) = broker();
        for bad in ["", "a b", "a\nb", "a\rb", "tab\t"] {
            assert_eq!(
                br.switch_create(0, conn(1), &b(bad), false, &mut out),
                Err(SwitchError::BadName),
                "{bad:?}"
            );
        }
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(
            br.switch_create(0, conn(1), &b(&long), false, &mut out),
            Err(SwitchError::BadName)
        );
        assert_eq!(
            br.switch_login(conn(7), long.as_bytes()),
            Err(SwitchError::BadName)
        );
        let many: Vec<Bytes> = (0..=MAX_TRANSFER_QUEUES)
            .map(|i| b(&i.to_string()))
            .collect();
        assert_eq!(
            br.switch_transfer(0, conn(1), None, 0, many, &mut out),
            Err(SwitchError::TooManyTransferQueues)
        );
        // Byte limits per queue and in total.
        let limits = QueueLimits {
            per_address: 2 * (ENTRY_OVERHEAD + 2 + 10),
            total: 3 * (ENTRY_OVERHEAD + 2 + 10),
        };
        let mut br = Broker::new();
        br.switch = Switch::new(0).with_limits(limits);
        br.switch_login(conn(1), b"a").unwrap();
        create(&mut br, &mut out, conn(1), "q1", false);
        create(&mut br, &mut out, conn(1), "q2", false);
        let body = || request("0123456789", "");
        assert!(br
            .switch_send(0, conn(1), b("q1"), body(), &mut out)
            .is_ok());
        assert!(br
            .switch_send(0, conn(1), b("q1"), body(), &mut out)
            .is_ok());
        assert_eq!(
            br.switch_send(0, conn(1), b("q1"), body(), &mut out),
            Err(SwitchError::Full)
        );
        assert!(br
            .switch_send(0, conn(1), b("q2"), body(), &mut out)
            .is_ok());
        assert_eq!(
            br.switch_send(0, conn(1), b("q2"), body(), &mut out),
            Err(SwitchError::Full)
        );
        assert_eq!(br.switch.refused_full(), 2);
        br.switch_ack(0, conn(1), b"q1", 0, &mut out).unwrap();
        assert!(br
            .switch_send(0, conn(1), b("q2"), body(), &mut out)
            .is_ok());
    }

    #[test]
    fn parked_transfers_leave_no_index_behind() {
        let (mut br, mut out) = broker();
        for i in 0..1000 {
            let w = parked(
                br.switch_transfer(
                    0,
                    conn(1),
                    None,
                    1_000,
                    vec![b("idle"), b(&format!("n{}", i % 3))],
                    &mut out,
                )
                .unwrap(),
            );
            if i % 2 == 0 {
                br.switch.cancel(w);
            } else {
                assert!(br.switch.transfer_deadline(1_000, w, &mut out).is_some());
            }
        }
        assert_eq!(br.switch.parked_transfers(), 0);
        let listed: usize = br.switch.waits_on.values().map(|l| l.keys.len()).sum();
        assert!(listed < 40, "{listed} index entries left");
    }

    #[test]
    fn the_trace_ring_records_sends_deliveries_and_acks() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "svc", false);
        create(&mut br, &mut out, conn(2), "reply", true);
        let id = send(&mut br, &mut out, 100, "svc", request("ping", "reply")).unwrap();
        let t = ready(
            br.switch_transfer(150, conn(2), None, 0, vec![b("svc")], &mut out)
                .unwrap(),
        );
        assert_eq!(t.messages.len(), 1);
        let response = Message {
            payload: b("pong"),
            kind: Kind::Response(id.clone()),
        };
        br.switch_send(300, conn(2), b("reply"), response, &mut out)
            .unwrap();
        br.switch_ack(310, conn(2), b"svc", 0, &mut out).unwrap();
        br.switch_transfer(400, conn(1), None, 0, vec![b("reply")], &mut out)
            .unwrap();
        let Poll::Ready(events) = br.switch.trace_poll(conn(1), -1, 5_000) else {
            panic!("the default trace poll must not park");
        };
        let kinds: Vec<String> = events
            .iter()
            .map(|(n, e)| {
                let what = match &e.message {
                    Traced::Message(..) if e.output.is_some() => "deliver",
                    Traced::Message(..) => "send",
                    Traced::Ack(_) => "ack",
                };
                format!("{n} {what} {}", String::from_utf8_lossy(&e.queue))
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "0 send svc",
                "1 deliver svc",
                "2 send reply",
                "3 ack svc",
                "4 deliver reply"
            ]
        );
        let first = events.first().map(|(_, e)| e.clone());
        assert_eq!(first.as_ref().and_then(|e| e.input.clone()), Some(b("a")));
        // The response handed over carries its processing time: its request
        // was acked by then, so it has none.
        assert_eq!(events.last().and_then(|(_, e)| e.processing_time), None);
        // From 3 on.
        let Poll::Ready(tail) = br.switch.trace_poll(conn(1), 3, 5_000) else {
            panic!("events exist from 3 on");
        };
        assert_eq!(tail.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn processing_time_of_a_response_to_a_pending_request() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "svc", false);
        create(&mut br, &mut out, conn(1), "reply", true);
        let id = send(&mut br, &mut out, 1_000, "svc", request("ping", "reply")).unwrap();
        let response = Message {
            payload: b("pong"),
            kind: Kind::Response(id),
        };
        br.switch_send(1_250, conn(2), b("reply"), response, &mut out)
            .unwrap();
        br.switch_transfer(1_300, conn(1), None, 0, vec![b("reply")], &mut out)
            .unwrap();
        let Poll::Ready(events) = br.switch.trace_poll(conn(1), 2, 0) else {
            panic!("ready");
        };
        assert_eq!(
            events.first().and_then(|(_, e)| e.processing_time),
            Some(300)
        );
    }

    #[test]
    fn a_trace_poll_blocks_until_an_event_and_the_ring_is_bounded() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        let w = parked(br.switch.trace_poll(conn(2), 0, 5_000));
        assert_eq!(br.switch.parked_traces(), 1);
        send(&mut br, &mut out, 5, "q", request("m", ""));
        let got = answered(&mut out);
        let Some((2, Polled::Trace(events))) = got.into_iter().next() else {
            panic!("the trace poll was not answered");
        };
        assert_eq!(events.len(), 1);
        assert_eq!(br.switch.trace_deadline(w), None);
        // One that times out.
        let w = parked(br.switch.trace_poll(conn(2), 1, 5_000));
        assert_eq!(br.switch.trace_deadline(w), Some(vec![]));
        // The ring keeps the last TRACE_EVENTS, and payloads are cut.
        let big = "x".repeat(TRACE_PAYLOAD * 4);
        for _ in 0..TRACE_EVENTS + 10 {
            send(&mut br, &mut out, 6, "q", request(&big, ""));
        }
        let Poll::Ready(events) = br.switch.trace_poll(conn(2), -1, 0) else {
            panic!("ready");
        };
        assert_eq!(events.len(), TRACE_EVENTS);
        assert_eq!(events.first().map(|(n, _)| *n), Some(11));
        let Some((
            _,
            Event {
                message: Traced::Message(_, m),
                ..
            },
        )) = events.last()
        else {
            panic!("a message event");
        };
        assert_eq!(m.payload.len(), TRACE_PAYLOAD);
        // Withdrawn polls leave no index behind.
        for _ in 0..100 {
            let w = parked(br.switch.trace_poll(conn(2), 1_000_000, 5_000));
            br.switch.cancel(w);
        }
        let listed: usize = br.switch.trace_waits.values().map(Vec::len).sum();
        assert!(listed < 4, "{listed}");
    }

    #[test]
    fn diagnostics_view() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "svc", false);
        create(&mut br, &mut out, conn(2), "tmp", true);
        send(&mut br, &mut out, 42, "svc", request("hello", "tmp"));
        br.switch_transfer(50, conn(2), None, 5_000, vec![b("tmp")], &mut out)
            .unwrap();
        let queues = br.switch.queues();
        let names: Vec<&[u8]> = queues.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, vec![&b"svc"[..], b"tmp"]);
        let (_, svc) = queues.first().copied().unwrap();
        assert_eq!(svc.owner(), None);
        assert_eq!(svc.next_transfer_expected(), None);
        let (id, e) = svc.entries().next().unwrap();
        assert_eq!(
            (id, e.time, e.origin.clone()),
            (0, 42, Origin::Name(b("a")))
        );
        let (_, tmp) = queues.get(1).copied().unwrap();
        assert_eq!(tmp.owner(), Some(&b("b")));
        assert_eq!(tmp.next_transfer_expected(), Some(5_050));
    }

    // The line protocol and the switch, one namespace.

    #[test]
    fn a_switch_request_reaches_a_line_receiver_and_its_answer_the_caller() {
        let (mut br, mut out) = broker();
        let worker = conn(20);
        assert!(matches!(
            br.ready(0, worker, 30, vec![b("svc")], &mut out),
            Ready::Waiting(_)
        ));
        create(&mut br, &mut out, conn(1), "reply.1", true);
        let id = send(&mut br, &mut out, 1, "svc", request("hello", "reply.1"));
        assert_eq!(id, Some((b("svc"), 0)));
        let got = out.answers_for(worker);
        assert_eq!(
            got,
            vec![Some((
                b("svc"),
                Some(b("reply.1")),
                LINE_TIMEOUT_S,
                b("hello")
            ))]
        );
        // The worker answers over the line protocol, without a reply address:
        // the message is the response to request (svc, 0).
        br.send(2, b("reply.1"), None, 30, b("HELLO"), &mut out)
            .unwrap();
        let t = ready(
            br.switch_transfer(3, conn(1), None, 0, vec![b("reply.1")], &mut out)
                .unwrap(),
        );
        let (mid, m) = t.messages.first().cloned().unwrap();
        assert_eq!(mid, (b("reply.1"), 0));
        assert_eq!(m.payload, b("HELLO"));
        assert_eq!(m.kind, Kind::Response((b("svc"), 0)));
    }

    #[test]
    fn a_line_receiver_takes_a_stored_switch_message_once() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "svc", false);
        send(&mut br, &mut out, 0, "svc", request("one", ""));
        send(&mut br, &mut out, 0, "svc", request("two", "back"));
        let worker = conn(20);
        let first = br.ready(1, worker, 30, vec![b("svc")], &mut out);
        let Ready::Message(m) = first else {
            panic!("nothing taken: {first:?}");
        };
        assert_eq!((m.body, m.reply), (b("one"), None));
        // Taking it removed it.
        let t = ready(
            br.switch_transfer(2, conn(2), None, 0, vec![b("svc")], &mut out)
                .unwrap(),
        );
        assert_eq!(ids(&t), vec![("svc".into(), 1)]);
        // "two" was handed to a switch client: line receivers leave it.
        assert!(matches!(
            br.ready(3, worker, 30, vec![b("svc")], &mut out),
            Ready::Waiting(_)
        ));
    }

    #[test]
    fn line_receivers_take_unseen_messages_in_order_past_seen_ones() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        let take = |br: &mut Broker, out: &mut RecordingOutbox| match br.ready(
            0,
            conn(20),
            30,
            vec![b("q")],
            out,
        ) {
            Ready::Message(m) => Some(m.body),
            Ready::Waiting(w) => {
                br.cancel(w);
                None
            }
            Ready::TimedOut => None,
        };
        send(&mut br, &mut out, 0, "q", request("m0", ""));
        send(&mut br, &mut out, 0, "q", request("m1", ""));
        br.switch_transfer(0, conn(2), None, 0, vec![b("q")], &mut out)
            .unwrap();
        send(&mut br, &mut out, 0, "q", request("m2", ""));
        assert_eq!(take(&mut br, &mut out), Some(b("m2")));
        send(&mut br, &mut out, 0, "q", request("m3", ""));
        send(&mut br, &mut out, 0, "q", request("m4", ""));
        // A transfer from 3 hands out m4 only.
        let t = ready(
            br.switch_transfer(0, conn(2), Some(3), 0, vec![b("q")], &mut out)
                .unwrap(),
        );
        assert_eq!(ids(&t), vec![("q".into(), 4)]);
        assert_eq!(take(&mut br, &mut out), Some(b("m3")));
        assert_eq!(take(&mut br, &mut out), None);
        send(&mut br, &mut out, 0, "q", request("m5", ""));
        assert_eq!(take(&mut br, &mut out), Some(b("m5")));
        assert_eq!(br.switch.stored(), 3, "m0, m1 and m4 wait for their acks");
    }

    #[test]
    fn a_line_query_is_served_by_a_switch_client() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(2), "svc", false);
        let server = parked(
            br.switch_transfer(0, conn(2), None, 5_000, vec![b("svc")], &mut out)
                .unwrap(),
        );
        let asker = conn(30);
        let Ok(Ready::Waiting(_)) = br.query(1, asker, 30, b("svc"), b("ping"), &mut out) else {
            panic!("the query did not wait");
        };
        let got = answered(&mut out);
        let Some((2, Polled::Transfer(t))) = got.into_iter().next() else {
            panic!("the switch server was not woken");
        };
        assert_eq!(br.switch.transfer_deadline(5_000, server, &mut out), None);
        let ((q, n), m) = t.messages.first().cloned().unwrap();
        let Kind::Request(reply) = m.kind.clone() else {
            panic!("not a request");
        };
        assert_eq!(m.payload, b("ping"));
        let response = Message {
            payload: b("pong"),
            kind: Kind::Response((q.clone(), n)),
        };
        // The reply address is the asker's line wait: it takes the response.
        let sent = br
            .switch_send(2, conn(2), reply.clone(), response, &mut out)
            .unwrap();
        assert_eq!(sent.map(|(q, _)| q), Some(reply.clone()));
        assert_eq!(
            out.answers_for(asker),
            vec![Some((reply, None, LINE_TIMEOUT_S, b("pong")))]
        );
        br.switch_ack(3, conn(2), &q, n, &mut out).unwrap();
        assert_eq!(br.switch.stored(), 0);
    }

    #[test]
    fn creating_a_switch_queue_takes_in_its_line_messages() {
        let (mut br, mut out) = broker();
        br.send(0, b("svc"), Some(b("r1")), 60, b("early"), &mut out)
            .unwrap();
        br.send(0, b("svc"), None, 60, b("plain"), &mut out)
            .unwrap();
        assert_eq!(br.queues.queued(), 2);
        create(&mut br, &mut out, conn(1), "svc", false);
        assert_eq!(br.queues.queued(), 0);
        let t = ready(
            br.switch_transfer(1, conn(1), None, 0, vec![b("svc")], &mut out)
                .unwrap(),
        );
        let kinds: Vec<Kind> = t.messages.iter().map(|(_, m)| m.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![Kind::Request(b("r1")), Kind::Request(Bytes::new())]
        );
        // A line send to it now joins it, and stays past its timeout.
        br.send(2, b("svc"), None, 1, b("late"), &mut out).unwrap();
        br.on_timers(10_000, &mut out);
        assert_eq!(br.switch.queue(b"svc").map(Queue::len), Some(3));
    }

    #[test]
    fn a_switch_send_with_no_queue_reaches_a_waiting_line_receiver() {
        let (mut br, mut out) = broker();
        let worker = conn(20);
        br.ready(0, worker, 30, vec![b("free")], &mut out);
        let sent = send(&mut br, &mut out, 1, "free", request("x", ""));
        assert_eq!(sent, Some((b("free"), 0)));
        assert_eq!(out.answers_for(worker).len(), 1);
        // Nobody waiting any more: dropped.
        assert_eq!(send(&mut br, &mut out, 2, "free", request("y", "")), None);
    }

    /// A broker recording into a journal, with sessions as [`broker`].
    fn journaled() -> (Broker, RecordingOutbox, Journal) {
        let journal = Journal::new(1_000_000);
        let mut br = Broker {
            queues: crate::broker::Queues::new(1).with_journal(journal.clone()),
            switch: Switch::new(1_000_000).with_journal(journal.clone()),
            ..Broker::default()
        };
        br.switch_login(conn(1), b"a").unwrap();
        br.switch_login(conn(2), b"b").unwrap();
        (br, RecordingOutbox::default(), journal)
    }

    /// Replays `bytes` (a log's records) into a fresh broker, as a start does.
    fn replayed(bytes: Vec<u8>, now: Millis, epoch_ms: u64) -> Broker {
        let mut state = crate::store::log::State::default();
        for r in rec::decode_all(&Bytes::from(bytes)).unwrap() {
            state.apply(r);
        }
        let mut br = Broker::new();
        br.restore(now, epoch_ms, state);
        br
    }

    /// A persistent switch queue: name, next id, messages (id, payload,
    /// seen by a transfer).
    type QueueContents = (Bytes, u64, Vec<(u64, Bytes, bool)>);

    /// What a broker holds, for comparing two: its persistent switch queues
    /// and each line address's messages (address, body).
    fn contents(br: &Broker) -> (Vec<QueueContents>, Vec<(Vec<u8>, Bytes)>) {
        let switch = br
            .switch
            .queues()
            .into_iter()
            .filter(|(_, q)| q.owner().is_none())
            .map(|(n, q)| {
                let m = q
                    .entries()
                    .map(|(id, e)| (id, e.message.payload.clone(), e.seen))
                    .collect();
                (n.clone(), q.next_id, m)
            })
            .collect();
        let mut line = Vec::new();
        br.queues.for_each_queued(|_, to, _, _, _, body| {
            line.push((to.to_vec(), Bytes::copy_from_slice(body)));
        });
        line.sort();
        (switch, line)
    }

    #[test]
    fn the_journal_and_a_snapshot_both_rebuild_the_same_broker() {
        let (mut br, mut out, journal) = journaled();
        create(&mut br, &mut out, conn(1), "svc", false);
        create(&mut br, &mut out, conn(1), "mine", true);
        create(&mut br, &mut out, conn(1), "gone", false);
        let a = send(&mut br, &mut out, 0, "svc", request("a", "mine")).unwrap();
        send(&mut br, &mut out, 0, "svc", request("b", "")).unwrap();
        send(&mut br, &mut out, 0, "svc", request("c", "")).unwrap();
        send(&mut br, &mut out, 0, "mine", request("transient", "")).unwrap();
        send(&mut br, &mut out, 0, "gone", request("x", "")).unwrap();
        br.switch_ack(0, conn(1), b"svc", a.1, &mut out).unwrap();
        // A transfer hands `b` and `c` over: seen.
        let t = br.switch_transfer(0, conn(2), Some(a.1), 0, vec![b("svc")], &mut out);
        assert!(matches!(t, Ok(Poll::Ready(_))));
        // An id used by a message handed straight to a line receiver.
        assert!(matches!(
            br.ready(0, conn(3), 30, vec![b("svc2")], &mut out),
            Ready::Waiting(_)
        ));
        create(&mut br, &mut out, conn(1), "svc2", false);
        send(&mut br, &mut out, 0, "svc2", request("direct", "")).unwrap();
        br.switch.destroy(conn(1), b"gone").unwrap();
        // Line messages: one taken, one expired, two kept.
        br.send(0, b("q"), None, 1, b("short"), &mut out).unwrap();
        br.send(0, b("q"), Some(b("r")), 600, b("one"), &mut out)
            .unwrap();
        br.send(0, b("q"), None, 600, b("two"), &mut out).unwrap();
        br.send(0, b("p"), None, 600, b("three"), &mut out).unwrap();
        br.on_timers(1_000, &mut out);
        assert!(matches!(
            br.ready(1_000, conn(4), 0, vec![b("q")], &mut out),
            Ready::Message(_)
        ));
        let log = journal.take();
        // The records, replayed a second later (wall clock), rebuild it.
        let from_log = replayed(log, 0, 1_002_000);
        assert_eq!(contents(&from_log), contents(&br));
        let (switch, line) = contents(&br);
        assert_eq!(switch.len(), 2, "{switch:?}");
        assert_eq!(
            line,
            vec![(b"p".to_vec(), b("three")), (b"q".to_vec(), b("two"))]
        );
        // `svc2` used id 0 on the line receiver: the next is 1.
        assert_eq!(switch[1].1, 1);
        // And so does a snapshot of it.
        let mut snap = Vec::new();
        br.snapshot(1_000_000, 1, &mut snap);
        let from_snapshot = replayed(snap, 0, 1_002_000);
        assert_eq!(contents(&from_snapshot), contents(&br));
        // Ids go on after a restart; deadlines hold: sent at wall-clock
        // 1,000,000 ms for 600 s, due at 1,600,000 ms, which is 598,000 ms
        // after a start at 1,002,000 ms.
        let mut again = from_snapshot;
        again.switch_login(conn(1), b"a").unwrap();
        let next = again
            .switch_send(0, conn(1), b("svc"), request("d", ""), &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(next.1, 3);
        again.on_timers(597_999, &mut out);
        assert_eq!(again.queues.queued(), 2);
        again.on_timers(598_000, &mut out);
        assert_eq!(again.queues.queued(), 0);
    }

    // What the mutation run of this file found untested: the copy of small
    // payloads, what a message counts, the error texts, names and limits at
    // their bounds, a store that refuses records, `restore`, the counters
    // (owed responses, unseen messages, loose ids), and the indexes of
    // parked transfers and trace polls (generations, compaction, wakes).

    #[test]
    fn payloads_below_16_kib_are_copied_and_larger_ones_shared() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        let small = Bytes::from(vec![b's'; 16 * 1024 - 1]);
        let shared = Bytes::from(vec![b'l'; 16 * 1024]);
        for payload in [small.clone(), shared.clone()] {
            let m = Message {
                payload,
                kind: Kind::Request(Bytes::new()),
            };
            send(&mut br, &mut out, 0, "q", m);
        }
        let stored: Vec<Bytes> = br
            .switch
            .queue(b"q")
            .unwrap()
            .entries()
            .map(|(_, e)| e.message.payload.clone())
            .collect();
        assert_eq!(stored, vec![small.clone(), shared.clone()]);
        // The small one no longer points into the buffer it came from.
        assert_ne!(stored[0].as_ptr(), small.as_ptr());
        assert_eq!(stored[1].as_ptr(), shared.as_ptr());
    }

    #[test]
    fn a_message_counts_its_payload_its_names_and_the_overhead() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "qqq", false);
        let q = br.switch.queue(b"qqq").unwrap();
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        send(&mut br, &mut out, 0, "qqq", request("0123456789", "rr"));
        assert_eq!(br.switch.stored_bytes(), 10 + 2 + 3 + ENTRY_OVERHEAD);
        // A response counts the name of its request's queue.
        let response = Message {
            payload: b("abc"),
            kind: Kind::Response((b("svc1"), 7)),
        };
        send(&mut br, &mut out, 0, "qqq", response);
        assert_eq!(
            br.switch.stored_bytes(),
            10 + 2 + 3 + ENTRY_OVERHEAD + 3 + 4 + 3 + ENTRY_OVERHEAD
        );
        let q = br.switch.queue(b"qqq").unwrap();
        assert!(!q.is_empty());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn every_refusal_says_why() {
        let texts: Vec<String> = [
            SwitchError::NotLoggedIn,
            SwitchError::BadName,
            SwitchError::TooManyQueues,
            SwitchError::TooManyTransferQueues,
            SwitchError::Full,
            SwitchError::Store,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            texts,
            vec![
                "Please log in.",
                "a queue name or token must be 1 to 1024 bytes, without spaces or control characters",
                "too many queues (the limit is 100000)",
                "a transfer may name at most 64 queues",
                "queue full",
                "store unavailable",
            ]
        );
    }

    #[test]
    fn a_name_or_token_of_exactly_the_limit_is_fine() {
        let (mut br, mut out) = broker();
        let longest = "x".repeat(MAX_NAME);
        assert_eq!(check_name(longest.as_bytes()), Ok(()));
        assert_eq!(br.switch_login(conn(7), longest.as_bytes()), Ok(()));
        assert_eq!(
            br.switch_create(0, conn(7), &b(&longest), false, &mut out),
            Ok(())
        );
        assert!(br.switch.has_queue(longest.as_bytes()));
        // DEL is refused like the control characters.
        assert_eq!(check_name(b"a\x7fb"), Err(SwitchError::BadName));
        assert_eq!(check_name(b"a~b"), Ok(()));
    }

    #[test]
    fn a_store_that_refuses_records_refuses_what_it_would_record() {
        let (mut br, mut out, journal) = journaled();
        create(&mut br, &mut out, conn(1), "svc", false);
        create(&mut br, &mut out, conn(1), "mine", true);
        send(&mut br, &mut out, 0, "svc", request("kept", "")).unwrap();
        journal.set_refusal(Some(crate::store::Refusal::Failed));
        let store = Err(SwitchError::Store);
        assert_eq!(
            br.switch_create(0, conn(1), &b("p"), false, &mut out),
            store
        );
        assert!(!br.switch.has_queue(b"p"));
        assert_eq!(
            br.switch_send(0, conn(1), b("svc"), request("x", ""), &mut out),
            Err(SwitchError::Store)
        );
        assert_eq!(br.switch_ack(0, conn(1), b"svc", 0, &mut out), store);
        assert_eq!(br.switch.destroy(conn(1), b"svc"), store);
        assert_eq!(
            br.send(0, b("svc"), None, 30, b("line"), &mut out),
            Err(QueueFull::Store)
        );
        assert_eq!(br.switch.queue(b"svc").map(Queue::len), Some(1));
        // Transient queues are not recorded: they carry on.
        assert_eq!(
            br.switch_create(0, conn(1), &b("also"), true, &mut out),
            Ok(())
        );
        assert!(br
            .switch_send(0, conn(1), b("mine"), request("y", ""), &mut out)
            .unwrap()
            .is_some());
        assert_eq!(br.switch.destroy(conn(1), b"mine"), Ok(()));
        // The store back: so is everything.
        journal.set_refusal(None);
        assert_eq!(br.switch_ack(0, conn(1), b"svc", 0, &mut out), Ok(()));
        assert_eq!(br.switch.destroy(conn(1), b"svc"), Ok(()));
    }

    #[test]
    fn ids_on_names_that_are_no_queue_come_from_one_counter() {
        let (mut br, mut out) = broker();
        for n in 0..2 {
            br.ready(0, conn(20), 30, vec![b("free")], &mut out);
            let sent = send(&mut br, &mut out, 1, "free", request("x", ""));
            assert_eq!(sent, Some((b("free"), n)));
        }
        assert_eq!(br.switch.loose_ids(), 2);
    }

    fn stored_message(payload: &str, seen: bool) -> crate::store::log::SwitchMessage {
        crate::store::log::SwitchMessage {
            time: 0,
            origin: rec::Origin {
                session: true,
                name: b("a"),
            },
            kind: rec::SwitchKind::Request(Bytes::new()),
            payload: b(payload),
            seen,
        }
    }

    #[test]
    fn restore_counts_what_it_puts_back() {
        let (mut br, mut out) = broker();
        // A queue whose recorded next id is behind its messages' ids.
        let sq = SwitchQueue {
            next_id: 0,
            messages: [
                (2, stored_message("seen", true)),
                (3, stored_message("one", false)),
                (4, stored_message("two", false)),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(br.switch.restore(0, 0, 5, [(b("svc"), sq)]), 3);
        assert_eq!(br.switch.loose_ids(), 5);
        let size = |p: &str| p.len() + 3 + ENTRY_OVERHEAD;
        assert_eq!(
            br.switch.stored_bytes(),
            size("seen") + size("one") + size("two")
        );
        // Both unseen messages go to line receivers, the seen one stays.
        for want in ["one", "two"] {
            let Ready::Message(m) = br.ready(0, conn(20), 30, vec![b("svc")], &mut out) else {
                panic!("{want} not taken");
            };
            assert_eq!(m.body, b(want));
        }
        assert_eq!(br.switch.stored_bytes(), size("seen"));
        // Ids go on after the greatest one restored.
        assert_eq!(
            send(&mut br, &mut out, 0, "svc", request("next", "")),
            Some((b("svc"), 5))
        );
    }

    #[test]
    fn the_clock_and_the_fast_path_flag() {
        assert_eq!(Switch::new(1_234_567).epoch_ms(), 1_234_567);
        let (mut br, mut out) = broker();
        assert!(br.switch.has_no_queues());
        assert_eq!(br.switch.queue_count(), 0);
        create(&mut br, &mut out, conn(1), "q", true);
        assert!(!br.switch.has_no_queues());
        assert_eq!(br.switch.queue_count(), 1);
        create(&mut br, &mut out, conn(1), "q2", true);
        assert_eq!(br.switch.queue_count(), 2);
        br.switch_close(conn(1));
        assert!(br.switch.has_no_queues());
    }

    #[test]
    fn a_parked_trace_poll_counts_until_it_is_answered() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        assert_eq!(br.switch.parked_traces(), 0);
        parked(br.switch.trace_poll(conn(2), 0, 5_000));
        assert_eq!(br.switch.parked_traces(), 1);
        send(&mut br, &mut out, 5, "q", request("m", ""));
        assert_eq!(answered(&mut out).len(), 1);
        assert_eq!(br.switch.parked_traces(), 0);
    }

    /// Queue "svc" with two requests whose replies go to the transient
    /// queue "r".
    fn two_requests_for_r(br: &mut Broker, out: &mut RecordingOutbox) {
        create(br, out, conn(1), "svc", false);
        create(br, out, conn(1), "r", true);
        send(br, out, 0, "svc", request("one", "r"));
        send(br, out, 0, "svc", request("two", "r"));
    }

    /// A line receiver takes both requests of "svc".
    fn take_both(br: &mut Broker, out: &mut RecordingOutbox) {
        for _ in 0..2 {
            let got = br.ready(0, conn(20), 30, vec![b("svc")], out);
            assert!(matches!(got, Ready::Message(_)), "{got:?}");
        }
    }

    #[test]
    fn a_destroyed_reply_queue_is_owed_nothing_more() {
        let (mut br, mut out) = broker();
        two_requests_for_r(&mut br, &mut out);
        take_both(&mut br, &mut out);
        assert_eq!(br.switch.owed, 2);
        // A line send to `r` answers the first.
        br.send(1, b("r"), None, 30, b("ONE"), &mut out).unwrap();
        assert_eq!(br.switch.owed, 1);
        br.switch.destroy(conn(1), b"r").unwrap();
        assert_eq!(br.switch.owed, 0);
    }

    #[test]
    fn a_queue_gives_back_the_bytes_and_the_unseen_count_of_what_leaves() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        let unseen = |br: &Broker| br.switch.queues.get(&b("q")).map(|q| q.unseen);
        for m in ["m0", "m1", "m2", "m3"] {
            send(&mut br, &mut out, 0, "q", request(m, ""));
        }
        assert_eq!(unseen(&br), Some(4));
        // An ack, a line receiver's take, a transfer.
        br.switch_ack(0, conn(2), b"q", 0, &mut out).unwrap();
        assert_eq!(unseen(&br), Some(3));
        let got = br.ready(0, conn(20), 30, vec![b("q")], &mut out);
        assert!(matches!(got, Ready::Message(_)), "{got:?}");
        assert_eq!(unseen(&br), Some(2));
        ready(
            br.switch_transfer(0, conn(2), Some(2), 0, vec![b("q")], &mut out)
                .unwrap(),
        );
        assert_eq!(unseen(&br), Some(1));
        // Acking a seen one leaves the count.
        br.switch_ack(0, conn(2), b"q", 3, &mut out).unwrap();
        assert_eq!(unseen(&br), Some(1));
        // The queue's own byte count goes back with the queue.
        br.switch.destroy(conn(1), b"q").unwrap();
        assert_eq!(br.switch.stored_bytes(), 0);
    }

    #[test]
    fn an_id_used_on_a_transient_queue_is_not_recorded() {
        let (mut br, mut out, journal) = journaled();
        create(&mut br, &mut out, conn(1), "t", true);
        create(&mut br, &mut out, conn(1), "p", false);
        let records = journal.records();
        br.ready(0, conn(20), 30, vec![b("t")], &mut out);
        assert_eq!(
            send(&mut br, &mut out, 0, "t", request("x", "")),
            Some((b("t"), 0))
        );
        assert_eq!(journal.records(), records);
        // One on a persistent queue is.
        br.ready(0, conn(20), 30, vec![b("p")], &mut out);
        assert_eq!(
            send(&mut br, &mut out, 0, "p", request("x", "")),
            Some((b("p"), 0))
        );
        assert_eq!(journal.records(), records + 1);
    }

    #[test]
    fn past_the_owed_limit_a_line_answer_is_a_plain_request() {
        let (mut br, mut out) = broker();
        two_requests_for_r(&mut br, &mut out);
        // One response short of the limit: the first request taken is
        // noted, the second is not.
        br.switch.owed = MAX_OWED - 1;
        take_both(&mut br, &mut out);
        assert_eq!(br.switch.owed, MAX_OWED);
        br.send(1, b("r"), None, 30, b("ONE"), &mut out).unwrap();
        br.send(1, b("r"), None, 30, b("TWO"), &mut out).unwrap();
        let t = ready(
            br.switch_transfer(2, conn(1), None, 0, vec![b("r")], &mut out)
                .unwrap(),
        );
        let kinds: Vec<Kind> = t.messages.iter().map(|(_, m)| m.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![Kind::Response((b("svc"), 0)), Kind::Request(Bytes::new())]
        );
    }

    #[test]
    fn a_transfer_may_name_exactly_the_limit_of_queues() {
        let (mut br, mut out) = broker();
        let names: Vec<Bytes> = (0..MAX_TRANSFER_QUEUES)
            .map(|i| b(&i.to_string()))
            .collect();
        let t = ready(
            br.switch_transfer(0, conn(1), None, 0, names, &mut out)
                .unwrap(),
        );
        assert_eq!(t.next, -1);
    }

    #[test]
    fn a_withdrawn_wait_does_not_match_the_next_one_in_its_slot() {
        let (mut br, mut out) = broker();
        let first = parked(
            br.switch_transfer(0, conn(1), None, 1_000, vec![b("x")], &mut out)
                .unwrap(),
        );
        br.switch.cancel(first);
        let second = parked(
            br.switch_transfer(0, conn(2), None, 1_000, vec![b("x")], &mut out)
                .unwrap(),
        );
        assert_ne!(first, second);
        assert_eq!(br.switch.transfer_deadline(1_000, first, &mut out), None);
        br.switch.cancel(first);
        assert_eq!(br.switch.parked_transfers(), 1);
        assert!(br
            .switch
            .transfer_deadline(1_000, second, &mut out)
            .is_some());
        // Trace polls the same.
        let first = parked(br.switch.trace_poll(conn(1), 5, 1_000));
        br.switch.cancel(first);
        let second = parked(br.switch.trace_poll(conn(2), 5, 1_000));
        assert_ne!(first, second);
        assert_eq!(br.switch.trace_deadline(first), None);
        br.switch.cancel(first);
        assert_eq!(br.switch.parked_traces(), 1);
        assert_eq!(br.switch.trace_deadline(second), Some(vec![]));
    }

    /// Index entries on `name`'s list of parked transfers.
    fn listed(br: &Broker, name: &str) -> usize {
        br.switch.waits_on.get(&b(name)).map_or(0, |l| l.keys.len())
    }

    #[test]
    fn a_wait_list_is_compacted_once_half_of_it_is_stale() {
        let (mut br, mut out) = broker();
        let mut waits: Vec<SwitchWait> = (0..3)
            .map(|_| {
                parked(
                    br.switch_transfer(0, conn(1), None, 1_000, vec![b("x")], &mut out)
                        .unwrap(),
                )
            })
            .collect();
        // One stale entry of three stays.
        br.switch.cancel(waits.remove(0));
        assert_eq!(listed(&br, "x"), 3);
        // Two of three: the list keeps the live one only.
        br.switch.cancel(waits.remove(0));
        assert_eq!(listed(&br, "x"), 1);
        // Which a message still wakes.
        create(&mut br, &mut out, conn(1), "x", false);
        send(&mut br, &mut out, 0, "x", request("m", ""));
        assert_eq!(answered(&mut out).len(), 1);
        assert_eq!(listed(&br, "x"), 0);
    }

    #[test]
    fn a_message_wakes_the_transfers_whose_from_is_below_its_id_only() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "a", false);
        create(&mut br, &mut out, conn(1), "b", false);
        send(&mut br, &mut out, 0, "a", request("a0", ""));
        send(&mut br, &mut out, 0, "a", request("a1", ""));
        send(&mut br, &mut out, 0, "b", request("b0", ""));
        let late = parked(
            br.switch_transfer(0, conn(1), Some(1), 1_000, vec![b("a"), b("b")], &mut out)
                .unwrap(),
        );
        parked(
            br.switch_transfer(0, conn(2), Some(0), 1_000, vec![b("b")], &mut out)
                .unwrap(),
        );
        // b's id 1 is above conn 2's `from` only: conn 1 stays parked.
        send(&mut br, &mut out, 1, "b", request("b1", ""));
        let got = answered(&mut out);
        assert_eq!(got.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![2]);
        assert_eq!(br.switch.parked_transfers(), 1);
        assert_eq!(listed(&br, "b"), 1);
        // And id 2 wakes it.
        send(&mut br, &mut out, 2, "b", request("b2", ""));
        let got = answered(&mut out);
        let Some((1, Polled::Transfer(t))) = got.into_iter().next() else {
            panic!("conn 1 was not woken");
        };
        assert_eq!(ids(&t), vec![("b".into(), 2)]);
        assert_eq!(br.switch.transfer_deadline(1_000, late, &mut out), None);
    }

    #[test]
    fn a_wake_drops_stale_entries_even_when_their_slot_is_taken_again() {
        let (mut br, mut out) = broker();
        let wait = |br: &mut Broker, out: &mut RecordingOutbox, from, name: &str| {
            parked(
                br.switch_transfer(0, conn(1), from, 1_000, vec![b(name)], out)
                    .unwrap(),
            )
        };
        let stale = wait(&mut br, &mut out, None, "x");
        wait(&mut br, &mut out, Some(100), "x");
        wait(&mut br, &mut out, Some(100), "x");
        br.switch.cancel(stale);
        assert_eq!(listed(&br, "x"), 3);
        // Another wait, elsewhere, in the withdrawn one's slot.
        let other = wait(&mut br, &mut out, Some(100), "y");
        assert_eq!(other.slot, stale.slot);
        create(&mut br, &mut out, conn(1), "x", false);
        send(&mut br, &mut out, 0, "x", request("m", ""));
        assert!(answered(&mut out).is_empty());
        assert_eq!(listed(&br, "x"), 2);
        assert_eq!(br.switch.parked_transfers(), 3);
    }

    #[test]
    fn a_trace_poll_waits_for_the_event_it_asked_for() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        parked(br.switch.trace_poll(conn(2), 1, 5_000));
        // Event 0 is not event 1.
        send(&mut br, &mut out, 1, "q", request("m0", ""));
        assert!(answered(&mut out).is_empty());
        assert_eq!(br.switch.parked_traces(), 1);
        send(&mut br, &mut out, 2, "q", request("m1", ""));
        let got = answered(&mut out);
        let Some((2, Polled::Trace(events))) = got.into_iter().next() else {
            panic!("the trace poll was not answered");
        };
        assert_eq!(events.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1]);
        assert_eq!((br.switch.trace_listed, br.switch.trace_stale), (0, 0));
    }

    #[test]
    fn the_trace_poll_index_is_compacted_once_half_of_it_is_stale() {
        let (mut br, mut out) = broker();
        create(&mut br, &mut out, conn(1), "q", false);
        let mut waits: Vec<SwitchWait> = (0..3)
            .map(|c| parked(br.switch.trace_poll(conn(c), 0, 5_000)))
            .collect();
        br.switch.cancel(waits.remove(0));
        assert_eq!(br.switch.trace_listed, 3);
        br.switch.cancel(waits.remove(0));
        assert_eq!(br.switch.trace_listed, 1);
        // The live one is still answered.
        send(&mut br, &mut out, 1, "q", request("m", ""));
        let got = answered(&mut out);
        assert_eq!(got.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![2]);
        assert_eq!(br.switch.trace_listed, 0);
    }

    #[test]
    fn ended_sessions_are_let_go_without_a_cluster() {
        let (mut br, _) = broker();
        br.switch_close(conn(1));
        br.switch_login(conn(2), b"c").unwrap();
        assert_eq!(br.switch.session_count(), 1);
        assert!(br.switch.ended.is_empty());
    }

    #[test]
    fn the_broker_tells_the_switch_limits() {
        let mut br = Broker::new();
        br.switch = Switch::new(0).with_limits(QueueLimits {
            per_address: 1_000,
            total: 5_000,
        });
        assert_eq!(br.switch_limits(), (1_000, 5_000));
    }
}
