//! The live dashboard: `GET /switchboard/`, one HTML page built into the
//! binary (no build step, nothing fetched from elsewhere), and
//! `GET /switchboard/events`, the Server-Sent Events stream it reads: a JSON
//! snapshot of the server right away and then once a second.
//!
//! Owns: the page, the snapshot (connections and counters by door, message
//! counters, the busiest channels, the deepest queues, drops, version,
//! uptime, the cluster link) and the stream a watching connection becomes
//! ([`Watch`]). The bus door and the metrics door route here. Must not
//! touch: how requests are decoded or authenticated (`conn.rs`: every
//! request here passes the door's credentials check first), sockets, the
//! counters themselves.
//!
//! The snapshot is made by a timer of each watching connection, never per
//! message: nothing runs while nobody watches. Watchers of one door share
//! one snapshot per tick, so many open pages scan the channels once. The
//! page computes the rates from the counters' differences between ticks.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::codec::{Method, Request};
use super::conn::Reply;
use super::response::Response;
use crate::broker::Millis;
use crate::door::{Answer, Cx, Door, Next};

/// The page.
pub const PAGE_PATH: &str = "/switchboard/";
/// The event stream the page reads.
pub const EVENTS_PATH: &str = "/switchboard/events";
const PAGE: &str = include_str!("dashboard.html");
/// How often a watcher gets a snapshot.
pub const TICK_MS: Millis = 1_000;
/// A snapshot younger than this is sent again rather than made again.
const REUSE_MS: Millis = TICK_MS / 2;
/// Channels and queues listed, at most.
pub const TOP: usize = 10;
/// Bytes waiting to be written to a watcher past which it misses ticks
/// (a page that does not read costs at most this).
const MAX_UNSENT: usize = 64 * 1024;

/// The latest snapshot of a door, shared by its watchers.
pub struct Snapshots {
    last: RefCell<Option<(Millis, Bytes)>>,
    /// Whether the busiest channels and queues are shown by name (not on
    /// the metrics address, which asks for no credentials and shows no
    /// names: there they are listed by rank only).
    names: bool,
}

impl Snapshots {
    /// Snapshots with channel and queue names (`names`), or without.
    pub fn new(names: bool) -> Snapshots {
        Snapshots {
            last: RefCell::new(None),
            names,
        }
    }

    /// The event of the snapshot at `cx.now`: the one made less than
    /// [`REUSE_MS`] ago, or a new one.
    fn event(&self, cx: &Cx<'_>) -> Bytes {
        if let Some((at, event)) = &*self.last.borrow() {
            if cx.now.saturating_sub(*at) < REUSE_MS && *at <= cx.now {
                return event.clone();
            }
        }
        let mut event = BytesMut::from(&b"data: "[..]);
        event.extend_from_slice(snapshot(cx, self.names).to_string().as_bytes());
        event.extend_from_slice(b"\n\n");
        let event = event.freeze();
        *self.last.borrow_mut() = Some((cx.now, event.clone()));
        event
    }
}

/// Answers the dashboard's paths (`None` for any other path).
pub fn route<P>(req: &Request, cx: &mut Cx<'_>, snapshots: &Rc<Snapshots>) -> Option<Reply<P>> {
    let path = req.path();
    if !path.starts_with("/switchboard") {
        return None;
    }
    if !matches!(req.method, Method::Get | Method::Head) {
        return Some(Reply::Respond(Response::text(
            405,
            "the dashboard takes GET",
        )));
    }
    Some(match path {
        "/switchboard" => Reply::Respond(
            Response::new(301)
                .header("Location", PAGE_PATH)
                .body("text/plain; charset=utf-8", "see /switchboard/\n"),
        ),
        PAGE_PATH => Reply::Respond(
            Response::new(200)
                .header("Cache-Control", "no-cache")
                .header(
                    "Content-Security-Policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self' data:",
                )
                .body("text/html; charset=utf-8", PAGE),
        ),
        EVENTS_PATH => {
            let mut opening = BytesMut::from(&b"retry: 2000\n\n"[..]);
            opening.extend_from_slice(&snapshots.event(cx));
            let head = Response::new(200)
                .header("Content-Type", "text/event-stream")
                .header("Cache-Control", "no-cache")
                .stream(opening.freeze());
            if req.method == Method::Head {
                return Some(Reply::Respond(head));
            }
            cx.wake_at(cx.now.saturating_add(TICK_MS));
            Reply::Stream(
                head,
                Box::new(Watch {
                    snapshots: Rc::clone(snapshots),
                }),
            )
        }
        _ => Reply::Respond(Response::text(
            404,
            "the dashboard is /switchboard/ and its events /switchboard/events",
        )),
    })
}

/// A connection watching the dashboard: a snapshot each tick; its input is
/// read and discarded.
pub struct Watch {
    snapshots: Rc<Snapshots>,
}

impl Door for Watch {
    fn on_input(&mut self, _cx: &mut Cx<'_>, input: &mut BytesMut) -> Next {
        input.clear();
        Next::Read
    }

    fn on_answer(&mut self, _answer: Answer<'_>, _send: &mut dyn FnMut(Bytes)) -> bool {
        false
    }

