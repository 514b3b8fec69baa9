//! What a run measured, how results of worker processes add up, and how
//! they are printed: progress lines (stderr), the human summary (stdout) and
//! the one-line JSON summary (`--json`).

use serde_json::{json, Value};

use crate::hist::Histogram;

/// The outcome of a flood-sub run (one process, or several merged).
#[derive(Debug, Default, Clone)]
pub struct SubTotals {
    pub connections: u64,
    pub subscribed: u64,
    /// Deliveries that carried a readable stamp (unique + duplicated).
    pub received: u64,
    pub unique: u64,
    pub duplicated: u64,
    /// Deliveries that could not be read (no stamp, wrong type).
    pub bad: u64,
    /// `--count` per connection minus unique deliveries, summed.
    pub lost: u64,
    /// `--count` × connections, when `--count` was given.
    pub expected: Option<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub first_bad: Option<String>,
    /// CLOCK_MONOTONIC of the first and last delivery.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    pub hist: Histogram,
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Microseconds with one decimal, for reports.
pub fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// A latency for people: µs below 10 ms, ms above.
pub fn human_latency(ns: u64) -> String {
    if ns < 10_000_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else {
        format!("{:.2} ms", ns as f64 / 1e6)
    }
}

impl SubTotals {
    pub fn merge(&mut self, o: &SubTotals) {
        self.connections += o.connections;
        self.subscribed += o.subscribed;
        self.received += o.received;
        self.unique += o.unique;
        self.duplicated += o.duplicated;
        self.bad += o.bad;
        self.lost += o.lost;
        self.expected = match (self.expected, o.expected) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error.clone();
        }
        if self.first_bad.is_none() {
            self.first_bad = o.first_bad.clone();
        }
        self.first_ns = min_opt(self.first_ns, o.first_ns);
        self.last_ns = max_opt(self.last_ns, o.last_ns);
        self.hist.merge(&o.hist);
    }

    /// Seconds from the first to the last delivery.
    pub fn elapsed_s(&self) -> f64 {
        match (self.first_ns, self.last_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => 0.0,
        }
    }

    /// Deliveries per second between the first and the last delivery.
    pub fn msgs_per_s(&self) -> f64 {
        rate(self.received, self.elapsed_s())
    }

