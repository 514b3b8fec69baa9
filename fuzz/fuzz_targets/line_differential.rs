//! Differential fuzzing of the two readers of line-protocol command lines:
//! the server's command decoder (`switchboard::line::codec`) and the header
//! parser the client and the load tools read the server's frames with
//! (`switchboard::line::wire::parse_header`).
//!
//! Both read the forms `> LEN TIMEOUT TO [REPLY]` and `! LEN CHANNEL
//! [TYPE]`: a client writes them, and the server writes a queue message
//! back in the same form. On any line starting with one of these verbs,
//! both must accept it with the same fields, or both refuse it for the same
//! kind of reason (form, length, timeout). A message the server accepts,
//! written back the way the server writes it, reads back the same.
//!
//! Run: `fuzz/run.sh line_differential`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::line::codec::{Command, Decoder, LineError};
use switchboard::line::wire::{
    is_space, message_head, parse_header, Header, HeaderError, DEFAULT_CONTENT_TYPE,
};

/// The longest body the target builds to complete a command.
const MAX_BODY: u64 = 1 << 16;

/// What a line means, in terms both readers can say.
#[derive(Debug, PartialEq, Eq)]
enum Meaning {
    Message {
        len: u64,
        timeout_s: u64,
        to: Vec<u8>,
        reply: Option<Vec<u8>>,
    },
    Publication {
        len: u64,
        channel: Vec<u8>,
        content_type: Vec<u8>,
    },
    /// The server waits for a body longer than the target builds.
    LongBody,
    BadForm,
    BadLength,
    BadTimeout,
}

fn client_reads(line: &[u8]) -> Meaning {
    match parse_header(line) {
        Ok(Header::Message { len, .. }) if len > MAX_BODY => Meaning::LongBody,
        Ok(Header::Message {
            len,
            timeout_s,
            to,
            reply,
        }) => Meaning::Message {
            len,
            timeout_s,
            to: to.to_vec(),
            reply: reply.map(<[u8]>::to_vec),
        },
        Ok(Header::Publication { len, .. }) if len > MAX_BODY => Meaning::LongBody,
        Ok(Header::Publication {
            len,
            channel,
            content_type,
        }) => Meaning::Publication {
            len,
            channel: channel.to_vec(),
            content_type: content_type.to_vec(),
        },
        Ok(other) => panic!("{line:?} read as {other:?}"),
        Err(HeaderError::Unknown) => Meaning::BadForm,
        Err(HeaderError::BadLength) => Meaning::BadLength,
        Err(HeaderError::BadTimeout) => Meaning::BadTimeout,
    }
}

fn server_reads(line: &[u8], body_len: u64) -> Meaning {
    let mut buf = BytesMut::from(line);
    buf.extend_from_slice(b"\r\n");
    if body_len > 0 {
        buf.resize(buf.len() + body_len as usize, b'x');
        buf.extend_from_slice(b"\r\n");
    }
    let mut decoder = Decoder::new(buf.len() + 1, usize::MAX);
    match decoder.decode(&mut buf) {
        Ok(Some(Command::Send {
            to,
            reply,
            timeout_s,
            body,
        })) => Meaning::Message {
            len: body.len() as u64,
            timeout_s,
            to: to.to_vec(),
            reply: reply.map(|r| r.to_vec()),
        },
        Ok(Some(Command::Publish {
            channel,
            content_type,
            body,
        })) => Meaning::Publication {
            len: body.len() as u64,
            channel: channel.to_vec(),
            content_type: content_type.map_or(DEFAULT_CONTENT_TYPE.to_vec(), |t| t.to_vec()),
        },
        Ok(None) => Meaning::LongBody,
        Ok(Some(other)) => panic!("{line:?} decoded as {other:?}"),
        Err(LineError::MessageFormat | LineError::PublishFormat | LineError::BodyNotTerminated) => {
            Meaning::BadForm
        }
        Err(LineError::InvalidLength) => Meaning::BadLength,
        Err(LineError::InvalidTimeout) => Meaning::BadTimeout,
        Err(e) => panic!("{line:?} refused with {e:?}"),
    }
}

fuzz_target!(|line: &[u8]| {
    if line.contains(&b'\n') {
        return;
    }
    let verb = line
        .split(|&b| is_space(b))
        .find(|f| !f.is_empty())
        .unwrap_or_default();
    if verb != b">" && verb != b"!" {
        return;
    }
    let client = client_reads(line);
    let body_len = match client {
        Meaning::Message { len, .. } | Meaning::Publication { len, .. } => len,
        _ => 0,
    };
    let server = server_reads(line, body_len);
    assert_eq!(client, server, "{line:?}");

    if let Meaning::Message {
        len,
        timeout_s,
        to,
        reply,
    } = &server
    {
        let mut out = BytesMut::new();
        message_head(&mut out, to, reply.as_deref(), *timeout_s, *len as usize);
        let written = out.strip_suffix(b"\r\n").unwrap_or(&out);
        assert_eq!(client_reads(written), server);
    }
});
