//! Channel history: the last messages of each channel, kept in memory for
//! subscribers that come back (`?since=ID`, `Last-Event-ID`, `+ CH SINCE`).
//!
//! Off unless `--history N` is given. Every message published while it is on
//! gets an id from one server-wide counter, so ids increase on every channel
//! and one id also says where a subscriber of several channels or of a
//! pattern stopped. The counter starts at the run's epoch (the shell gives
//! the wall clock at start in microseconds), so ids keep increasing across
//! restarts and an id from an earlier run is below every id of this one:
//! it is reported as a gap, as if this run had let go everything before
//! its start. Each channel keeps its last N messages in a ring, at most
//! `--history-bytes` of them; all rings together at most
//! `--history-total-bytes`, the oldest message of all going first. Each
//! message counts its body, content type, sender and [`ENTRY_OVERHEAD`].
//!
//! A ring remembers the highest id it let go, so that a subscriber asking
//! for messages after an older id is told it missed some (a gap) instead of
//! silently getting fewer. A ring left empty is dropped; the highest id a
//! dropped ring let go is remembered server-wide, so a gap is never missed
//! (it may be reported where nothing was lost on that very channel).
//! Nothing here knows about framing or connections.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::pattern;

/// What each kept message costs besides its bytes, counted against the
/// byte bounds: the ring's slot (104 bytes), the global order entry (40),
/// the allocator's rounding of its two copies and the queues' spare room;
/// measured: 224 to 228 bytes a message (`benches/history-memory.sh`).
pub const ENTRY_OVERHEAD: usize = 224;

/// How much history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages per channel; 0 turns history off.
    pub messages: usize,
    /// Bytes per channel.
    pub per_channel_bytes: usize,
    /// Bytes over all channels.
    pub total_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            messages: 0,
            per_channel_bytes: 1024 * 1024,
            total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One kept message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub id: u64,
    pub content_type: Bytes,
    pub sender: Option<Bytes>,
    pub body: Bytes,
}

impl Kept {
    fn size(&self) -> usize {
        self.body.len()
            + self.content_type.len()
            + self.sender.as_ref().map_or(0, Bytes::len)
            + ENTRY_OVERHEAD
    }
}

struct Ring {
    kept: VecDeque<Kept>,
    bytes: usize,
    /// The highest id this channel let go (0: none).
    let_go: u64,
}

/// What a returning subscriber gets: the kept messages after its id, in id
/// order, and whether some it should have had are gone.
#[derive(Debug, Default)]
pub struct Replay<'a> {
    pub messages: Vec<(&'a Bytes, &'a Kept)>,
    /// Some messages after the id asked for are no longer kept: the id of
    /// the first message the subscriber gets (the next id to be given when
    /// it gets none).
    pub gap: Option<u64>,
}

/// The kept messages of every channel.
pub struct History {
    limits: HistoryLimits,
    rings: HashMap<Bytes, Ring>,
    /// (id, channel) of kept messages, oldest first, for the total bound.
    /// Entries of messages a ring already let go are skipped, and swept
    /// once they are half of it.
    order: VecDeque<(u64, Bytes)>,
    kept: usize,
    total_bytes: usize,
    last_id: u64,
    /// The highest id let go by a ring that was then dropped; at first the
    /// epoch, below which every id is from an earlier run.
    forgotten: u64,
    /// The id before this run's first.
    epoch: u64,
}

impl History {
    /// A history whose ids start at 1.
    pub fn new(limits: HistoryLimits) -> History {
        History::starting_after(limits, 0)
    }

