//! Decoding the parts of a request-target: path segments and query
//! parameters.
//!
//! Owns: the two escaping rules, which differ. In a path only `%XX` escapes
//! mean anything (`+` is a plus sign: `/a+b.txt` names `a+b.txt`); in a query
//! string, which is `application/x-www-form-urlencoded`, `+` also means a
//! space. Must not touch: what a path or a parameter means to a door.
//!
//! Both leave a malformed escape (`%zz`, a lone `%`) as it is.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// The bytes a path segment names: `%XX` escapes decoded, nothing else.
pub fn path_segment(raw: &str) -> Cow<'_, [u8]> {
    percent_decode(raw.as_bytes()).into()
}

/// The decoded value of the first parameter called `name` in `query` (both
/// escapes apply; bytes that are not UTF-8 become U+FFFD). A parameter
/// without `=` counts as absent, so `?type` sets no filter.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .filter(|pair| pair.contains('='))
        .flat_map(|pair| form_urlencoded::parse(pair.as_bytes()))
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// The decoded values of every parameter called `name` in `query`, in
/// order (as [`query_param`] decodes the first).
pub fn query_params<'q>(query: &'q str, name: &str) -> Vec<Cow<'q, str>> {
    query
        .split('&')
        .filter(|pair| pair.contains('='))
        .flat_map(|pair| form_urlencoded::parse(pair.as_bytes()))
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_space_only_in_queries() {
        assert_eq!(&path_segment("a+b.txt")[..], b"a+b.txt");
        assert_eq!(&path_segment("a%20b.txt")[..], b"a b.txt");
        assert_eq!(&path_segment("a%2Bb.txt")[..], b"a+b.txt");
        assert_eq!(query_param("type=a+b", "type").as_deref(), Some("a b"));
        assert_eq!(query_param("type=a%2Bb", "type").as_deref(), Some("a+b"));
    }

    #[test]
    fn path_escapes() {
        assert_eq!(&path_segment("%2e%2E")[..], b"..");
        assert_eq!(&path_segment("x%00y")[..], b"x\0y");
        assert_eq!(&path_segment("%2f")[..], b"/");
        assert_eq!(&path_segment("%zz%4")[..], b"%zz%4");
        assert_eq!(&path_segment("caf%C3%A9")[..], "café".as_bytes());
        assert!(matches!(path_segment("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_param("type=text/*,image/*&x=1", "type").as_deref(),
            Some("text/*,image/*")
        );
        assert_eq!(query_param("type=a&type=b", "type").as_deref(), Some("a"));
        assert_eq!(query_params("type=a&x=1&type=b%2Ec", "type"), ["a", "b.c"]);
        assert_eq!(query_param("type", "type"), None);
        assert_eq!(query_param("type&type=b", "type").as_deref(), Some("b"));
        assert_eq!(query_param("", "type"), None);
        assert_eq!(query_param("type=", "type").as_deref(), Some(""));
        assert_eq!(
            query_param("sender=%21bob", "sender").as_deref(),
            Some("!bob")
        );
        assert_eq!(query_param("t%79pe=x", "type").as_deref(), Some("x"));
        assert_eq!(query_param("type=%zz%4", "type").as_deref(), Some("%zz%4"));
        assert_eq!(
            query_param("format=json", "format").as_deref(),
            Some("json")
        );
    }
}
