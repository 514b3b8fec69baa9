//! Wire framing of deliveries, built once per message per kind of subscriber.
//!
//! Every function appends to a `BytesMut` that the caller freezes and shares
//! between all subscribers of that kind. Nothing here knows about sockets.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

/// The multipart boundary of the HTTP bus.
pub const BOUNDARY: &str = "00MsgBus00";

crate::counted_enum! {
    /// How a subscriber wants its deliveries framed. The discriminant indexes
    /// the per-batch frame buffers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Framing {
        /// `! LEN CHANNEL TYPE\r\n` + body + `\r\n`.
        Line,
        /// HTTP/1.1 multipart in chunked transfer coding, one chunk per message.
        MultipartChunked,
        /// HTTP/1.0 multipart as a plain stream.
        MultipartPlain,
        /// `text/event-stream`, one event per message.
        EventStream,
        /// `text/event-stream` whose data is one JSON object per message, with
        /// the channel, content type and sender as fields (`?format=json`).
        EventStreamJson,
        /// One WebSocket message per channel message: a text frame for
        /// text and JSON content types (when the body is UTF-8), binary
        /// otherwise; the body alone.
        WebSocket,
        /// One WebSocket text frame per message holding the JSON object of
        /// [`Framing::EventStreamJson`] (`?format=json`).
        WebSocketJson,
        /// `! LEN CHANNEL TYPE ID\r\n` + body + `\r\n`: the line framing of a
        /// subscription that asked for history (`+ CH SINCE`).
        LineIds,
    }
}

/// The number of framings: the length of every per-framing table.
pub const FRAMINGS: usize = Framing::COUNT;

/// One published message, as the framers see it.
pub struct Publication<'a> {
    pub channel: &'a [u8],
    pub content_type: &'a [u8],
    pub sender: Option<&'a [u8]>,
    pub body: &'a [u8],
    /// Its id in the channel history; 0 when no history is kept. Each
    /// framing that can carry it does (SSE `id:`, multipart `Event-Id:`,
    /// the JSON form's `id`, [`Framing::LineIds`]' fifth field).
    pub id: u64,
}

/// The content type of a publication that names none.
pub const DEFAULT_CONTENT_TYPE: &[u8] = b"application/octet-stream";

/// The field separators of a line: ASCII whitespace, as
/// `u8::is_ascii_whitespace` (space, tab, CR, LF, form feed).
#[inline]
pub fn is_space(b: u8) -> bool {
    b.is_ascii_whitespace()
}

/// A content type written as the TYPE field of a `! LEN CHANNEL TYPE` line:
/// without whitespace (`text/plain; charset=utf-8` becomes
/// `text/plain;charset=utf-8`, the same media type), and
/// [`DEFAULT_CONTENT_TYPE`] when nothing is left. Borrowed unless the type
/// holds whitespace, so the usual case copies nothing.
pub fn type_field(content_type: &[u8]) -> Cow<'_, [u8]> {
    if content_type.is_empty() {
        return Cow::Borrowed(DEFAULT_CONTENT_TYPE);
    }
    if !content_type.iter().any(|&b| is_space(b)) {
        return Cow::Borrowed(content_type);
    }
    let kept: Vec<u8> = content_type
        .iter()
        .copied()
        .filter(|&b| !is_space(b))
        .collect();
    if kept.is_empty() {
        Cow::Borrowed(DEFAULT_CONTENT_TYPE)
    } else {
        Cow::Owned(kept)
    }
}

/// Appends `n` in decimal.
pub fn put_decimal(out: &mut BytesMut, n: u64) {
    put_digits(out, n, 10);
}

/// Appends `n` in lower-case hexadecimal (chunk sizes).
fn put_hex(out: &mut BytesMut, n: usize) {
    put_digits(out, n as u64, 16);
}

fn put_digits(out: &mut BytesMut, mut n: u64, base: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // 20 digits hold any u64 in base 10 and more.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while i > 0 {
        i -= 1;
        if let (Some(d), Some(&c)) = (digits.get_mut(i), DIGITS.get((n % base) as usize)) {
            *d = c;
        }
        n /= base;
        if n == 0 {
            break;
        }
    }
    out.put_slice(digits.get(i..).unwrap_or_default());
}

