//! The cluster link's door: a dial door on each of the three connections
//! to Redis (see `crate::broker::cluster`, which owns what is said on them).
//!
//! Owns: decoding Redis' answers (RESP2) and handing each frame to the
//! engine. Must not touch: what the frames mean, sockets, other doors.

use bytes::{Bytes, BytesMut};

use crate::broker::cluster::{resp, LINK_DOOR};
use crate::config::Config;
use crate::door::{Answer, CloseReason, Cx, DialOpener, Door, Next};

/// The name of the dial door (a row of `crate::doors::DIALS`).
pub const DIAL_DOOR: &str = LINK_DOOR;

/// The links' door constructor: the tag of a dial names the link.
pub fn dial_opener(_config: &Config) -> DialOpener {
    Box::new(|tag| Box::new(RedisLink { tag }))
}

/// One connection to Redis.
pub struct RedisLink {
    tag: u64,
}

impl Door for RedisLink {
    fn on_connect(&mut self, cx: &mut Cx<'_>, result: Result<(), &std::io::Error>) -> Next {
        match result {
            Ok(()) => {
                if cx.broker.cluster.link_up(self.tag, cx.me, cx.now, cx.out) {
                    Next::Read
                } else {
                    Next::Close(CloseReason::Quit)
                }
            }
            Err(e) => {
                cx.broker
                    .cluster
                    .link_failed(self.tag, &e.to_string(), cx.now);
                Next::Close(CloseReason::ConnectFailed)
            }
        }
    }

    fn on_input(&mut self, cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        let limits = cx.broker.cluster.limits();
        loop {
            match resp::decode(input, &limits) {
                Ok(None) => return Next::Read,
                Ok(Some(frame)) => {
                    cx.progress();
                    if !cx.broker.cluster_frame(self.tag, frame, cx.now, cx.out) {
                        input.clear();
                        return Next::Close(CloseReason::Quit);
                    }
                }
                Err(e) => {
                    log::warn!("cluster: Redis sent what cannot be read ({e}); closing the link");
                    input.clear();
                    return Next::Close(CloseReason::ProtocolError);
                }
            }
        }
    }

    fn on_answer(&mut self, _answer: Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
        false
    }

    fn is_paused(&self) -> bool {
        false
    }

    fn on_close(&mut self, cx: &mut Cx<'_>) {
        cx.broker.cluster.link_closed(self.tag, cx.now);
        // The switch calls it carried are answered (503).
        cx.broker.cluster.switch_deliver(cx.out);
    }
}
