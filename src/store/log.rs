//! The segment files of the data directory, and replay.
//!
//! The directory holds `NNNNNNNNNNNNNNNNNNNN.log` files (a 20-digit
//! number, increasing), each an 8-byte magic followed by records
//! ([`super::record`]). A segment whose first record is a snapshot replaces
//! everything before it: replay starts at the last such segment (older ones
//! are leftovers of a compaction that did not finish deleting them) and
//! applies every later record in order.
//!
//! Recovery: a record that is cut short or fails its checksum at the end of
//! the last segment is what a crash in the middle of a write leaves; it is
//! cut off (the file is truncated) and logged. Anything else that does not
//! decode (in an older segment, or with intact records after it) stops the
//! start with an error that names the file and the offset.
//!
//! Owns: segment names, reading them at start, cutting a torn tail, and the
//! [`State`] the records describe (applying each record). Must not touch:
//! writing (the writer thread's), the broker (the shell rebuilds it from the
//! state).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{self, Bad, Origin, Record, SwitchKind, HEADER};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"SWBLOG1\n";

/// The file name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("{n:020}.log")
}

/// The segments of `dir`, by number, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = stem.parse::<u64>() {
                found.push((n, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A line-protocol message as replay found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineMessage {
    pub to: Bytes,
    pub reply: Option<Bytes>,
    pub timeout_s: u64,
    /// Wall clock, ms since the Unix epoch.
    pub deadline: u64,
    pub body: Bytes,
}

/// A switch message as replay found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchMessage {
    /// Wall clock, ms since the Unix epoch.
    pub time: u64,
    pub origin: Origin,
    pub kind: SwitchKind,
    pub payload: Bytes,
    pub seen: bool,
}

/// A persistent switch queue as replay found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchQueue {
    pub next_id: u64,
    pub messages: BTreeMap<u64, SwitchMessage>,
}

/// The state the log describes.
#[derive(Debug, Default)]
pub struct State {
    /// Line messages by their sequence number (queue order).
    pub line: BTreeMap<u64, LineMessage>,
    pub switch: HashMap<Bytes, SwitchQueue>,
    /// Above every line message's sequence number ever written.
    pub next_seq: u64,
    pub loose_ids: u64,
    /// The latest start's epoch, in seconds.
    pub epoch_s: u64,
}

impl State {
    /// Applies one record. Records about messages or queues that are not
    /// there (their creation was in a batch whose write failed) change
    /// nothing.
    pub fn apply(&mut self, r: Record) {
        match r {
            Record::Boot { epoch_s } => self.epoch_s = self.epoch_s.max(epoch_s),
            Record::Snapshot {
                next_seq,
                loose_ids,
                epoch_s,
            } => {
                *self = State {
                    next_seq,
                    loose_ids,
                    epoch_s,
                    ..State::default()
                }
            }
            Record::Enqueue {
                seq,
                deadline,
                timeout_s,
                to,
                reply,
                body,
            } => {
                self.next_seq = self.next_seq.max(seq.saturating_add(1));
                self.line.insert(
                    seq,
                    LineMessage {
                        to,
                        reply,
                        timeout_s,
                        deadline,
                        body,
                    },
                );
            }
            Record::Take { seq } | Record::Expire { seq } => {
                self.line.remove(&seq);
            }
            Record::QueueCreate { name, next_id } => {
                let q = self.switch.entry(name).or_default();
                q.next_id = q.next_id.max(next_id);
            }
            Record::QueueDestroy { name } => {
                self.switch.remove(&name);
            }
            Record::SwitchStore {
                name,
                id,
                time,
                origin,
                kind,
                payload,
            } => {
                if let Some(q) = self.switch.get_mut(&name) {
                    q.next_id = q.next_id.max(id.saturating_add(1));
                    q.messages.insert(
                        id,
                        SwitchMessage {
                            time,
                            origin,
                            kind,
                            payload,
                            seen: false,
                        },
                    );
                }
            }
            Record::SwitchAck { name, id } => {
                if let Some(q) = self.switch.get_mut(&name) {
                    q.messages.remove(&id);
                }
            }
            Record::SwitchSeen { name, id } => {
                if let Some(m) = self
                    .switch
                    .get_mut(&name)
                    .and_then(|q| q.messages.get_mut(&id))
                {
                    m.seen = true;
                }
            }
            Record::SwitchIds { name, next_id } => {
                if let Some(q) = self.switch.get_mut(&name) {
                    q.next_id = q.next_id.max(next_id);
                }
            }
            Record::LooseIds { next } => self.loose_ids = self.loose_ids.max(next),
        }
    }
}

