//! Webhooks: senders and receivers registered by URL, and the delivery of
//! every message to every receiver by HTTP POST, free of IO.
//!
//! Owns: the registered clients (ids shared by senders and receivers, from
//! 1), the messages waiting while no receiver exists, each receiver's
//! backlog in order, the requests in flight and their caps, retries with
//! exponential back-off and jitter (`Retry-After` honoured), `410 Gone`,
//! the outbound connections ("links") to receivers with keep-alive reuse,
//! the request bytes (signed as Standard Webhooks says when a secret is
//! set), and the counters of the dashboard.
//!
//! Must not touch: sockets, name lookups, the clock (time comes in as
//! `now`), HTTP parsing (the link door parses responses and reports them
//! here as [`Reply`]). It asks the IO shell for connections
//! ([`LinkRequest::Dial`]) and for their end ([`LinkRequest::HangUp`]), and
//! writes requests onto a link's connection through the [`Outbox`].
//!
//! # Delivery
//!
//! A message goes to every receiver connected when it is sent (a channel
//! receiver: to those of its channel). Each receiver has its own backlog of
//! at most `queue` messages; messages go out in order, at most
//! `per_receiver` at a time (1 by default: the next one starts when the one
//! before has been delivered or has failed for good, so a receiver sees them
//! in order). A receiver may always have one request in flight; more than
//! one only while fewer than `workers` are in flight overall. So a receiver
//! that is slow or down holds its own share and nothing else: the others'
//! requests never wait for it.
//!
//! An attempt that gets a 2xx is done; any other status, a connect failure,
//! a closed connection or no answer within `timeout_ms` is retried after
//! 1 s, 2 s, 4 s, … (doubling up to 5 min, each ±25 %), or after the
//! `Retry-After` of a 429 or 503 (at most an hour); after `retries` retries
//! the message fails for that receiver and is logged. A `410 Gone`
//! disconnects the receiver. An attempt cut short on a reused keep-alive
//! connection before any byte of an answer (the peer closed it as the
//! request went out) is sent again at once and not counted.

pub mod sign;
pub mod url;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};

use super::channels::Channels;
use super::{ConnId, Dial, LinkRequest, Millis, Outbox};
use crate::timer::Timers;
pub use sign::Secret;
pub use url::{BadUrl, Target};

/// The name of the dial door that runs on links (see `crate::doors::DIALS`).
pub const LINK_DOOR: &str = "hooks-link";
/// First retry delay; each retry doubles it.
const RETRY_BASE_MS: Millis = 1_000;
/// Longest delay between two attempts (without a `Retry-After`).
const RETRY_MAX_MS: Millis = 300_000;
/// Longest `Retry-After` honoured.
const RETRY_AFTER_MAX_MS: Millis = 3_600_000;
/// An idle keep-alive link is closed after this long.
const IDLE_MS: Millis = 30_000;
/// Entries of a backlog looked at for one start (when more than one may be
/// in flight and some wait for a retry).
const SCAN: usize = 64;

/// The engine's settings (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Requests in flight overall beyond each receiver's first.
    pub workers: usize,
    /// Requests in flight per receiver.
    pub per_receiver: usize,
    /// Messages waiting while no receiver exists, and each receiver's backlog.
    pub queue: usize,
    /// Bytes of message bodies held, in total.
    pub max_bytes: usize,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Connect, and wait for an answer, at most this long.
    pub timeout_ms: Millis,
    pub secret: Option<Secret>,
    /// Clients registered at once.
    pub max_clients: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 3,
            per_receiver: 1,
            queue: 10_000,
            max_bytes: 512 << 20,
            retries: 10,
            timeout_ms: 15_000,
            secret: None,
            max_clients: 10_000,
        }
    }
}

/// A registered client's id.
pub type ClientId = u64;

/// What a client registered as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Send,
    Receive,
}

/// Why an API call was refused; the text is the reason a `400` or `503`
/// gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The request was wrong (a `400`).
    Bad(String),
    /// The server cannot take it now (a `503`).
    Full(String),
}

