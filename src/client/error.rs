//! The client's error type: everything a call on [`Client`](super::Client)
//! can fail with, each with a message a user can act on.
//!
//! Owns only the error enum; it must not grow IO or parsing logic.

use std::fmt;
use std::io;

/// What went wrong talking to the server.
#[derive(Debug)]
pub enum Error {
    /// The socket failed (connect, read or write).
    Io(io::Error),
    /// The server closed the connection while an answer was still due.
    Closed,
    /// The server refused a command with `- reason`; it closes the
    /// connection right after, so the client cannot be used any more.
    Server(String),
    /// The server sent bytes that are not a valid line-protocol frame.
    Protocol(String),
    /// An argument cannot be put on the wire (an address with a space in
    /// it, nine ready addresses, ...), or a setting cannot be used (a CA
    /// file without certificates). Nothing was sent.
    InvalidInput(String),
    /// An HTTP door answered with this status and body (the
    /// message-switch API: `404 Please log in.`, `400 …`).
    Status(u16, String),
    /// An HTTP server answered (with this status line): the address is
    /// not a line-protocol door. switchboard's HTTP doors answer a
    /// line-protocol command at once with a `400`.
    HttpDoor(String),
    /// TLS failed: the server's certificate was refused (expired, not
    /// valid for the name, not signed by a trusted CA), the handshake
    /// failed, or the server sent something that is not TLS.
    Tls(rustls::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection error: {e}"),
            Error::Closed => f.write_str("the server closed the connection"),
            Error::Server(reason) => write!(f, "server error: {reason}"),
            Error::Protocol(what) => write!(f, "unexpected data from the server: {what}"),
            Error::InvalidInput(what) => f.write_str(what),
            Error::Status(status, body) => write!(f, "the server answered {status}: {body}"),
            Error::Tls(e) => write!(f, "TLS: {}", describe_tls(e)),
            Error::HttpDoor(status) => write!(
                f,
                "an HTTP server answered ({status}): not a line-protocol door"
            ),
        }
    }
}

/// rustls' reason, put in words for someone who runs a client.
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as E};
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (unknown issuer)".into()
        }
        E::InvalidCertificate(CertificateError::Expired) => {
            "the server's certificate has expired".into()
        }
        E::InvalidCertificate(CertificateError::NotValidForName) => {
            "the server's certificate is not valid for the name it was reached by".into()
        }
        E::InvalidCertificate(c) => format!("the server's certificate was refused: {c}"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("{e} (is the server's door a TLS door?)")
        }
        other => other.to_string(),
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    /// TLS failures reach the client inside IO errors; they come out as
    /// [`Error::Tls`].
    fn from(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            let kind = e.kind();
            return match e
                .into_inner()
                .map(|inner| inner.downcast::<rustls::Error>())
            {
                Some(Ok(tls)) => Error::Tls(*tls),
                Some(Err(inner)) => Error::Io(io::Error::new(kind, inner)),
                None => Error::Io(kind.into()),
            };
        }
        Error::Io(e)
    }
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;
