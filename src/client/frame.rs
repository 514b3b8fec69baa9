//! Line-protocol frames as the client sees them: command lines it writes
//! and header lines it reads.
//!
//! Pure functions, no IO: `Client` reads the line and the body, this file
//! only says what the line means and what a command line looks like. What
//! a header line means is decided by the parser the server shares
//! ([`crate::line::wire`]); this file turns its fields into owned text.

use super::error::{Error, Result};
use crate::line::wire::{self, HeaderError};

/// The most addresses one `<` command may wait on.
pub const MAX_READY_ADDRS: usize = 8;

/// The content type of a publication that names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// What a header line from the server announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Header {
    /// `> LEN TIMEOUT TO [REPLY]`, followed by a body when LEN > 0.
    Message {
        len: usize,
        timeout_s: u64,
        to: String,
        reply: Option<String>,
    },
    /// `! LEN CHANNEL TYPE`, followed by a body when LEN > 0.
    Publication {
        len: usize,
        channel: String,
        content_type: String,
    },
    /// `*`: a `<` or `?` wait ran out.
    Timeout,
    /// `- reason`: the server refused something and is closing.
    Error(String),
}

/// Reads one header line, without its `\r\n` or `\n`, with the parser
/// the server's own tests check its frames against
/// ([`crate::line::wire::parse_header`]).
pub(crate) fn parse_header(line: &[u8]) -> Result<Header> {
    let header = wire::parse_header(line).map_err(|e| {
        let line = shorten(&String::from_utf8_lossy(line));
        Error::Protocol(match e {
            HeaderError::Unknown => format!("unknown frame {line:?}"),
            HeaderError::BadLength => format!("bad body length in {line:?}"),
            HeaderError::BadTimeout => format!("bad timeout in {line:?}"),
        })
    })?;
    Ok(match header {
        wire::Header::Message {
            len,
            timeout_s,
            to,
            reply,
        } => Header::Message {
            len: body_len(len)?,
            timeout_s,
            to: text(to)?,
            reply: reply.map(text).transpose()?,
        },
        wire::Header::Publication {
            len,
            channel,
            content_type,
        } => Header::Publication {
            len: body_len(len)?,
            channel: text(channel)?,
            content_type: text(content_type)?,
        },
        wire::Header::Timeout => Header::Timeout,
        wire::Header::Error { reason } => Header::Error(if reason.is_empty() {
            "(no reason given)".to_string()
        } else {
            String::from_utf8_lossy(reason).into_owned()
        }),
    })
}

/// A field of a header line as text.
fn text(field: &[u8]) -> Result<String> {
    std::str::from_utf8(field)
        .map(str::to_string)
        .map_err(|_| Error::Protocol("a header line that is not UTF-8".into()))
}

fn body_len(len: u64) -> Result<usize> {
    usize::try_from(len)
        .map_err(|_| Error::Protocol(format!("a {len}-byte body, too large to hold")))
}

/// Keeps error messages readable when the server sends a huge line.
fn shorten(line: &str) -> String {
    const MAX: usize = 80;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}

/// Checks that `name` can travel as one field of a command line: not empty,
/// no whitespace, no control characters. `what` names it in the error.
pub(crate) fn check_field(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidInput(format!("the {what} must not be empty")));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidInput(format!(
            "the {what} {name:?} must not contain spaces or control characters"
        )));
    }
    Ok(())
}

/// `> LEN TIMEOUT TO [REPLY]\r\n`
pub(crate) fn send_line(
    len: usize,
    timeout_s: u64,
    to: &str,
    reply: Option<&str>,
) -> Result<String> {
    check_field("address", to)?;
    match reply {
        Some(reply) => {
            check_field("reply address", reply)?;
            Ok(format!("> {len} {timeout_s} {to} {reply}\r\n"))
        }
        None => Ok(format!("> {len} {timeout_s} {to}\r\n")),
    }
}

/// `< TIMEOUT ADDR1 [... ADDR8]\r\n`
pub(crate) fn ready_line(timeout_s: u64, addrs: &[&str]) -> Result<String> {
    if addrs.is_empty() || addrs.len() > MAX_READY_ADDRS {
        return Err(Error::InvalidInput(format!(
            "wait on 1 to {MAX_READY_ADDRS} addresses, not {}",
            addrs.len()
        )));
    }
    let mut line = format!("< {timeout_s}");
    for addr in addrs {
        check_field("address", addr)?;
        line.push(' ');
        line.push_str(addr);
    }
    line.push_str("\r\n");
    Ok(line)
}

/// `? LEN TIMEOUT TO\r\n`
pub(crate) fn query_line(len: usize, timeout_s: u64, to: &str) -> Result<String> {
    check_field("address", to)?;
    Ok(format!("? {len} {timeout_s} {to}\r\n"))
}

