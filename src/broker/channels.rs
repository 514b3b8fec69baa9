//! Channels: fan-out to every current subscriber, on every door.
//!
//! A publish builds its frame once per framing that the channel's subscribers
//! use, and hands the same `Bytes` to each of them. Consecutive publishes to
//! one channel with one content type and sender are gathered into an open
//! batch, so a burst of N messages costs each subscriber one queue entry (one
//! `IoSlice` at write time) instead of N. Any other broker action seals the
//! batch first, so every subscriber still sees messages in the order they were
//! published. Nothing is kept for absent subscribers.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::filter::Filter;
use super::frames::{self, Framing, Publication, FRAMINGS};
use super::history::{History, HistoryLimits};
use super::pattern::{self, Name, PatternError, Trie};
use super::{ConnId, Outbox};

/// The most a returning subscriber is sent of the history at once, counted
/// as the kept messages' bytes: older ones are reported as a gap.
pub const REPLAY_BYTES: usize = 1024 * 1024;

/// A batch is sealed once one of its frame buffers reaches this size.
pub const BATCH_BYTES: usize = 64 * 1024;

/// The largest frame one message may become, by default: framing adds
/// headers, not multiples of the body (see [`Channels::with_max_frame`]).
pub const DEFAULT_MAX_FRAME: usize = 24 * 1024 * 1024 + 64 * 1024;

/// How one connection subscribes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub framing: Framing,
    pub filter: Filter,
    /// Frames that name the channel (the root's variants), as a subscriber
    /// of several channels needs; pattern and root subscribers always get
    /// them.
    pub named: bool,
}

impl Subscription {
    pub fn line() -> Subscription {
        Subscription::new(Framing::Line, Filter::default())
    }

    pub fn new(framing: Framing, filter: Filter) -> Subscription {
        Subscription {
            framing,
            filter,
            named: false,
        }
    }
}

struct Subscriber {
    conn: ConnId,
    framing: Framing,
    named: bool,
    filter: Option<Box<Filter>>,
}

/// The subscribers of one channel (or of all channels, for the root, or of
/// one pattern).
#[derive(Default)]
struct Audience {
    subs: Vec<Subscriber>,
    index: HashMap<ConnId, usize>,
    /// Subscribers per framing that get the plain frames.
    per_framing: [u32; FRAMINGS],
    /// Subscribers per framing that get the frames naming the channel.
    named: [u32; FRAMINGS],
}

impl Audience {
    fn count(&mut self, framing: Framing, named: bool) -> Option<&mut u32> {
        let counts = if named {
            &mut self.named
        } else {
            &mut self.per_framing
        };
        counts.get_mut(framing as usize)
    }

    /// Adds or replaces `conn`'s subscription; true when it is new.
    fn add(&mut self, conn: ConnId, sub: Subscription) -> bool {
        let mut new = true;
        if let Some(&i) = self.index.get(&conn) {
            if let Some((framing, named)) = self.subs.get(i).map(|s| (s.framing, s.named)) {
                if let Some(n) = self.count(framing, named) {
                    *n -= 1;
                }
            }
            self.subs.swap_remove(i);
            self.fix_index(i);
            self.index.remove(&conn);
            new = false;
        }
        if let Some(n) = self.count(sub.framing, sub.named) {
            *n += 1;
        }
        self.index.insert(conn, self.subs.len());
        self.subs.push(Subscriber {
            conn,
            framing: sub.framing,
            named: sub.named,
            filter: (!sub.filter.is_empty()).then(|| Box::new(sub.filter)),
        });
        new
    }

    fn remove(&mut self, conn: ConnId) -> bool {
        let Some(i) = self.index.remove(&conn) else {
            return false;
        };
        if i < self.subs.len() {
            let old = self.subs.swap_remove(i);
            if let Some(n) = self.count(old.framing, old.named) {
                *n -= 1;
            }
            self.fix_index(i);
        }
        true
    }

    /// After a `swap_remove(i)`, the element now at `i` moved from the end.
    fn fix_index(&mut self, i: usize) {
        if let Some(moved) = self.subs.get(i) {
            self.index.insert(moved.conn, i);
        }
    }

    fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }
}

/// Frames of the open batch, per framing; `root` ones carry the channel name.
struct Batch {
    channel: Bytes,
    content_type: Bytes,
    sender: Option<Bytes>,
    messages: u32,
    /// Subscribers per framing when the batch opened (nothing changes them
    /// while it is open: every other broker action seals it first).
    wanted: [u32; FRAMINGS],
    root_wanted: [u32; FRAMINGS],
    frames: [BytesMut; FRAMINGS],
    root_frames: [BytesMut; FRAMINGS],
    /// Messages of the batch left out of a framing (over the frame limit).
    left_out: [u32; FRAMINGS],
    root_left_out: [u32; FRAMINGS],
    /// The framings someone wants, `(framing, root)`, worked out once when
    /// the batch opens: a publish appends to these only, however many
    /// framings exist (usually one or two).
    active: [(Framing, bool); 2 * FRAMINGS],
    active_len: usize,
}

/// How many subscribe to one name, from [`Channels::presence`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// What the name is: a channel, a pattern, or every channel.
    pub kind: PresenceKind,
    /// Subscriptions to the name itself, per framing.
    pub per_framing: [u32; FRAMINGS],
    /// Subscriptions a message published to the name reaches: its own,
    /// the root's and those of every pattern it matches (for a channel;
    /// the same as the name's own for a pattern or the root).
    pub receivers: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PresenceKind {
    #[default]
    Channel,
    Pattern,
    All,
}

impl Presence {
    /// Subscriptions to the name itself.
    pub fn total(&self) -> u64 {
        self.per_framing.iter().map(|&n| u64::from(n)).sum()
    }

    /// Subscriptions to the name per door: the line protocol's (TCP and
    /// Unix socket) and HTTP's (the bus, with or without TLS).
    pub fn per_door(&self) -> [(&'static str, u64); 2] {
        let line = self
            .per_framing
            .get(Framing::Line as usize)
            .map_or(0, |&n| u64::from(n));
        [("line", line), ("http", self.total() - line)]
    }
}

/// The companion channel of presence events for `channel`.
pub const PRESENCE_PREFIX: &[u8] = b"$presence.";

/// A message published to a tapped channel, kept whole for the broker
/// part that tapped it (webhook receivers attached to the channel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub channel: Bytes,
    pub content_type: Bytes,
    pub sender: Option<Bytes>,
    pub body: Bytes,
}

/// A change of local interest, noted for the cluster link while
/// [`Channels::mirror`] is on: a channel gained its first (`true`) or lost
/// its last (`false`) subscriber; a pattern did; the root did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    Channel(Bytes, bool),
    Pattern(Bytes, bool),
    All(bool),
}

/// All channels and the root (all-channels) audience.
pub struct Channels {
    channels: HashMap<Bytes, Audience>,
    root: Audience,
    /// Pattern subscriptions (`a.*.c`, `a.>`), one audience per pattern.
    patterns: Trie<Audience>,
    open: Option<Batch>,
    published: u64,
    fanned_out: u64,
    /// Channels whose messages are also kept for another part of the
    /// broker, with the number of taps on each.
    taps: HashMap<Bytes, u32>,
    /// Publications to tapped channels not yet taken ([`Channels::take_published`]).
    tapped: Vec<Published>,
    /// The largest frame one message may become in one framing.
    max_frame: usize,
    /// Deliveries not made because the message's frame would pass `max_frame`.
    oversized: u64,
    /// Publish join and leave events on `$presence.CHANNEL`.
    presence_events: bool,
    /// The last messages of each channel (`--history`), when kept.
    history: Option<Box<History>>,
    /// Keep every local publication and every change of interest for the
    /// cluster link ([`Channels::take_mirrored`]).
    mirror: bool,
    mirrored: Vec<Published>,
    interest: Vec<Interest>,
    /// Set while a message from another node is published here.
    remote: bool,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            channels: HashMap::new(),
            root: Audience::default(),
            patterns: Trie::default(),
            open: None,
            published: 0,
            fanned_out: 0,
            taps: HashMap::new(),
            tapped: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
            oversized: 0,
            presence_events: false,
            history: None,
            mirror: false,
            mirrored: Vec::new(),
            interest: Vec::new(),
            remote: false,
        }
    }
}

