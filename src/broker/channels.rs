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
use super::{ConnId, Outbox};

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
}

impl Subscription {
    pub fn line() -> Subscription {
        Subscription {
            framing: Framing::Line,
            filter: Filter::default(),
        }
    }
}

struct Subscriber {
    conn: ConnId,
    framing: Framing,
    filter: Option<Box<Filter>>,
}

/// The subscribers of one channel (or of all channels, for the root).
#[derive(Default)]
struct Audience {
    subs: Vec<Subscriber>,
    index: HashMap<ConnId, usize>,
    per_framing: [u32; FRAMINGS],
}

impl Audience {
    fn add(&mut self, conn: ConnId, sub: Subscription) {
        if let Some(&i) = self.index.get(&conn) {
            if let Some(old) = self.subs.get(i) {
                if let Some(n) = self.per_framing.get_mut(old.framing as usize) {
                    *n -= 1;
                }
            }
            self.subs.swap_remove(i);
            self.fix_index(i);
            self.index.remove(&conn);
        }
        if let Some(n) = self.per_framing.get_mut(sub.framing as usize) {
            *n += 1;
        }
        self.index.insert(conn, self.subs.len());
        self.subs.push(Subscriber {
            conn,
            framing: sub.framing,
            filter: (!sub.filter.is_empty()).then(|| Box::new(sub.filter)),
        });
    }

