//! Channels across nodes through Redis (see docs/cluster.md).

pub mod resp;
