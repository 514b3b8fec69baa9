//! The HTTP bus door (placeholder until the bus lands).

use bytes::BytesMut;

use crate::broker::{Broker, ConnId, Millis, Outbox};
use crate::config::{Config, Limits};
use crate::line::session::Next;

/// Settings shared by every HTTP connection.
pub struct HttpContext {}

impl HttpContext {
    pub fn new(_config: &Config) -> HttpContext {
        HttpContext {}
    }
}

pub struct HttpSession {}

impl HttpSession {
    pub fn new(_limits: &Limits) -> HttpSession {
        HttpSession {}
    }
    pub fn is_paused(&self) -> bool {
        false
    }
    pub fn on_input(
        &mut self,
        _me: ConnId,
        _now: Millis,
        _input: &mut BytesMut,
        _broker: &mut Broker,
        _out: &mut impl Outbox,
        _ctx: &HttpContext,
    ) -> Next {
        Next::Close
    }
    pub fn on_close(&mut self, _me: ConnId, _broker: &mut Broker, _out: &mut impl Outbox) {}
}