/// Appends `! LEN CHANNEL TYPE\r\n` + body + `\r\n` (no body and no CRLF when empty).
/// The frame has exactly four fields: TYPE is written without whitespace, or
/// as `application/octet-stream` when empty (see [`type_field`]).
pub fn line_publication(out: &mut BytesMut, p: &Publication) {
    let content_type = type_field(p.content_type);
    out.reserve(p.channel.len() + content_type.len() + p.body.len() + 32);
    out.put_slice(b"! ");
    put_decimal(out, p.body.len() as u64);
    out.put_u8(b' ');
    out.put_slice(p.channel);
    out.put_u8(b' ');
    out.put_slice(&content_type);
    out.put_slice(b"\r\n");
    if !p.body.is_empty() {
        out.put_slice(p.body);
        out.put_slice(b"\r\n");
    }
}

/// Appends `! LEN CHANNEL TYPE ID\r\n` + body + `\r\n`: a line frame with
/// the message's id as a fifth field.
pub fn line_publication_id(out: &mut BytesMut, p: &Publication) {
    let content_type = type_field(p.content_type);
    out.reserve(p.channel.len() + content_type.len() + p.body.len() + 52);
    out.put_slice(b"! ");
    put_decimal(out, p.body.len() as u64);
    out.put_u8(b' ');
    out.put_slice(p.channel);
    out.put_u8(b' ');
    out.put_slice(&content_type);
    out.put_u8(b' ');
    put_decimal(out, p.id);
    out.put_slice(b"\r\n");
    if !p.body.is_empty() {
        out.put_slice(p.body);
        out.put_slice(b"\r\n");
    }
}

/// The bytes that open a multipart stream, sent with the response head.
pub fn multipart_opening(chunked: bool) -> &'static [u8] {
    if chunked {
        b"e\r\n--00MsgBus00\r\n\r\n"
    } else {
        b"--00MsgBus00\r\n"
    }
}

/// Appends one multipart part: headers, blank line, body and the delimiter that
/// closes it (`\r\n--00MsgBus00\r\n`). Every part carries `Content-Length`, so
/// a client may either count bytes or look for the delimiter. With `chunked`
/// the part is wrapped in exactly one chunk. Written straight into `out`: the
/// part's length is known before it is written.
pub fn multipart_part(out: &mut BytesMut, p: &Publication, root: bool, chunked: bool) {
    const FROM: &[u8] = b"From: ";
    const ID: &[u8] = b"Event-Id: ";
    const LOCATION: &[u8] = b"Content-Location: /msgbus/";
    const TYPE: &[u8] = b"Content-Type: ";
    const LENGTH: &[u8] = b"\r\nContent-Length: ";
    const CLOSE: &[u8] = b"\r\n--00MsgBus00\r\n";
    let mut len = TYPE.len() + p.content_type.len() + LENGTH.len();
    len += decimal_len(p.body.len() as u64) + 4 + p.body.len() + CLOSE.len();
    if let Some(user) = p.sender {
        len += FROM.len() + user.len() + 2;
    }
    if root {
        len += LOCATION.len() + p.channel.len() + 2;
    }
    if p.id != 0 {
        len += ID.len() + decimal_len(p.id) + 2;
    }
    out.reserve(len + 24);
    if chunked {
        put_hex(out, len);
        out.put_slice(b"\r\n");
    }
    if let Some(user) = p.sender {
        out.put_slice(FROM);
        out.put_slice(user);
        out.put_slice(b"\r\n");
    }
    if root {
        out.put_slice(LOCATION);
        out.put_slice(p.channel);
        out.put_slice(b"\r\n");
    }
    if p.id != 0 {
        out.put_slice(ID);
        put_decimal(out, p.id);
        out.put_slice(b"\r\n");
    }
    out.put_slice(TYPE);
    out.put_slice(p.content_type);
    out.put_slice(LENGTH);
    put_decimal(out, p.body.len() as u64);
    out.put_slice(b"\r\n\r\n");
    out.put_slice(p.body);
    out.put_slice(CLOSE);
    if chunked {
        out.put_slice(b"\r\n");
    }
}

