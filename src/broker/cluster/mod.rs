//! Channels across nodes through Redis (see docs/cluster.md).
//!
//! With `--cluster`, every node keeps two outbound connections to one
//! Redis: the *subscriber link*, in pub/sub mode, subscribed to
//! `PREFIX + channel` for each channel that has local subscribers, to the
//! Redis glob of each pattern that has (see [`glob`]) and to `PREFIX*`
//! while the node has all-channel subscribers, and the *publisher link*,
//! which carries one pipelined `PUBLISH` per local publish (`SSUBSCRIBE`
//! and `SPUBLISH` for channels with `--cluster-sharded`, when Redis has
//! them). Each link starts with `AUTH` (or `PING`) and is up once Redis
//! has accepted it. Local subscribers get a message straight from the
//! channels, as without a cluster; each message in Redis carries the
//! publishing node's id and its number there: a node drops its own echo,
//! and the further copies Redis sends when several of its subscriptions
//! match one channel. Every subscription is sent again
//! whenever the subscriber link comes back. Free of IO like the rest of the
//! broker: the links are dials (`LINK_DOOR`), their bytes go through the
//! `Outbox`, and their door hands decoded frames back ([`Cluster::on_frame`]).

pub mod queue_link;
pub mod resp;
pub mod switch_link;
pub mod url;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use super::channels::{Channels, Interest};
use super::{ConnId, Dial, LinkRequest, Millis, Outbox};
use resp::Frame;

/// The dial door of the links (a row of `crate::doors::DIALS`).
pub const LINK_DOOR: &str = "cluster";
/// Bytes of `PUBLISH` commands written and not yet answered, by default;
/// past it (Redis slow) publishes are dropped and counted, as they are
/// while the publisher link is down.
pub const DEFAULT_MAX_PENDING: usize = 16 * 1024 * 1024;
/// The first retry after a link is lost; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Millis = 100;
pub const BACKOFF_MAX: Millis = 5_000;
/// How long a link's name lookup and connect may take.
const CONNECT_TIMEOUT: Millis = 5_000;
/// Channels named in one `SUBSCRIBE` when a link (re)subscribes.
const SUBSCRIBE_CHUNK: usize = 256;
/// The first bytes of a message's payload in Redis (the format's version).
const MAGIC: &[u8] = b"sb2 ";

/// Where the cluster's Redis is and how the node uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The database of the URL; pub/sub ignores databases (the prefix
    /// separates deployments), so it is kept for what else may use Redis.
    pub db: u32,
    /// Prepended to every channel name in Redis.
    pub prefix: Bytes,
    /// Start without Redis and join when it comes; `/healthz` stays 200.
    pub optional: bool,
    pub max_pending: usize,
    /// The largest message body (bigger bulks from Redis are an error).
    pub max_body: usize,
    /// Sent with `AUTH` first on each link.
    pub auth: Option<url::Auth>,
    /// Channels through sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`) when
    /// Redis has it (7.0); classic otherwise.
    pub sharded: bool,
}

/// The three links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Sub = 0,
    Pub = 1,
    /// Ordinary commands for line queues (see [`queue_link`]).
    Queue = 2,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Sub => "subscriber",
            Role::Pub => "publisher",
            Role::Queue => "queue",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not connected; dialed again at `retry_at`.
    Down {
        retry_at: Millis,
    },
    Connecting,
    /// Connected; the first command (`AUTH`, or `PING` without
    /// credentials), and with `--cluster-sharded` the probe, are sent and
    /// their answers awaited. Nothing else is written: a link is up once
    /// Redis has accepted it.
    Hello(ConnId),
    Up(ConnId),
}

struct Link {
    state: State,
    /// Bumped at each dial: a report about an earlier dial is ignored.
    gen: u64,
    backoff: Millis,
    /// When it went down (for the gap's length in the log), if ever up.
    down_since: Option<Millis>,
    /// Commands written this turn, not yet handed to the connection.
    out: BytesMut,
    /// While [`State::Hello`]: the answer to the first command came.
    greeted: bool,
    /// While [`State::Hello`]: the answer to the sharded pub/sub probe
    /// (`SUNSUBSCRIBE` without channels) is still to come.
    probing: bool,
    /// The connection uses sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`):
    /// asked for, and the probe answered.
    sharded: bool,
}

impl Link {
    fn new() -> Link {
        Link {
            state: State::Down { retry_at: 0 },
            gen: 0,
            backoff: BACKOFF_MIN,
            down_since: None,
            out: BytesMut::new(),
            greeted: false,
            probing: false,
            sharded: false,
        }
    }
}

/// The cluster link's counters (the stats page, `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// All three links are up.
    pub up: bool,
    /// Links up (of 3).
    pub links_up: u64,
    /// The queue link is up.
    pub queue_up: bool,
    /// Line queue messages sent into Redis.
    pub queue_sent: u64,
    /// Line queue messages taken from Redis for receivers here.
    pub queue_read: u64,
    /// Line queue messages found expired in Redis, dropped there.
    pub queue_expired: u64,
    /// Line queue messages kept on this node because the queue link was
    /// down or over its pending bytes.
    pub queue_local: u64,
    /// Taken from Redis for a receiver that had gone meanwhile: kept in
    /// this node's queue.
    pub queue_kept: u64,
    /// Of those, dropped because this node's queue was full.
    pub queue_local_full: u64,
    /// Old entries trimmed from a full stream (over [`queue_link::STREAM_MAXLEN`]).
    pub queue_trimmed: u64,
    /// Sends unanswered when the queue link went down (each reached Redis
    /// or was lost).
    pub queue_unconfirmed: u64,
    /// Messages published to Redis.
    pub sent: u64,
    /// Messages from other nodes delivered here.
    pub received: u64,
    /// This node's own messages coming back, dropped.
    pub echoes: u64,
    /// Further copies of one message, dropped: Redis sends one per
    /// subscription of the link that matches its channel (the channel,
    /// patterns, the all-channel pattern).
    pub copies: u64,
    /// Publishes not sent to Redis: the publisher link was down or over
    /// its pending limit (local subscribers still got them).
    pub dropped: u64,
    /// Times a link went down after being up.
    pub link_downs: u64,
    /// Error replies and malformed messages from Redis.
    pub errors: u64,
    /// Channels and globs this node wants to be subscribed to.
    pub subscriptions: u64,
    /// Both links use sharded pub/sub (`--cluster-sharded`, Redis 7).
    pub sharded: bool,
    /// Subscriptions Redis has confirmed on the subscriber link (the
    /// counts in the last classic and sharded subscribe or unsubscribe
    /// answers, added; 0 while it is down).
    pub confirmed: u64,
}

/// The engine; off (does nothing) without `--cluster`.
pub struct Cluster {
    settings: Option<Settings>,
    node: [u8; 16],
    links: [Link; 3],
    requests: Vec<LinkRequest>,
    /// Channels with local subscribers (names without the prefix).
    channels: HashSet<Bytes>,
    /// The Redis globs the node subscribes to, each with the number of
    /// local patterns it stands for (`a.*` and `a.>` are both `PREFIXa.*`;
    /// the all-channel subscribers, `PREFIX*`, count as one).
    globs: HashMap<Vec<u8>, u32>,
    /// The subscription counts of Redis' last answers: classic (channels
    /// and patterns), sharded (channels).
    confirmed: [u64; 2],
    /// The node said that its patterns miss sharded publishes.
    warned_patterns: bool,
    /// The node said that Redis has no sharded pub/sub for it.
    warned_classic: bool,
    /// The number of this node's last publish (in each payload).
    seq: u64,
    /// The origin and number of the last message delivered from Redis:
    /// Redis sends the copies of one publish (one per matching
    /// subscription of the link) one after the other, so a copy is a
    /// message with the same origin and number as the one before.
    last: Option<([u8; 16], u64)>,
    /// Sizes of the `PUBLISH` commands written and not yet answered.
    pending: VecDeque<usize>,
    pending_bytes: usize,
    stats: ClusterStats,
    limits: resp::Limits,
    /// The queue link's state.
    q: queue_link::QueueState,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new(None, [b'0'; 16])
    }
}

