//! Fuzzes the WebSocket frame decoder (`switchboard::http::websocket`).
//!
//! The first byte picks a split position (as a fraction of the rest); the
//! rest is the byte stream a client sends. The stream is decoded whole and
//! in two pieces. Neither may panic, and both must give the same events and
//! the same error, and leave the same bytes unless an error ended the
//! stream. Every event must keep the protocol's promises: messages within
//! the limit, text and close reasons UTF-8, control payloads at most 125
//! bytes. A small limit makes it reachable.
//!
//! Run: `cd fuzz && cargo fuzz run websocket_frame`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::http::websocket::{Decoder, Event, WsError, MAX_CONTROL};

const MAX_MESSAGE: usize = 300;

struct Outcome {
    events: Vec<Event>,
    error: Option<WsError>,
    left: Vec<u8>,
}

fn check(event: &Event) {
    match event {
        Event::Message { text, data } => {
            assert!(data.len() <= MAX_MESSAGE);
            if *text {
                assert!(std::str::from_utf8(data).is_ok());
            }
        }
        Event::Ping(p) | Event::Pong(p) => assert!(p.len() <= MAX_CONTROL),
        Event::Close { reason, .. } => {
            assert!(reason.len() <= MAX_CONTROL - 2);
            assert!(std::str::from_utf8(reason).is_ok());
        }
    }
}

fn run(pieces: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new(MAX_MESSAGE);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut error = None;
    'feed: for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(event)) => {
                    check(&event);
                    events.push(event);
                }
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        assert!(decoder.held() <= MAX_MESSAGE);
    }
    Outcome {
        events,
        error,
        left: buf.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let at = stream.len() * usize::from(first) / 255;
    let (a, b) = stream.split_at(at);
    let whole = run(&[stream]);
    let split = run(&[a, b]);
    assert_eq!(whole.events, split.events);
    assert_eq!(whole.error, split.error);
    if whole.error.is_none() {
        assert_eq!(whole.left, split.left);
    }
});
