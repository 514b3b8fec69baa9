//! Fuzzes the decoding of request-target parts (`switchboard::http::uri`).
//!
//! The first byte splits the rest into a parameter name and a string used
//! both as a path segment and as a query. Decoding may not panic; a path
//! segment never grows and is the input itself when it holds no `%`; a
//! segment escaped byte by byte decodes back to those bytes; a parameter
//! found has that name in some `name=value` pair, and none is found in a
//! query without `=`.
//!
//! Run: `fuzz/run.sh uri`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::http::uri::{path_segment, query_param};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let mut at = usize::from(first) % (rest.len() + 1);
    while !rest.is_char_boundary(at) {
        at -= 1;
    }
    let (name, raw) = rest.split_at(at);

    let segment = path_segment(raw);
    assert!(segment.len() <= raw.len());
    if !raw.contains('%') {
        assert_eq!(&*segment, raw.as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut escaped = String::with_capacity(3 * segment.len());
    for &b in segment.iter() {
        escaped.push('%');
        escaped.push(char::from(HEX[usize::from(b >> 4)]));
        escaped.push(char::from(HEX[usize::from(b & 15)]));
    }
    assert_eq!(&*path_segment(&escaped), &*segment);

    if let Some(value) = query_param(raw, name) {
        assert!(raw.contains('='));
        assert!(value.len() <= 3 * raw.len());
    }
});
