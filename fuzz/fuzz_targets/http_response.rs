//! Fuzzes the response decoder of outbound connections
//! (`switchboard::http::client`).
//!
//! The first byte picks a split position; the rest is the byte stream. The
//! stream is decoded whole and in two pieces. Neither may panic; when the
//! whole stream decodes without an error, both give the same answers, and
//! an error once returned is returned again.
//!
//! Run: `cd fuzz && cargo fuzz run http_response`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::http::client::{Answer, ClientError, ResponseDecoder};

fn run(pieces: &[&[u8]]) -> Result<Vec<Answer>, ClientError> {
    let mut decoder = ResponseDecoder::new();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(a)) => answers.push(a),
                Err(e) => {
                    assert_eq!(decoder.decode(&mut buf), Err(e), "errors are sticky");
                    return Err(e);
                }
            }
        }
    }
    answers.extend(decoder.at_close());
    Ok(answers)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let at = usize::from(first) % (stream.len() + 1);
    let (a, b) = stream.split_at(at);
    let whole = run(&[stream]);
    let split = run(&[a, b]);
    if whole.is_ok() {
        assert_eq!(whole, split);
    }
});