/// `! LEN CHANNEL [TYPE]\r\n`. TYPE is written as the server writes it on
/// delivery ([`wire::type_field`]): `text/plain; charset=utf-8` goes out as
/// `text/plain;charset=utf-8`, a blank one as the default type.
pub(crate) fn publish_line(
    len: usize,
    channel: &str,
    content_type: Option<&str>,
) -> Result<String> {
    check_field("channel", channel)?;
    match content_type {
        Some(ct) => {
            // Dropping ASCII bytes from UTF-8 leaves UTF-8: nothing is lost.
            let ct = String::from_utf8_lossy(&wire::type_field(ct.as_bytes())).into_owned();
            check_field("content type", &ct)?;
            Ok(format!("! {len} {channel} {ct}\r\n"))
        }
        None => Ok(format!("! {len} {channel}\r\n")),
    }
}

/// `+ CHANNEL\r\n` or `~ CHANNEL\r\n`
pub(crate) fn channel_line(subscribe: bool, channel: &str) -> Result<String> {
    check_field("channel", channel)?;
    let op = if subscribe { '+' } else { '~' };
    Ok(format!("{op} {channel}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_with_and_without_reply() {
        assert_eq!(
            parse_header(b"> 5 30 jobs").ok(),
            Some(Header::Message {
                len: 5,
                timeout_s: 30,
                to: "jobs".into(),
                reply: None
            })
        );
        assert_eq!(
            parse_header(b"> 0 7 a r.1").ok(),
            Some(Header::Message {
                len: 0,
                timeout_s: 7,
                to: "a".into(),
                reply: Some("r.1".into())
            })
        );
    }

    #[test]
    fn parses_publications_timeouts_and_errors() {
        assert_eq!(
            parse_header(b"! 3 news text/plain").ok(),
            Some(Header::Publication {
                len: 3,
                channel: "news".into(),
                content_type: "text/plain".into()
            })
        );
        assert_eq!(
            parse_header(b"! 3 news").ok(),
            Some(Header::Publication {
                len: 3,
                channel: "news".into(),
                content_type: DEFAULT_CONTENT_TYPE.into()
            })
        );
        assert_eq!(parse_header(b"*").ok(), Some(Header::Timeout));
        assert_eq!(
            parse_header(b"- invalid timeout format").ok(),
            Some(Header::Error("invalid timeout format".into()))
        );
        assert_eq!(
            parse_header(b"-").ok(),
            Some(Header::Error("(no reason given)".into()))
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"hello",
            b"> x 1 a",
            b"> 1 -1 a",
            b"> 1 1",
            b"> 1 1 a b c",
            b"! 1",
            b"! 3 news text/plain; charset=utf-8",
            b"! 3 \xff text/plain",
            b"* *",
            b"\xff",
        ] {
            assert!(
                matches!(parse_header(bad), Err(Error::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn default_type_is_the_servers() {
        assert_eq!(DEFAULT_CONTENT_TYPE.as_bytes(), wire::DEFAULT_CONTENT_TYPE);
    }

    #[test]
    fn builds_command_lines() {
        assert_eq!(
            send_line(3, 10, "a", None).ok().as_deref(),
            Some("> 3 10 a\r\n")
        );
        assert_eq!(
            send_line(0, 10, "a", Some("b")).ok().as_deref(),
            Some("> 0 10 a b\r\n")
        );
        assert_eq!(
            ready_line(5, &["a", "b"]).ok().as_deref(),
            Some("< 5 a b\r\n")
        );
        assert_eq!(query_line(2, 9, "q").ok().as_deref(), Some("? 2 9 q\r\n"));
        assert_eq!(
            publish_line(1, "c", Some("text/plain")).ok().as_deref(),
            Some("! 1 c text/plain\r\n")
        );
        assert_eq!(
            publish_line(1, "c", None).ok().as_deref(),
            Some("! 1 c\r\n")
        );
        assert_eq!(channel_line(true, "c").ok().as_deref(), Some("+ c\r\n"));
        assert_eq!(channel_line(false, "c").ok().as_deref(), Some("~ c\r\n"));
    }

    #[test]
    fn refuses_fields_that_would_break_the_line() {
        assert!(send_line(1, 1, "a b", None).is_err());
        assert!(send_line(1, 1, "", None).is_err());
        assert!(send_line(1, 1, "a", Some("x\r\n")).is_err());
        assert!(ready_line(1, &[]).is_err());
        assert!(ready_line(1, &["a"; 9]).is_err());
        assert!(ready_line(1, &["a"; 8]).is_ok());
        assert_eq!(
            publish_line(1, "c", Some("text/plain; charset=utf-8"))
                .ok()
                .as_deref(),
            Some("! 1 c text/plain;charset=utf-8\r\n")
        );
        assert_eq!(
            publish_line(1, "c", Some(" ")).ok().as_deref(),
            Some("! 1 c application/octet-stream\r\n")
        );
        assert!(publish_line(1, "c", Some("text/\x01plain")).is_err());
        assert!(channel_line(true, "a\tb").is_err());
    }
}
