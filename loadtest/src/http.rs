//! The HTTP bus as the load tools speak it: request encoders, and push
//! parsers for a subscriber's multipart stream and a publisher's responses.
//!
//! A subscriber's stream is parsed in three layers: the response head, the
//! transfer framing (chunked, or a plain HTTP/1.0 stream), and the multipart
//! parts. A part's body ends after its `Content-Length` when it has one, else
//! at the next delimiter; a line break right before a delimiter is not part of
//! the body. Both msgbus' framing (bare LF, `BODY--00MsgBus00\n`) and the RFC
//! 2046 one (`BODY\r\n--00MsgBus00\r\n`) parse. No IO; see `codec`.

use crate::codec::{parse_u64, trim, Error, Event, Lines, Prefix};

/// Basic credentials for `Authorization:`; `None` when not asked for.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET PATH` (HTTP/1.1, or HTTP/1.0 with `http10`), PATH being
/// `/msgbus/CHANNEL` on switchboard. It accepts `multipart/mixed`, which
/// switchboard does not need and nchan does to answer with a stream.
pub fn encode_subscribe(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    http10: bool,
    auth: Option<&str>,
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(if http10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    out.extend_from_slice(b"Host: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nAccept: multipart/mixed\r\n");
    if let Some(a) = auth {
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `POST PATH` with the body, on a keep-alive HTTP/1.1 connection.
pub fn encode_publish(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    ctype: &str,
    body: &[u8],
    auth: Option<&str>,
) {
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(ctype.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(a) = auth {
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Case-insensitive header name match.
pub(crate) fn is_header<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let colon = memchr::memchr(b':', line)?;
    let (n, v) = line.split_at(colon);
    if trim(n).eq_ignore_ascii_case(name.as_bytes()) {
        Some(trim(&v[1..]))
    } else {
        None
    }
}

/// Finds `needle` case-insensitively.
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// `Status-Line` → status code.
pub(crate) fn parse_status(line: &[u8]) -> Result<u16, Error> {
    if !line.starts_with(b"HTTP/") {
        return Err(Error::Protocol("response does not start with HTTP/"));
    }
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    parts.next();
    let code = parts
        .next()
        .and_then(parse_u64)
        .filter(|c| (100..1000).contains(c))
        .ok_or(Error::Protocol("bad status code"))?;
    Ok(code as u16)
}

// ---------------------------------------------------------------- chunked

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd {
        seen_cr: bool,
    },
    Trailer,
    Done,
}

/// Removes chunked transfer framing, handing out payload slices.
#[derive(Debug, Default)]
pub struct Dechunk {
    state: ChunkState,
    line: Lines,
}

impl Dechunk {
    /// Consumes framing from `data` and returns the next payload slice, or
    /// `None` when `data` is used up or the last chunk has been read.
    pub fn next<'a>(&mut self, data: &mut &'a [u8]) -> Result<Option<&'a [u8]>, Error> {
        while !data.is_empty() {
            match self.state {
                ChunkState::Size => {
                    if !self.line.take(data)? {
                        return Ok(None);
                    }
                    let line = self.line.line();
                    let digits = line
                        .split(|&b| b == b';')
                        .next()
                        .map(trim)
                        .unwrap_or_default();
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(Error::Protocol("bad chunk size"));
                    }
                    let mut size: u64 = 0;
                    for &b in digits {
                        let d = (b as char)
                            .to_digit(16)
                            .ok_or(Error::Protocol("bad chunk size"))?;
                        size = size * 16 + u64::from(d);
                    }
                    self.line.clear();
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    let (payload, rest) = data.split_at(n);
                    *data = rest;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd { seen_cr: false }
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(payload));
                }
                ChunkState::DataEnd { seen_cr } => {
                    let b = data[0];
                    *data = &data[1..];
                    match b {
                        b'\r' if !seen_cr => self.state = ChunkState::DataEnd { seen_cr: true },
                        b'\n' => self.state = ChunkState::Size,
                        _ => return Err(Error::Protocol("chunk data not followed by CRLF")),
                    }
                }
                ChunkState::Trailer => {
                    if !self.line.take(data)? {
                        return Ok(None);
                    }
                    let empty = self.line.line().is_empty();
                    self.line.clear();
                    if empty {
                        self.state = ChunkState::Done;
                        return Ok(None);
                    }
                }
                ChunkState::Done => return Ok(None),
            }
        }
        Ok(None)
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn reset(&mut self) {
        self.state = ChunkState::Size;
        self.line.clear();
    }
}

// ---------------------------------------------------------------- multipart

/// The longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;
/// Remembers this many bytes before the scan position (>= delimiter + 2).
const RING: usize = 128;
/// Most part-header bytes accepted before the body.
const MAX_PART_HEADERS: usize = 16 * 1024;

/// The last bytes scanned, to look behind a delimiter once it matched.
#[derive(Debug)]
struct Ring {
    buf: [u8; RING],
    total: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            buf: [0; RING],
            total: 0,
        }
    }
}