impl Channels {
    /// Sets the largest frame one message may become in one framing. Some
    /// framings grow with the body's content, not only its length (an event
    /// stream writes `data: ` before every line, JSON escapes control bytes),
    /// and a frame, shared by every subscriber of its framing, stays in
    /// memory until the slowest of them has read it. A message whose frame
    /// would pass the limit is not delivered in that framing: each such
    /// subscriber's delivery is counted in [`Channels::oversized`] and logged.
    pub fn with_max_frame(mut self, max_frame: usize) -> Channels {
        self.max_frame = max_frame;
        self
    }

    /// Publishes a JSON event on `$presence.CHANNEL` whenever a connection
    /// starts or ends a subscription to CHANNEL (a channel, not a pattern or
    /// the root; not for `$presence.` channels themselves).
    pub fn with_presence_events(mut self, on: bool) -> Channels {
        self.presence_events = on;
        self
    }

    /// How many subscribe to `name` (a channel, a pattern, or `*`); `None`
    /// for a malformed pattern.
    pub fn presence(&self, name: &[u8]) -> Option<Presence> {
        let own = |a: &Audience| {
            let mut counts = a.per_framing;
            add_counts(&mut counts, &a.named);
            counts
        };
        let total = |a: &Audience| a.subs.len() as u64;
        Some(match pattern::classify(name).ok()? {
            Name::All => Presence {
                kind: PresenceKind::All,
                per_framing: own(&self.root),
                receivers: total(&self.root),
            },
            Name::Pattern => {
                let audience = self.patterns.get(name);
                Presence {
                    kind: PresenceKind::Pattern,
                    per_framing: audience.map(own).unwrap_or_default(),
                    receivers: audience.map_or(0, total),
                }
            }
            Name::Exact => {
                let audience = self.channels.get(name);
                let mut receivers = audience.map_or(0, total) + total(&self.root);
                self.patterns
                    .for_each_match(name, |a| receivers += total(a));
                Presence {
                    kind: PresenceKind::Channel,
                    per_framing: audience.map(own).unwrap_or_default(),
                    receivers,
                }
            }
        })
    }

    /// Publishes a join or leave event of `channel`, when asked to.
    fn presence_event(&mut self, channel: &[u8], joined: bool, out: &mut (impl Outbox + ?Sized)) {
        if !self.presence_events || channel.starts_with(PRESENCE_PREFIX) {
            return;
        }
        let subscribers = self.channels.get(channel).map_or(0, |a| a.subs.len());
        let event = serde_json::json!({
            "channel": String::from_utf8_lossy(channel),
            "event": if joined { "join" } else { "leave" },
            "subscribers": subscribers,
        });
        let mut companion = Vec::with_capacity(PRESENCE_PREFIX.len() + channel.len());
        companion.extend_from_slice(PRESENCE_PREFIX);
        companion.extend_from_slice(channel);
        let body = event.to_string();
        self.publish(&companion, b"application/json", None, body.as_bytes(), out);
    }

    /// Keeps the last messages of each channel, and numbers every message,
    /// when `limits.messages` is not 0.
    pub fn with_history(mut self, limits: HistoryLimits) -> Channels {
        self.history = (limits.messages > 0).then(|| Box::new(History::new(limits)));
        self
    }

    /// Numbers messages from `epoch + 1` on (the shell gives the wall
    /// clock at start, in microseconds), so that ids go on increasing after
    /// a restart and an earlier run's are known as such. Called before
    /// anything is published; nothing without history.
    pub fn start_ids_after(&mut self, epoch: u64) {
        if let Some(history) = self.history.as_deref_mut() {
            *history = History::starting_after(history.limits(), epoch);
        }
    }

    /// True when channel messages are kept for late subscribers.
    pub fn keeps_history(&self) -> bool {
        self.history.is_some()
    }

    /// (messages, bytes, channels) kept in the history.
    pub fn history_size(&self) -> (usize, usize, usize) {
        self.history.as_ref().map_or((0, 0, 0), |h| {
            let (messages, bytes) = h.size();
            (messages, bytes, h.channel_count())
        })
    }

    /// The frames, in `framing`, of the kept messages after `since` that a
    /// subscription to `names` with `filter` takes, oldest first, appended
    /// to `out`; preceded by a gap notice ([`frames::gap`]) when some of
    /// the messages after `since` are no longer kept (or more than
    /// [`REPLAY_BYTES`] are). A subscriber that subscribes and then sends
    /// these before anything else gets every message after `since` once:
    /// the subscription seals the open batch first, and every message
    /// published before it is in the history. Without history nothing is
    /// appended.
    pub fn replay(
        &self,
        names: &[Bytes],
        since: u64,
        framing: Framing,
        filter: &Filter,
        out: &mut BytesMut,
    ) {
        let Some(history) = &self.history else {
            return;
        };
        let replay = history.replay(names, since, REPLAY_BYTES);
        let named = names.len() > 1
            || names
                .iter()
                .any(|n| pattern::classify(n) != Ok(Name::Exact));
        if let Some(first) = replay.gap {
            let name = names.first().map_or(&b"*"[..], |n| &n[..]);
            frames::gap(out, framing, name, first);
        }
        for (channel, m) in replay.messages {
            if !filter.is_empty() && !filter.accepts(&m.content_type, m.sender.as_deref()) {
                continue;
            }
            let p = Publication {
                channel,
                content_type: &m.content_type,
                sender: m.sender.as_deref(),
                body: &m.body,
                id: m.id,
            };
            append_bounded(out, framing, &p, named, self.max_frame);
        }
    }

    /// Keeps local publications and changes of interest for the cluster
    /// link, which takes them whenever the broker seals.
    pub fn mirror(&mut self) {
        self.mirror = true;
    }

    /// The local publications and changes of interest since the last call.
    pub fn take_mirrored(&mut self) -> (Vec<Published>, Vec<Interest>) {
        (
            std::mem::take(&mut self.mirrored),
            std::mem::take(&mut self.interest),
        )
    }

    /// Publishes a message that another node published: as
    /// [`Channels::publish`], but not mirrored back.
    pub fn publish_remote(
        &mut self,
        channel: &[u8],
        content_type: &[u8],
        sender: Option<&[u8]>,
        body: &[u8],
        out: &mut (impl Outbox + ?Sized),
    ) {
        self.remote = true;
        self.publish(channel, content_type, sender, body, out);
        self.remote = false;
    }

    /// Deliveries not made because the frame would pass the frame limit.
    pub fn oversized(&self) -> u64 {
        self.oversized
    }

