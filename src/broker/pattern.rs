//! Channel names and subscription patterns, and the token trie that finds
//! the patterns a channel matches.
//!
//! A channel name is a list of tokens separated by `.`. In a subscription a
//! token `*` matches exactly one token and a last token `>` matches one or
//! more (NATS' rules). The whole name `*` (or `>`) subscribes to every
//! channel, as `+ *` always did. A name with a wildcard token cannot be
//! published to.
//!
//! The trie holds one node per distinct pattern prefix; matching a channel
//! of `k` tokens follows at most two branches per token (the literal one and
//! `*`), so a publish visits at most `min(2^k, nodes)` nodes, and none at all
//! while there is no pattern subscription. Nothing here knows who
//! subscribed: a trie holds one value per pattern.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

/// Distinct patterns the trie may hold, over every connection.
pub const MAX_PATTERNS: usize = 65_536;
/// Tokens in one pattern.
pub const MAX_TOKENS: usize = 32;

/// What a subscription name means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// One channel.
    Exact,
    /// A pattern with `*` or `>` tokens.
    Pattern,
    /// `*` or `>` alone: every channel.
    All,
}

/// Why a subscription name or a publish was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternError {
    /// `>` somewhere but last.
    GtNotLast,
    TooManyTokens,
    /// The trie holds [`MAX_PATTERNS`] already.
    TooManyPatterns,
    /// A publish to a name with a wildcard token.
    PublishToPattern,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::GtNotLast => f.write_str("`>` may only be the last token of a pattern"),
            PatternError::TooManyTokens => {
                write!(f, "too many tokens in a pattern (limit {MAX_TOKENS})")
            }
            PatternError::TooManyPatterns => {
                write!(f, "too many distinct patterns (limit {MAX_PATTERNS})")
            }
            PatternError::PublishToPattern => {
                f.write_str("cannot publish to a channel name with a wildcard token (* or >)")
            }
        }
    }
}

impl std::error::Error for PatternError {}

fn tokens(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    name.split(|&b| b == b'.')
}

/// Classifies a subscription name.
pub fn classify(name: &[u8]) -> Result<Name, PatternError> {
    if name == b"*" || name == b">" {
        return Ok(Name::All);
    }
    // The usual case: no wildcard byte at all.
    if memchr::memchr2(b'*', b'>', name).is_none() {
        return Ok(Name::Exact);
    }
    let mut pattern = false;
    let mut count = 0usize;
    let mut last_gt = false;
    for token in tokens(name) {
        if last_gt {
            return Err(PatternError::GtNotLast);
        }
        count += 1;
        match token {
            b"*" => pattern = true,
            b">" => {
                pattern = true;
                last_gt = true;
            }
            _ => {}
        }
    }
    if !pattern {
        return Ok(Name::Exact);
    }
    if count > MAX_TOKENS {
        return Err(PatternError::TooManyTokens);
    }
    Ok(Name::Pattern)
}

/// True when `name` has a wildcard token, so it cannot be published to.
/// A byte scan first: names without `*` and `>` cost one `memchr2`.
#[inline]
pub fn is_wildcard(name: &[u8]) -> bool {
    memchr::memchr2(b'*', b'>', name).is_some() && tokens(name).any(|t| t == b"*" || t == b">")
}

/// True when `channel` matches `pattern` (both as written; `*` or `>` alone
/// match every channel).
pub fn matches(pattern: &[u8], channel: &[u8]) -> bool {
    if pattern == b"*" || pattern == b">" {
        return true;
    }
    let mut p = tokens(pattern);
    let mut c = tokens(channel);
    loop {
        match (p.next(), c.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// A node: literal children, the `*` child, the value of the pattern that
/// ends here, and the value of the pattern that ends here with `>`.
struct Node<A> {
    children: HashMap<Bytes, Node<A>>,
    star: Option<Box<Node<A>>>,
    here: Option<A>,
    rest: Option<A>,
}

impl<A> Default for Node<A> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            star: None,
            here: None,
            rest: None,
        }
    }
}