    fn is_paused(&self) -> bool {
        false
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Next {
        if cx.unsent() < MAX_UNSENT {
            let event = self.snapshots.event(cx);
            cx.send(event);
        }
        cx.wake_at(cx.now.saturating_add(TICK_MS));
        Next::Read
    }

    fn on_close(&mut self, _cx: &mut Cx<'_>) {}
}

/// The server at `cx.now`, as the page shows it; channels and queues
/// without their names unless `names` (`null` instead).
fn snapshot(cx: &Cx<'_>, names: bool) -> Value {
    let (broker, stats) = (&*cx.broker, cx.stats);
    let name = |n: &[u8]| -> Value {
        if names {
            Value::from(String::from_utf8_lossy(n))
        } else {
            Value::Null
        }
    };
    let b = broker.stats();
    let doors: Vec<Value> = stats
        .door_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let d = stats.doors.get(i);
            json!({
                "name": name,
                "open": stats.open.get(i).copied().unwrap_or(0),
                "accepted": d.map_or(0, |d| d.accepted),
                "messages_in": d.map_or(0, |d| d.messages_in),
                "delivered": d.map_or(0, |d| d.delivered.get()),
                "bytes_in": d.map_or(0, |d| d.bytes_in),
                "bytes_out": d.map_or(0, |d| d.bytes_out),
            })
        })
        .collect();
    let channels: Vec<Value> = broker
        .channels
        .top_by_subscribers(TOP)
        .into_iter()
        .map(|(channel, n)| json!({ "name": name(&channel), "subscribers": n }))
        .collect();
    let queues: Vec<Value> = broker
        .queues
        .top_by_depth(TOP, cx.now)
        .into_iter()
        .map(
            |(queue, depth, age)| json!({ "name": name(&queue), "depth": depth, "oldest_ms": age }),
        )
        .collect();
    json!({
        "version": super::metrics::VERSION,
        "t_ms": cx.now,
        "uptime_s": cx.now / 1000,
        "connections": stats.open_total(),
        "doors": doors,
        "messages_in": b.queued_in + b.published,
        "messages_out": b.queued_out + b.fanned_out,
        "bytes_in": stats.bytes_in,
        "bytes_out": stats.bytes_out,
        "channels": broker.channels.channel_count(),
        "subscribers": broker.channels.subscription_count(),
        "all_channel_subscribers": broker.channels.root_subscribers(),
        "top_channels": channels,
        "queues": {
            "depth": broker.queues.queued(),
            "bytes": broker.queues.queued_bytes(),
            "oldest_ms": broker.queues.oldest_age_ms(cx.now).unwrap_or(0),
            "waiting": broker.queues.waiting(),
            "full": broker.queues.refused_full(),
            "expired": b.expired,
            "top": queues,
        },
        "switch": {
            "queues": broker.switch.queue_count(),
            "stored": broker.switch.stored(),
        },
        "drops": stats.dropped.get(),
        "slow_disconnects": stats.slow_disconnects.get(),
        "oversized": broker.channels.oversized(),
        "loop_turn_max_10s_us": stats.turn_max_recent_us,
        // No cluster link exists yet; a peer link will report itself here.
        "cluster": Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, ConnId, RecordingOutbox, Subscription};
    use crate::door::Stats;

    #[test]
    fn a_snapshot_names_doors_channels_and_queues_and_is_reused_within_a_tick() {
        let me = ConnId { key: 1, gen: 1 };
        let mut broker = Broker::new();
        let mut out = RecordingOutbox::default();
        for k in 0..3 {
            let c = ConnId {
                key: 10 + k,
                gen: 1,
            };
            broker
                .channels
                .subscribe(
                    c,
                    Bytes::from_static(b"busy"),
                    Subscription::line(),
                    &mut out,
                )
                .unwrap();
        }
        broker
            .queues
            .send(
                0,
                Bytes::from_static(b"jobs"),
                None,
                60,
                Bytes::from_static(b"x"),
                &mut out,
            )
            .unwrap();
        let stats = Stats::for_doors(vec!["line", "bus"]);
        let snapshots = Snapshots::new(true);
        let first = {
            let cx = Cx::new(me, 2_500, &mut broker, &mut out, &stats);
            snapshots.event(&cx)
        };
        let text = std::str::from_utf8(&first).unwrap();
        let json: Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert!(text.ends_with("\n\n"));
        assert_eq!(json["top_channels"][0]["name"], "busy");
        assert_eq!(json["top_channels"][0]["subscribers"], 3);
        assert_eq!(json["queues"]["top"][0]["name"], "jobs");
        assert_eq!(json["queues"]["top"][0]["oldest_ms"], 2_500);
        assert_eq!(json["doors"][1]["name"], "bus");
        assert_eq!(json["uptime_s"], 2);
        assert!(json["cluster"].is_null());
        // Within half a tick the same bytes go out again; later, new ones.
        let again = {
            let cx = Cx::new(me, 2_900, &mut broker, &mut out, &stats);
            snapshots.event(&cx)
        };
        assert_eq!(again.as_ptr(), first.as_ptr());
        let later = {
            let cx = Cx::new(me, 3_600, &mut broker, &mut out, &stats);
            snapshots.event(&cx)
        };
        assert_ne!(later, first);
        // Without names: the counts, and no name.
        let cx = Cx::new(me, 3_600, &mut broker, &mut out, &stats);
        let json = snapshot(&cx, false);
        assert!(json["top_channels"][0]["name"].is_null());
        assert_eq!(json["top_channels"][0]["subscribers"], 3);
        assert!(json["queues"]["top"][0]["name"].is_null());
        assert!(!json.to_string().contains("busy") && !json.to_string().contains("jobs"));
    }
}
