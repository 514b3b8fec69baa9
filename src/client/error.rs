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
    /// it, nine ready addresses, ...). Nothing was sent.
    InvalidInput(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection error: {e}"),
            Error::Closed => f.write_str("the server closed the connection"),
            Error::Server(reason) => write!(f, "server error: {reason}"),
            Error::Protocol(what) => write!(f, "unexpected data from the server: {what}"),
            Error::InvalidInput(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;
