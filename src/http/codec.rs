//! HTTP/1.x request decoding: bytes in, [`Event`]s out.
//!
//! Owns: finding where a request head ends, parsing it (with `httparse`),
//! request framing (`Content-Length`; `chunked` through `chunked.rs`), the
//! `Expect: 100-continue` signal, keep-alive defaults and the request size
//! [`Limits`].
//!
//! Must not touch: sockets, timers, logging, or anything a door decides
//! (which methods and paths exist, auth, status codes other than the framing
//! errors of [`HttpError`]). Response bytes live in `response.rs`.
//!
//! # How bytes are consumed
//!
//! [`Decoder::decode`] is called with the connection's read buffer each time
//! bytes have been appended to it. Between calls the caller may only append
//! to the buffer; the decoder remembers how far it has scanned, so no byte of
//! a head is examined twice and a head that arrives one byte at a time costs
//! linear time.
//!
//! - While a head is incomplete, nothing is consumed.
//! - Once a head is complete it is parsed once and consumed; the decoder then
//!   holds the parsed request until its body is complete. A `Content-Length`
//!   body is taken with `split_to(n).freeze()` (no copy) once all of it is in
//!   the buffer. A chunked body is de-chunked as it arrives, so its raw bytes
//!   are consumed as they are decoded.
//! - One leading empty line (`CRLF` or `LF`) before a request is consumed and
//!   ignored, as RFC 9112 §2.2 allows between pipelined requests; a second one
//!   is a 400 (msgbus answers 400 to any leading empty line).
//! - After an error the decoder stays failed and returns the same error: the
//!   connection must answer with that status and close.
//!
//! Bytes left after a complete request belong to the next request
//! (pipelining). A request with neither `Content-Length` nor
//! `Transfer-Encoding` has an empty body: requests are never read until close.

use bytes::{Buf, Bytes, BytesMut};
use memchr::{memchr, memchr3_iter};
use std::fmt;

use super::chunked::{ChunkError, ChunkedDecoder};

/// Size limits applied while decoding. Every limit is checked as bytes
/// arrive, before anything is buffered past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header lines plus the empty line, in bytes (431).
    /// Also bounds the trailer section of a chunked body.
    pub max_head: usize,
    /// Length of the request-target in bytes (414).
    pub max_uri: usize,
    /// Body length after de-chunking, in bytes (413).
    pub max_body: usize,
    /// Number of header fields (431).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_uri: 8 * 1024,
            max_body: 16 * 1024 * 1024,
            max_headers: 64,
        }
    }
}

/// The request method. Methods are case-sensitive: `get` is [`Method::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Other,
}

impl Method {
    /// Maps a method token to a [`Method`]; unknown tokens are `Other`.
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// One complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The method token, the target and the header fields.
    head: Head,
    /// The body, de-chunked when it was chunked; empty when there was none.
    pub body: Bytes,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

/// A request's method token, target and header fields, in three buffers
/// however many fields there are. (A string for the method, one for the
/// target and a string and a vector for each field made a request with one
/// header cost five allocations, one with six headers fifteen.)
#[derive(Clone, PartialEq, Eq)]
struct Head {
    /// The method, the target, then each field's name, back to back.
    strs: String,
    /// Each field's value, back to back (a value may hold any bytes).
    values: Vec<u8>,
    /// Where the method ends and where the target ends in `strs`.
    method_end: u32,
    target_end: u32,
    /// Each field's name (start and end in `strs`) and value (start and
    /// end in `values`).
    fields: Vec<[u32; 4]>,
}

impl Head {
    fn str_part(&self, from: u32, to: u32) -> &str {
        self.strs
            .get(from as usize..to as usize)
            .unwrap_or_default()
    }

    fn field(&self, at: &[u32; 4]) -> (&str, &[u8]) {
        let [name_start, name_end, value_start, value_end] = *at;
        (
            self.str_part(name_start, name_end),
            self.values
                .get(value_start as usize..value_end as usize)
                .unwrap_or_default(),
        )
    }
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Head")
            .field("method", &self.str_part(0, self.method_end))
            .field("target", &self.str_part(self.method_end, self.target_end))
            .field(
                "fields",
                &self
                    .fields
                    .iter()
                    .map(|at| {
                        let (name, value) = self.field(at);
                        (name, String::from_utf8_lossy(value))
                    })
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Request {
    /// A request with these parts. `headers`: names as received, values
    /// with surrounding whitespace removed. (A head of 4 GiB or more cannot
    /// get here, `Limits::max_head`; its parts would read as empty.)
    pub fn new<'a>(
        method_raw: &str,
        target: &str,
        minor_version: u8,
        headers: impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + Clone,
        body: Bytes,
        keep_alive: bool,
    ) -> Request {
        let (names, values) = headers.clone().fold((0, 0), |(n, v), (name, value)| {
            (n + name.len(), v + value.len())
        });
        let mut strs = String::with_capacity(method_raw.len() + target.len() + names);
        let mut value_bytes = Vec::with_capacity(values);
        let at = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        strs.push_str(method_raw);
        let method_end = at(strs.len());
        strs.push_str(target);
        let target_end = at(strs.len());
        let mut fields = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name_start = at(strs.len());
            strs.push_str(name);
            let value_start = at(value_bytes.len());
            value_bytes.extend_from_slice(value);
            fields.push([
                name_start,
                at(strs.len()),
                value_start,
                at(value_bytes.len()),
            ]);
        }
        Request {
            method: Method::from_token(method_raw),
            minor_version,
            head: Head {
                strs,
                values: value_bytes,
                method_end,
                target_end,
                fields,
            },
            body,
            keep_alive,
        }
    }

    /// The method token exactly as received.
    pub fn method_raw(&self) -> &str {
        self.head.str_part(0, self.head.method_end)
    }

    /// The raw request-target, not percent-decoded.
    pub fn target(&self) -> &str {
        self.head
            .str_part(self.head.method_end, self.head.target_end)
    }

    /// Header fields in the order received, names as received. Values have
    /// surrounding whitespace removed; obs-fold continuation lines are joined
    /// to the previous value with one space.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + Clone + '_ {
        let head = &self.head;
        head.fields.iter().map(move |at| head.field(at))
    }