    /// (messages published, deliveries made).
    pub fn stats(&self) -> (u64, u64) {
        (self.published, self.fanned_out)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Distinct patterns subscribed to.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    /// Subscribers of the root (every channel at once).
    pub fn root_subscribers(&self) -> usize {
        self.root.subs.len()
    }

    /// The `n` channels with the most subscribers (most first, then by
    /// name), with their counts. One pass over the channels with a heap of
    /// at most `n`: for a page someone looks at, never for the publish path.
    pub fn top_by_subscribers(&self, n: usize) -> Vec<(Bytes, usize)> {
        top_n(
            self.channels.iter().map(|(name, a)| (a.subs.len(), name)),
            n,
        )
        .into_iter()
        .map(|(count, name)| (name.clone(), count))
        .collect()
    }

    /// Subscriptions over all channels, the root's and the patterns' included.
    pub fn subscription_count(&self) -> usize {
        let mut patterns = 0;
        self.patterns.for_each(|a| patterns += a.subs.len());
        self.channels.values().map(|a| a.subs.len()).sum::<usize>()
            + self.root.subs.len()
            + patterns
    }

    /// Subscribes `conn` to `name`, replacing an earlier subscription of it:
    /// a channel, a pattern (see [`pattern`]) or, for `*` and `>` alone,
    /// every channel. A malformed pattern, or one more pattern than the
    /// trie may hold, is refused.
    ///
    /// Returns the name to unsubscribe with later: for a channel, the
    /// channel's own key (shared, so a subscriber that keeps it costs no
    /// copy of the name), else `name`.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        name: Bytes,
        mut sub: Subscription,
        out: &mut (impl Outbox + ?Sized),
    ) -> Result<Bytes, PatternError> {
        match pattern::classify(&name)? {
            Name::Exact => {}
            Name::All => {
                self.subscribe_all(conn, sub, out);
                return Ok(name);
            }
            Name::Pattern => {
                self.seal(out);
                sub.named = true;
                let audience = self.patterns.entry(&name)?;
                let first = audience.is_empty();
                audience.add(conn, sub);
                if first && self.mirror {
                    self.interest
                        .push(Interest::Pattern(Bytes::copy_from_slice(&name), true));
                }
                return Ok(name);
            }
        }
        self.seal(out);
        let existing = self
            .channels
            .get_key_value(&name[..])
            .map(|(k, _)| k.clone());
        let (joined, key) = match existing {
            Some(key) => {
                let joined = self
                    .channels
                    .get_mut(&key)
                    .is_some_and(|a| a.add(conn, sub));
                (joined, key)
            }
            None => {
                // An exact-size key, not a slice pinning an input buffer.
                let mut audience = Audience::default();
                audience.add(conn, sub);
                let key = Bytes::copy_from_slice(&name);
                // A tapped channel is of interest already.
                if self.mirror && !self.taps.contains_key(&key) {
                    self.interest.push(Interest::Channel(key.clone(), true));
                }
                self.channels.insert(key.clone(), audience);
                (true, key)
            }
        };
        if joined {
            self.presence_event(&name, true, out);
        }
        Ok(key)
    }

    /// Subscribes `conn` to every channel.
    pub fn subscribe_all(
        &mut self,
        conn: ConnId,
        mut sub: Subscription,
        out: &mut (impl Outbox + ?Sized),
    ) {
        self.seal(out);
        sub.named = true;
        if self.mirror && self.root.is_empty() {
            self.interest.push(Interest::All(true));
        }
        self.root.add(conn, sub);
    }

    /// Ends a subscription to a channel, a pattern or (`*`, `>`) every
    /// channel; returns false when there was none.
    pub fn unsubscribe(
        &mut self,
        conn: ConnId,
        name: &[u8],
        out: &mut (impl Outbox + ?Sized),
    ) -> bool {
        match pattern::classify(name) {
            Ok(Name::Exact) => {}
            Ok(Name::All) => return self.unsubscribe_all(conn, out),
            Ok(Name::Pattern) => {
                self.seal(out);
                let (removed, last) = self
                    .patterns
                    .update(name, |a| {
                        let removed = a.remove(conn);
                        ((removed, a.is_empty()), a.is_empty())
                    })
                    .unwrap_or((false, false));
                if removed && last && self.mirror {
                    self.interest
                        .push(Interest::Pattern(Bytes::copy_from_slice(name), false));
                }
                return removed;
            }
            Err(_) => return false,
        }
        self.seal(out);
        let Some(audience) = self.channels.get_mut(name) else {
            return false;
        };
        let removed = audience.remove(conn);
        if audience.is_empty() {
            if let Some((key, _)) = self.channels.remove_entry(name) {
                // A tapped channel stays of interest.
                if self.mirror && !self.taps.contains_key(&key) {
                    self.interest.push(Interest::Channel(key, false));
                }
            }
        }
        if removed {
            self.presence_event(name, false, out);
        }
        removed
    }

    pub fn unsubscribe_all(&mut self, conn: ConnId, out: &mut (impl Outbox + ?Sized)) -> bool {
        self.seal(out);
        let removed = self.root.remove(conn);
        if removed && self.mirror && self.root.is_empty() {
            self.interest.push(Interest::All(false));
        }
        removed
    }

    /// Keeps every later publish to `channel` (a copy of it) until
    /// [`Channels::take_published`]; taps are counted. For the cluster
    /// link a tapped channel is of interest as a subscribed one is, so that
    /// the other nodes' messages reach the tap too.
    pub fn tap(&mut self, channel: &[u8]) {
        match self.taps.get_mut(channel) {
            Some(n) => *n += 1,
            None => {
                let key = Bytes::copy_from_slice(channel);
                if self.mirror && self.exact_without_subscribers(&key) {
                    self.interest.push(Interest::Channel(key.clone(), true));
                }
                self.taps.insert(key, 1);
            }
        }
    }

