//! flood-sub over several processes (`--procs K`): the parent re-runs its
//! own executable K times with a hidden `--worker-index I`; each worker runs
//! the subscriber loop for its share of the connections and writes JSON
//! lines to its stdout (a pipe): `ready`, periodic `tick`s, and `done` with
//! its totals. The parent adds them up and prints progress and the summary
//! as a single process would.
//!
//! This file owns the pipe format and the child processes; it does no
//! socket work.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::hist::Histogram;
use crate::net;
use crate::report::SubTotals;
use crate::subscriber::Report;

/// The connections worker `i` of `k` opens, out of `n`.
pub fn share(n: usize, k: usize, i: usize) -> std::ops::Range<usize> {
    let k = k.max(1);
    (n * i / k)..(n * (i + 1) / k)
}

/// In a worker: turns loop reports into lines on stdout.
pub fn worker_report(r: Report<'_>) {
    let line = match r {
        Report::Ready {
            subscribed,
            failed,
            secs,
        } => json!({"ready": {"subscribed": subscribed, "failed": failed, "secs": secs}}),
        // The parent announces from the ticks' counts (a worker's ticks
        // come at least once a second).
        Report::Subscribed { .. } => return,
        Report::Tick {
            subscribed,
            received,
            errors,
            interval,
            ..
        } => json!({"tick": {
            "subscribed": subscribed,
            "received": received,
            "errors": errors,
            "hist": interval.to_sparse(),
        }}),
    };
    emit(&line);
}

/// In a worker: the final line.
pub fn worker_done(t: &SubTotals) {
    emit(&json!({ "done": t.to_wire() }));
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    // The parent reads line by line; a broken pipe means it is gone.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// What the parent knows of one worker.
#[derive(Default)]
struct WorkerState {
    ready: Option<(u64, u64, f64)>,
    subscribed: u64,
    received: u64,
    errors: u64,
    interval: Histogram,
    done: Option<SubTotals>,
    eof: bool,
}

/// Parent side: what to print while the workers run.
pub struct ParentReports<'a> {
    pub on_ready: &'a mut dyn FnMut(u64, u64, f64),
    /// elapsed, subscribed, received, errors, latencies since the last call.
    pub on_tick: &'a mut dyn FnMut(f64, u64, u64, u64, &Histogram),
    /// Once a second, whatever the interval: the workers' subscribed
    /// connections, added.
    pub on_subscribed: &'a mut dyn FnMut(u64),
}

/// Starts `k` workers running this executable with `args` plus
/// `--worker-index I`, waits for all of them, and returns the merged totals.
/// `connections` and `count` let a worker that died be counted as lost.
pub fn run_parent(
    args: &[std::ffi::OsString],
    k: usize,
    connections: usize,
    count: Option<u64>,
    interval: Duration,
    reports: ParentReports<'_>,
) -> Result<SubTotals, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let (tx, rx) = mpsc::channel::<(usize, Option<Value>)>();
    let mut children: Vec<Child> = Vec::new();
    for i in 0..k {
        let child = Command::new(&exe)
            .args(args)
            .arg("--worker-index")
            .arg(i.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                for c in &children {
                    net::terminate(c.id());
                }
                return Err(format!("cannot start worker {i}: {e}"));
            }
        };
        let Some(stdout) = child.stdout.take() else {
            return Err(format!("worker {i}: no pipe"));
        };
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send((i, Some(v))).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((i, None));
        });
        children.push(child);
    }
    drop(tx);

    let mut state: Vec<WorkerState> = (0..k).map(|_| WorkerState::default()).collect();
    let start = Instant::now();
    let mut next_tick = start + interval;
    let mut next_subscribed = start + Duration::from_secs(1);
    let mut ready_reported = false;
    let mut stop_sent = false;
    while state.iter().any(|w| !w.eof) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((i, Some(v))) => {
                if let Some(w) = state.get_mut(i) {
                    absorb(w, &v);
                }
            }
            Ok((i, None)) => {
                if let Some(w) = state.get_mut(i) {
                    w.eof = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if net::stop_requested() && !stop_sent {
            stop_sent = true;
            for c in &children {
                net::terminate(c.id());
            }
        }
        if !ready_reported && state.iter().all(|w| w.ready.is_some() || w.eof) {
            ready_reported = true;
            let (mut sub, mut failed, mut secs) = (0, 0, 0.0f64);
            for w in &state {
                if let Some((s, f, t)) = w.ready {
                    sub += s;
                    failed += f;
                    secs = secs.max(t);
                }
            }
            (reports.on_ready)(sub, failed, secs);
        }
        let now = Instant::now();
        if now >= next_subscribed {
            (reports.on_subscribed)(state.iter().map(|w| w.subscribed).sum());
            while next_subscribed <= now {
                next_subscribed += Duration::from_secs(1);
            }
        }
        if now >= next_tick {
            let mut merged = Histogram::new();
            let (mut sub, mut rec, mut err) = (0, 0, 0);
            for w in state.iter_mut() {
                merged.merge(&w.interval);
                w.interval.clear();
                sub += w.subscribed;
                rec += w.received;
                err += w.errors;
            }
            (reports.on_tick)(start.elapsed().as_secs_f64(), sub, rec, err, &merged);
            while next_tick <= now {
                next_tick += interval;
            }
        }
    }

    let mut total = SubTotals::default();
    for (i, (w, mut child)) in state.into_iter().zip(children).enumerate() {
        let status = child.wait();
        match w.done {
            Some(t) => total.merge(&t),
            None => {
                let n = share(connections, k, i).len() as u64;
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                };
                total.merge(&SubTotals {
                    connections: n,
                    lost: count.map_or(0, |c| c * n),
                    expected: count.map(|c| c * n),
                    errors: 1,
                    first_error: Some(format!("worker {i} ended without a result ({how})")),
                    ..Default::default()
                });
            }
        }
    }
    Ok(total)
}

fn absorb(w: &mut WorkerState, v: &Value) {
    let n = |o: &Value, k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
    if let Some(r) = v.get("ready") {
        let secs = r.get("secs").and_then(Value::as_f64).unwrap_or(0.0);
        w.ready = Some((n(r, "subscribed"), n(r, "failed"), secs));
        w.subscribed = n(r, "subscribed");
    } else if let Some(t) = v.get("tick") {
        w.subscribed = n(t, "subscribed");
        w.received = n(t, "received");
        w.errors = n(t, "errors");
        if let Some(h) = t.get("hist") {
            w.interval.merge(&Histogram::from_sparse(h));
        }
    } else if let Some(d) = v.get("done") {
        let t = SubTotals::from_wire(d);
        w.received = t.received;
        w.done = Some(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        for n in [0usize, 1, 7, 100, 20001] {
            for k in 1..6 {
                let mut next = 0;
                for i in 0..k {
                    let r = share(n, k, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn absorbs_worker_lines() {
        let mut w = WorkerState::default();
        absorb(
            &mut w,
            &json!({"ready": {"subscribed": 5, "failed": 1, "secs": 0.5}}),
        );
        assert_eq!(w.ready, Some((5, 1, 0.5)));
        let mut h = Histogram::new();
        h.record(10);
        absorb(
            &mut w,
            &json!({"tick": {"subscribed": 5, "received": 9, "errors": 0, "hist": h.to_sparse()}}),
        );
        assert_eq!(w.received, 9);
        assert_eq!(w.interval.count(), 1);
        let t = SubTotals {
            received: 11,
            ..Default::default()
        };
        absorb(&mut w, &json!({"done": t.to_wire()}));
        assert_eq!(w.done.map(|d| d.received), Some(11));
    }
}