impl Ring {
    fn push(&mut self, s: &[u8]) {
        let skip = s.len().saturating_sub(RING);
        let base = self.total + skip as u64;
        for (i, &b) in s[skip..].iter().enumerate() {
            self.buf[((base + i as u64) % RING as u64) as usize] = b;
        }
        self.total += s.len() as u64;
    }

    /// The `k`-th byte from the end (1 = last).
    fn back(&self, k: usize) -> Option<u8> {
        if k == 0 || k > RING || k as u64 > self.total {
            return None;
        }
        Some(self.buf[((self.total - k as u64) % RING as u64) as usize])
    }

    fn clear(&mut self) {
        self.total = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartState {
    /// Before the first delimiter; bytes are skipped.
    Preamble,
    /// Just after `--BOUNDARY`: a line end, or `--` for the close.
    AfterDelim {
        dash: bool,
    },
    Headers,
    /// A body with Content-Length: bytes left.
    Counted {
        left: u64,
    },
    /// After a counted body: only a line break may come before the delimiter.
    AfterCounted,
    /// A body without Content-Length: it ends at the next delimiter.
    Scan,
    /// After the closing delimiter; nothing more is expected.
    Closed,
}

/// Splits a multipart stream into parts.
#[derive(Debug)]
pub struct Multipart {
    state: PartState,
    /// `--` + boundary, and its KMP failure table.
    delim: Vec<u8>,
    fail: Vec<usize>,
    matched: usize,
    ring: Ring,
    /// Bytes scanned since the current body (or gap) started.
    raw: u64,
    headers: Lines,
    header_bytes: usize,
    ctype: Vec<u8>,
    clen: Option<u64>,
    prefix: Prefix,
}

impl Multipart {
    pub fn new(boundary: &[u8]) -> Result<Multipart, Error> {
        if boundary.is_empty() || boundary.len() > MAX_BOUNDARY {
            return Err(Error::Protocol("multipart boundary empty or too long"));
        }
        let mut delim = b"--".to_vec();
        delim.extend_from_slice(boundary);
        let mut fail = vec![0usize; delim.len()];
        let mut k = 0;
        for i in 1..delim.len() {
            while k > 0 && delim[i] != delim[k] {
                k = fail[k - 1];
            }
            if delim[i] == delim[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Ok(Multipart {
            state: PartState::Preamble,
            delim,
            fail,
            matched: 0,
            ring: Ring::default(),
            raw: 0,
            headers: Lines::default(),
            header_bytes: 0,
            ctype: Vec::new(),
            clen: None,
            prefix: Prefix::default(),
        })
    }

    /// Scans for the delimiter; returns (bytes consumed, found).
    fn scan(&mut self, data: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < data.len() {
            if self.matched == 0 {
                // The delimiter starts with '-': nothing else can begin a match.
                match memchr::memchr(b'-', &data[i..]) {
                    Some(p) => i += p,
                    None => return (data.len(), false),
                }
            }
            let b = data[i];
            i += 1;
            while self.matched > 0 && self.delim[self.matched] != b {
                self.matched = self.fail[self.matched - 1];
            }
            if self.delim[self.matched] == b {
                self.matched += 1;
            }
            if self.matched == self.delim.len() {
                self.matched = 0;
                return (i, true);
            }
        }
        (i, false)
    }

    /// Scans and keeps the ring, counter and (optionally) body prefix up to
    /// date. On a match returns the number of bytes before the delimiter,
    /// less a line break right before it, and whether there was one.
    fn scan_tracked(&mut self, data: &mut &[u8], keep_prefix: bool) -> Option<(u64, bool)> {
        let (n, found) = self.scan(data);
        let (seen, rest) = data.split_at(n);
        *data = rest;
        self.ring.push(seen);
        if keep_prefix {
            self.prefix.push(seen);
        }
        self.raw += n as u64;
        if !found {
            return None;
        }
        let d = self.delim.len();
        let mut before = self.raw - d as u64;
        let mut line_break = false;
        if before >= 1 && self.ring.back(d + 1) == Some(b'\n') {
            before -= 1;
            line_break = true;
            if before >= 1 && self.ring.back(d + 2) == Some(b'\r') {
                before -= 1;
            }
        }
        Some((before, line_break))
    }

    fn start_gap(&mut self) {
        self.ring.clear();
        self.raw = 0;
        self.matched = 0;
    }

    fn emit(&self, len: u64, on: &mut dyn FnMut(Event<'_>)) {
        on(Event::Message {
            channel: b"",
            ctype: &self.ctype,
            prefix: self.prefix.get(len),
            len,
        });
    }

    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        while !data.is_empty() {
            match self.state {
                PartState::Preamble => {
                    if self.scan_tracked(&mut data, false).is_some() {
                        self.state = PartState::AfterDelim { dash: false };
                    }
                }
                PartState::AfterDelim { dash } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'-' if dash => self.state = PartState::Closed,
                        b'-' => self.state = PartState::AfterDelim { dash: true },
                        b' ' | b'\t' | b'\r' if !dash => {}
                        b'\n' if !dash => {
                            self.state = PartState::Headers;
                            self.header_bytes = 0;
                            self.ctype.clear();
                            self.clen = None;
                        }
                        _ => return Err(Error::Protocol("garbage after a multipart delimiter")),
                    }
                }
                PartState::Headers => {
                    let before = data.len();
                    let complete = self.headers.take(&mut data)?;
                    self.header_bytes += before - data.len();
                    if self.header_bytes > MAX_PART_HEADERS {
                        return Err(Error::Protocol("part headers too long"));
                    }
                    if !complete {
                        continue;
                    }
                    let line = self.headers.line();
                    if line.is_empty() {
                        self.headers.clear();
                        self.prefix.clear();
                        self.start_gap();
                        self.state = match self.clen {
                            Some(0) => {
                                self.emit(0, on);
                                PartState::AfterCounted
                            }
                            Some(n) => PartState::Counted { left: n },
                            None => PartState::Scan,
                        };
                        continue;
                    }
                    if memchr::memchr(b':', line).is_none() {
                        return Err(Error::Protocol("part header without a colon"));
                    }
                    if let Some(v) = is_header(line, "content-type") {
                        self.ctype = v.to_vec();
                    } else if let Some(v) = is_header(line, "content-length") {
                        self.clen =
                            Some(parse_u64(v).ok_or(Error::Protocol("bad part Content-Length"))?);
                    }
                    self.headers.clear();
                }
                PartState::Counted { left } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    self.prefix.push(&data[..n]);
                    data = &data[n..];
                    let left = left - n as u64;
                    if left == 0 {
                        self.emit(self.clen.unwrap_or(0), on);
                        self.start_gap();
                        self.state = PartState::AfterCounted;
                    } else {
                        self.state = PartState::Counted { left };
                    }
                }
                PartState::AfterCounted => match self.scan_tracked(&mut data, false) {
                    Some((0, _)) => self.state = PartState::AfterDelim { dash: false },
                    Some(_) => return Err(Error::Protocol("bytes after a part's Content-Length")),
                    None if self.raw > 2 + self.delim.len() as u64 => {
                        return Err(Error::Protocol(
                            "no delimiter after a part's Content-Length",
                        ))
                    }
                    None => {}
                },
                PartState::Scan => {
                    if let Some((len, _)) = self.scan_tracked(&mut data, true) {
                        self.emit(len, on);
                        self.state = PartState::AfterDelim { dash: false };
                    }
                }
                PartState::Closed => return Err(Error::StreamEnded),
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- subscriber

#[derive(Debug)]
enum SubStage {
    Status,
    Headers,
    Stream,
}

/// Parses the server's side of a subscription: head, framing, parts.
#[derive(Debug)]
pub struct SubParser {
    stage: SubStage,
    head: Lines,
    status: u16,
    status_line: String,
    chunked: bool,
    boundary: Option<Vec<u8>>,
    multipart_type: bool,
    dechunk: Dechunk,
    parts: Option<Multipart>,
}

impl Default for SubParser {
    fn default() -> Self {
        SubParser {
            stage: SubStage::Status,
            head: Lines::default(),
            status: 0,
            status_line: String::new(),
            chunked: false,
            boundary: None,
            multipart_type: false,
            dechunk: Dechunk::default(),
            parts: None,
        }
    }
}

/// The `boundary=` parameter of a Content-Type value.
fn boundary_of(v: &[u8]) -> Option<Vec<u8>> {
    for param in v.split(|&b| b == b';').skip(1) {
        let param = trim(param);
        let eq = memchr::memchr(b'=', param)?;
        if trim(&param[..eq]).eq_ignore_ascii_case(b"boundary") {
            let mut val = trim(&param[eq + 1..]);
            if val.len() >= 2 && val.first() == Some(&b'"') && val.last() == Some(&b'"') {
                val = &val[1..val.len() - 1];
            }
            return Some(val.to_vec());
        }
    }
    None
}

impl SubParser {
    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        while !data.is_empty() {
            match self.stage {
                SubStage::Status => {
                    if !self.head.take(&mut data)? {
                        return Ok(());
                    }
                    self.status = parse_status(self.head.line())?;
                    self.status_line = String::from_utf8_lossy(self.head.line()).into_owned();
                    self.head.clear();
                    self.stage = SubStage::Headers;
                }
                SubStage::Headers => {
                    if !self.head.take(&mut data)? {
                        return Ok(());
                    }
                    let line = self.head.line();
                    if !line.is_empty() {
                        if let Some(v) = is_header(line, "content-type") {
                            self.multipart_type =
                                v.len() >= 10 && v[..10].eq_ignore_ascii_case(b"multipart/");
                            self.boundary = boundary_of(v);
                        } else if let Some(v) = is_header(line, "transfer-encoding") {
                            self.chunked = contains_ci(v, b"chunked");
                        }
                        self.head.clear();
                        continue;
                    }
                    self.head.clear();
                    if (100..200).contains(&self.status) {
                        // An interim response; the real one follows.
                        self.stage = SubStage::Status;
                        self.chunked = false;
                        continue;
                    }
                    if self.status != 200 {
                        return Err(Error::Refused(self.status_line.clone()));
                    }
                    let boundary = match (&self.boundary, self.multipart_type) {
                        (Some(b), true) => b.clone(),
                        _ => {
                            return Err(Error::Refused(format!(
                                "{} without a multipart Content-Type and boundary",
                                self.status_line
                            )))
                        }
                    };
                    self.parts = Some(Multipart::new(&boundary)?);
                    self.stage = SubStage::Stream;
                    on(Event::Subscribed);
                }
                SubStage::Stream => {
                    let Some(parts) = self.parts.as_mut() else {
                        return Err(Error::Protocol("stream without a multipart parser"));
                    };
                    if !self.chunked {
                        return parts.feed(data, on);
                    }
                    while let Some(payload) = self.dechunk.next(&mut data)? {
                        parts.feed(payload, on)?;
                    }
                    if self.dechunk.is_done() {
                        return Err(Error::StreamEnded);
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- publisher

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum RespStage {
    #[default]
    Status,
    Headers,
    Body(u64),
    Chunked,
    /// No length: the body runs to the end of the connection.
    UntilClose,
}

/// Parses a sequence of (pipelined) responses to a publisher's POSTs.
#[derive(Debug, Default)]
pub struct RespParser {
    stage: RespStage,
    head: Lines,
    status: u16,
    clen: Option<u64>,
    chunked: bool,
    dechunk: Dechunk,
}

impl RespParser {
    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        while !data.is_empty() {
            match self.stage {
                RespStage::Status => {
                    if !self.head.take(&mut data)? {
                        return Ok(());
                    }
                    if self.head.line().is_empty() {
                        // Tolerate a stray line break between responses.
                        self.head.clear();
                        continue;
                    }
                    self.status = parse_status(self.head.line())?;
                    self.clen = None;
                    self.chunked = false;
                    self.head.clear();
                    self.stage = RespStage::Headers;
                }
                RespStage::Headers => {
                    if !self.head.take(&mut data)? {
                        return Ok(());
                    }
                    let line = self.head.line();
                    if !line.is_empty() {
                        if let Some(v) = is_header(line, "content-length") {
                            self.clen =
                                Some(parse_u64(v).ok_or(Error::Protocol("bad Content-Length"))?);
                        } else if let Some(v) = is_header(line, "transfer-encoding") {
                            self.chunked = contains_ci(v, b"chunked");
                        }
                        self.head.clear();
                        continue;
                    }
                    self.head.clear();
                    let status = self.status;
                    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
                    self.stage = if bodiless {
                        RespStage::Status
                    } else if self.chunked {
                        self.dechunk.reset();
                        RespStage::Chunked
                    } else {
                        match self.clen {
                            Some(0) => RespStage::Status,
                            Some(n) => RespStage::Body(n),
                            None => RespStage::UntilClose,
                        }
                    };
                    let complete = self.stage == RespStage::Status && status >= 200;
                    if complete || self.stage == RespStage::UntilClose {
                        on(Event::Response { status });
                    }
                }
                RespStage::Body(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    data = &data[n..];
                    let left = left - n as u64;
                    if left == 0 {
                        self.stage = RespStage::Status;
                        on(Event::Response {
                            status: self.status,
                        });
                    } else {
                        self.stage = RespStage::Body(left);
                    }
                }
                RespStage::Chunked => {
                    while self.dechunk.next(&mut data)?.is_some() {}
                    if self.dechunk.is_done() {
                        self.stage = RespStage::Status;
                        on(Event::Response {
                            status: self.status,
                        });
                    }
                }
                RespStage::UntilClose => return Ok(()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{feed_every_split, show};

    fn sub(input: &[u8]) -> Vec<(Vec<String>, Result<(), Error>)> {
        feed_every_split::<SubParser>(input, |p, d, seen| {
            p.feed(d, &mut |ev| seen.push(show(&ev)))
        })
    }

    fn resp(input: &[u8]) -> Vec<(Vec<String>, Result<(), Error>)> {
        feed_every_split::<RespParser>(input, |p, d, seen| {
            p.feed(d, &mut |ev| seen.push(show(&ev)))
        })
    }

    fn chunk(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    const HEAD11: &[u8] = b"HTTP/1.1 200 OK\r\nServer: switchboard\r\n\
        Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\
        Transfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn base64_and_auth() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(basic_auth("bob", "secret"), "Basic Ym9iOnNlY3JldA==");
    }

    #[test]
    fn encoders() {
        let mut out = Vec::new();
        encode_subscribe(&mut out, "h", "/msgbus/flood", false, None);
        assert_eq!(
            out,
            b"GET /msgbus/flood HTTP/1.1\r\nHost: h\r\nAccept: multipart/mixed\r\n\r\n"
        );
        out.clear();
        encode_subscribe(&mut out, "h", "/sub/c", true, Some("Basic x"));
        assert_eq!(
            out,
            b"GET /sub/c HTTP/1.0\r\nHost: h\r\nAccept: multipart/mixed\r\nAuthorization: Basic x\r\n\r\n"
        );
        out.clear();
        encode_publish(&mut out, "h", "/msgbus/c", "text/plain", b"hi", None);
        assert_eq!(
            out,
            b"POST /msgbus/c HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn msgbus_chunked_stream() {
        let mut input = HEAD11.to_vec();
        chunk(&mut input, b"--00MsgBus00\n");
        chunk(
            &mut input,
            b"Content-Type: text/plain\n\nhello--00MsgBus00\n",
        );
        chunk(
            &mut input,
            b"From: bob\nContent-Type: image/jpeg\n\n\xff\xd8-\n--00MsgBus0--00MsgBus00\n",
        );
        chunk(&mut input, b"Content-Type: a/b\n\n--00MsgBus00\n");
        let want = vec![
            "subscribed".to_string(),
            "msg  text/plain 5 hello".to_string(),
            format!(
                "msg  image/jpeg 15 {}",
                String::from_utf8_lossy(b"\xff\xd8-\n--00MsgBus0")
            ),
            "msg  a/b 0 ".to_string(),
        ];
        for (seen, r) in sub(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn rfc_stream_with_content_length_and_crlf() {
        let mut input = HEAD11.to_vec();
        chunk(&mut input, b"--00MsgBus00\r\n");
        chunk(
            &mut input,
            b"Content-Type: text/plain\r\nContent-Length: 7\r\n\r\nab\r\ncd\n\r\n--00MsgBus00\r\n",
        );
        chunk(
            &mut input,
            b"Content-Type: text/plain\r\n\r\nxyz\r\n--00MsgBus00\r\n",
        );
        chunk(
            &mut input,
            b"Content-Type: text/plain\r\n\r\n\r\n--00MsgBus00\r\n",
        );
        let want = vec![
            "subscribed".to_string(),
            "msg  text/plain 7 ab\r\ncd\n".to_string(),
            "msg  text/plain 3 xyz".to_string(),
            "msg  text/plain 0 ".to_string(),
        ];
        for (seen, r) in sub(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn parts_split_across_chunks() {
        let mut input = HEAD11.to_vec();
        let stream: &[u8] = b"--00MsgBus00\nContent-Type: t\n\n0123456789--00MsgBus00\nContent-Type: u\n\nab--00MsgBus00\n";
        for piece in stream.chunks(7) {
            chunk(&mut input, piece);
        }
        for (seen, r) in sub(&input) {
            assert_eq!(r, Ok(()));
            assert_eq!(
                seen,
                vec!["subscribed", "msg  t 10 0123456789", "msg  u 2 ab"]
            );
        }
    }

    #[test]
    fn http10_plain_stream() {
        let input: &[u8] = b"HTTP/1.0 200 OK\r\nServer: msgbus\r\n\
            Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\r\n--00MsgBus00\n\
            Content-Type: text/plain\nContent-Length: 5\n\nhello--00MsgBus00\n\
            Content-Location: /msgbus/foo\nContent-Type: image/jpeg\nContent-Length: 12\n\n--00MsgBus00--00MsgBus00\n";
        for (seen, r) in sub(input) {
            assert_eq!(r, Ok(()));
            assert_eq!(
                seen,
                vec![
                    "subscribed",
                    "msg  text/plain 5 hello",
                    "msg  image/jpeg 12 --00MsgBus00"
                ]
            );
        }
    }

    #[test]
    fn quoted_boundary_and_preamble() {
        let input: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\
            content-type: Multipart/Mixed; boundary=\"b-1\"\r\n\r\nignored preamble\r\n--b-1\r\n\
            Content-Type: x\r\n\r\nbody\r\n--b-1--\r\n";
        for (seen, r) in sub(input) {
            assert_eq!(seen, vec!["subscribed", "msg  x 4 body"]);
            assert_eq!(r, Err(Error::StreamEnded));
        }
    }

    #[test]
    fn refused_subscriptions() {
        for input in [
            &b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed\r\n\r\n",
        ] {
            for (seen, r) in sub(input) {
                assert!(seen.is_empty());
                assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
            }
        }
        for (_, r) in sub(b"SSH-2.0-x\r\n") {
            assert!(matches!(r, Err(Error::Protocol(_))));
        }
    }

    #[test]
    fn chunked_end_is_reported() {
        let mut input = HEAD11.to_vec();
        chunk(&mut input, b"--00MsgBus00\n");
        input.extend_from_slice(b"0\r\n\r\n");
        for (seen, r) in sub(&input) {
            assert_eq!(seen, vec!["subscribed"]);
            assert_eq!(r, Err(Error::StreamEnded));
        }
    }

    #[test]
    fn counted_body_followed_by_garbage() {
        let input: &[u8] =
            b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=B\r\n\r\n--B\n\
            Content-Length: 2\n\nabXYZW--B\n";
        for (_, r) in sub(input) {
            assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
        }
    }

    #[test]
    fn publisher_responses() {
        let input: &[u8] = b"HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n\
            HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n\
            HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\noops!\
            HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            HTTP/1.1 204 OK\r\n\r\n";
        for (seen, r) in resp(input) {
            assert_eq!(r, Ok(()));
            assert_eq!(
                seen,
                vec![
                    "response 204",
                    "response 204",
                    "response 400",
                    "response 401",
                    "response 204"
                ]
            );
        }
    }
}
