//! The broker's [`Outbox`] over the connections: frames go onto output
//! queues under the backlog limit, answers go to the receiver's door.

use bytes::Bytes;
use slab::Slab;

use super::conn::{Conn, Life};
use super::outq::FRAME_COST;
use crate::broker::{Answer, ConnId, Millis, Outbox};
use crate::config::{Limits, SlowPolicy};
use crate::door::{CloseReason, Stats};

/// How many times the backlog limit a subscriber whose socket still takes
/// everything may queue (see [`Post::deliver`]).
pub const WRITABLE_SLACK: usize = 4;

/// Minimum interval between two slow-subscriber log lines for one connection.
const SLOW_LOG_MS: Millis = 10_000;

/// The outbox, lent for one door call or one broker call. It only queues:
/// connections it dirties, resumes or closes are put on the loop's lists.
pub struct Post<'a> {
    pub conns: &'a mut Slab<Conn>,
    pub dirty: &'a mut Vec<usize>,
    pub resume: &'a mut Vec<usize>,
    pub to_close: &'a mut Vec<(usize, CloseReason)>,
    pub limits: &'a Limits,
    pub stats: &'a Stats,
    pub now: Millis,
}

fn mark_dirty(c: &mut Conn, key: usize, dirty: &mut Vec<usize>) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(key);
    }
}

/// The connection `conn` names, if it is still the same one and not closing.
fn live(conns: &mut Slab<Conn>, conn: ConnId) -> Option<&mut Conn> {
    conns
        .get_mut(conn.key as usize)
        .filter(|c| c.id == conn && !c.is_closing())
}

impl Outbox for Post<'_> {
    fn deliver(&mut self, conn: ConnId, frame: Bytes, messages: u32) -> bool {
        let key = conn.key as usize;
        let (limits, now) = (self.limits, self.now);
        let Some(c) = live(self.conns, conn) else {
            return false;
        };
        // A connection on its way out gets its answers, not more channel
        // messages.
        if messages > 0 && !c.is_open() {
            return false;
        }
        // The queue's cost counts each frame's slot too (`FRAME_COST`), so
        // a flood of tiny frames is bounded as well as a few large ones.
        let queued = c.outq.cost();
        // A subscriber is judged by what its socket does, not by how long
        // the loop took to come back to it: while the kernel took all it
        // was offered (`writable`: no write has been refused since), what
        // is queued is this turn's work, and the queue may hold up to
        // `WRITABLE_SLACK` times the limit before the policy acts.
        let limit = if c.writable {
            limits.backlog.saturating_mul(WRITABLE_SLACK)
        } else {
            limits.backlog
        };
        if messages > 0 && queued > 0 && queued + frame.len() + FRAME_COST > limit {
            match limits.slow_policy {
                SlowPolicy::Drop => {
                    c.dropped += u64::from(messages);
                    self.stats
                        .dropped
                        .set(self.stats.dropped.get() + u64::from(messages));
                    if c.slow_logged_at.is_none_or(|t| now >= t + SLOW_LOG_MS) {
                        c.slow_logged_at = Some(now);
                        log::warn!(
                            "slow subscriber conn {key} ({}): {} bytes unsent, {} messages dropped so far",
                            c.transport.peer(),
                            queued,
                            c.dropped
                        );
                    }
                }
                SlowPolicy::Disconnect => {
                    c.life = Life::Closing;
                    self.stats
                        .slow_disconnects
                        .set(self.stats.slow_disconnects.get() + 1);
                    log::warn!(
                        "slow subscriber conn {key} ({}): {} bytes unsent, disconnecting",
                        c.transport.peer(),
                        queued
                    );
                    self.to_close.push((key, CloseReason::SlowSubscriber));
                }
            }
            return false;
        }
        c.outq.push(frame);
        mark_dirty(c, key, self.dirty);
        if messages > 0 {
            self.stats.count_delivered(c.door_ix, u64::from(messages));
        }
        true
    }

    fn is_backlogged(&self, conn: ConnId) -> bool {
        self.conns
            .get(conn.key as usize)
            .is_some_and(|c| c.id == conn && c.outq.cost() >= self.limits.backlog)
    }

    fn answer(&mut self, conn: ConnId, answer: Answer<'_>) -> bool {
        let key = conn.key as usize;
        let Some(c) = live(self.conns, conn) else {
            return false;
        };
        if !c.is_open() {
            return false;
        }
        let Conn { door, outq, .. } = c;
        if !door.on_answer(answer, &mut |frame| outq.push(frame)) {
            return false;
        }
        if matches!(answer, Answer::Message(_)) {
            self.stats.count_delivered(c.door_ix, 1);
        }
        mark_dirty(c, key, self.dirty);
        self.resume.push(key);
        true
    }
}
