//! HTTP/1.x: the request codec, response writing, and the HTTP bus door.

pub mod chunked;
pub mod codec;
pub mod files;
pub mod response;
pub mod session;
