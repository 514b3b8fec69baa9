//! Exact-size copies of short byte strings that are cloned at once:
//! addresses and the keys of the queues' map and timers.
//!
//! A `Bytes` copied from a slice ([`Bytes::copy_from_slice`], or made from a
//! `Vec`) allocates its buffer, and its first clone allocates again: the
//! count that it and its clones share. An address is cloned as soon as it is
//! made (into the map's key, a timer, a wait's list, a reply), so that is
//! two allocations each time. [`copy`] keeps a string of up to [`INLINE`]
//! bytes and its count in one allocation, and its clones allocate nothing.

use bytes::Bytes;

/// The longest string kept inline; a longer one is copied as usual.
pub const INLINE: usize = 46;

/// A short string and its length, in one block with the count of the
/// `Bytes` that share it.
struct Inline {
    len: u8,
    buf: [u8; INLINE],
}

impl AsRef<[u8]> for Inline {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// An exact-size copy of `s` whose clones cost no allocation when `s` is
/// short (at most [`INLINE`] bytes).
pub fn copy(s: &[u8]) -> Bytes {
    let mut buf = [0u8; INLINE];
    match (buf.get_mut(..s.len()), u8::try_from(s.len())) {
        (Some(to), Ok(len)) => {
            to.copy_from_slice(s);
            Bytes::from_owner(Inline { len, buf })
        }
        _ => Bytes::copy_from_slice(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_hold_the_same_bytes_at_every_length() {
        for n in 0..=INLINE + 2 {
            let s: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let c = copy(&s);
            assert_eq!(&c[..], &s[..], "length {n}");
            let clone = c.clone();
            drop(c);
            assert_eq!(
                &clone[..],
                &s[..],
                "a clone outlives the original, length {n}"
            );
            assert_eq!(&clone.slice(1.min(n)..)[..], &s[1.min(n)..]);
        }
    }
}
