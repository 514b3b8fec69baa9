//! Fuzzes the chunked transfer-coding decoder (`switchboard::http::chunked`).
//!
//! The first byte picks a split position; the rest is the byte stream. The
//! stream is decoded whole and in two pieces. Neither may panic; both must
//! give the same body or the same error, and leave the same bytes after a
//! complete body. A body never passes its limit, and a spent decoder takes
//! nothing more. Small limits make every limit reachable.
//!
//! Run: `fuzz/run.sh chunked`.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchboard::http::chunked::{ChunkError, ChunkedDecoder};

const MAX_BODY: usize = 512;
const MAX_TRAILERS: usize = 128;

fn run(pieces: &[&[u8]]) -> (Result<Option<Bytes>, ChunkError>, Vec<u8>) {
    let mut decoder = ChunkedDecoder::new(MAX_BODY, MAX_TRAILERS);
    let mut buf = BytesMut::new();
    let mut result = Ok(None);
    for piece in pieces {
        // Bytes after the body belong to the next message: they stay.
        buf.extend_from_slice(piece);
        if !matches!(result, Ok(None)) {
            continue;
        }
        result = decoder.decode(&mut buf);
        match &result {
            Ok(None) => assert!(buf.is_empty(), "an unfinished body left bytes"),
            Ok(Some(body)) => {
                assert!(body.len() <= MAX_BODY);
                assert!(decoder.is_done());
                let left = buf.len();
                assert_eq!(decoder.decode(&mut buf), Ok(Some(Bytes::new())));
                assert_eq!(buf.len(), left, "a spent decoder took bytes");
            }
            Err(_) => {}
        }
    }
    (result, buf.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let at = usize::from(first) % (stream.len() + 1);
    let (a, b) = stream.split_at(at);
    let whole = run(&[stream]);
    let split = run(&[a, b]);
    assert_eq!(whole.0, split.0);
    if let Ok(Some(_)) = whole.0 {
        assert_eq!(whole.1, split.1);
    }
});
