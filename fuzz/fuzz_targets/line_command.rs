//! Fuzzes the line protocol decoder (`switchboard::line::codec`).
//!
//! The first byte picks a split position (as a fraction of the rest); the
//! rest is the byte stream. The stream is decoded whole and in two pieces.
//! Neither may panic, and both must give the same commands and the same
//! error, and leave the same bytes and decoder state unless an error ended
//! the stream. Every decoded command must respect the limits. Small limits
//! make every limit reachable.
//!
//! Run: `cd fuzz && cargo fuzz run line_command`.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchboard::broker::queues::MAX_ADDRESSES;
use switchboard::line::codec::{Command, Decoder, LineError};

const MAX_LINE: usize = 64;
const MAX_BODY: usize = 256;

struct Outcome {
    commands: Vec<Command>,
    error: Option<LineError>,
    left: Vec<u8>,
    idle: bool,
}

/// A field of a command line: never empty, never holding whitespace.
fn check_field(f: &Bytes) {
    assert!(!f.is_empty(), "empty field");
    assert!(
        !f.iter().any(u8::is_ascii_whitespace),
        "whitespace in field {f:?}"
    );
}

fn check(cmd: &Command) {
    match cmd {
        Command::Send {
            to, reply, body, ..
        } => {
            check_field(to);
            if let Some(r) = reply {
                check_field(r);
            }
            assert!(body.len() <= MAX_BODY);
        }
        Command::Ready { addresses, .. } => {
            assert!(!addresses.is_empty() && addresses.len() <= MAX_ADDRESSES);
            addresses.iter().for_each(check_field);
        }
        Command::Query { to, body, .. } => {
            check_field(to);
            assert!(body.len() <= MAX_BODY);
        }
        Command::Quit => {}
        Command::Auth { credential } => check_field(credential),
        Command::Subscribe { channel } | Command::Unsubscribe { channel } => check_field(channel),
        Command::Publish {
            channel,
            content_type,
            body,
        } => {
            check_field(channel);
            if let Some(t) = content_type {
                check_field(t);
            }
            assert!(body.len() <= MAX_BODY);
        }
    }
}

fn run(pieces: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new(MAX_LINE, MAX_BODY);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut error = None;
    'feed: for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(cmd)) => {
                    check(&cmd);
                    commands.push(cmd);
                }
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    Outcome {
        commands,
        error,
        left: buf.to_vec(),
        idle: decoder.is_idle(),
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
    assert_eq!(whole.commands, split.commands);
    assert_eq!(whole.error, split.error);
    if whole.error.is_none() {
        assert_eq!(whole.left, split.left);
        assert_eq!(whole.idle, split.idle);
    }
});
