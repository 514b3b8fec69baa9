//! HTTP/1.x response heads and small complete responses, appended to a
//! `BytesMut`.
//!
//! Owns: the status line, the `Server: switchboard` header every response
//! carries, `Content-Length` / `Connection` rules for complete responses, and
//! the error page for [`HttpError`]. Must not touch: sockets or output queues
//! (callers enqueue what is written here), routing, streaming bodies.
//!
//! Header names and values come from callers and sometimes from clients; a
//! CR, LF or NUL in them is written as a space so that no caller can split a
//! response.

use crate::http::codec::HttpError;
use bytes::{BufMut, BytesMut};

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The `Server` header value.
pub const SERVER: &str = "switchboard";

/// Writes `HTTP/1.x STATUS REASON`, `Server: switchboard`, `headers` in
/// order, and the empty line that ends the head. `minor_version` 0 gives
/// HTTP/1.0, anything else HTTP/1.1.
pub fn write_head(
    out: &mut BytesMut,
    minor_version: u8,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
) {
    start_head(out, minor_version, status, reason);
    for (name, value) in headers {
        write_header(out, name, value);
    }
    out.put_slice(b"\r\n");
}

/// A complete response with a body of known length.
///
/// `Content-Type` is sent when `content_type` is not empty. `Content-Length`
/// is the body's length (also for `head_only`, which leaves the body out);
/// 1xx, 204 and 304 responses carry neither a length nor a body. On HTTP/1.1
/// `Connection: close` is sent when `!keep_alive`; on HTTP/1.0
/// `Connection: keep-alive` when `keep_alive`.
#[allow(clippy::too_many_arguments)]
pub fn simple(
    out: &mut BytesMut,
    minor_version: u8,
    status: u16,
    reason: &str,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
) {
    start_head(out, minor_version, status, reason);
    for (name, value) in extra {
        write_header(out, name, value);
    }
    let bodiless = status < 200 || status == 204 || status == 304;
    if !bodiless {
        if !content_type.is_empty() {
            write_header(out, "Content-Type", content_type);
        }
        out.put_slice(b"Content-Length: ");
        put_decimal(out, body.len() as u64);
        out.put_slice(b"\r\n");
    }
    match (minor_version == 0, keep_alive) {
        (false, false) => write_header(out, "Connection", "close"),
        (true, true) => write_header(out, "Connection", "keep-alive"),
        _ => {}
    }
    out.put_slice(b"\r\n");
    if !bodiless && !head_only {
        out.put_slice(body);
    }
}

/// The response to a request that could not be decoded: always HTTP/1.1
/// (the version may be unknown), `Connection: close`, and a one-line text
/// body such as `400 Bad Request: invalid Content-Length`.
pub fn error_response(out: &mut BytesMut, err: HttpError) {
    let body = format!("{err}\n");
    simple(
        out,
        1,
        err.status(),
        err.reason(),
        &[],
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
        false,
    );
}

/// Appends the interim `100 Continue` response.
pub fn write_continue(out: &mut BytesMut) {
    out.put_slice(CONTINUE);
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

    fn text(out: &BytesMut) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    #[test]
    fn head_has_server_and_headers() {
        let mut out = BytesMut::new();
        write_head(
            &mut out,
            1,
            200,
            "OK",
            &[
                (
                    "Content-Type",
                    "multipart/x-mixed-replace;boundary=00MsgBus00",
                ),
                ("Transfer-Encoding", "chunked"),
            ],
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\nServer: switchboard\r\n\
             Content-Type: multipart/x-mixed-replace;boundary=00MsgBus00\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        out.clear();
        write_head(&mut out, 0, 501, "Not Implemented", &[]);
        assert_eq!(
            text(&out),
            "HTTP/1.0 501 Not Implemented\r\nServer: switchboard\r\n\r\n"
        );
    }

    #[test]
    fn no_content_keep_alive_rules() {
        let mut out = BytesMut::new();
        simple(&mut out, 1, 204, "OK", &[], "", b"", false, true);
        assert_eq!(text(&out), "HTTP/1.1 204 OK\r\nServer: switchboard\r\n\r\n");
        out.clear();
        simple(&mut out, 1, 204, "OK", &[], "", b"", false, false);
        assert_eq!(
            text(&out),
            "HTTP/1.1 204 OK\r\nServer: switchboard\r\nConnection: close\r\n\r\n"
        );
        out.clear();
        simple(&mut out, 0, 204, "OK", &[], "", b"", false, true);
        assert_eq!(
            text(&out),
            "HTTP/1.0 204 OK\r\nServer: switchboard\r\nConnection: keep-alive\r\n\r\n"
        );
        out.clear();
        simple(&mut out, 0, 204, "OK", &[], "", b"", false, false);
        assert_eq!(text(&out), "HTTP/1.0 204 OK\r\nServer: switchboard\r\n\r\n");
    }

    #[test]
    fn body_and_head_only() {
        let mut out = BytesMut::new();
        simple(
            &mut out,
            1,
            404,
            "Not Found",
            &[("Allow", "GET")],
            "text/html",
            b"<h1>Not Found</h1>",
            false,
            true,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 404 Not Found\r\nServer: switchboard\r\nAllow: GET\r\n\
             Content-Type: text/html\r\nContent-Length: 18\r\n\r\n<h1>Not Found</h1>"
        );
        out.clear();
        simple(
            &mut out,
            1,
            404,
            "Not Found",
            &[],
            "text/html",
            b"<h1>Not Found</h1>",
            true,
            true,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 404 Not Found\r\nServer: switchboard\r\n\
             Content-Type: text/html\r\nContent-Length: 18\r\n\r\n"
        );
    }

    #[test]
    fn error_page() {
        let mut out = BytesMut::new();
        error_response(&mut out, HttpError::BadRequest("invalid Content-Length"));
        assert_eq!(
            text(&out),
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
            out.clear();
            error_response(&mut out, err);
            let t = text(&out);
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
        let mut out = BytesMut::new();
        write_head(&mut out, 1, 200, "O\r\nK", &[("X-A", "a\r\nSet-Cookie: b")]);
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 O  K\r\nServer: switchboard\r\nX-A: a  Set-Cookie: b\r\n\r\n"
        );
    }

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 99, 100, 65535, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(text(&out), n.to_string());
        }
        let mut out = BytesMut::new();
        write_continue(&mut out);
        assert_eq!(&out[..], b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
