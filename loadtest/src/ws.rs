//! WebSocket on the HTTP bus as the load tools speak it: the handshake, the
//! client's (masked) frames, and a push parser of what the server sends (the
//! `101` head, then frames). No IO; see `codec`.
//!
//! A subscriber connects to `/msgbus/CHANNEL`; each data frame is one
//! message. A publisher connects to `/msgbus/CHANNEL?type=!*`: the filter
//! passes nothing, so the messages it publishes do not come back to it, and
//! a close frame it sends last is answered only once the server has taken
//! (published) everything before it.

use crate::codec::{Error, Event, Lines, Prefix};
use crate::http::{is_header, parse_status};

/// Opcodes (RFC 6455 §5.2).
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The handshake of a subscriber (`publisher`: one whose own messages must
/// not come back). The key is fixed: the tools do not check the accept
/// value, the server does not care which key it gets.
pub fn encode_handshake(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    publisher: bool,
    auth: Option<&str>,
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    if publisher {
        out.extend_from_slice(b"?type=!*");
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    if let Some(a) = auth {
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One masked client frame: a text frame when `text`, else binary.
pub fn encode_message(out: &mut Vec<u8>, text: bool, payload: &[u8], mask: [u8; 4]) {
    encode_frame(out, if text { OP_TEXT } else { OP_BINARY }, payload, mask);
}

/// A masked close frame with status 1000.
pub fn encode_close(out: &mut Vec<u8>, mask: [u8; 4]) {
    encode_frame(out, OP_CLOSE, &1000u16.to_be_bytes(), mask);
}

fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if let Ok(n) = u16::try_from(n) {
        out.push(0x80 | 126);
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

#[derive(Debug)]
enum Stage {
    Status,
    Headers,
    /// Collecting a frame's head (at most 10 bytes: server frames are not
    /// masked).
    FrameHead,
    /// `left` payload bytes of a frame with `opcode` still to come.
    Payload {
        opcode: u8,
        left: u64,
    },
    Closed,
}

/// Parses what the server sends on a WebSocket: `Subscribed` at the `101`,
/// then one `Message` per data frame (empty channel and content type: a
/// frame carries neither), and `Closed` at a close frame. Pings and pongs
/// are skipped.
#[derive(Debug)]
pub struct WsParser {
    stage: Stage,
    head: Lines,
    status: u16,
    status_line: String,
    upgrade: bool,
    frame_head: [u8; 10],
    have: usize,
    len: u64,
    prefix: Prefix,
    close_code: [u8; 2],
    close_have: usize,
}

impl Default for WsParser {
    fn default() -> Self {
        WsParser {
            stage: Stage::Status,
            head: Lines::default(),
            status: 0,
            status_line: String::new(),
            upgrade: false,
            frame_head: [0; 10],
            have: 0,
            len: 0,
            prefix: Prefix::default(),
            close_code: [0; 2],
            close_have: 0,
        }
    }
}

impl WsParser {
    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        while !data.is_empty() {
            match self.stage {
                Stage::Status => {
                    if !self.head.take(&mut data)? {
                        return Ok(());
                    }
                    self.status = parse_status(self.head.line())?;
                    self.status_line = String::from_utf8_lossy(self.head.line()).into_owned();
                    self.head.clear();
                    self.stage = Stage::Headers;
                }
                Stage::Headers => {
                    if !self.head.take(&mut data)? {
                        return Ok(());
                    }
                    let line = self.head.line();
                    if !line.is_empty() {
                        if let Some(v) = is_header(line, "upgrade") {
                            self.upgrade = v.eq_ignore_ascii_case(b"websocket");
                        }
                        self.head.clear();
                        continue;
                    }
                    self.head.clear();
                    if self.status != 101 || !self.upgrade {
                        return Err(Error::Refused(self.status_line.clone()));
                    }
                    self.stage = Stage::FrameHead;
                    on(Event::Subscribed);
                }
                Stage::FrameHead => {
                    let take = data.len().min(self.frame_head.len() - self.have);
                    self.frame_head[self.have..self.have + take].copy_from_slice(&data[..take]);
                    self.have += take;
                    let Some((opcode, head_len, len)) = self.frame_len()? else {
                        data = &data[take..];
                        continue;
                    };
                    // Give back what was read past the head.
                    let used = take - (self.have - head_len);
                    data = &data[used..];
                    self.have = 0;
                    self.len = len;
                    self.prefix.clear();
                    self.close_have = 0;
                    self.stage = Stage::Payload { opcode, left: len };
                    if len == 0 {
                        self.end_frame(opcode, on)?;
                    }
                }
                Stage::Payload { opcode, left } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    let (chunk, rest) = data.split_at(n);
                    if opcode == OP_CLOSE {
                        for &b in chunk {
                            if self.close_have < 2 {
                                self.close_code[self.close_have] = b;
                                self.close_have += 1;
                            }
                        }
                    } else {
                        self.prefix.push(chunk);
                    }
                    data = rest;
                    let left = left - n as u64;
                    self.stage = Stage::Payload { opcode, left };
                    if left == 0 {
                        self.end_frame(opcode, on)?;
                    }
                }
                Stage::Closed => return Err(Error::StreamEnded),
            }
        }
        Ok(())
    }

    /// The opcode, head length and payload length once the head is whole.
    fn frame_len(&self) -> Result<Option<(u8, usize, u64)>, Error> {
        if self.have < 2 {
            return Ok(None);
        }
        let (b0, b1) = (self.frame_head[0], self.frame_head[1]);
        if b0 & 0x80 == 0 {
            return Err(Error::Protocol("a fragmented WebSocket message"));
        }
        if b1 & 0x80 != 0 {
            return Err(Error::Protocol("a masked server frame"));
        }
        let (head_len, len) = match b1 & 0x7F {
            126 if self.have >= 4 => (
                4,
                u64::from(u16::from_be_bytes([self.frame_head[2], self.frame_head[3]])),
            ),
            127 if self.have >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.frame_head[2..10]);
                (10, u64::from_be_bytes(b))
            }
            126 | 127 => return Ok(None),
            n => (2, u64::from(n)),
        };
        Ok(Some((b0 & 0x0F, head_len, len)))
    }

    fn end_frame(&mut self, opcode: u8, on: &mut dyn FnMut(Event<'_>)) -> Result<(), Error> {
        self.stage = Stage::FrameHead;
        match opcode {
            OP_TEXT | OP_BINARY => on(Event::Message {
                channel: b"",
                ctype: b"",
                prefix: self.prefix.get(self.len),
                len: self.len,
            }),
            OP_PING | OP_PONG => {}
            OP_CLOSE => {
                self.stage = Stage::Closed;
                let code = if self.close_have == 2 {
                    u16::from_be_bytes(self.close_code)
                } else {
                    1005
                };
                on(Event::Closed { code });
            }
            _ => return Err(Error::Protocol("an unknown WebSocket opcode")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(p: &mut WsParser, data: &[u8]) -> (Vec<String>, Result<(), Error>) {
        let mut seen = Vec::new();
        let r = p.feed(data, &mut |ev| {
            seen.push(match ev {
                Event::Subscribed => "subscribed".to_string(),
                Event::Message { prefix, len, .. } => {
                    format!("msg {} {}", len, String::from_utf8_lossy(prefix))
                }
                Event::Closed { code } => format!("closed {code}"),
                other => format!("{other:?}"),
            })
        });
        (seen, r)
    }

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nServer: switchboard\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";

    #[test]
    fn frames_split_anywhere() {
        let mut stream = HEAD.to_vec();
        stream.extend_from_slice(b"\x81\x05hello\x89\x00\x82\x7e\x00\x80");
        stream.extend_from_slice(&[b'z'; 128]);
        stream.extend_from_slice(b"\x88\x02\x03\xe8");
        let want = vec![
            "subscribed".to_string(),
            "msg 5 hello".to_string(),
            format!("msg 128 {}", "z".repeat(64)),
            "closed 1000".to_string(),
        ];
        for split in 0..stream.len() {
            let mut p = WsParser::default();
            let (mut a, ra) = events(&mut p, &stream[..split]);
            assert_eq!(ra, Ok(()));
            let (b, rb) = events(&mut p, &stream[split..]);
            assert_eq!(rb, Ok(()));
            a.extend(b);
            assert_eq!(a, want, "split at {split}");
        }
    }

    #[test]
    fn refusals_and_errors() {
        let mut p = WsParser::default();
        let (_, r) = events(&mut p, b"HTTP/1.1 426 Upgrade Required\r\n\r\n");
        assert!(matches!(r, Err(Error::Refused(_))));
        let mut p = WsParser::default();
        let mut stream = HEAD.to_vec();
        stream.extend_from_slice(b"\x81\x85abcd");
        let (_, r) = events(&mut p, &stream);
        assert!(matches!(r, Err(Error::Protocol(_))));
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        encode_message(&mut out, true, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        out.clear();
        encode_message(&mut out, false, &[0; 300], [1, 2, 3, 4]);
        assert_eq!(&out[..4], &[0x82, 0xfe, 0x01, 0x2c]);
        out.clear();
        encode_handshake(&mut out, "h", "/msgbus/flood", true, None);
        assert!(out.starts_with(b"GET /msgbus/flood?type=!* HTTP/1.1\r\nHost: h\r\n"));
    }
}
