//! Line-protocol wire forms shared by every program that speaks it: the
//! server, `switchboard::client` and the load tools.
//!
//! Owns the rules both directions must agree on, as pure functions: how a
//! content type is written as one field of a line. It must not touch IO or
//! the broker.

use std::borrow::Cow;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_field_has_no_whitespace() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"text/plain", b"text/plain"),
            (b"text/plain; charset=utf-8", b"text/plain;charset=utf-8"),
            (
                b" text/plain ;\tcharset = utf-8 ",
                b"text/plain;charset=utf-8",
            ),
            (b"", DEFAULT_CONTENT_TYPE),
            (b" \t ", DEFAULT_CONTENT_TYPE),
            (b"a\r\nb\x0cc", b"abc"),
            // Not whitespace on the line either: kept as they are.
            (b"x\x0by\xc3\xa9", b"x\x0by\xc3\xa9"),
        ];
        for &(input, want) in cases {
            assert_eq!(&type_field(input)[..], want, "{input:?}");
        }
    }

    #[test]
    fn type_field_copies_only_when_it_must() {
        assert!(matches!(type_field(b"text/plain"), Cow::Borrowed(_)));
        assert!(matches!(type_field(b""), Cow::Borrowed(_)));
        assert!(matches!(type_field(b"a; b"), Cow::Owned(_)));
    }
}
