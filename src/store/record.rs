//! The records of the log: their kinds, their encoding, their checksum.
//!
//! A record on disk is a 12-byte header and a body:
//!
//! ```text
//! len: u32 LE | !len: u32 LE | crc32(body): u32 LE | body (len bytes)
//! body = kind: u8, then the kind's fields
//! ```
//!
//! The length is written twice (the second time inverted) so that a flipped
//! bit in it is told from a record cut short by a crash. Integers are
//! little-endian `u64`; byte strings are a `u32` length and the bytes; an
//! optional byte string is a `u8` (0 or 1) before it.
//!
//! Owns: the record kinds and their fields, the encoding and the checks.
//! Must not touch: files (free of IO: the journal encodes into a `Vec<u8>`,
//! replay decodes from one), what a record does to the state.

use bytes::Bytes;

/// Bytes before a record's body.
pub const HEADER: usize = 12;

/// The largest body a record may have: the largest message body the server
/// takes (`--max-body` is capped at 1 GiB) and its names, with room.
pub const MAX_BODY: usize = (1 << 30) + (1 << 20);

/// What kind of record a body holds (its first byte).
pub mod kind {
    /// The server started; `epoch_s` (u64).
    pub const BOOT: u8 = 1;
    /// First record of a snapshot segment: everything before it is replaced.
    /// `next_seq`, `loose_ids`, `epoch_s` (u64 each).
    pub const SNAPSHOT: u8 = 2;
    /// A line-protocol message joined a queue: `seq`, `deadline` (wall
    /// clock, ms since the Unix epoch), `timeout_s`, `to`, `reply?`, `body`.
    pub const ENQUEUE: u8 = 3;
    /// Line message `seq` was handed to a receiver.
    pub const TAKE: u8 = 4;
    /// Line message `seq` expired.
    pub const EXPIRE: u8 = 5;
    /// A persistent switch queue: `name`, `next_id`.
    pub const QUEUE_CREATE: u8 = 6;
    /// `name` was destroyed.
    pub const QUEUE_DESTROY: u8 = 7;
    /// A switch message was stored: `name`, `id`, `time` (wall ms),
    /// `origin` (u8 0 anonymous / 1 session, then bytes), `kind` (u8 0
    /// request + reply-to bytes / 1 response + queue bytes + id), `payload`.
    pub const SWITCH_STORE: u8 = 8;
    /// Switch message `name`, `id` is gone (acked, or taken by a line
    /// receiver).
    pub const SWITCH_ACK: u8 = 9;
    /// Switch message `name`, `id` was handed to a switch client.
    pub const SWITCH_SEEN: u8 = 10;
    /// Switch queue `name` has used ids below `next_id`.
    pub const SWITCH_IDS: u8 = 11;
    /// Ids of messages handed over on names that are no switch queue are
    /// below `next`.
    pub const LOOSE_IDS: u8 = 12;
}

/// Who sent a switch message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// A session (else an anonymous sender, such as the line protocol).
    pub session: bool,
    pub name: Bytes,
}

/// What a switch message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchKind {
    /// A request and its reply-to queue (empty: none).
    Request(Bytes),
    /// The response to request `(queue, id)`.
    Response(Bytes, u64),
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Boot {
        epoch_s: u64,
    },
    Snapshot {
        next_seq: u64,
        loose_ids: u64,
        epoch_s: u64,
    },
    Enqueue {
        seq: u64,
        deadline: u64,
        timeout_s: u64,
        to: Bytes,
        reply: Option<Bytes>,
        body: Bytes,
    },
    Take {
        seq: u64,
    },
    Expire {
        seq: u64,
    },
    QueueCreate {
        name: Bytes,
        next_id: u64,
    },
    QueueDestroy {
        name: Bytes,
    },
    SwitchStore {
        name: Bytes,
        id: u64,
        time: u64,
        origin: Origin,
        kind: SwitchKind,
        payload: Bytes,
    },
    SwitchAck {
        name: Bytes,
        id: u64,
    },
    SwitchSeen {
        name: Bytes,
        id: u64,
    },
    SwitchIds {
        name: Bytes,
        next_id: u64,
    },
    LooseIds {
        next: u64,
    },
}