    /// Ends one tap of `channel`.
    pub fn untap(&mut self, channel: &[u8]) {
        if let Some(n) = self.taps.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                if let Some((key, _)) = self.taps.remove_entry(channel) {
                    if self.mirror && self.exact_without_subscribers(&key) {
                        self.interest.push(Interest::Channel(key, false));
                    }
                }
            }
        }
    }

    /// `name` is a channel a message may be published to (not a pattern,
    /// which no publish names) and no connection subscribes to it.
    fn exact_without_subscribers(&self, name: &[u8]) -> bool {
        matches!(pattern::classify(name), Ok(Name::Exact)) && !self.channels.contains_key(name)
    }

    /// The publications to tapped channels since the last call. The broker
    /// takes them whenever it seals, so they never pile up.
    pub fn take_published(&mut self) -> Vec<Published> {
        std::mem::take(&mut self.tapped)
    }

    /// Publishes one message to `channel`. Its frames are queued to
    /// subscribers when the batch is sealed. The arguments are borrowed: a
    /// publish that extends the open batch allocates nothing but frame bytes.
    pub fn publish(
        &mut self,
        channel: &[u8],
        content_type: &[u8],
        sender: Option<&[u8]>,
        body: &[u8],
        out: &mut (impl Outbox + ?Sized),
    ) {
        self.published += 1;
        if self.mirror && !self.remote {
            self.mirrored.push(Published {
                channel: Bytes::copy_from_slice(channel),
                content_type: Bytes::copy_from_slice(content_type),
                sender: sender.map(Bytes::copy_from_slice),
                body: Bytes::copy_from_slice(body),
            });
        }
        let id = match self.history.as_deref_mut() {
            Some(history) => history.record(channel, content_type, sender, body),
            None => 0,
        };
        if !self.taps.is_empty() && self.taps.contains_key(channel) {
            self.tapped.push(Published {
                channel: Bytes::copy_from_slice(channel),
                content_type: Bytes::copy_from_slice(content_type),
                sender: sender.map(Bytes::copy_from_slice),
                body: Bytes::copy_from_slice(body),
            });
        }
        let same = self.open.as_ref().is_some_and(|b| {
            &b.channel[..] == channel
                && &b.content_type[..] == content_type
                && b.sender.as_deref() == sender
        });
        if !same {
            self.seal(out);
            let (wanted, mut root_wanted) = self
                .channels
                .get(channel)
                .map_or(([0; FRAMINGS], [0; FRAMINGS]), |a| (a.per_framing, a.named));
            add_counts(&mut root_wanted, &self.root.named);
            // Consulted only while some pattern is subscribed to.
            self.patterns
                .for_each_match(channel, |a| add_counts(&mut root_wanted, &a.named));
            if wanted.iter().chain(root_wanted.iter()).all(|&n| n == 0) {
                return;
            }
            let mut active = [(Framing::Line, false); 2 * FRAMINGS];
            let mut active_len = 0;
            for &framing in Framing::ALL {
                let i = framing as usize;
                for (counts, root) in [(&wanted, false), (&root_wanted, true)] {
                    if counts.get(i).is_some_and(|&n| n > 0) {
                        if let Some(slot) = active.get_mut(active_len) {
                            *slot = (framing, root);
                            active_len += 1;
                        }
                    }
                }
            }
            self.open = Some(Batch {
                channel: Bytes::copy_from_slice(channel),
                content_type: Bytes::copy_from_slice(content_type),
                sender: sender.map(Bytes::copy_from_slice),
                messages: 0,
                wanted,
                root_wanted,
                frames: Default::default(),
                root_frames: Default::default(),
                left_out: [0; FRAMINGS],
                root_left_out: [0; FRAMINGS],
                active,
                active_len,
            });
        }
        let Some(batch) = self.open.as_mut() else {
            return;
        };
        batch.messages += 1;
        let p = Publication {
            channel,
            content_type,
            sender,
            body,
            id,
        };
        let mut full = false;
        let Batch {
            wanted: plain_wanted,
            root_wanted,
            frames,
            root_frames,
            left_out: plain_left_out,
            root_left_out,
            active,
            active_len,
            ..
        } = batch;
        for &(framing, root) in active.get(..*active_len).unwrap_or_default() {
            let i = framing as usize;
            let (wanted, buf, left_out) = if root {
                (
                    root_wanted.get(i),
                    root_frames.get_mut(i),
                    root_left_out.get_mut(i),
                )
            } else {
                (
                    plain_wanted.get(i),
                    frames.get_mut(i),
                    plain_left_out.get_mut(i),
                )
            };
            {
                let (Some(&wanted), Some(buf), Some(left_out)) = (wanted, buf, left_out) else {
                    continue;
                };
                if append_bounded(buf, framing, &p, root, self.max_frame) {
                    full |= buf.len() >= BATCH_BYTES;
                } else {
                    *left_out += 1;
                    self.oversized += u64::from(wanted);
                    log::warn!(
                        "a message of {} bytes to {} is too large as {:?} (over the {}-byte frame limit): not delivered to {} subscriber(s)",
                        body.len(),
                        String::from_utf8_lossy(channel),
                        framing,
                        self.max_frame,
                        wanted
                    );
                }
            }
        }
        if full {
            self.seal(out);
        }
    }

    /// Queues the open batch to every subscriber whose filter accepts it.
    pub fn seal(&mut self, out: &mut (impl Outbox + ?Sized)) {
        let Some(batch) = self.open.take() else {
            return;
        };
        let frames = batch.frames.map(BytesMut::freeze);
        let root_frames = batch.root_frames.map(BytesMut::freeze);
        let key = |left_out: [u32; FRAMINGS]| BatchKey {
            content_type: &batch.content_type,
            sender: batch.sender.as_deref(),
            messages: left_out.map(|n| batch.messages.saturating_sub(n)),
        };
        let plain = (&frames, &key(batch.left_out));
        let named = (&root_frames, &key(batch.root_left_out));
        if let Some(audience) = self.channels.get(&batch.channel) {
            self.fanned_out += fan_out(audience, plain, named, out);
        }
        self.fanned_out += fan_out(&self.root, plain, named, out);
        let mut fanned = 0;
        self.patterns.for_each_match(&batch.channel, |a| {
            fanned += fan_out(a, plain, named, &mut *out);
        });
        self.fanned_out += fanned;
    }
}

/// Appends the frame of one publication to `buf` unless it would be
/// larger than `max_frame`; then `buf` is left as it was (and holds no
/// memory the frame took) and the answer is false. An event stream's size is
/// known from the body's line breaks before anything is built.
fn append_bounded(
    buf: &mut BytesMut,
    framing: Framing,
    p: &Publication,
    root: bool,
    max_frame: usize,
) -> bool {
    if p.body.len() < max_frame / 8 {
        // No framing makes a body this short more than 8 times its size
        // (JSON's `\u00XX` escapes are 6), so nothing to check.
        frames::append(buf, framing, p, root);
        return true;
    }
    // The framings that grow with the body's content are measured before
    // anything is built (what they add besides the body is small).
    let body_framed = match framing {
        Framing::EventStream => {
            let breaks = memchr::memchr2_iter(b'\n', b'\r', p.body).count();
            p.body.len().saturating_add(breaks.saturating_mul(6))
        }
        Framing::EventStreamJson | Framing::WebSocketJson => frames::json_string_len(p.body),
        _ => p.body.len(),
    };
    if body_framed > max_frame {
        return false;
    }
    let before = buf.len();
    frames::append(buf, framing, p, root);
    if buf.len() - before <= max_frame {
        return true;
    }
    // Give the memory back: a truncated buffer would keep its capacity.
    *buf = BytesMut::from(buf.get(..before).unwrap_or_default());
    false
}

struct BatchKey<'a> {
    content_type: &'a [u8],
    sender: Option<&'a [u8]>,
    /// Messages in each framing's frame.
    messages: [u32; FRAMINGS],
}

fn add_counts(to: &mut [u32; FRAMINGS], from: &[u32; FRAMINGS]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t += f;
    }
}

type Frames<'a> = (&'a [Bytes; FRAMINGS], &'a BatchKey<'a>);

/// Queues the batch to each subscriber of `audience`: the plain frames, or
/// the ones naming the channel to those that asked for them.
fn fan_out(
    audience: &Audience,
    plain: Frames,
    named: Frames,
    out: &mut (impl Outbox + ?Sized),
) -> u64 {
    // The usual audience, a channel's with no subscriber of several names:
    // the loop is compiled with no choice per subscriber.
    if audience.named.iter().all(|&n| n == 0) {
        deliver_each(audience, out, |_| plain)
    } else {
        deliver_each(audience, out, |sub| if sub.named { named } else { plain })
    }
}

/// Queues to each subscriber of `audience` the frame of its framing from
/// the frames `pick` gives it, unless its filter refuses the batch or
/// every message of the batch was left out of that framing.
fn deliver_each<'a>(
    audience: &Audience,
    out: &mut (impl Outbox + ?Sized),
    pick: impl Fn(&Subscriber) -> Frames<'a>,
) -> u64 {
    let mut delivered = 0u64;
    for sub in &audience.subs {
        let (frames, key) = pick(sub);
        if let Some(filter) = &sub.filter {
            if !filter.accepts(key.content_type, key.sender) {
                continue;
            }
        }
        let i = sub.framing as usize;
        let (Some(frame), Some(&messages)) = (frames.get(i), key.messages.get(i)) else {
            continue;
        };
        if messages == 0 {
            continue;
        }
        if out.deliver(sub.conn, frame.clone(), messages) {
            delivered += u64::from(messages);
        }
    }
    delivered
}

