//! WebSocket (RFC 6455): the opening handshake's accept key and the decoder
//! of the frames a client sends.
//!
//! Owns: the `Sec-WebSocket-Accept` value, frame parsing (partial input,
//! masking, the length forms), reassembly of fragmented messages, the
//! protocol's rules on control frames, a message size limit, UTF-8 of text
//! messages and close reasons, and the close code each error earns. The
//! frames the server sends are built by `broker/frames.rs` (channel
//! messages, once per message for every subscriber) and by
//! [`control_frame`]. Must not touch: sockets, the broker, what a message
//! means (the bus door publishes it).
//!
//! No extension is negotiated (no permessage-deflate): see `docs/http.md`.

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};

use crate::broker::frames::{websocket_header, OP_CLOSE};

/// The GUID of RFC 6455 §1.3, appended to the client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest payload of a control frame (§5.5).
pub const MAX_CONTROL: usize = 125;

/// Close codes the server sends (§7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_BAD_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`:
/// base64(SHA-1(key + GUID)). SHA-1 is what the protocol prescribes here
/// (a fixed transform that proves the server read the handshake, not a
/// security function).
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// True when `key` is a valid `Sec-WebSocket-Key`: base64 of 16 bytes.
pub fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// A frame's opcode (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn of(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// What the client said, one whole message or control frame at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A data message, reassembled from its fragments; `text` messages are
    /// valid UTF-8.
    Message {
        text: bool,
        data: Bytes,
    },
    Ping(Bytes),
    Pong(Bytes),
    /// The client closes: its status code (none when the frame had no
    /// payload) and reason (UTF-8).
    Close {
        code: Option<u16>,
        reason: Bytes,
    },
}

/// Why a client's frames were refused; each maps to the close code the
/// server fails the connection with ([`WsError::close_code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsError {
    /// A client frame without the mask bit (§5.1).
    Unmasked,
    /// RSV1–3 set: no extension was negotiated.
    Reserved,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A control frame with more than 125 bytes of payload or without FIN.
    BadControl,
    /// A continuation frame with no message to continue.
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is unfinished.
    ExpectedContinuation,
    /// A length not written in its shortest form, or one with the top bit
    /// of the 64-bit form set.
    BadLength,
    /// A frame or a message longer than the limit.
    TooBig,
    /// A text message or close reason that is not UTF-8.
    BadUtf8,
    /// A close frame with a one-byte payload or a code that may not be sent.
    BadClose,
}

impl WsError {
    /// The close code the server answers this error with.
    pub fn close_code(self) -> u16 {
        match self {
            WsError::TooBig => CLOSE_TOO_BIG,
            WsError::BadUtf8 => CLOSE_BAD_DATA,
            _ => CLOSE_PROTOCOL,
        }
    }
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Unmasked => write!(f, "client frames must be masked"),
            WsError::Reserved => write!(f, "reserved bits set (no extension negotiated)"),
            WsError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            WsError::BadControl => {
                write!(f, "control frames must be whole and at most 125 bytes")
            }
            WsError::UnexpectedContinuation => write!(f, "continuation without a message"),
            WsError::ExpectedContinuation => {
                write!(f, "new message before the fragmented one ended")
            }
            WsError::BadLength => write!(f, "payload length not in its shortest form"),
            WsError::TooBig => write!(f, "message larger than the server accepts"),
            WsError::BadUtf8 => write!(f, "text is not valid UTF-8"),
            WsError::BadClose => write!(f, "invalid close frame"),
        }
    }
}

impl std::error::Error for WsError {}

/// A fragmented message being reassembled.
struct Partial {
    text: bool,
    data: BytesMut,
}

/// Decodes a client's frames. Bodies are unmasked in place and split off
/// the input without copying; only a fragmented message's pieces are
/// copied, into one buffer bounded by the limit.
pub struct Decoder {
    max_message: usize,
    /// Boxed: an idle WebSocket holds only the pointer.
    partial: Option<Box<Partial>>,
}

/// A frame's head, once its bytes are all there.
struct Head {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    head_len: usize,
    len: usize,
}