impl Cluster {
    /// The engine with `node` as this node's id (16 bytes, random per start).
    pub fn new(settings: Option<Settings>, node: [u8; 16]) -> Cluster {
        let limits = resp::Limits {
            max_bulk: settings
                .as_ref()
                .map_or(resp::Limits::default().max_bulk, |s| s.max_body + 64 * 1024),
            // A take's answer (three numbers and four strings an entry), a
            // switch transfer's (six elements a message), a switch list.
            max_array: (3 + 4 * queue_link::MAX_TAKE)
                .max(6 * switch_link::MAX_READ)
                .max(switch_link::MAX_LIST),
            max_depth: 2,
        };
        Cluster {
            settings,
            node,
            links: [Link::new(), Link::new(), Link::new()],
            requests: Vec::new(),
            channels: HashSet::new(),
            globs: HashMap::new(),
            confirmed: [0; 2],
            warned_patterns: false,
            warned_classic: false,
            seq: 0,
            last: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            stats: ClusterStats::default(),
            limits,
            q: queue_link::QueueState::default(),
        }
    }

    pub fn is_on(&self) -> bool {
        self.settings.is_some()
    }

    pub fn settings(&self) -> Option<&Settings> {
        self.settings.as_ref()
    }

    pub fn node_id(&self) -> &[u8] {
        &self.node
    }