/// How many digits `n` has in decimal.
pub fn decimal_len(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// Appends one Server-Sent Event. It is an unnamed event (so a page's
/// `onmessage` sees it) except for root subscribers, where the event is named
/// after the channel. A leading comment line `: channel=CH type=TYPE
/// [from=USER]` carries the metadata for clients that read the raw stream;
/// each body line becomes one `data:` line.
pub fn event_stream(out: &mut BytesMut, p: &Publication, root: bool) {
    out.reserve(p.body.len() + p.content_type.len() + p.channel.len() + 64);
    out.put_slice(b": channel=");
    out.put_slice(p.channel);
    out.put_slice(b" type=");
    out.put_slice(p.content_type);
    if let Some(user) = p.sender {
        out.put_slice(b" from=");
        out.put_slice(user);
    }
    out.put_slice(b"\n");
    if p.id != 0 {
        out.put_slice(b"id: ");
        put_decimal(out, p.id);
        out.put_slice(b"\n");
    }
    if root {
        out.put_slice(b"event: ");
        out.put_slice(p.channel);
        out.put_slice(b"\n");
    }
    // A body line may end in \n, \r\n or \r; each becomes its own data line.
    let mut rest = p.body;
    loop {
        let cut = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match cut.map(|i| rest.split_at(i)) {
            Some((line, tail)) => {
                out.put_slice(line);
                out.put_slice(b"\n");
                rest = tail
                    .strip_prefix(b"\r\n")
                    .or_else(|| tail.get(1..))
                    .unwrap_or_default();
            }
            None => {
                out.put_slice(rest);
                out.put_slice(b"\n");
                break;
            }
        }
    }
    out.put_slice(b"\n");
}

/// The JSON object of one publication, on one line:
/// `{"channel":…,"type":…,"from":…,"body":…}` (`from` is null for an
/// anonymous publisher). Strings are JSON-escaped; bytes that are not UTF-8
/// become U+FFFD. The one place the JSON forms (SSE and WebSocket) are
/// made, so a field added here reaches both.
pub fn publication_json(p: &Publication) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut event = serde_json::json!({
        "channel": text(p.channel),
        "type": text(p.content_type),
        "from": p.sender.map(text),
        "body": text(p.body),
    });
    if p.id != 0 {
        if let Some(fields) = event.as_object_mut() {
            fields.insert("id".into(), p.id.into());
        }
    }
    event.to_string()
}

/// Appends one Server-Sent Event whose data is [`publication_json`]: a
/// body's line breaks stay inside the one `data:` line. With an id (history
/// on), an `id:` line comes first, so a reconnecting EventSource sends it
/// back as `Last-Event-ID`.
pub fn event_stream_json(out: &mut BytesMut, p: &Publication) {
    if p.id != 0 {
        out.put_slice(b"id: ");
        put_decimal(out, p.id);
        out.put_slice(b"\n");
    }
    out.put_slice(b"data: ");
    out.put_slice(publication_json(p).as_bytes());
    out.put_slice(b"\n\n");
}

/// The length of `bytes` as the JSON string [`event_stream_json`] writes
/// (quotes excluded): bytes that are not UTF-8 become U+FFFD (3 bytes per
/// invalid sequence), `"` and `\\` and the short control escapes take 2
/// bytes, other control bytes 6 (`\u00XX`).
pub fn json_string_len(bytes: &[u8]) -> usize {
    let mut len = 0usize;
    for chunk in bytes.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            len += match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
                0..=0x1f => 6,
                _ => 1,
            };
        }
        if !chunk.invalid().is_empty() {
            len += 3;
        }
    }
    len
}

/// WebSocket opcodes (RFC 6455 §5.2) of the frames the server sends.
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Appends the head of a whole (FIN), unmasked WebSocket frame with
/// `opcode` and a payload of `len` bytes, its length in the shortest form.
pub fn websocket_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | (opcode & 0x0F));
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// True when a message of `content_type` goes to WebSocket clients as
/// text: `text/*`, `application/json` and `*/*+json` types.
pub fn is_text_type(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let lower = media.to_ascii_lowercase();
    lower.starts_with(b"text/") || lower == b"application/json" || lower.ends_with(b"+json")
}

