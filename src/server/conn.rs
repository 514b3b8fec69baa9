//! One connection: its transport, the state of its door, and its output queue.

use bytes::BytesMut;

use super::outq::OutQueue;
use super::transport::Transport;
use crate::broker::{ConnId, Millis};
use crate::http::session::{HttpSession, Stream};
use crate::line::session::LineSession;

/// The protocol a connection speaks, with that protocol's state.
pub enum Door {
    Line(LineSession),
    Http(Box<HttpSession>),
    /// An HTTP connection that has subscribed: its request parser is gone.
    Stream(Stream),
    /// Taken out while its input is being processed.
    Detached,
}

impl Door {
    pub fn name(&self) -> &'static str {
        match self {
            Door::Line(_) => "line",
            Door::Http(_) | Door::Stream(_) => "bus",
            Door::Detached => "detached",
        }
    }
}

/// Why a connection was closed; counted per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    PeerClosed,
    Quit,
    ProtocolError,
    SlowSubscriber,
    ReadError,
    WriteError,
    LingerTimeout,
    RequestTimeout,
}

impl CloseReason {
    pub const COUNT: usize = 8;
    pub const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::PeerClosed,
        CloseReason::Quit,
        CloseReason::ProtocolError,
        CloseReason::SlowSubscriber,
        CloseReason::ReadError,
        CloseReason::WriteError,
        CloseReason::LingerTimeout,
        CloseReason::RequestTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer closed",
            CloseReason::Quit => "quit",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::SlowSubscriber => "slow subscriber",
            CloseReason::ReadError => "read error",
            CloseReason::WriteError => "write error",
            CloseReason::LingerTimeout => "linger timeout",
            CloseReason::RequestTimeout => "request timeout",
        }
    }
}

pub struct Conn {
    pub id: ConnId,
    pub transport: Transport,
    pub door: Door,
    pub outq: OutQueue,
    /// Input of an incomplete frame; empty (and unallocated) otherwise.
    pub input: BytesMut,
    /// Edge-triggered readiness, kept in user space.
    pub readable: bool,
    pub writable: bool,
    /// On the loop's dirty list.
    pub dirty: bool,
    /// Close once the output queue has drained (or at this deadline).
    pub close_after_flush: Option<(CloseReason, Millis)>,
    /// Set once the connection is on the close list.
    pub closing: bool,
    /// Messages dropped because the backlog limit was reached.
    pub dropped: u64,
    /// Since when (as seen by the once-a-second sweep) it has held an
    /// incomplete request, command or TLS handshake.
    pub incomplete_since: Option<Millis>,
    /// When the last slow-subscriber line was logged for it.
    pub slow_logged_at: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory of an idle connection is its slab entry: keep it small.
    #[test]
    fn idle_connection_is_small() {
        let size = std::mem::size_of::<Conn>();
        eprintln!("Conn: {size} bytes; Door {}", std::mem::size_of::<Door>());
        assert!(size <= 320, "Conn grew to {size} bytes");
    }
}