/// Appends records to a buffer: [`Writer::begin`], the fields, [`Writer::end`].
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    /// Starts a record of kind `kind` at the end of `buf`.
    pub fn begin(buf: &'a mut Vec<u8>, kind: u8) -> Writer<'a> {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER]);
        buf.push(kind);
        Writer { buf, start }
    }

    pub fn u64(self, n: u64) -> Self {
        self.buf.extend_from_slice(&n.to_le_bytes());
        self
    }

    pub fn u8(self, n: u8) -> Self {
        self.buf.push(n);
        self
    }

    pub fn bytes(self, b: &[u8]) -> Self {
        // Names and bodies are far below 4 GiB (MAX_BODY); a longer one
        // would fail its decoding, never be cut silently.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(b);
        self
    }

    pub fn opt(self, b: Option<&[u8]>) -> Self {
        match b {
            Some(b) => self.u8(1).bytes(b),
            None => self.u8(0),
        }
    }

    /// Fills in the header: length, inverted length, checksum.
    pub fn end(self) {
        let body_start = self.start + HEADER;
        let len = u32::try_from(self.buf.len() - body_start).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(self.buf.get(body_start..).unwrap_or_default());
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&(!len).to_le_bytes());
        header[8..].copy_from_slice(&crc.to_le_bytes());
        if let Some(h) = self.buf.get_mut(self.start..body_start) {
            h.copy_from_slice(&header);
        }
    }
}

/// Encodes `record` at the end of `buf`.
pub fn encode(buf: &mut Vec<u8>, record: &Record) {
    match record {
        Record::Boot { epoch_s } => Writer::begin(buf, kind::BOOT).u64(*epoch_s).end(),
        Record::Snapshot {
            next_seq,
            loose_ids,
            epoch_s,
        } => Writer::begin(buf, kind::SNAPSHOT)
            .u64(*next_seq)
            .u64(*loose_ids)
            .u64(*epoch_s)
            .end(),
        Record::Enqueue {
            seq,
            deadline,
            timeout_s,
            to,
            reply,
            body,
        } => Writer::begin(buf, kind::ENQUEUE)
            .u64(*seq)
            .u64(*deadline)
            .u64(*timeout_s)
            .bytes(to)
            .opt(reply.as_deref())
            .bytes(body)
            .end(),
        Record::Take { seq } => Writer::begin(buf, kind::TAKE).u64(*seq).end(),
        Record::Expire { seq } => Writer::begin(buf, kind::EXPIRE).u64(*seq).end(),
        Record::QueueCreate { name, next_id } => Writer::begin(buf, kind::QUEUE_CREATE)
            .bytes(name)
            .u64(*next_id)
            .end(),
        Record::QueueDestroy { name } => Writer::begin(buf, kind::QUEUE_DESTROY).bytes(name).end(),
        Record::SwitchStore {
            name,
            id,
            time,
            origin,
            kind: k,
            payload,
        } => {
            let w = Writer::begin(buf, kind::SWITCH_STORE)
                .bytes(name)
                .u64(*id)
                .u64(*time)
                .u8(u8::from(origin.session))
                .bytes(&origin.name);
            let w = match k {
                SwitchKind::Request(r) => w.u8(0).bytes(r),
                SwitchKind::Response(q, n) => w.u8(1).bytes(q).u64(*n),
            };
            w.bytes(payload).end();
        }
        Record::SwitchAck { name, id } => Writer::begin(buf, kind::SWITCH_ACK)
            .bytes(name)
            .u64(*id)
            .end(),
        Record::SwitchSeen { name, id } => Writer::begin(buf, kind::SWITCH_SEEN)
            .bytes(name)
            .u64(*id)
            .end(),
        Record::SwitchIds { name, next_id } => Writer::begin(buf, kind::SWITCH_IDS)
            .bytes(name)
            .u64(*next_id)
            .end(),
        Record::LooseIds { next } => Writer::begin(buf, kind::LOOSE_IDS).u64(*next).end(),
    }
}

/// Why a record's header or body is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bad {
    /// The length and its inverted copy disagree.
    Header,
    /// Longer than [`MAX_BODY`].
    TooLong(u32),
    /// The checksum does not match.
    Checksum,
    /// The body does not decode as its kind.
    Body(&'static str),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Header => f.write_str("the record header is damaged"),
            Bad::TooLong(n) => write!(f, "a record length of {n} bytes is impossible"),
            Bad::Checksum => f.write_str("the checksum does not match"),
            Bad::Body(why) => write!(f, "the record does not decode: {why}"),
        }
    }
}

