//! Latency histogram: log-linear buckets over nanoseconds.
//!
//! Values below 64 ns have one bucket each; above, every power of two is split
//! into 64 buckets, so a reported percentile is within about 1.6 % of the true
//! value. The exact maximum is kept apart. Histograms merge by adding counts,
//! which is how worker processes' results are combined; `to_sparse` /
//! `from_sparse` carry them over the pipe. No IO here.

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// 64 exact buckets, then 64 per power of two from 2^6 to 2^63.
const BUCKETS: usize = (SUB as usize) + (64 - SUB_BITS as usize) * (SUB as usize);

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    (SUB as usize) + (shift as usize) * (SUB as usize) + sub as usize
}

/// A representative value (the middle) of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let sub = (i - SUB) % SUB;
    let low = (SUB + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0 ..= 1.0), or 0 when empty. The maximum
    /// is exact; other quantiles are bucket middles, never above the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn clear(&mut self) {
        if self.total > 0 {
            self.counts.iter_mut().for_each(|c| *c = 0);
        }
        self.total = 0;
        self.max = 0;
    }

    /// Non-empty buckets as `[index, count]` pairs, plus the maximum.
    pub fn to_sparse(&self) -> serde_json::Value {
        let buckets: Vec<serde_json::Value> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| serde_json::json!([i, c]))
            .collect();
        serde_json::json!({ "max": self.max, "buckets": buckets })
    }

    /// Inverse of `to_sparse`; entries that do not fit are ignored.
    pub fn from_sparse(v: &serde_json::Value) -> Histogram {
        let mut h = Histogram::new();
        if let Some(list) = v.get("buckets").and_then(|b| b.as_array()) {
            for pair in list {
                let i = pair.get(0).and_then(|x| x.as_u64()).unwrap_or(u64::MAX);
                let c = pair.get(1).and_then(|x| x.as_u64()).unwrap_or(0);
                if let Some(slot) = usize::try_from(i).ok().and_then(|i| h.counts.get_mut(i)) {
                    *slot += c;
                    h.total += c;
                }
            }
        }
        h.max = v.get("max").and_then(|m| m.as_u64()).unwrap_or(0);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_monotonic_and_in_range() {
        let mut last = 0;
        let mut v = 0u64;
        while v < u64::MAX / 3 {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "v={v} i={i}");
            last = i;
            v = v * 3 / 2 + 1;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn bucket_value_is_close() {
        for v in [0u64, 1, 63, 64, 65, 1000, 123_456, 98_765_432, 1 << 40] {
            let r = value(index(v));
            let err = (r as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "v={v} r={r}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }

    #[test]
    fn sparse_round_trip_and_merge() {
        let mut a = Histogram::new();
        a.record(5);
        a.record(70_000);
        let b = Histogram::from_sparse(&a.to_sparse());
        assert_eq!(b.count(), 2);
        assert_eq!(b.max(), 70_000);
        let mut c = Histogram::new();
        c.record(1_000_000);
        c.merge(&b);
        assert_eq!(c.count(), 3);
        assert_eq!(c.max(), 1_000_000);
        c.clear();
        assert_eq!(c.count(), 0);
    }
}
