//! The IO shell: the only place that touches mio, sockets and the clock.
//!
//! [`event_loop`] owns the `Poll`, the listeners and the connections; each
//! connection ([`conn`]) is a [`transport`] plus the state of its door and an
//! [`outq`] of frames to write.

pub mod blocking;
pub mod conn;
pub mod event_loop;
pub mod listen;
pub mod outq;
pub mod post;
pub mod reload;
pub mod resolve;
pub mod tls;
pub mod transport;

pub use event_loop::{check_redis, run, Server};
