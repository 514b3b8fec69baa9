//! Subscriber filters: comma-separated glob lists with `*`, `?` and `!` negation.
//!
//! A list matches when no negated pattern matches and at least one positive
//! pattern does, so `*,!image/*` means "everything but images" and `!image/*`
//! alone matches nothing. Matching is case-sensitive, byte by byte; `*` is any
//! run of bytes (possibly empty), `?` any one byte, and nothing escapes them
//! (msgbus' `match.c`).
//!
//! Filters run once per message batch per filtered subscriber, in the one
//! thread, on a content type or sender the publisher chose, so their cost
//! must not depend on how the pattern and the text interact. Each pattern is
//! compiled once into the states of its automaton, and a text is matched by
//! following every state at once with bit operations ("shift-and"): one pass
//! over the text, at most `MAX_PATTERN_LEN / 64 + 1` word operations per
//! byte, never a step back. Lists are bounded ([`MAX_PATTERN_LEN`],
//! [`MAX_PATTERNS`]) so that this bound is small; [`Filter::parse`] says
//! which limit a list broke.

use std::fmt;

/// The longest pattern of a list, in bytes, not counting a leading `!`.
pub const MAX_PATTERN_LEN: usize = 256;

/// The most patterns in one list.
pub const MAX_PATTERNS: usize = 16;

/// Words of a state set of the longest pattern: one bit per pattern byte,
/// plus the start state.
const WIDE: usize = (MAX_PATTERN_LEN + 1).div_ceil(64);

/// Why a pattern list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListError {
    /// A pattern longer than [`MAX_PATTERN_LEN`] bytes.
    PatternTooLong,
    /// More than [`MAX_PATTERNS`] patterns.
    TooManyPatterns,
}

/// The list a [`FilterError`] is about, named as its query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterField {
    /// `type=`: the content type.
    Type,
    /// `sender=`: the publisher's user name.
    Sender,
}

impl FilterField {
    pub fn name(self) -> &'static str {
        match self {
            FilterField::Type => "type",
            FilterField::Sender => "sender",
        }
    }
}

/// Why a filter was refused; the text is meant for the subscriber (an HTTP
/// door answers `400` with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub field: FilterField,
    pub error: ListError,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = self.field.name();
        match self.error {
            ListError::PatternTooLong => {
                write!(f, "{field} pattern longer than {MAX_PATTERN_LEN} bytes")
            }
            ListError::TooManyPatterns => {
                write!(f, "more than {MAX_PATTERNS} {field} patterns")
            }
        }
    }
}

impl std::error::Error for FilterError {}

/// A parsed pattern list, built once per subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternList {
    patterns: Vec<Pattern>,
}

impl PatternList {
    /// Parses `a,b,!c`. Empty sub-patterns are kept: they match the empty
    /// string. Refuses more than [`MAX_PATTERNS`] patterns and patterns
    /// longer than [`MAX_PATTERN_LEN`] bytes.
    pub fn parse(list: &[u8]) -> Result<PatternList, ListError> {
        if list.iter().filter(|&&b| b == b',').count() >= MAX_PATTERNS {
            return Err(ListError::TooManyPatterns);
        }
        let patterns = list
            .split(|&b| b == b',')
            .map(|p| match p.split_first() {
                Some((b'!', rest)) => Pattern::new(true, rest),
                _ => Pattern::new(false, p),
            })
            .collect::<Result<_, _>>()?;
        Ok(PatternList { patterns })
    }

    /// The list that passes nothing.
    fn nothing() -> PatternList {
        PatternList {
            patterns: Vec::new(),
        }
    }

    /// True when `s` passes the list.
    pub fn matches(&self, s: &[u8]) -> bool {
        let mut positive = false;
        for p in &self.patterns {
            // A positive pattern cannot change the outcome once one matched.
            if (p.negated || !positive) && p.glob.matches(s) {
                if p.negated {
                    return false;
                }
                positive = true;
            }
        }
        positive
    }
}

/// One pattern of a list.
#[derive(Clone)]
struct Pattern {
    negated: bool,
    /// As written, for equality and debugging; the compiled form follows from it.
    source: Box<[u8]>,
    glob: Glob,
}

impl Pattern {
    fn new(negated: bool, source: &[u8]) -> Result<Pattern, ListError> {
        Ok(Pattern {
            negated,
            source: source.into(),
            glob: Glob::compile(source)?,
        })
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.negated == other.negated && self.source == other.source
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bang = if self.negated { "!" } else { "" };
        write!(f, "{bang}{:?}", String::from_utf8_lossy(&self.source))
    }
}

