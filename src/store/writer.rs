//! The store's helper thread: it owns the open segment, writes what the
//! loop hands it, makes it durable as `--fsync` says, and reports back
//! through the loop's waker. The loop never waits for it.
//!
//! Owns: the segment file being appended to, its length, segment rotation,
//! snapshots (a new segment written under a temporary name, made durable,
//! renamed, then the older segments deleted), the once-a-second fsync of
//! `everysec`. Must not touch: what the records mean.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Waker;

use super::log::{segment_name, MAGIC};
use super::Fsync;

/// A segment is closed and a new one started past this size (the default
/// of `--segment-bytes`).
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// What the loop asks of the thread.
pub enum Job {
    /// Records of one loop turn, batch number `n`.
    Batch { n: u64, data: Vec<u8> },
    /// A snapshot (its records, the snapshot marker first) as of batch `n`:
    /// it starts a new segment and replaces every older one.
    Snapshot { n: u64, data: Vec<u8> },
}

/// What the thread tells the loop.
#[derive(Debug)]
pub enum Report {
    /// Every batch up to `n` is durable (with `--fsync always`).
    Synced(u64),
    /// Batches up to `n` may not be on disk: the write or fsync failed.
    Failed(u64, String),
}

/// Counters the thread keeps for the loop to read.
#[derive(Default)]
pub struct Shared {
    /// Bytes handed to the thread and not yet written.
    pub pending: AtomicU64,
    /// Bytes of the segments on disk.
    pub disk: AtomicU64,
    /// Snapshots written (or failed) so far.
    pub snapshots: AtomicU64,
}

pub struct Thread {
    pub dir: PathBuf,
    pub mode: Fsync,
    /// The open segment is closed past this size.
    pub segment_bytes: u64,
    pub file: File,
    pub segment: u64,
    /// Bytes of the open segment known to be written whole.
    pub len: u64,
    pub jobs: Receiver<Job>,
    pub reports: Sender<Report>,
    pub shared: Arc<Shared>,
    pub waker: Arc<Waker>,
}

