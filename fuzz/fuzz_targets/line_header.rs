//! Fuzzes the parser of header lines the server sends
//! (`switchboard::line::wire::parse_header`), shared by the client and the
//! load tools.
//!
//! The input is one line. Parsing may not panic, must not depend on a line
//! end being present, and must give fields a server could have written
//! (never empty, never holding whitespace); a frame written back the way the
//! server writes it must parse to the same header.
//!
//! Run: `cd fuzz && cargo fuzz run line_header`.

#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchboard::broker::frames::put_decimal;
use switchboard::line::wire::message_head;
use switchboard::line::wire::{is_space, parse_header, Header};

fn check_field(f: &[u8]) {
    assert!(!f.is_empty(), "empty field");
    assert!(!f.iter().any(|&b| is_space(b)), "whitespace in field {f:?}");
}

fuzz_target!(|line: &[u8]| {
    let header = parse_header(line);
    let mut ended = line.to_vec();
    ended.extend_from_slice(b"\r\n");
    assert_eq!(header, parse_header(&ended));
    let Ok(header) = header else {
        return;
    };
    let mut out = BytesMut::new();
    match header {
        Header::Message {
            len,
            timeout_s,
            to,
            reply,
        } => {
            check_field(to);
            reply.map(check_field);
            let Ok(len) = usize::try_from(len) else {
                return;
            };
            message_head(&mut out, to, reply, timeout_s, len);
        }
        Header::Publication {
            len,
            channel,
            content_type,
        } => {
            check_field(channel);
            check_field(content_type);
            out.put_slice(b"! ");
            put_decimal(&mut out, len);
            out.put_u8(b' ');
            out.put_slice(channel);
            out.put_u8(b' ');
            out.put_slice(content_type);
            out.put_slice(b"\r\n");
        }
        Header::Timeout => out.put_slice(b"*\r\n"),
        Header::Error { reason } => {
            assert!(!reason.first().is_some_and(|&b| is_space(b)));
            assert!(!reason.last().is_some_and(|&b| is_space(b)));
            out.put_slice(b"- ");
            out.put_slice(reason);
            out.put_slice(b"\r\n");
        }
    }
    assert_eq!(parse_header(&out), Ok(header));
});
