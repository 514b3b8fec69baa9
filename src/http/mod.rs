//! HTTP/1.x: the request codec, response writing, and the HTTP bus door.

pub mod codec;
pub mod files;
pub mod response;
pub mod session;

/// The bus door (its routes live in [`session`] for now).
pub mod bus {
    pub use super::session::opener;
}
