//! Metrics and health: `GET /metrics` (the Prometheus text exposition
//! format, version 0.0.4) and `GET /healthz`, served by the bus door and by
//! the metrics door of `--metrics-listen`.
//!
//! Owns: the names, help texts and types of every metric, the exposition
//! writer, the health answer, and the metrics door (its routes and opener).
//! Must not touch: the counters themselves (the shell's [`Stats`], the
//! broker's), sockets, other doors. Everything here runs at scrape time, so
//! the loop pays nothing for it between scrapes.

use std::convert::Infallible;
use std::fmt::{Display, Write};
use std::rc::Rc;

use super::codec::{Method, Request};
use super::conn::{Caller, HttpConn, Reply, Routes, Settings};
use super::response::Response;
use crate::broker::{Broker, Millis};
use crate::config::Config;
use crate::door::{CloseReason, Cx, Opener, Stats, TURN_BUCKETS_US};

/// The metrics path.
pub const METRICS_PATH: &str = "/metrics";
/// The health path.
pub const HEALTH_PATH: &str = "/healthz";
/// The content type of exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The server's version, as the stats page and `switchboard_build_info` give it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Answers `/metrics` and `/healthz` (GET or HEAD); `None` for any other
/// request, which the calling door routes itself.
pub fn route(req: &Request, cx: &Cx<'_>) -> Option<Response> {
    if !matches!(req.method, Method::Get | Method::Head) {
        return None;
    }
    match req.path() {
        METRICS_PATH => Some(
            Response::new(200)
                .header("Cache-Control", "no-cache")
                .body(CONTENT_TYPE, exposition(cx.broker, cx.stats, cx.now)),
        ),
        HEALTH_PATH => Some(health(cx.broker)),
        _ => None,
    }
}

/// `200` while the loop turns and every configured outbound link is up,
/// `503` otherwise. A loop that does not turn answers nothing, so a probe's
/// own timeout is the failure for that case. The one permanent outbound
/// link is the cluster's (`--cluster`): while it is down the answer is
/// `503`, or `200` with `--cluster-optional` (the node serves its own
/// subscribers, as it was asked to); the body says which. Webhook links
/// are opened on demand and are not part of health.
fn health(broker: &Broker) -> Response {
    let (status, text) = match broker.cluster.settings() {
        Some(_) if broker.cluster.is_up() => (200, "ok\n"),
        Some(s) if s.optional => (200, "ok; cluster link down: local delivery only\n"),
        Some(_) => (503, "cluster link down\n"),
        None => (200, "ok\n"),
    };
    Response::new(status)
        .header("Cache-Control", "no-cache")
        .body("text/plain; charset=utf-8", text)
}

/// Writes one exposition: each family's `# HELP` and `# TYPE`, then its
/// samples.
struct Expo {
    out: String,
}