/// Why the log cannot be read.
#[derive(Debug)]
pub enum ReplayError {
    Io(PathBuf, io::Error),
    /// A record that is not the torn tail of the last segment is damaged.
    Corrupt {
        file: PathBuf,
        offset: u64,
        why: String,
    },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            ReplayError::Corrupt { file, offset, why } => write!(
                f,
                "{}: corrupt at byte offset {offset}: {why}; the data directory is left as it is \
                 (move the file away, or restore a backup, to start)",
                file.display()
            ),
        }
    }
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub state: State,
    /// The highest segment number present (0 when none).
    pub last_segment: u64,
    /// Bytes of the segments replayed.
    pub bytes: u64,
    pub records: u64,
    /// Segments before the last snapshot, to delete.
    pub obsolete: Vec<PathBuf>,
    /// What was cut off the last segment: (file, offset, bytes), if anything.
    pub truncated: Option<(PathBuf, u64, u64)>,
}

/// How one segment ended.
enum End {
    Clean,
    /// A damaged or cut record at this offset that runs to the end of the
    /// file: a torn write.
    Torn(u64, String),
}

/// Reads the segments of `dir` and rebuilds the state. A torn tail of the
/// last segment is cut off the file (truncated) and reported in
/// [`Replayed::truncated`].
pub fn replay(dir: &Path) -> Result<Replayed, ReplayError> {
    let all = segments(dir).map_err(|e| ReplayError::Io(dir.to_path_buf(), e))?;
    let mut out = Replayed {
        last_segment: all.last().map_or(0, |(n, _)| *n),
        ..Replayed::default()
    };
    // Start at the last segment that begins with a snapshot.
    let mut start = 0;
    for (i, (_, path)) in all.iter().enumerate().rev() {
        if starts_with_snapshot(path)? {
            start = i;
            break;
        }
    }
    out.obsolete = all.iter().take(start).map(|(_, p)| p.clone()).collect();
    let count = all.len();
    for (i, (_, path)) in all.iter().enumerate().skip(start) {
        let last = i + 1 == count;
        let (end, len) = read_segment(path, &mut out, last)?;
        if let End::Torn(offset, why) = end {
            if !last {
                return Err(ReplayError::Corrupt {
                    file: path.clone(),
                    offset,
                    why,
                });
            }
            if offset < MAGIC.len() as u64 {
                // Not even the magic: the segment never held a record.
                fs::remove_file(path).map_err(|e| ReplayError::Io(path.clone(), e))?;
            } else {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| ReplayError::Io(path.clone(), e))?;
                file.set_len(offset)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| ReplayError::Io(path.clone(), e))?;
            }
            out.truncated = Some((path.clone(), offset, len - offset));
            out.bytes += offset;
        } else {
            out.bytes += len;
        }
    }
    Ok(out)
}

fn starts_with_snapshot(path: &Path) -> Result<bool, ReplayError> {
    let mut head = [0u8; MAGIC.len() + HEADER + 1];
    let mut f = File::open(path).map_err(|e| ReplayError::Io(path.to_path_buf(), e))?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(head.get(..MAGIC.len()) == Some(&MAGIC[..])
            && head.last() == Some(&record::kind::SNAPSHOT)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(ReplayError::Io(path.to_path_buf(), e)),
    }
}

