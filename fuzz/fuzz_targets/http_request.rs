//! Fuzzes the HTTP request decoder (`switchboard::http::codec`).
//!
//! The first byte picks a split position; the rest is the byte stream. The
//! stream is decoded whole and in two pieces. Neither may panic, and both
//! must give the same requests and errors, and leave the same bytes unless
//! an error ended the stream. `Continue` events are left out of the
//! comparison (they depend on how bytes arrive) but must come at most once
//! per request. Small limits make every limit reachable.
//!
//! Run: `cd fuzz && cargo fuzz run http_request corpus/http_request
//! seeds/http_request -- -dict=http_request.dict`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::http::codec::{Decoder, Event, HttpError, Limits, Request};

const LIMITS: Limits = Limits {
    max_head: 512,
    max_uri: 128,
    max_body: 1024,
    max_headers: 8,
};

struct Outcome {
    results: Vec<Result<Request, HttpError>>,
    left: Vec<u8>,
}

fn run(pieces: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut results = Vec::new();
    let mut continues = 0;
    'feed: for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(Event::Continue)) => {
                    continues += 1;
                    assert!(continues <= 1, "two Continue events for one request");
                }
                Ok(Some(Event::Request(req))) => {
                    continues = 0;
                    assert!(req.body.len() <= LIMITS.max_body);
                    assert!(req.target().len() <= LIMITS.max_uri);
                    assert!(req.headers().len() <= LIMITS.max_headers);
                    results.push(Ok(req));
                }
                Err(err) => {
                    assert_eq!(decoder.decode(&mut buf), Err(err), "errors are sticky");
                    results.push(Err(err));
                    break 'feed;
                }
            }
        }
    }
    Outcome {
        results,
        left: buf.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let at = usize::from(first) % (stream.len() + 1);
    let (a, b) = stream.split_at(at);
    let whole = run(&[stream]);
    let split = run(&[a, b]);
    assert_eq!(whole.results, split.results);
    if !matches!(whole.results.last(), Some(Err(_))) {
        assert_eq!(whole.left, split.left);
    }
});