    /// A history whose first id is `epoch + 1`: ids up to `epoch` are
    /// taken as an earlier run's, all of whose messages are gone.
    pub fn starting_after(limits: HistoryLimits, epoch: u64) -> History {
        History {
            limits,
            rings: HashMap::new(),
            order: VecDeque::new(),
            kept: 0,
            total_bytes: 0,
            last_id: epoch,
            forgotten: epoch,
            epoch,
        }
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// The id of the last message published (0: none yet).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Messages and bytes kept over all channels.
    pub fn size(&self) -> (usize, usize) {
        (self.kept, self.total_bytes)
    }

    /// Channels with kept messages.
    pub fn channel_count(&self) -> usize {
        self.rings.len()
    }

    /// Keeps a copy of one message of `channel`; returns its id.
    pub fn record(
        &mut self,
        channel: &[u8],
        content_type: &[u8],
        sender: Option<&[u8]>,
        body: &[u8],
    ) -> u64 {
        self.last_id += 1;
        let id = self.last_id;
        let message = Kept {
            id,
            content_type: Bytes::copy_from_slice(content_type),
            sender: sender.map(Bytes::copy_from_slice),
            body: Bytes::copy_from_slice(body),
        };
        let size = message.size();
        let key = match self.rings.get_key_value(channel) {
            Some((key, _)) => key.clone(),
            None => {
                let key = Bytes::copy_from_slice(channel);
                let ring = Ring {
                    kept: VecDeque::new(),
                    bytes: 0,
                    let_go: self.forgotten,
                };
                self.rings.insert(key.clone(), ring);
                key
            }
        };
        if let Some(ring) = self.rings.get_mut(&key) {
            ring.kept.push_back(message);
            ring.bytes += size;
            self.kept += 1;
            self.total_bytes += size;
            while ring.kept.len() > self.limits.messages
                || ring.bytes > self.limits.per_channel_bytes
            {
                let Some(old) = ring.kept.pop_front() else {
                    break;
                };
                ring.bytes -= old.size();
                ring.let_go = old.id;
                self.kept -= 1;
                self.total_bytes -= old.size();
            }
        }
        self.order.push_back((id, key.clone()));
        self.drop_if_empty(&key);
        while self.total_bytes > self.limits.total_bytes {
            let Some((old, channel)) = self.order.pop_front() else {
                break;
            };
            if let Some(ring) = self.rings.get_mut(&channel) {
                if ring.kept.front().is_some_and(|m| m.id == old) {
                    if let Some(m) = ring.kept.pop_front() {
                        ring.bytes -= m.size();
                        ring.let_go = m.id;
                        self.kept -= 1;
                        self.total_bytes -= m.size();
                    }
                }
            }
            self.drop_if_empty(&channel);
        }
        if self.order.len() > 2 * self.kept + 64 {
            let rings = &self.rings;
            self.order.retain(|(id, channel)| {
                rings
                    .get(channel)
                    .and_then(|r| r.kept.front())
                    .is_some_and(|first| first.id <= *id)
            });
        }
        id
    }

    fn drop_if_empty(&mut self, channel: &[u8]) {
        if let Some(ring) = self.rings.get(channel) {
            if ring.kept.is_empty() {
                self.forgotten = self.forgotten.max(ring.let_go);
                self.rings.remove(channel);
            }
        }
    }

    /// The kept messages after `since` of every channel one of `names` (a
    /// channel, a pattern, or `*`) takes, oldest first and each once, at
    /// most `max_bytes` of them (the newest; what is left out is a gap).
    /// Exact names are looked up; patterns and `*` cost one pass over the
    /// kept channels, each matched once against a trie of the patterns.
    /// `since` 0 asks for everything kept since this run's start.
    pub fn replay(&self, names: &[Bytes], since: u64, max_bytes: usize) -> Replay<'_> {
        let since = if since == 0 { self.epoch } else { since };
        let mut patterns: pattern::Trie<bool> = pattern::Trie::default();
        let mut exact: HashSet<&[u8]> = HashSet::new();
        let mut all = false;
        for name in names {
            match pattern::classify(name) {
                Ok(pattern::Name::Exact) => {
                    exact.insert(name);
                }
                Ok(pattern::Name::All) => all = true,
                Ok(pattern::Name::Pattern) => {
                    if let Ok(slot) = patterns.entry(name) {
                        *slot = true;
                    }
                }
                Err(_) => {}
            }
        }
        // An id from the future: not one this server gave (an earlier
        // run's whose clock was ahead, or made up).
        let mut gap = since > self.last_id;
        let mut messages: Vec<(&Bytes, &Kept)> = Vec::new();
        if all || !patterns.is_empty() {
            // A dropped ring may have been one that matches.
            gap |= self.forgotten > since;
            for (channel, ring) in &self.rings {
                let mut matched = all || exact.contains(&channel[..]);
                if !matched {
                    patterns.for_each_match(channel, |_| matched = true);
                }
                if matched {
                    gap |= ring.let_go > since;
                    messages.extend(
                        ring.kept
                            .iter()
                            .filter(|m| m.id > since)
                            .map(|m| (channel, m)),
                    );
                }
            }
        } else {
            for name in exact {
                match self.rings.get_key_value(name) {
                    Some((channel, ring)) => {
                        gap |= ring.let_go > since;
                        messages.extend(
                            ring.kept
                                .iter()
                                .filter(|m| m.id > since)
                                .map(|m| (channel, m)),
                        );
                    }
                    None => gap |= self.forgotten > since,
                }
            }
        }
        messages.sort_unstable_by_key(|(_, m)| m.id);
        // The newest that fit in `max_bytes`.
        let mut bytes = 0usize;
        let mut first = messages.len();
        for (i, (channel, m)) in messages.iter().enumerate().rev() {
            bytes += m.size() + channel.len();
            if bytes > max_bytes {
                gap = true;
                break;
            }
            first = i;
        }
        messages.drain(..first);
        Replay {
            gap: gap.then(|| messages.first().map_or(self.last_id + 1, |(_, m)| m.id)),
            messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize, per_channel_bytes: usize, total_bytes: usize) -> HistoryLimits {
        HistoryLimits {
            messages,
            per_channel_bytes,
            total_bytes,
        }
    }

    fn ids(r: &Replay) -> Vec<(String, u64)> {
        r.messages
            .iter()
            .map(|(c, m)| (String::from_utf8_lossy(c).into_owned(), m.id))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<Bytes> {
        list.iter()
            .map(|n| Bytes::copy_from_slice(n.as_bytes()))
            .collect()
    }

    #[test]
    fn ids_increase_and_a_replay_has_no_gap_while_all_is_kept() {
        let mut h = History::new(limits(3, 1 << 20, 1 << 20));
        for ch in ["a", "b", "a", "a.x"] {
            h.record(ch.as_bytes(), b"t", None, b"m");
        }
        assert_eq!(h.last_id(), 4);
        let r = h.replay(&names(&["a"]), 0, 1 << 20);
        assert_eq!(ids(&r), [("a".into(), 1), ("a".into(), 3)]);
        assert_eq!(r.gap, None);
        let r = h.replay(&names(&["a"]), 1, 1 << 20);
        assert_eq!(ids(&r), [("a".into(), 3)]);
        // Several names and patterns: one id order.
        let r = h.replay(&names(&["b", "a.*"]), 1, 1 << 20);
        assert_eq!(ids(&r), [("b".into(), 2), ("a.x".into(), 4)]);
        assert_eq!(h.replay(&names(&["*"]), 0, 1 << 20).messages.len(), 4);
        // A channel two names take is replayed once.
        let r = h.replay(&names(&["a.x", "a.*", "*.x"]), 0, 1 << 20);
        assert_eq!(ids(&r), [("a.x".into(), 4)]);
        // Up to date.
        let r = h.replay(&names(&["a"]), 4, 1 << 20);
        assert!(r.messages.is_empty() && r.gap.is_none());
    }

    /// Five messages on `channel` in a history that keeps two: asked for
    /// as `asked`, 1..=3 are a gap, and nothing is missing after 3.
    fn two_of_five_kept(channel: &str, asked: &str) -> History {
        let mut h = History::new(limits(2, 1 << 20, 1 << 20));
        for _ in 0..5 {
            h.record(channel.as_bytes(), b"t", None, b"m");
        }
        // 1..=3 are gone.
        let r = h.replay(&names(&[asked]), 1, 1 << 20);
        assert_eq!(ids(&r), [(channel.into(), 4), (channel.into(), 5)]);
        assert_eq!(r.gap, Some(4));
        assert_eq!(h.replay(&names(&[asked]), 3, 1 << 20).gap, None);
        h
    }

    #[test]
    fn what_was_let_go_is_a_gap() {
        let h = two_of_five_kept("a", "a");
        // An id from the future (an earlier run).
        assert_eq!(h.replay(&names(&["a"]), 99, 1 << 20).gap, Some(6));
        // The newest that fit in the replay's bytes; the rest is a gap.
        let r = h.replay(&names(&["a"]), 3, ENTRY_OVERHEAD + 5);
        assert_eq!(ids(&r), [("a".into(), 5)]);
        assert_eq!(r.gap, Some(5));
    }

    #[test]
    fn ids_of_an_earlier_run_are_a_gap() {
        let epoch = 1_800_000_000_000_000;
        let mut h = History::starting_after(limits(10, 1 << 20, 1 << 20), epoch);
        assert_eq!(h.record(b"a", b"t", None, b"m"), epoch + 1);
        assert_eq!(h.record(b"a", b"t", None, b"m"), epoch + 2);
        // An id from before the restart: everything kept, after a gap
        // notice naming the first.
        for since in [1, 5, epoch - 1] {
            let r = h.replay(&names(&["a"]), since, 1 << 20);
            assert_eq!(ids(&r), [("a".into(), epoch + 1), ("a".into(), epoch + 2)]);
            assert_eq!(r.gap, Some(epoch + 1));
            // On a channel with nothing kept, and on a pattern, too.
            assert_eq!(
                h.replay(&names(&["b"]), since, 1 << 20).gap,
                Some(epoch + 3)
            );
            assert_eq!(
                h.replay(&names(&["*"]), since, 1 << 20).gap,
                Some(epoch + 1)
            );
        }
        // 0 (everything kept) and ids of this run: no gap.
        for since in [0, epoch, epoch + 1] {
            let r = h.replay(&names(&["a", "b.*"]), since, 1 << 20);
            assert_eq!(r.gap, None, "{since}");
        }
        assert_eq!(h.replay(&names(&["a"]), 0, 1 << 20).messages.len(), 2);
        // From the future.
        assert_eq!(
            h.replay(&names(&["a"]), epoch + 9, 1 << 20).gap,
            Some(epoch + 3)
        );
    }

    #[test]
    fn byte_bounds_per_channel_and_in_all() {
        let each = ENTRY_OVERHEAD + 1 + 10;
        let mut h = History::new(limits(100, 3 * each, 5 * each));
        for _ in 0..4 {
            h.record(b"a", b"t", None, b"0123456789");
        }
        assert_eq!(h.size(), (3, 3 * each));
        for _ in 0..3 {
            h.record(b"b", b"t", None, b"0123456789");
        }
        // In all at most 5: a's oldest went first.
        assert_eq!(h.size(), (5, 5 * each));
        let r = h.replay(&names(&["a"]), 0, 1 << 20);
        assert_eq!(ids(&r), [("a".into(), 3), ("a".into(), 4)]);
        assert_eq!(r.gap, Some(3));
        // A message larger than a channel may keep is not kept, and its
        // channel (now empty) is dropped, remembered as a gap.
        h.record(b"c", b"t", None, &[0u8; 1000]);
        assert_eq!(h.channel_count(), 2);
        assert_eq!(h.replay(&names(&["c"]), 7, 1 << 20).gap, Some(9));
        // The order list stays bounded whatever is published.
        for i in 0..10_000u32 {
            h.record(format!("x{}", i % 7).as_bytes(), b"t", None, b"0123456789");
        }
        assert!(h.order.len() <= 2 * h.kept + 64);
        assert!(h.size().1 <= 5 * each);
    }

    #[test]
    fn a_sender_counts_against_the_bounds() {
        let mut h = History::new(limits(100, 1 << 20, 1 << 20));
        h.record(b"a", b"text/plain", Some(b"alice"), b"0123456789");
        assert_eq!(h.size(), (1, ENTRY_OVERHEAD + 10 + 10 + 5));
        assert_eq!(h.limits(), limits(100, 1 << 20, 1 << 20));
        // What a restart keeps: the limits, with ids after the epoch.
        let h = History::starting_after(h.limits(), 77);
        assert_eq!(h.limits(), limits(100, 1 << 20, 1 << 20));
        assert_eq!(h.last_id(), 77);
    }

    /// A message the total bound lets go gives its bytes back to its
    /// channel too: the channel keeps as many as its own bound allows.
    #[test]
    fn the_total_bound_gives_a_channels_bytes_back() {
        let each = ENTRY_OVERHEAD + 1 + 10;
        let mut h = History::new(limits(100, 3 * each, 5 * each));
        for _ in 0..3 {
            h.record(b"a", b"t", None, b"0123456789");
        }
        for _ in 0..3 {
            h.record(b"b", b"t", None, b"0123456789");
        }
        // 6 > 5: a's oldest (1) went; a holds 2.
        assert_eq!(h.size(), (5, 5 * each));
        for _ in 0..4 {
            h.record(b"a", b"t", None, b"0123456789");
        }
        // a: 3 of its own (its bound: 10 let 7 go); in all 5, the oldest
        // going first (2, 3 and 4 went to keep 7, 8 and 9).
        let r = h.replay(&names(&["a"]), 0, 1 << 20);
        assert_eq!(
            ids(&r),
            [("a".into(), 8), ("a".into(), 9), ("a".into(), 10)]
        );
        let r = h.replay(&names(&["b"]), 0, 1 << 20);
        assert_eq!(ids(&r), [("b".into(), 5), ("b".into(), 6)]);
        assert_eq!(h.size(), (5, 5 * each));
    }

    /// The entries of messages a ring let go are swept from the order
    /// list once they make it longer than twice the kept ones plus 64,
    /// whatever mix of sizes lets them go (a large message lets go of
    /// several small ones at once), also while nothing is kept.
    #[test]
    fn stale_order_entries_are_swept() {
        let each = ENTRY_OVERHEAD + 1 + 1;
        let mut h = History::new(limits(100, 3 * each, 1 << 20));
        for i in 0..2000 {
            let body = if i % 5 == 3 {
                vec![0u8; each + 1]
            } else {
                vec![0u8; 1]
            };
            h.record(b"a", b"t", None, &body);
            assert!(
                h.order.len() <= 2 * h.kept + 64,
                "{i}: {} entries",
                h.order.len()
            );
        }
        let mut h = History::new(limits(1, 1 << 20, 1 << 20));
        for i in 0..500 {
            h.record(b"a", b"t", None, b"m");
            assert!(
                h.order.len() <= 2 * h.kept + 64,
                "{i}: {} entries",
                h.order.len()
            );
        }
        // Larger than a channel may keep: nothing is kept.
        let mut h = History::new(limits(10, 10, 1 << 20));
        for i in 0..500 {
            h.record(b"a", b"t", None, b"too large");
            assert!(h.order.len() <= 64, "{i}: {} entries", h.order.len());
        }
        assert_eq!(h.size(), (0, 0));
    }

    /// After a sweep of the order list the total bound still lets the
    /// oldest message of all go first.
    #[test]
    fn after_a_sweep_the_oldest_of_all_goes_first() {
        let each = ENTRY_OVERHEAD + 1 + 1;
        let mut h = History::new(limits(1, 1 << 20, 4 * each));
        for i in 0..300 {
            h.record([b"a", b"b", b"c"][i % 3], b"t", None, b"m");
        }
        h.record(b"d", b"t", None, b"m");
        h.record(b"e", b"t", None, b"m");
        // 5 > 4: a's (298) went, the others stay.
        assert_eq!(h.channel_count(), 4);
        let r = h.replay(&names(&["*"]), 0, 1 << 20);
        assert_eq!(
            ids(&r),
            [
                ("b".into(), 299),
                ("c".into(), 300),
                ("d".into(), 301),
                ("e".into(), 302)
            ]
        );
        assert_eq!(r.gap, Some(299));
    }

    /// A pattern's replay tells of a gap from a ring it matches that let
    /// messages go, and from a ring dropped since (which may have matched).
    #[test]
    fn a_patterns_replay_tells_of_gaps() {
        let h = two_of_five_kept("a.x", "a.*");
        // After an id it kept: what came after it only.
        let r = h.replay(&names(&["a.*"]), 4, 1 << 20);
        assert_eq!(ids(&r), [("a.x".into(), 5)]);
        assert_eq!(r.gap, None);

        let mut h = History::new(limits(2, 10, 1 << 20));
        // Too large to keep: its ring is dropped at once.
        h.record(b"x.1", b"t", None, b"too large");
        let r = h.replay(&names(&["y.*"]), 0, 1 << 20);
        assert!(r.messages.is_empty());
        assert_eq!(r.gap, Some(2));
        assert_eq!(h.replay(&names(&["*"]), 0, 1 << 20).gap, Some(2));
        assert_eq!(h.replay(&names(&["y.*"]), 1, 1 << 20).gap, None);
        // The same for an exact name with nothing kept.
        assert_eq!(h.replay(&names(&["x.1"]), 0, 1 << 20).gap, Some(2));
        assert_eq!(h.replay(&names(&["x.1"]), 1, 1 << 20).gap, None);
    }

    /// A replay's bytes count each message's size and its channel's
    /// name: exactly one message's fits.
    #[test]
    fn a_replay_holds_what_fits_to_the_byte() {
        let mut h = History::new(limits(10, 1 << 20, 1 << 20));
        for _ in 0..2 {
            h.record(b"a.x", b"t", None, b"m");
        }
        let one = ENTRY_OVERHEAD + 1 + 1 + 3;
        for exact in [false, true] {
            let name = if exact { "a.x" } else { "a.*" };
            let r = h.replay(&names(&[name]), 0, one);
            assert_eq!(ids(&r), [("a.x".into(), 2)], "{name}");
            assert_eq!(r.gap, Some(2));
            let r = h.replay(&names(&[name]), 0, one - 1);
            assert!(r.messages.is_empty(), "{name}");
            assert_eq!(r.gap, Some(3));
            let r = h.replay(&names(&[name]), 0, 2 * one);
            assert_eq!(r.messages.len(), 2, "{name}");
            assert_eq!(r.gap, None);
        }
    }
}