/// The body length a header announces.
pub fn header_len(header: &[u8; HEADER]) -> Result<(usize, u32), Bad> {
    let word = |i: usize| {
        let mut w = [0u8; 4];
        if let Some(s) = header.get(i..i + 4) {
            w.copy_from_slice(s);
        }
        u32::from_le_bytes(w)
    };
    let (len, inv, crc) = (word(0), word(4), word(8));
    if len != !inv {
        return Err(Bad::Header);
    }
    let n = len as usize;
    if n == 0 || n > MAX_BODY {
        return Err(Bad::TooLong(len));
    }
    Ok((n, crc))
}

/// Checks a body against its header's checksum and decodes it.
pub fn decode(body: &Bytes, crc: u32) -> Result<Record, Bad> {
    if crc32fast::hash(body) != crc {
        return Err(Bad::Checksum);
    }
    let mut r = Reader { buf: body, pos: 0 };
    let k = r.u8()?;
    let record = match k {
        kind::BOOT => Record::Boot { epoch_s: r.u64()? },
        kind::SNAPSHOT => Record::Snapshot {
            next_seq: r.u64()?,
            loose_ids: r.u64()?,
            epoch_s: r.u64()?,
        },
        kind::ENQUEUE => Record::Enqueue {
            seq: r.u64()?,
            deadline: r.u64()?,
            timeout_s: r.u64()?,
            to: r.bytes()?,
            reply: r.opt()?,
            body: r.bytes()?,
        },
        kind::TAKE => Record::Take { seq: r.u64()? },
        kind::EXPIRE => Record::Expire { seq: r.u64()? },
        kind::QUEUE_CREATE => Record::QueueCreate {
            name: r.bytes()?,
            next_id: r.u64()?,
        },
        kind::QUEUE_DESTROY => Record::QueueDestroy { name: r.bytes()? },
        kind::SWITCH_STORE => {
            let name = r.bytes()?;
            let id = r.u64()?;
            let time = r.u64()?;
            let session = r.u8()? != 0;
            let origin = Origin {
                session,
                name: r.bytes()?,
            };
            let kind = match r.u8()? {
                0 => SwitchKind::Request(r.bytes()?),
                1 => SwitchKind::Response(r.bytes()?, r.u64()?),
                _ => return Err(Bad::Body("unknown message kind")),
            };
            Record::SwitchStore {
                name,
                id,
                time,
                origin,
                kind,
                payload: r.bytes()?,
            }
        }
        kind::SWITCH_ACK => Record::SwitchAck {
            name: r.bytes()?,
            id: r.u64()?,
        },
        kind::SWITCH_SEEN => Record::SwitchSeen {
            name: r.bytes()?,
            id: r.u64()?,
        },
        kind::SWITCH_IDS => Record::SwitchIds {
            name: r.bytes()?,
            next_id: r.u64()?,
        },
        kind::LOOSE_IDS => Record::LooseIds { next: r.u64()? },
        _ => return Err(Bad::Body("unknown record kind")),
    };
    if r.pos != body.len() {
        return Err(Bad::Body("bytes left over"));
    }
    Ok(record)
}

/// Decodes a buffer of whole records (a batch, a snapshot): for the tests,
/// which read back what the writer wrote (replay reads segments record by
/// record, `log.rs`).
#[cfg(test)]
pub(crate) fn decode_all(buf: &Bytes) -> Result<Vec<Record>, Bad> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let mut header = [0u8; HEADER];
        header.copy_from_slice(buf.get(pos..pos + HEADER).ok_or(Bad::Header)?);
        let (n, crc) = header_len(&header)?;
        let end = pos + HEADER + n;
        if end > buf.len() {
            return Err(Bad::Body("cut short"));
        }
        out.push(decode(&buf.slice(pos + HEADER..end), crc)?);
        pos = end;
    }
    Ok(out)
}

struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<Bytes, Bad> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Bad::Body("cut short"))?;
        let b = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u64(&mut self) -> Result<u64, Bad> {
        let b = self.take(8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(&b);
        Ok(u64::from_le_bytes(w))
    }

    fn bytes(&mut self) -> Result<Bytes, Bad> {
        let b = self.take(4)?;
        let mut w = [0u8; 4];
        w.copy_from_slice(&b);
        self.take(u32::from_le_bytes(w) as usize)
    }

    fn opt(&mut self) -> Result<Option<Bytes>, Bad> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(Bad::Body("bad option tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    pub fn samples() -> Vec<Record> {
        vec![
            Record::Boot { epoch_s: 7 },
            Record::Snapshot {
                next_seq: 1,
                loose_ids: 2,
                epoch_s: 3,
            },
            Record::Enqueue {
                seq: 9,
                deadline: 1_700_000_000_000,
                timeout_s: 30,
                to: b("q"),
                reply: Some(b("r")),
                body: b("hello"),
            },
            Record::Enqueue {
                seq: 10,
                deadline: 5,
                timeout_s: 0,
                to: b("q"),
                reply: None,
                body: Bytes::new(),
            },
            Record::Take { seq: 9 },
            Record::Expire { seq: 10 },
            Record::QueueCreate {
                name: b("svc"),
                next_id: 4,
            },
            Record::QueueDestroy { name: b("svc") },
            Record::SwitchStore {
                name: b("svc"),
                id: 3,
                time: 11,
                origin: Origin {
                    session: true,
                    name: b("client"),
                },
                kind: SwitchKind::Request(b("client.reply")),
                payload: b("ping"),
            },
            Record::SwitchStore {
                name: b("client.reply"),
                id: 0,
                time: 12,
                origin: Origin {
                    session: false,
                    name: b("line"),
                },
                kind: SwitchKind::Response(b("svc"), 3),
                payload: b("pong"),
            },
            Record::SwitchAck {
                name: b("svc"),
                id: 3,
            },
            Record::SwitchSeen {
                name: b("svc"),
                id: 3,
            },
            Record::SwitchIds {
                name: b("svc"),
                next_id: 8,
            },
            Record::LooseIds { next: 2 },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        let mut buf = Vec::new();
        for r in samples() {
            encode(&mut buf, &r);
        }
        assert_eq!(decode_all(&Bytes::from(buf)).unwrap(), samples());
    }

    #[test]
    fn a_flipped_length_bit_is_a_damaged_header() {
        let mut buf = Vec::new();
        encode(&mut buf, &Record::Take { seq: 1 });
        for bit in 0..64 {
            let mut h = [0u8; HEADER];
            h.copy_from_slice(&buf[..HEADER]);
            h[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(header_len(&h), Err(Bad::Header), "bit {bit}");
        }
    }

    #[test]
    fn a_flipped_body_byte_fails_the_checksum() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            &Record::Enqueue {
                seq: 1,
                deadline: 2,
                timeout_s: 3,
                to: b("q"),
                reply: None,
                body: b("body"),
            },
        );
        let mut h = [0u8; HEADER];
        h.copy_from_slice(&buf[..HEADER]);
        let (n, crc) = header_len(&h).unwrap();
        for i in 0..n {
            let mut body = buf[HEADER..].to_vec();
            body[i] ^= 0x40;
            assert_eq!(decode(&Bytes::from(body), crc), Err(Bad::Checksum));
        }
    }

    // The length a header may announce, and what each refusal says.

    fn header(len: u32) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&(!len).to_le_bytes());
        h[8..].copy_from_slice(&7u32.to_le_bytes());
        h
    }

    #[test]
    fn a_body_is_1_byte_to_1_gib_and_1_mib_long() {
        assert_eq!(header_len(&header(1)), Ok((1, 7)));
        assert_eq!(header_len(&header(1_074_790_400)), Ok((1_074_790_400, 7)));
        assert_eq!(
            header_len(&header(1_074_790_401)),
            Err(Bad::TooLong(1_074_790_401))
        );
        assert_eq!(header_len(&header(0)), Err(Bad::TooLong(0)));
    }

    #[test]
    fn every_refusal_says_why() {
        for (bad, text) in [
            (Bad::Header, "the record header is damaged"),
            (Bad::TooLong(0), "a record length of 0 bytes is impossible"),
            (Bad::Checksum, "the checksum does not match"),
            (
                Bad::Body("cut short"),
                "the record does not decode: cut short",
            ),
        ] {
            assert_eq!(bad.to_string(), text);
        }
    }
}