/// Appends one WebSocket message for a publication: its body, in a text
/// frame when its type is a text type ([`is_text_type`]) and the body is
/// UTF-8 (a client must fail a connection whose text is not), in a binary
/// frame otherwise; with `json`, a text frame holding [`publication_json`].
pub fn websocket_message(out: &mut BytesMut, p: &Publication, json: bool) {
    if json {
        let text = publication_json(p);
        out.reserve(text.len() + 10);
        websocket_header(out, OP_TEXT, text.len());
        out.put_slice(text.as_bytes());
        return;
    }
    let text = is_text_type(p.content_type) && std::str::from_utf8(p.body).is_ok();
    out.reserve(p.body.len() + 10);
    websocket_header(out, if text { OP_TEXT } else { OP_BINARY }, p.body.len());
    out.put_slice(p.body);
}

/// Appends the frame of `framing` for one publication.
pub fn append(out: &mut BytesMut, framing: Framing, p: &Publication, root: bool) {
    match framing {
        Framing::Line => line_publication(out, p),
        Framing::MultipartChunked => multipart_part(out, p, root, true),
        Framing::MultipartPlain => multipart_part(out, p, root, false),
        Framing::EventStream => event_stream(out, p, root),
        Framing::EventStreamJson => event_stream_json(out, p),
        Framing::WebSocket => websocket_message(out, p, false),
        Framing::WebSocketJson => websocket_message(out, p, true),
        Framing::LineIds => line_publication_id(out, p),
    }
}