/// A subscriber's filter on the content type and on the sender.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub content_type: Option<PatternList>,
    pub sender: Option<PatternList>,
}

impl Filter {
    /// Builds a filter from the raw values (`?type=` and `?sender=`, decoded);
    /// `None` or `*` means no filter. A list over the limits is an error that
    /// names the list and the limit.
    pub fn parse(
        content_type: Option<&[u8]>,
        sender: Option<&[u8]>,
    ) -> Result<Filter, FilterError> {
        let build = |v: Option<&[u8]>, field| match v {
            None | Some(b"*") => Ok(None),
            Some(list) => PatternList::parse(list)
                .map(Some)
                .map_err(|error| FilterError { field, error }),
        };
        Ok(Filter {
            content_type: build(content_type, FilterField::Type)?,
            sender: build(sender, FilterField::Sender)?,
        })
    }

    /// Like [`Filter::parse`], for callers that cannot refuse: a list over
    /// the limits passes nothing (as msgbus' `match.c` does with a pattern
    /// it cannot hold).
    pub fn new(content_type: Option<&[u8]>, sender: Option<&[u8]>) -> Filter {
        let build = |v: Option<&[u8]>| match v {
            None | Some(b"*") => None,
            Some(list) => Some(PatternList::parse(list).unwrap_or_else(|_| PatternList::nothing())),
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

/// One compiled glob.
#[derive(Clone)]
enum Glob {
    /// No `*` and no `?`: plain equality.
    Literal(Box<[u8]>),
    /// Fewer than 64 bytes: a state set fits one word.
    Narrow(Box<Automaton<1>>),
    /// Up to [`MAX_PATTERN_LEN`] bytes.
    Wide(Box<Automaton<WIDE>>),
}

impl Glob {
    fn compile(pattern: &[u8]) -> Result<Glob, ListError> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(ListError::PatternTooLong);
        }
        if !pattern.iter().any(|&b| b == b'*' || b == b'?') {
            return Ok(Glob::Literal(pattern.into()));
        }
        // `**` matches what `*` matches; one star per run keeps the closure
        // below to a single step.
        let mut collapsed = Vec::with_capacity(pattern.len());
        for &b in pattern {
            if !(b == b'*' && collapsed.last() == Some(&b'*')) {
                collapsed.push(b);
            }
        }
        Ok(if collapsed.len() < 64 {
            Glob::Narrow(Box::new(Automaton::new(&collapsed)))
        } else {
            Glob::Wide(Box::new(Automaton::new(&collapsed)))
        })
    }

    fn matches(&self, text: &[u8]) -> bool {
        match self {
            Glob::Literal(p) => **p == *text,
            Glob::Narrow(a) => a.matches(text),
            Glob::Wide(a) => a.matches(text),
        }
    }
}

/// The automaton of a glob of at most `64 * W - 1` bytes, with no two `*` in
/// a row. State `i` means "the first `i` pattern bytes match what was read";
/// bit `i` of a state set stands for state `i`. Reading a byte, state `i`
/// moves to `i + 1` when pattern byte `i` is that byte or `?`, and stays
/// when it is `*`; a `*` at `i` also matches nothing, so state `i` brings
/// state `i + 1` along without reading. The text matches when the last
/// state is reached after its last byte.
#[derive(Clone)]
struct Automaton<const W: usize> {
    /// Byte → row of `steps`. Row 0 is for bytes the pattern never names.
    row: [u8; 256],
    /// Per row: bit `i + 1` set when pattern byte `i` accepts the byte (it
    /// is `?` or that byte).
    steps: Vec<[u64; W]>,
    /// Bit `i` set when pattern byte `i` is `*`.
    stars: [u64; W],
    /// The start state, with what its closure brings.
    start: [u64; W],
    /// The last state, as a one-bit set.
    last: [u64; W],
}

impl<const W: usize> Automaton<W> {
    /// `pattern` is at most `64 * W - 1` bytes and holds no `**`.
    fn new(pattern: &[u8]) -> Automaton<W> {
        let mut a = Automaton {
            row: [0; 256],
            steps: vec![[0; W]],
            stars: [0; W],
            start: [0; W],
            last: [0; W],
        };
        set(&mut a.start, 0);
        set(&mut a.last, pattern.len());
        let mut any = [0u64; W];
        for (i, &b) in pattern.iter().enumerate() {
            match b {
                b'*' => set(&mut a.stars, i),
                b'?' => set(&mut any, i + 1),
                _ => {
                    let slot = usize::from(b);
                    let row = match a.row.get(slot).copied() {
                        Some(0) | None => {
                            // At most 253 distinct bytes besides `*`, `?` and `,`.
                            let row = u8::try_from(a.steps.len()).unwrap_or(u8::MAX);
                            a.steps.push([0; W]);
                            if let Some(r) = a.row.get_mut(slot) {
                                *r = row;
                            }
                            row
                        }
                        Some(row) => row,
                    };
                    if let Some(step) = a.steps.get_mut(usize::from(row)) {
                        set(step, i + 1);
                    }
                }
            }
        }
        // `?` accepts every byte, named in the pattern or not.
        for step in &mut a.steps {
            for (s, q) in step.iter_mut().zip(any) {
                *s |= q;
            }
        }
        a.start = a.close(a.start);
        a
    }

