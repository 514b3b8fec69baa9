//! A connection's output queue: shared frames waiting to be written.
//!
//! Frames are `Bytes` handles, usually shared with every other subscriber of
//! the same message; the queue owns no byte buffers of its own. A flush writes
//! as many frames as the socket takes with vectored writes.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// Most slices handed to one `writev`.
const MAX_IOV: usize = 512;

/// Up to this many queued frames, the slices for `writev` live in a small
/// array.
const SMALL_IOV: usize = 8;

/// What one queued frame costs besides its bytes: its `Bytes` handle in the
/// queue (32 bytes) and, for a frame of its own, the allocation's header.
pub const FRAME_COST: usize = 48;

/// The result of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket would block; the rest stays queued.
    WouldBlock,
    /// The per-turn byte budget ran out; flush again next turn.
    Budget,
}

#[derive(Default, Debug)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Unsent bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the queue costs in memory, for the backlog limit: its unsent
    /// bytes plus [`FRAME_COST`] per frame, so that a flood of tiny frames
    /// (`*\r\n` is 3 bytes) is bounded as well as a few large ones.
    pub fn cost(&self) -> usize {
        self.bytes + self.frames.len() * FRAME_COST
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Gives back the queue's memory once it has drained, so an idle
    /// connection holds none (one small allocation per busy turn is cheap
    /// next to the write it serves).
    pub fn shrink(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// Writes queued frames to `w` until done, `WouldBlock`, or `budget` bytes
    /// were written. Returns the bytes written with the outcome.
    pub fn flush(&mut self, w: &mut impl Write, budget: usize) -> io::Result<(usize, Flushed)> {
        let mut written = 0usize;
        while !self.frames.is_empty() {
            if written >= budget {
                return Ok((written, Flushed::Budget));
            }
            let single = match self.frames.front() {
                Some(front) if self.frames.len() == 1 => Some(front),
                _ => None,
            };
            let n = if let Some(front) = single {
                // The usual case in fan-out: one (batched) frame per turn.
                match w.write(front) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok((written, Flushed::WouldBlock));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            } else {
                // A few frames (a proxied answer: head, body, end) fill a
                // small array; filling 512 empty slices every time cost
                // more than the rest of the flush.
                let wrote = if self.frames.len() <= SMALL_IOV {
                    write_frames::<SMALL_IOV>(w, &self.frames)
                } else {
                    write_frames::<MAX_IOV>(w, &self.frames)
                };
                match wrote {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.shrink();
                        return Ok((written, Flushed::WouldBlock));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n > self.bytes {
                return Err(io::Error::other("write reported more bytes than queued"));
            }
            self.consume(n);
            written += n;
        }
        self.shrink();
        Ok((written, Flushed::All))
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.frames.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

/// One vectored write of the first `N` frames at most.
fn write_frames<const N: usize>(w: &mut impl Write, frames: &VecDeque<Bytes>) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    let mut count = 0;
    for (slot, frame) in slices.iter_mut().zip(frames.iter()) {
        *slot = IoSlice::new(frame);
        count += 1;
    }
    w.write_vectored(slices.get(..count).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call, then blocks.
    struct Trickle {
        got: Vec<u8>,
        per_call: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for b in bufs {
                let take = (self.per_call - n).min(b.len());
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.per_call {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut q = OutQueue::default();
        for s in ["hello ", "shared ", "world"] {
            q.push(Bytes::from_static(s.as_bytes()));
        }
        assert_eq!(q.bytes(), 18);
        let mut w = Trickle {
            got: Vec::new(),
            per_call: 4,
            calls_left: 2,
        };
        assert_eq!(
            q.flush(&mut w, usize::MAX).unwrap(),
            (8, Flushed::WouldBlock)
        );
        assert_eq!(q.bytes(), 10);
        w.calls_left = 100;
        assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), (10, Flushed::All));
        assert_eq!(w.got, b"hello shared world");
        assert!(q.is_empty());
    }

    #[test]
    fn budget_stops_a_flush() {
        let mut q = OutQueue::default();
        for _ in 0..10 {
            q.push(Bytes::from_static(b"0123456789"));
        }
        let mut w = Trickle {
            got: Vec::new(),
            per_call: 30,
            calls_left: 100,
        };
        assert_eq!(q.flush(&mut w, 50).unwrap(), (60, Flushed::Budget));
        assert_eq!(q.bytes(), 40);
    }

    #[test]
    fn cost_counts_bytes_and_frames() {
        let mut q = OutQueue::default();
        assert!(q.is_empty());
        assert_eq!(q.cost(), 0);
        q.push(Bytes::from_static(b"*\r\n"));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"0123456789"));
        assert!(!q.is_empty());
        assert_eq!(q.bytes(), 13);
        assert_eq!(q.cost(), 13 + 2 * FRAME_COST);
    }

    #[test]
    fn a_drained_queue_holds_no_memory() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"one"));
        q.push(Bytes::from_static(b"two"));
        q.shrink();
        assert!(q.frames.capacity() >= 2, "shrunk while frames were queued");
        let mut w = Trickle {
            got: Vec::new(),
            per_call: 100,
            calls_left: 100,
        };
        assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), (6, Flushed::All));
        assert_eq!(q.frames.capacity(), 0);
        // A queue emptied by a refused write as well.
        q.push(Bytes::from_static(b"three"));
        w.calls_left = 0;
        assert_eq!(
            q.flush(&mut w, usize::MAX).unwrap(),
            (0, Flushed::WouldBlock)
        );
        assert_eq!(q.bytes(), 5);
    }

    /// A writer that fails once with `first`, then takes everything.
    struct FailsOnce {
        first: Option<io::ErrorKind>,
        got: Vec<u8>,
    }

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if let Some(kind) = self.first.take() {
                return Err(kind.into());
            }
            let mut n = 0;
            for b in bufs {
                self.got.extend_from_slice(b);
                n += b.len();
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn interrupted_writes_are_retried_and_errors_returned() {
        // One frame (a plain write) and two (a vectored one).
        for frames in [&["whole"][..], &["two ", "frames"]] {
            let fill = |q: &mut OutQueue| {
                for f in frames {
                    q.push(Bytes::copy_from_slice(f.as_bytes()));
                }
            };
            let len: usize = frames.iter().map(|f| f.len()).sum();
            let mut q = OutQueue::default();
            fill(&mut q);
            let mut w = FailsOnce {
                first: Some(io::ErrorKind::Interrupted),
                got: Vec::new(),
            };
            assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), (len, Flushed::All));
            assert_eq!(w.got, frames.concat().as_bytes());

            let mut q = OutQueue::default();
            fill(&mut q);
            let mut w = FailsOnce {
                first: Some(io::ErrorKind::WouldBlock),
                got: Vec::new(),
            };
            assert_eq!(
                q.flush(&mut w, usize::MAX).unwrap(),
                (0, Flushed::WouldBlock)
            );
            assert_eq!(q.bytes(), len);

            let mut q = OutQueue::default();
            fill(&mut q);
            let mut w = FailsOnce {
                first: Some(io::ErrorKind::BrokenPipe),
                got: Vec::new(),
            };
            let err = q.flush(&mut w, usize::MAX).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            assert_eq!(q.bytes(), len);
        }
    }

    #[test]
    fn one_writev_takes_every_frame_up_to_512() {
        /// Takes everything, and keeps how many slices each call had.
        struct Counts(Vec<usize>);
        impl Write for Counts {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(1);
                Ok(buf.len())
            }
            fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
                self.0.push(bufs.len());
                Ok(bufs.iter().map(|b| b.len()).sum())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for (frames, calls) in [
            (1, vec![1]),
            (3, vec![3]),
            (8, vec![8]),
            (9, vec![9]),
            (100, vec![100]),
            (600, vec![512, 88]),
        ] {
            let mut q = OutQueue::default();
            for i in 0..frames {
                q.push(Bytes::from(format!("{i},")));
            }
            let len = q.bytes();
            let mut w = Counts(Vec::new());
            assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), (len, Flushed::All));
            assert_eq!(w.0, calls, "{frames} frames");
        }
    }

    #[test]
    fn impossible_write_count_is_an_error() {
        struct Liar;
        impl Write for Liar {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(1000)
            }
            fn write_vectored(&mut self, _: &[IoSlice<'_>]) -> io::Result<usize> {
                Ok(1000)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        assert!(q.flush(&mut Liar, usize::MAX).is_err());
    }
}