impl<A> Node<A> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_none()
            && self.rest.is_none()
    }

    fn visit<'a>(&'a self, rest: &[&[u8]], f: &mut impl FnMut(&'a A)) {
        let Some((&first, tail)) = rest.split_first() else {
            if let Some(a) = &self.here {
                f(a);
            }
            return;
        };
        if let Some(a) = &self.rest {
            f(a);
        }
        if let Some(child) = self.children.get(first) {
            child.visit(tail, f);
        }
        if let Some(star) = &self.star {
            star.visit(tail, f);
        }
    }
}

/// Patterns and one value per pattern.
pub struct Trie<A> {
    root: Node<A>,
    len: usize,
}

impl<A> Default for Trie<A> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<A: Default> Trie<A> {
    /// Patterns held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `pattern` (a [`Name::Pattern`]), made when new; refused
    /// when the trie is full.
    pub fn entry(&mut self, pattern: &[u8]) -> Result<&mut A, PatternError> {
        let full = self.len >= MAX_PATTERNS;
        let list: Vec<&[u8]> = tokens(pattern).collect();
        let (gt, list) = match list.split_last() {
            Some((&b">", head)) => (true, head),
            _ => (false, &list[..]),
        };
        if full && self.get(pattern).is_none() {
            return Err(PatternError::TooManyPatterns);
        }
        let mut node = &mut self.root;
        for &token in list {
            node = if token == b"*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.children
                    .entry(Bytes::copy_from_slice(token))
                    .or_default()
            };
        }
        let slot = if gt { &mut node.rest } else { &mut node.here };
        if slot.is_none() {
            self.len += 1;
        }
        Ok(slot.get_or_insert_with(A::default))
    }

    fn walk(&self, pattern: &[u8]) -> Option<(&Node<A>, bool)> {
        let list: Vec<&[u8]> = tokens(pattern).collect();
        let (gt, list) = match list.split_last() {
            Some((&b">", head)) => (true, head),
            _ => (false, &list[..]),
        };
        let mut node = &self.root;
        for &token in list {
            node = if token == b"*" {
                node.star.as_deref()?
            } else {
                node.children.get(token)?
            };
        }
        Some((node, gt))
    }

    /// The value of `pattern`, if it is held.
    pub fn get(&self, pattern: &[u8]) -> Option<&A> {
        let (node, gt) = self.walk(pattern)?;
        if gt {
            node.rest.as_ref()
        } else {
            node.here.as_ref()
        }
    }

    /// Changes the value of `pattern` with `f`; when `f` says the value is
    /// done with (true), it is dropped and the nodes left empty are freed.
    /// Returns what `f` returned besides, or `None` when `pattern` is not held.
    pub fn update<R>(&mut self, pattern: &[u8], f: impl FnOnce(&mut A) -> (R, bool)) -> Option<R> {
        let list: Vec<&[u8]> = tokens(pattern).collect();
        let (gt, list) = match list.split_last() {
            Some((&b">", head)) => (true, head),
            _ => (false, &list[..]),
        };
        let (r, dropped) = update_in(&mut self.root, list, gt, f)?;
        if dropped {
            self.len -= 1;
        }
        Some(r)
    }

    /// Calls `f` with the value of every pattern `channel` matches.
    pub fn for_each_match<'a>(&'a self, channel: &[u8], mut f: impl FnMut(&'a A)) {
        if self.len == 0 {
            return;
        }
        let list: Vec<&[u8]> = tokens(channel).collect();
        self.root.visit(&list, &mut f);
    }

    /// Calls `f` with every pattern's value.
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(&'a A)) {
        fn all<'a, A>(node: &'a Node<A>, f: &mut impl FnMut(&'a A)) {
            node.here.iter().chain(node.rest.iter()).for_each(&mut *f);
            for child in node.children.values() {
                all(child, f);
            }
            if let Some(star) = &node.star {
                all(star, f);
            }
        }
        all(&self.root, &mut f);
    }
}

