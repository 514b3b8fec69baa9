//! Shared code of the load tools `flood-pub` and `flood-sub`.
//!
//! Codecs (`line`, `http`, `sse`, `ws`, and for other servers `nats`,
//! `resp` (Redis), `mqtt`) and bookkeeping (`stamp`, `hist`, `seqset`) never
//! touch a socket; `net` and `tls` own the sockets; `publisher` and
//! `subscriber` are the two event loops; `report` formats what they measured;
//! `ready` is the handshake that lets flood-pub wait for flood-sub.

pub mod cli;
pub mod clock;
pub mod codec;
pub mod hist;
pub mod http;
pub mod line;
pub mod mqtt;
pub mod nats;
pub mod net;
pub mod peers;
pub mod publisher;
pub mod ready;
pub mod report;
pub mod resp;
pub mod seqset;
pub mod sse;
pub mod stamp;
pub mod subscriber;
pub mod tls;
pub mod workers;
pub mod ws;
