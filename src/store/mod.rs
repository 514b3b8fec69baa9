//! The store: queued messages kept on disk with `--data-dir`.
//!
//! Two halves:
//!
//! - the [`Journal`], free of IO, which the broker appends records to as
//!   its point-to-point state changes (a line message queued, taken or
//!   expired; a switch queue created or destroyed; a switch message stored,
//!   handed over or acked; the id counters). It is a byte buffer shared by
//!   the line queues and the switch within the loop's thread;
//! - the [`Store`], owned by the IO shell: once per loop turn it hands the
//!   journal's bytes (one batch) to a helper thread ([`writer`]), which
//!   writes them to the open segment and, with `--fsync always`, fsyncs
//!   once for everything waiting and reports back through the loop's waker.
//!   The loop never waits for the disk.
//!
//! At start, [`Store::open`] replays the segments ([`log`]) into a
//! [`log::State`] that the broker is rebuilt from. When the segments grow
//! past a small multiple of the live data, the shell asks the broker for a
//! snapshot (every live message as records) and hands it to the thread,
//! which writes it as a new segment and deletes the older ones.
//!
//! Owns: the journal's buffer and its refusal, the data directory's lock,
//! batch numbers, what the writer reported, when to compact. Must not
//! touch: sockets, connections (the shell holds and releases answers), the
//! broker's state (it is handed records and snapshots).

pub mod log;
pub mod record;
pub mod writer;

use std::cell::RefCell;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use mio::Waker;

use record::{kind, Record, Writer};

/// When written records are made durable (Redis' vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Before the answers that depend on them leave (group commit: one
    /// fsync for everything written meanwhile).
    Always,
    /// At most a second after they are written.
    #[value(name = "everysec")]
    EverySec,
    /// When the operating system writes them back.
    No,
}

/// Bytes handed to the writer and not yet written, at most: past it the
/// loop stops reading input until the writer is back below half of it (the
/// disk cannot keep up; the loop itself still never waits for it).
pub const MAX_PENDING: u64 = 256 << 20;

/// The segments are compacted once they hold more than this
/// (`--compact-min-bytes`) …
pub const COMPACT_MIN: u64 = 64 << 20;
/// … and more than this many times the live data.
pub const COMPACT_FACTOR: u64 = 4;
/// The least `--segment-bytes` and `--compact-min-bytes` may be: below it
/// a busy server would close segments and compact many times a second.
pub const MIN_SIZE: u64 = 1 << 20;
/// The most `--segment-bytes` may be: replay reads a segment whole.
pub const MAX_SEGMENT: u64 = 1 << 30;

/// When segments are closed and when they are compacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// A segment is closed and the next begun once it holds this many
    /// bytes (`--segment-bytes`).
    pub segment: u64,
    /// The segments are compacted once they hold more than this many bytes
    /// and more than [`COMPACT_FACTOR`] times the live data
    /// (`--compact-min-bytes`).
    pub compact_min: u64,
}

impl Default for Sizes {
    fn default() -> Sizes {
        Sizes {
            segment: writer::SEGMENT_BYTES,
            compact_min: COMPACT_MIN,
        }
    }
}

/// How long the store refuses new records after a failed write.
const FAILED_PAUSE: Duration = Duration::from_secs(1);

/// Why the store refuses to record (and the send is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A write or an fsync failed a moment ago.
    Failed,
}

struct Inner {
    buf: Vec<u8>,
    records: u64,
    epoch_ms: u64,
    refusal: Option<Refusal>,
}

/// The broker's side of the store: records appended to a buffer that the
/// shell takes once per turn. Cloned into the line queues and the switch;
/// all clones share one buffer.
#[derive(Clone)]
pub struct Journal(Rc<RefCell<Inner>>);

impl Journal {
    /// `epoch_ms`: the wall clock at the server's start; the broker's
    /// `now` plus it is a wall time, which is what records keep.
    pub fn new(epoch_ms: u64) -> Journal {
        Journal(Rc::new(RefCell::new(Inner {
            buf: Vec::with_capacity(64 * 1024),
            records: 0,
            epoch_ms,
            refusal: None,
        })))
    }