/// A link's answer, as the link door parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// `Retry-After` in seconds, when given as a number.
    pub retry_after_s: Option<u64>,
    /// The connection may carry another request.
    pub keep_alive: bool,
}

/// One message, shared by every receiver's backlog: the JSON body a
/// delivery POSTs. Dropping the last handle gives its bytes back to the
/// budget.
struct Message {
    seq: u64,
    body: Bytes,
    held: Rc<Cell<usize>>,
}

impl Drop for Message {
    fn drop(&mut self) {
        self.held
            .set(self.held.get().saturating_sub(self.body.len()));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// May go out (after `at`, for a retry).
    Ready { at: Millis },
    /// On this link.
    InFlight(LinkId),
}

struct Pending {
    msg: Rc<Message>,
    /// Attempts made so far.
    attempts: u32,
    state: State,
}

/// The counters of one receiver (and of all, in [`Hooks::totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages delivered (a 2xx).
    pub completed: u64,
    /// Messages given up after the last retry.
    pub failed: u64,
    /// Attempts retried.
    pub retried: u64,
    /// Messages not taken because the backlog was full, or dropped with
    /// their receiver.
    pub dropped: u64,
}

struct Receiver {
    target: Target,
    url: String,
    channel: Option<Bytes>,
    backlog: VecDeque<Pending>,
    in_flight: usize,
    links: Vec<LinkId>,
    counts: Counts,
    /// On the ready list.
    listed: bool,
    /// The earliest retry deadline it has in the timers: one is enough,
    /// however often it is looked at while it waits.
    retry_timer: Option<Millis>,
}

enum Role {
    Sender { url: String },
    Receiver(Box<Receiver>),
}

type LinkId = u64;

/// One outbound connection to a receiver.
struct Link {
    receiver: ClientId,
    /// Known once connected.
    conn: Option<ConnId>,
    /// The message whose request is on it.
    busy: Option<u64>,
    /// Has carried a whole exchange before (a reused keep-alive link).
    reused: bool,
    /// Its deadline: the answer is due by then (busy), or it is closed then
    /// (idle).
    due: Millis,
    /// The deadline of its entry in the timers, if it has one: a link has
    /// one entry at a time, moved on when it comes due early.
    armed: Option<Millis>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    /// A receiver's retry may be due.
    Retry(ClientId),
    /// A link's answer or idle deadline may have come.
    Link(LinkId),
}

/// A receiver as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverView {
    pub id: ClientId,
    pub url: String,
    pub channel: Option<String>,
    pub backlog: usize,
    pub in_flight: usize,
    pub links: usize,
    pub counts: Counts,
}

/// The webhook engine.
pub struct Hooks {
    settings: Settings,
    clients: BTreeMap<ClientId, Role>,
    last_id: ClientId,
    /// Messages sent while no receiver existed.
    waiting: VecDeque<Rc<Message>>,
    /// Receivers by channel.
    by_channel: HashMap<Bytes, Vec<ClientId>>,
    /// Receivers that may be able to start a request.
    ready: VecDeque<ClientId>,
    links: HashMap<LinkId, Link>,
    next_link: LinkId,
    in_flight: usize,
    held: Rc<Cell<usize>>,
    next_seq: u64,
    timers: Timers<Deadline>,
    requests: Vec<LinkRequest>,
    /// Work came in without a clock (a channel publish): run at once.
    pending_work: bool,
    /// Channels whose receiver went without [`Channels`] at hand (a 410):
    /// untapped at the next [`Hooks::take_published`].
    untap: Vec<Bytes>,
    /// The server's start, in seconds since the epoch (timestamps and ids).
    epoch_s: u64,
    /// xorshift state for the jitter.
    rng: u64,
    totals: Counts,
    sent: u64,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks::new(Settings::default(), 0)
    }
}

impl Hooks {
    pub fn new(settings: Settings, epoch_s: u64) -> Hooks {
        Hooks {
            settings,
            clients: BTreeMap::new(),
            last_id: 0,
            waiting: VecDeque::new(),
            by_channel: HashMap::new(),
            ready: VecDeque::new(),
            links: HashMap::new(),
            next_link: 1,
            in_flight: 0,
            held: Rc::new(Cell::new(0)),
            next_seq: 0,
            timers: Timers::default(),
            requests: Vec::new(),
            pending_work: false,
            untap: Vec::new(),
            epoch_s,
            rng: epoch_s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            totals: Counts::default(),
            sent: 0,
        }
    }

