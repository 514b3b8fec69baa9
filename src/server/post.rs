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
        // A door still paused (a `<<` taking the rest of its turn's
        // messages) has nothing to resume yet.
        if !c.door.is_paused() {
            self.resume.push(key);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::DoorCounters;
    use crate::server::conn::Detached;
    use crate::server::transport::Transport;

    /// The loop's side of a [`Post`]: the connections and the lists.
    struct Shell {
        conns: Slab<Conn>,
        dirty: Vec<usize>,
        resume: Vec<usize>,
        to_close: Vec<(usize, CloseReason)>,
        limits: Limits,
        stats: Stats,
    }

    impl Shell {
        fn new(backlog: usize) -> Shell {
            Shell {
                conns: Slab::new(),
                dirty: Vec::new(),
                resume: Vec::new(),
                to_close: Vec::new(),
                limits: Limits {
                    backlog,
                    ..Limits::default()
                },
                stats: Stats {
                    doors: vec![DoorCounters::default()],
                    ..Stats::default()
                },
            }
        }

        /// A connection of door 0 whose socket has refused a write (so its
        /// limit is the backlog itself, not `WRITABLE_SLACK` times it).
        fn add(&mut self, gen: u32, life: Life) -> ConnId {
            let entry = self.conns.vacant_entry();
            let id = ConnId {
                key: entry.key() as u32,
                gen,
            };
            let conn = Conn::new(
                id,
                Transport::Unconnected,
                Box::new(Detached),
                0,
                life,
                false,
            );
            entry.insert(conn);
            id
        }

        fn deliver(&mut self, conn: ConnId, len: usize, messages: u32, now: Millis) -> bool {
            let mut post = Post {
                conns: &mut self.conns,
                dirty: &mut self.dirty,
                resume: &mut self.resume,
                to_close: &mut self.to_close,
                limits: &self.limits,
                stats: &self.stats,
                now,
            };
            post.deliver(conn, Bytes::from(vec![b'x'; len]), messages)
        }

        fn conn(&self, id: ConnId) -> &Conn {
            &self.conns[id.key as usize]
        }

        fn delivered(&self) -> u64 {
            self.stats.doors[0].delivered.get()
        }
    }

    #[test]
    fn a_frame_fits_up_to_the_last_byte_of_the_limit() {
        let mut s = Shell::new(1000);
        let a = s.add(1, Life::Open);
        assert!(s.deliver(a, 100, 1, 0));
        assert_eq!(s.conn(a).outq.cost(), 100 + FRAME_COST);
        // One byte more than fits, then exactly what fits.
        let fits = 1000 - (100 + FRAME_COST) - FRAME_COST;
        assert!(!s.deliver(a, fits + 1, 1, 0), "over the limit by one byte");
        assert_eq!(s.conn(a).outq.cost(), 100 + FRAME_COST);
        assert!(s.deliver(a, fits, 1, 0), "exactly at the limit");
        assert_eq!(s.conn(a).outq.cost(), 1000);
        assert_eq!(s.stats.dropped.get(), 1);
        assert_eq!(s.dirty, vec![a.key as usize], "dirtied once");
    }

    #[test]
    fn drops_are_counted_per_connection_and_logged_every_ten_seconds() {
        let mut s = Shell::new(1000);
        let a = s.add(1, Life::Open);
        assert!(s.deliver(a, 900, 1, 0));
        assert_eq!(s.conn(a).slow_logged_at, None);
        assert!(!s.deliver(a, 900, 2, 1_000));
        assert_eq!(s.conn(a).dropped, 2);
        assert_eq!(s.conn(a).slow_logged_at, Some(1_000));
        assert!(!s.deliver(a, 900, 3, 1_000 + SLOW_LOG_MS - 1));
        assert_eq!(s.conn(a).dropped, 5);
        assert_eq!(
            s.conn(a).slow_logged_at,
            Some(1_000),
            "logged again too soon"
        );
        assert!(!s.deliver(a, 900, 1, 1_000 + SLOW_LOG_MS));
        assert_eq!(s.conn(a).dropped, 6);
        assert_eq!(s.conn(a).slow_logged_at, Some(1_000 + SLOW_LOG_MS));
        assert_eq!(s.stats.dropped.get(), 6);
    }

    #[test]
    fn only_channel_messages_count_as_delivered() {
        let mut s = Shell::new(1000);
        let a = s.add(1, Life::Open);
        assert!(s.deliver(a, 10, 0, 0));
        assert_eq!(s.delivered(), 0, "a door's own frame is no message");
        assert!(s.deliver(a, 10, 3, 0));
        assert_eq!(s.delivered(), 3);
    }

    #[test]
    fn a_lingering_connection_takes_its_own_frames_but_no_messages() {
        let mut s = Shell::new(1000);
        let life = Life::Lingering {
            reason: CloseReason::Quit,
            deadline: 5_000,
        };
        let a = s.add(1, life);
        assert!(!s.deliver(a, 10, 1, 0), "a channel message");
        assert!(s.conn(a).outq.is_empty());
        assert_eq!(s.delivered(), 0);
        assert!(s.deliver(a, 10, 0, 0), "its door's own frame");
        assert_eq!(s.conn(a).outq.cost(), 10 + FRAME_COST);
    }

    #[test]
    fn a_stale_or_closing_connection_gets_nothing() {
        let mut s = Shell::new(1000);
        // The slot's new tenant is open; an id of its former tenant is stale.
        let now_there = s.add(2, Life::Open);
        let stale = ConnId {
            key: now_there.key,
            gen: 1,
        };
        assert!(!s.deliver(stale, 10, 1, 0));
        assert!(!s.deliver(stale, 10, 0, 0));
        assert!(s.conn(now_there).outq.is_empty());
        // The right id, but on the close list.
        let closing = s.add(3, Life::Closing);
        assert!(!s.deliver(closing, 10, 0, 0));
        assert!(s.conn(closing).outq.is_empty());
        assert!(s.dirty.is_empty());
    }
}
