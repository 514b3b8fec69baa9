//! Subscriber filters: comma-separated glob lists with `*`, `?` and `!` negation.
//!
//! A list matches when no negated pattern matches and at least one positive
//! pattern does, so `*,!image/*` means "everything but images" and `!image/*`
//! alone matches nothing. Matching is case-sensitive, byte by byte.

/// A parsed pattern list, built once per subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternList {
    patterns: Vec<(bool, Vec<u8>)>,
}

impl PatternList {
    /// Parses `a,b,!c`. Empty sub-patterns are kept: they match the empty string.
    pub fn parse(list: &[u8]) -> PatternList {
        let patterns = list
            .split(|&b| b == b',')
            .map(|p| match p.split_first() {
                Some((b'!', rest)) => (true, rest.to_vec()),
                _ => (false, p.to_vec()),
            })
            .collect();
        PatternList { patterns }
    }

    /// True when `s` passes the list.
    pub fn matches(&self, s: &[u8]) -> bool {
        let mut positive = false;
        for (negated, pattern) in &self.patterns {
            if glob(pattern, s) {
                if *negated {
                    return false;
                }
                positive = true;
            }
        }
        positive
    }
}

/// A subscriber's filter on the content type and on the sender.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub content_type: Option<PatternList>,
    pub sender: Option<PatternList>,
}

impl Filter {
    /// Builds a filter from the raw values; `None` or `*` means no filter.
    pub fn new(content_type: Option<&[u8]>, sender: Option<&[u8]>) -> Filter {
        let build = |v: Option<&[u8]>| match v {
            None | Some(b"*") => None,
            Some(list) => Some(PatternList::parse(list)),
        };
        Filter {
            content_type: build(content_type),
            sender: build(sender),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.content_type.is_none() && self.sender.is_none()
    }

    /// True when a message of this content type from this sender passes. An
    /// anonymous message has the empty sender, so `sender=alice` excludes it.
    pub fn accepts(&self, content_type: &[u8], sender: Option<&[u8]>) -> bool {
        if let Some(list) = &self.content_type {
            if !list.matches(content_type) {
                return false;
            }
        }
        if let Some(list) = &self.sender {
            if !list.matches(sender.unwrap_or(b"")) {
                return false;
            }
        }
        true
    }
}

/// Glob match with `*` (any run, possibly empty) and `?` (any one byte), in
/// linear time for the usual patterns: on a mismatch it backtracks only to the
/// last `*`, never further.
pub fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == s.get(i) => {
                p += 1;
                i += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"*", b""));
        assert!(glob(b"text/*", b"text/plain"));
        assert!(!glob(b"text/*", b"Text/plain"));
        assert!(glob(b"t?xt/p*n", b"text/plain"));
        assert!(glob(b"*a*b*c", b"xxaxxbxxc"));
        assert!(!glob(b"*a*b*c", b"xxaxxbxxcx"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"a"));
        assert!(!glob(b"abc", b"ab"));
        assert!(glob(b"ab**", b"ab"));
    }

    #[test]
    fn lists_as_msgbus_observed() {
        let l = PatternList::parse(b"text/*,image/*");
        for t in ["text/plain", "image/jpeg", "image/png", "text/html"] {
            assert!(l.matches(t.as_bytes()), "{t}");
        }
        assert!(!l.matches(b"application/json"));
        assert!(!l.matches(b"Text/Plain"));
        assert!(!PatternList::parse(b"!image/*").matches(b"text/plain"));
        let l = PatternList::parse(b"*,!image/*");
        assert!(l.matches(b"text/plain"));
        assert!(!l.matches(b"image/png"));
        assert!(!PatternList::parse(b"TEXT/*").matches(b"text/plain"));
    }

    #[test]
    fn filters() {
        let f = Filter::new(Some(b"text/plain"), Some(b"alice"));
        assert!(f.accepts(b"text/plain", Some(b"alice")));
        assert!(!f.accepts(b"text/plain", Some(b"bob")));
        assert!(!f.accepts(b"text/plain", None));
        assert!(!f.accepts(b"image/png", Some(b"alice")));
        assert!(Filter::new(Some(b"*"), None).is_empty());
    }
}