    // ----- the API -----

    /// Registers a sender or a receiver; a receiver may be attached to a
    /// bus channel instead of the messages of `/send/`.
    pub fn connect(
        &mut self,
        url: &str,
        mode: Mode,
        channel: Option<&str>,
        channels: &mut Channels,
    ) -> Result<ClientId, Refused> {
        if self.clients.len() >= self.settings.max_clients {
            return Err(Refused::Full(format!(
                "{} clients are connected (the limit)",
                self.settings.max_clients
            )));
        }
        let role = match mode {
            Mode::Send => {
                if channel.is_some() {
                    return Err(Refused::Bad("only a receiver takes a channel".into()));
                }
                Role::Sender {
                    url: url.to_string(),
                }
            }
            Mode::Receive => {
                let target = Target::parse(url).map_err(|e| Refused::Bad(e.to_string()))?;
                let channel = match channel {
                    Some("") => return Err(Refused::Bad("channel must not be empty".into())),
                    Some(c) if c.len() > 1024 => {
                        return Err(Refused::Bad("channel is longer than 1024 bytes".into()))
                    }
                    Some(c) => Some(Bytes::copy_from_slice(c.as_bytes())),
                    None => None,
                };
                Role::Receiver(Box::new(Receiver {
                    target,
                    url: url.to_string(),
                    channel,
                    backlog: VecDeque::new(),
                    in_flight: 0,
                    links: Vec::new(),
                    counts: Counts::default(),
                    listed: false,
                    retry_timer: None,
                }))
            }
        };
        self.last_id += 1;
        let id = self.last_id;
        if let Role::Receiver(r) = &role {
            if let Some(ch) = &r.channel {
                channels.tap(ch);
                self.by_channel.entry(ch.clone()).or_default().push(id);
            }
        }
        let plain = matches!(&role, Role::Receiver(r) if r.channel.is_none());
        self.clients.insert(id, role);
        if plain && !self.waiting.is_empty() {
            // The messages that waited for a receiver go to this one.
            let waiting = std::mem::take(&mut self.waiting);
            if let Some(Role::Receiver(r)) = self.clients.get_mut(&id) {
                for msg in waiting {
                    r.backlog.push_back(Pending {
                        msg,
                        attempts: 0,
                        state: State::Ready { at: 0 },
                    });
                }
            }
            self.list(id);
            self.pending_work = true;
        }
        Ok(id)
    }

