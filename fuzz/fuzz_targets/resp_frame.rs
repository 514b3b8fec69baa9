//! Fuzzes the RESP2 decoder of the cluster link
//! (`switchboard::broker::cluster::resp`).
//!
//! The first byte picks a split position (as a fraction of the rest); the
//! rest is the byte stream. The stream is decoded whole and in two pieces.
//! Neither may panic, and both must give the same frames and the same
//! error, and leave the same bytes unless an error ended the stream. Every
//! frame must respect the limits, which are small so that each is reachable.
//!
//! Run: `cd fuzz && cargo fuzz run resp_frame`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::broker::cluster::resp::{decode, Frame, Limits, RespError};

const LIMITS: Limits = Limits {
    max_bulk: 64,
    max_array: 8,
    max_depth: 3,
};

fn check(frame: &Frame, depth: usize) {
    match frame {
        Frame::Bulk(Some(b)) => assert!(b.len() <= LIMITS.max_bulk),
        Frame::Array(Some(items)) => {
            assert!(items.len() <= LIMITS.max_array);
            assert!(items.is_empty() || depth < LIMITS.max_depth);
            items.iter().for_each(|f| check(f, depth + 1));
        }
        _ => {}
    }
}

fn run(pieces: &[&[u8]]) -> (Vec<Frame>, Option<RespError>, Vec<u8>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf, &LIMITS) {
                Ok(None) => break,
                Ok(Some(f)) => {
                    check(&f, 0);
                    frames.push(f);
                }
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    (frames, error, buf.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let at = stream.len() * usize::from(first) / 255;
    let (a, b) = stream.split_at(at);
    let whole = run(&[stream]);
    let split = run(&[a, b]);
    assert_eq!(whole.0, split.0);
    assert_eq!(whole.1, split.1);
    if whole.1.is_none() {
        assert_eq!(whole.2, split.2);
    }
});