/// Applies the records of one segment; returns how it ended and its
/// length. The file is read whole (a segment is at most a little over
/// `--segment-bytes`, 64 MiB by default and 1 GiB at most, or one record
/// past it; a snapshot is the size of the live data) and records are decoded in
/// place: a body is a slice of that buffer until the broker copies it.
fn read_segment(path: &Path, out: &mut Replayed, last: bool) -> Result<(End, u64), ReplayError> {
    let io_err = |e| ReplayError::Io(path.to_path_buf(), e);
    let corrupt = |offset: usize, why: String| ReplayError::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        why,
    };
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err)?;
    let data = Bytes::from(data);
    let len = data.len();
    let torn = |at: usize, why: &str| Ok((End::Torn(at as u64, why.to_string()), len as u64));
    match data.get(..MAGIC.len()) {
        Some(m) if m == &MAGIC[..] => {}
        // A segment cut before its magic was complete.
        None if last && MAGIC.starts_with(&data) => return torn(0, "the file is cut short"),
        _ => return Err(corrupt(0, "not a log segment (bad magic)".into())),
    }
    let mut pos = MAGIC.len();
    while pos < len {
        let mut header = [0u8; HEADER];
        match data.get(pos..pos + HEADER) {
            Some(h) => header.copy_from_slice(h),
            None => return torn(pos, "a record header is cut short"),
        }
        let (n, crc) = match record::header_len(&header) {
            Ok(v) => v,
            Err(bad) => {
                // Zeros from here to the end: a write that did not land.
                // Anything else is damage.
                if data
                    .get(pos..)
                    .is_some_and(|rest| rest.iter().all(|&b| b == 0))
                {
                    return torn(pos, "zeros after the last record");
                }
                return Err(corrupt(pos, bad.to_string()));
            }
        };
        let end = pos + HEADER + n;
        if end > len {
            return torn(pos, "a record is cut short");
        }
        let body = data.slice(pos + HEADER..end);
        match record::decode(&body, crc) {
            Ok(rec) => {
                out.state.apply(rec);
                out.records += 1;
            }
            // The last record of the last segment, half written.
            Err(Bad::Checksum) if last && end == len => {
                return torn(pos, &Bad::Checksum.to_string());
            }
            Err(bad) => return Err(corrupt(pos, bad.to_string())),
        }
        pos = end;
    }
    Ok((End::Clean, len as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::encode;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-log-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn enqueue(seq: u64, body: &str) -> Record {
        Record::Enqueue {
            seq,
            deadline: u64::MAX,
            timeout_s: 60,
            to: b("q"),
            reply: None,
            body: b(body),
        }
    }

    /// Writes `records` as segment `n`; returns the offset of each record.
    fn write_segment(dir: &Path, n: u64, records: &[Record]) -> Vec<usize> {
        let mut buf = MAGIC.to_vec();
        let mut offsets = Vec::new();
        for r in records {
            offsets.push(buf.len());
            encode(&mut buf, r);
        }
        fs::write(dir.join(segment_name(n)), &buf).unwrap();
        offsets
    }

    /// Bytes of the segments in `dir`.
    fn on_disk(dir: &Path) -> u64 {
        segments(dir)
            .unwrap()
            .iter()
            .map(|(_, p)| fs::metadata(p).unwrap().len())
            .sum()
    }

    fn bodies(s: &State) -> Vec<Bytes> {
        s.line.values().map(|m| m.body.clone()).collect()
    }

    #[test]
    fn replay_applies_every_record_in_order() {
        let dir = tempdir("order");
        write_segment(&dir, 1, &[enqueue(0, "a"), enqueue(1, "b")]);
        write_segment(&dir, 2, &[Record::Take { seq: 0 }, enqueue(2, "c")]);
        let r = replay(&dir).unwrap();
        assert_eq!(bodies(&r.state), vec![b("b"), b("c")]);
        assert_eq!(r.state.next_seq, 3);
        assert_eq!(r.records, 4);
        assert!(r.truncated.is_none());
        assert_eq!(r.last_segment, 2);
        assert_eq!(r.bytes, on_disk(&dir));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replay_starts_at_the_last_snapshot() {
        let dir = tempdir("snapshot");
        write_segment(&dir, 1, &[enqueue(0, "old")]);
        let snap = Record::Snapshot {
            next_seq: 9,
            loose_ids: 2,
            epoch_s: 7,
        };
        write_segment(&dir, 2, &[snap, enqueue(5, "new")]);
        let r = replay(&dir).unwrap();
        assert_eq!(bodies(&r.state), vec![b("new")]);
        // The snapshot's counters, which no later record raised.
        assert_eq!(
            (r.state.next_seq, r.state.loose_ids, r.state.epoch_s),
            (9, 2, 7)
        );
        assert_eq!(r.obsolete, vec![dir.join(segment_name(1))]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_byte_of_the_last_record() {
        let dir = tempdir("torn");
        let records = [enqueue(0, "one"), enqueue(1, "two"), enqueue(2, "three")];
        write_segment(&dir, 1, &[enqueue(9, "first segment")]);
        let offsets = write_segment(&dir, 2, &records);
        let path = dir.join(segment_name(2));
        let whole = fs::read(&path).unwrap();
        let last = *offsets.last().unwrap();
        for cut in last..whole.len() {
            fs::write(&path, &whole[..cut]).unwrap();
            let r = replay(&dir).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(
                bodies(&r.state),
                vec![b("one"), b("two"), b("first segment")],
                "cut at {cut}"
            );
            let expect_trunc = if cut == last { None } else { Some(last as u64) };
            assert_eq!(
                r.truncated.as_ref().map(|t| (t.1, t.2)),
                expect_trunc.map(|at| (at, (cut - last) as u64)),
                "cut at {cut}"
            );
            // What is left of the files is what was replayed.
            assert_eq!(r.bytes, on_disk(&dir), "cut at {cut}");
            assert_eq!(fs::metadata(&path).unwrap().len(), last as u64);
            // A second start finds a clean log.
            let again = replay(&dir).unwrap();
            assert!(again.truncated.is_none());
            assert_eq!(again.state.line.len(), 3);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_last_segment_cut_inside_its_magic_is_removed() {
        let dir = tempdir("magic");
        write_segment(&dir, 1, &[enqueue(0, "kept")]);
        let path = dir.join(segment_name(2));
        for cut in 0..MAGIC.len() {
            fs::write(&path, &MAGIC[..cut]).unwrap();
            let r = replay(&dir).unwrap();
            assert_eq!(bodies(&r.state), vec![b("kept")]);
            assert!(!path.exists(), "cut at {cut}");
            // The next start (with a newer segment) finds a clean log.
            write_segment(&dir, 3, &[enqueue(1, "later")]);
            assert_eq!(replay(&dir).unwrap().state.line.len(), 2);
            fs::remove_file(dir.join(segment_name(3))).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_garbled_last_record_and_trailing_zeros_are_a_torn_tail() {
        let dir = tempdir("garbled");
        let offsets = write_segment(&dir, 1, &[enqueue(0, "one"), enqueue(1, "two")]);
        let path = dir.join(segment_name(1));
        let whole = fs::read(&path).unwrap();
        // The last record's body half overwritten.
        let mut garbled = whole.clone();
        let n = garbled.len();
        garbled[n - 2] ^= 0xff;
        fs::write(&path, &garbled).unwrap();
        let r = replay(&dir).unwrap();
        assert_eq!(bodies(&r.state), vec![b("one")]);
        assert_eq!(r.truncated.map(|t| t.1), Some(offsets[1] as u64));
        // Zeros where a write did not land.
        let mut zeros = whole.clone();
        zeros.truncate(offsets[1]);
        zeros.extend_from_slice(&[0u8; 300]);
        fs::write(&path, &zeros).unwrap();
        let r = replay(&dir).unwrap();
        assert_eq!(bodies(&r.state), vec![b("one")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flipped_byte_in_the_middle_stops_replay_naming_file_and_offset() {
        let dir = tempdir("flipped");
        let records = [enqueue(0, "one"), enqueue(1, "two"), enqueue(2, "three")];
        let offsets = write_segment(&dir, 1, &records);
        let path = dir.join(segment_name(1));
        let whole = fs::read(&path).unwrap();
        // Every byte of the middle record, and of the magic.
        let middle = offsets[1]..offsets[2];
        for i in (0..MAGIC.len()).chain(middle.clone()) {
            let mut bad = whole.clone();
            bad[i] ^= 0x01;
            fs::write(&path, &bad).unwrap();
            match replay(&dir) {
                Err(ReplayError::Corrupt { file, offset, why }) => {
                    assert_eq!(file, path, "byte {i}");
                    let want = if i < MAGIC.len() { 0 } else { middle.start };
                    assert_eq!(offset, want as u64, "byte {i}: {why}");
                }
                other => panic!("byte {i}: {other:?}"),
            }
            // Nothing was cut.
            assert_eq!(fs::read(&path).unwrap(), bad);
        }
        // The same damage in an older segment, even in its last record.
        fs::write(&path, &whole).unwrap();
        write_segment(&dir, 2, &[enqueue(3, "four")]);
        let mut bad = whole.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let err = replay(&dir).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(&format!("offset {}", offsets[2])), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn switch_records_rebuild_queues_and_counters() {
        let dir = tempdir("switch");
        let store = |id: u64, p: &str| Record::SwitchStore {
            name: b("svc"),
            id,
            time: 1,
            origin: Origin {
                session: true,
                name: b("c"),
            },
            kind: SwitchKind::Request(b("r")),
            payload: b(p),
        };
        write_segment(
            &dir,
            1,
            &[
                Record::QueueCreate {
                    name: b("svc"),
                    next_id: 0,
                },
                store(0, "a"),
                store(1, "b"),
                Record::SwitchSeen {
                    name: b("svc"),
                    id: 1,
                },
                Record::SwitchAck {
                    name: b("svc"),
                    id: 0,
                },
                Record::SwitchIds {
                    name: b("svc"),
                    next_id: 5,
                },
                // About a queue that is not there: ignored.
                Record::SwitchAck {
                    name: b("nope"),
                    id: 0,
                },
                Record::LooseIds { next: 3 },
            ],
        );
        let r = replay(&dir).unwrap();
        let q = &r.state.switch[&b("svc")];
        assert_eq!(q.next_id, 5);
        assert_eq!(q.messages.len(), 1);
        assert!(q.messages[&1].seen);
        assert_eq!(r.state.loose_ids, 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    // Which files are segments, and a last segment that is not a log or
    // was cut in its first record.

    #[test]
    fn only_files_named_by_20_digits_are_segments() {
        let dir = tempdir("names");
        for name in [
            "12.log",
            "aaaaaaaaaaaaaaaaaaaa.log",
            "00000000000000000001.log.tmp",
            "00000000000000000002",
            "00000000000000000003.log",
        ] {
            fs::write(dir.join(name), MAGIC).unwrap();
        }
        assert_eq!(
            segments(&dir).unwrap(),
            vec![(3, dir.join("00000000000000000003.log"))]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_last_segment_that_is_no_log_stops_replay_and_one_cut_in_its_first_record_keeps_its_magic()
    {
        let dir = tempdir("last");
        write_segment(&dir, 1, &[enqueue(0, "kept")]);
        let path = dir.join(segment_name(2));
        // Shorter than the magic, but not a piece of it.
        fs::write(&path, b"abc").unwrap();
        match replay(&dir) {
            Err(ReplayError::Corrupt { file, offset, .. }) => {
                assert_eq!((file, offset), (path.clone(), 0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        // The magic and five bytes of a record: cut back to the magic.
        let mut cut = MAGIC.to_vec();
        encode(&mut cut, &enqueue(1, "lost"));
        cut.truncate(MAGIC.len() + 5);
        fs::write(&path, &cut).unwrap();
        let r = replay(&dir).unwrap();
        assert_eq!(bodies(&r.state), vec![b("kept")]);
        assert_eq!(r.truncated.map(|t| (t.1, t.2)), Some((8, 5)));
        assert_eq!(fs::read(&path).unwrap(), MAGIC);
        fs::remove_dir_all(&dir).unwrap();
    }
}