    /// All three links are up (always false when off).
    pub fn is_up(&self) -> bool {
        self.is_on() && self.links.iter().all(|l| matches!(l.state, State::Up(_)))
    }

    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            up: self.is_up(),
            links_up: self
                .links
                .iter()
                .filter(|l| matches!(l.state, State::Up(_)))
                .count() as u64,
            queue_up: self.queues_up(),
            subscriptions: (self.channels.len() + self.globs.len()) as u64,
            sharded: self.is_up() && self.links[..2].iter().all(|l| l.sharded),
            // The queues' notification channels are not counted.
            confirmed: self.confirmed[0].saturating_sub(self.q.notify_confirmed)
                + self.confirmed[1],
            ..self.stats
        }
    }

    /// The decoder limits of the links.
    pub fn limits(&self) -> resp::Limits {
        self.limits
    }

    /// The dials asked for since the last call.
    pub fn take_links(&mut self) -> Vec<LinkRequest> {
        std::mem::take(&mut self.requests)
    }

    /// The earliest retry.
    pub fn next_deadline(&self) -> Option<Millis> {
        if !self.is_on() {
            return None;
        }
        self.links
            .iter()
            .filter_map(|l| match l.state {
                State::Down { retry_at } => Some(retry_at),
                _ => None,
            })
            .chain(self.q.sweep_at)
            .chain(self.switch_deadline())
            .min()
    }

    /// Dials every link whose retry is due.
    pub fn on_timers(&mut self, now: Millis) {
        let Some(s) = &self.settings else {
            return;
        };
        for (i, link) in self.links.iter_mut().enumerate() {
            if let State::Down { retry_at } = link.state {
                if retry_at <= now {
                    link.gen += 1;
                    link.state = State::Connecting;
                    self.requests.push(LinkRequest::Dial(Dial {
                        door: LINK_DOOR,
                        tag: link.gen << 2 | i as u64,
                        host: s.host.clone(),
                        port: s.port,
                        tls: s.tls,
                        timeout_ms: CONNECT_TIMEOUT,
                    }));
                }
            }
        }
    }

    /// The link a tag names, if the tag is its current dial.
    fn link_of(&mut self, tag: u64) -> Option<(Role, &mut Link)> {
        let role = match tag & 3 {
            0 => Role::Sub,
            1 => Role::Pub,
            2 => Role::Queue,
            _ => return None,
        };
        let link = self.links.get_mut(role as usize)?;
        (link.gen == tag >> 2).then_some((role, link))
    }

    /// A link's connect finished: the first command is written, and the
    /// link is up once Redis has answered it ([`Cluster::on_frame`]).
    /// False: the connection is not wanted (a stale dial), close it.
    pub fn link_up(
        &mut self,
        tag: u64,
        conn: ConnId,
        _now: Millis,
        out: &mut (impl Outbox + ?Sized),
    ) -> bool {
        let Some(s) = &self.settings else {
            return false;
        };
        let auth = s.auth.clone();
        let probe = s.sharded;
        let Some((role, link)) = self.link_of(tag) else {
            return false;
        };
        if link.state != State::Connecting {
            return false;
        }
        link.state = State::Hello(conn);
        link.greeted = false;
        link.probing = probe && role != Role::Queue;
        link.sharded = false;
        link.out.clear();
        if role == Role::Queue {
            self.queue_hello();
            self.flush(out);
            return true;
        }
        hello_command(&mut link.out, auth.as_ref());
        if probe {
            // Redis before 7.0 does not know it ("unknown command"); an
            // ACL user may not be allowed it ("NOPERM"): classic then.
            resp::command(&mut link.out, &[b"SUNSUBSCRIBE"]);
        }
        self.flush(out);
        true
    }

    /// The answers to a link's first commands: up, or refused (false:
    /// close the link; it is dialed again after its back-off).
    fn hello_answer(&mut self, role: Role, conn: ConnId, frame: &Frame, now: Millis) -> bool {
        let with_auth = self.settings.as_ref().is_some_and(|s| s.auth.is_some());
        let address = self.address();
        let Some(link) = self.links.get_mut(role as usize) else {
            return false;
        };
        if link.greeted {
            // The probe's answer.
            link.probing = false;
            link.sharded = !matches!(frame, Frame::Error(_));
            if let Frame::Error(e) = frame {
                if !self.warned_classic {
                    self.warned_classic = true;
                    log::warn!(
                        "cluster: Redis at {address} has no sharded pub/sub for this node ({}); the links use classic PUBLISH and SUBSCRIBE (every node must then, or cross-node messages are lost)",
                        String::from_utf8_lossy(e)
                    );
                }
            }
        } else if let Frame::Error(e) = frame {
            let e = String::from_utf8_lossy(e);
            if link.backoff == BACKOFF_MIN || link.backoff >= BACKOFF_MAX {
                let hint = if with_auth {
                    "check the user and password of --cluster"
                } else if e.starts_with("NOAUTH") {
                    "Redis wants a password: --cluster redis://:PASSWORD@HOST:PORT"
                } else {
                    "Redis does not take the link"
                };
                log::warn!(
                    "cluster: Redis at {address} refused the {} link: {e} ({hint}); retrying in {} ms",
                    role.name(),
                    link.backoff
                );
            }
            self.stats.errors += 1;
            return false;
        } else {
            link.greeted = true;
            if link.probing {
                return true;
            }
        }
        link.state = State::Up(conn);
        link.backoff = BACKOFF_MIN;
        let gap = link.down_since.take().map(|t| now.saturating_sub(t));
        log::info!(
            "cluster: {} link up{}",
            role.name(),
            gap.map_or(String::new(), |ms| format!(" again after {ms} ms"))
        );
        if role == Role::Sub {
            self.last = None;
            self.resubscribe();
            self.queue_resubscribe();
        } else {
            self.pending.clear();
            self.pending_bytes = 0;
        }
        if self.is_up() {
            self.joined_log();
        }
        true
    }

    fn joined_log(&self) {
        log::info!(
            "cluster: joined through Redis at {} (node {}; {} publishes not sent while the link was down, {} queue messages kept on this node, in all)",
            self.address(),
            String::from_utf8_lossy(&self.node),
            self.stats.dropped,
            self.stats.queue_local
        );
    }

    /// `HOST:PORT` of the Redis, for logs (never the credentials).
    fn address(&self) -> String {
        self.settings
            .as_ref()
            .map(|s| format!("{}:{}", s.host, s.port))
            .unwrap_or_default()
    }

    /// A link's dial failed (lookup, connect, timeout).
    pub fn link_failed(&mut self, tag: u64, why: &str, now: Millis) {
        let host = self.address();
        let Some((role, link)) = self.link_of(tag) else {
            return;
        };
        if link.state != State::Connecting {
            return;
        }
        if link.backoff == BACKOFF_MIN || link.backoff >= BACKOFF_MAX {
            log::warn!(
                "cluster: {} link to Redis at {host} failed: {why}; retrying in {} ms",
                role.name(),
                link.backoff
            );
        }
        Self::down(link, now);
    }

    fn down(link: &mut Link, now: Millis) {
        link.state = State::Down {
            retry_at: now.saturating_add(link.backoff),
        };
        link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
        link.out.clear();
    }

    /// A link's connection closed.
    pub fn link_closed(&mut self, tag: u64, now: Millis) {
        let Some((role, link)) = self.link_of(tag) else {
            return;
        };
        match link.state {
            State::Up(_) => {
                log::warn!(
                    "cluster: {} link to Redis lost; cross-node delivery stops until it is back (local delivery goes on)",
                    role.name()
                );
                link.down_since = Some(now);
                Self::down(link, now);
                self.stats.link_downs += 1;
                match role {
                    Role::Sub => {
                        self.last = None;
                        self.confirmed = [0; 2];
                        self.queue_resubscribe();
                    }
                    Role::Pub => {
                        self.pending.clear();
                        self.pending_bytes = 0;
                    }
                    Role::Queue => self.queue_down(),
                }
            }
            State::Connecting | State::Hello(_) => {
                Self::down(link, now);
                if role == Role::Queue {
                    self.queue_down();
                }
            }
            State::Down { .. } => {}
        }
    }

    /// Writes every subscription onto the subscriber link.
    fn resubscribe(&mut self) {
        let Some(s) = &self.settings else {
            return;
        };
        let [link, _, _] = &mut self.links;
        let cmd: &[u8] = if link.sharded {
            b"SSUBSCRIBE"
        } else {
            b"SUBSCRIBE"
        };
        let names: Vec<&Bytes> = self.channels.iter().collect();
        for chunk in names.chunks(SUBSCRIBE_CHUNK) {
            subscribe_command(&mut link.out, cmd, &s.prefix, chunk);
        }
        let globs: Vec<&[u8]> = self.globs.keys().map(Vec::as_slice).collect();
        for chunk in globs.chunks(SUBSCRIBE_CHUNK) {
            resp::command_with(&mut link.out, b"PSUBSCRIBE", chunk);
        }
    }

    /// Takes what the channels noted since the last seal (publications
    /// to send, channels that gained their first or lost their last local
    /// subscriber) and writes the commands.
    pub fn after_seal(&mut self, channels: &mut Channels, out: &mut (impl Outbox + ?Sized)) {
        if self.settings.is_none() {
            return;
        }
        let (published, interest) = channels.take_mirrored();
        for change in interest {
            self.interest(change);
        }
        for p in published {
            self.publish(&p.channel, &p.content_type, p.sender.as_deref(), &p.body);
        }
        self.flush(out);
    }

    fn interest(&mut self, change: Interest) {
        let Some(s) = &self.settings else {
            return;
        };
        let [sub, _, _] = &mut self.links;
        let up = matches!(sub.state, State::Up(_));
        let (subscribe, unsubscribe): (&[u8], &[u8]) = if sub.sharded {
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE")
        } else {
            (b"SUBSCRIBE", b"UNSUBSCRIBE")
        };
        let buf = &mut sub.out;
        if s.sharded
            && !self.warned_patterns
            && matches!(change, Interest::Pattern(_, true) | Interest::All(true))
        {
            self.warned_patterns = true;
            log::warn!(
                "cluster: --cluster-sharded: pattern and all-channel subscribers get the messages published on their own node only (SPUBLISH does not reach Redis patterns; docs/cluster.md)"
            );
        }
        match change {
            Interest::Channel(name, true) => {
                if up {
                    subscribe_command(buf, subscribe, &s.prefix, &[&name]);
                }
                self.channels.insert(name);
            }
            Interest::Channel(name, false) => {
                if up {
                    subscribe_command(buf, unsubscribe, &s.prefix, &[&name]);
                }
                self.channels.remove(&name);
            }
            Interest::Pattern(pattern, on) => {
                let g = glob(&s.prefix, &pattern);
                Self::count_glob(&mut self.globs, g, on, up.then_some(buf));
            }
            Interest::All(on) => {
                let g = glob(&s.prefix, b">");
                Self::count_glob(&mut self.globs, g, on, up.then_some(buf));
            }
        }
    }

    /// One more (`on`) or one less local pattern for `glob`; the first
    /// subscribes to it, the last unsubscribes, written to `buf` when the
    /// link is up.
    fn count_glob(
        globs: &mut HashMap<Vec<u8>, u32>,
        glob: Vec<u8>,
        on: bool,
        buf: Option<&mut BytesMut>,
    ) {
        let cmd: &[u8] = if on {
            let n = globs.entry(glob.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                return;
            }
            b"PSUBSCRIBE"
        } else {
            match globs.get_mut(&glob) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return;
                }
                Some(_) => {
                    globs.remove(&glob);
                }
                None => return,
            }
            b"PUNSUBSCRIBE"
        };
        if let Some(buf) = buf {
            resp::command_with(buf, cmd, &[&glob]);
        }
    }

    fn publish(&mut self, channel: &[u8], content_type: &[u8], sender: Option<&[u8]>, body: &[u8]) {
        let Some(s) = &self.settings else {
            return;
        };
        let [_, link, _] = &mut self.links;
        let mut header = BytesMut::with_capacity(64);
        header.put_slice(MAGIC);
        header.put_slice(&self.node);
        self.seq += 1;
        header.put_slice(format!(" {} {} ", self.seq, content_type.len()).as_bytes());
        match sender {
            Some(name) => header.put_slice(name.len().to_string().as_bytes()),
            None => header.put_u8(b'-'),
        }
        header.put_u8(b'\n');
        let payload =
            header.len() + content_type.len() + sender.map_or(0, <[u8]>::len) + body.len();
        let size = payload + s.prefix.len() + channel.len() + 64;
        let up = matches!(link.state, State::Up(_));
        if !up || self.pending_bytes + size > s.max_pending {
            self.stats.dropped += 1;
            // The first, then at each power of two: the log stays short.
            if self.stats.dropped.is_power_of_two() {
                log::warn!(
                    "cluster: a publish to {} was not sent to other nodes ({}); {} dropped so far",
                    String::from_utf8_lossy(channel),
                    if up {
                        "Redis is behind"
                    } else {
                        "the link to Redis is down"
                    },
                    self.stats.dropped
                );
            }
            return;
        }
        let cmd: &[u8] = if link.sharded {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        let buf = &mut link.out;
        let before = buf.len();
        resp::header(buf, b'*', 3);
        resp::header(buf, b'$', cmd.len());
        buf.put_slice(cmd);
        buf.put_slice(b"\r\n");
        resp::header(buf, b'$', s.prefix.len() + channel.len());
        buf.put_slice(&s.prefix);
        buf.put_slice(channel);
        buf.put_slice(b"\r\n");
        resp::header(buf, b'$', payload);
        buf.put_slice(&header);
        buf.put_slice(content_type);
        if let Some(name) = sender {
            buf.put_slice(name);
        }
        buf.put_slice(body);
        buf.put_slice(b"\r\n");
        let written = buf.len() - before;
        self.pending.push_back(written);
        self.pending_bytes += written;
        self.stats.sent += 1;
    }

    /// Hands each link's written commands to its connection.
    fn flush(&mut self, out: &mut (impl Outbox + ?Sized)) {
        for link in &mut self.links {
            if link.out.is_empty() {
                continue;
            }
            match link.state {
                State::Hello(conn) | State::Up(conn) => {
                    out.deliver(conn, link.out.split().freeze(), 0);
                }
                _ => link.out.clear(),
            }
        }
    }

    /// A frame from a link. False: the link misbehaves, close it.
    pub fn on_frame(
        &mut self,
        tag: u64,
        frame: Frame,
        now: Millis,
        channels: &mut Channels,
        out: &mut (impl Outbox + ?Sized),
    ) -> bool {
        let Some((role, link)) = self.link_of(tag) else {
            return false;
        };
        match link.state {
            State::Hello(_) | State::Up(_) if role == Role::Queue => {
                let ok = self.queue_answer(frame, now);
                self.switch_deliver(out);
                self.flush(out);
                return ok;
            }
            State::Hello(conn) => {
                let up = self.hello_answer(role, conn, &frame, now);
                self.flush(out);
                return up;
            }
            State::Up(_) => {}
            // Nothing is read before the connect, or after the close.
            State::Connecting | State::Down { .. } => return false,
        }
        if let Frame::Error(e) = &frame {
            self.stats.errors += 1;
            log::warn!(
                "cluster: Redis answered the {} link with an error: {}",
                role.name(),
                String::from_utf8_lossy(e)
            );
        }
        if role == Role::Pub {
            if let Some(n) = self.pending.pop_front() {
                self.pending_bytes -= n;
            }
            return true;
        }
        let Frame::Array(Some(items)) = frame else {
            return true;
        };
        let word = |i: usize| items.get(i).and_then(Frame::as_bytes);
        let Some(kind) = word(0) else {
            return true;
        };
        match &kind[..] {
            b"message" | b"smessage" => {
                if let (Some(ch), Some(payload)) = (word(1), word(2)) {
                    if !self.queue_notified(ch, None) {
                        if self.switch_notified(ch, None) {
                            // A read for the transfers waiting on it.
                            self.flush(out);
                        } else {
                            self.deliver(ch, payload, channels, out);
                        }
                    }
                }
            }
            b"subscribe" | b"unsubscribe" => {
                if let Some(ch) = word(1) {
                    let on = Some(kind[..] == b"subscribe"[..]);
                    if !self.queue_notified(ch, on) && self.switch_notified(ch, on) {
                        self.flush(out);
                    }
                }
            }
            b"pmessage" => {
                if let (Some(ch), Some(payload)) = (word(2), word(3)) {
                    self.deliver(ch, payload, channels, out);
                }
            }
            _ => {}
        }
        let counted = match &kind[..] {
            b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" => Some(0),
            b"ssubscribe" | b"sunsubscribe" => Some(1),
            _ => None,
        };
        if let (Some(i), Some(Frame::Integer(n))) = (counted, items.get(2)) {
            if let Some(c) = self.confirmed.get_mut(i) {
                *c = u64::try_from(*n).unwrap_or(0);
            }
        }
        true
    }

    fn deliver(
        &mut self,
        ch: &Bytes,
        payload: &Bytes,
        channels: &mut Channels,
        out: &mut (impl Outbox + ?Sized),
    ) {
        let Some(s) = &self.settings else {
            return;
        };
        let Some(channel) = ch.strip_prefix(&s.prefix[..]) else {
            return;
        };
        let Some(m) = parse_payload(payload) else {
            self.stats.errors += 1;
            log::warn!(
                "cluster: a message on {} is not from a switchboard node; dropped",
                String::from_utf8_lossy(ch)
            );
            return;
        };
        // A copy of the message before (the link's subscriptions that
        // match a channel each bring one, one after the other).
        if self
            .last
            .is_some_and(|(node, seq)| node[..] == *m.node && seq == m.seq)
        {
            self.stats.copies += 1;
            return;
        }
        let mut node = [0u8; 16];
        node.copy_from_slice(m.node);
        self.last = Some((node, m.seq));
        if m.node == &self.node[..] {
            self.stats.echoes += 1;
            return;
        }
        self.stats.received += 1;
        channels.publish_remote(channel, m.content_type, m.sender, m.body, out);
    }
}