/// Appends the notice that messages after the id a subscriber asked for
/// are no longer kept: the first it gets (or will get) is `first`. `name`
/// is what it subscribed to. An event stream gets `event: gap` with the id
/// as data; a multipart stream an empty part of type
/// `application/x-msgbus-gap` with a `Gap-First-Id:` header; a line
/// subscriber `@ NAME FIRST`.
pub fn gap(out: &mut BytesMut, framing: Framing, name: &[u8], first: u64) {
    match framing {
        Framing::EventStream | Framing::EventStreamJson => {
            out.put_slice(b"event: gap\ndata: ");
            put_decimal(out, first);
            out.put_slice(b"\n\n");
        }
        Framing::MultipartChunked | Framing::MultipartPlain => {
            let mut part = BytesMut::new();
            part.put_slice(b"Content-Type: application/x-msgbus-gap\r\nGap-First-Id: ");
            put_decimal(&mut part, first);
            part.put_slice(b"\r\nContent-Length: 0\r\n\r\n\r\n--00MsgBus00\r\n");
            if framing == Framing::MultipartChunked {
                put_hex(out, part.len());
                out.put_slice(b"\r\n");
                out.put_slice(&part);
                out.put_slice(b"\r\n");
            } else {
                out.put_slice(&part);
            }
        }
        // The JSON form gets an object `{"gap": FIRST}`. A plain WebSocket
        // never resumes (its handshake with `?since=` is refused), so its
        // text frame `gap FIRST` is only a fallback.
        Framing::WebSocket | Framing::WebSocketJson => {
            let text = if framing == Framing::WebSocketJson {
                format!("{{\"gap\":{first}}}")
            } else {
                format!("gap {first}")
            };
            websocket_header(out, OP_TEXT, text.len());
            out.put_slice(text.as_bytes());
        }
        Framing::Line | Framing::LineIds => {
            out.put_slice(b"@ ");
            out.put_slice(name);
            out.put_u8(b' ');
            put_decimal(out, first);
            out.put_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication<'a>(body: &'a [u8], sender: Option<&'a [u8]>) -> Publication<'a> {
        Publication {
            channel: b"foo",
            content_type: b"text/plain",
            sender,
            body,
            id: 0,
        }
    }

    #[test]
    fn json_string_len_is_what_the_json_framing_writes() {
        let cases: [&[u8]; 7] = [
            b"plain",
            b"a\nb\r\tc\\d\"e",
            b"\x00\x01\x1f\x7f\x08\x0c",
            "caf\u{e9} \u{1f600}".as_bytes(),
            b"bad \xff\xfe utf8 \xe2\x82",
            b"",
            b"\xc3",
        ];
        for body in cases {
            let escaped =
                serde_json::Value::String(String::from_utf8_lossy(body).into_owned()).to_string();
            assert_eq!(json_string_len(body), escaped.len() - 2, "{body:?}");
        }
    }

    #[test]
    fn line_frames() {
        let mut out = BytesMut::new();
        line_publication(&mut out, &publication(b"hello", None));
        assert_eq!(&out[..], b"! 5 foo text/plain\r\nhello\r\n");
        out.clear();
        line_publication(&mut out, &publication(b"", None));
        assert_eq!(&out[..], b"! 0 foo text/plain\r\n");
    }

    #[test]
    fn line_frames_have_four_fields() {
        let mut out = BytesMut::new();
        for (content_type, want) in [
            (
                &b"text/plain; charset=utf-8"[..],
                &b"! 3 foo text/plain;charset=utf-8\r\nabc\r\n"[..],
            ),
            (
                b"text/plain;\tcharset=utf-8 ",
                b"! 3 foo text/plain;charset=utf-8\r\nabc\r\n",
            ),
            (b"", b"! 3 foo application/octet-stream\r\nabc\r\n"),
            (b"  ", b"! 3 foo application/octet-stream\r\nabc\r\n"),
        ] {
            out.clear();
            let p = Publication {
                channel: b"foo",
                content_type,
                sender: None,
                body: b"abc",
                id: 0,
            };
            line_publication(&mut out, &p);
            assert_eq!(
                &out[..],
                want,
                "{:?}",
                String::from_utf8_lossy(content_type)
            );
        }
        // Other framings keep the type as the publisher wrote it.
        let p = Publication {
            channel: b"foo",
            content_type: b"text/plain; charset=utf-8",
            sender: None,
            body: b"abc",
            id: 0,
        };
        out.clear();
        multipart_part(&mut out, &p, false, false);
        assert!(out.starts_with(b"Content-Type: text/plain; charset=utf-8\r\n"));
    }

    #[test]
    fn multipart_frames() {
        let mut out = BytesMut::new();
        multipart_part(&mut out, &publication(b"hello", Some(b"bob")), true, false);
        assert_eq!(
            &out[..],
            &b"From: bob\r\nContent-Location: /msgbus/foo\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n"[..]
        );
        out.clear();
        multipart_part(&mut out, &publication(b"hello", None), false, true);
        let part =
            b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n";
        let mut want = format!("{:x}\r\n", part.len()).into_bytes();
        want.extend_from_slice(part);
        want.extend_from_slice(b"\r\n");
        assert_eq!(&out[..], &want[..]);
        assert_eq!(multipart_opening(true), b"e\r\n--00MsgBus00\r\n\r\n");
    }

    #[test]
    fn event_stream_splits_lines() {
        let mut out = BytesMut::new();
        event_stream(&mut out, &publication(b"a\r\nb\nc", None), false);
        assert_eq!(
            &out[..],
            b": channel=foo type=text/plain\ndata: a\ndata: b\ndata: c\n\n"
        );
    }

    #[test]
    fn chunk_sizes_match_parts() {
        for len in [0usize, 9, 10, 99, 100, 12345] {
            let body = vec![b'x'; len];
            for (root, sender, id) in [
                (false, None, 0),
                (true, Some(&b"bob"[..]), 0),
                (false, None, 7),
                (true, Some(&b"bob"[..]), 12_345_678_901),
            ] {
                let p = Publication {
                    channel: b"news.x",
                    content_type: b"text/plain",
                    sender,
                    body: &body,
                    id,
                };
                let mut plain = BytesMut::new();
                multipart_part(&mut plain, &p, root, false);
                let mut chunked = BytesMut::new();
                multipart_part(&mut chunked, &p, root, true);
                let want = format!("{:x}\r\n", plain.len());
                assert!(chunked.starts_with(want.as_bytes()));
                assert_eq!(&chunked[want.len()..chunked.len() - 2], &plain[..]);
                assert!(chunked.ends_with(b"\r\n"));
            }
        }
    }

    #[test]
    fn event_stream_json_is_one_data_line() {
        let mut out = BytesMut::new();
        event_stream_json(&mut out, &publication(b"a\r\n\"b\"", Some(b"bob")));
        assert_eq!(
            &out[..],
            &b"data: {\"body\":\"a\\r\\n\\\"b\\\"\",\"channel\":\"foo\",\"from\":\"bob\",\"type\":\"text/plain\"}\n\n"[..]
        );
        out.clear();
        event_stream_json(&mut out, &publication(b"x", None));
        assert!(out.starts_with(b"data: {") && out.ends_with(b"}\n\n"));
        assert!(memchr::memmem::find(&out, b"\"from\":null").is_some());
    }

    #[test]
    fn websocket_frames() {
        let mut out = BytesMut::new();
        websocket_message(&mut out, &publication(b"hi", None), false);
        assert_eq!(&out[..], b"\x81\x02hi");
        for (content_type, body, first) in [
            (&b"application/json"[..], &b"{}"[..], 0x81u8),
            (b"application/ld+json; charset=utf-8", b"{}", 0x81),
            (b"Text/HTML", b"<p>", 0x81),
            (b"text/plain", b"\xff", 0x82),
            (b"image/png", b"x", 0x82),
            (b"", b"x", 0x82),
        ] {
            out.clear();
            let p = Publication {
                channel: b"c",
                content_type,
                sender: None,
                body,
                id: 0,
            };
            websocket_message(&mut out, &p, false);
            assert_eq!(out[0], first, "{:?}", String::from_utf8_lossy(content_type));
            assert_eq!(&out[2..], body);
        }
        for (len, head) in [
            (125usize, &b"\x82\x7d"[..]),
            (126, b"\x82\x7e\x00\x7e"),
            (65535, b"\x82\x7e\xff\xff"),
            (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        ] {
            out.clear();
            let body = vec![0u8; len];
            let p = Publication {
                channel: b"c",
                content_type: b"image/png",
                sender: None,
                body: &body,
                id: 0,
            };
            websocket_message(&mut out, &p, false);
            assert!(out.starts_with(head), "{len}");
            assert_eq!(out.len(), head.len() + len);
        }
        out.clear();
        websocket_message(&mut out, &publication(b"\xff", Some(b"bob")), true);
        let text = publication_json(&publication(b"\xff", Some(b"bob")));
        assert_eq!(out[0], 0x81);
        assert_eq!(&out[2..], text.as_bytes());
        assert!(text.contains("\"from\":\"bob\""));
    }

    #[test]
    fn decimal_and_hex() {
        let mut out = BytesMut::new();
        put_decimal(&mut out, 0);
        put_decimal(&mut out, u64::MAX);
        put_hex(&mut out, 0);
        put_hex(&mut out, 0x1a2b);
        assert_eq!(&out[..], b"01844674407370955161501a2b" as &[u8]);
        for (n, digits) in [(0, 1), (9, 1), (10, 2), (99, 2), (100, 3), (u64::MAX, 20)] {
            assert_eq!(decimal_len(n), digits, "{n}");
        }
    }

    fn with_id<'a>(body: &'a [u8], sender: Option<&'a [u8]>, id: u64) -> Publication<'a> {
        Publication {
            id,
            ..publication(body, sender)
        }
    }

    #[test]
    fn ids_ride_on_every_framing_that_carries_them() {
        let mut out = BytesMut::new();
        line_publication_id(&mut out, &with_id(b"hello", None, 42));
        assert_eq!(&out[..], b"! 5 foo text/plain 42\r\nhello\r\n");
        out.clear();
        let p = Publication {
            content_type: b"text/plain; charset=utf-8",
            ..with_id(b"", None, 7)
        };
        line_publication_id(&mut out, &p);
        assert_eq!(&out[..], b"! 0 foo text/plain;charset=utf-8 7\r\n");
        // A body longer than the channel and the type together.
        out.clear();
        let body = [b'x'; 100];
        line_publication_id(&mut out, &with_id(&body, None, 7));
        let mut want = b"! 100 foo text/plain 7\r\n".to_vec();
        want.extend_from_slice(&body);
        want.extend_from_slice(b"\r\n");
        assert_eq!(&out[..], &want[..]);

        out.clear();
        multipart_part(&mut out, &with_id(b"hello", None, 42), false, false);
        assert_eq!(
            &out[..],
            &b"Event-Id: 42\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n--00MsgBus00\r\n"[..]
        );

        out.clear();
        event_stream(&mut out, &with_id(b"hi", None, 42), false);
        assert_eq!(
            &out[..],
            b": channel=foo type=text/plain\nid: 42\ndata: hi\n\n"
        );

        let json =
            "{\"body\":\"hi\",\"channel\":\"foo\",\"from\":null,\"id\":42,\"type\":\"text/plain\"}";
        assert_eq!(publication_json(&with_id(b"hi", None, 42)), json);
        out.clear();
        event_stream_json(&mut out, &with_id(b"hi", None, 42));
        assert_eq!(&out[..], format!("id: 42\ndata: {json}\n\n").as_bytes());
        out.clear();
        websocket_message(&mut out, &with_id(b"hi", None, 42), true);
        assert_eq!(&out[..2], [0x81, json.len() as u8]);
        assert_eq!(&out[2..], json.as_bytes());

        // Without an id (no history), none of them says one.
        for &framing in Framing::ALL {
            out.clear();
            append(&mut out, framing, &with_id(b"hi", None, 0), false);
            let text = String::from_utf8_lossy(&out);
            assert!(
                !text.contains("id: ") && !text.contains("Event-Id") && !text.contains("\"id\""),
                "{framing:?}: {text:?}"
            );
        }
    }

    #[test]
    fn append_frames_as_asked() {
        let p = with_id(b"hello", Some(b"bob"), 9);
        for &framing in Framing::ALL {
            for root in [false, true] {
                let mut got = BytesMut::new();
                append(&mut got, framing, &p, root);
                let mut want = BytesMut::new();
                match framing {
                    Framing::Line => line_publication(&mut want, &p),
                    Framing::MultipartChunked => multipart_part(&mut want, &p, root, true),
                    Framing::MultipartPlain => multipart_part(&mut want, &p, root, false),
                    Framing::EventStream => event_stream(&mut want, &p, root),
                    Framing::EventStreamJson => event_stream_json(&mut want, &p),
                    Framing::WebSocket => websocket_message(&mut want, &p, false),
                    Framing::WebSocketJson => websocket_message(&mut want, &p, true),
                    Framing::LineIds => line_publication_id(&mut want, &p),
                }
                assert!(!want.is_empty());
                assert_eq!(got, want, "{framing:?}, root {root}");
            }
        }
    }

    #[test]
    fn a_root_event_is_named_after_its_channel_and_lone_crs_split_lines() {
        let mut out = BytesMut::new();
        event_stream(&mut out, &with_id(b"a\rb\r\rc\r", Some(b"bob"), 3), true);
        assert_eq!(
            &out[..],
            &b": channel=foo type=text/plain from=bob\nid: 3\nevent: foo\n\
               data: a\ndata: b\ndata: \ndata: c\ndata: \n\n"[..]
        );
    }

    #[test]
    fn gap_notices_of_every_framing() {
        let part = b"Content-Type: application/x-msgbus-gap\r\nGap-First-Id: 1234\r\n\
                     Content-Length: 0\r\n\r\n\r\n--00MsgBus00\r\n";
        let mut chunked = format!("{:x}\r\n", part.len()).into_bytes();
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
        let ws = |text: &str| {
            let mut frame = vec![0x81, text.len() as u8];
            frame.extend_from_slice(text.as_bytes());
            frame
        };
        for (framing, want) in [
            (Framing::Line, b"@ news.* 1234\r\n".to_vec()),
            (Framing::LineIds, b"@ news.* 1234\r\n".to_vec()),
            (Framing::EventStream, b"event: gap\ndata: 1234\n\n".to_vec()),
            (
                Framing::EventStreamJson,
                b"event: gap\ndata: 1234\n\n".to_vec(),
            ),
            (Framing::MultipartPlain, part.to_vec()),
            (Framing::MultipartChunked, chunked),
            (Framing::WebSocket, ws("gap 1234")),
            (Framing::WebSocketJson, ws("{\"gap\":1234}")),
        ] {
            let mut out = BytesMut::new();
            gap(&mut out, framing, b"news.*", 1234);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want),
                "{framing:?}"
            );
        }
    }
}
