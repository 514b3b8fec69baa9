//! switchboard: a single-threaded message bus.
//!
//! The crate is laid out as rooms with one job each, and data flows one way:
//! socket → transport → codec → broker → outbox → connections' queues → socket.
//!
//! - [`config`]: every flag, its default and its validation; [`config_file`]:
//!   `--config FILE` and `--print-config`.
//! - [`server`]: the IO shell, the only place that touches mio.
//! - [`broker`]: queues and channels, free of IO.
//! - [`line`]: the line protocol codec and session.
//! - [`http`]: HTTP/1.x codec, responses and the HTTP bus door.
//! - [`client`]: a blocking client for the CLI and tests.
//! - [`logging`]: log lines on stderr, as text or JSON.
//! - [`store`]: queued messages on disk with `--data-dir` (a journal the
//!   broker appends to, a segment log written by a helper thread).

// Unit tests may unwrap, index and panic; the code they test may not
// (`[lints.clippy]` in Cargo.toml).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod auth;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod door;
pub mod doors;
pub mod http;
pub mod line;
pub mod logging;
pub mod server;
pub mod store;
pub mod timer;