/// A link's first command: `AUTH [USER] PASSWORD`, or `PING` (which a
/// Redis that wants a password refuses with `NOAUTH`).
fn hello_command(buf: &mut BytesMut, auth: Option<&url::Auth>) {
    match auth {
        Some(url::Auth {
            user: Some(user),
            password,
        }) => resp::command(buf, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
        Some(url::Auth {
            user: None,
            password,
        }) => resp::command(buf, &[b"AUTH", password.as_bytes()]),
        None => resp::command(buf, &[b"PING"]),
    }
}

fn subscribe_command(buf: &mut BytesMut, cmd: &[u8], prefix: &[u8], names: &[&Bytes]) {
    resp::header(buf, b'*', names.len() + 1);
    resp::header(buf, b'$', cmd.len());
    buf.put_slice(cmd);
    buf.put_slice(b"\r\n");
    for name in names {
        resp::header(buf, b'$', prefix.len() + name.len());
        buf.put_slice(prefix);
        buf.put_slice(name);
        buf.put_slice(b"\r\n");
    }
}

/// The Redis glob of a subscription pattern (`a.*.c`, `a.>`, or `>` for
/// every channel) under `prefix`: a wildcard token becomes `*`, every
/// other byte is literal (glob characters escaped). Redis' `*` also
/// matches dots, so the glob matches a superset of the pattern's
/// channels; the node's own pattern matching picks the subscribers.
pub fn glob(prefix: &[u8], pattern: &[u8]) -> Vec<u8> {
    fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
        for &b in bytes {
            if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
    }
    let mut out = Vec::with_capacity(prefix.len() + pattern.len() + 4);
    literal(&mut out, prefix);
    for (i, token) in pattern.split(|&b| b == b'.').enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        match token {
            b"*" | b">" => out.push(b'*'),
            _ => literal(&mut out, token),
        }
    }
    out
}

/// A message as another node published it.
#[derive(Debug, PartialEq, Eq)]
pub struct Remote<'a> {
    pub node: &'a [u8],
    /// The number of the publish on its node (1, 2, …).
    pub seq: u64,
    pub content_type: &'a [u8],
    pub sender: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// `sb2 NODE SEQ CTLEN SENDERLEN|-\n` + content type + sender + body.
