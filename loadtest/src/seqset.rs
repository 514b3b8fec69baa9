//! Which sequence numbers a subscriber connection has seen, per publisher.
//!
//! Stored as sorted, disjoint runs `[start, end)`, so in-order delivery costs
//! O(1) and constant memory however many messages arrive; only gaps and
//! reordering add runs. Used to count unique deliveries and duplicates.

#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    runs: Vec<(u64, u64)>,
    unique: u64,
}

impl SeqSet {
    /// Records `seq`; returns `false` if it had been seen before.
    pub fn insert(&mut self, seq: u64) -> bool {
        // Fast path: the next number after the last run.
        if let Some(last) = self.runs.last_mut() {
            if last.1 == seq {
                last.1 = seq + 1;
                self.unique += 1;
                return true;
            }
            if seq >= last.0 && seq < last.1 {
                return false;
            }
        }
        // First run whose end is past seq.
        let i = self.runs.partition_point(|&(_, end)| end <= seq);
        if let Some(&(start, _)) = self.runs.get(i) {
            if seq >= start {
                return false;
            }
        }
        self.unique += 1;
        let joins_prev = i > 0 && self.runs.get(i - 1).is_some_and(|r| r.1 == seq);
        let joins_next = self.runs.get(i).is_some_and(|r| r.0 == seq + 1);
        match (joins_prev, joins_next) {
            (true, true) => {
                let next_end = self.runs[i].1;
                self.runs[i - 1].1 = next_end;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].1 = seq + 1,
            (false, true) => self.runs[i].0 = seq,
            (false, false) => self.runs.insert(i, (seq, seq + 1)),
        }
        true
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }

    #[cfg(test)]
    fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }
}

/// Sequence sets of one subscriber connection, one per publisher id.
#[derive(Debug, Default)]
pub struct PerPublisher {
    sets: Vec<(u64, SeqSet)>,
}

impl PerPublisher {
    /// Records a delivery; returns `false` for a duplicate.
    pub fn insert(&mut self, publisher: u64, seq: u64) -> bool {
        if let Some((_, set)) = self.sets.iter_mut().find(|(p, _)| *p == publisher) {
            return set.insert(seq);
        }
        let mut set = SeqSet::default();
        set.insert(seq);
        self.sets.push((publisher, set));
        true
    }

    pub fn unique(&self) -> u64 {
        self.sets.iter().map(|(_, s)| s.unique()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_is_one_run() {
        let mut s = SeqSet::default();
        for i in 0..1000 {
            assert!(s.insert(i));
        }
        assert_eq!(s.runs(), &[(0, 1000)]);
        assert_eq!(s.unique(), 1000);
        assert!(!s.insert(999));
        assert!(!s.insert(0));
        assert!(!s.insert(500));
    }

    #[test]
    fn gaps_and_fills() {
        let mut s = SeqSet::default();
        for i in [0, 1, 5, 6, 3, 9] {
            assert!(s.insert(i));
        }
        assert_eq!(s.runs(), &[(0, 2), (3, 4), (5, 7), (9, 10)]);
        assert!(s.insert(2));
        assert_eq!(s.runs(), &[(0, 4), (5, 7), (9, 10)]);
        assert!(s.insert(4));
        assert!(s.insert(8));
        assert!(s.insert(7));
        assert_eq!(s.runs(), &[(0, 10)]);
        assert_eq!(s.unique(), 10);
        for i in 0..10 {
            assert!(!s.insert(i));
        }
    }

    #[test]
    fn matches_a_plain_set() {
        // A small deterministic generator instead of a random crate.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut s = SeqSet::default();
        let mut plain = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x % 700;
            assert_eq!(s.insert(v), plain.insert(v), "v={v}");
        }
        assert_eq!(s.unique(), plain.len() as u64);
        for w in s.runs().windows(2) {
            assert!(w[0].1 < w[1].0, "runs must be disjoint and apart");
        }
    }

    #[test]
    fn per_publisher() {
        let mut p = PerPublisher::default();
        assert!(p.insert(1, 0));
        assert!(p.insert(2, 0));
        assert!(!p.insert(1, 0));
        assert!(p.insert(1, 1));
        assert_eq!(p.unique(), 3);
    }
}