impl Decoder {
    /// A decoder that refuses frames and messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// True while a fragmented message is unfinished.
    pub fn mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Bytes of an unfinished fragmented message held by the decoder.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.len())
    }

    /// Takes the next message or control frame from `input`; `Ok(None)`
    /// when more input is needed (a partial frame stays in `input`). After
    /// an error the connection must be failed: the decoder's state is
    /// undefined.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Event>, WsError> {
        loop {
            let Some(head) = self.head(input)? else {
                return Ok(None);
            };
            if input.len() < head.head_len + head.len {
                return Ok(None);
            }
            input.advance(head.head_len);
            let mut payload = input.split_to(head.len);
            unmask(&mut payload, head.mask);
            let payload = payload.freeze();
            if let Some(event) = self.take(head.fin, head.opcode, payload)? {
                return Ok(Some(event));
            }
        }
    }

    /// Parses and checks a frame's head; `None` while it is incomplete.
    fn head(&self, input: &[u8]) -> Result<Option<Head>, WsError> {
        let (Some(&b0), Some(&b1)) = (input.first(), input.get(1)) else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(WsError::Reserved);
        }
        let opcode = Opcode::of(b0 & 0x0F).ok_or(WsError::UnknownOpcode(b0 & 0x0F))?;
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return Err(WsError::Unmasked);
        }
        let (len, at) = match b1 & 0x7F {
            126 => {
                let Some(b) = input.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes(b));
                if len < 126 {
                    return Err(WsError::BadLength);
                }
                (len, 4)
            }
            127 => {
                let Some(b) = input.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 || len <= 0xFFFF {
                    return Err(WsError::BadLength);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() && (len > MAX_CONTROL as u64 || !fin) {
            return Err(WsError::BadControl);
        }
        let held = self.held() as u64;
        if len > self.max_message as u64 || held + len > self.max_message as u64 {
            return Err(WsError::TooBig);
        }
        let Some(mask) = input
            .get(at..at + 4)
            .and_then(|m| <[u8; 4]>::try_from(m).ok())
        else {
            return Ok(None);
        };
        Ok(Some(Head {
            fin,
            opcode,
            mask,
            head_len: at + 4,
            // At most max_message, which is a usize.
            len: len as usize,
        }))
    }

    /// One whole frame: an event, or `None` for a fragment that does not
    /// end its message.
    fn take(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: Bytes,
    ) -> Result<Option<Event>, WsError> {
        let event = match opcode {
            Opcode::Ping => Event::Ping(payload),
            Opcode::Pong => Event::Pong(payload),
            Opcode::Close => close_event(payload)?,
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(WsError::ExpectedContinuation);
                }
                let text = opcode == Opcode::Text;
                if !fin {
                    self.partial = Some(Box::new(Partial {
                        text,
                        data: BytesMut::from(&payload[..]),
                    }));
                    return Ok(None);
                }
                message(text, payload)?
            }
            Opcode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(WsError::UnexpectedContinuation);
                };
                partial.data.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let Some(partial) = self.partial.take() else {
                    return Ok(None);
                };
                message(partial.text, partial.data.freeze())?
            }
        };
        Ok(Some(event))
    }
}

fn message(text: bool, data: Bytes) -> Result<Event, WsError> {
    if text && std::str::from_utf8(&data).is_err() {
        return Err(WsError::BadUtf8);
    }
    Ok(Event::Message { text, data })
}