/// The `n` largest of `items` by their count (ties: the smaller key
/// first), largest first; a heap of at most `n` entries.
pub(crate) fn top_n<'a, K: Ord + ?Sized>(
    items: impl Iterator<Item = (usize, &'a K)>,
    n: usize,
) -> Vec<(usize, &'a K)> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if n == 0 {
        return Vec::new();
    }
    // A min-heap on (count, Reverse(key)): its top is the entry to drop.
    let mut heap: BinaryHeap<Reverse<(usize, Reverse<&K>)>> = BinaryHeap::with_capacity(n + 1);
    for (count, key) in items {
        heap.push(Reverse((count, Reverse(key))));
        if heap.len() > n {
            heap.pop();
        }
    }
    let mut top: Vec<(usize, &K)> = heap
        .into_iter()
        .map(|Reverse((count, Reverse(key)))| (count, key))
        .collect();
    top.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::test_support::{b, conn};
    use crate::broker::RecordingOutbox;

    /// A returning subscriber is sent up to a megabyte of kept messages at
    /// once (`REPLAY_BYTES`): half a megabyte whole, without a gap notice;
    /// of two megabytes the newest one, after a gap notice.
    #[test]
    fn a_replay_sends_up_to_a_megabyte_of_kept_messages() {
        let counts = |frames: &[u8]| {
            let count = |what: &[u8]| frames.windows(what.len()).filter(|w| *w == what).count();
            let gaps = count(b"event: gap");
            (count(b"data: ") - gaps, gaps)
        };
        let mut ch = Channels::default().with_history(HistoryLimits {
            messages: 10_000,
            per_channel_bytes: 4 << 20,
            total_bytes: 64 << 20,
        });
        let mut out = RecordingOutbox::default();
        let body = vec![b'x'; 1024];
        for _ in 0..512 {
            ch.publish(b"news", b"t", None, &body, &mut out);
        }
        ch.seal(&mut out);
        let mut frames = BytesMut::new();
        let all = Filter::default();
        ch.replay(&[b("news")], 0, Framing::EventStream, &all, &mut frames);
        assert_eq!(counts(&frames), (512, 0));
        for _ in 512..2048 {
            ch.publish(b"news", b"t", None, &body, &mut out);
        }
        ch.seal(&mut out);
        let mut frames = BytesMut::new();
        ch.replay(&[b("news")], 0, Framing::EventStream, &all, &mut frames);
        let (messages, gaps) = counts(&frames);
        assert_eq!(gaps, 1);
        // The kept size of a message counts its channel and type too.
        assert!((768..1024).contains(&messages), "{messages} replayed");
    }

    /// A replay is what a live subscriber of the same names, framing and
    /// filter got: frames naming the channel for several names or a
    /// pattern, plain ones for one channel; the filter applied.
    #[test]
    fn a_replay_is_what_a_live_subscriber_got() {
        let mut ch = Channels::default().with_history(HistoryLimits {
            messages: 10,
            per_channel_bytes: 1 << 20,
            total_bytes: 1 << 20,
        });
        let mut out = RecordingOutbox::default();
        let sse = |named, filter| Subscription {
            framing: Framing::EventStream,
            filter,
            named,
        };
        let images = || Filter::new(Some(b"image/*"), None);
        ch.subscribe(conn(1), b("a.x"), sse(false, Filter::default()), &mut out)
            .unwrap();
        ch.subscribe(conn(2), b("a.*"), sse(false, Filter::default()), &mut out)
            .unwrap();
        for name in ["a.x", "b.y"] {
            ch.subscribe(conn(3), b(name), sse(true, Filter::default()), &mut out)
                .unwrap();
            ch.subscribe(conn(4), b(name), sse(true, images()), &mut out)
                .unwrap();
        }
        ch.publish(b"a.x", b"text/plain", None, b"1", &mut out);
        ch.publish(b"b.y", b"image/png", None, b"2", &mut out);
        ch.publish(b"a.x", b"image/png", None, b"3", &mut out);
        ch.seal(&mut out);
        let replay = |names: &[&str], filter: &Filter| {
            let names: Vec<Bytes> = names.iter().map(|n| b(n)).collect();
            let mut frames = BytesMut::new();
            ch.replay(&names, 0, Framing::EventStream, filter, &mut frames);
            frames.to_vec()
        };
        let all = Filter::default();
        assert_eq!(replay(&["a.x"], &all), out.bytes_for(conn(1)));
        assert_eq!(replay(&["a.*"], &all), out.bytes_for(conn(2)));
        assert_eq!(replay(&["a.x", "b.y"], &all), out.bytes_for(conn(3)));
        assert_eq!(replay(&["a.x", "b.y"], &images()), out.bytes_for(conn(4)));
        // One channel's frames are plain, the others name it.
        let text = |k| String::from_utf8(out.bytes_for(conn(k))).unwrap();
        assert_eq!(text(1).matches("event: ").count(), 0, "{}", text(1));
        assert_eq!(text(3).matches("event: ").count(), 3, "{}", text(3));
        assert_eq!(text(4).matches("data: ").count(), 2, "{}", text(4));
    }

    /// A history of 0 messages is none: nothing kept, nothing replayed.
    #[test]
    fn a_history_of_no_messages_keeps_none() {
        let limits = |messages| HistoryLimits {
            messages,
            per_channel_bytes: 1 << 20,
            total_bytes: 1 << 20,
        };
        let mut out = RecordingOutbox::default();
        let mut none = Channels::default().with_history(limits(0));
        none.publish(b"news", b"t", None, b"m", &mut out);
        assert!(!none.keeps_history());
        assert_eq!(none.history_size(), (0, 0, 0));
        let mut one = Channels::default().with_history(limits(1));
        one.publish(b"news", b"t", None, b"m", &mut out);
        assert!(one.keeps_history());
        // The body, its type and the entry's overhead, on one channel.
        assert_eq!(
            one.history_size(),
            (1, 2 + crate::broker::history::ENTRY_OVERHEAD, 1)
        );
    }

    /// Ids go on from the epoch the shell gives at start.
    #[test]
    fn message_ids_start_after_the_epoch() {
        let mut ch = Channels::default().with_history(HistoryLimits {
            messages: 10,
            per_channel_bytes: 1 << 20,
            total_bytes: 1 << 20,
        });
        ch.start_ids_after(5000);
        let mut out = RecordingOutbox::default();
        let ids = Subscription::new(Framing::LineIds, Filter::default());
        ch.subscribe(conn(1), b("news"), ids, &mut out).unwrap();
        ch.publish(b"news", b"t", None, b"m", &mut out);
        ch.seal(&mut out);
        assert_eq!(out.bytes_for(conn(1)), b"! 1 news t 5001\r\nm\r\n");
    }

    /// A channel's presence: its own subscriptions, and the receivers a
    /// message published there reaches (its own, the root's, every
    /// matching pattern's); a pattern's and the root's are their own.
    #[test]
    fn presence_counts_own_subscriptions_and_every_receiver() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        for (k, name) in [(1, "room.1"), (2, "room.1"), (3, "room.*")] {
            ch.subscribe(conn(k), b(name), Subscription::line(), &mut out)
                .unwrap();
        }
        ch.subscribe_all(conn(4), Subscription::line(), &mut out);
        let p = ch.presence(b"room.1").unwrap();
        assert_eq!(
            (p.kind, p.total(), p.receivers),
            (PresenceKind::Channel, 2, 4)
        );
        // A channel nobody names still reaches the pattern and the root.
        let p = ch.presence(b"room.2").unwrap();
        assert_eq!((p.total(), p.receivers), (0, 2));
        let p = ch.presence(b"hall").unwrap();
        assert_eq!((p.total(), p.receivers), (0, 1));
        let p = ch.presence(b"room.*").unwrap();
        assert_eq!(
            (p.kind, p.total(), p.receivers),
            (PresenceKind::Pattern, 1, 1)
        );
        let p = ch.presence(b"*").unwrap();
        assert_eq!((p.kind, p.total(), p.receivers), (PresenceKind::All, 1, 1));
        assert_eq!(ch.presence(b"room.>.x"), None);
    }

    /// A presence's subscriptions per door: the line framing's on the line
    /// door, every other framing's (named or not) on HTTP.
    #[test]
    fn presence_counts_per_door() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let sse = |named| Subscription {
            framing: Framing::EventStream,
            filter: Filter::default(),
            named,
        };
        ch.subscribe(conn(1), b("room"), Subscription::line(), &mut out)
            .unwrap();
        ch.subscribe(conn(2), b("room"), sse(false), &mut out)
            .unwrap();
        ch.subscribe(conn(3), b("room"), sse(true), &mut out)
            .unwrap();
        let p = ch.presence(b"room").unwrap();
        assert_eq!(p.per_door(), [("line", 1), ("http", 2)]);
        assert_eq!(
            ch.presence(b"hall").unwrap().per_door(),
            [("line", 0), ("http", 0)]
        );
    }

    /// With presence events on, each new subscription to a channel and each
    /// one ended publishes an event on `$presence.CHANNEL`; a
    /// resubscription, a pattern, the root and `$presence.` channels
    /// themselves publish none.
    #[test]
    fn presence_events_tell_the_joins_and_leaves_of_a_channel() {
        let event = |joined: bool, subscribers: usize| {
            let body = serde_json::json!({
                "channel": "room",
                "event": if joined { "join" } else { "leave" },
                "subscribers": subscribers,
            })
            .to_string();
            format!(
                "! {} $presence.room application/json\r\n{body}\r\n",
                body.len()
            )
            .into_bytes()
        };
        for on in [true, false] {
            let mut ch = Channels::default().with_presence_events(on);
            let mut out = RecordingOutbox::default();
            ch.subscribe_all(conn(9), Subscription::line(), &mut out);
            ch.subscribe(conn(1), b("$presence.room"), Subscription::line(), &mut out)
                .unwrap();
            for k in [2, 2, 3] {
                ch.subscribe(conn(k), b("room"), Subscription::line(), &mut out)
                    .unwrap();
            }
            ch.subscribe(conn(4), b("room.*"), Subscription::line(), &mut out)
                .unwrap();
            assert!(ch.unsubscribe(conn(2), b"room", &mut out));
            assert!(!ch.unsubscribe(conn(2), b"room", &mut out));
            assert!(ch.unsubscribe(conn(1), b"$presence.room", &mut out));
            ch.seal(&mut out);
            let want = if on {
                [event(true, 1), event(true, 2), event(false, 1)].concat()
            } else {
                Vec::new()
            };
            assert_eq!(out.bytes_for(conn(9)), want, "on: {on}");
        }
    }

    #[test]
    fn top_channels_by_subscribers_is_bounded_and_ordered() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let mut k = 0;
        for (name, subs) in [("a", 1), ("b", 3), ("c", 2), ("d", 3), ("e", 1)] {
            for _ in 0..subs {
                k += 1;
                ch.subscribe(conn(k), b(name), Subscription::line(), &mut out)
                    .unwrap();
            }
        }
        ch.subscribe_all(conn(99), Subscription::line(), &mut out);
        assert_eq!(
            ch.top_by_subscribers(3),
            [(b("b"), 3), (b("d"), 3), (b("c"), 2)]
        );
        assert_eq!(ch.top_by_subscribers(10).len(), 5);
        assert!(ch.top_by_subscribers(0).is_empty());
        assert_eq!(ch.root_subscribers(), 1);
    }

    /// With the cluster on, the first subscriber of a channel, of a pattern
    /// and of the root, and the last of each to go, are changes of
    /// interest; the others, and an unsubscription of nothing, are not.
    /// Without the cluster nothing is noted.
    #[test]
    fn interest_changes_with_the_first_and_the_last_subscriber() {
        for mirror in [true, false] {
            let mut ch = Channels::default();
            if mirror {
                ch.mirror();
            }
            let mut out = RecordingOutbox::default();
            for k in [1, 2] {
                ch.subscribe(conn(k), b("news"), Subscription::line(), &mut out)
                    .unwrap();
                ch.subscribe(conn(k), b("a.*"), Subscription::line(), &mut out)
                    .unwrap();
                ch.subscribe_all(conn(k), Subscription::line(), &mut out);
            }
            for k in [1, 2] {
                assert!(ch.unsubscribe(conn(k), b"news", &mut out));
                assert!(ch.unsubscribe(conn(k), b"a.*", &mut out));
                assert!(ch.unsubscribe_all(conn(k), &mut out));
            }
            assert!(!ch.unsubscribe(conn(3), b"news", &mut out));
            assert!(!ch.unsubscribe(conn(3), b"a.*", &mut out));
            assert!(!ch.unsubscribe_all(conn(3), &mut out));
            assert_eq!(ch.root_subscribers(), 0);
            let want = if mirror {
                vec![
                    Interest::Channel(b("news"), true),
                    Interest::Pattern(b("a.*"), true),
                    Interest::All(true),
                    Interest::Channel(b("news"), false),
                    Interest::Pattern(b("a.*"), false),
                    Interest::All(false),
                ]
            } else {
                Vec::new()
            };
            assert_eq!(ch.take_mirrored().1, want, "mirror: {mirror}");
        }
    }

    /// A channel tapped twice stays tapped until both taps end.
    #[test]
    fn taps_are_counted() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        ch.tap(b"news");
        ch.tap(b"news");
        ch.untap(b"news");
        ch.publish(b"news", b"t", None, b"1", &mut out);
        ch.publish(b"other", b"t", None, b"x", &mut out);
        let taken: Vec<Bytes> = ch.take_published().into_iter().map(|p| p.body).collect();
        assert_eq!(taken, [b("1")]);
        ch.untap(b"news");
        ch.publish(b"news", b"t", None, b"2", &mut out);
        assert!(ch.take_published().is_empty());
        // Without the cluster, a tap's end notes no interest either.
        ch.tap(b"news");
        ch.untap(b"news");
        assert!(ch.take_mirrored().1.is_empty());
    }

    #[test]
    fn a_tapped_channel_is_of_interest_to_the_cluster_like_a_subscribed_one() {
        let mut ch = Channels::default();
        ch.mirror();
        let mut out = RecordingOutbox::default();
        let interest = |ch: &mut Channels| ch.take_mirrored().1;
        // A tap alone: interest; a second tap and a subscriber add none.
        ch.tap(b"news");
        assert_eq!(interest(&mut ch), [Interest::Channel(b("news"), true)]);
        ch.tap(b"news");
        ch.subscribe(conn(1), b("news"), Subscription::line(), &mut out)
            .unwrap();
        assert!(interest(&mut ch).is_empty());
        // The interest ends with the last of them, whichever it is.
        ch.untap(b"news");
        ch.untap(b"news");
        assert!(interest(&mut ch).is_empty());
        ch.tap(b"news");
        assert!(ch.unsubscribe(conn(1), b"news", &mut out));
        assert!(interest(&mut ch).is_empty());
        ch.untap(b"news");
        assert_eq!(interest(&mut ch), [Interest::Channel(b("news"), false)]);
        // A subscriber first, then a tap that outlives it.
        ch.subscribe(conn(1), b("news"), Subscription::line(), &mut out)
            .unwrap();
        ch.tap(b"news");
        assert!(ch.unsubscribe(conn(1), b"news", &mut out));
        assert_eq!(interest(&mut ch), [Interest::Channel(b("news"), true)]);
        ch.untap(b"news");
        assert_eq!(interest(&mut ch), [Interest::Channel(b("news"), false)]);
        // A name no publish can have (a pattern, the root) is of no
        // interest as a tap; an untap of what is not tapped does nothing.
        ch.tap(b"a.*");
        ch.tap(b"*");
        ch.untap(b"a.*");
        ch.untap(b"*");
        ch.untap(b"other");
        assert!(interest(&mut ch).is_empty());
        // Without the cluster, nothing is noted.
        let mut alone = Channels::default();
        alone.tap(b"news");
        assert!(interest(&mut alone).is_empty());
    }

    #[test]
    fn publish_reaches_every_subscriber_once_in_order() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        for k in 0..3 {
            ch.subscribe(conn(k), b("news"), Subscription::line(), &mut out)
                .unwrap();
        }
        ch.subscribe(conn(9), b("other"), Subscription::line(), &mut out)
            .unwrap();
        for body in ["a", "b", "c"] {
            ch.publish(b"news", b"text/plain", None, body.as_bytes(), &mut out);
        }
        ch.seal(&mut out);
        for k in 0..3 {
            assert_eq!(
                out.bytes_for(conn(k)),
                b"! 1 news text/plain\r\na\r\n! 1 news text/plain\r\nb\r\n! 1 news text/plain\r\nc\r\n"
            );
        }
        assert!(out.bytes_for(conn(9)).is_empty());
        // One batch, so one queue entry per subscriber, carrying three messages.
        assert_eq!(out.frames.len(), 3);
        assert!(out.frames.iter().all(|(_, _, n)| *n == 3));
        assert_eq!(ch.stats(), (3, 9));
    }

    #[test]
    fn order_across_channels_is_kept() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.subscribe(conn(1), b("y"), Subscription::line(), &mut out)
            .unwrap();
        ch.publish(b"x", b"t", None, b"1", &mut out);
        ch.publish(b"y", b"t", None, b"2", &mut out);
        ch.publish(b"x", b"t", None, b"3", &mut out);
        ch.seal(&mut out);
        assert_eq!(
            out.bytes_for(conn(1)),
            b"! 1 x t\r\n1\r\n! 1 y t\r\n2\r\n! 1 x t\r\n3\r\n"
        );
    }

    #[test]
    fn unsubscribe_seals_first_and_stops_delivery() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.publish(b"x", b"t", None, b"1", &mut out);
        assert!(ch.unsubscribe(conn(1), b"x", &mut out));
        ch.publish(b"x", b"t", None, b"2", &mut out);
        ch.seal(&mut out);
        assert_eq!(out.bytes_for(conn(1)), b"! 1 x t\r\n1\r\n");
        assert_eq!(ch.channel_count(), 0);
        assert!(!ch.unsubscribe(conn(1), b"x", &mut out));
    }

    #[test]
    fn filters_and_root() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let images = Subscription {
            framing: Framing::Line,
            filter: Filter::new(Some(b"image/*"), None),
            named: false,
        };
        ch.subscribe(conn(1), b("x"), images, &mut out).unwrap();
        ch.subscribe_all(conn(2), Subscription::line(), &mut out);
        ch.publish(b"x", b"text/plain", None, b"t", &mut out);
        ch.publish(b"x", b"image/png", None, b"i", &mut out);
        ch.publish(b"y", b"text/plain", None, b"y", &mut out);
        ch.seal(&mut out);
        assert_eq!(out.bytes_for(conn(1)), b"! 1 x image/png\r\ni\r\n");
        assert_eq!(
            out.bytes_for(conn(2)),
            b"! 1 x text/plain\r\nt\r\n! 1 x image/png\r\ni\r\n! 1 y text/plain\r\ny\r\n"
        );
        // One delivery to the channel's subscriber, three to the root's.
        assert_eq!(ch.stats(), (3, 4));
    }

    #[test]
    fn a_frame_past_the_frame_limit_is_not_built_or_delivered() {
        let mut ch = Channels::default().with_max_frame(1000);
        let mut out = RecordingOutbox::default();
        let framings = [
            Framing::Line,
            Framing::MultipartChunked,
            Framing::EventStream,
            Framing::EventStreamJson,
        ];
        for (k, &framing) in framings.iter().enumerate() {
            let sub = Subscription {
                framing,
                filter: Filter::default(),
                named: false,
            };
            ch.subscribe(conn(k as u32), b("x"), sub, &mut out).unwrap();
        }
        // 900 line breaks: a 900-byte line frame and multipart part, but
        // 6,300 bytes of event stream and 1,800 of escaped JSON.
        let breaks = vec![b'\n'; 900];
        ch.publish(b"x", b"t", None, &breaks, &mut out);
        // A text of the same length fits every framing.
        let text = vec![b'a'; 900];
        ch.publish(b"x", b"u", None, &text, &mut out);
        ch.seal(&mut out);
        assert_eq!(ch.oversized(), 2);
        let to = |k: u32| -> Vec<usize> {
            out.frames
                .iter()
                .filter(|(c, _, _)| *c == conn(k))
                .map(|(_, f, _)| f.len())
                .collect()
        };
        // Line and multipart subscribers get both messages.
        assert_eq!(to(0).len(), 2);
        assert_eq!(to(1).len(), 2);
        // The event-stream ones only the text, whose frame is all they hold.
        for k in [2, 3] {
            let got = to(k);
            assert_eq!(got.len(), 1, "framing {:?}", framings[k as usize]);
            assert!(got[0] < 1000 && got[0] > 900, "{got:?}");
        }
        // A body at the limit's eighth is framed without the check, and
        // still delivered.
        let short = vec![b'\n'; 124];
        ch.publish(b"x", b"t", None, &short, &mut out);
        ch.seal(&mut out);
        assert_eq!(ch.oversized(), 2);
    }

    /// A message left out of a framing is not counted in that framing's
    /// delivery, nor in the deliveries made.
    #[test]
    fn a_message_left_out_of_a_framing_is_not_counted_in_its_delivery() {
        let mut ch = Channels::default().with_max_frame(1000);
        let mut out = RecordingOutbox::default();
        let sse = Subscription::new(Framing::EventStream, Filter::default());
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.subscribe(conn(2), b("x"), sse, &mut out).unwrap();
        // One batch: 900 line breaks (too large as an event stream), then a.
        ch.publish(b"x", b"t", None, &[b'\n'; 900], &mut out);
        ch.publish(b"x", b"t", None, b"a", &mut out);
        ch.seal(&mut out);
        let counts: Vec<(ConnId, u32)> = out.frames.iter().map(|(c, _, n)| (*c, *n)).collect();
        assert_eq!(counts, [(conn(1), 2), (conn(2), 1)]);
        assert_eq!((ch.stats(), ch.oversized()), ((2, 3), 1));
    }

    /// The frame limit is one message's, not the batch's: two messages
    /// of 600 bytes (613-byte frames) go in one frame under a limit of 1000.
    #[test]
    fn the_frame_limit_is_per_message() {
        let mut ch = Channels::default().with_max_frame(1000);
        let mut out = RecordingOutbox::default();
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.publish(b"x", b"t", None, &[b'm'; 600], &mut out);
        ch.publish(b"x", b"t", None, &[b'm'; 600], &mut out);
        ch.seal(&mut out);
        assert_eq!(out.frames.len(), 1);
        assert_eq!((out.frames[0].1.len(), out.frames[0].2), (2 * 613, 2));
        assert_eq!(ch.oversized(), 0);
    }

    /// A body shorter than an eighth of the frame limit is framed without
    /// measuring (no framing makes it 8 times larger, but for headers); one
    /// of exactly an eighth is measured. With a limit of 64, a 7-byte body
    /// of line breaks becomes a 76-byte event and is delivered; an 8-byte
    /// one (83 bytes) is not.
    #[test]
    fn bodies_under_an_eighth_of_the_frame_limit_are_not_measured() {
        let mut ch = Channels::default().with_max_frame(64);
        let mut out = RecordingOutbox::default();
        let sse = Subscription::new(Framing::EventStream, Filter::default());
        ch.subscribe(conn(1), b("x"), sse, &mut out).unwrap();
        ch.publish(b"x", b"t", None, &[b'\n'; 7], &mut out);
        ch.seal(&mut out);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(out.frames[0].1.len(), 76);
        ch.publish(b"x", b"t", None, &[b'\n'; 8], &mut out);
        ch.seal(&mut out);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(ch.oversized(), 1);
    }

    /// Subscribers of every framing, of the channel and of the root, at
    /// once: each gets its own framing's frame, the root's naming the
    /// channel.
    #[test]
    fn every_framing_plain_and_named_in_one_batch() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        for (k, &framing) in Framing::ALL.iter().enumerate() {
            let k = k as u32;
            let sub = Subscription::new(framing, Filter::default());
            ch.subscribe(conn(k), b("x"), sub.clone(), &mut out)
                .unwrap();
            ch.subscribe_all(conn(100 + k), sub, &mut out);
        }
        ch.publish(b"x", b"t", None, b"m", &mut out);
        ch.seal(&mut out);
        assert_eq!(out.frames.len(), 2 * FRAMINGS);
        let sse = Framing::EventStream as u32;
        assert_eq!(out.bytes_for(conn(sse)), b": channel=x type=t\ndata: m\n\n");
        assert_eq!(
            out.bytes_for(conn(100 + sse)),
            b": channel=x type=t\nevent: x\ndata: m\n\n"
        );
        assert_eq!(
            out.bytes_for(conn(Framing::Line as u32)),
            b"! 1 x t\r\nm\r\n"
        );
        assert_eq!(ch.stats(), (1, 2 * FRAMINGS as u64));
    }

    #[test]
    fn each_framing_built_once_and_shared() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let http = Subscription {
            framing: Framing::MultipartChunked,
            filter: Filter::default(),
            named: false,
        };
        for k in 0..100 {
            let sub = if k % 2 == 0 {
                Subscription::line()
            } else {
                http.clone()
            };
            ch.subscribe(conn(k), b("x"), sub, &mut out).unwrap();
        }
        ch.publish(b"x", b"t", None, b"body", &mut out);
        ch.seal(&mut out);
        let distinct: std::collections::HashSet<*const u8> =
            out.frames.iter().map(|(_, f, _)| f.as_ptr()).collect();
        assert_eq!(distinct.len(), 2);
    }

    #[test]
    fn resubscribe_replaces() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.publish(b"x", b"t", None, b"1", &mut out);
        ch.seal(&mut out);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(ch.subscription_count(), 1);
    }

    #[test]
    fn a_batch_is_sealed_once_it_holds_64_kib() {
        // A subscriber of the channel, then one of every channel.
        for root in [false, true] {
            let mut ch = Channels::default();
            let mut out = RecordingOutbox::default();
            if root {
                ch.subscribe_all(conn(1), Subscription::line(), &mut out);
            } else {
                ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
                    .unwrap();
            }
            // Each message is a 1,014-byte frame: `! 1000 x t\r\n`, body, CRLF.
            let body = vec![b'm'; 1000];
            for _ in 0..64 {
                ch.publish(b"x", b"t", None, &body, &mut out);
            }
            // 64,896 bytes: still open.
            assert!(out.frames.is_empty(), "root: {root}");
            ch.publish(b"x", b"t", None, &body, &mut out);
            // 65,910 bytes: sealed, one frame of 65 messages.
            assert_eq!(out.frames.len(), 1, "root: {root}");
            assert_eq!(out.frames[0].1.len(), 65 * 1014);
            assert_eq!(out.frames[0].2, 65);
            ch.seal(&mut out);
            assert_eq!(out.frames.len(), 1);
        }
    }

    #[test]
    fn nothing_is_built_for_a_channel_nobody_hears() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.publish(b"y", b"t", None, b"m", &mut out);
        assert!(ch.open.is_none());
        assert_eq!(ch.stats(), (1, 0));
    }

    #[test]
    fn a_resubscription_moves_to_its_new_framing() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let http = Subscription {
            framing: Framing::MultipartChunked,
            filter: Filter::default(),
            named: false,
        };
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out)
            .unwrap();
        ch.subscribe(conn(1), b("x"), http, &mut out).unwrap();
        let counts = ch.channels.get(&b("x")).map(|a| a.per_framing);
        let mut want = [0; FRAMINGS];
        want[Framing::MultipartChunked as usize] = 1;
        assert_eq!(counts, Some(want));
        assert!(ch.unsubscribe(conn(1), b"x", &mut out));
        assert_eq!(ch.channel_count(), 0);
    }

    #[test]
    fn unsubscribing_some_keeps_the_others() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        for k in 1..=3 {
            ch.subscribe(conn(k), b("x"), Subscription::line(), &mut out)
                .unwrap();
        }
        ch.subscribe_all(conn(4), Subscription::line(), &mut out);
        assert_eq!((ch.channel_count(), ch.subscription_count()), (1, 4));
        // The first, then the one that took its place.
        assert!(ch.unsubscribe(conn(1), b"x", &mut out));
        assert!(ch.unsubscribe(conn(3), b"x", &mut out));
        assert_eq!((ch.channel_count(), ch.subscription_count()), (1, 2));
        let counts = ch.channels.get(&b("x")).map(|a| a.per_framing);
        let mut want = [0; FRAMINGS];
        want[Framing::Line as usize] = 1;
        assert_eq!(counts, Some(want));
        ch.publish(b"x", b"t", None, b"m", &mut out);
        ch.seal(&mut out);
        assert_eq!(out.bytes_for(conn(2)), b"! 1 x t\r\nm\r\n");
        assert!(out.bytes_for(conn(1)).is_empty());
        assert!(out.bytes_for(conn(3)).is_empty());
        assert_eq!(out.bytes_for(conn(4)), b"! 1 x t\r\nm\r\n");
        assert!(ch.unsubscribe_all(conn(4), &mut out));
        assert!(!ch.unsubscribe_all(conn(4), &mut out));
        assert_eq!(ch.subscription_count(), 1);
    }
    #[test]
    fn patterns_and_named_subscribers_get_frames_naming_the_channel() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let sse = |named| Subscription {
            framing: Framing::EventStream,
            filter: Filter::default(),
            named,
        };
        ch.subscribe(conn(1), b("sensors.*.temp"), sse(false), &mut out)
            .unwrap();
        ch.subscribe(conn(2), b("sensors.>"), Subscription::line(), &mut out)
            .unwrap();
        ch.subscribe(conn(3), b("sensors.a.temp"), sse(true), &mut out)
            .unwrap();
        ch.subscribe(conn(4), b("sensors.a.temp"), sse(false), &mut out)
            .unwrap();
        assert_eq!(ch.pattern_count(), 2);
        assert_eq!(ch.subscription_count(), 4);
        ch.publish(b"sensors.a.temp", b"t", None, b"21", &mut out);
        ch.publish(b"sensors.b.hum", b"t", None, b"40", &mut out);
        ch.publish(b"other", b"t", None, b"x", &mut out);
        ch.seal(&mut out);
        let named = b": channel=sensors.a.temp type=t\nevent: sensors.a.temp\ndata: 21\n\n";
        assert_eq!(out.bytes_for(conn(1)), named);
        assert_eq!(out.bytes_for(conn(3)), named);
        assert_eq!(
            out.bytes_for(conn(4)),
            b": channel=sensors.a.temp type=t\ndata: 21\n\n"
        );
        assert_eq!(
            out.bytes_for(conn(2)),
            b"! 2 sensors.a.temp t\r\n21\r\n! 2 sensors.b.hum t\r\n40\r\n"
        );
        assert_eq!(ch.stats(), (3, 5));
        assert!(ch.unsubscribe(conn(1), b"sensors.*.temp", &mut out));
        assert!(!ch.unsubscribe(conn(1), b"sensors.*.temp", &mut out));
        assert!(ch.unsubscribe(conn(2), b"sensors.>", &mut out));
        assert_eq!(ch.pattern_count(), 0);
        // `*` and `>` alone are the root.
        ch.subscribe(conn(5), b(">"), Subscription::line(), &mut out)
            .unwrap();
        assert_eq!(ch.root.subs.len(), 1);
        assert!(ch.unsubscribe(conn(5), b"*", &mut out));
        assert_eq!(
            ch.subscribe(conn(6), b("a.>.b"), Subscription::line(), &mut out),
            Err(PatternError::GtNotLast)
        );
    }
}