    /// The value of the first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        // Names compared as bytes: no `str` slicing per field.
        let (names, name) = (self.head.strs.as_bytes(), name.as_bytes());
        let at = self.head.fields.iter().find(|&&[start, end, ..]| {
            end.saturating_sub(start) as usize == name.len()
                && names
                    .get(start as usize..end as usize)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })?;
        self.head.values.get(at[2] as usize..at[3] as usize)
    }

    /// The request-target up to its first `?`.
    pub fn path(&self) -> &str {
        let target = self.target();
        match target.split_once('?') {
            Some((path, _)) => path,
            None => target,
        }
    }

    /// The query string after the first `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }
}

/// What [`Decoder::decode`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Send `HTTP/1.1 100 Continue\r\n\r\n` now: the head of an HTTP/1.1
    /// request with `Expect: 100-continue` is complete and its body is not.
    /// At most once per request. Whether it appears depends on how the bytes
    /// arrived; the requests decoded never do.
    Continue,
    /// A complete request.
    Request(Request),
}

/// The reason of the `400` a line-protocol command gets at an HTTP door;
/// `switchboard-cli` recognises the answer.
pub const LINE_PROTOCOL_AT_HTTP_DOOR: &str =
    "this is an HTTP door, not the line protocol (a line-protocol command arrived)";

/// Why a request could not be decoded. The connection must get
/// [`HttpError::status`] and be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400: the bytes are not a well-formed HTTP/1.x request.
    BadRequest(&'static str),
    /// 414: the request-target is longer than [`Limits::max_uri`].
    UriTooLong,
    /// 431: the head is longer than [`Limits::max_head`] (or the trailers of
    /// a chunked body are).
    HeaderTooLarge,
    /// 431: more header fields than [`Limits::max_headers`].
    TooManyHeaders,
    /// 413: the body is longer than [`Limits::max_body`].
    BodyTooLarge,
    /// 505: an `HTTP/d.d` version other than 1.0 and 1.1.
    VersionNotSupported,
    /// 501: a request feature the server does not implement.
    NotImplemented(&'static str),
}

impl HttpError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::UriTooLong => 414,
            HttpError::HeaderTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::VersionNotSupported => 505,
            HttpError::NotImplemented(_) => 501,
        }
    }

    /// The reason phrase for the status line.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::BadRequest(_) => "Bad Request",
            HttpError::UriTooLong => "URI Too Long",
            HttpError::HeaderTooLarge | HttpError::TooManyHeaders => {
                "Request Header Fields Too Large"
            }
            HttpError::BodyTooLarge => "Content Too Large",
            HttpError::VersionNotSupported => "HTTP Version Not Supported",
            HttpError::NotImplemented(_) => "Not Implemented",
        }
    }

    /// A short explanation a user can act on.
    pub fn detail(&self) -> &'static str {
        match self {
            HttpError::BadRequest(detail) | HttpError::NotImplemented(detail) => detail,
            HttpError::UriTooLong => "the request-target is longer than the server accepts",
            HttpError::HeaderTooLarge => "the request head is larger than the server accepts",
            HttpError::TooManyHeaders => {
                "the request has more header fields than the server accepts"
            }
            HttpError::BodyTooLarge => "the request body is larger than the server accepts",
            HttpError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.reason(), self.detail())
    }
}

impl std::error::Error for HttpError {}

/// Incremental request decoder; one per connection.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// The one empty line allowed before this request has been consumed.
    skipped_empty_line: bool,
}

#[derive(Debug)]
enum State {
    /// Waiting for the end of a head.
    Head(HeadScan),
    /// Head consumed; waiting until `len` body bytes are in the buffer.
    Fixed {
        req: Request,
        len: usize,
        expect_continue: bool,
    },
    /// Head consumed; de-chunking the body as it arrives.
    Chunked {
        req: Request,
        chunks: ChunkedDecoder,
        expect_continue: bool,
    },
    Failed(HttpError),
}

impl Default for State {
    fn default() -> Self {
        State::Head(HeadScan::default())
    }
}

