//! HTTP/1.x responses read by a client of another server: bytes in,
//! [`Answer`]s out.
//!
//! Owns: finding where a response head ends and parsing it (httparse),
//! skipping `1xx` interim responses, the body's framing (`Content-Length`,
//! `chunked` through the shared decoder of `chunked.rs`, or until the
//! connection closes), keep-alive, and `Retry-After`. Bodies are consumed
//! and dropped: a caller that delivers requests wants the status.
//!
//! Must not touch: sockets, requests, what a status means to the caller.
//! The same rules as the request codec: the buffer is only appended to
//! between calls, bytes after a response belong to the next one, and after
//! an error the decoder stays failed.

use std::fmt;

use bytes::{Buf, BytesMut};

use super::chunked::{ChunkError, ChunkedDecoder};

/// Longest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 64;
/// Longest chunked body accepted (its data is decoded to be dropped).
pub const MAX_CHUNKED_BODY: usize = 1 << 20;

/// One complete response, as far as a caller needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The connection may carry another request.
    pub keep_alive: bool,
    /// `Retry-After` in seconds, when it is a number.
    pub retry_after_s: Option<u64>,
}

/// Why a response could not be read; the connection cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    HeadTooLarge,
    /// httparse refused the head.
    Malformed(&'static str),
    Body(ChunkError),
    /// `101 Switching Protocols` to a request that asked for none.
    Upgrade,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::HeadTooLarge => write!(f, "response head larger than {MAX_HEAD} bytes"),
            ClientError::Malformed(what) => write!(f, "malformed response: {what}"),
            ClientError::Body(e) => write!(f, "response body: {e}"),
            ClientError::Upgrade => f.write_str("unexpected 101 Switching Protocols"),
        }
    }
}

impl std::error::Error for ClientError {}

enum State {
    /// Waiting for (more of) a head; `scanned`: bytes already searched.
    Head {
        scanned: usize,
    },
    /// Skipping a body of this many more bytes.
    Length {
        answer: Answer,
        remaining: u64,
    },
    Chunked {
        answer: Answer,
        body: ChunkedDecoder,
    },
    /// The body runs until the peer closes.
    UntilClose {
        answer: Answer,
    },
    Failed(ClientError),
}

/// Decodes the responses on one client connection, in order.
pub struct ResponseDecoder {
    state: State,
    /// Bytes of the current response have been seen.
    started: bool,
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        ResponseDecoder::new()
    }
}

impl ResponseDecoder {
    pub fn new() -> ResponseDecoder {
        ResponseDecoder {
            state: State::Head { scanned: 0 },
            started: false,
        }
    }