impl Expo {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"");
                escape_label(&mut self.out, val);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one sample and no labels.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per door, labelled `door`.
    fn per_door(
        &mut self,
        stats: &Stats,
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(usize) -> u64,
    ) {
        self.family(name, kind, help);
        for (i, door) in stats.door_names.iter().enumerate() {
            self.sample(name, &[("door", door)], value(i));
        }
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Microseconds as seconds.
fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Every metric, from the loop's counters and the broker's, at `now`.
pub fn exposition(broker: &Broker, stats: &Stats, now: Millis) -> String {
    let mut e = Expo {
        out: String::with_capacity(8 * 1024),
    };
    let b = broker.stats();
    let door = |i: usize| stats.doors.get(i);

    e.family(
        "switchboard_build_info",
        "gauge",
        "The server's version, as a label; always 1.",
    );
    e.sample("switchboard_build_info", &[("version", VERSION)], 1);
    e.one(
        "switchboard_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        now as f64 / 1e3,
    );

    // Connections.
    e.per_door(
        stats,
        "switchboard_connections_open",
        "gauge",
        "Open connections, by door (dial doors: connections the server opened).",
        |i| stats.open.get(i).copied().unwrap_or(0),
    );
    e.per_door(
        stats,
        "switchboard_connections_accepted_total",
        "counter",
        "Connections accepted, by door (dial doors: connections opened).",
        |i| door(i).map_or(0, |d| d.accepted),
    );
    e.family(
        "switchboard_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
    );
    for r in CloseReason::ALL {
        let n = stats.closed_by.get(*r as usize).copied().unwrap_or(0);
        e.sample(
            "switchboard_connections_closed_total",
            &[("reason", &r.key())],
            n,
        );
    }
    e.one(
        "switchboard_accept_errors_total",
        "counter",
        "Failed accepts (running out of file descriptors among them).",
        stats.accept_errors,
    );

    // Traffic by door.
    e.per_door(
        stats,
        "switchboard_messages_in_total",
        "counter",
        "Messages published to channels or sent to queues, by the door they came in on.",
        |i| door(i).map_or(0, |d| d.messages_in),
    );
    e.per_door(
        stats,
        "switchboard_messages_delivered_total",
        "counter",
        "Channel and queue messages handed to connections, by door.",
        |i| door(i).map_or(0, |d| d.delivered.get()),
    );
    e.per_door(
        stats,
        "switchboard_bytes_in_total",
        "counter",
        "Bytes read from connections, by door.",
        |i| door(i).map_or(0, |d| d.bytes_in),
    );
    e.per_door(
        stats,
        "switchboard_bytes_out_total",
        "counter",
        "Bytes written to connections, by door.",
        |i| door(i).map_or(0, |d| d.bytes_out),
    );
    e.one(
        "switchboard_dropped_messages_total",
        "counter",
        "Channel messages dropped for slow subscribers (--slow-subscriber drop).",
        stats.dropped.get(),
    );
    e.one(
        "switchboard_oversized_deliveries_total",
        "counter",
        "Deliveries left out because the message's frame in the subscriber's framing would pass the frame limit.",
        broker.channels.oversized(),
    );
    e.one(
        "switchboard_slow_subscriber_closes_total",
        "counter",
        "Slow subscribers disconnected (--slow-subscriber disconnect).",
        stats.slow_disconnects.get(),
    );

    // Channels.
    e.one(
        "switchboard_channels",
        "gauge",
        "Channels with at least one subscriber.",
        broker.channels.channel_count(),
    );
    e.one(
        "switchboard_subscribers",
        "gauge",
        "Channel subscriptions, over all channels.",
        broker.channels.subscription_count(),
    );
    e.one(
        "switchboard_published_total",
        "counter",
        "Messages published to channels.",
        b.published,
    );
    e.one(
        "switchboard_fanned_out_total",
        "counter",
        "Channel deliveries (one per message per subscriber).",
        b.fanned_out,
    );

    // Queues.
    e.one(
        "switchboard_queue_depth",
        "gauge",
        "Messages waiting in queues for a receiver.",
        broker.queues.queued(),
    );
    e.one(
        "switchboard_queue_bytes",
        "gauge",
        "Bytes queued messages count against the queue limits.",
        broker.queues.queued_bytes(),
    );
    e.one(
        "switchboard_queue_oldest_message_age_seconds",
        "gauge",
        "How long the oldest queued message has waited (0 when none is queued).",
        broker.queues.oldest_age_ms(now).unwrap_or(0) as f64 / 1e3,
    );
    e.one(
        "switchboard_queue_receivers_waiting",
        "gauge",
        "Receivers waiting on queues.",
        broker.queues.waiting(),
    );
    e.one(
        "switchboard_queue_sent_total",
        "counter",
        "Messages sent to queues.",
        b.queued_in,
    );
    e.one(
        "switchboard_queue_delivered_total",
        "counter",
        "Queue messages handed to a receiver.",
        b.queued_out,
    );
    e.one(
        "switchboard_queue_expired_total",
        "counter",
        "Queue messages that timed out undelivered.",
        b.expired,
    );
    e.one(
        "switchboard_queue_refused_full_total",
        "counter",
        "Sends refused because a queue was full.",
        broker.queues.refused_full(),
    );

    // message-switch.
    let s = &broker.switch;
    e.one(
        "switchboard_switch_queues",
        "gauge",
        "message-switch queues.",
        s.queue_count(),
    );
    e.one(
        "switchboard_switch_stored_messages",
        "gauge",
        "Messages stored in message-switch queues.",
        s.stored(),
    );
    e.one(
        "switchboard_switch_stored_bytes",
        "gauge",
        "Bytes stored in message-switch queues.",
        s.stored_bytes(),
    );
    e.one(
        "switchboard_switch_refused_full_total",
        "counter",
        "message-switch sends refused because the queues were full.",
        s.refused_full(),
    );
    e.one(
        "switchboard_switch_sessions",
        "gauge",
        "message-switch sessions.",
        s.session_count(),
    );
    e.one(
        "switchboard_switch_parked_transfers",
        "gauge",
        "message-switch transfers waiting for a message.",
        s.parked_transfers(),
    );
    e.one(
        "switchboard_switch_parked_traces",
        "gauge",
        "message-switch trace polls waiting for an event.",
        s.parked_traces(),
    );

    // Webhooks.
    let h = &broker.hooks;
    let totals = h.totals();
    e.one(
        "switchboard_hooks_senders",
        "gauge",
        "Registered webhook senders.",
        h.writers(),
    );
    e.one(
        "switchboard_hooks_receivers",
        "gauge",
        "Registered webhook receivers.",
        h.readers(),
    );
    e.one(
        "switchboard_hooks_waiting_messages",
        "gauge",
        "Webhook messages waiting for a receiver to exist.",
        h.waiting(),
    );
    e.one(
        "switchboard_hooks_in_flight",
        "gauge",
        "Webhook requests in flight.",
        h.in_flight(),
    );
    e.one(
        "switchboard_hooks_held_bytes",
        "gauge",
        "Bytes of webhook message bodies held.",
        h.held_bytes(),
    );
    e.one(
        "switchboard_hooks_taken_total",
        "counter",
        "Messages the webhook engine took (from /send/ or from channels).",
        h.sent(),
    );
    e.family(
        "switchboard_hooks_deliveries_total",
        "counter",
        "Webhook deliveries by outcome (completed: a 2xx; failed: given up after the last retry; dropped: backlog full or receiver gone).",
    );
    for (outcome, n) in [
        ("completed", totals.completed),
        ("failed", totals.failed),
        ("dropped", totals.dropped),
    ] {
        e.sample(
            "switchboard_hooks_deliveries_total",
            &[("outcome", outcome)],
            n,
        );
    }
    e.one(
        "switchboard_hooks_retries_total",
        "counter",
        "Webhook attempts retried.",
        totals.retried,
    );

    // The loop.
    let name = "switchboard_loop_turn_duration_seconds";
    e.family(
        name,
        "histogram",
        "How long loop turns took (the work between two polls).",
    );
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (le, n) in TURN_BUCKETS_US.iter().zip(&stats.turns.counts) {
        cumulative += n;
        e.sample(&bucket, &[("le", &seconds(*le).to_string())], cumulative);
    }
    e.sample(&bucket, &[("le", "+Inf")], stats.turns.count);
    e.sample(&format!("{name}_sum"), &[], seconds(stats.turns.sum_us));
    e.sample(&format!("{name}_count"), &[], stats.turns.count);
    e.one(
        "switchboard_loop_turn_max_seconds",
        "gauge",
        "The longest loop turn since start.",
        seconds(stats.turn_max_us),
    );
    e.one(
        "switchboard_loop_turn_max_recent_seconds",
        "gauge",
        "The longest loop turn of the last 10 seconds.",
        seconds(stats.turn_max_recent_us),
    );
    // The cluster link (only with --cluster).
    if broker.cluster.is_on() {
        let c = broker.cluster.stats();
        e.one(
            "switchboard_cluster_up",
            "gauge",
            "1 while the three links to the cluster's Redis are up.",
            u8::from(c.up),
        );
        e.one(
            "switchboard_cluster_queue_up",
            "gauge",
            "1 while the queue link to the cluster's Redis is up.",
            u8::from(c.queue_up),
        );
        e.one(
            "switchboard_cluster_queue_sent_total",
            "counter",
            "Line queue messages sent into Redis for receivers on any node.",
            c.queue_sent,
        );
        e.one(
            "switchboard_cluster_queue_read_total",
            "counter",
            "Line queue messages taken from Redis for receivers here.",
            c.queue_read,
        );
        e.one(
            "switchboard_cluster_queue_expired_total",
            "counter",
            "Line queue messages found expired in Redis and dropped there.",
            c.queue_expired,
        );
        e.one(
            "switchboard_cluster_queue_local_total",
            "counter",
            "Line queue messages kept on this node: the queue link was down or Redis behind.",
            c.queue_local,
        );
        e.one(
            "switchboard_cluster_sharded",
            "gauge",
            "1 while both links use Redis' sharded pub/sub (--cluster-sharded).",
            u8::from(c.sharded),
        );
        e.one(
            "switchboard_cluster_sent_total",
            "counter",
            "Channel messages published to Redis for the other nodes.",
            c.sent,
        );
        e.one(
            "switchboard_cluster_received_total",
            "counter",
            "Channel messages from other nodes delivered here.",
            c.received,
        );
        e.one(
            "switchboard_cluster_copies_total",
            "counter",
            "Further copies of one message from Redis (one per matching subscription), dropped.",
            c.copies,
        );
        e.one(
            "switchboard_cluster_dropped_total",
            "counter",
            "Local publishes not sent to the other nodes (link down or Redis behind).",
            c.dropped,
        );
        e.one(
            "switchboard_cluster_link_downs_total",
            "counter",
            "Times a link to Redis was lost after being up.",
            c.link_downs,
        );
        e.one(
            "switchboard_cluster_errors_total",
            "counter",
            "Error answers and unreadable messages from Redis.",
            c.errors,
        );
    }
    e.out
}

/// The metrics door's realm (it asks for no credentials).
const REALM: &str = "metrics";

/// The metrics door of `--metrics-listen`: `/metrics`, `/healthz` and the
/// dashboard (without names, see `dashboard.rs`), and a
/// `404` for anything else. It asks for no credentials, whatever `--secret`
/// says: bind it where only the scraper can reach it.
pub fn opener(config: &Config) -> Opener {
    let settings = Rc::new(Settings {
        checks_credentials: false,
        ..Settings::from_config(config, REALM)
    });
    // No credentials here, so no channel or queue names either.
    let dashboard = Rc::new(super::dashboard::Snapshots::new(false));
    Box::new(move || {
        let routes = MetricsRoutes {
            dashboard: Rc::clone(&dashboard),
        };
        Box::new(HttpConn::new(Rc::clone(&settings), routes))
    })
}

/// The routes of the metrics door.
pub struct MetricsRoutes {
    /// The dashboard's latest snapshot, shared by its watchers.
    dashboard: Rc<super::dashboard::Snapshots>,
}

impl Routes for MetricsRoutes {
    type Parked = Infallible;

    fn handle(&mut self, req: Request, _caller: Caller, cx: &mut Cx<'_>) -> Reply<Infallible> {
        if let Some(response) = route(&req, cx) {
            return Reply::Respond(response);
        }
        if let Some(reply) = super::dashboard::route(&req, cx, &self.dashboard) {
            return reply;
        }
        Reply::Respond(Response::text(
            404,
            "this address serves /metrics, /healthz and the dashboard /switchboard/ only",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_and_counters_end_in_total() {
        let stats = Stats::for_doors(vec!["line", "bus"]);
        let text = exposition(&Broker::new(), &stats, 1500);
        let mut families = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families += 1;
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(name.starts_with("switchboard_"), "{name}");
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            }
        }
        assert!(families > 30);
        assert!(text.contains("switchboard_uptime_seconds 1.5\n"));
        assert!(text.contains("switchboard_connections_open{door=\"bus\"} 0\n"));
        assert!(
            text.contains("switchboard_connections_closed_total{reason=\"slow_subscriber\"} 0\n")
        );
    }

    #[test]
    fn the_histogram_is_cumulative() {
        let mut stats = Stats::for_doors(vec!["line"]);
        for us in [5, 10, 11, 700, 2_000_000] {
            stats.turns.record(us);
        }
        let text = exposition(&Broker::new(), &stats, 0);
        let bucket = |le: &str| {
            let prefix = format!("switchboard_loop_turn_duration_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no bucket {le}"))
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(bucket("0.00001"), 2);
        assert_eq!(bucket("0.000025"), 3);
        assert_eq!(bucket("0.001"), 4);
        assert_eq!(bucket("1"), 4);
        assert_eq!(bucket("+Inf"), 5);
        assert!(text.contains("switchboard_loop_turn_duration_seconds_count 5\n"));
        assert!(text.contains("switchboard_loop_turn_duration_seconds_sum 2.000726\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, "a\\\"b\\\\c\\nd");
    }
}
