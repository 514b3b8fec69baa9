//! Server-Sent Events on the HTTP bus as flood-sub reads them: the
//! subscribe request (`Accept: text/event-stream`) and a push parser of the
//! stream. No IO; see `codec`.
//!
//! Lines are parsed as they stream by: a `data:` line's bytes go into the
//! kept prefix and the length count, never into a buffer, so a body of any
//! size costs nothing. The bus' comment line before each event (`:
//! channel=CH type=TYPE [from=USER]`) gives the content type; other
//! comments (the opening, heartbeats) and other fields are skipped. An event
//! ends at a blank line; its body is its `data:` lines joined with `\n`.
//! Lines end with LF, as the bus writes them (a CR outside data is
//! ignored).

use crate::codec::{Error, Event, Lines, Prefix};
use crate::http::{is_header, parse_status};

/// Longest comment line kept (enough for the bus' metadata line).
const MAX_COMMENT: usize = 1024;
/// Longest field name recognised (`data`, `event`, `retry`, `id`).
const MAX_FIELD: usize = 8;

/// `GET PATH` (`/msgbus/CHANNEL` on switchboard) asking for an event stream.
pub fn encode_subscribe(out: &mut Vec<u8>, host: &str, path: &str, auth: Option<&str>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nAccept: text/event-stream\r\n");
    if let Some(a) = auth {
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// At the start of a line.
    Start,
    /// Reading a field name.
    Field,
    /// In a comment line.
    Comment,
    /// In a `data:` value; `space`: its optional leading space may follow.
    Data { space: bool },
    /// In a line whose value is not needed.
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Status,
    Headers,
    Stream,
}

/// Parses a subscriber's event stream: `Subscribed` at a `200` with
/// `Content-Type: text/event-stream`, then one `Message` per event.
#[derive(Debug)]
pub struct SseParser {
    stage: Stage,
    head: Lines,
    status: u16,
    status_line: String,
    event_stream: bool,
    line: Line,
    field: Vec<u8>,
    comment: Vec<u8>,
    ctype: Vec<u8>,
    prefix: Prefix,
    len: u64,
    data_lines: u64,
}

impl Default for SseParser {
    fn default() -> Self {
        SseParser {
            stage: Stage::Status,
            head: Lines::default(),
            status: 0,
            status_line: String::new(),
            event_stream: false,
            line: Line::Start,
            field: Vec::new(),
            comment: Vec::new(),
            ctype: Vec::new(),
            prefix: Prefix::default(),
            len: 0,
            data_lines: 0,
        }
    }
}

impl SseParser {
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
                        if let Some(v) = is_header(line, "content-type") {
                            self.event_stream = v.eq_ignore_ascii_case(b"text/event-stream");
                        }
                        self.head.clear();
                        continue;
                    }
                    self.head.clear();
                    if self.status != 200 || !self.event_stream {
                        return Err(Error::Refused(format!(
                            "{} (not a 200 event stream)",
                            self.status_line
                        )));
                    }
                    self.stage = Stage::Stream;
                    on(Event::Subscribed);
                }
                Stage::Stream => {
                    self.stream(data, on);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn stream(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) {
        let mut rest = data;
        while !rest.is_empty() {
            if let Line::Data { space } = self.line {
                // The bulk of the stream: take the value up to the line end.
                let mut value = rest;
                if space && value.first() == Some(&b' ') {
                    value = &value[1..];
                }
                let end = memchr::memchr(b'\n', value).unwrap_or(value.len());
                let (bytes, tail) = value.split_at(end);
                self.prefix.push(bytes);
                self.len += bytes.len() as u64;
                self.line = Line::Data { space: false };
                rest = tail;
                if let Some((_, tail)) = rest.split_first() {
                    self.data_lines += 1;
                    self.line = Line::Start;
                    rest = tail;
                }
                continue;
            }
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            rest = tail;
            if b == b'\r' {
                // The bus ends lines with LF; a CR before it is ignored.
                continue;
            }
            match self.line {
                Line::Start => match b {
                    b'\n' => self.dispatch(on),
                    b':' => {
                        self.comment.clear();
                        self.line = Line::Comment;
                    }
                    _ => {
                        self.field.clear();
                        self.field.push(b);
                        self.line = Line::Field;
                    }
                },
                Line::Field => match b {
                    b':' => {
                        self.line = if self.field == b"data" {
                            self.start_data_line();
                            Line::Data { space: true }
                        } else {
                            Line::Skip
                        };
                    }
                    b'\n' => {
                        if self.field == b"data" {
                            // `data` alone: an empty data line.
                            self.start_data_line();
                            self.data_lines += 1;
                        }
                        self.line = Line::Start;
                    }
                    _ if self.field.len() < MAX_FIELD => self.field.push(b),
                    _ => self.line = Line::Skip,
                },
                Line::Comment => {
                    if b == b'\n' {
                        self.on_comment();
                        self.line = Line::Start;
                    } else if self.comment.len() < MAX_COMMENT {
                        self.comment.push(b);
                    }
                }
                Line::Skip => {
                    if b == b'\n' {
                        self.line = Line::Start;
                    }
                }
                Line::Data { .. } => {}
            }
        }
    }

    /// A second data line of an event joins the first with a line feed.
    fn start_data_line(&mut self) {
        if self.data_lines > 0 {
            self.prefix.push(b"\n");
            self.len += 1;
        }
    }

    /// `: channel=CH type=TYPE ...`: keeps TYPE for the event it opens.
    fn on_comment(&mut self) {
        let text = &self.comment;
        if !text.starts_with(b" channel=") {
            return;
        }
        if let Some(t) = text
            .split(|&b| b == b' ')
            .find_map(|f| f.strip_prefix(b"type="))
        {
            self.ctype.clear();
            self.ctype.extend_from_slice(t);
        }
    }

    fn dispatch(&mut self, on: &mut dyn FnMut(Event<'_>)) {
        if self.data_lines > 0 {
            on(Event::Message {
                channel: b"",
                ctype: &self.ctype,
                prefix: self.prefix.get(self.len),
                len: self.len,
            });
        }
        self.prefix.clear();
        self.len = 0;
        self.data_lines = 0;
        self.ctype.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(stream: &[u8], split: usize) -> Vec<String> {
        let mut p = SseParser::default();
        let mut seen = Vec::new();
        for piece in [&stream[..split], &stream[split..]] {
            p.feed(piece, &mut |ev| {
                seen.push(match ev {
                    Event::Subscribed => "subscribed".to_string(),
                    Event::Message {
                        ctype, prefix, len, ..
                    } => format!(
                        "{} {len} {}",
                        String::from_utf8_lossy(ctype),
                        String::from_utf8_lossy(prefix)
                    ),
                    other => format!("{other:?}"),
                })
            })
            .unwrap();
        }
        seen
    }

    #[test]
    fn events_split_anywhere() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n\
            retry: 3000\n: subscribed\n\n\
            : channel=f type=text/plain from=bob\ndata: hello\n\n\
            : heartbeat\n\n\
            : channel=f type=image/png\ndata: a\ndata: b\ndata\n\n";
        let want = vec![
            "subscribed".to_string(),
            "text/plain 5 hello".to_string(),
            "image/png 4 a\nb\n".to_string(),
        ];
        for split in 0..stream.len() {
            assert_eq!(feed_split(stream, split), want, "split at {split}");
        }
    }

    #[test]
    fn refused_without_an_event_stream() {
        let mut p = SseParser::default();
        let r = p.feed(
            b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary=x\r\n\r\n",
            &mut |_| {},
        );
        assert!(matches!(r, Err(Error::Refused(_))));
    }
}