    /// Why the run failed, or `None` when it did not.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.subscribed == 0 {
            why.push("no connection subscribed".to_string());
        }
        if self.errors > 0 {
            why.push(format!(
                "{} connection error(s), first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.bad > 0 {
            why.push(format!(
                "{} delivery(ies) not readable, first: {}",
                self.bad,
                self.first_bad.as_deref().unwrap_or("?")
            ));
        }
        if let Some(e) = self.expected {
            if self.lost > 0 {
                why.push(format!("lost {} of {} messages", self.lost, e));
            }
        }
        if self.duplicated > 0 {
            why.push(format!("{} duplicated deliveries", self.duplicated));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Everything, for the pipe from a worker to its parent.
    pub fn to_wire(&self) -> Value {
        json!({
            "connections": self.connections,
            "subscribed": self.subscribed,
            "received": self.received,
            "unique": self.unique,
            "duplicated": self.duplicated,
            "bad": self.bad,
            "lost": self.lost,
            "expected": self.expected,
            "errors": self.errors,
            "first_error": self.first_error,
            "first_bad": self.first_bad,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "hist": self.hist.to_sparse(),
        })
    }

    pub fn from_wire(v: &Value) -> SubTotals {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        SubTotals {
            connections: n("connections"),
            subscribed: n("subscribed"),
            received: n("received"),
            unique: n("unique"),
            duplicated: n("duplicated"),
            bad: n("bad"),
            lost: n("lost"),
            expected: v.get("expected").and_then(Value::as_u64),
            errors: n("errors"),
            first_error: s("first_error"),
            first_bad: s("first_bad"),
            first_ns: v.get("first_ns").and_then(Value::as_u64),
            last_ns: v.get("last_ns").and_then(Value::as_u64),
            hist: v
                .get("hist")
                .map(Histogram::from_sparse)
                .unwrap_or_default(),
        }
    }
}

/// Facts about a run that are not measurements.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub tool: &'static str,
    pub proto: &'static str,
    pub address: String,
    pub channel: String,
    pub procs: usize,
    pub sources: usize,
}

/// `--sources N` in words, as the JSON's `sources` field means it (0: no
/// source address bound, the kernel chose).
fn sources_text(sources: usize) -> String {
    match sources {
        0 => "source address chosen by the kernel (--sources 0)".into(),
        n => format!("{n} source address(es)"),
    }
}

/// The `--json` summary line of flood-sub.
pub fn sub_json(info: &RunInfo, t: &SubTotals) -> Value {
    let failure = t.failure();
    json!({
        "tool": info.tool,
        "proto": info.proto,
        "address": info.address,
        "channel": info.channel,
        "procs": info.procs,
        "sources": info.sources,
        "connections": t.connections,
        "subscribed": t.subscribed,
        "received": t.received,
        "unique": t.unique,
        "expected": t.expected,
        "lost": t.lost,
        "duplicated": t.duplicated,
        "bad": t.bad,
        "msgs_per_s": (t.msgs_per_s() * 10.0).round() / 10.0,
        "elapsed_s": (t.elapsed_s() * 1000.0).round() / 1000.0,
        // CLOCK_MONOTONIC, the same for every process of the machine: the
        // summaries of several flood-subs give the span of them all.
        "first_ns": t.first_ns,
        "last_ns": t.last_ns,
        "p50_us": us(t.hist.quantile(0.5)),
        "p99_us": us(t.hist.quantile(0.99)),
        "p999_us": us(t.hist.quantile(0.999)),
        "max_us": us(t.hist.max()),
        "errors": t.errors,
        "first_error": t.first_error,
        "ok": failure.is_none(),
        "failure": failure,
    })
}

/// The human summary of flood-sub.
pub fn sub_human(info: &RunInfo, t: &SubTotals) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "flood-sub: {} {} channel {}: {} connection(s), {} subscribed, {} process(es), {}\n",
        info.proto,
        info.address,
        info.channel,
        t.connections,
        t.subscribed,
        info.procs,
        sources_text(info.sources)
    ));
    s.push_str(&format!(
        "  received   {} (unique {}, duplicated {}, unreadable {})\n",
        t.received, t.unique, t.duplicated, t.bad
    ));
    match t.expected {
        Some(e) => s.push_str(&format!("  expected   {e}, lost {}\n", t.lost)),
        None => s.push_str("  expected   - (no --count)\n"),
    }
    s.push_str(&format!(
        "  rate       {:.1} msgs/s over {:.3} s (first to last delivery)\n",
        t.msgs_per_s(),
        t.elapsed_s()
    ));
    s.push_str(&format!(
        "  latency    p50 {}  p99 {}  p99.9 {}  max {}\n",
        human_latency(t.hist.quantile(0.5)),
        human_latency(t.hist.quantile(0.99)),
        human_latency(t.hist.quantile(0.999)),
        human_latency(t.hist.max())
    ));
    s.push_str(&format!("  errors     {}", t.errors));
    if let Some(e) = &t.first_error {
        s.push_str(&format!(" (first: {e})"));
    }
    s.push('\n');
    match t.failure() {
        None => s.push_str("result: OK\n"),
        Some(f) => s.push_str(&format!("result: FAILED: {f}\n")),
    }
    s
}

/// One progress line of flood-sub (stderr).
pub fn sub_progress(
    elapsed_s: f64,
    subscribed: u64,
    total: u64,
    received: u64,
    rate: f64,
    interval: &Histogram,
    errors: u64,
) -> String {
    let mut s = format!(
        "flood-sub: {elapsed_s:7.1} s  subscribed {subscribed}/{total}  delivered {rate:.0} msgs/s  total {received}"
    );
    if interval.count() > 0 {
        s.push_str(&format!(
            "  p50 {}  p99 {}",
            human_latency(interval.quantile(0.5)),
            human_latency(interval.quantile(0.99))
        ));
    }
    if errors > 0 {
        s.push_str(&format!("  errors {errors}"));
    }
    s
}

/// The outcome of a flood-pub run.
#[derive(Debug, Default, Clone)]
pub struct PubTotals {
    pub connections: u64,
    pub connected: u64,
    pub sent: u64,
    /// Publishes the server has confirmed (2xx answers; on the line
    /// protocol, all publishes of a connection once its end probe returned).
    pub confirmed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first publish to the last confirmation.
    pub elapsed_s: f64,
}

