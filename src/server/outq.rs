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
    frames: Frames,
    bytes: usize,
}

/// The unsent frames, in order. One frame, the usual case (a fan-out
/// delivery batched for the turn, a proxied response), is kept without an
/// allocation; a second one moves both into a `VecDeque`.
#[derive(Default, Debug)]
enum Frames {
    #[default]
    Empty,
    One(Bytes),
    Many(VecDeque<Bytes>),
}

impl Frames {
    fn len(&self) -> usize {
        match self {
            Frames::Empty => 0,
            Frames::One(_) => 1,
            Frames::Many(q) => q.len(),
        }
    }
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        match &mut self.frames {
            Frames::Many(q) => q.push_back(frame),
            Frames::Empty => self.frames = Frames::One(frame),
            Frames::One(_) => {
                if let Frames::One(first) = std::mem::take(&mut self.frames) {
                    let mut q = VecDeque::with_capacity(4);
                    q.push_back(first);
                    q.push_back(frame);
                    self.frames = Frames::Many(q);
                }
            }
        }
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
        self.frames.len() == 0
    }

    /// Gives back the queue's memory once it has drained, so an idle
    /// connection holds none (one small allocation per turn with two
    /// frames or more is cheap next to the write it serves).
    pub fn shrink(&mut self) {
        if let Frames::Many(q) = &self.frames {
            if q.is_empty() {
                self.frames = Frames::Empty;
            }
        }
    }

    /// Writes queued frames to `w` until done, `WouldBlock`, or `budget` bytes
    /// were written. Returns the bytes written with the outcome.
    pub fn flush(&mut self, w: &mut impl Write, budget: usize) -> io::Result<(usize, Flushed)> {
        let mut written = 0usize;
        while !self.is_empty() {
            if written >= budget {
                return Ok((written, Flushed::Budget));
            }
            let wrote = match &self.frames {
                Frames::Empty => break,
                // The usual case in fan-out: one (batched) frame per turn.
                Frames::One(front) => w.write(front),
                Frames::Many(q) => match q.front() {
                    Some(front) if q.len() == 1 => w.write(front),
                    // A few frames (a proxied answer: head, body, end) fill
                    // a small array; filling 512 empty slices every time
                    // cost more than the rest of the flush.
                    _ if q.len() <= SMALL_IOV => write_frames::<SMALL_IOV>(w, q),
                    _ => write_frames::<MAX_IOV>(w, q),
                },
            };
            let n = match wrote {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((written, Flushed::WouldBlock));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
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
        match &mut self.frames {
            Frames::Empty => {}
            Frames::One(front) => {
                if front.len() > n {
                    front.advance(n);
                } else {
                    self.frames = Frames::Empty;
                }
            }
            Frames::Many(q) => {
                while n > 0 {
                    let Some(front) = q.front_mut() else {
                        return;
                    };
                    if front.len() > n {
                        front.advance(n);
                        return;
                    }
                    n -= front.len();
                    q.pop_front();
                }
            }
        }
    }

    /// The frames' allocated slots (none while there is at most one).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        match &self.frames {
            Frames::Many(q) => q.capacity(),
            _ => 0,
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

    impl Trickle {
        fn new(per_call: usize, calls_left: usize) -> Trickle {
            Trickle {
                got: Vec::new(),
                per_call,
                calls_left,
            }
        }
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
        let mut w = Trickle::new(4, 2);
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
        let mut w = Trickle::new(30, 100);
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
        assert!(q.capacity() >= 2, "shrunk while frames were queued");
        let mut w = Trickle::new(100, 100);
        assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), (6, Flushed::All));
        assert_eq!(q.capacity(), 0);
        // A queue emptied by a refused write as well.
        q.push(Bytes::from_static(b"three"));
        w.calls_left = 0;
        assert_eq!(
            q.flush(&mut w, usize::MAX).unwrap(),
            (0, Flushed::WouldBlock)
        );
        assert_eq!(q.bytes(), 5);
    }

    #[test]
    fn one_frame_needs_no_allocation_and_keeps_its_order_with_more() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"first frame"));
        assert_eq!((q.capacity(), q.cost()), (0, 11 + FRAME_COST));
        let mut w = Trickle::new(6, 1);
        assert_eq!(
            q.flush(&mut w, usize::MAX).unwrap(),
            (6, Flushed::WouldBlock)
        );
        assert_eq!((q.bytes(), q.capacity()), (5, 0));
        // A second frame behind the rest of the first.
        q.push(Bytes::from_static(b", second"));
        assert!(q.capacity() >= 2);
        assert_eq!(q.cost(), 13 + 2 * FRAME_COST);
        w.calls_left = 100;
        assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), (13, Flushed::All));
        assert_eq!(w.got, b"first frame, second");
        assert!(q.is_empty());
        assert_eq!(q.capacity(), 0);
        // The queue is part of every connection: it stays small.
        assert!(std::mem::size_of::<OutQueue>() <= 48);
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