pub fn parse_payload(p: &[u8]) -> Option<Remote<'_>> {
    let rest = p.strip_prefix(MAGIC)?;
    let nl = rest.iter().take(96).position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(rest.get(..nl)?).ok()?;
    let data = rest.get(nl + 1..)?;
    let mut fields = head.split(' ');
    let node = fields.next()?.as_bytes();
    let seq: u64 = fields.next()?.parse().ok()?;
    let ct_len: usize = fields.next()?.parse().ok()?;
    let sender_len: Option<usize> = match fields.next()? {
        "-" => None,
        n => Some(n.parse().ok()?),
    };
    if fields.next().is_some() || node.len() != 16 {
        return None;
    }
    let content_type = data.get(..ct_len)?;
    let after = data.get(ct_len..)?;
    let (sender, body) = match sender_len {
        Some(n) => (Some(after.get(..n)?), after.get(n..)?),
        None => (None, after),
    };
    Some(Remote {
        node,
        seq,
        content_type,
        sender,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{RecordingOutbox, Subscription};

    pub(super) const NODE: [u8; 16] = *b"aaaaaaaaaaaaaaaa";
    const OTHER: &[u8] = b"bbbbbbbbbbbbbbbb";

    pub(super) fn settings() -> Settings {
        Settings {
            host: "127.0.0.1".into(),
            port: 6379,
            tls: false,
            db: 0,
            prefix: Bytes::from_static(b"sb:"),
            optional: false,
            max_pending: 1024,
            max_body: 1024,
            auth: None,
            sharded: false,
        }
    }

    pub(super) fn conn(key: u32) -> ConnId {
        ConnId { key, gen: 0 }
    }

    pub(super) fn bulk(s: &[u8]) -> Frame {
        Frame::Bulk(Some(Bytes::copy_from_slice(s)))
    }

    /// Redis' confirmation of a `SUBSCRIBE` or `UNSUBSCRIBE` (`kind`) of
    /// `channel`, with the count of channels the link is then subscribed to.
    pub(super) fn confirm(kind: &str, channel: &str, n: i64) -> Frame {
        Frame::Array(Some(vec![
            bulk(kind.as_bytes()),
            bulk(channel.as_bytes()),
            Frame::Integer(n),
        ]))
    }

    fn msg(kind: &[u8], channel: &[u8], payload: &[u8]) -> Frame {
        let mut items = vec![bulk(kind)];
        if kind == b"pmessage" {
            items.push(bulk(b"sb:*"));
        }
        items.push(bulk(channel));
        items.push(bulk(payload));
        Frame::Array(Some(items))
    }

    fn payload(node: &[u8], seq: u64, body: &[u8]) -> Vec<u8> {
        let mut p = format!("sb2 {} {seq} 10 -\n", String::from_utf8_lossy(node)).into_bytes();
        p.extend_from_slice(b"text/plain");
        p.extend_from_slice(body);
        p
    }

    /// The engine with both links dialed and up (subscriber = conn 100,
    /// publisher = conn 101).
    pub(super) fn up(out: &mut RecordingOutbox) -> Cluster {
        let mut c = Cluster::new(Some(settings()), NODE);
        c.on_timers(0);
        let dials = c.take_links();
        assert_eq!(dials.len(), 3);
        let mut ch = Channels::default();
        for (tag, key) in [(1 << 2, 100), (1 << 2 | 1, 101)] {
            assert!(c.link_up(tag, conn(key), 0, out));
            assert!(!c.is_up());
            assert_eq!(sent_to(out, key), "*1\r\n$4\r\nPING\r\n");
            assert!(c.on_frame(tag, pong(), 0, &mut ch, out));
        }
        queue_link_up(&mut c, out);
        assert!(c.is_up());
        *out = RecordingOutbox::default();
        c
    }

    /// Channels mirrored to the cluster, with a line subscriber (conn 1) on
    /// `news`.
    fn news_subscriber(out: &mut RecordingOutbox) -> Channels {
        let mut ch = Channels::default();
        ch.mirror();
        ch.subscribe(
            conn(1),
            Bytes::from_static(b"news"),
            Subscription::line(),
            out,
        )
        .unwrap();
        ch
    }

    /// The queue link (conn 110) dialed and answered: PONG and the
    /// scripts' SHA1s.
    pub(super) fn queue_link_up(c: &mut Cluster, out: &mut RecordingOutbox) {
        let tag = 1 << 2 | 2;
        assert!(c.link_up(tag, conn(110), 0, out));
        let s = sent_to(out, 110);
        assert!(s.starts_with("*1\r\n$4\r\nPING\r\n"), "{s}");
        assert_eq!(s.matches("SCRIPT").count(), 9, "{s}");
        let mut ch = Channels::default();
        assert!(c.on_frame(tag, pong(), 0, &mut ch, out));
        for sha in [b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i'].map(|x| [x; 40]) {
            assert!(!c.queues_up());
            assert!(c.on_frame(tag, bulk(&sha), 0, &mut ch, out));
        }
        assert!(c.queues_up());
    }

    pub(super) fn pong() -> Frame {
        Frame::Simple(Bytes::from_static(b"PONG"))
    }

    pub(super) fn sent_to(out: &RecordingOutbox, key: u32) -> String {
        String::from_utf8_lossy(&out.bytes_for(conn(key))).into_owned()
    }

    #[test]
    fn credentials_go_first_and_a_refusal_closes_the_link() {
        let mut with = settings();
        with.auth = Some(url::Auth {
            user: Some("alice".into()),
            password: "pw".into(),
        });
        let mut c = Cluster::new(Some(with), NODE);
        let mut ch = Channels::default();
        ch.mirror();
        let mut out = RecordingOutbox::default();
        ch.subscribe(
            conn(1),
            Bytes::from_static(b"news"),
            Subscription::line(),
            &mut out,
        )
        .unwrap();
        c.after_seal(&mut ch, &mut out);
        c.on_timers(0);
        assert_eq!(c.take_links().len(), 3);
        assert!(c.link_up(1 << 2, conn(100), 0, &mut out));
        assert_eq!(
            sent_to(&out, 100),
            "*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$2\r\npw\r\n"
        );
        // Refused: the link closes and is dialed again after its back-off;
        // nothing else was written on it.
        let refusal = Frame::Error(Bytes::from_static(
            b"WRONGPASS invalid username-password pair",
        ));
        let mut out = RecordingOutbox::default();
        assert!(!c.on_frame(1 << 2, refusal, 0, &mut ch, &mut out));
        assert!(out.frames.is_empty());
        c.link_closed(1 << 2, 0);
        assert_eq!(c.stats().errors, 1);
        assert_eq!(c.stats().link_downs, 0);
        assert!(!c.is_up());
        // Accepted: the subscriptions follow.
        c.on_timers(BACKOFF_MIN);
        assert_eq!(c.take_links().len(), 1);
        assert!(c.link_up(2 << 2, conn(102), 0, &mut out));
        let ok = Frame::Simple(Bytes::from_static(b"OK"));
        let mut out = RecordingOutbox::default();
        assert!(c.on_frame(2 << 2, ok, 0, &mut ch, &mut out));
        assert!(sent_to(&out, 102).contains("SUBSCRIBE\r\n$7\r\nsb:news"));
        // Auth without a user is the one-argument form.
        let mut buf = BytesMut::new();
        let only = url::Auth {
            user: None,
            password: "pw".into(),
        };
        hello_command(&mut buf, Some(&only));
        assert_eq!(&buf[..], b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
    }

    #[test]
    fn sharded_pub_sub_when_the_probe_is_answered_and_classic_when_refused() {
        for refused in [false, true] {
            let mut sharded = settings();
            sharded.sharded = true;
            let mut c = Cluster::new(Some(sharded), NODE);
            let mut ch = Channels::default();
            ch.mirror();
            let mut out = RecordingOutbox::default();
            ch.subscribe(
                conn(1),
                Bytes::from_static(b"news"),
                Subscription::line(),
                &mut out,
            )
            .unwrap();
            c.after_seal(&mut ch, &mut out);
            c.on_timers(0);
            assert_eq!(c.take_links().len(), 3);
            let probe = if refused {
                Frame::Error(Bytes::from_static(b"ERR unknown command 'SUNSUBSCRIBE'"))
            } else {
                Frame::Array(Some(vec![
                    bulk(b"sunsubscribe"),
                    Frame::Bulk(None),
                    Frame::Integer(0),
                ]))
            };
            for (tag, key) in [(1 << 2, 100), (1 << 2 | 1, 101)] {
                assert!(c.link_up(tag, conn(key), 0, &mut out));
                assert_eq!(
                    sent_to(&out, key),
                    "*1\r\n$4\r\nPING\r\n*1\r\n$12\r\nSUNSUBSCRIBE\r\n"
                );
                assert!(c.on_frame(tag, pong(), 0, &mut ch, &mut out));
                assert!(!c.is_up(), "up before the probe is answered");
                assert!(c.on_frame(tag, probe.clone(), 0, &mut ch, &mut out));
            }
            assert!(!c.is_up(), "up before the queue link");
            queue_link_up(&mut c, &mut out);
            assert!(c.is_up());
            assert_eq!(c.stats().sharded, !refused);
            let s = sent_to(&out, 100);
            let want = if refused {
                "*2\r\n$9\r\nSUBSCRIBE\r\n$7\r\nsb:news\r\n"
            } else {
                "*2\r\n$10\r\nSSUBSCRIBE\r\n$7\r\nsb:news\r\n"
            };
            assert!(s.ends_with(want), "{s}");
            let mut out = RecordingOutbox::default();
            ch.publish(b"news", b"text/plain", None, b"x", &mut out);
            ch.seal(&mut out);
            c.after_seal(&mut ch, &mut out);
            let s = sent_to(&out, 101);
            let want = if refused {
                "$7\r\nPUBLISH"
            } else {
                "$8\r\nSPUBLISH"
            };
            assert!(s.starts_with(&format!("*3\r\n{want}\r\n")), "{s}");
            // Sharded answers and messages.
            let confirm = Frame::Array(Some(vec![
                bulk(b"ssubscribe"),
                bulk(b"sb:news"),
                Frame::Integer(1),
            ]));
            assert!(c.on_frame(1 << 2, confirm, 0, &mut ch, &mut out));
            assert_eq!(c.stats().confirmed, 1);
            let m = msg(b"smessage", b"sb:news", &payload(OTHER, 1, b"y"));
            let mut out = RecordingOutbox::default();
            assert!(c.on_frame(1 << 2, m, 0, &mut ch, &mut out));
            ch.seal(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out.bytes_for(conn(1))),
                "! 1 news text/plain\r\ny\r\n"
            );
        }
    }

    #[test]
    fn payloads_round_trip_and_junk_is_refused() {
        let p = payload(OTHER, 7, b"body");
        let r = parse_payload(&p).unwrap();
        assert_eq!(r.seq, 7);
        assert_eq!(r.node, OTHER);
        assert_eq!(r.content_type, b"text/plain");
        assert_eq!(r.sender, None);
        assert_eq!(r.body, b"body");
        for junk in [
            &b"hello"[..],
            b"sb2 short 1 1 -\nx",
            b"sb2 bbbbbbbbbbbbbbbb 1 99 -\nx",
            b"sb2 bbbbbbbbbbbbbbbb x 1 -\nx",
            b"sb1 bbbbbbbbbbbbbbbb 1 -\nx",
        ] {
            assert!(parse_payload(junk).is_none());
        }
    }

    #[test]
    fn subscriptions_follow_local_interest_and_come_back_after_a_reconnect() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let mut ch = news_subscriber(&mut out);
        ch.subscribe(
            conn(2),
            Bytes::from_static(b"news"),
            Subscription::line(),
            &mut out,
        )
        .unwrap();
        ch.subscribe_all(conn(3), Subscription::line(), &mut out);
        c.after_seal(&mut ch, &mut out);
        let s = sent_to(&out, 100);
        assert_eq!(s.matches("SUBSCRIBE").count(), 2, "{s}");
        assert!(s.contains("$7\r\nsb:news\r\n") && s.contains("PSUBSCRIBE\r\n$4\r\nsb:*"));
        // The link goes down and comes back: everything is asked again.
        c.link_closed(1 << 2, 10);
        assert!(!c.is_up());
        assert_eq!(c.next_deadline(), Some(10 + BACKOFF_MIN));
        c.on_timers(10 + BACKOFF_MIN);
        assert_eq!(c.take_links().len(), 1);
        let mut out = RecordingOutbox::default();
        assert!(c.link_up(2 << 2, conn(102), 200, &mut out));
        // Nothing but the first command until Redis has answered it.
        assert_eq!(sent_to(&out, 102), "*1\r\n$4\r\nPING\r\n");
        let mut out = RecordingOutbox::default();
        assert!(c.on_frame(2 << 2, pong(), 200, &mut ch, &mut out));
        let s = sent_to(&out, 102);
        assert!(s.contains("sb:news") && s.contains("PSUBSCRIBE"), "{s}");
        // The last local subscribers go: so do the subscriptions.
        let mut out = RecordingOutbox::default();
        ch.unsubscribe(conn(1), b"news", &mut out);
        c.after_seal(&mut ch, &mut out);
        assert!(out.frames.is_empty());
        ch.unsubscribe(conn(2), b"news", &mut out);
        ch.unsubscribe_all(conn(3), &mut out);
        c.after_seal(&mut ch, &mut out);
        let s = sent_to(&out, 102);
        assert!(
            s.contains("UNSUBSCRIBE\r\n$7\r\nsb:news") && s.contains("PUNSUBSCRIBE"),
            "{s}"
        );
        assert_eq!(c.stats().subscriptions, 0);
    }

    #[test]
    fn publishes_go_out_once_and_come_in_without_echo_or_copies() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let mut ch = news_subscriber(&mut out);
        c.after_seal(&mut ch, &mut out);
        ch.publish(b"news", b"text/plain", None, b"one", &mut out);
        ch.seal(&mut out);
        c.after_seal(&mut ch, &mut out);
        let s = sent_to(&out, 101);
        assert_eq!(s.matches("PUBLISH").count(), 1);
        assert!(s.contains("$7\r\nsb:news\r\n$"), "{s}");
        assert!(
            s.contains("sb2 aaaaaaaaaaaaaaaa 1 10 -\ntext/plainone"),
            "{s}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.bytes_for(conn(1))),
            "! 3 news text/plain\r\none\r\n"
        );
        // Its echo is dropped; another node's message is delivered.
        let mut out = RecordingOutbox::default();
        assert!(c.on_frame(
            1 << 2,
            msg(b"message", b"sb:news", &payload(&NODE, 1, b"one")),
            0,
            &mut ch,
            &mut out
        ));
        assert!(c.on_frame(
            1 << 2,
            msg(b"message", b"sb:news", &payload(OTHER, 1, b"two")),
            0,
            &mut ch,
            &mut out
        ));
        ch.seal(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out.bytes_for(conn(1))),
            "! 3 news text/plain\r\ntwo\r\n"
        );
        assert_eq!(c.stats().echoes, 1);
        assert_eq!(c.stats().received, 1);
        // Nothing received was published back.
        c.after_seal(&mut ch, &mut out);
        assert!(out.bytes_for(conn(101)).is_empty());
        // The copies of one message (its channel, patterns) are dropped.
        let confirm = Frame::Array(Some(vec![
            bulk(b"psubscribe"),
            bulk(b"sb:*"),
            Frame::Integer(2),
        ]));
        assert!(c.on_frame(1 << 2, confirm, 0, &mut ch, &mut out));
        assert_eq!(c.stats().confirmed, 2);
        let mut out = RecordingOutbox::default();
        assert!(c.on_frame(
            1 << 2,
            msg(b"message", b"sb:news", &payload(OTHER, 2, b"3")),
            0,
            &mut ch,
            &mut out
        ));
        assert!(c.on_frame(
            1 << 2,
            msg(b"pmessage", b"sb:news", &payload(OTHER, 2, b"3")),
            0,
            &mut ch,
            &mut out
        ));
        assert!(c.on_frame(
            1 << 2,
            msg(b"pmessage", b"sb:news", &payload(OTHER, 2, b"3")),
            0,
            &mut ch,
            &mut out
        ));
        ch.seal(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out.bytes_for(conn(1))),
            "! 1 news text/plain\r\n3\r\n"
        );
        assert_eq!(c.stats().copies, 2);
    }

    #[test]
    fn patterns_subscribe_by_glob_once_per_glob() {
        assert_eq!(glob(b"sb:", b"a.*.c"), b"sb:a.*.c");
        assert_eq!(glob(b"s*b:", b"a.>"), b"s\\*b:a.*");
        assert_eq!(glob(b"sb:", b"x?.[y].*"), b"sb:x\\?.\\[y\\].*");
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let mut ch = Channels::default();
        ch.mirror();
        for (key, name) in [(1, "a.*"), (2, "a.>"), (3, "a.*"), (4, "x.*.t")] {
            ch.subscribe(
                conn(key),
                Bytes::copy_from_slice(name.as_bytes()),
                Subscription::line(),
                &mut out,
            )
            .unwrap();
        }
        c.after_seal(&mut ch, &mut out);
        let s = sent_to(&out, 100);
        // `a.*` and `a.>` are one glob: asked once.
        assert_eq!(s.matches("PSUBSCRIBE").count(), 2, "{s}");
        assert!(s.contains("$6\r\nsb:a.*\r\n") && s.contains("$8\r\nsb:x.*.t\r\n"));
        assert_eq!(c.stats().subscriptions, 2);
        // The glob stays while a pattern of it has subscribers.
        let mut out = RecordingOutbox::default();
        ch.unsubscribe(conn(1), b"a.*", &mut out);
        ch.unsubscribe(conn(3), b"a.*", &mut out);
        c.after_seal(&mut ch, &mut out);
        assert!(sent_to(&out, 100).is_empty());
        ch.unsubscribe(conn(2), b"a.>", &mut out);
        c.after_seal(&mut ch, &mut out);
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$12\r\nPUNSUBSCRIBE\r\n$6\r\nsb:a.*\r\n"
        );
        // A reconnect asks for what is left.
        c.link_closed(1 << 2, 10);
        c.on_timers(10 + BACKOFF_MIN);
        assert_eq!(c.take_links().len(), 1);
        let mut out = RecordingOutbox::default();
        assert!(c.link_up(2 << 2, conn(102), 200, &mut out));
        assert!(c.on_frame(2 << 2, pong(), 200, &mut ch, &mut out));
        assert_eq!(
            sent_to(&out, 102),
            "*1\r\n$4\r\nPING\r\n*2\r\n$10\r\nPSUBSCRIBE\r\n$8\r\nsb:x.*.t\r\n"
        );
        // A pattern's message from another node reaches its subscriber
        // (and only a channel the pattern matches: the glob matches more).
        let mut out = RecordingOutbox::default();
        for (seq, channel) in [(1, "sb:x.1.t"), (2, "sb:x.1.2.t")] {
            let frame = Frame::Array(Some(vec![
                bulk(b"pmessage"),
                bulk(b"sb:x.*.t"),
                bulk(channel.as_bytes()),
                bulk(&payload(OTHER, seq, channel.as_bytes())),
            ]));
            assert!(c.on_frame(2 << 2, frame, 200, &mut ch, &mut out));
        }
        ch.seal(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out.bytes_for(conn(4))),
            "! 8 x.1.t text/plain\r\nsb:x.1.t\r\n"
        );
    }

    #[test]
    fn publishes_are_dropped_and_counted_while_the_link_is_down_or_behind() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let mut ch = Channels::default();
        ch.mirror();
        // Unanswered publishes up to the pending limit (1024 bytes).
        let body = [b'x'; 300];
        for _ in 0..4 {
            ch.publish(b"news", b"text/plain", None, &body, &mut out);
        }
        c.after_seal(&mut ch, &mut out);
        assert_eq!(c.stats().sent, 2);
        assert_eq!(c.stats().dropped, 2);
        // Answers free room.
        assert!(c.on_frame(1 << 2 | 1, Frame::Integer(0), 0, &mut ch, &mut out));
        ch.publish(b"news", b"text/plain", None, &body, &mut out);
        c.after_seal(&mut ch, &mut out);
        assert_eq!(c.stats().sent, 3);
        c.link_closed(1 << 2 | 1, 5);
        ch.publish(b"news", b"text/plain", None, b"y", &mut out);
        c.after_seal(&mut ch, &mut out);
        assert_eq!(c.stats().dropped, 3);
        assert_eq!(c.stats().link_downs, 1);
        // A second report of the same close changes nothing.
        c.link_closed(1 << 2 | 1, 6);
        assert_eq!(c.stats().link_downs, 1);
    }

    /// The tags of the dials asked for, each checked to be a dial of
    /// `settings()`'s Redis with a 5 s timeout.
    fn dials(c: &mut Cluster) -> Vec<u64> {
        c.take_links()
            .into_iter()
            .map(|r| match r {
                LinkRequest::Dial(d) => {
                    let want = Dial {
                        door: LINK_DOOR,
                        tag: d.tag,
                        host: "127.0.0.1".into(),
                        port: 6379,
                        tls: false,
                        timeout_ms: 5_000,
                    };
                    assert_eq!(d, want);
                    d.tag
                }
                other => panic!("not a dial: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_engine_says_what_it_was_made_with_and_off_it_asks_for_nothing() {
        let c = Cluster::new(Some(settings()), NODE);
        assert!(c.is_on());
        assert_eq!(c.settings(), Some(&settings()));
        assert_eq!(c.node_id(), &NODE[..]);
        // A bulk from Redis may hold the largest body and 64 KiB more;
        // an array as long as a switch list, two deep.
        assert_eq!(
            c.limits(),
            resp::Limits {
                max_bulk: 1024 + 64 * 1024,
                max_array: switch_link::MAX_LIST,
                max_depth: 2,
            }
        );
        let mut off = Cluster::default();
        assert!(!off.is_on());
        assert_eq!(off.settings(), None);
        assert_eq!(off.limits().max_bulk, resp::Limits::default().max_bulk);
        assert_eq!(off.next_deadline(), None);
        off.on_timers(0);
        assert!(off.take_links().is_empty());
        assert!(!off.is_up());
        assert_eq!(off.stats(), ClusterStats::default());
    }

    #[test]
    fn each_dial_is_tagged_with_its_link_and_its_number() {
        let mut c = Cluster::new(Some(settings()), NODE);
        c.on_timers(0);
        let tags = dials(&mut c);
        assert_eq!(tags, [1 << 2, 1 << 2 | 1, 1 << 2 | 2]);
        let mut out = RecordingOutbox::default();
        let mut ch = Channels::default();
        for (tag, key) in tags.iter().zip([100, 101]) {
            assert!(c.link_up(*tag, conn(key), 0, &mut out));
            assert!(c.on_frame(*tag, pong(), 0, &mut ch, &mut out));
        }
        queue_link_up(&mut c, &mut out);
        assert!(c.is_up());
        // Each new dial of a link has the next number; a report about
        // the one before is ignored.
        c.link_closed(tags[0], 10);
        c.on_timers(10 + BACKOFF_MIN);
        let again = dials(&mut c);
        assert_eq!(again, [2 << 2]);
        c.link_failed(tags[0], "late", 20);
        assert!(c.link_up(again[0], conn(102), 200, &mut out));
    }

    #[test]
    fn stats_say_which_links_are_up() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let s = c.stats();
        assert!(s.up && s.queue_up, "{s:?}");
        assert_eq!(s.links_up, 3);
        c.link_closed(1 << 2 | 1, 5);
        let s = c.stats();
        assert!(!s.up && s.queue_up, "{s:?}");
        assert_eq!(s.links_up, 2);
        c.link_closed(1 << 2 | 2, 5);
        let s = c.stats();
        assert!(!s.up && !s.queue_up, "{s:?}");
        assert_eq!(s.links_up, 1);
    }

    #[test]
    fn a_failed_dial_is_tried_again_after_a_back_off_that_doubles_up_to_5_s() {
        let mut c = Cluster::new(Some(settings()), NODE);
        let mut now = 0;
        c.on_timers(now);
        let mut tag = dials(&mut c)[0];
        let mut waits = Vec::new();
        for _ in 0..8 {
            c.link_failed(tag, "connection refused", now);
            // The other two links are still dialing: only this one waits.
            let at = c.next_deadline().unwrap();
            waits.push(at - now);
            c.on_timers(at - 1);
            assert!(c.take_links().is_empty());
            now = at;
            c.on_timers(now);
            tag = dials(&mut c)[0];
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // Up, the back-off starts again from 100 ms.
        let mut out = RecordingOutbox::default();
        let mut ch = Channels::default();
        assert!(c.link_up(tag, conn(100), now, &mut out));
        assert!(c.on_frame(tag, pong(), now, &mut ch, &mut out));
        c.link_closed(tag, now);
        assert_eq!(c.next_deadline(), Some(now + BACKOFF_MIN));
    }

    #[test]
    fn by_default_16_mib_of_publishes_may_wait_for_redis() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        c.settings.as_mut().unwrap().max_pending = DEFAULT_MAX_PENDING;
        let mib = vec![b'x'; 1 << 20];
        for _ in 0..15 {
            c.publish(b"news", b"text/plain", None, &mib);
        }
        assert_eq!((c.stats().sent, c.stats().dropped), (15, 0));
        // Each command is its body and about 100 bytes: a 16th MiB is
        // over, 2 KiB less is not.
        c.publish(b"news", b"text/plain", None, &mib);
        assert_eq!((c.stats().sent, c.stats().dropped), (15, 1));
        c.publish(b"news", b"text/plain", None, &mib[2048..]);
        assert_eq!((c.stats().sent, c.stats().dropped), (16, 1));
    }

    #[test]
    fn a_link_lost_before_redis_answered_leaves_the_queue_link_alone() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        assert!(c.queue_send(&Bytes::from_static(b"q"), None, 10, b"hi"));
        assert_eq!(c.queue_in_flight(), 1);
        // The subscriber link is lost, and so is its next connection
        // before Redis answered its first command.
        c.link_closed(1 << 2, 10);
        c.on_timers(10 + BACKOFF_MIN);
        assert_eq!(dials(&mut c), [2 << 2]);
        assert!(c.link_up(2 << 2, conn(102), 120, &mut out));
        c.link_closed(2 << 2, 130);
        // The send on the queue link is still awaited.
        assert_eq!(c.queue_in_flight(), 1);
        assert_eq!(c.stats().queue_unconfirmed, 0);
        assert!(c.queues_up());
    }

    #[test]
    fn a_publish_is_one_whole_command_that_gives_the_message_back() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        c.publish(b"news", b"text/plain", None, b"hello");
        c.publish(b"news", b"a/b", Some(b"bob"), b"");
        c.flush(&mut out);
        let mut buf = BytesMut::from(&out.bytes_for(conn(101))[..]);
        let limits = resp::Limits::default();
        for (seq, ct, sender, body) in [
            (1, &b"text/plain"[..], None, &b"hello"[..]),
            (2, b"a/b", Some(&b"bob"[..]), b""),
        ] {
            let Ok(Some(Frame::Array(Some(items)))) = resp::decode(&mut buf, &limits) else {
                panic!("not a command: {buf:?}");
            };
            let words: Vec<&[u8]> = items
                .iter()
                .filter_map(|f| f.as_bytes().map(|b| &b[..]))
                .collect();
            assert_eq!(words.len(), 3);
            assert_eq!(words[..2], [&b"PUBLISH"[..], b"sb:news"]);
            let m = parse_payload(words[2]).unwrap();
            assert_eq!(
                m,
                Remote {
                    node: &NODE,
                    seq,
                    content_type: ct,
                    sender,
                    body,
                }
            );
        }
        assert!(buf.is_empty(), "{buf:?}");
    }

    #[test]
    fn publishes_are_taken_while_they_fit_under_the_pending_limit() {
        // A publish counts its payload (a header of 28 bytes, the content
        // type, the sender, the body), its channel in Redis and 64 bytes;
        // once written, the bytes of its command (80 for the first here).
        let first = 28 + 10 + 5 + 7 + 64;
        let second = 28 + 10 + 3 + 5 + 7 + 64;
        for (max_pending, sent) in [
            (first - 1, 0),
            (first, 1),
            (80 + second - 1, 1),
            (80 + second, 2),
        ] {
            let mut out = RecordingOutbox::default();
            let mut c = up(&mut out);
            c.settings.as_mut().unwrap().max_pending = max_pending;
            c.publish(b"news", b"text/plain", None, b"hello");
            c.publish(b"news", b"text/plain", Some(b"bob"), b"hello");
            assert_eq!(c.stats().sent, sent, "{max_pending}");
            assert_eq!(c.stats().dropped, 2 - sent, "{max_pending}");
        }
    }

    #[test]
    fn each_answer_gives_its_publishes_bytes_back_and_errors_are_counted() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let mut ch = news_subscriber(&mut out);
        // Room for one publish at a time.
        c.settings.as_mut().unwrap().max_pending = 28 + 10 + 5 + 7 + 64;
        let error = Frame::Error(Bytes::from_static(b"ERR no"));
        for (answer, errors) in [(Frame::Integer(0), 0), (error.clone(), 1), (error, 2)] {
            c.publish(b"news", b"text/plain", None, b"hello");
            c.publish(b"news", b"text/plain", None, b"hello");
            assert!(c.on_frame(1 << 2 | 1, answer, 0, &mut ch, &mut out));
            assert_eq!(c.stats().errors, errors);
        }
        assert_eq!((c.stats().sent, c.stats().dropped), (3, 3));
        // A message that no node wrote is counted and dropped.
        let mut out = RecordingOutbox::default();
        let junk = msg(b"message", b"sb:news", b"hello");
        assert!(c.on_frame(1 << 2, junk, 0, &mut ch, &mut out));
        ch.seal(&mut out);
        assert!(out.frames.is_empty());
        assert_eq!(c.stats().errors, 3);
        assert_eq!(c.stats().received, 0);
    }
}