impl PubTotals {
    pub fn msgs_per_s(&self) -> f64 {
        rate(self.sent, self.elapsed_s)
    }

    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.connected == 0 {
            why.push("no connection".to_string());
        }
        if self.errors > 0 {
            why.push(format!(
                "{} error(s), first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.confirmed < self.sent {
            why.push(format!(
                "{} of {} publishes not confirmed by the server",
                self.sent - self.confirmed,
                self.sent
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

pub fn pub_json(info: &RunInfo, t: &PubTotals) -> Value {
    let failure = t.failure();
    json!({
        "tool": info.tool,
        "proto": info.proto,
        "address": info.address,
        "channel": info.channel,
        "sources": info.sources,
        "connections": t.connections,
        "connected": t.connected,
        "sent": t.sent,
        "confirmed": t.confirmed,
        "msgs_per_s": (t.msgs_per_s() * 10.0).round() / 10.0,
        "elapsed_s": (t.elapsed_s * 1000.0).round() / 1000.0,
        "errors": t.errors,
        "first_error": t.first_error,
        "ok": failure.is_none(),
        "failure": failure,
    })
}

pub fn pub_human(info: &RunInfo, t: &PubTotals) -> String {
    let mut s = format!(
        "flood-pub: {} {} channel {}: {} connection(s), {} connected\n",
        info.proto, info.address, info.channel, t.connections, t.connected
    );
    s.push_str(&format!(
        "  sent       {} (confirmed {})\n",
        t.sent, t.confirmed
    ));
    s.push_str(&format!(
        "  rate       {:.1} msgs/s over {:.3} s (first publish to last confirmation)\n",
        t.msgs_per_s(),
        t.elapsed_s
    ));
    s.push_str(&format!("  errors     {}", t.errors));
    if let Some(e) = &t.first_error {
        s.push_str(&format!(" (first: {e})"));
    }
    s.push('\n');
    match t.failure() {
        None => s.push_str("result: OK\n"),
        Some(f) => s.push_str(&format!("result: FAILED: {f}\n")),
    }
    s
}

/// `count` per second over `secs`, 0 for an empty interval.
fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_wire() {
        let mut a = SubTotals {
            connections: 2,
            subscribed: 2,
            received: 10,
            unique: 10,
            expected: Some(10),
            first_ns: Some(100),
            last_ns: Some(1_000_000_100),
            ..Default::default()
        };
        a.hist.record(1000);
        let mut b = SubTotals::from_wire(&a.to_wire());
        b.first_error = Some("boom".into());
        b.errors = 1;
        b.first_ns = Some(50);
        a.merge(&b);
        assert_eq!(a.connections, 4);
        assert_eq!(a.received, 20);
        assert_eq!(a.expected, Some(20));
        assert_eq!(a.first_ns, Some(50));
        assert_eq!(a.hist.count(), 2);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        assert!(a.failure().unwrap().contains("boom"));
    }

    #[test]
    fn failure_reasons() {
        let ok = SubTotals {
            connections: 1,
            subscribed: 1,
            received: 5,
            unique: 5,
            expected: Some(5),
            ..Default::default()
        };
        assert_eq!(ok.failure(), None);
        let lossy = SubTotals {
            lost: 2,
            ..ok.clone()
        };
        assert_eq!(lossy.failure().as_deref(), Some("lost 2 of 5 messages"));
        let info = RunInfo {
            tool: "flood-sub",
            proto: "line",
            address: "127.0.0.1:9813".into(),
            channel: "flood".into(),
            procs: 1,
            sources: 0,
        };
        let j = sub_json(&info, &lossy);
        assert_eq!(j["lost"], 2);
        assert_eq!(j["ok"], false);
        for k in [
            "connections",
            "received",
            "expected",
            "lost",
            "duplicated",
            "msgs_per_s",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert!(sub_human(&info, &ok).contains("result: OK"));
        // The text and the JSON say the same about source addresses.
        assert_eq!(j["sources"], 0);
        assert!(sub_human(&info, &ok).contains("source address chosen by the kernel (--sources 0)"));
        let spread = RunInfo { sources: 3, ..info };
        assert_eq!(sub_json(&spread, &ok)["sources"], 3);
        assert!(sub_human(&spread, &ok).contains(", 3 source address(es)"));
    }
}