    fn remove(&mut self, conn: ConnId) -> bool {
        let Some(i) = self.index.remove(&conn) else {
            return false;
        };
        if i < self.subs.len() {
            let old = self.subs.swap_remove(i);
            if let Some(n) = self.per_framing.get_mut(old.framing as usize) {
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
}

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
/// its last (`false`) subscriber; the root did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    Channel(Bytes, bool),
    All(bool),
}

/// All channels and the root (all-channels) audience.
pub struct Channels {
    channels: HashMap<Bytes, Audience>,
    root: Audience,
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
            open: None,
            published: 0,
            fanned_out: 0,
            taps: HashMap::new(),
            tapped: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
            oversized: 0,
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

    /// Subscriptions over all channels, the root's included.
    pub fn subscription_count(&self) -> usize {
        self.channels.values().map(|a| a.subs.len()).sum::<usize>() + self.root.subs.len()
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

    /// Subscribes `conn` to `channel`, replacing an earlier subscription of it.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        channel: Bytes,
        sub: Subscription,
        out: &mut (impl Outbox + ?Sized),
    ) {
        self.seal(out);
        match self.channels.get_mut(&channel[..]) {
            Some(audience) => audience.add(conn, sub),
            None => {
                // An exact-size key, not a slice pinning an input buffer.
                let mut audience = Audience::default();
                audience.add(conn, sub);
                let name = Bytes::copy_from_slice(&channel);
                if self.mirror {
                    self.interest.push(Interest::Channel(name.clone(), true));
                }
                self.channels.insert(name, audience);
            }
        }
    }

    /// Subscribes `conn` to every channel.
    pub fn subscribe_all(
        &mut self,
        conn: ConnId,
        sub: Subscription,
        out: &mut (impl Outbox + ?Sized),
    ) {
        self.seal(out);
        if self.mirror && self.root.is_empty() {
            self.interest.push(Interest::All(true));
        }
        self.root.add(conn, sub);
    }

    /// Ends a subscription; returns false when there was none.
    pub fn unsubscribe(
        &mut self,
        conn: ConnId,
        channel: &[u8],
        out: &mut (impl Outbox + ?Sized),
    ) -> bool {
        self.seal(out);
        let Some(audience) = self.channels.get_mut(channel) else {
            return false;
        };
        let removed = audience.remove(conn);
        if audience.is_empty() {
            if let Some((name, _)) = self.channels.remove_entry(channel) {
                if self.mirror {
                    self.interest.push(Interest::Channel(name, false));
                }
            }
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
    /// [`Channels::take_published`]; taps are counted.
    pub fn tap(&mut self, channel: &[u8]) {
        match self.taps.get_mut(channel) {
            Some(n) => *n += 1,
            None => {
                self.taps.insert(Bytes::copy_from_slice(channel), 1);
            }
        }
    }

    /// Ends one tap of `channel`.
    pub fn untap(&mut self, channel: &[u8]) {
        if let Some(n) = self.taps.get_mut(channel) {
            *n -= 1;
            if *n == 0 {
                self.taps.remove(channel);
            }
        }
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
            let wanted = self
                .channels
                .get(channel)
                .map_or([0; FRAMINGS], |a| a.per_framing);
            let root_wanted = self.root.per_framing;
            if wanted.iter().chain(root_wanted.iter()).all(|&n| n == 0) {
                return;
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
        };
        let mut full = false;
        for &framing in Framing::ALL {
            let i = framing as usize;
            let lists = [
                (
                    batch.wanted.get(i),
                    batch.frames.get_mut(i),
                    batch.left_out.get_mut(i),
                    false,
                ),
                (
                    batch.root_wanted.get(i),
                    batch.root_frames.get_mut(i),
                    batch.root_left_out.get_mut(i),
                    true,
                ),
            ];
            for (wanted, buf, left_out, root) in lists {
                let (Some(&wanted), Some(buf), Some(left_out)) = (wanted, buf, left_out) else {
                    continue;
                };
                if wanted == 0 {
                    continue;
                }
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
        if let Some(audience) = self.channels.get(&batch.channel) {
            self.fanned_out += fan_out(audience, &frames, &key(batch.left_out), out);
        }
        self.fanned_out += fan_out(&self.root, &root_frames, &key(batch.root_left_out), out);
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

fn fan_out(
    audience: &Audience,
    frames: &[Bytes; FRAMINGS],
    key: &BatchKey,
    out: &mut (impl Outbox + ?Sized),
) -> u64 {
    let mut delivered = 0u64;
    for sub in &audience.subs {
        if let Some(filter) = &sub.filter {
            if !filter.accepts(key.content_type, key.sender) {
                continue;
            }
        }
        let i = sub.framing as usize;
        let (Some(frame), Some(&messages)) = (frames.get(i), key.messages.get(i)) else {
            continue;
        };
        // Every message of the batch was left out of this framing.
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
    use crate::broker::RecordingOutbox;

    fn conn(key: u32) -> ConnId {
        ConnId { key, gen: 1 }
    }
    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn top_channels_by_subscribers_is_bounded_and_ordered() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let mut k = 0;
        for (name, subs) in [("a", 1), ("b", 3), ("c", 2), ("d", 3), ("e", 1)] {
            for _ in 0..subs {
                k += 1;
                ch.subscribe(conn(k), b(name), Subscription::line(), &mut out);
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

    #[test]
    fn publish_reaches_every_subscriber_once_in_order() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        for k in 0..3 {
            ch.subscribe(conn(k), b("news"), Subscription::line(), &mut out);
        }
        ch.subscribe(conn(9), b("other"), Subscription::line(), &mut out);
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
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out);
        ch.subscribe(conn(1), b("y"), Subscription::line(), &mut out);
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
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out);
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
        };
        ch.subscribe(conn(1), b("x"), images, &mut out);
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
            };
            ch.subscribe(conn(k as u32), b("x"), sub, &mut out);
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

    #[test]
    fn each_framing_built_once_and_shared() {
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let http = Subscription {
            framing: Framing::MultipartChunked,
            filter: Filter::default(),
        };
        for k in 0..100 {
            let sub = if k % 2 == 0 {
                Subscription::line()
            } else {
                http.clone()
            };
            ch.subscribe(conn(k), b("x"), sub, &mut out);
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
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out);
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out);
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
                ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out);
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
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out);
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
        };
        ch.subscribe(conn(1), b("x"), Subscription::line(), &mut out);
        ch.subscribe(conn(1), b("x"), http, &mut out);
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
            ch.subscribe(conn(k), b("x"), Subscription::line(), &mut out);
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
}
