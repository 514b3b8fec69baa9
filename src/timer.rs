//! Deadlines: a min-heap of `(when, key)` with lazy invalidation.
//!
//! One implementation for every deadline of the server: the broker keeps one
//! for queued messages and waits, the IO shell one for its connections
//! (lingering closes, request timeouts, doors' own wake-ups) and the accept
//! back-off. Entries are never removed when what they time out goes away:
//! the owner checks, when one comes due, whether it still applies, and may
//! drop the stale ones in bulk with [`Timers::retain`]. Free of IO and of the
//! clock: time comes in as an argument.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Milliseconds on the server's monotonic clock.
pub type Millis = u64;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Entry<K> {
    at: Millis,
    /// Keeps entries of one deadline in the order they were added.
    seq: u64,
    key: K,
}

/// A set of deadlines, each carrying a key that says what it is for.
pub struct Timers<K> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    seq: u64,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<K: Ord> Timers<K> {
    pub fn add(&mut self, at: Millis, key: K) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            key,
        }));
    }

    /// The earliest deadline, live or stale.
    pub fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Takes the earliest entry due at `now`, with its deadline.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, K)> {
        if self.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            self.heap.pop().map(|Reverse(e)| (e.at, e.key))
        } else {
            None
        }
    }

    /// Entries held, live and stale.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps only the entries for which `live` says yes.
    pub fn retain(&mut self, mut live: impl FnMut(Millis, &K) -> bool) {
        self.heap.retain(|Reverse(e)| live(e.at, &e.key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_deadlines_keep_the_order_of_adding_whatever_the_keys() {
        let mut t = Timers::default();
        assert!(t.is_empty());
        t.add(10, "z");
        t.add(10, "a");
        assert!(!t.is_empty());
        assert_eq!(t.pop_due(10), Some((10, "z")));
        assert_eq!(t.pop_due(10), Some((10, "a")));
        assert!(t.is_empty());
    }

    #[test]
    fn due_in_order_of_deadline_then_of_adding() {
        let mut t = Timers::default();
        t.add(30, "c");
        t.add(10, "a");
        t.add(10, "b");
        assert_eq!(t.next(), Some(10));
        assert_eq!(t.pop_due(9), None);
        assert_eq!(t.pop_due(10), Some((10, "a")));
        assert_eq!(t.pop_due(10), Some((10, "b")));
        assert_eq!(t.pop_due(29), None);
        assert_eq!(t.len(), 1);
        t.retain(|_, k| *k != "c");
        assert!(t.is_empty());
        assert_eq!(t.next(), None);
    }
}
