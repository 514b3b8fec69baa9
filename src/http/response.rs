//! HTTP/1.x responses, built with [`Response`] and appended to a `BytesMut`.
//!
//! Owns: the status line and reason phrases, the `Server: switchboard`
//! header every response carries, the `Content-Length` / `Connection` rules,
//! the head of an open-ended stream, and the error page for [`HttpError`].
//! Must not touch: sockets or output queues (callers enqueue what is written
//! here), routing, what a stream sends after its head.
//!
//! Header names and values come from callers and sometimes from clients; a
//! CR, LF or NUL in them is written as a space so that no caller can split a
//! response.

use std::borrow::Cow;

use crate::http::codec::HttpError;
use bytes::{BufMut, Bytes, BytesMut};

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The `Server` header value.
pub const SERVER: &str = "switchboard";

/// The `Server` header line, whole: written in one piece on every proxied
/// response that has none of its own.
pub const SERVER_LINE: &str = "Server: switchboard\r\n";

/// The content type of the plain-text pages (errors, refusals).
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A header name or value: usually a literal, sometimes built.
pub type Text = Cow<'static, str>;

/// One response, built by chaining:
///
/// ```
/// # use switchboard::http::response::Response;
/// let mut out = bytes::BytesMut::new();
/// Response::new(404)
///     .header("Cache-Control", "no-cache")
///     .body("text/html", &b"<h1>Not Found</h1>"[..])
///     .version(1)
///     .head_only(false)
///     .keep_alive(true)
///     .write(&mut out);
/// assert!(out.starts_with(b"HTTP/1.1 404 Not Found\r\nServer: switchboard\r\n"));
/// ```
///
/// A door's handler says what to answer (status, headers, body); the HTTP
/// connection machine says how (the request's version, HEAD, keep-alive)
/// before it writes the response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    reason: &'static str,
    headers: Vec<(Text, Text)>,
    body: Body,
    minor_version: u8,
    head_only: bool,
    keep_alive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    /// No body (`Content-Length: 0`, or nothing for a bodiless status).
    Empty,
    /// A body of known length; `Content-Type` unless `content_type` is empty.
    Full { content_type: Text, bytes: Bytes },
    /// An open-ended stream: neither `Content-Length` nor `Connection`, and
    /// `opening` right after the head (left out for HEAD).
    Stream { opening: Bytes },
}