/// Returns f's answer and whether the value was dropped.
fn update_in<A, R>(
    node: &mut Node<A>,
    list: &[&[u8]],
    gt: bool,
    f: impl FnOnce(&mut A) -> (R, bool),
) -> Option<(R, bool)> {
    let Some((&first, tail)) = list.split_first() else {
        let slot = if gt { &mut node.rest } else { &mut node.here };
        let (r, done) = f(slot.as_mut()?);
        if done {
            *slot = None;
        }
        return Some((r, done));
    };
    if first == b"*" {
        let star = node.star.as_deref_mut()?;
        let answer = update_in(star, tail, gt, f);
        if star.is_empty() {
            node.star = None;
        }
        answer
    } else {
        let child = node.children.get_mut(first)?;
        let answer = update_in(child, tail, gt, f);
        if child.is_empty() {
            node.children.remove(first);
            if node.children.capacity() > 2 * node.children.len() + 8 {
                node.children.shrink_to_fit();
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(classify(b"news"), Ok(Name::Exact));
        assert_eq!(classify(b"a.b.c"), Ok(Name::Exact));
        assert_eq!(classify(b"a*b.c>"), Ok(Name::Exact));
        assert_eq!(classify(b"*"), Ok(Name::All));
        assert_eq!(classify(b">"), Ok(Name::All));
        assert_eq!(classify(b"a.*.c"), Ok(Name::Pattern));
        assert_eq!(classify(b"a.>"), Ok(Name::Pattern));
        assert_eq!(classify(b"*.>"), Ok(Name::Pattern));
        assert_eq!(classify(b"a.>.c"), Err(PatternError::GtNotLast));
        let long = vec!["*"; MAX_TOKENS + 1].join(".");
        assert_eq!(classify(long.as_bytes()), Err(PatternError::TooManyTokens));
        assert!(is_wildcard(b"a.*"));
        assert!(is_wildcard(b">"));
        assert!(!is_wildcard(b"a*.b>"));
    }

    #[test]
    fn nats_rules() {
        assert!(matches(b"a.*.c", b"a.b.c"));
        assert!(!matches(b"a.*.c", b"a.b.c.d"));
        assert!(!matches(b"a.*.c", b"a.c"));
        assert!(matches(b"a.>", b"a.b"));
        assert!(matches(b"a.>", b"a.b.c"));
        assert!(!matches(b"a.>", b"a"));
        assert!(matches(b"*", b"anything.at.all"));
        assert!(matches(b"*.b", b".b"));
    }

    fn matched(t: &Trie<Vec<u32>>, channel: &str) -> Vec<u32> {
        let mut got = Vec::new();
        t.for_each_match(channel.as_bytes(), |v| got.extend(v.iter().copied()));
        got.sort_unstable();
        got
    }

    #[test]
    fn the_trie_finds_what_matches_and_forgets_what_is_dropped() {
        let patterns = ["a.*.c", "a.>", "*.b.*", "a.b.>", "*.*"];
        let mut t: Trie<Vec<u32>> = Trie::default();
        for (i, p) in patterns.iter().enumerate() {
            t.entry(p.as_bytes()).unwrap().push(i as u32);
        }
        assert_eq!(t.len(), 5);
        for channel in ["a.b.c", "a.b", "x.b.y", "a", "a.b.c.d", "q.r"] {
            let want: Vec<u32> = (0..patterns.len() as u32)
                .filter(|&i| matches(patterns[i as usize].as_bytes(), channel.as_bytes()))
                .collect();
            assert_eq!(matched(&t, channel), want, "{channel}");
        }
        for p in patterns {
            assert_eq!(
                t.update(p.as_bytes(), |v| ((), {
                    v.clear();
                    true
                })),
                Some(())
            );
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty());
        assert_eq!(t.update(b"a.>", |_| ((), true)), None);
    }

    #[test]
    fn a_pattern_of_exactly_the_token_limit_is_fine() {
        let most = vec!["*"; MAX_TOKENS].join(".");
        assert_eq!(classify(most.as_bytes()), Ok(Name::Pattern));
        let most = format!("{}.>", vec!["a"; MAX_TOKENS - 1].join("."));
        assert_eq!(classify(most.as_bytes()), Ok(Name::Pattern));
        let over = format!("{}.>", vec!["a"; MAX_TOKENS].join("."));
        assert_eq!(classify(over.as_bytes()), Err(PatternError::TooManyTokens));
    }
}
