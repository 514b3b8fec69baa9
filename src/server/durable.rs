//! The shell's half of `--data-dir`: once per turn the broker's records go
//! to the store's writer thread as one batch; with `--fsync always` the
//! output of a connection whose call recorded something is held until that
//! batch is durable, and released when the writer says so (through the
//! loop's waker). Everything else keeps flowing: the loop never waits for
//! the disk.
//!
//! A failed write or fsync: the held connections of the batches it covers
//! are closed with their answers unsent (a client sees no answer rather
//! than one that the disk does not back), and for a moment the store
//! refuses new records, so sends and acks are answered `- store
//! unavailable` / `503`. Then a snapshot puts the disk back in step with
//! memory.

use std::time::Instant;

use super::{mark_dirty, Server};
use crate::broker::{ConnId, Millis};
use crate::door::CloseReason;
use crate::store::{Fsync, Store, MAX_PENDING};

pub(super) struct Durable {
    pub(super) store: Store,
    /// The epoch of this start, in seconds (kept in snapshots).
    epoch_s: u64,
    /// Connections whose output waits for a batch, and the batch.
    held: Vec<(ConnId, u64)>,
    /// Connections not read while the writer is far behind.
    unread: Vec<ConnId>,
    /// Input is held back for the writer (logged once, when it starts and
    /// when it ends).
    stalled: bool,
}

impl Durable {
    pub(super) fn new(store: Store, epoch_s: u64) -> Durable {
        Durable {
            store,
            epoch_s,
            held: Vec::new(),
            unread: Vec::new(),
            stalled: false,
        }
    }
}

impl Server {
    /// After a door call: with `--fsync always`, a connection whose call
    /// appended records holds its output until their batch is durable.
    pub(super) fn hold_if_recorded(&mut self, key: usize, before: u64) {
        let Some(d) = &mut self.durable else {
            return;
        };
        if d.store.mode() != Fsync::Always || d.store.journal.records() == before {
            return;
        }
        let batch = d.store.batch();
        if let Some(c) = self.conns.get_mut(key) {
            if c.hold < batch {
                // An entry for an earlier batch goes stale (it no longer
                // matches `c.hold`) and is dropped when it comes due.
                d.held.push((c.id, batch));
                if c.hold == 0 {
                    c.hold_from = batch;
                }
                c.hold = batch;
            }
        }
    }

    /// End of a turn's work: the records go to the writer; the segments
    /// are compacted when they have grown past a few times the live data.
    pub(super) fn store_turn(&mut self) {
        let Some(d) = &mut self.durable else {
            return;
        };
        d.store.update_refusal();
        d.store.submit();
        if d.store.wants_snapshot(self.broker.durable_bytes()) {
            let started = Instant::now();
            let mut data = Vec::new();
            self.broker
                .snapshot(d.store.journal.epoch_ms(), d.epoch_s, &mut data);
            log::info!(
                "store: compacting: a snapshot of {} bytes (built in {} ms)",
                data.len(),
                started.elapsed().as_millis()
            );
            d.store.snapshot(data);
        }
    }

    /// True (and the connection noted) when input must not be read now
    /// because the writer is far behind: from the moment it is more than
    /// [`MAX_PENDING`] bytes behind until it is back to half of that; the
    /// connection is read again then ([`Server::on_store_wake`]).
    pub(super) fn store_is_behind(&mut self, key: usize) -> bool {
        let Some(d) = &mut self.durable else {
            return false;
        };
        if !d.stalled {
            if !d.store.behind() {
                return false;
            }
            d.stalled = true;
            log::warn!(
                "store: the writer is more than {} MiB behind (the disk is slower than the input): \
                 input waits until it is back below {} MiB",
                MAX_PENDING >> 20,
                MAX_PENDING >> 21
            );
        }
        if let Some(c) = self.conns.get(key) {
            d.unread.push(c.id);
        }
        true
    }

    /// When the loop must wake for the store without an event: the end of
    /// a refusal after a failed write.
    pub(super) fn store_deadline(&self, now: Millis) -> Option<Millis> {
        let until = self.durable.as_ref()?.store.refusal_ends()?;
        let left = until.saturating_duration_since(Instant::now());
        Some(now + u64::try_from(left.as_millis()).unwrap_or(0) + 1)
    }

    /// The waker rang: the writer made batches durable, or failed.
    pub(super) fn on_store_wake(&mut self) {
        let Some(d) = &mut self.durable else {
            return;
        };
        let mut failed_upto = 0;
        for report in d.store.take_reports() {
            if let Err(n) = report {
                failed_upto = failed_upto.max(n);
            }
        }
        let synced = d.store.synced();
        let held = std::mem::take(&mut d.held);
        let mut keep = Vec::with_capacity(held.len());
        let mut close = Vec::new();
        for (id, batch) in held {
            let Some(c) = self
                .conns
                .get_mut(id.key as usize)
                .filter(|c| c.id == id && c.hold == batch)
            else {
                continue;
            };
            // Its held output may answer anything recorded since
            // `hold_from`: one failed batch among them fails it all.
            if c.hold_from <= failed_upto {
                c.hold = 0;
                c.hold_from = 0;
                close.push(id.key as usize);
            } else if batch <= synced {
                c.hold = 0;
                c.hold_from = 0;
                mark_dirty(&mut self.dirty, c, id.key as usize);
            } else {
                keep.push((id, batch));
            }
        }
        d.held = keep;
        d.store.update_refusal();
        if d.stalled && d.store.caught_up() {
            d.stalled = false;
            log::info!("store: the writer caught up: reading input again");
            for id in std::mem::take(&mut d.unread) {
                if let Some(c) = self
                    .conns
                    .get_mut(id.key as usize)
                    .filter(|c| c.id == id && c.readable && !c.ready_listed)
                {
                    c.ready_listed = true;
                    self.still_ready.push(id.key as usize);
                }
            }
        }
        for key in close {
            self.mark_close(key, CloseReason::StoreFailed);
        }
    }

    /// At shutdown: writes and syncs what is left, then lets every held
    /// answer go.
    pub(super) fn close_store(&mut self) {
        let Some(d) = &mut self.durable else {
            return;
        };
        d.store.close();
        for (id, _) in std::mem::take(&mut d.held) {
            if let Some(c) = self.conns.get_mut(id.key as usize).filter(|c| c.id == id) {
                c.hold = 0;
                c.hold_from = 0;
            }
        }
    }
}
