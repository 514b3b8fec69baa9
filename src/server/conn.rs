//! One connection: its transport, its door, its output queue, its state.

use bytes::{Bytes, BytesMut};

use super::outq::OutQueue;
use super::transport::Transport;
use crate::broker::{ConnId, Millis};
use crate::door::{Answer, CloseReason, Cx, Door, Next};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Reading, running its door, taking deliveries.
    Open,
    /// Closing once its output has drained, or at `deadline`: no more
    /// input is run and no more channel messages or answers are taken.
    Lingering {
        reason: CloseReason,
        deadline: Millis,
    },
    /// On the close list: it is freed at the end of the turn.
    Closing,
    /// An outbound connection whose connect (or name lookup) is under way:
    /// nothing is read or written; its door's own output waits in the queue.
    Connecting,
}

pub struct Conn {
    pub id: ConnId,
    pub transport: Transport,
    pub door: Box<dyn Door>,
    /// Index of its door in [`crate::doors::DOORS`].
    pub door_ix: u8,
    pub life: Life,
    pub outq: OutQueue,
    /// Input of an incomplete frame; empty (and unallocated) otherwise.
    pub input: BytesMut,
    /// Edge-triggered readiness, kept in user space.
    pub readable: bool,
    pub writable: bool,
    /// On the loop's dirty list.
    pub dirty: bool,
    /// With `--fsync always`: its output waits until the store's batch with
    /// this number is durable (0: nothing to wait for).
    pub hold: u64,
    /// The first batch its held output waits for (0: none held).
    pub hold_from: u64,
    /// Has a request-timeout deadline in the shell's timers.
    pub request_timer: bool,
    /// On the loop's still-ready list (at most once a turn).
    pub ready_listed: bool,
    /// Its door left requests in the input because its output was over the
    /// backlog: resumed once a flush takes it below.
    pub held_back: bool,
    /// Messages dropped because the backlog limit was reached.
    pub dropped: u64,
    /// Since when it has held an incomplete request, command or TLS
    /// handshake (reset whenever it completes one).
    pub incomplete_since: Option<Millis>,
    /// When its door asked to be woken ([`Cx::wake_at`]).
    pub wake_at: Option<Millis>,
    /// When the last slow-subscriber line was logged for it.
    pub slow_logged_at: Option<Millis>,
    /// When a flush last wrote bytes to it (0: never); doors read it as
    /// [`Cx::last_write`].
    pub last_write: Millis,
}

impl Conn {
    /// A new connection in state `life`, with nothing queued or held;
    /// `writable` until a write says otherwise (an accepted socket), or not
    /// until its connect completes (a dialed one).
    pub fn new(
        id: ConnId,
        transport: Transport,
        door: Box<dyn Door>,
        door_ix: u8,
        life: Life,
        writable: bool,
    ) -> Conn {
        Conn {
            id,
            transport,
            door,
            door_ix,
            life,
            outq: OutQueue::default(),
            input: BytesMut::new(),
            readable: false,
            writable,
            dirty: false,
            hold: 0,
            hold_from: 0,
            request_timer: false,
            ready_listed: false,
            held_back: false,
            dropped: 0,
            incomplete_since: None,
            wake_at: None,
            slow_logged_at: None,
            last_write: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.life == Life::Open
    }

    pub fn is_closing(&self) -> bool {
        self.life == Life::Closing
    }

    /// Holds part of a request, a command or a TLS handshake that it is not
    /// waiting on the broker for: the request timeout runs.
    pub fn holds_incomplete(&self) -> bool {
        (!self.input.is_empty() && !self.door.is_paused())
            || self.door.mid_request()
            || self.transport.is_handshaking()
    }
}

/// Stands in for a connection's door while the door runs (it is taken out
/// of the connection for the call). It takes no answers: a running door is
/// never waiting.
pub struct Detached;

impl Door for Detached {
    fn on_input(&mut self, _cx: &mut Cx<'_>, _input: &mut BytesMut) -> Next {
        Next::Read
    }
    fn on_answer(&mut self, _answer: Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
        false
    }
    fn is_paused(&self) -> bool {
        true
    }
    fn on_close(&mut self, _cx: &mut Cx<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory of an idle connection is its slab entry and its door:
    /// keep both small.
    #[test]
    fn idle_connection_is_small() {
        let size = std::mem::size_of::<Conn>();
        let line = std::mem::size_of::<crate::line::session::LineSession>();
        eprintln!("Conn: {size} bytes; line door {line}");
        assert!(size <= 320, "Conn grew to {size} bytes");
        assert!(
            size + line <= 480,
            "Conn + line door grew to {}",
            size + line
        );
    }

    #[test]
    fn a_detached_door_refuses_answers() {
        let mut d = Detached;
        assert!(!d.on_answer(Answer::Timeout, &mut |_| {}));
        assert!(d.is_paused());
    }
}