    /// Adds the states that a `*` reaches without reading. Stars never
    /// follow each other, so one step is the whole closure.
    #[inline]
    fn close(&self, mut d: [u64; W]) -> [u64; W] {
        let mut carry = 0;
        for (w, star) in d.iter_mut().zip(self.stars) {
            let s = *w & star;
            *w |= (s << 1) | carry;
            carry = s >> 63;
        }
        d
    }

    fn matches(&self, text: &[u8]) -> bool {
        let mut d = self.start;
        for &b in text {
            count_steps(W);
            let row = self.row.get(usize::from(b)).copied().unwrap_or(0);
            let Some(step) = self.steps.get(usize::from(row)) else {
                return false;
            };
            let mut carry = 0;
            let mut alive = 0;
            for ((w, m), star) in d.iter_mut().zip(step).zip(self.stars) {
                let x = *w;
                *w = (((x << 1) | carry) & m) | (x & star);
                carry = x >> 63;
                alive |= *w;
            }
            if alive == 0 {
                return false;
            }
            d = self.close(d);
        }
        d.iter().zip(self.last).any(|(w, l)| w & l != 0)
    }
}

/// Sets bit `i` of a state set (`i` below `64 * W`).
fn set<const W: usize>(bits: &mut [u64; W], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

#[cfg(test)]
thread_local! {
    /// Word operations of automaton steps on this thread, for the tests'
    /// bound on work per text byte.
    static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
fn count_steps(n: usize) {
    STEPS.with(|s| s.set(s.get() + n as u64));
}

#[cfg(not(test))]
#[inline(always)]
fn count_steps(_: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &[u8], s: &[u8]) -> bool {
        match Glob::compile(pattern) {
            Ok(g) => g.matches(s),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn list(l: &[u8]) -> PatternList {
        match PatternList::parse(l) {
            Ok(l) => l,
            Err(e) => panic!("{e:?}"),
        }
    }

    /// msgbus' `match_pattern`, read literally: tries every split at a `*`.
    /// Answers are remembered per (pattern rest, text rest), so that long
    /// inputs with many stars stay quick; the rule itself is the recursion.
    fn reference(p: &[u8], s: &[u8]) -> bool {
        fn go(
            p: &[u8],
            s: &[u8],
            seen: &mut std::collections::HashMap<(usize, usize), bool>,
        ) -> bool {
            let key = (p.len(), s.len());
            if let Some(&r) = seen.get(&key) {
                return r;
            }
            let r = match p.split_first() {
                None => s.is_empty(),
                Some((b'*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..], seen)),
                Some((&c, rest)) => match s.split_first() {
                    Some((&d, s_rest)) if c == b'?' || c == d => go(rest, s_rest, seen),
                    _ => false,
                },
            };
            seen.insert(key, r);
            r
        }
        go(p, s, &mut std::collections::HashMap::new())
    }

    /// The list rule, over [`reference`].
    fn reference_list(l: &[u8], s: &[u8]) -> bool {
        let mut positive = false;
        for p in l.split(|&b| b == b',') {
            let (negated, p) = match p.split_first() {
                Some((b'!', rest)) => (true, rest),
                _ => (false, p),
            };
            if reference(p, s) {
                if negated {
                    return false;
                }
                positive = true;
            }
        }
        positive
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b""));
        assert!(glob(b"*", b"a"));
        assert!(glob(b"text/*", b"text/plain"));
        assert!(!glob(b"text/*", b"Text/plain"));
        assert!(glob(b"t?xt/p*n", b"text/plain"));
        assert!(glob(b"*a*b*c", b"xxaxxbxxc"));
        assert!(!glob(b"*a*b*c", b"xxaxxbxxcx"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"a"));
        assert!(!glob(b"abc", b"ab"));
        assert!(glob(b"ab**", b"ab"));
        assert!(glob(b"**a**", b"xay"));
        assert!(!glob(b"?", b""));
        assert!(glob(b"?*?", b"ab"));
        assert!(!glob(b"?*?", b"a"));
        assert!(glob(b"*?", b"\xff"));
        assert!(glob(b"\xc3\xa9*", b"\xc3\xa9t\xc3\xa9"));
        assert!(!glob(b"\xc3?", b"\xc3"));
    }

    #[test]
    fn wide_patterns() {
        // 63 bytes is the longest narrow pattern, 64 the shortest wide one.
        for n in [62usize, 63, 64, 65, 127, 128, 200, MAX_PATTERN_LEN - 1] {
            let mut p = vec![b'a'; n];
            p[0] = b'*';
            p[n / 2] = b'?';
            let mut yes = vec![b'x'; 3];
            yes.extend(std::iter::repeat_n(b'a', n - 1));
            assert!(glob(&p, &yes), "{n}");
            assert!(!glob(&p, &yes[..yes.len() - 1]), "{n}");
            let mut no = yes.clone();
            no.push(b'b');
            assert!(!glob(&p, &no), "{n}");
            let mut q = p.clone();
            q.push(b'*');
            assert!(glob(&q, &no), "{n}");
        }
    }

    #[test]
    fn lists_as_msgbus_observed() {
        let l = list(b"text/*,image/*");
        for t in ["text/plain", "image/jpeg", "image/png", "text/html"] {
            assert!(l.matches(t.as_bytes()), "{t}");
        }
        assert!(!l.matches(b"application/json"));
        assert!(!l.matches(b"Text/Plain"));
        assert!(!list(b"!image/*").matches(b"text/plain"));
        let l = list(b"*,!image/*");
        assert!(l.matches(b"text/plain"));
        assert!(!l.matches(b"image/png"));
        assert!(!list(b"TEXT/*").matches(b"text/plain"));
        // A negated pattern later in the list still excludes.
        assert!(!list(b"text/*,*,!*plain").matches(b"text/plain"));
        // Empty sub-patterns match the empty string.
        assert!(list(b"").matches(b""));
        assert!(!list(b"").matches(b"a"));
        assert!(list(b"a,").matches(b""));
    }

    #[test]
    fn filters() {
        let f = Filter::new(Some(b"text/plain"), Some(b"alice"));
        assert!(f.accepts(b"text/plain", Some(b"alice")));
        assert!(!f.accepts(b"text/plain", Some(b"bob")));
        assert!(!f.accepts(b"text/plain", None));
        assert!(!f.accepts(b"image/png", Some(b"alice")));
        assert!(Filter::new(Some(b"*"), None).is_empty());
        assert_eq!(Filter::parse(Some(b"text/plain"), Some(b"alice")), Ok(f));
        assert_eq!(Filter::parse(Some(b"*"), Some(b"*")), Ok(Filter::default()));
    }

    #[test]
    fn limits() {
        let long = vec![b'a'; MAX_PATTERN_LEN];
        let mut list = long.clone();
        list.extend_from_slice(b",!");
        list.extend_from_slice(&long);
        assert!(PatternList::parse(&list).is_ok());
        list.push(b'a');
        assert_eq!(PatternList::parse(&list), Err(ListError::PatternTooLong));

        let many = vec!["a"; MAX_PATTERNS].join(",").into_bytes();
        assert!(PatternList::parse(&many).is_ok());
        let too_many = vec!["a"; MAX_PATTERNS + 1].join(",").into_bytes();
        assert_eq!(
            PatternList::parse(&too_many),
            Err(ListError::TooManyPatterns)
        );
        // Empty patterns count too.
        assert_eq!(
            PatternList::parse(&[b','; MAX_PATTERNS]),
            Err(ListError::TooManyPatterns)
        );

        let e = Filter::parse(Some(b"text/*"), Some(&list));
        assert_eq!(
            e,
            Err(FilterError {
                field: FilterField::Sender,
                error: ListError::PatternTooLong
            })
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("sender pattern longer than 256 bytes".to_string())
        );
        let e = Filter::parse(Some(&too_many), None).map_err(|e| e.to_string());
        assert_eq!(e, Err("more than 16 type patterns".to_string()));

        // Without the chance to refuse, a list over the limits passes nothing.
        let f = Filter::new(Some(&too_many), None);
        assert!(!f.is_empty());
        assert!(!f.accepts(b"a", None));
        assert!(!f.accepts(b"", None));
    }

    /// Work per text byte is bounded by the width of the state set, whatever
    /// the pattern: the adversarial case of backtracking matchers (`*aaa…b`
    /// against `aaa…`) costs no more than any other.
    #[test]
    fn work_is_linear_in_the_text() {
        let mut pattern = vec![b'*'];
        pattern.extend(std::iter::repeat_n(b'a', MAX_PATTERN_LEN - 2));
        pattern.push(b'b');
        assert_eq!(pattern.len(), MAX_PATTERN_LEN);
        let text = vec![b'a'; 16 * 1024];
        let l = list(&pattern);
        STEPS.with(|s| s.set(0));
        assert!(!l.matches(&text));
        let steps = STEPS.with(|s| s.get());
        assert!(steps > 0);
        assert!(
            steps <= (WIDE * text.len()) as u64,
            "{steps} steps for {} bytes",
            text.len()
        );

        // A whole list of such patterns: at most one pass per pattern.
        let mut worst = pattern.clone();
        for _ in 1..MAX_PATTERNS {
            worst.push(b',');
            worst.extend_from_slice(&pattern);
        }
        let l = list(&worst);
        STEPS.with(|s| s.set(0));
        assert!(!l.matches(&text));
        let steps = STEPS.with(|s| s.get());
        assert!(steps <= (MAX_PATTERNS * WIDE * text.len()) as u64);
    }

    #[test]
    fn patterns_compare_and_print_as_written() {
        assert_eq!(list(b"a,!b*"), list(b"a,!b*"));
        assert_ne!(list(b"a"), list(b"b"));
        assert_ne!(list(b"a"), list(b"!a"));
        assert_ne!(list(b"!a"), list(b"!b"));
        assert_eq!(
            format!("{:?}", list(b"a,!b*")),
            r#"PatternList { patterns: ["a", !"b*"] }"#
        );
    }

    #[test]
    fn plain_patterns_are_compared_byte_for_byte() {
        // No `*` and no `?`: no automaton.
        for p in [&b"text/plain"[..], b"", b"a"] {
            assert!(matches!(Glob::compile(p), Ok(Glob::Literal(_))), "{p:?}");
        }
        for p in [&b"text/*"[..], b"?", b"a?b"] {
            assert!(matches!(Glob::compile(p), Ok(Glob::Narrow(_))), "{p:?}");
        }
        STEPS.with(|s| s.set(0));
        assert!(list(b"text/plain").matches(b"text/plain"));
        assert_eq!(STEPS.with(|s| s.get()), 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Patterns over a small alphabet, so that stars and question marks
        /// meet texts they can match.
        fn pattern() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'b'), Just(b'*'), Just(b'?')],
                0..12,
            )
        }

        fn text() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..24)
        }