/// How the body of a parsed head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::default(),
            skipped_empty_line: false,
        }
    }

    /// True while a request head has been consumed and its body is still
    /// incomplete (the request is held inside the decoder).
    pub fn mid_request(&self) -> bool {
        matches!(self.state, State::Fixed { .. } | State::Chunked { .. })
    }

    /// Decodes from the front of `buf`. `Ok(None)`: more bytes are needed.
    /// `Err`: the connection must get that status and close; every later
    /// call returns the same error. See the module header for what is
    /// consumed when.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, HttpError> {
        let result = match std::mem::take(&mut self.state) {
            State::Failed(err) => Err(err),
            State::Head(scan) => self.decode_head(scan, buf),
            State::Fixed {
                req,
                len,
                expect_continue,
            } => self.decode_fixed(req, len, expect_continue, buf),
            State::Chunked {
                req,
                chunks,
                expect_continue,
            } => self.decode_chunked(req, chunks, expect_continue, buf),
        };
        if let Err(err) = result {
            self.state = State::Failed(err);
        }
        result
    }

    fn decode_head(
        &mut self,
        mut scan: HeadScan,
        buf: &mut BytesMut,
    ) -> Result<Option<Event>, HttpError> {
        if scan.pos == 0 {
            if !self.skipped_empty_line {
                let skip = match (buf.first(), buf.get(1)) {
                    (Some(b'\n'), _) => 1,
                    (Some(b'\r'), Some(b'\n')) => 2,
                    (Some(b'\r'), None) => {
                        // Maybe the start of the allowed empty line.
                        self.state = State::Head(scan);
                        return Ok(None);
                    }
                    _ => 0,
                };
                if skip > 0 {
                    buf.advance(skip);
                    self.skipped_empty_line = true;
                }
            }
            match buf.first() {
                None => {
                    self.state = State::Head(scan);
                    return Ok(None);
                }
                Some(b'\r' | b'\n') => {
                    return Err(HttpError::BadRequest("empty line before the request line"))
                }
                // No HTTP method starts with a line-protocol command
                // character: a line client at the wrong door is told at
                // once, instead of waiting for a head that never comes.
                Some(b'>' | b'<' | b'?' | b'.' | b'+' | b'~' | b'!') => {
                    return Err(HttpError::BadRequest(LINE_PROTOCOL_AT_HTTP_DOOR))
                }
                Some(_) => {}
            }
        }

        let Some(head_len) = scan.advance(buf, &self.limits)? else {
            self.state = State::Head(scan);
            return Ok(None);
        };
        let head = buf.get(..head_len).unwrap_or_default();
        let (req, framing, expect_continue) = parse_head(head, &scan, &self.limits)?;
        buf.advance(head_len.min(buf.len()));
        self.skipped_empty_line = false;

        match framing {
            Framing::None => Ok(Some(Event::Request(req))),
            Framing::Length(len) => self.decode_fixed(req, len, expect_continue, buf),
            Framing::Chunked => {
                let chunks = ChunkedDecoder::new(self.limits.max_body, self.limits.max_head);
                self.decode_chunked(req, chunks, expect_continue, buf)
            }
        }
    }

    fn decode_fixed(
        &mut self,
        mut req: Request,
        len: usize,
        expect_continue: bool,
        buf: &mut BytesMut,
    ) -> Result<Option<Event>, HttpError> {
        if buf.len() >= len {
            req.body = buf.split_to(len).freeze();
            return Ok(Some(Event::Request(req)));
        }
        self.state = State::Fixed {
            req,
            len,
            expect_continue: false,
        };
        Ok(expect_continue.then_some(Event::Continue))
    }

    fn decode_chunked(
        &mut self,
        mut req: Request,
        mut chunks: ChunkedDecoder,
        expect_continue: bool,
        buf: &mut BytesMut,
    ) -> Result<Option<Event>, HttpError> {
        if let Some(body) = chunks.decode(buf)? {
            req.body = body;
            return Ok(Some(Event::Request(req)));
        }
        self.state = State::Chunked {
            req,
            chunks,
            expect_continue: false,
        };
        Ok(expect_continue.then_some(Event::Continue))
    }
}

/// Where the search for the end of a head stopped. Positions are offsets
/// into the caller's buffer, which only grows between calls.
#[derive(Debug, Default)]
struct HeadScan {
    /// The next byte to examine.
    pos: usize,
    /// The first SP of the request line (end of the method).
    sp1: Option<usize>,
    /// The SP, CR or LF that ends the request-target.
    target_end: Option<usize>,
    /// The LF that ends the request line.
    line_end: Option<usize>,
    /// A header line starts with SP or HT (obs-fold).
    folded: bool,
}

impl HeadScan {
    /// Scans the bytes not seen yet. Returns the length of the head
    /// (including its final empty line) once it is complete.
    ///
    /// Only the first `max_head` bytes are ever looked at, so every decision
    /// is a function of that prefix of the stream and comes out the same
    /// however the bytes were split across reads.
    fn advance(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
        let window = buf.get(..limits.max_head).unwrap_or(buf);

        let line_end = match self.line_end {
            Some(line_end) => line_end,
            None => {
                let from = self.pos;
                let rest = window.get(from..).unwrap_or_default();
                for off in memchr3_iter(b' ', b'\r', b'\n', rest) {
                    let i = from + off;
                    match rest.get(off) {
                        Some(b'\n') => {
                            self.target_end.get_or_insert(i);
                            self.line_end = Some(i);
                            break;
                        }
                        Some(b' ') if self.sp1.is_none() => self.sp1 = Some(i),
                        _ => {
                            if self.sp1.is_some() {
                                self.target_end.get_or_insert(i);
                            }
                        }
                    }
                }
                self.pos = self.line_end.unwrap_or(window.len().max(from));
                if let Some(sp1) = self.sp1 {
                    // Until the target ends, everything after the first SP
                    // is target: an over-long target is caught early.
                    let target_len = self.target_end.unwrap_or(self.pos).saturating_sub(sp1 + 1);
                    if target_len > limits.max_uri {
                        return Err(HttpError::UriTooLong);
                    }
                }
                match self.line_end {
                    Some(line_end) => line_end,
                    None => return head_incomplete(window, limits),
                }
            }
        };

        // An empty line is an LF followed by LF or CRLF; bare-LF line endings
        // are accepted. An LF whose successors have not arrived is looked at
        // again on the next call.
        loop {
            let rest = window.get(self.pos..).unwrap_or_default();
            let Some(off) = memchr(b'\n', rest) else {
                self.pos = window.len().max(self.pos);
                break;
            };
            let i = self.pos + off;
            match (window.get(i + 1), window.get(i + 2)) {
                (Some(b'\n'), _) => return Ok(Some(i + 2)),
                (Some(b'\r'), Some(b'\n')) => return Ok(Some(i + 3)),
                (None, _) | (Some(b'\r'), None) => {
                    self.pos = i;
                    break;
                }
                (Some(b' ' | b'\t'), _) => {
                    if i != line_end {
                        self.folded = true;
                    }
                    self.pos = i + 1;
                }
                _ => self.pos = i + 1,
            }
        }
        head_incomplete(window, limits)
    }
}

fn head_incomplete(window: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
    if window.len() >= limits.max_head {
        Err(HttpError::HeaderTooLarge)
    } else {
        Ok(None)
    }
}

/// Header slots kept on the stack; larger `max_headers` use the heap.
const INLINE_HEADERS: usize = 64;