fn close_event(payload: Bytes) -> Result<Event, WsError> {
    match payload.len() {
        0 => Ok(Event::Close {
            code: None,
            reason: Bytes::new(),
        }),
        1 => Err(WsError::BadClose),
        _ => {
            let code = u16::from_be_bytes([
                payload.first().copied().unwrap_or(0),
                payload.get(1).copied().unwrap_or(0),
            ]);
            if !sendable_close_code(code) {
                return Err(WsError::BadClose);
            }
            let reason = payload.slice(2..);
            if std::str::from_utf8(&reason).is_err() {
                return Err(WsError::BadUtf8);
            }
            Ok(Event::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

/// Codes a peer may put in a close frame (§7.4: 1004–1006 and 1015 are
/// reserved for reporting, not sending; 1012–1014 are registered since).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `data` with the 4-byte `mask`, starting at the mask's first byte.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        if let Ok(w) = <[u8; 4]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u32::from_ne_bytes(w) ^ word).to_ne_bytes());
        }
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// A server control frame (close, ping, pong); `payload` is cut to 125
/// bytes.
pub fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let payload = payload.get(..MAX_CONTROL).unwrap_or(payload);
    let mut out = BytesMut::with_capacity(2 + payload.len());
    websocket_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A server close frame with `code` and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // Cut on a character boundary so the reason stays UTF-8.
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(reason.get(..end).unwrap_or("").as_bytes());
    control_frame(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::frames::{OP_BINARY, OP_PING, OP_TEXT};

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Event>, WsError> {
        let mut input = BytesMut::from(bytes);
        let mut events = Vec::new();
        while let Some(e) = d.decode(&mut input)? {
            events.push(e);
        }
        assert!(input.is_empty(), "left {input:?}");
        Ok(events)
    }

    fn text(s: &str) -> Event {
        Event::Message {
            text: true,
            data: Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZQ=="));
        assert!(!valid_key(b"!!!!!!!!!!!!!!!!!!!!!!!!"));
    }

    #[test]
    fn the_rfc_examples() {
        // §5.7: a masked "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut d = Decoder::new(1000);
        assert_eq!(decode_all(&mut d, &bytes), Ok(vec![text("Hello")]));
        // The same, unmasked, is refused.
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut d = Decoder::new(1000);
        assert_eq!(
            d.decode(&mut BytesMut::from(&unmasked[..])),
            Err(WsError::Unmasked)
        );
        assert_eq!(WsError::Unmasked.close_code(), 1002);
    }

    #[test]
    fn every_length_form_fed_byte_by_byte() {
        for len in [0usize, 1, 5, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = frame(true, OP_BINARY, &payload);
            let mut d = Decoder::new(100_000);
            let mut input = BytesMut::new();
            let mut got = None;
            for (i, b) in bytes.iter().enumerate() {
                input.extend_from_slice(&[*b]);
                let e = d.decode(&mut input).unwrap();
                if i + 1 < bytes.len() {
                    assert_eq!(e, None, "len {len}: event before the frame's end");
                } else {
                    got = e;
                }
            }
            assert_eq!(
                got,
                Some(Event::Message {
                    text: false,
                    data: Bytes::from(payload)
                })
            );
            assert!(input.is_empty());
        }
    }

    #[test]
    fn fragments_with_control_frames_between() {
        let mut bytes = frame(false, OP_TEXT, b"Hel");
        bytes.extend(frame(true, OP_PING, b"p1"));
        bytes.extend(frame(false, 0, b"lo, "));
        bytes.extend(frame(true, 0xA, b""));
        bytes.extend(frame(true, 0, "wörld".as_bytes()));
        bytes.extend(frame(true, OP_BINARY, b"\xff"));
        let mut d = Decoder::new(1000);
        let events = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Ping(Bytes::from_static(b"p1")),
                Event::Pong(Bytes::new()),
                text("Hello, wörld"),
                Event::Message {
                    text: false,
                    data: Bytes::from_static(b"\xff")
                },
            ]
        );
        assert!(!d.mid_message());
        // A character split between fragments is whole once reassembled.
        let euro = "€".as_bytes();
        let mut bytes = frame(false, OP_TEXT, &euro[..1]);
        bytes.extend(frame(true, 0, &euro[1..]));
        assert_eq!(
            decode_all(&mut Decoder::new(10), &bytes),
            Ok(vec![text("€")])
        );
    }

    #[test]
    fn fragmentation_errors() {
        let mut d = Decoder::new(1000);
        assert_eq!(
            decode_all(&mut d, &frame(true, 0, b"x")),
            Err(WsError::UnexpectedContinuation)
        );
        let mut bytes = frame(false, OP_TEXT, b"a");
        bytes.extend(frame(true, OP_TEXT, b"b"));
        assert_eq!(
            decode_all(&mut Decoder::new(1000), &bytes),
            Err(WsError::ExpectedContinuation)
        );
        // A fragmented control frame, and one too long.
        assert_eq!(
            decode_all(&mut Decoder::new(1000), &frame(false, OP_PING, b"x")),
            Err(WsError::BadControl)
        );
        assert_eq!(
            decode_all(&mut Decoder::new(1000), &frame(true, OP_PING, &[0; 126])),
            Err(WsError::BadControl)
        );
        // 125 bytes, the most a control frame may carry, is fine.
        assert_eq!(
            decode_all(&mut Decoder::new(1000), &frame(true, OP_PING, &[7; 125])),
            Ok(vec![Event::Ping(Bytes::from_static(&[7; 125]))])
        );
    }

    #[test]
    fn limits_count_frames_and_messages() {
        // A frame over the limit is refused from its head alone.
        let bytes = frame(true, OP_BINARY, &[1; 11]);
        let mut d = Decoder::new(10);
        assert_eq!(
            d.decode(&mut BytesMut::from(&bytes[..2])),
            Err(WsError::TooBig)
        );
        assert_eq!(WsError::TooBig.close_code(), 1009);
        assert_eq!(
            decode_all(&mut Decoder::new(10), &frame(true, OP_BINARY, &[1; 10])).map(|e| e.len()),
            Ok(1)
        );
        // Fragments that add up past it.
        let mut bytes = frame(false, OP_BINARY, &[1; 6]);
        bytes.extend(frame(true, 0, &[1; 5]));
        let mut d = Decoder::new(10);
        assert_eq!(decode_all(&mut d, &bytes), Err(WsError::TooBig));
        // What is held counts with the new fragment: one byte held and a
        // fragment of the whole limit is one byte too many.
        let mut bytes = frame(false, OP_BINARY, &[1; 1]);
        bytes.extend(frame(true, 0, &[1; 10]));
        assert_eq!(
            decode_all(&mut Decoder::new(10), &bytes),
            Err(WsError::TooBig)
        );
        // A 64-bit length with its top bit set, and lengths not in their
        // shortest form.
        let mut d = Decoder::new(10);
        let huge = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            d.decode(&mut BytesMut::from(&huge[..])),
            Err(WsError::BadLength)
        );
        let short_in_16 = [0x82, 0xFE, 0, 5];
        assert_eq!(
            d.decode(&mut BytesMut::from(&short_in_16[..])),
            Err(WsError::BadLength)
        );
        let short_in_64 = [0x82, 0xFF, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            d.decode(&mut BytesMut::from(&short_in_64[..])),
            Err(WsError::BadLength)
        );
    }

    #[test]
    fn header_rules() {
        let mut d = Decoder::new(100);
        let mut rsv = frame(true, OP_TEXT, b"x");
        rsv[0] |= 0x40;
        assert_eq!(decode_all(&mut d, &rsv), Err(WsError::Reserved));
        for op in [3u8, 7, 0xB, 0xF] {
            assert_eq!(
                decode_all(&mut Decoder::new(100), &frame(true, op, b"")),
                Err(WsError::UnknownOpcode(op))
            );
        }
    }

    #[test]
    fn text_must_be_utf8() {
        assert_eq!(
            decode_all(&mut Decoder::new(100), &frame(true, OP_TEXT, b"\xc3\x28")),
            Err(WsError::BadUtf8)
        );
        assert_eq!(WsError::BadUtf8.close_code(), 1007);
    }

    #[test]
    fn close_frames() {
        let close = |payload: &[u8]| decode_all(&mut Decoder::new(100), &frame(true, 8, payload));
        assert_eq!(
            close(b""),
            Ok(vec![Event::Close {
                code: None,
                reason: Bytes::new()
            }])
        );
        assert_eq!(
            close(b"\x03\xe8bye"),
            Ok(vec![Event::Close {
                code: Some(1000),
                reason: Bytes::from_static(b"bye")
            }])
        );
        assert_eq!(close(b"\x03"), Err(WsError::BadClose));
        // One byte is refused even when, read as the high byte of a code,
        // it would make an allowed one (0x0F00 is 3840, an application's).
        assert_eq!(close(b"\x0f"), Err(WsError::BadClose));
        for bad in [999u16, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert_eq!(close(&bad.to_be_bytes()), Err(WsError::BadClose), "{bad}");
        }
        for good in [1001u16, 1011, 3000, 4999] {
            assert!(close(&good.to_be_bytes()).is_ok(), "{good}");
        }
        assert_eq!(close(b"\x03\xe8\xff"), Err(WsError::BadUtf8));
    }

    #[test]
    fn server_frames() {
        assert_eq!(
            &close_frame(1009, "too big")[..],
            b"\x88\x09\x03\xf1too big"
        );
        let long = "é".repeat(100);
        let f = close_frame(1000, &long);
        assert_eq!(f.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        assert_eq!(&control_frame(OP_PING, b"")[..], b"\x89\x00");
    }
}