/// Creates segment `n` in `dir` (magic written, file and directory
/// synced) and returns it open for appending.
pub fn create_segment(dir: &Path, n: u64, first: &[u8]) -> io::Result<File> {
    let path = dir.join(segment_name(n));
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let mut head = MAGIC.to_vec();
    head.extend_from_slice(first);
    f.write_all(&head)?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(f)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True when a write of `bytes` took the bytes pending from more than half
/// of [`super::MAX_PENDING`] to half of it or less: a loop that stopped
/// reading past the limit must be woken to read again. (The backlog is
/// written one batch at a time, so the write that crosses half of the limit
/// seldom began past the limit itself.)
fn caught_up(was: u64, bytes: u64) -> bool {
    let half = super::MAX_PENDING / 2;
    was > half && was - bytes <= half
}

impl Thread {
    pub fn run(mut self) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let first = if self.mode == Fsync::EverySec && unsynced {
                let left = Duration::from_secs(1).saturating_sub(last_sync.elapsed());
                match self.jobs.recv_timeout(left) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.jobs.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                }
            };
            let mut last = None;
            let mut failed = None;
            if let Some(job) = first {
                // Take everything that is waiting: one write run, one fsync.
                let mut jobs = vec![job];
                while let Ok(more) = self.jobs.try_recv() {
                    jobs.push(more);
                }
                for job in jobs {
                    let (n, bytes, result) = match job {
                        Job::Batch { n, data } => (n, data.len(), self.append(&data)),
                        Job::Snapshot { n, data } => {
                            let result = self.snapshot(&data);
                            self.shared.snapshots.fetch_add(1, Ordering::Relaxed);
                            (n, data.len(), result)
                        }
                    };
                    let was = self
                        .shared
                        .pending
                        .fetch_sub(bytes as u64, Ordering::Relaxed);
                    if caught_up(was, bytes as u64) {
                        if let Err(e) = self.waker.wake() {
                            log::warn!("store: waking the loop: {e}");
                        }
                    }
                    last = Some(n);
                    if let Err(e) = result {
                        failed = Some(e.to_string());
                    }
                }
                unsynced = true;
            }
            let due = match self.mode {
                Fsync::Always => last.is_some(),
                Fsync::EverySec => unsynced && last_sync.elapsed() >= Duration::from_secs(1),
                Fsync::No => false,
            };
            if due && failed.is_none() {
                if let Err(e) = self.file.sync_data() {
                    failed = Some(format!("fsync: {e}"));
                }
                last_sync = Instant::now();
                unsynced = false;
            }
            let report = match (failed, last) {
                (Some(why), n) => {
                    log::error!(
                        "data directory {}: {why}; the writes of this moment may be lost",
                        self.dir.display()
                    );
                    Some(Report::Failed(n.unwrap_or(0), why))
                }
                (None, Some(n)) if self.mode == Fsync::Always => Some(Report::Synced(n)),
                _ => None,
            };
            if let Some(r) = report {
                if self.reports.send(r).is_err() {
                    break;
                }
                if let Err(e) = self.waker.wake() {
                    log::warn!("store: waking the loop: {e}");
                }
            }
        }
        if self.mode != Fsync::No {
            if let Err(e) = self.file.sync_data() {
                log::error!("data directory {}: fsync at stop: {e}", self.dir.display());
            }
        }
    }

    /// Appends a batch to the open segment; a failed write is cut back off,
    /// so that the segment never holds a half record before later ones.
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all(data) {
            if let Err(t) = self.file.set_len(self.len) {
                log::error!(
                    "data directory {}: cutting a failed write off {}: {t}",
                    self.dir.display(),
                    segment_name(self.segment)
                );
            }
            return Err(io::Error::new(e.kind(), format!("write: {e}")));
        }
        self.len += data.len() as u64;
        self.shared
            .disk
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.len >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Closes the open segment (durable unless `--fsync no`) and starts the next.
    fn rotate(&mut self) -> io::Result<()> {
        if self.mode != Fsync::No {
            self.file.sync_data()?;
        }
        let next = self.segment + 1;
        self.file = create_segment(&self.dir, next, &[])?;
        self.segment = next;
        self.len = MAGIC.len() as u64;
        self.shared.disk.fetch_add(self.len, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a snapshot as the next segment (under a temporary name until
    /// it is durable), then deletes every older segment.
    fn snapshot(&mut self, data: &[u8]) -> io::Result<()> {
        let next = self.segment + 1;
        let tmp = self.dir.join(format!("{}.tmp", segment_name(next)));
        let done = self.dir.join(segment_name(next));
        let written = (|| {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &done)?;
            sync_dir(&self.dir)?;
            OpenOptions::new().append(true).open(&done)
        })();
        let file = match written {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io::Error::new(e.kind(), format!("snapshot: {e}")));
            }
        };
        self.file = file;
        self.segment = next;
        self.len = (MAGIC.len() + data.len()) as u64;
        let mut disk = self.len;
        for (n, path) in super::log::segments(&self.dir)? {
            if n < next {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("store: removing {}: {e}", path.display());
                    disk += fs::metadata(&path).map_or(0, |m| m.len());
                }
            }
        }
        self.shared.disk.store(disk, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::{segment_name, segments};
    use crate::store::record::{encode, Record};
    use bytes::Bytes;
    use mio::{Poll, Token};
    use std::sync::mpsc;

    // Run by hand (jobs queued, then the sender dropped so that `run`
    // returns): rotation, the bytes counted on disk, snapshots, failed
    // writes, and when the loop is woken.

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchboard-writer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A thread on segment 1 of `dir` (`file`: that segment, or another
    /// file to write to), the jobs' sender and the reports.
    fn thread(
        dir: &Path,
        mode: Fsync,
        segment_bytes: u64,
        file: Option<File>,
        poll: &Poll,
    ) -> (Thread, mpsc::Sender<Job>, mpsc::Receiver<Report>) {
        let file = file.unwrap_or_else(|| create_segment(dir, 1, &[]).unwrap());
        let (jobs_tx, jobs) = mpsc::channel();
        let (reports, reports_rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        shared.disk.store(MAGIC.len() as u64, Ordering::Relaxed);
        let t = Thread {
            dir: dir.to_path_buf(),
            mode,
            segment_bytes,
            file,
            segment: 1,
            len: MAGIC.len() as u64,
            jobs,
            reports,
            shared,
            waker: Arc::new(Waker::new(poll.registry(), Token(1)).unwrap()),
        };
        (t, jobs_tx, reports_rx)
    }

    /// A batch of one record of 97 bytes.
    fn batch(n: u64) -> Job {
        let mut data = Vec::new();
        encode(
            &mut data,
            &Record::Enqueue {
                seq: n,
                deadline: u64::MAX,
                timeout_s: 60,
                to: Bytes::from_static(b"q"),
                reply: None,
                body: Bytes::from(vec![b'x'; 50]),
            },
        );
        assert_eq!(data.len(), 97);
        Job::Batch { n, data }
    }

    fn sizes(dir: &Path) -> Vec<(u64, u64)> {
        segments(dir)
            .unwrap()
            .into_iter()
            .map(|(n, p)| (n, fs::metadata(p).unwrap().len()))
            .collect()
    }

    #[test]
    fn a_segment_is_closed_once_it_holds_segment_bytes() {
        let dir = tempdir("rotate");
        let poll = Poll::new().unwrap();
        let (t, jobs, reports) = thread(&dir, Fsync::Always, 300, None, &poll);
        let shared = Arc::clone(&t.shared);
        for n in 1..=5 {
            jobs.send(batch(n)).unwrap();
        }
        shared.pending.store(5 * 97, Ordering::Relaxed);
        drop(jobs);
        t.run();
        // 8 + 4 × 97 = 396 bytes reach 300: the fifth batch starts the next.
        assert_eq!(sizes(&dir), vec![(1, 8 + 4 * 97), (2, 8 + 97)]);
        assert_eq!(shared.disk.load(Ordering::Relaxed), 8 + 4 * 97 + 8 + 97);
        assert_eq!(shared.pending.load(Ordering::Relaxed), 0);
        let got: Vec<String> = reports.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(got, vec!["Synced(5)"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_snapshot_is_the_next_segment_and_replaces_the_older_ones() {
        let dir = tempdir("snapshot");
        let poll = Poll::new().unwrap();
        let (t, jobs, reports) = thread(&dir, Fsync::Always, 1 << 20, None, &poll);
        let shared = Arc::clone(&t.shared);
        // Older than the open segment 1, one that cannot be deleted (a
        // directory by its name): its bytes still count.
        let stuck = dir.join(segment_name(0));
        fs::create_dir(&stuck).unwrap();
        let stuck_len = fs::metadata(&stuck).unwrap().len();
        assert!(stuck_len > 0);
        let mut snap = Vec::new();
        encode(
            &mut snap,
            &Record::Snapshot {
                next_seq: 1,
                loose_ids: 0,
                epoch_s: 1,
            },
        );
        jobs.send(batch(1)).unwrap();
        jobs.send(Job::Snapshot {
            n: 2,
            data: snap.clone(),
        })
        .unwrap();
        jobs.send(batch(3)).unwrap();
        drop(jobs);
        t.run();
        let names: Vec<u64> = segments(&dir).unwrap().iter().map(|s| s.0).collect();
        assert_eq!(names, vec![0, 2]);
        let mut want = MAGIC.to_vec();
        want.extend_from_slice(&snap);
        let Job::Batch { data, .. } = batch(3) else {
            unreachable!()
        };
        want.extend_from_slice(&data);
        assert_eq!(fs::read(dir.join(segment_name(2))).unwrap(), want);
        assert_eq!(
            shared.disk.load(Ordering::Relaxed),
            want.len() as u64 + stuck_len
        );
        assert_eq!(shared.snapshots.load(Ordering::Relaxed), 1);
        let got: Vec<String> = reports.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(got, vec!["Synced(3)"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_reported_as_failed() {
        let dir = tempdir("failed");
        let poll = Poll::new().unwrap();
        // A file open for reading only: every write fails.
        let path = dir.join("read-only");
        fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        let (t, jobs, reports) = thread(&dir, Fsync::Always, 1 << 20, Some(file), &poll);
        jobs.send(batch(1)).unwrap();
        drop(jobs);
        t.run();
        let got: Vec<Report> = reports.iter().collect();
        assert!(
            matches!(&got[..], [Report::Failed(1, why)] if why.starts_with("write: ")),
            "{got:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_loop_is_woken_once_the_writer_is_back_below_half_the_limit() {
        let max = 256 << 20;
        // From past the limit to half of it in one write: wake.
        assert!(caught_up(max + 1, max / 2 + 1));
        assert!(caught_up(max + 1, max + 1));
        // The batch that crosses half of the limit, the last of many: wake.
        assert!(caught_up(max / 2 + 1, 1));
        assert!(caught_up(max / 2 + 5, 1 << 20));
        // Already at half or below before: woken before.
        assert!(!caught_up(max / 2, 1));
        assert!(!caught_up(max / 2, max / 2));
        // Still more than half left.
        assert!(!caught_up(max + 1, max / 2));
        assert!(!caught_up(max + 10, 5));
        assert!(!caught_up(max / 2 + 2, 1));
    }
}
