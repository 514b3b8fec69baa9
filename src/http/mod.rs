//! HTTP/1.x: the request codec, responses, the connection machine every HTTP
//! door runs on, and the HTTP doors' routes.
//!
//! - [`codec`] and [`chunked`]: bytes in, requests (and chunked bodies) out.
//! - [`response`]: the response builder.
//! - [`uri`]: decoding paths and query strings.
//! - [`websocket`]: WebSocket's handshake key and the decoder of client frames.
//! - [`conn`]: the HTTP connection machine, generic over a door's [`conn::Routes`].
//! - [`bus`]: the HTTP bus door (with [`files`] for static files).
//! - [`proxy`]: the msglite HTTP proxy door (requests as queue messages).
//! - [`switch`]: the message-switch HTTP API door.
//! - [`metrics`]: `/metrics` and `/healthz` (on the bus door), and the
//!   metrics door of `--metrics-listen`.
//! - [`hooks`]: the webhook door (its API and dashboard) and the door of its
//!   outbound connections, which reads answers with [`client`].
//!
//! Nothing here imports the IO shell or another door: a door meets the shell
//! only through [`crate::door`].

pub mod bus;
pub mod chunked;
pub mod client;
pub mod codec;
pub mod conn;
pub mod dashboard;
pub mod files;
pub mod hooks;
pub mod metrics;
pub mod proxy;
pub mod response;
pub mod switch;
pub mod uri;
pub mod websocket;