/// Parses a complete head (`head` ends with its empty line).
fn parse_head(
    head: &[u8],
    scan: &HeadScan,
    limits: &Limits,
) -> Result<(Request, Framing, bool), HttpError> {
    let unfolded;
    let text: &[u8] = if scan.folded {
        unfolded = unfold(head, scan.line_end.unwrap_or(0));
        &unfolded
    } else {
        head
    };

    let mut inline = [httparse::EMPTY_HEADER; INLINE_HEADERS];
    let mut heap = Vec::new();
    let slots: &mut [httparse::Header<'_>] = if limits.max_headers <= INLINE_HEADERS {
        inline.get_mut(..limits.max_headers).unwrap_or_default()
    } else {
        heap.resize(limits.max_headers, httparse::EMPTY_HEADER);
        &mut heap
    };
    let mut parsed = httparse::Request::new(slots);
    match parsed.parse(text) {
        Ok(httparse::Status::Complete(n)) if n == text.len() => {}
        Ok(_) => return Err(HttpError::BadRequest("malformed request head")),
        Err(err) => return Err(map_parse_error(err, head, scan)),
    }
    let (Some(method_raw), Some(target), Some(minor_version)) =
        (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    if target.len() > limits.max_uri {
        return Err(HttpError::UriTooLong);
    }

    let fields = || parsed.headers.iter().map(|h| (h.name, h.value));

    let mut framing = framing(fields(), limits)?;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for (name, value) in fields() {
        if name.eq_ignore_ascii_case("connection") {
            for token in list_items(value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let mut keep_alive = if minor_version == 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    if minor_version == 0 && framing == Framing::Chunked {
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 makes the framing
        // suspect; decode this request, then close.
        keep_alive = false;
    }
    if framing == Framing::Length(0) {
        framing = Framing::None;
    }

    let req = Request::new(
        method_raw,
        target,
        minor_version,
        fields(),
        Bytes::new(),
        keep_alive,
    );
    Ok((req, framing, expect_continue && minor_version == 1))
}

fn map_parse_error(err: httparse::Error, head: &[u8], scan: &HeadScan) -> HttpError {
    match err {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version => {
            // httparse knows only 1.0 and 1.1; tell an HTTP version we do not
            // speak (505) from something that is not a version at all (400).
            let version = match (scan.target_end, scan.line_end) {
                (Some(start), Some(end)) => head.get(start + 1..end).unwrap_or_default(),
                _ => &[],
            };
            let version = version.strip_suffix(b"\r").unwrap_or(version);
            match version {
                [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                    if major.is_ascii_digit() && minor.is_ascii_digit() =>
                {
                    HttpError::VersionNotSupported
                }
                _ => HttpError::BadRequest("invalid HTTP version"),
            }
        }
        httparse::Error::HeaderName => HttpError::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("invalid header value"),
        httparse::Error::NewLine => HttpError::BadRequest("invalid line ending"),
        httparse::Error::Token => {
            HttpError::BadRequest("invalid method or request-target in the request line")
        }
        httparse::Error::Status => HttpError::BadRequest("malformed request line"),
    }
}

/// Decides the body framing from the header fields (RFC 9112 §6).
fn framing<'a>(
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    limits: &Limits,
) -> Result<Framing, HttpError> {
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = 0usize;
    let mut other_coding = false;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("content-length") {
            let mut any = false;
            for item in list_items(value) {
                any = true;
                let n =
                    parse_decimal(item).ok_or(HttpError::BadRequest("invalid Content-Length"))?;
                if length.is_some_and(|prev| prev != n) {
                    return Err(HttpError::BadRequest("conflicting Content-Length values"));
                }
                length = Some(n);
            }
            if !any {
                return Err(HttpError::BadRequest("invalid Content-Length"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in list_items(value) {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                } else {
                    other_coding = true;
                }
            }
        }
    }
    if transfer_encoding {
        if length.is_some() {
            return Err(HttpError::BadRequest(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if other_coding {
            return Err(HttpError::NotImplemented(
                "only the chunked transfer-coding is supported",
            ));
        }
        if chunked != 1 {
            return Err(HttpError::BadRequest("invalid Transfer-Encoding"));
        }
        return Ok(Framing::Chunked);
    }
    match length {
        None => Ok(Framing::None),
        Some(n) => match usize::try_from(n) {
            Ok(n) if n <= limits.max_body => Ok(Framing::Length(n)),
            _ => Err(HttpError::BodyTooLarge),
        },
    }
}

/// `1*DIGIT`; values too large for u64 saturate (they exceed any limit).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// The non-empty, whitespace-trimmed items of a comma-separated list.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

/// Joins obs-fold continuation lines to the line before them with one space
/// (what msgbus does), so httparse, which rejects obs-fold in requests, can
/// parse the head. The request line is left alone: a header line that starts
/// with whitespace right after it has nothing to continue and stays an error.
fn unfold(head: &[u8], line_end: usize) -> Vec<u8> {
    let split = line_end.saturating_add(1).min(head.len());
    let (first, mut rest) = head.split_at(split);
    let mut out = Vec::with_capacity(head.len());
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let cut = memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(cut);
        rest = tail;
        let is_fold = matches!(line.first(), Some(b' ' | b'\t')) && out.len() > split;
        if !is_fold {
            out.extend_from_slice(line);
            continue;
        }
        let continuation = line.trim_ascii();
        if continuation.is_empty() {
            continue;
        }
        if out.last() == Some(&b'\n') {
            out.pop();
            if out.last() == Some(&b'\r') {
                out.pop();
            }
        }
        while matches!(out.last(), Some(b' ' | b'\t')) {
            out.pop();
        }
        out.push(b' ');
        out.extend_from_slice(continuation);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl From<ChunkError> for HttpError {
    fn from(err: ChunkError) -> HttpError {
        match err {
            ChunkError::Malformed(detail) => HttpError::BadRequest(detail),
            ChunkError::BodyTooLarge => HttpError::BodyTooLarge,
            ChunkError::TrailersTooLarge => HttpError::HeaderTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::chunked::MAX_CHUNK_LINE;
    use proptest::prelude::*;

    /// What a byte stream decodes to: requests and the error that ended it,
    /// and the bytes left in the buffer. `Continue` events are left out
    /// (they depend on how the bytes arrived) but checked: at most one per
    /// request.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        results: Vec<Result<Request, HttpError>>,
        left: Vec<u8>,
        continues: usize,
    }

    fn run(limits: Limits, pieces: &[&[u8]]) -> Outcome {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::new();
        let mut results = Vec::new();
        let mut continues = 0;
        let mut continues_this_request = 0;
        'feed: for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(Event::Continue)) => {
                        continues += 1;
                        continues_this_request += 1;
                        assert!(continues_this_request <= 1, "two Continue for one request");
                    }
                    Ok(Some(Event::Request(req))) => {
                        continues_this_request = 0;
                        results.push(Ok(req));
                    }
                    Err(err) => {
                        // Errors are sticky.
                        assert_eq!(decoder.decode(&mut buf), Err(err));
                        results.push(Err(err));
                        break 'feed;
                    }
                }
            }
        }
        Outcome {
            results,
            left: buf.to_vec(),
            continues,
        }
    }

    /// Decodes `input` whole, byte by byte, and split in two at every
    /// position; all must agree (Continue aside), and so must the bytes left
    /// unless an error ended the stream. Returns the whole outcome.
    fn decode_all_ways(limits: Limits, input: &[u8]) -> Outcome {
        let whole = run(limits, &[input]);
        assert_eq!(whole.continues, 0, "Continue on a whole request");
        let same = |other: &Outcome, how: &str| {
            assert_eq!(whole.results, other.results, "{how}");
            // After an error the connection closes: what is left is moot.
            if !matches!(whole.results.last(), Some(Err(_))) {
                assert_eq!(whole.left, other.left, "{how}");
            }
        };
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        same(&run(limits, &bytes), "byte by byte");
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            same(&run(limits, &[a, b]), &format!("split at {at}"));
        }
        whole
    }

    fn one(input: &[u8]) -> Request {
        let out = decode_all_ways(Limits::default(), input);
        assert!(out.left.is_empty(), "left: {:?}", out.left);
        match out.results.as_slice() {
            [Ok(req)] => req.clone(),
            other => panic!("expected one request, got {other:?}"),
        }
    }

    fn error(limits: Limits, input: &[u8]) -> HttpError {
        let out = decode_all_ways(limits, input);
        match out.results.last() {
            Some(Err(err)) => *err,
            other => panic!("expected an error for {input:?}, got {other:?}"),
        }
    }

    /// A request's header fields as owned pairs, to compare.
    fn fields(req: &Request) -> Vec<(String, Vec<u8>)> {
        req.headers()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    fn hdrs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn small() -> Limits {
        Limits {
            max_head: 256,
            max_uri: 64,
            max_body: 16,
            max_headers: 4,
        }
    }

    #[test]
    fn get() {
        let req = one(b"GET /msgbus/foo?type=text/* HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(
            req,
            Request::new(
                "GET",
                "/msgbus/foo?type=text/*",
                1,
                [("Host", &b"127.0.0.1"[..])].into_iter(),
                Bytes::new(),
                true,
            )
        );
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.method_raw(), "GET");
        assert_eq!(req.target(), "/msgbus/foo?type=text/*");
        assert_eq!(fields(&req), hdrs(&[("Host", "127.0.0.1")]));
        assert_eq!(req.header("host"), Some(&b"127.0.0.1"[..]));
        assert_eq!(req.header("Content-Type"), None);
        assert_eq!(req.path(), "/msgbus/foo");
        assert_eq!(req.query(), Some("type=text/*"));
    }

    #[test]
    fn head() {
        let req = one(b"HEAD /index.html HTTP/1.0\r\n\r\n");
        assert_eq!(req.method, Method::Head);
        assert_eq!(req.minor_version, 0);
        assert!(!req.keep_alive);
        assert!(req.body.is_empty());
    }

    #[test]
    fn post_content_length() {
        let req = one(
            b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 5\r\n\r\nhello",
        );
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.header("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(&req.body[..], b"hello");
        assert!(req.keep_alive);
    }

    #[test]
    fn post_chunked_with_extensions_and_trailers() {
        let req = one(
            b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Transfer-Encoding: chunked\r\n\r\n\
              5;name=value\r\nchunk\r\nA ; a=b;c\r\n0123456789\r\n00000001\r\n!\r\n\
              0\r\nX-Trailer: t\r\nY: u\r\n\r\n",
        );
        assert_eq!(&req.body[..], b"chunk0123456789!");
        assert!(req.keep_alive);
        // The transcript's request, and bare LF everywhere.
        let req = one(
            b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n0\r\n\r\n",
        );
        assert_eq!(&req.body[..], b"chunk");
        let req = one(b"POST / HTTP/1.1\nTransfer-Encoding: Chunked\n\n3\nabc\n0\n\n");
        assert_eq!(&req.body[..], b"abc");
        let req = one(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(req.body.is_empty());
    }

    #[test]
    fn expect_continue() {
        let head: &[u8] = b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Expect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        let input = [head, b"abc"].concat();
        let req = one(&input);
        assert_eq!(&req.body[..], b"abc");

        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(head);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Event::Continue)));
        assert!(decoder.mid_request());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"ab");
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"c");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Event::Request(req))));
        assert!(!decoder.mid_request());

        // Continue exactly when the split falls between the head's end and
        // the body's end.
        for at in 0..=input.len() {
            let out = run(Limits::default(), &[&input[..at], &input[at..]]);
            let expected = usize::from(at >= head.len() && at < input.len());
            assert_eq!(out.continues, expected, "split at {at}");
        }

        // Chunked bodies too; HTTP/1.0 and empty bodies never.
        let mut buf = BytesMut::from(
            &b"PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        );
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Event::Continue)));
        for input in [
            &b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(input);
            let event = Decoder::default().decode(&mut buf);
            assert!(!matches!(event, Ok(Some(Event::Continue))), "{input:?}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |input: &[u8]| one(input).keep_alive;
        assert!(ka(
            b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\n\
                    Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
        ));
        assert!(!ka(
            b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\n\
                     Content-Length: 5\r\n\r\nhello"
        ));
        assert!(!ka(
            b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                     Connection: close\r\nContent-Length: 5\r\n\r\nhello"
        ));
        assert!(ka(
            b"GET / HTTP/1.0\r\nConnection: Upgrade, Keep-Alive\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: CLOSE\r\n\r\n"
        ));
        assert!(ka(b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n"));
        // Transfer-Encoding in HTTP/1.0: decoded, then the connection closes.
        assert!(!ka(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n\
                     Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
    }

    #[test]
    fn bare_lf() {
        let req = one(b"GET /msgbus/foo HTTP/1.0\n\n");
        assert_eq!(req.target(), "/msgbus/foo");
        assert_eq!(req.headers().len(), 0);
        let req = one(b"POST /x HTTP/1.1\nHost: x\r\nContent-Length: 2\n\r\nhi");
        assert_eq!(
            fields(&req),
            hdrs(&[("Host", "x"), ("Content-Length", "2")])
        );
        assert_eq!(&req.body[..], b"hi");
    }

    #[test]
    fn obs_fold_is_joined_with_a_space() {
        let req = one(
            b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\n Folded: continuation\r\n\
              X-Two: a \r\n\t b\r\n   \r\n  c\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(
            fields(&req),
            hdrs(&[
                ("Content-Type", "text/plain Folded: continuation"),
                ("X-Two", "a b c"),
                ("Content-Length", "3"),
            ])
        );
        assert_eq!(&req.body[..], b"abc");
        // Whitespace right after the request line continues nothing: the
        // line stays, and its name is refused (joined to the request line,
        // it would make a bad line ending instead).
        assert_eq!(
            error(
                Limits::default(),
                b"GET / HTTP/1.1\r\n Host: x\r\nA: b\r\n c\r\n\r\n"
            ),
            HttpError::BadRequest("invalid header name")
        );
    }

    #[test]
    fn header_values_are_kept_as_bytes() {
        let req =
            one(b"GET / HTTP/1.1\r\nX-Latin: caf\xe9\r\nX-Empty:\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n");
        assert_eq!(req.header("X-LATIN"), Some(&b"caf\xe9"[..]));
        assert_eq!(req.header("x-empty"), Some(&b""[..]));
        assert_eq!(req.header("X-Dup"), Some(&b"1"[..]));
        assert_eq!(
            fields(&req),
            vec![
                ("X-Latin".to_string(), b"caf\xe9".to_vec()),
                ("X-Empty".to_string(), Vec::new()),
                ("X-Dup".to_string(), b"1".to_vec()),
                ("x-dup".to_string(), b"2".to_vec()),
            ]
        );
    }

    #[test]
    fn methods() {
        for (token, method) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
            ("PATCH", Method::Other),
            ("get", Method::Other),
            ("FOO", Method::Other),
        ] {
            let req = one(format!("{token} /msgbus/foo HTTP/1.0\r\n\r\n").as_bytes());
            assert_eq!(req.method, method);
            assert_eq!(req.method_raw(), token);
        }
    }

    #[test]
    fn pipelined() {
        let input: &[u8] = b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
            Content-Length: 3\r\n\r\noneGET /msgbus/foo HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /msgbus/foo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n\
            \r\nPOST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
            Connection: close\r\nContent-Length: 5\r\n\r\nthree";
        let out = decode_all_ways(Limits::default(), input);
        assert!(out.left.is_empty());
        let reqs: Vec<Request> = out.results.into_iter().map(Result::unwrap).collect();
        assert_eq!(reqs.len(), 4);
        assert_eq!(&reqs[0].body[..], b"one");
        assert_eq!(reqs[1].method, Method::Get);
        assert!(reqs[1].body.is_empty());
        assert_eq!(&reqs[2].body[..], b"two");
        assert_eq!(&reqs[3].body[..], b"three");
        assert!(reqs[2].keep_alive && !reqs[3].keep_alive);

        // Excess body bytes are the next request (as in msgbus).
        let out = decode_all_ways(
            Limits::default(),
            b"POST /msgbus/foo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 3\r\n\r\nabcGET /nothere HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(out.results.len(), 2);
        assert_eq!(out.results[1].as_ref().unwrap().target(), "/nothere");
    }

    #[test]
    fn trailing_partial_data_stays_in_the_buffer() {
        let out = decode_all_ways(
            Limits::default(),
            b"GET /a HTTP/1.1\r\n\r\nPOST /msgbus/foo HTTP/1.1\r\nContent-Le",
        );
        assert_eq!(out.results.len(), 1);
        assert_eq!(out.left, b"POST /msgbus/foo HTTP/1.1\r\nContent-Le");

        // Body shorter than Content-Length: the head is held, the body waits.
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(
            &b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nshort"[..],
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(decoder.mid_request());
        assert_eq!(&buf[..], b"short");

        // A partial chunked body is consumed as it is decoded.
        let out = decode_all_ways(
            Limits::default(),
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        );
        assert!(out.results.is_empty());
        assert!(out.left.is_empty());
    }

    #[test]
    fn one_leading_empty_line_is_ignored() {
        let req = one(b"\r\nGET /a HTTP/1.1\r\n\r\n");
        assert_eq!(req.target(), "/a");
        let req = one(b"\nGET /a HTTP/1.1\r\n\r\n");
        assert_eq!(req.target(), "/a");
        let out = decode_all_ways(
            Limits::default(),
            b"GET /a HTTP/1.1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n\nGET /c HTTP/1.1\r\n\r\n\r",
        );
        assert_eq!(out.results.len(), 3);
        assert_eq!(out.left, b"\r");
        // msgbus answers 400 to leading empty lines; a second one is still 400.
        for input in [
            &b"\r\n\r\nGET /nothere HTTP/1.0\r\n\r\n"[..],
            b"\n\nGET / HTTP/1.0\r\n\r\n",
            b"\r\n\rGET / HTTP/1.0\r\n\r\n",
            b"\rGET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(
                matches!(error(Limits::default(), input), HttpError::BadRequest(_)),
                "{input:?}"
            );
        }
    }

    #[test]
    fn bad_request() {
        let cases: &[&[u8]] = &[
            // Request lines msgbus refuses too.
            b"GARBAGE\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /msgbus/foo\r\n\r\n",
            b"GET /msgbus/foo FOO/1.0\r\n\r\n",
            b"GET /msgbus/foo HTTP/1.0 extra\r\n\r\n",
            b"GET /msgbus/foo http/1.0\r\n\r\n",
            b"GET /msgbus/foo HTTP/1.x\r\n\r\n",
            b"GET /msgbus/foo HTTP/1.0\r\nBadHeaderNoColon\r\n\r\n",
            b"GET /msgbus/f\x00o HTTP/1.0\r\n\r\n",
            b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: -1\r\n\r\nneg",
            b"POST /msgbus/foo HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: abc\r\n\r\nabc",
            // Differs from msgbus, which takes the first of two lengths.
            b"POST /msgbus/foo HTTP/1.0\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\nabc\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\rabc\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\rz\r\n\r\n",
            // Not valid UTF-8 in the target; control bytes in a header value.
            b"GET /caf\xe9 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            // httparse rejects an empty header name, which msgbus accepted.
            b"GET /msgbus/foo HTTP/1.0\r\n: novalue\r\n\r\n",
        ];
        for input in cases {
            let err = error(Limits::default(), input);
            assert_eq!(err.status(), 400, "{input:?}: {err}");
        }
        // Line-protocol commands are refused at their first byte, even
        // after the one empty line allowed before a request.
        for input in [
            &b"+"[..],
            b"! 5 news text/plain\r\nhello\r\n",
            b"> 1 30 q\r\nx\r\n",
            b"< 0 q\r\n",
            b"? 1 30 q\r\nx\r\n",
            b"~ news\r\n",
            b".\r\n",
            b"\r\n+ news\r\n",
        ] {
            assert_eq!(
                run(Limits::default(), &[input]).results,
                vec![Err(HttpError::BadRequest(LINE_PROTOCOL_AT_HTTP_DOOR))],
                "{input:?}"
            );
        }
        let long_ext = [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;"[..],
            &[b'x'; MAX_CHUNK_LINE],
        ]
        .concat();
        assert_eq!(
            run(Limits::default(), &[&long_ext]).results,
            vec![Err(HttpError::BadRequest("chunk size line too long"))]
        );
    }

    #[test]
    fn body_too_large() {
        let limits = small();
        let ok = run(
            limits,
            &[b"POST / HTTP/1.1\r\nContent-Length: 16\r\n\r\n0123456789abcdef"],
        );
        assert!(matches!(ok.results.as_slice(), [Ok(_)]));
        // Refused before the body arrives.
        let input: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n9\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000000000000000000011\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffffffff\r\n",
        ];
        for input in input {
            assert_eq!(error(limits, input), HttpError::BodyTooLarge, "{input:?}");
        }
        let err = error(
            Limits::default(),
            b"POST / HTTP/1.1\r\nContent-Length: 16777217\r\n\r\n",
        );
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn uri_too_long() {
        let limits = small();
        let ok = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(63));
        assert!(matches!(
            run(limits, &[ok.as_bytes()]).results.as_slice(),
            [Ok(_)]
        ));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64));
        assert_eq!(error(limits, long.as_bytes()), HttpError::UriTooLong);
        // Caught before the request line ends.
        let partial = format!("GET /{}", "a".repeat(64));
        assert_eq!(
            run(limits, &[partial.as_bytes()]).results,
            vec![Err(HttpError::UriTooLong)]
        );
        let partial = format!("GET /{}", "a".repeat(63));
        assert!(run(limits, &[partial.as_bytes()]).results.is_empty());
        // With the default limits too, and before the head limit.
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100_000));
        let err = error(
            Limits::default(),
            huge.get(..20_000).unwrap_or_default().as_bytes(),
        );
        assert_eq!(err.status(), 414);
    }

    #[test]
    fn header_too_large() {
        let limits = small();
        // Complete, but larger than max_head.
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(240));
        assert_eq!(error(limits, big.as_bytes()), HttpError::HeaderTooLarge);
        // Exactly max_head is fine.
        let exact = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(256 - 23));
        assert_eq!(exact.len(), 256);
        assert!(matches!(
            run(limits, &[exact.as_bytes()]).results.as_slice(),
            [Ok(_)]
        ));
        // Never terminated: refused once max_head bytes are buffered.
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "v".repeat(300));
        assert_eq!(
            run(limits, &[endless.get(..256).unwrap_or_default().as_bytes()]).results,
            vec![Err(HttpError::HeaderTooLarge)]
        );
        assert!(
            run(limits, &[endless.get(..255).unwrap_or_default().as_bytes()])
                .results
                .is_empty()
        );
        // A request line with no end is 431 too (its target is short).
        let line = format!("GET{}", " ".repeat(300));
        assert_eq!(error(limits, line.as_bytes()), HttpError::HeaderTooLarge);
        // Trailers count against max_head.
        let trailers = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: {}\r\n\r\n",
            "t".repeat(300)
        );
        assert_eq!(
            error(limits, trailers.as_bytes()),
            HttpError::HeaderTooLarge
        );
        // Default limit.
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(20_000));
        assert_eq!(error(Limits::default(), big.as_bytes()).status(), 431);
    }

    #[test]
    fn too_many_headers() {
        let mut input = String::from("GET / HTTP/1.1\r\n");
        for i in 0..64 {
            input.push_str(&format!("X-H{i}: v\r\n"));
        }
        let ok = format!("{input}\r\n");
        assert_eq!(one(ok.as_bytes()).headers().len(), 64);
        let too_many = format!("{input}X-H64: v\r\n\r\n");
        assert_eq!(
            error(Limits::default(), too_many.as_bytes()),
            HttpError::TooManyHeaders
        );
        assert_eq!(HttpError::TooManyHeaders.status(), 431);
        // Limits above the inline slots use the heap.
        let limits = Limits {
            max_headers: 100,
            ..Limits::default()
        };
        let out = run(limits, &[too_many.as_bytes()]);
        assert!(matches!(out.results.as_slice(), [Ok(r)] if r.headers().len() == 65));
        let limits = Limits {
            max_headers: 0,
            ..Limits::default()
        };
        assert_eq!(
            error(limits, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            HttpError::TooManyHeaders
        );
    }

    #[test]
    fn not_implemented_codings() {
        for input in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let err = error(Limits::default(), input);
            assert_eq!(err.status(), 501, "{input:?}");
            assert!(matches!(err, HttpError::NotImplemented(_)));
        }
    }

    #[test]
    fn version_not_supported() {
        for version in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.1"] {
            let input = format!("GET /msgbus/foo {version}\r\n\r\n");
            assert_eq!(
                error(Limits::default(), input.as_bytes()),
                HttpError::VersionNotSupported,
                "{version}"
            );
            let input = format!("GET /msgbus/foo {version}\n\n");
            assert_eq!(error(Limits::default(), input.as_bytes()).status(), 505);
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            HttpError::BadRequest("invalid Content-Length").to_string(),
            "400 Bad Request: invalid Content-Length"
        );
        assert_eq!(HttpError::UriTooLong.status(), 414);
        assert_eq!(HttpError::BodyTooLarge.status(), 413);
        assert_eq!(HttpError::HeaderTooLarge.status(), 431);
        assert_eq!(HttpError::VersionNotSupported.status(), 505);
        assert_eq!(HttpError::NotImplemented("x").status(), 501);
    }

    #[test]
    fn repeated_content_lengths_that_agree_are_one() {
        for input in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            assert_eq!(&one(input).body[..], b"abc", "{input:?}");
        }
    }

    #[test]
    fn a_long_target_is_refused_once_it_ends_even_before_the_line_does() {
        // The target ended (a space came) but the request line has not:
        // its length is known, and over the limit.
        let limits = small();
        let partial = format!("GET /{} HTTP/1.1", "a".repeat(64));
        assert_eq!(
            run(limits, &[partial.as_bytes()]).results,
            vec![Err(HttpError::UriTooLong)]
        );
        let partial = format!("GET /{} HTTP/1.1", "a".repeat(63));
        assert!(run(limits, &[partial.as_bytes()]).results.is_empty());
    }

    #[test]
    fn large_body_is_not_copied() {
        let body = vec![b'z'; 1_000_000];
        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"[..]);
        buf.extend_from_slice(&body);
        let start = buf.as_ptr() as usize;
        let Ok(Some(Event::Request(req))) = Decoder::default().decode(&mut buf) else {
            panic!("no request");
        };
        assert_eq!(req.body.len(), body.len());
        // The body is a view of the same allocation, just past the head.
        assert_eq!(req.body.as_ptr() as usize, start + 44);
    }

    // ---- property test: random valid requests, pipelined and split ----

    #[derive(Clone, Debug)]
    struct Sample {
        bytes: Vec<u8>,
        expected: Request,
    }

    fn header_value() -> impl Strategy<Value = String> {
        "([!-~]([ -~]{0,20}[!-~])?)?"
    }

    prop_compose! {
        fn sample()(
            method in prop::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get"]),
            target in "/[A-Za-z0-9._~%/?=&*:-]{0,40}",
            minor in 0u8..=1,
            lf_only in any::<bool>(),
            mut headers in prop::collection::vec(("X-[A-Za-z0-9-]{1,12}", header_value()), 0..6),
            connection in prop::sample::select(vec!["", "close", "keep-alive", "Keep-Alive, Upgrade", "upgrade"]),
            expect in any::<bool>(),
            framing in 0u8..3,
            body in prop::collection::vec(any::<u8>(), 0..200),
            chunk_sizes in prop::collection::vec(1usize..64, 1..8),
            upper_hex in any::<bool>(),
            extensions in any::<bool>(),
            trailers in prop::collection::vec(("X-[A-Za-z]{1,8}", header_value()), 0..3),
        ) -> Sample {
            let eol = if lf_only { "\n" } else { "\r\n" };
            if !connection.is_empty() {
                headers.push(("Connection".into(), connection.into()));
            }
            if expect {
                headers.push(("Expect".into(), "100-continue".into()));
            }
            let body = if framing == 2 { Vec::new() } else { body };
            let chunked = framing == 1;
            if chunked {
                headers.push(("Transfer-Encoding".into(), "chunked".into()));
            } else if framing == 0 {
                headers.push(("Content-Length".into(), body.len().to_string()));
            }
            let mut bytes = format!("{method} {target} HTTP/1.{minor}{eol}").into_bytes();
            for (name, value) in &headers {
                bytes.extend_from_slice(format!("{name}: {value}{eol}").as_bytes());
            }
            bytes.extend_from_slice(eol.as_bytes());
            if chunked {
                let mut rest = body.as_slice();
                let mut sizes = chunk_sizes.iter().cycle();
                while !rest.is_empty() {
                    let n = (*sizes.next().unwrap_or(&1)).min(rest.len());
                    let (chunk, tail) = rest.split_at(n);
                    let size = if upper_hex { format!("{n:X}") } else { format!("{n:x}") };
                    let ext = if extensions { ";a=b; c" } else { "" };
                    bytes.extend_from_slice(format!("{size}{ext}{eol}").as_bytes());
                    bytes.extend_from_slice(chunk);
                    bytes.extend_from_slice(eol.as_bytes());
                    rest = tail;
                }
                bytes.extend_from_slice(format!("0{eol}").as_bytes());
                for (name, value) in &trailers {
                    bytes.extend_from_slice(format!("{name}: {value}{eol}").as_bytes());
                }
                bytes.extend_from_slice(eol.as_bytes());
            } else {
                bytes.extend_from_slice(&body);
            }
            let lower = connection.to_ascii_lowercase();
            let close = lower.split(',').any(|t| t.trim() == "close");
            let ka_token = lower.split(',').any(|t| t.trim() == "keep-alive");
            let keep_alive = if minor == 1 { !close } else { ka_token && !close && !chunked };
            let expected = Request::new(
                method,
                &target,
                minor,
                headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
                Bytes::from(body),
                keep_alive,
            );
            Sample { bytes, expected }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn random_requests_decode_the_same_however_split(
            samples in prop::collection::vec(sample(), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input: Vec<u8> = samples.iter().flat_map(|s| s.bytes.iter().copied()).collect();
            let expected: Vec<Result<Request, HttpError>> =
                samples.iter().map(|s| Ok(s.expected.clone())).collect();

            let whole = run(Limits::default(), &[&input]);
            prop_assert_eq!(&whole.results, &expected);
            prop_assert!(whole.left.is_empty());

            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in at {
                pieces.push(&input[from..cut]);
                from = cut;
            }
            pieces.push(&input[from..]);
            let split = run(Limits::default(), &pieces);
            prop_assert_eq!(&split.results, &expected);
            prop_assert!(split.left.is_empty());
        }
    }
}