    /// Sends `body` from sender `id` to every receiver connected now (or
    /// keeps it until one connects).
    pub fn send(
        &mut self,
        now: Millis,
        id: ClientId,
        body: &str,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<(), Refused> {
        match self.clients.get(&id) {
            Some(Role::Sender { .. }) => {}
            Some(Role::Receiver(_)) => {
                return Err(Refused::Bad(format!(
                    "id {id} is a receiver; /send/ takes a sender's id"
                )))
            }
            None => return Err(Refused::Bad(format!("no client has id {id}"))),
        }
        let json = serde_json::json!({ "body": body }).to_string();
        let receivers: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, role)| matches!(role, Role::Receiver(r) if r.channel.is_none()))
            .map(|(id, _)| *id)
            .collect();
        if receivers.is_empty() && self.waiting.len() >= self.settings.queue {
            return Err(Refused::Full(format!(
                "{} messages wait for a receiver already (the limit)",
                self.settings.queue
            )));
        }
        let msg = self.message(Bytes::from(json))?;
        if receivers.is_empty() {
            self.waiting.push_back(msg);
            self.sent += 1;
            return Ok(());
        }
        let taken = self.offer(&msg, &receivers);
        if taken == 0 {
            return Err(Refused::Full(format!(
                "every receiver's backlog holds {} messages (the limit)",
                self.settings.queue
            )));
        }
        self.sent += 1;
        self.pump(now, out);
        Ok(())
    }

    /// Ends a client's registration; a receiver's backlog is dropped and its
    /// links closed.
    pub fn disconnect(&mut self, id: ClientId, channels: &mut Channels) -> Result<(), Refused> {
        if !self.clients.contains_key(&id) {
            return Err(Refused::Bad(format!("no client has id {id}")));
        }
        self.remove(id, channels);
        Ok(())
    }

    // ----- links: what the link door reports -----

    /// Link `link` is connected on `conn`. False: nothing wants it any
    /// more (the door closes it).
    pub fn link_up(
        &mut self,
        link: LinkId,
        conn: ConnId,
        now: Millis,
        out: &mut (impl Outbox + ?Sized),
    ) -> bool {
        let Some(l) = self.links.get_mut(&link) else {
            return false;
        };
        l.conn = Some(conn);
        if let Some(seq) = l.busy {
            let rid = l.receiver;
            self.write_request(link, rid, seq, now, out);
        }
        self.links.contains_key(&link)
    }

    /// Link `link` could not connect.
    pub fn link_failed(
        &mut self,
        link: LinkId,
        why: &str,
        now: Millis,
        out: &mut (impl Outbox + ?Sized),
    ) {
        if let Some(l) = self.links.get(&link) {
            if let Some(Role::Receiver(r)) = self.clients.get(&l.receiver) {
                log::info!("webhook receiver {} ({}): {why}", l.receiver, r.url);
            }
        }
        self.link_closed(link, true, now, out);
    }

    /// The answer on link `link`. False: close the link (no keep-alive, or
    /// nothing wants it).
    pub fn on_reply(
        &mut self,
        link: LinkId,
        reply: Reply,
        now: Millis,
        out: &mut (impl Outbox + ?Sized),
    ) -> bool {
        let Some(l) = self.links.get_mut(&link) else {
            return false;
        };
        let Some(seq) = l.busy.take() else {
            // An answer nobody asked for.
            self.drop_link(link);
            return false;
        };
        l.reused = true;
        l.due = now + IDLE_MS;
        let rid = l.receiver;
        self.in_flight = self.in_flight.saturating_sub(1);
        let keep = reply.keep_alive;
        let Some(Role::Receiver(r)) = self.clients.get_mut(&rid) else {
            self.drop_link(link);
            return false;
        };
        r.in_flight = r.in_flight.saturating_sub(1);
        let at = r.backlog.iter().position(|p| p.msg.seq == seq);
        match reply.status {
            200..=299 => {
                if let Some(i) = at {
                    r.backlog.remove(i);
                }
                r.counts.completed += 1;
                self.totals.completed += 1;
            }
            410 => {
                log::warn!(
                    "webhook receiver {rid} ({}) answered 410 Gone: disconnected",
                    r.url
                );
                self.drop_link(link);
                self.remove_receiver(rid);
                self.pump(now, out);
                return false;
            }
            status => {
                let hint = match status {
                    429 | 503 => reply
                        .retry_after_s
                        .map(|s| s.saturating_mul(1000).min(RETRY_AFTER_MAX_MS)),
                    _ => None,
                };
                if let Some(i) = at {
                    self.attempt_failed(rid, i, now, hint, &format!("answered {status}"));
                }
            }
        }
        if keep {
            self.arm(link);
        } else {
            self.drop_link(link);
        }
        self.list(rid);
        self.pump(now, out);
        keep && self.links.contains_key(&link)
    }

    /// Link `link` closed. `answered`: bytes of an answer (or a connect
    /// error) came, so an attempt on it counts.
    pub fn link_closed(
        &mut self,
        link: LinkId,
        answered: bool,
        now: Millis,
        out: &mut (impl Outbox + ?Sized),
    ) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        let rid = l.receiver;
        if let Some(Role::Receiver(r)) = self.clients.get_mut(&rid) {
            r.links.retain(|&x| x != link);
        }
        if let Some(seq) = l.busy {
            self.unbusy(rid, seq, now, l.reused && !answered, "connection closed");
        }
        self.list(rid);
        self.pump(now, out);
    }

    // ----- the clock -----

    /// Runs the deadlines due at `now` and starts what can start.
    pub fn on_timers(&mut self, now: Millis, out: &mut (impl Outbox + ?Sized)) {
        self.pending_work = false;
        while let Some((at, deadline)) = self.timers.pop_due(now) {
            match deadline {
                Deadline::Retry(rid) => {
                    if let Some(Role::Receiver(r)) = self.clients.get_mut(&rid) {
                        if r.retry_timer.is_some_and(|t| t <= now) {
                            r.retry_timer = None;
                        }
                    }
                    self.list(rid);
                }
                Deadline::Link(link) => {
                    let Some(l) = self.links.get_mut(&link) else {
                        continue;
                    };
                    if l.armed != Some(at) {
                        continue;
                    }
                    l.armed = None;
                    if l.due > now {
                        self.arm(link);
                        continue;
                    }
                    let Some(seq) = l.busy else {
                        // Idle for long enough.
                        if let Some(conn) = l.conn {
                            self.requests.push(LinkRequest::HangUp {
                                conn,
                                timed_out: false,
                            });
                        }
                        self.drop_link(link);
                        continue;
                    };
                    let rid = l.receiver;
                    if let Some(conn) = l.conn {
                        self.requests.push(LinkRequest::HangUp {
                            conn,
                            timed_out: true,
                        });
                    }
                    self.links.remove(&link);
                    if let Some(Role::Receiver(r)) = self.clients.get_mut(&rid) {
                        r.links.retain(|&x| x != link);
                    }
                    let why = format!("no answer in {} ms", self.settings.timeout_ms);
                    self.unbusy(rid, seq, now, false, &why);
                    self.list(rid);
                }
            }
        }
        self.pump(now, out);
    }

    /// The earliest deadline (`0` when work waits to be started).
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.pending_work || !self.ready.is_empty() {
            return Some(0);
        }
        self.timers.next()
    }

    /// The outbound connections to open or close, asked for since the last
    /// call.
    pub fn take_links(&mut self) -> Vec<LinkRequest> {
        std::mem::take(&mut self.requests)
    }

    /// Takes the publications of tapped channels into the backlogs of the
    /// channels' receivers (they are started at the next [`Hooks::on_timers`]).
    pub fn take_published(&mut self, channels: &mut Channels) {
        for ch in self.untap.drain(..) {
            channels.untap(&ch);
        }
        for p in channels.take_published() {
            let Some(ids) = self.by_channel.get(&p.channel[..]) else {
                continue;
            };
            let ids = ids.clone();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let json = serde_json::json!({
                "body": text(&p.body),
                "channel": text(&p.channel),
                "type": text(&p.content_type),
                "from": p.sender.as_deref().map(text),
            })
            .to_string();
            let Ok(msg) = self.message(Bytes::from(json)) else {
                for id in ids {
                    if let Some(Role::Receiver(r)) = self.clients.get_mut(&id) {
                        r.counts.dropped += 1;
                        self.totals.dropped += 1;
                    }
                }
                continue;
            };
            if self.offer(&msg, &ids) > 0 {
                self.sent += 1;
                self.pending_work = true;
            }
        }
    }

    // ----- the dashboard -----

    /// Registered senders.
    pub fn writers(&self) -> usize {
        self.clients
            .values()
            .filter(|r| matches!(r, Role::Sender { .. }))
            .count()
    }

    /// Registered receivers.
    pub fn readers(&self) -> usize {
        self.clients.len() - self.writers()
    }

    /// Messages waiting for a receiver to exist.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages taken by `/send/` or from channels.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes of message bodies held.
    pub fn held_bytes(&self) -> usize {
        self.held.get()
    }

    /// The counters over all receivers, past ones included.
    pub fn totals(&self) -> Counts {
        self.totals
    }

    /// Every receiver, by id.
    pub fn receivers(&self) -> Vec<ReceiverView> {
        self.clients
            .iter()
            .filter_map(|(id, role)| match role {
                Role::Receiver(r) => Some(ReceiverView {
                    id: *id,
                    url: r.url.clone(),
                    channel: r
                        .channel
                        .as_ref()
                        .map(|c| String::from_utf8_lossy(c).into_owned()),
                    backlog: r.backlog.len(),
                    in_flight: r.in_flight,
                    links: r.links.len(),
                    counts: r.counts,
                }),
                Role::Sender { .. } => None,
            })
            .collect()
    }

    /// Every sender: id and URL.
    pub fn senders(&self) -> Vec<(ClientId, String)> {
        self.clients
            .iter()
            .filter_map(|(id, role)| match role {
                Role::Sender { url } => Some((*id, url.clone())),
                Role::Receiver(_) => None,
            })
            .collect()
    }

    // ----- inside -----

    /// A message of `body`, if the byte budget has room.
    fn message(&mut self, body: Bytes) -> Result<Rc<Message>, Refused> {
        if self.held.get() + body.len() > self.settings.max_bytes {
            return Err(Refused::Full(format!(
                "messages waiting for delivery hold {} bytes already (the limit)",
                self.held.get()
            )));
        }
        self.held.set(self.held.get() + body.len());
        self.next_seq += 1;
        Ok(Rc::new(Message {
            seq: self.next_seq,
            body,
            held: Rc::clone(&self.held),
        }))
    }

    /// Puts `msg` in the backlog of each receiver of `ids` that has room;
    /// returns how many took it.
    fn offer(&mut self, msg: &Rc<Message>, ids: &[ClientId]) -> usize {
        let mut taken = 0;
        for &id in ids {
            let Some(Role::Receiver(r)) = self.clients.get_mut(&id) else {
                continue;
            };
            if r.backlog.len() >= self.settings.queue {
                r.counts.dropped += 1;
                self.totals.dropped += 1;
                if r.counts.dropped.is_power_of_two() {
                    log::warn!(
                        "webhook receiver {id} ({}): backlog full ({} messages); {} dropped so far",
                        r.url,
                        r.backlog.len(),
                        r.counts.dropped
                    );
                }
                continue;
            }
            r.backlog.push_back(Pending {
                msg: Rc::clone(msg),
                attempts: 0,
                state: State::Ready { at: 0 },
            });
            taken += 1;
            self.list(id);
        }
        taken
    }

    fn list(&mut self, id: ClientId) {
        if let Some(Role::Receiver(r)) = self.clients.get_mut(&id) {
            if !r.listed {
                r.listed = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Starts every request that may start.
    fn pump(&mut self, now: Millis, out: &mut (impl Outbox + ?Sized)) {
        while let Some(id) = self.ready.pop_front() {
            if let Some(Role::Receiver(r)) = self.clients.get_mut(&id) {
                r.listed = false;
            }
            self.start(id, now, out);
        }
    }

    /// Starts what receiver `id` may start now.
    fn start(&mut self, id: ClientId, now: Millis, out: &mut (impl Outbox + ?Sized)) {
        loop {
            let (workers, per_receiver) = (self.settings.workers, self.settings.per_receiver);
            let in_flight = self.in_flight;
            let Some(Role::Receiver(r)) = self.clients.get_mut(&id) else {
                return;
            };
            let may = r.in_flight == 0 || (r.in_flight < per_receiver && in_flight < workers);
            if !may {
                return;
            }
            // The next message that may go: in order; with one in flight
            // at a time only the first of the backlog.
            let scan = if per_receiver <= 1 { 1 } else { SCAN };
            let mut next = None;
            let mut retry_at: Option<Millis> = None;
            for (i, p) in r.backlog.iter().take(scan).enumerate() {
                match p.state {
                    State::InFlight(_) => continue,
                    State::Ready { at } if at <= now => {
                        next = Some(i);
                        break;
                    }
                    State::Ready { at } => {
                        retry_at = Some(retry_at.map_or(at, |x| x.min(at)));
                    }
                }
            }
            let Some(i) = next else {
                if let Some(at) = retry_at {
                    if r.retry_timer.is_none_or(|t| t > at) {
                        r.retry_timer = Some(at);
                        self.timers.add(at, Deadline::Retry(id));
                    }
                }
                return;
            };
            // An idle link, or a new one.
            let idle = r.links.iter().copied().find(|l| {
                self.links
                    .get(l)
                    .is_some_and(|l| l.busy.is_none() && l.conn.is_some())
            });
            let link = match idle {
                Some(l) => l,
                None if r.links.len() < per_receiver.max(1) => {
                    let link = self.next_link;
                    self.next_link += 1;
                    r.links.push(link);
                    self.requests.push(LinkRequest::Dial(Dial {
                        door: LINK_DOOR,
                        tag: link,
                        host: r.target.host.clone(),
                        port: r.target.port,
                        tls: r.target.tls,
                        timeout_ms: self.settings.timeout_ms,
                    }));
                    self.links.insert(
                        link,
                        Link {
                            receiver: id,
                            conn: None,
                            busy: None,
                            reused: false,
                            due: 0,
                            armed: None,
                        },
                    );
                    link
                }
                // Every link is busy or still connecting.
                None => return,
            };
            let Some(p) = r.backlog.get_mut(i) else {
                return;
            };
            p.state = State::InFlight(link);
            let seq = p.msg.seq;
            r.in_flight += 1;
            self.in_flight += 1;
            let Some(l) = self.links.get_mut(&link) else {
                return;
            };
            l.busy = Some(seq);
            if l.conn.is_some() {
                self.write_request(link, id, seq, now, out);
            }
        }
    }

    /// Writes the request for message `seq` of receiver `rid` onto `link`.
    fn write_request(
        &mut self,
        link: LinkId,
        rid: ClientId,
        seq: u64,
        now: Millis,
        out: &mut (impl Outbox + ?Sized),
    ) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let Some(conn) = l.conn else {
            return;
        };
        l.due = now + self.settings.timeout_ms;
        let Some(Role::Receiver(r)) = self.clients.get(&rid) else {
            return;
        };
        let Some(p) = r.backlog.iter().find(|p| p.msg.seq == seq) else {
            return;
        };
        let head = self.request_head(&r.target, &p.msg, now);
        let body = p.msg.body.clone();
        if !out.deliver(conn, head, 0) || !out.deliver(conn, body, 0) {
            // The connection is going: the request never left.
            self.links.remove(&link);
            if let Some(Role::Receiver(r)) = self.clients.get_mut(&rid) {
                r.links.retain(|&x| x != link);
            }
            self.unbusy(rid, seq, now, true, "connection closing");
            self.list(rid);
            return;
        }
        self.arm(link);
    }

    /// Makes sure link `link` has an entry in the timers no later than its
    /// deadline.
    fn arm(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            if l.armed.is_none_or(|a| a > l.due) {
                l.armed = Some(l.due);
                self.timers.add(l.due, Deadline::Link(link));
            }
        }
    }

    /// The head of a delivery: `POST`, `Host`, JSON, and the Standard
    /// Webhooks headers when signing.
    fn request_head(&self, target: &Target, msg: &Message, now: Millis) -> Bytes {
        let mut h = BytesMut::with_capacity(256 + target.path.len());
        h.put_slice(b"POST ");
        h.put_slice(target.path.as_bytes());
        h.put_slice(b" HTTP/1.1\r\nHost: ");
        h.put_slice(target.host_header.as_bytes());
        h.put_slice(
            b"\r\nUser-Agent: switchboard\r\nContent-Type: application/json\r\nContent-Length: ",
        );
        h.put_slice(msg.body.len().to_string().as_bytes());
        h.put_slice(b"\r\n");
        if let Some(secret) = &self.settings.secret {
            let id = format!("msg_{:x}_{}", self.epoch_s, msg.seq);
            let ts = self.epoch_s + now / 1000;
            let sig = secret.sign(&id, ts, &msg.body);
            h.put_slice(
                format!(
                    "webhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n"
                )
                .as_bytes(),
            );
        }
        h.put_slice(b"\r\n");
        h.freeze()
    }

    /// The request of message `seq` for receiver `rid` is no longer in
    /// flight without an answer: sent again at once (`again`), or counted
    /// as a failed attempt.
    fn unbusy(&mut self, rid: ClientId, seq: u64, now: Millis, again: bool, why: &str) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(Role::Receiver(r)) = self.clients.get_mut(&rid) else {
            return;
        };
        r.in_flight = r.in_flight.saturating_sub(1);
        let Some(i) = r.backlog.iter().position(|p| p.msg.seq == seq) else {
            return;
        };
        if again {
            if let Some(p) = r.backlog.get_mut(i) {
                p.state = State::Ready { at: now };
            }
        } else {
            self.attempt_failed(rid, i, now, None, why);
        }
    }

    /// The attempt on backlog entry `i` of receiver `rid` failed: retry it
    /// later, or give it up after the last retry.
    fn attempt_failed(
        &mut self,
        rid: ClientId,
        i: usize,
        now: Millis,
        hint: Option<Millis>,
        why: &str,
    ) {
        let retries = self.settings.retries;
        let jitter = self.jitter();
        let Some(Role::Receiver(r)) = self.clients.get_mut(&rid) else {
            return;
        };
        let Some(p) = r.backlog.get_mut(i) else {
            return;
        };
        p.attempts += 1;
        if p.attempts > retries {
            log::warn!(
                "webhook receiver {rid} ({}): message {} failed after {} attempts ({why})",
                r.url,
                p.msg.seq,
                p.attempts
            );
            r.backlog.remove(i);
            r.counts.failed += 1;
            self.totals.failed += 1;
            return;
        }
        let delay = hint.unwrap_or_else(|| backoff(p.attempts, jitter));
        log::debug!(
            "webhook receiver {rid}: message {} attempt {} failed ({why}); again in {delay} ms",
            p.msg.seq,
            p.attempts
        );
        let at = now + delay;
        p.state = State::Ready { at };
        r.counts.retried += 1;
        self.totals.retried += 1;
        if r.retry_timer.is_none_or(|t| t > at) {
            r.retry_timer = Some(at);
            self.timers.add(at, Deadline::Retry(rid));
        }
    }

    /// A number in [0, 1) for the jitter.
    fn jitter(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Forgets link `link` (its connection, if any, is closing or closed).
    fn drop_link(&mut self, link: LinkId) {
        if let Some(l) = self.links.remove(&link) {
            if let Some(Role::Receiver(r)) = self.clients.get_mut(&l.receiver) {
                r.links.retain(|&x| x != link);
            }
        }
    }

    fn remove(&mut self, id: ClientId, channels: &mut Channels) {
        self.remove_receiver(id);
        self.clients.remove(&id);
        self.take_published(channels);
    }

    /// Drops a receiver: its backlog, its links (hung up), its channel.
    fn remove_receiver(&mut self, id: ClientId) {
        if !matches!(self.clients.get(&id), Some(Role::Receiver(_))) {
            return;
        }
        let Some(Role::Receiver(r)) = self.clients.remove(&id) else {
            return;
        };
        if let Some(ch) = &r.channel {
            if let Some(ids) = self.by_channel.get_mut(ch) {
                ids.retain(|&x| x != id);
                if ids.is_empty() {
                    self.by_channel.remove(ch);
                }
            }
            self.untap.push(ch.clone());
        }
        let dropped = r.backlog.len() as u64;
        self.totals.dropped += dropped;
        self.in_flight = self.in_flight.saturating_sub(r.in_flight);
        for link in &r.links {
            if let Some(l) = self.links.remove(link) {
                if let Some(conn) = l.conn {
                    self.requests.push(LinkRequest::HangUp {
                        conn,
                        timed_out: false,
                    });
                }
            }
        }
    }
}

/// The delay before retry `n` (1, 2, …): 1 s doubling up to 5 min, times
/// 0.75 to 1.25 by `jitter` (in [0, 1)).
fn backoff(n: u32, jitter: f64) -> Millis {
    let base = RETRY_BASE_MS.saturating_mul(1u64 << n.saturating_sub(1).min(20));
    let base = base.min(RETRY_MAX_MS);
    (base as f64 * (0.75 + jitter * 0.5)) as Millis
}

#[cfg(test)]
mod tests;