    pub fn epoch_ms(&self) -> u64 {
        self.0.borrow().epoch_ms
    }

    /// Set when the store cannot take records now.
    pub fn refusal(&self) -> Option<Refusal> {
        self.0.borrow().refusal
    }

    pub fn set_refusal(&self, refusal: Option<Refusal>) {
        self.0.borrow_mut().refusal = refusal;
    }

    /// Records appended since start.
    pub fn records(&self) -> u64 {
        self.0.borrow().records
    }

    /// Bytes appended and not yet taken.
    pub fn pending(&self) -> usize {
        self.0.borrow().buf.len()
    }

    /// A line message joined queue `to`.
    pub fn enqueue(
        &self,
        seq: u64,
        deadline: u64,
        timeout_s: u64,
        to: &[u8],
        reply: Option<&[u8]>,
        body: &[u8],
    ) {
        let mut inner = self.0.borrow_mut();
        inner.records += 1;
        Writer::begin(&mut inner.buf, kind::ENQUEUE)
            .u64(seq)
            .u64(deadline)
            .u64(timeout_s)
            .bytes(to)
            .opt(reply)
            .bytes(body)
            .end();
    }

    /// Line message `seq` left its queue: taken (`expired` false) or expired.
    pub fn dequeue(&self, seq: u64, expired: bool) {
        let mut inner = self.0.borrow_mut();
        inner.records += 1;
        let k = if expired { kind::EXPIRE } else { kind::TAKE };
        Writer::begin(&mut inner.buf, k).u64(seq).end();
    }

    /// Any other record.
    pub fn record(&self, r: &Record) {
        let mut inner = self.0.borrow_mut();
        inner.records += 1;
        record::encode(&mut inner.buf, r);
    }

    /// Takes the records appended so far.
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut inner = self.0.borrow_mut();
        let cap = inner.buf.capacity().clamp(4096, 1 << 20);
        std::mem::replace(&mut inner.buf, Vec::with_capacity(cap))
    }
}

/// The shell's side of the store.
pub struct Store {
    pub journal: Journal,
    mode: Fsync,
    sizes: Sizes,
    dir: PathBuf,
    jobs: Option<Sender<writer::Job>>,
    reports: Receiver<writer::Report>,
    shared: Arc<writer::Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The number the records appended now will have as a batch.
    next_batch: u64,
    /// Every batch up to this one is durable (`--fsync always`).
    synced: u64,
    failed_until: Option<Instant>,
    /// A failed write left the disk behind the memory: write a snapshot.
    want_snapshot: bool,
    /// Snapshots handed to the writer (one at a time).
    snapshots_sent: u64,
    /// Kept open (and locked) while the server runs.
    _lock: File,
}

/// A write past the file-size limit (`ulimit -f`, `RLIMIT_FSIZE`) raises
/// SIGXFSZ, whose default action ends the process. With a handler
/// installed the write fails with `EFBIG` instead, which the writer reports
/// as it reports a full disk. Installed once, by the first store opened.
fn catch_file_size_signal() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        signal_hook::flag::register(
            signal_hook::consts::SIGXFSZ,
            Arc::new(AtomicBool::new(false)),
        )
        .map(|_| ())
        .map_err(|e| format!("catching SIGXFSZ: {e}"))
    })
    .clone()
}

/// What [`Store::open`] found, and the epoch (seconds) to start with: later
/// than every earlier start's, so that reply addresses made from it are
/// new.
pub struct Opened {
    pub store: Store,
    pub state: log::State,
    pub epoch_s: u64,
}

