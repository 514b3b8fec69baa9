//! The line protocol: [`codec`] turns bytes into commands, [`session`] turns
//! commands into broker calls for one connection, and [`wire`] holds the wire
//! forms the server, the client and the load tools share.

pub mod codec;
pub mod session;
pub mod wire;