    /// Some bytes of a response not yet complete have arrived.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Decodes from the front of `buf`. `Ok(None)`: more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Answer>, ClientError> {
        loop {
            match &mut self.state {
                State::Failed(e) => return Err(*e),
                State::Head { scanned } => {
                    if !buf.is_empty() {
                        self.started = true;
                    }
                    let from = scanned.saturating_sub(3);
                    let tail = buf.get(from..).unwrap_or_default();
                    let crlf = memchr::memmem::find(tail, b"\r\n\r\n").map(|i| from + i + 4);
                    let lf = memchr::memmem::find(tail, b"\n\n").map(|i| from + i + 2);
                    let end = match (crlf, lf) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let Some(end) = end else {
                        *scanned = buf.len();
                        if buf.len() > MAX_HEAD {
                            return Err(self.fail(ClientError::HeadTooLarge));
                        }
                        return Ok(None);
                    };
                    if end > MAX_HEAD {
                        return Err(self.fail(ClientError::HeadTooLarge));
                    }
                    let head = buf.split_to(end);
                    let parsed = match parse_head(&head) {
                        Ok(p) => p,
                        Err(e) => return Err(self.fail(e)),
                    };
                    let (answer, framing) = parsed;
                    self.state = match framing {
                        // An interim response: the real one follows.
                        Framing::Interim => State::Head { scanned: 0 },
                        Framing::Length(0) => {
                            self.state = State::Head { scanned: 0 };
                            self.started = !buf.is_empty();
                            return Ok(Some(answer));
                        }
                        Framing::Length(n) => State::Length {
                            answer,
                            remaining: n,
                        },
                        Framing::Chunked => State::Chunked {
                            answer,
                            body: ChunkedDecoder::new(MAX_CHUNKED_BODY, MAX_HEAD),
                        },
                        Framing::UntilClose => State::UntilClose { answer },
                    };
                }
                State::Length { answer, remaining } => {
                    let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    buf.advance(take);
                    *remaining -= take as u64;
                    if *remaining > 0 {
                        return Ok(None);
                    }
                    let answer = *answer;
                    self.state = State::Head { scanned: 0 };
                    self.started = !buf.is_empty();
                    return Ok(Some(answer));
                }
                State::Chunked { answer, body } => match body.decode(buf) {
                    Ok(None) => return Ok(None),
                    Ok(Some(_)) => {
                        let answer = *answer;
                        self.state = State::Head { scanned: 0 };
                        self.started = !buf.is_empty();
                        return Ok(Some(answer));
                    }
                    Err(e) => return Err(self.fail(ClientError::Body(e))),
                },
                State::UntilClose { .. } => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
    }

    /// The peer closed: a body that ran until the close is complete now.
    pub fn at_close(&mut self) -> Option<Answer> {
        match std::mem::replace(&mut self.state, State::Head { scanned: 0 }) {
            State::UntilClose { answer } => {
                self.started = false;
                Some(answer)
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    fn fail(&mut self, e: ClientError) -> ClientError {
        self.state = State::Failed(e);
        e
    }
}

enum Framing {
    Interim,
    Length(u64),
    Chunked,
    UntilClose,
}

fn parse_head(head: &[u8]) -> Result<(Answer, Framing), ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ClientError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ClientError::Malformed("too many header fields"))
        }
        Err(_) => {
            return Err(ClientError::Malformed(
                "not an HTTP/1.x status line and headers",
            ))
        }
    }
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(0);
    let mut keep_alive = minor == 1;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut retry_after_s = None;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| ClientError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ClientError::Malformed("conflicting Content-Length fields"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if last.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else {
                // Any other final coding: the body runs until the close.
                chunked = false;
                length = None;
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after_s = value.parse::<u64>().ok();
        }
    }
    let answer = Answer {
        status,
        keep_alive,
        retry_after_s,
    };
    let framing = match status {
        101 => return Err(ClientError::Upgrade),
        100..=199 => Framing::Interim,
        204 | 304 => Framing::Length(0),
        _ if chunked => Framing::Chunked,
        _ => match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        },
    };
    let answer = match framing {
        Framing::UntilClose => Answer {
            keep_alive: false,
            ..answer
        },
        _ => answer,
    };
    Ok((answer, framing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, keep_alive: bool, retry_after_s: Option<u64>) -> Answer {
        Answer {
            status,
            keep_alive,
            retry_after_s,
        }
    }

    /// Feeds `input` whole, then byte by byte, and returns the answers.
    fn both_ways(input: &[u8]) -> Vec<Answer> {
        let mut d = ResponseDecoder::new();
        let mut buf = BytesMut::from(input);
        let mut whole = Vec::new();
        while let Some(a) = d.decode(&mut buf).unwrap() {
            whole.push(a);
        }
        whole.extend(d.at_close());
        let mut d = ResponseDecoder::new();
        let mut buf = BytesMut::new();
        let mut bytewise = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Some(a) = d.decode(&mut buf).unwrap() {
                bytewise.push(a);
            }
        }
        bytewise.extend(d.at_close());
        assert_eq!(whole, bytewise);
        whole
    }

    #[test]
    fn framings_in_a_row() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
            HTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n\
            HTTP/1.0 500 Oops\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.1 429 Slow\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx\
            HTTP/1.0 200 OK\r\n\r\nuntil the close";
        assert_eq!(
            both_ways(input),
            vec![
                answer(200, true, None),
                answer(204, true, None),
                answer(503, true, Some(7)),
                answer(500, false, None),
                answer(429, false, None),
                answer(200, false, None),
            ]
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert_eq!(
            both_ways(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
            vec![answer(200, true, None)]
        );
        assert_eq!(
            both_ways(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
            vec![answer(200, true, None)]
        );
    }

    #[test]
    fn started_and_partial() {
        let mut d = ResponseDecoder::new();
        let mut buf = BytesMut::new();
        assert!(!d.started());
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(!d.started());
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(d.started());
        // Cut here by the peer: no answer at the close.
        assert_eq!(d.at_close(), None);
    }

    /// One response of a random shape and the answer it must give.
    fn response() -> impl Strategy<Value = (Vec<u8>, Answer)> {
        let status = prop_oneof![
            Just(200u16),
            Just(204),
            Just(410),
            Just(429),
            Just(500),
            Just(503)
        ];
        let body = prop::collection::vec(any::<u8>(), 0..300);
        (
            status,
            body,
            0..3u8,
            any::<bool>(),
            any::<bool>(),
            prop::option::of(0..100u64),
        )
            .prop_map(|(status, body, framing, interim, close, retry_after)| {
                let mut out = Vec::new();
                if interim {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                out.extend_from_slice(format!("HTTP/1.1 {status} X\r\n").as_bytes());
                if close {
                    out.extend_from_slice(b"Connection: close\r\n");
                }
                if let Some(s) = retry_after {
                    out.extend_from_slice(format!("Retry-After: {s}\r\n").as_bytes());
                }
                if status == 204 {
                    out.extend_from_slice(b"\r\n");
                } else if framing == 0 {
                    out.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    out.extend_from_slice(&body);
                } else {
                    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    for part in body.chunks(usize::from(framing) * 37) {
                        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                        out.extend_from_slice(part);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                let answer = Answer {
                    status,
                    keep_alive: !close,
                    retry_after_s: retry_after,
                };
                (out, answer)
            })
    }

    fn decode_pieces(pieces: &[&[u8]]) -> Result<Vec<Answer>, ClientError> {
        let mut d = ResponseDecoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            while let Some(a) = d.decode(&mut buf)? {
                got.push(a);
            }
        }
        Ok(got)
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_responses_decode_the_same_however_split(
            responses in prop::collection::vec(response(), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input: Vec<u8> = responses.iter().flat_map(|r| r.0.iter().copied()).collect();
            let expected: Vec<Answer> = responses.iter().map(|r| r.1).collect();
            prop_assert_eq!(decode_pieces(&[&input]), Ok(expected.clone()));
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in at {
                pieces.push(&input[from..cut]);
                from = cut;
            }
            pieces.push(&input[from..]);
            prop_assert_eq!(decode_pieces(&pieces), Ok(expected));
        }

        #[test]
        fn any_bytes_are_an_answer_an_error_or_a_wait(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cut in any::<prop::sample::Index>(),
        ) {
            let at = cut.index(bytes.len() + 1);
            let whole = decode_pieces(&[&bytes]);
            let split = decode_pieces(&[&bytes[..at], &bytes[at..]]);
            if whole.is_ok() {
                prop_assert_eq!(whole, split);
            }
        }
    }

    #[test]
    fn errors_stick() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 101 Switching\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let mut d = ResponseDecoder::new();
            let mut buf = BytesMut::from(bad);
            assert!(
                d.decode(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
            assert!(d.decode(&mut buf).is_err());
        }
        let mut d = ResponseDecoder::new();
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        buf.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert_eq!(d.decode(&mut buf), Err(ClientError::HeadTooLarge));
    }
}