impl Store {
    /// Opens (or creates) `dir`, replays it, and starts the writer on a new
    /// segment. `epoch_ms` is the wall clock at start.
    pub fn open(
        dir: &Path,
        mode: Fsync,
        sizes: Sizes,
        epoch_ms: u64,
        waker: Arc<Waker>,
    ) -> Result<Opened, String> {
        let shown = dir.display();
        catch_file_size_signal().map_err(|e| format!("--data-dir {shown}: {e}"))?;
        fs::create_dir_all(dir).map_err(|e| format!("--data-dir {shown}: {e}"))?;
        let lock =
            File::create(dir.join("LOCK")).map_err(|e| format!("--data-dir {shown}: {e}"))?;
        if lock.try_lock().is_err() {
            return Err(format!(
                "--data-dir {shown}: another server is using this directory"
            ));
        }
        for entry in fs::read_dir(dir)
            .map_err(|e| format!("--data-dir {shown}: {e}"))?
            .flatten()
        {
            // A snapshot that was not finished.
            if entry.file_name().to_string_lossy().ends_with(".log.tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        let started = Instant::now();
        let replayed = log::replay(dir).map_err(|e| format!("--data-dir: {e}"))?;
        if let Some((file, offset, cut)) = &replayed.truncated {
            ::log::warn!(
                "{}: a torn record at byte offset {offset} ({cut} bytes, the write a crash \
                 interrupted) was cut off",
                file.display()
            );
        }
        for old in &replayed.obsolete {
            if let Err(e) = fs::remove_file(old) {
                ::log::warn!("{}: {e}", old.display());
            }
        }
        let state = replayed.state;
        ::log::info!(
            "data directory {shown}: {} records, {} bytes replayed in {} ms: {} line messages, \
             {} switch queues",
            replayed.records,
            replayed.bytes,
            started.elapsed().as_millis(),
            state.line.len(),
            state.switch.len()
        );
        let epoch_s = (epoch_ms / 1000).max(state.epoch_s.saturating_add(1));
        let mut boot = Vec::new();
        record::encode(&mut boot, &Record::Boot { epoch_s });
        let segment = replayed.last_segment + 1;
        let file = writer::create_segment(dir, segment, &boot)
            .map_err(|e| format!("--data-dir {shown}: {e}"))?;
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (reports_tx, reports_rx) = mpsc::channel();
        let shared = Arc::new(writer::Shared::default());
        let len = (log::MAGIC.len() + boot.len()) as u64;
        shared.disk.store(replayed.bytes + len, Ordering::Relaxed);
        let t = writer::Thread {
            dir: dir.to_path_buf(),
            mode,
            segment_bytes: sizes.segment,
            file,
            segment,
            len,
            jobs: jobs_rx,
            reports: reports_tx,
            shared: Arc::clone(&shared),
            waker,
        };
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || t.run())
            .map_err(|e| format!("--data-dir: starting the writer: {e}"))?;
        Ok(Opened {
            store: Store {
                journal: Journal::new(epoch_ms),
                mode,
                sizes,
                dir: dir.to_path_buf(),
                jobs: Some(jobs_tx),
                reports: reports_rx,
                shared,
                thread: Some(thread),
                next_batch: 1,
                synced: 0,
                failed_until: None,
                want_snapshot: false,
                snapshots_sent: 0,
                _lock: lock,
            },
            state,
            epoch_s,
        })
    }

    pub fn mode(&self) -> Fsync {
        self.mode
    }

    /// The batch records appended now will belong to.
    pub fn batch(&self) -> u64 {
        self.next_batch
    }

    /// Every batch up to this one is durable (`--fsync always`).
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Bytes of the segments on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk.load(Ordering::Relaxed)
    }

    /// Hands the records of this turn to the writer. True when there were any.
    pub fn submit(&mut self) -> bool {
        if self.journal.pending() == 0 {
            return false;
        }
        let data = self.journal.take();
        self.send(writer::Job::Batch {
            n: self.next_batch,
            data,
        });
        true
    }

