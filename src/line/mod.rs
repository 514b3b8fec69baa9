//! The line protocol: [`codec`] turns bytes into commands, [`session`] turns
//! commands into broker calls for one connection.

pub mod codec;
pub mod session;