        proptest! {
            #[test]
            fn glob_agrees_with_the_reference(p in pattern(), s in text()) {
                prop_assert_eq!(glob(&p, &s), reference(&p, &s));
            }

            #[test]
            fn wide_glob_agrees_with_the_reference(
                head in pattern(),
                filler in 60usize..80,
                tail in pattern(),
                s in text(),
            ) {
                // A star, then a long run only long texts meet.
                let mut p = head.clone();
                p.push(b'*');
                p.extend(std::iter::repeat_n(b'a', filler));
                p.extend_from_slice(&tail);
                let mut long = s.clone();
                long.extend(std::iter::repeat_n(b'a', filler));
                long.extend_from_slice(&s);
                prop_assert_eq!(glob(&p, &long), reference(&p, &long));
                prop_assert_eq!(glob(&p, &s), reference(&p, &s));
            }

            #[test]
            fn lists_agree_with_the_reference(
                ps in proptest::collection::vec((any::<bool>(), pattern()), 1..5),
                s in text(),
            ) {
                let mut l = Vec::new();
                for (i, (negated, p)) in ps.iter().enumerate() {
                    if i > 0 {
                        l.push(b',');
                    }
                    if *negated {
                        l.push(b'!');
                    }
                    l.extend_from_slice(p);
                }
                prop_assert_eq!(list(&l).matches(&s), reference_list(&l, &s));
            }

            #[test]
            fn any_bytes_agree_with_the_reference(
                p in proptest::collection::vec(any::<u8>(), 0..8),
                s in proptest::collection::vec(any::<u8>(), 0..12),
            ) {
                let p: Vec<u8> = p.into_iter().filter(|&b| b != b',').collect();
                prop_assert_eq!(glob(&p, &s), reference(&p, &s));
            }
        }
    }
}