    fn send(&mut self, job: writer::Job) {
        let (n, len) = match &job {
            writer::Job::Batch { n, data } | writer::Job::Snapshot { n, data } => {
                (*n, data.len() as u64)
            }
        };
        self.shared.pending.fetch_add(len, Ordering::Relaxed);
        self.next_batch = n + 1;
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            ::log::error!("data directory {}: the writer is gone", self.dir.display());
            self.failed_until = Some(Instant::now() + FAILED_PAUSE);
        }
    }

    /// True when the segments should be compacted: they hold more than
    /// [`Sizes::compact_min`] and [`COMPACT_FACTOR`] × `live` bytes, or a
    /// failed write left them behind.
    pub fn wants_snapshot(&self, live: u64) -> bool {
        if self.failed_until.is_some()
            || self.shared.snapshots.load(Ordering::Relaxed) < self.snapshots_sent
        {
            return false;
        }
        let disk = self.disk_bytes() + self.shared.pending.load(Ordering::Relaxed);
        self.want_snapshot
            || (disk > self.sizes.compact_min && disk > COMPACT_FACTOR.saturating_mul(live))
    }

    /// Hands a snapshot to the writer: `data` holds every live record, the
    /// snapshot marker first. Records appended before it must have been
    /// submitted.
    pub fn snapshot(&mut self, data: Vec<u8>) {
        debug_assert_eq!(self.journal.pending(), 0);
        self.want_snapshot = false;
        self.snapshots_sent += 1;
        self.send(writer::Job::Snapshot {
            n: self.next_batch,
            data,
        });
    }

    /// Takes the writer's reports: the batch now durable (`Ok`), or a
    /// failure up to a batch (`Err`), whose held answers must not leave.
    pub fn take_reports(&mut self) -> Vec<Result<u64, u64>> {
        let mut out = Vec::new();
        while let Ok(r) = self.reports.try_recv() {
            match r {
                writer::Report::Synced(n) => {
                    self.synced = self.synced.max(n);
                    out.push(Ok(n));
                }
                writer::Report::Failed(n, _) => {
                    self.failed_until = Some(Instant::now() + FAILED_PAUSE);
                    self.want_snapshot = true;
                    out.push(Err(n));
                }
            }
        }
        out
    }

    /// True while the writer is more than [`MAX_PENDING`] bytes behind:
    /// the loop reads no input meanwhile (the writer wakes it once it is
    /// back below half of that).
    pub fn behind(&self) -> bool {
        self.shared.pending.load(Ordering::Relaxed) > MAX_PENDING
    }

    /// True once the writer is back to half of [`MAX_PENDING`] or less:
    /// a loop that stopped reading for it reads again.
    pub fn caught_up(&self) -> bool {
        self.shared.pending.load(Ordering::Relaxed) <= MAX_PENDING / 2
    }

    /// Updates what the journal refuses: after a failure, for a moment.
    pub fn update_refusal(&mut self) {
        if self.failed_until.is_some_and(|t| Instant::now() >= t) {
            self.failed_until = None;
        }
        let refusal = if self.failed_until.is_some() {
            Some(Refusal::Failed)
        } else {
            None
        };
        if self.journal.refusal() != refusal {
            self.journal.set_refusal(refusal);
        }
    }

    /// When a refusal after a failure ends (the loop wakes for it).
    pub fn refusal_ends(&self) -> Option<Instant> {
        self.failed_until
    }

    /// Writes what is left and stops the writer (it fsyncs at the end
    /// unless `--fsync no`).
    pub fn close(&mut self) {
        self.submit();
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                ::log::error!("data directory {}: the writer failed", self.dir.display());
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mio::{Poll, Token};

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchboard-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn waker(poll: &Poll) -> Arc<Waker> {
        Arc::new(Waker::new(poll.registry(), Token(1)).unwrap())
    }

    fn open(dir: &Path, mode: Fsync, waker: &Arc<Waker>) -> Opened {
        Store::open(dir, mode, Sizes::default(), 1_000_000, Arc::clone(waker)).unwrap()
    }

    #[test]
    fn records_written_in_batches_come_back_after_a_restart() {
        let dir = tempdir("restart");
        let mut poll = Poll::new().unwrap();
        let w = waker(&poll);
        let mut opened = open(&dir, Fsync::Always, &w);
        assert!(opened.state.line.is_empty());
        let first_epoch = opened.epoch_s;
        let s = &mut opened.store;
        s.journal.enqueue(0, u64::MAX, 60, b"q", None, b"one");
        s.journal.enqueue(1, u64::MAX, 60, b"q", Some(b"r"), b"two");
        assert!(s.submit());
        assert!(!s.submit());
        s.journal.dequeue(0, false);
        assert!(s.submit());
        // Both batches are reported durable, through the waker.
        let mut events = mio::Events::with_capacity(4);
        while s.synced() < 2 {
            poll.poll(&mut events, None).unwrap();
            for r in s.take_reports() {
                assert!(r.is_ok(), "{r:?}");
            }
        }
        drop(opened);
        let again = open(&dir, Fsync::Always, &w);
        let bodies: Vec<Bytes> = again.state.line.values().map(|m| m.body.clone()).collect();
        assert_eq!(bodies, vec![Bytes::from_static(b"two")]);
        assert_eq!(again.state.next_seq, 2);
        assert!(again.epoch_s > first_epoch);
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_snapshot_replaces_the_older_segments() {
        let dir = tempdir("snapshot");
        let poll = Poll::new().unwrap();
        let w = waker(&poll);
        let mut opened = open(&dir, Fsync::No, &w);
        let s = &mut opened.store;
        for seq in 0..100 {
            s.journal.enqueue(seq, u64::MAX, 60, b"q", None, b"old");
        }
        s.submit();
        let mut snap = Vec::new();
        record::encode(
            &mut snap,
            &Record::Snapshot {
                next_seq: 200,
                loose_ids: 0,
                epoch_s: 1,
            },
        );
        record::encode(
            &mut snap,
            &Record::Enqueue {
                seq: 150,
                deadline: u64::MAX,
                timeout_s: 60,
                to: Bytes::from_static(b"q"),
                reply: None,
                body: Bytes::from_static(b"kept"),
            },
        );
        s.snapshot(snap);
        s.journal.enqueue(200, u64::MAX, 60, b"q", None, b"after");
        s.submit();
        drop(opened);
        let segments = log::segments(&dir).unwrap();
        let again = open(&dir, Fsync::No, &w);
        assert_eq!(segments.len(), 1, "{segments:?}");
        let bodies: Vec<Bytes> = again.state.line.values().map(|m| m.body.clone()).collect();
        assert_eq!(
            bodies,
            vec![Bytes::from_static(b"kept"), Bytes::from_static(b"after")]
        );
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_server_on_the_same_directory_is_refused() {
        let dir = tempdir("lock");
        let poll = Poll::new().unwrap();
        let w = waker(&poll);
        let first = open(&dir, Fsync::No, &w);
        let err = Store::open(&dir, Fsync::No, Sizes::default(), 1, Arc::clone(&w))
            .err()
            .unwrap();
        assert!(err.contains("another server"), "{err}");
        drop(first);
        fs::remove_dir_all(&dir).unwrap();
    }

    // The journal's counts, the store's batch numbers, reports, refusal,
    // compaction rule and backlog limit, the epoch, the disk count, and
    // what a stop writes.

    fn decoded(data: Vec<u8>) -> Vec<Record> {
        record::decode_all(&Bytes::from(data)).unwrap()
    }

    /// Bytes of the segments in `dir`.
    fn on_disk(dir: &Path) -> u64 {
        log::segments(dir)
            .unwrap()
            .iter()
            .map(|(_, p)| fs::metadata(p).unwrap().len())
            .sum()
    }

    /// Waits (10 s at most) until the writer reports batch `n` durable.
    fn wait_synced(poll: &mut Poll, s: &mut Store, n: u64) {
        let mut events = mio::Events::with_capacity(4);
        while s.synced() < n {
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            assert!(!events.is_empty(), "the writer never reported batch {n}");
            for r in s.take_reports() {
                assert!(r.is_ok(), "{r:?}");
            }
        }
    }

    #[test]
    fn sizes_by_default_are_64_mib() {
        assert_eq!(
            Sizes::default(),
            Sizes {
                segment: 67_108_864,
                compact_min: 67_108_864,
            }
        );
    }

    #[test]
    fn the_journal_counts_its_records_and_keeps_its_clock() {
        let j = Journal::new(1_234_567);
        assert_eq!(j.epoch_ms(), 1_234_567);
        assert_eq!((j.records(), j.pending()), (0, 0));
        j.enqueue(4, 5, 6, b"q", Some(b"r"), b"body");
        j.dequeue(4, true);
        j.record(&Record::LooseIds { next: 3 });
        assert_eq!(j.records(), 3);
        let pending = j.pending();
        let data = j.take();
        assert_eq!(data.len(), pending);
        assert_eq!(j.pending(), 0);
        assert_eq!(
            decoded(data),
            vec![
                Record::Enqueue {
                    seq: 4,
                    deadline: 5,
                    timeout_s: 6,
                    to: Bytes::from_static(b"q"),
                    reply: Some(Bytes::from_static(b"r")),
                    body: Bytes::from_static(b"body"),
                },
                Record::Expire { seq: 4 },
                Record::LooseIds { next: 3 },
            ]
        );
        // Counted since start, not since the last take.
        j.dequeue(5, false);
        assert_eq!(j.records(), 4);
        assert_eq!(decoded(j.take()), vec![Record::Take { seq: 5 }]);
    }

    #[test]
    fn batches_are_numbered_and_handed_to_the_writer_in_order() {
        let dir = tempdir("batches");
        let poll = Poll::new().unwrap();
        let w = waker(&poll);
        let mut opened = open(&dir, Fsync::Always, &w);
        let s = &mut opened.store;
        // The jobs come here instead of to the writer.
        let (tx, jobs) = mpsc::channel();
        s.jobs = Some(tx);
        assert_eq!(s.batch(), 1);
        assert!(!s.submit());
        assert!(jobs.try_recv().is_err());
        assert_eq!(s.batch(), 1);
        s.journal.dequeue(7, false);
        s.journal.dequeue(8, false);
        assert!(s.submit());
        assert_eq!(s.batch(), 2);
        match jobs.try_recv().unwrap() {
            writer::Job::Batch { n, data } => {
                assert_eq!(n, 1);
                assert_eq!(s.shared.pending.load(Ordering::Relaxed), data.len() as u64);
                assert_eq!(
                    decoded(data),
                    vec![Record::Take { seq: 7 }, Record::Take { seq: 8 }]
                );
            }
            writer::Job::Snapshot { .. } => panic!("a snapshot instead of a batch"),
        }
        s.journal.dequeue(9, false);
        assert!(s.submit());
        assert_eq!(s.batch(), 3);
        assert!(matches!(
            jobs.try_recv(),
            Ok(writer::Job::Batch { n: 2, .. })
        ));
        // A batch handed over is no failure.
        s.update_refusal();
        assert_eq!((s.journal.refusal(), s.refusal_ends()), (None, None));
        // The writer gone: the store refuses records for a moment.
        s.jobs = None;
        s.journal.dequeue(10, false);
        assert!(s.submit());
        s.update_refusal();
        assert_eq!(s.journal.refusal(), Some(Refusal::Failed));
        assert!(s.refusal_ends().unwrap() > Instant::now());
        drop(opened);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reports_refusal_and_when_to_compact() {
        let dir = tempdir("compact");
        let poll = Poll::new().unwrap();
        let w = waker(&poll);
        let sizes = Sizes {
            segment: 1 << 20,
            compact_min: 1000,
        };
        let mut opened = Store::open(&dir, Fsync::Always, sizes, 1_000_000, w).unwrap();
        let s = &mut opened.store;
        // Neither the writer's jobs nor its reports reach it: the test
        // plays the writer.
        let (tx, jobs) = mpsc::channel();
        s.jobs = Some(tx);
        let (report, reports) = mpsc::channel();
        s.reports = reports;
        let on = |s: &Store, disk: u64, pending: u64| {
            s.shared.disk.store(disk, Ordering::Relaxed);
            s.shared.pending.store(pending, Ordering::Relaxed);
        };
        // More than --compact-min-bytes (written and pending) and more than
        // 4 times the live data.
        on(s, 1000, 0);
        assert!(!s.wants_snapshot(0));
        on(s, 600, 404);
        assert!(s.wants_snapshot(250));
        assert!(!s.wants_snapshot(251));
        // One snapshot at a time.
        s.snapshot(b"snapshot".to_vec());
        assert!(matches!(
            jobs.try_recv(),
            Ok(writer::Job::Snapshot { n: 1, .. })
        ));
        assert_eq!(s.batch(), 2);
        assert!(!s.wants_snapshot(0));
        s.shared.snapshots.store(1, Ordering::Relaxed);
        assert!(s.wants_snapshot(0));
        // Reports: the highest batch made durable.
        report.send(writer::Report::Synced(3)).unwrap();
        report.send(writer::Report::Synced(2)).unwrap();
        assert_eq!(s.take_reports(), vec![Ok(3), Ok(2)]);
        assert_eq!(s.synced(), 3);
        s.update_refusal();
        assert_eq!((s.journal.refusal(), s.refusal_ends()), (None, None));
        // A failure: refused for a moment, no snapshot meanwhile, then one
        // however small the files.
        report
            .send(writer::Report::Failed(4, "disk full".into()))
            .unwrap();
        assert_eq!(s.take_reports(), vec![Err(4)]);
        assert_eq!(s.synced(), 3);
        s.update_refusal();
        assert_eq!(s.journal.refusal(), Some(Refusal::Failed));
        assert!(s.refusal_ends().unwrap() > Instant::now());
        on(s, 0, 0);
        assert!(!s.wants_snapshot(0));
        s.failed_until = Some(Instant::now() - Duration::from_millis(1));
        s.update_refusal();
        assert_eq!((s.journal.refusal(), s.refusal_ends()), (None, None));
        assert!(s.wants_snapshot(u64::MAX));
        s.snapshot(b"snapshot".to_vec());
        s.shared.snapshots.store(2, Ordering::Relaxed);
        assert!(!s.wants_snapshot(u64::MAX));
        // Behind: more than 256 MiB handed over and not written.
        on(s, 0, 268_435_456);
        assert!(!s.behind());
        on(s, 0, 268_435_457);
        assert!(s.behind());
        // Caught up: back to 128 MiB or less.
        assert!(!s.caught_up());
        on(s, 0, 134_217_729);
        assert!(!s.caught_up());
        on(s, 0, 134_217_728);
        assert!(s.caught_up());
        drop(opened);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_start_has_a_later_epoch_and_counts_the_bytes_on_disk() {
        let dir = tempdir("epoch");
        let mut poll = Poll::new().unwrap();
        let w = waker(&poll);
        let start = |clock_ms: u64| {
            Store::open(
                &dir,
                Fsync::Always,
                Sizes::default(),
                clock_ms,
                Arc::clone(&w),
            )
            .unwrap()
        };
        let mut opened = start(1_000_999);
        assert_eq!(opened.epoch_s, 1000);
        assert_eq!(opened.store.disk_bytes(), on_disk(&dir));
        let s = &mut opened.store;
        s.journal.enqueue(0, u64::MAX, 60, b"q", None, b"one");
        s.submit();
        wait_synced(&mut poll, s, 1);
        assert_eq!(s.disk_bytes(), on_disk(&dir));
        // Not submitted: the stop writes it.
        s.journal.enqueue(1, u64::MAX, 60, b"q", None, b"two");
        drop(opened);
        // The clock went back: the epoch still goes forward.
        let again = start(1_000_000);
        assert_eq!(again.epoch_s, 1001);
        assert_eq!(again.store.disk_bytes(), on_disk(&dir));
        let bodies: Vec<Bytes> = again.state.line.values().map(|m| m.body.clone()).collect();
        assert_eq!(
            bodies,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
        );
        drop(again);
        assert_eq!(start(5_000_000).epoch_s, 5000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_fsync_always_the_writer_reports_nothing() {
        let dir = tempdir("no-reports");
        let poll = Poll::new().unwrap();
        let w = waker(&poll);
        for mode in [Fsync::No, Fsync::EverySec] {
            let mut opened = open(&dir, mode, &w);
            let s = &mut opened.store;
            s.journal.dequeue(1, false);
            assert!(s.submit());
            // Joins the writer: everything it had is handled.
            s.close();
            assert_eq!(s.take_reports(), vec![]);
            assert_eq!(s.synced(), 0);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_size_signal_does_not_end_the_process() {
        // Without the handler, SIGXFSZ's default action would end the test
        // process here (the write past the limit raises it).
        catch_file_size_signal().unwrap();
        signal_hook::low_level::raise(signal_hook::consts::SIGXFSZ).unwrap();
    }
}