impl Response {
    /// A response with `status`, its usual reason phrase and no body, for
    /// HTTP/1.1 with keep-alive.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            reason: reason_phrase(status),
            headers: Vec::new(),
            body: Body::Empty,
            minor_version: 1,
            head_only: false,
            keep_alive: true,
        }
    }

    /// The error page for a request that could not be decoded: a one-line
    /// text body such as `400 Bad Request: invalid Content-Length`, and
    /// `Connection: close` (the connection closes after it).
    pub fn error(err: HttpError) -> Response {
        Response::new(err.status())
            .reason(err.reason())
            .body(TEXT, format!("{err}\n"))
            .keep_alive(false)
    }

    /// A plain-text page: `STATUS REASON: detail` and a line end.
    pub fn text(status: u16, detail: &str) -> Response {
        let r = Response::new(status);
        let body = format!("{} {}: {detail}\n", status, r.reason);
        r.body(TEXT, body)
    }

    /// Another reason phrase than the usual one.
    pub fn reason(mut self, reason: &'static str) -> Response {
        self.reason = reason;
        self
    }

    /// Adds a header (after `Server`, in the order added).
    pub fn header(mut self, name: impl Into<Text>, value: impl Into<Text>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A body of known length; `Content-Type` is sent unless `content_type`
    /// is empty.
    pub fn body(mut self, content_type: impl Into<Text>, bytes: impl Into<Bytes>) -> Response {
        self.body = Body::Full {
            content_type: content_type.into(),
            bytes: bytes.into(),
        };
        self
    }

    /// Makes this the head of an open-ended stream: no `Content-Length`, no
    /// `Connection`, and `opening` sent right after the head (not on HEAD).
    pub fn stream(mut self, opening: impl Into<Bytes>) -> Response {
        self.body = Body::Stream {
            opening: opening.into(),
        };
        self
    }

    /// The HTTP version of the status line: 0 for HTTP/1.0, else HTTP/1.1.
    pub fn version(mut self, minor_version: u8) -> Response {
        self.minor_version = minor_version;
        self
    }

    /// Leaves the body out (the answer to HEAD); `Content-Length` stays.
    pub fn head_only(mut self, head_only: bool) -> Response {
        self.head_only = head_only;
        self
    }

    /// Whether the connection stays open after this response: on HTTP/1.1
    /// `Connection: close` is sent when not, on HTTP/1.0
    /// `Connection: keep-alive` when it does.
    pub fn keep_alive(mut self, keep_alive: bool) -> Response {
        self.keep_alive = keep_alive;
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// False once [`Response::keep_alive`] said so.
    pub fn keeps_alive(&self) -> bool {
        self.keep_alive
    }

    /// True for the head of an open-ended stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.body, Body::Stream { .. })
    }

    /// Appends the response to `out`.
    ///
    /// 1xx, 204 and 304 responses carry neither a length nor a body.
    pub fn write(&self, out: &mut BytesMut) {
        start_head(out, self.minor_version, self.status, self.reason);
        for (name, value) in &self.headers {
            write_header(out, name, value);
        }
        let bodiless = self.status < 200 || self.status == 204 || self.status == 304;
        let payload: &[u8] = match &self.body {
            Body::Stream { opening } => {
                out.put_slice(b"\r\n");
                if !self.head_only {
                    out.put_slice(opening);
                }
                return;
            }
            Body::Empty => b"",
            Body::Full {
                content_type,
                bytes,
            } => {
                if !bodiless && !content_type.is_empty() {
                    write_header(out, "Content-Type", content_type);
                }
                bytes
            }
        };
        if !bodiless {
            out.put_slice(b"Content-Length: ");
            put_decimal(out, payload.len() as u64);
            out.put_slice(b"\r\n");
        }
        match (self.minor_version == 0, self.keep_alive) {
            (false, false) => write_header(out, "Connection", "close"),
            (true, true) => write_header(out, "Connection", "keep-alive"),
            _ => {}
        }
        out.put_slice(b"\r\n");
        if !bodiless && !self.head_only {
            out.put_slice(payload);
        }
    }

    /// The response as one frame.
    pub fn to_bytes(&self) -> Bytes {
        let body_len = match &self.body {
            Body::Empty => 0,
            Body::Full { bytes, .. } => bytes.len(),
            Body::Stream { opening } => opening.len(),
        };
        let mut out = BytesMut::with_capacity(128 + body_len);
        self.write(&mut out);
        out.freeze()
    }
}

/// The usual reason phrase of `status` (empty for a status not listed).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn start_head(out: &mut BytesMut, minor_version: u8, status: u16, reason: &str) {
    out.put_slice(if minor_version == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    put_decimal(out, u64::from(status));
    out.put_u8(b' ');
    put_clean(out, reason);
    out.put_slice(b"\r\n");
    write_header(out, "Server", SERVER);
}

fn write_header(out: &mut BytesMut, name: &str, value: &str) {
    put_clean(out, name);
    out.put_slice(b": ");
    put_clean(out, value);
    out.put_slice(b"\r\n");
}

/// Appends `text`, with CR, LF and NUL written as spaces.
fn put_clean(out: &mut BytesMut, text: &str) {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        out.put_slice(bytes);
        return;
    }
    out.extend(bytes.iter().map(|&b| match b {
        b'\r' | b'\n' | 0 => b' ',
        _ => b,
    }));
}

fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(slot) = digits.get_mut(start) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    out.put_slice(digits.get(start..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Response) -> String {
        let mut out = BytesMut::new();
        r.write(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn stream_head_has_server_and_headers_and_no_length() {
        let head = Response::new(200)
            .header(
                "Content-Type",
                "multipart/x-mixed-replace;boundary=00MsgBus00",
            )
            .header("Transfer-Encoding", "chunked")
            .stream(&b"opening"[..]);
        let want = "HTTP/1.1 200 OK\r\nServer: switchboard\r\n\
             Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\
             Transfer-Encoding: chunked\r\n\r\n";
        assert_eq!(text(&head), format!("{want}opening"));
        assert_eq!(text(&head.clone().head_only(true)), want);
        // Keep-alive and version do not add a Connection header to a stream.
        assert_eq!(text(&head.clone().keep_alive(false).head_only(true)), want);
        assert_eq!(
            text(
                &Response::new(200)
                    .stream(Bytes::new())
                    .version(0)
                    .keep_alive(true)
            ),
            "HTTP/1.0 200 OK\r\nServer: switchboard\r\n\r\n"
        );
        assert!(head.is_stream());
    }

    #[test]
    fn no_content_keep_alive_rules() {
        let ok = || Response::new(204).reason("OK");
        assert_eq!(
            text(&ok()),
            "HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n"
        );
        assert_eq!(
            text(&ok().keep_alive(false)),
            "HTTP/1.1 204 OK\r\nServer: switchboard\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            text(&ok().version(0)),
            "HTTP/1.0 204 OK\r\nServer: switchboard\r\nConnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            text(&ok().version(0).keep_alive(false)),
            "HTTP/1.0 204 OK\r\nServer: switchboard\r\n\r\n"
        );
        // A body given to a bodiless status is not sent.
        assert_eq!(
            text(&ok().body("text/plain", &b"x"[..])),
            "HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n"
        );
        assert_eq!(
            text(&Response::new(200)),
            "HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn body_and_head_only() {
        let r = Response::new(404)
            .header("Allow", "GET")
            .body("text/html", &b"<h1>Not Found</h1>"[..]);
        assert_eq!(
            text(&r),
            "HTTP/1.1 404 Not Found\r\nServer: switchboard\r\nAllow: GET\r\n\
             Content-Type: text/html\r\nContent-Length: 18\r\n\r\n<h1>Not Found</h1>"
        );
        assert_eq!(
            text(&r.clone().head_only(true)),
            "HTTP/1.1 404 Not Found\r\nServer: switchboard\r\nAllow: GET\r\n\
             Content-Type: text/html\r\nContent-Length: 18\r\n\r\n"
        );
        assert_eq!(&r.to_bytes()[..], text(&r).as_bytes());
        assert_eq!(
            text(&Response::new(200).body("", &b"ab"[..])),
            "HTTP/1.1 200 OK\r\nServer: switchboard\r\nContent-Length: 2\r\n\r\nab"
        );
        assert_eq!(
            text(&Response::text(501, "not here")),
            "HTTP/1.1 501 Not Implemented\r\nServer: switchboard\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 30\r\n\r\n\
             501 Not Implemented: not here\n"
        );
    }

    #[test]
    fn error_page() {
        let r = Response::error(HttpError::BadRequest("invalid Content-Length"));
        assert!(!r.keeps_alive());
        assert_eq!(
            text(&r),
            "HTTP/1.1 400 Bad Request\r\nServer: switchboard\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 40\r\n\
             Connection: close\r\n\r\n400 Bad Request: invalid Content-Length\n"
        );
        for err in [
            HttpError::UriTooLong,
            HttpError::HeaderTooLarge,
            HttpError::TooManyHeaders,
            HttpError::BodyTooLarge,
            HttpError::VersionNotSupported,
            HttpError::NotImplemented("x"),
        ] {
            let t = text(&Response::error(err));
            let status_line = format!("HTTP/1.1 {} {}\r\n", err.status(), err.reason());
            assert!(t.starts_with(&status_line), "{t}");
            assert!(t.contains("\r\nConnection: close\r\n"), "{t}");
            let body = t.split_once("\r\n\r\n").unwrap().1;
            assert!(t.contains(&format!("Content-Length: {}\r\n", body.len())));
            assert!(body.starts_with(&err.status().to_string()));
        }
    }

    #[test]
    fn no_response_splitting() {
        let r = Response::new(200)
            .reason("O\r\nK")
            .header("X-A", "a\r\nSet-Cookie: b")
            .header(String::from("X-\nB"), String::from("c\0d"))
            .stream(Bytes::new());
        assert_eq!(
            text(&r),
            "HTTP/1.1 200 O  K\r\nServer: switchboard\r\nX-A: a  Set-Cookie: b\r\nX- B: c d\r\n\r\n"
        );
    }

    #[test]
    fn reasons_and_decimal() {
        assert_eq!(reason_phrase(504), "Gateway Timeout");
        assert_eq!(reason_phrase(599), "");
        assert_eq!(
            text(&Response::new(599).stream(Bytes::new())),
            "HTTP/1.1 599 \r\nServer: switchboard\r\n\r\n"
        );
        for n in [0u64, 7, 10, 99, 100, 65535, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
        assert_eq!(CONTINUE, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
