//! Message-switch queues across nodes (see docs/cluster.md, "Message-switch
//! queues across nodes"), on the queue link.
//!
//! With `--cluster`, Redis holds the switch queues: under SPREFIX (the
//! cluster prefix with `m` before it, `M` when the prefix starts with `m`,
//! so that it starts neither with the prefix nor with the line queues'
//! namespace), `SPREFIXqueues` is a hash of the queues (name → `p`, or
//! `t NODE SESSION` for a transient queue), `SPREFIXids` their id counters,
//! `SPREFIXbytes` their stored bytes (field `""`: all of them),
//! `SPREFIXalive` the queues some transfer has named, `SPREFIXs:NAME` a
//! queue's stream (message `n` is entry `0-(n+1)`), `SPREFIXn:NAME` its
//! notification channel, `SPREFIXt:NODE` the transient queues a node
//! created, `SPREFIXnodes` those nodes and `SPREFIXlive:NODE` a node's
//! liveness key. Each call is one `EVALSHA` of a script below; its answer
//! goes to the waiting HTTP call through the outbox as
//! [`Polled::Cluster`].
//!
//! A transfer reads; when it finds nothing and may wait, its node
//! subscribes (on the subscriber link) to the notification channels of
//! the queues it names, and reads again at each notification and at the
//! subscription's confirmation. Nothing is taken out of Redis by a read:
//! every transfer sees every unacknowledged message, as without
//! `--cluster`.

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes};

use super::resp::{self, Frame};
use super::{Cluster, State};
use crate::broker::switch::{
    check_name, ClusterReply, Kind, Message, MessageId, Polled, Transferred, MAX_QUEUES,
};
use crate::broker::{ConnId, Millis, Outbox};

/// The most messages one transfer returns.
pub const MAX_READ: usize = 256;
/// Payload bytes after which a transfer returns no further message (it
/// always returns the first).
pub const MAX_READ_BYTES: usize = 4 * 1024 * 1024;
/// The most names a `list` returns.
pub const MAX_LIST: usize = 10_000;
/// Entries a queue's stream holds at most (a send past it is refused as
/// full).
pub const MAX_ENTRIES: usize = 100_000;
/// How long a node's liveness key lives, and how often it is refreshed.
pub const LIVE_TTL_MS: Millis = 6_000;
pub const LIVE_EVERY_MS: Millis = 2_000;
/// How often a node removes the transient queues of nodes whose liveness
/// key is gone, and unsubscribes from queues no transfer waits on.
pub const SWEEP_EVERY_MS: Millis = 3_000;
/// Elements of a read's answer per message.
const READ_FIELDS: usize = 6;

/// Removes queue `name` (its hash entry `v`) and everything it has; the
/// start of the scripts that drop queues.
const DROP: &str = r"local function drop(p, name, v)
  local b = tonumber(redis.call('HGET', p .. 'bytes', name) or '0') or 0
  if b ~= 0 then redis.call('HINCRBY', p .. 'bytes', '', string.format('%d', -b)) end
  redis.call('HDEL', p .. 'bytes', name)
  redis.call('HDEL', p .. 'queues', name)
  redis.call('HDEL', p .. 'ids', name)
  redis.call('HDEL', p .. 'alive', name)
  redis.call('DEL', p .. 's:' .. name)
  local node = string.match(v, '^t (%S+) ')
  if node then redis.call('SREM', p .. 't:' .. node, name) end
end
";

/// `ARGV`: SPREFIX, name, the hash value (`p` or `t NODE SESSION`), the
/// node, the most queues. 1: created; 0: it existed; -1: too many queues.
const CREATE: &str = r"local p, name, v = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HEXISTS', p .. 'queues', name) == 1 then return 0 end
if redis.call('HLEN', p .. 'queues') >= tonumber(ARGV[5]) then return -1 end
redis.call('HSET', p .. 'queues', name, v)
if string.sub(v, 1, 2) == 't ' then
  redis.call('SADD', p .. 't:' .. ARGV[4], name)
  redis.call('SADD', p .. 'nodes', ARGV[4])
end
return 1";

/// `ARGV`: SPREFIX, name, the value it must have (`""`: any). 1: removed.
const DESTROY: &str = r"local p, name = ARGV[1], ARGV[2]
local v = redis.call('HGET', p .. 'queues', name)
if not v then return 0 end
if ARGV[3] ~= '' and v ~= ARGV[3] then return 0 end
drop(p, name, v)
return 1";

/// `ARGV`: SPREFIX, name, kind (`q` request, `r` response), reply-to or
/// the response's queue, the response's id (`""` for a request), the
/// sender's session, payload, per-queue byte limit, total byte limit, the
/// most entries. The id; -1: no such queue (dropped); -2: full.
const SEND: &str = r"local p, name = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p .. 'queues', name) == 0 then return -1 end
local size = #ARGV[7] + #ARGV[4] + #name + 128
local qb = tonumber(redis.call('HGET', p .. 'bytes', name) or '0') or 0
local tb = tonumber(redis.call('HGET', p .. 'bytes', '') or '0') or 0
if qb + size > tonumber(ARGV[8]) or tb + size > tonumber(ARGV[9]) then return -2 end
local s = p .. 's:' .. name
if redis.call('XLEN', s) >= tonumber(ARGV[10]) then return -2 end
local id = redis.call('HINCRBY', p .. 'ids', name, 1) - 1
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', s, string.format('0-%d', id + 1), 'k', ARGV[3], 'r', ARGV[4], 'n', ARGV[5], 'o', ARGV[6], 't', string.format('%d', ms), 'p', ARGV[7])
redis.call('HINCRBY', p .. 'bytes', name, size)
redis.call('HINCRBY', p .. 'bytes', '', size)
redis.call('PUBLISH', p .. 'n:' .. name, string.format('%d', id))
return id";

/// `ARGV`: SPREFIX, name, the entry's stream id. 1: removed.
const ACK: &str = r"local p, name = ARGV[1], ARGV[2]
local s = p .. 's:' .. name
local e = redis.call('XRANGE', s, ARGV[3], ARGV[3])
if #e == 0 then return 0 end
local m = {}
for i = 1, #e[1][2], 2 do m[e[1][2][i]] = e[1][2][i + 1] end
local size = #(m['p'] or '') + #(m['r'] or '') + #name + 128
redis.call('XDEL', s, ARGV[3])
redis.call('HINCRBY', p .. 'bytes', name, -size)
redis.call('HINCRBY', p .. 'bytes', '', -size)
return 1";

/// `ARGV`: SPREFIX, the first stream id to return (`-`: all), the most
/// messages, the payload bytes after which no more are added, the names.
/// Marks the existing named queues alive; returns `{name's index (from
/// 1), stream id, kind, reply-to or queue, response id, payload, …}`.
const READ: &str = r"local p = ARGV[1]
local left = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV do
  local name = ARGV[i]
  if redis.call('HEXISTS', p .. 'queues', name) == 1 then
    redis.call('HSETNX', p .. 'alive', name, '1')
    if left > 0 and budget > 0 then
      local es = redis.call('XRANGE', p .. 's:' .. name, ARGV[2], '+', 'COUNT', left)
      for _, e in ipairs(es) do
        if left <= 0 or budget <= 0 then break end
        local m = {}
        for j = 1, #e[2], 2 do m[e[2][j]] = e[2][j + 1] end
        out[#out + 1] = i - 4
        out[#out + 1] = e[1]
        out[#out + 1] = m['k'] or ''
        out[#out + 1] = m['r'] or ''
        out[#out + 1] = m['n'] or ''
        out[#out + 1] = m['p'] or ''
        left = left - 1
        budget = budget - #(m['p'] or '')
      end
    end
  end
end
return out";

/// `ARGV`: SPREFIX, prefix, `1` for alive queues only, the most names.
const LIST: &str = r"local key = ARGV[1] .. (ARGV[3] == '1' and 'alive' or 'queues')
local pl = #ARGV[2]
local out = {}
for _, n in ipairs(redis.call('HKEYS', key)) do
  if string.sub(n, 1, pl) == ARGV[2] then out[#out + 1] = n end
end
table.sort(out)
local max = tonumber(ARGV[4])
while #out > max do table.remove(out) end
return out";

/// `ARGV`: SPREFIX. Removes the transient queues of nodes whose liveness
/// key is gone; returns how many.
const SWEEP: &str = r"local p = ARGV[1]
local removed = 0
for _, node in ipairs(redis.call('SMEMBERS', p .. 'nodes')) do
  if redis.call('EXISTS', p .. 'live:' .. node) == 0 then
    for _, name in ipairs(redis.call('SMEMBERS', p .. 't:' .. node)) do
      local v = redis.call('HGET', p .. 'queues', name)
      if v and string.sub(v, 1, #node + 3) == 't ' .. node .. ' ' then
        drop(p, name, v)
        removed = removed + 1
      end
    end
    redis.call('DEL', p .. 't:' .. node)
    redis.call('SREM', p .. 'nodes', node)
  end
end
return removed";

/// The scripts the queue link loads after the line queues' two, in the
/// order of [`Script`].
pub fn scripts() -> [String; 7] {
    [
        CREATE.to_string(),
        format!("{DROP}{DESTROY}"),
        SEND.to_string(),
        ACK.to_string(),
        READ.to_string(),
        LIST.to_string(),
        format!("{DROP}{SWEEP}"),
    ]
}

/// A switch script, by its place among the queue link's scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Create = 2,
    Destroy,
    Send,
    Ack,
    Read,
    List,
    Sweep,
}

/// What a switch command on the queue link was for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SwCmd {
    /// A call of a waiting HTTP request (`seq` names it); `transient`: a
    /// create of a transient queue by `session`, `name`.
    Create {
        conn: ConnId,
        seq: u64,
        name: Bytes,
        owner: Option<Bytes>,
    },
    /// A destroy asked for by a call, or of a transient queue whose
    /// session ended here.
    Destroy {
        call: Option<(ConnId, u64)>,
        name: Bytes,
    },
    /// A transient queue made here, made again after the queue link came
    /// back (other nodes may have swept it meanwhile).
    Recreate,
    Send {
        conn: ConnId,
        seq: u64,
        name: Bytes,
        bytes: usize,
    },
    Ack {
        conn: ConnId,
        seq: u64,
    },
    List {
        conn: ConnId,
        seq: u64,
    },
    /// A read for the transfer `seq`.
    Read {
        seq: u64,
    },
    Live,
    Sweep,
}

/// Whether the node listens for a queue's notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listen {
    No,
    Asked,
    Yes,
}

/// A queue some transfer here waits on (or waited on, until the sweep).
#[derive(Debug)]
struct Named {
    waits: HashSet<u64>,
    listen: Listen,
    /// `SUBSCRIBE`s and `UNSUBSCRIBE`s not yet confirmed.
    acks: u32,
    /// No transfer waited at the last sweep.
    idle: bool,
}

/// A transfer waiting for messages.
#[derive(Debug)]
struct Wait {
    conn: ConnId,
    from: Option<u64>,
    names: Vec<Bytes>,
    /// Answered by its first read (a timeout of 0).
    once: bool,
    reading: bool,
    /// Notified while a read was in flight: read again after it.
    again: bool,
}

/// The switch part of the queue link's state.
#[derive(Default)]
pub(super) struct SwitchState {
    next_seq: u64,
    waits: HashMap<u64, Wait>,
    named: HashMap<Bytes, Named>,
    /// Transient queues this node created, by owning session, and their
    /// owners (at most [`MAX_QUEUES`]).
    owned: HashMap<Bytes, HashSet<Bytes>>,
    owner_of: HashMap<Bytes, Bytes>,
    /// Transient queues of sessions that ended while the queue link was
    /// down: destroyed once it is back.
    orphans: Vec<(Bytes, Bytes)>,
    /// Answers to deliver to waiting calls.
    done: Vec<(ConnId, Polled)>,
    /// A switch call came: the node keeps its liveness key and sweeps.
    active: bool,
    live_at: Option<Millis>,
    sweep_at: Option<Millis>,
}

/// The switch namespace: the cluster prefix with `m` before it (`M` when
/// the prefix starts with `m`).
pub fn switch_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 1);
    p.push(if prefix.first() == Some(&b'm') {
        b'M'
    } else {
        b'm'
    });
    p.extend_from_slice(prefix);
    p
}

/// The stream id of message `n`: `0-(n+1)` (Redis refuses `0-0`).
pub fn entry_id(n: u64) -> Option<String> {
    n.checked_add(1).map(|k| format!("0-{k}"))
}

/// Message `n` of a stream id `0-(n+1)`.
pub fn message_number(id: &[u8]) -> Option<u64> {
    let rest = id.strip_prefix(b"0-")?;
    let k: u64 = std::str::from_utf8(rest).ok()?.parse().ok()?;
    k.checked_sub(1)
}

/// Reads a read's answer for the queues `names`, returning from `from`.
pub fn parse_read(names: &[Bytes], from: Option<u64>, frame: &Frame) -> Option<Transferred> {
    let Frame::Array(Some(items)) = frame else {
        return None;
    };
    if items.len() % READ_FIELDS != 0 || items.len() / READ_FIELDS > MAX_READ {
        return None;
    }
    let mut messages = Vec::with_capacity(items.len() / READ_FIELDS);
    for e in items.chunks(READ_FIELDS) {
        let [Frame::Integer(i), id, k, r, n, p] = e else {
            return None;
        };
        let name = names.get(usize::try_from(*i).ok()?.checked_sub(1)?)?;
        let id = message_number(id.as_bytes()?)?;
        let r = r.as_bytes()?.clone();
        let kind = match &k.as_bytes()?[..] {
            b"q" => Kind::Request(r),
            b"r" => {
                let n: u64 = std::str::from_utf8(n.as_bytes()?).ok()?.parse().ok()?;
                Kind::Response((r, n))
            }
            _ => return None,
        };
        if from.is_some_and(|f| id <= f) {
            return None;
        }
        let message = Message {
            payload: p.as_bytes()?.clone(),
            kind,
        };
        messages.push(((name.clone(), id), message));
    }
    let next = messages
        .iter()
        .map(|((_, id), _)| i64::try_from(*id).unwrap_or(i64::MAX))
        .max()
        .unwrap_or_else(|| from.map_or(-1, |f| i64::try_from(f).unwrap_or(i64::MAX)));
    Some(Transferred { messages, next })
}

fn unavailable(why: &str) -> ClusterReply {
    ClusterReply::Unavailable(why.to_string())
}

impl Cluster {
    /// The scripts' SHA1 and the switch namespace, while the queue link
    /// is up.
    fn sw_ready(&self, script: Script) -> Option<(Bytes, Vec<u8>)> {
        let s = self.settings.as_ref()?;
        let State::Up(_) = super::queue_link::queue_state(&self.links) else {
            return None;
        };
        let sha = self.q.sha.get(script as usize)?.clone()?;
        Some((sha, switch_prefix(&s.prefix)))
    }

    /// The first switch call: the liveness key is set before it, and kept.
    fn sw_activate(&mut self) {
        if self.q.sw.active || self.sw_ready(Script::Create).is_none() {
            return;
        }
        self.q.sw.active = true;
        self.q.sw.live_at = Some(0);
        self.q.sw.sweep_at = Some(0);
        self.sw_live(0);
    }

    /// Sets this node's liveness key.
    fn sw_live(&mut self, now: Millis) {
        let Some(s) = &self.settings else {
            return;
        };
        let mut key = switch_prefix(&s.prefix);
        key.extend_from_slice(b"live:");
        key.extend_from_slice(&self.node);
        let ttl = LIVE_TTL_MS.to_string();
        let buf = super::queue_link::queue_out(&mut self.links);
        resp::command(buf, &[b"SET", &key, b"1", b"PX", ttl.as_bytes()]);
        self.q
            .fifo
            .push_back(super::queue_link::QCmd::Switch(Box::new(SwCmd::Live)));
        self.q.sw.live_at = Some(now + LIVE_EVERY_MS);
    }

    /// Writes one `EVALSHA` of `script` on the queue link and notes what
    /// it was for.
    fn sw_eval(&mut self, sha: &[u8], args: &[&[u8]], cmd: SwCmd) -> usize {
        let buf = super::queue_link::queue_out(&mut self.links);
        let before = buf.len();
        resp::header(buf, b'*', args.len() + 3);
        for a in [&b"EVALSHA"[..], sha, b"0"].iter().chain(args) {
            resp::header(buf, b'$', a.len());
            buf.put_slice(a);
            buf.put_slice(b"\r\n");
        }
        let written = buf.len() - before;
        self.q
            .fifo
            .push_back(super::queue_link::QCmd::Switch(Box::new(cmd)));
        written
    }

    fn sw_seq(&mut self) -> u64 {
        self.sw_activate();
        self.q.sw.next_seq += 1;
        self.q.sw.next_seq
    }

    /// Why a switch call cannot go to Redis now, if it cannot.
    pub fn switch_unavailable(&self) -> Option<&'static str> {
        if !self.queues_up() {
            return Some("the cluster's queue link to Redis is down; try again");
        }
        None
    }

    /// Creates a queue in Redis (nothing happens when it exists). The
    /// answer comes as [`Polled::Cluster`] with the returned number.
    pub fn switch_create(
        &mut self,
        conn: ConnId,
        name: &Bytes,
        session: Option<&Bytes>,
    ) -> Option<u64> {
        let (sha, p) = self.sw_ready(Script::Create)?;
        let value = match session {
            Some(s) => {
                let mut v = b"t ".to_vec();
                v.extend_from_slice(&self.node);
                v.push(b' ');
                v.extend_from_slice(s);
                v
            }
            None => b"p".to_vec(),
        };
        let seq = self.sw_seq();
        let node = self.node;
        let max = MAX_QUEUES.to_string();
        let cmd = SwCmd::Create {
            conn,
            seq,
            name: name.clone(),
            owner: session.cloned(),
        };
        self.sw_eval(&sha, &[&p, name, &value, &node, max.as_bytes()], cmd);
        Some(seq)
    }

    /// Removes a queue and its messages in Redis.
    pub fn switch_destroy(&mut self, conn: ConnId, name: &[u8]) -> Option<u64> {
        let (sha, p) = self.sw_ready(Script::Destroy)?;
        let seq = self.sw_seq();
        let cmd = SwCmd::Destroy {
            call: Some((conn, seq)),
            name: Bytes::copy_from_slice(name),
        };
        self.sw_eval(&sha, &[&p, name, b""], cmd);
        Some(seq)
    }

    /// Sends a message into queue `name` in Redis; `limits`: the bytes a
    /// queue and all queues may hold.
    pub fn switch_send(
        &mut self,
        conn: ConnId,
        name: &Bytes,
        session: &[u8],
        message: &Message,
        limits: (usize, usize),
    ) -> Result<u64, &'static str> {
        let Some((sha, p)) = self.sw_ready(Script::Send) else {
            return Err("the cluster's queue link to Redis is down; try again");
        };
        let max_pending = self.settings.as_ref().map_or(0, |s| s.max_pending);
        let reply_len = match &message.kind {
            Kind::Request(r) => r.len(),
            Kind::Response((q, _)) => q.len(),
        };
        let size = message.payload.len() + name.len() + reply_len + session.len() + 256;
        if self.q.pending_bytes + size > max_pending {
            return Err("Redis is behind; try again");
        }
        let (kind, r, n): (&[u8], &[u8], String) = match &message.kind {
            Kind::Request(r) => (b"q", r, String::new()),
            Kind::Response((q, n)) => (b"r", q, n.to_string()),
        };
        let seq = self.sw_seq();
        let (per, total) = (limits.0.to_string(), limits.1.to_string());
        let max = MAX_ENTRIES.to_string();
        // The bytes written, counted once written.
        let cmd = SwCmd::Send {
            conn,
            seq,
            name: name.clone(),
            bytes: 0,
        };
        let args: [&[u8]; 10] = [
            &p,
            name,
            kind,
            r,
            n.as_bytes(),
            session,
            &message.payload,
            per.as_bytes(),
            total.as_bytes(),
            max.as_bytes(),
        ];
        let written = self.sw_eval(&sha, &args, cmd);
        if let Some(super::queue_link::QCmd::Switch(c)) = self.q.fifo.back_mut() {
            if let SwCmd::Send { bytes, .. } = c.as_mut() {
                *bytes = written;
            }
        }
        self.q.pending_bytes += written;
        Ok(seq)
    }

    /// Acknowledges message `(name, id)` in Redis.
    pub fn switch_ack(&mut self, conn: ConnId, name: &[u8], id: u64) -> Option<u64> {
        let (sha, p) = self.sw_ready(Script::Ack)?;
        let seq = self.sw_seq();
        match entry_id(id) {
            Some(eid) => {
                self.sw_eval(&sha, &[&p, name, eid.as_bytes()], SwCmd::Ack { conn, seq });
            }
            None => self.q.sw.done.push((
                conn,
                Polled::Cluster {
                    seq,
                    reply: ClusterReply::Done,
                },
            )),
        }
        Some(seq)
    }

    /// Lists the queues in Redis whose names start with `prefix`.
    pub fn switch_list(&mut self, conn: ConnId, prefix: &[u8], alive: bool) -> Option<u64> {
        let (sha, p) = self.sw_ready(Script::List)?;
        let seq = self.sw_seq();
        let alive: &[u8] = if alive { b"1" } else { b"0" };
        let max = MAX_LIST.to_string();
        self.sw_eval(
            &sha,
            &[&p, prefix, alive, max.as_bytes()],
            SwCmd::List { conn, seq },
        );
        Some(seq)
    }

    /// A transfer: read at once; when nothing comes and `wait`, the node
    /// listens for the named queues and reads again when notified, until
    /// the caller withdraws it ([`Cluster::switch_cancel`]).
    pub fn switch_transfer(
        &mut self,
        conn: ConnId,
        from: Option<u64>,
        wait: bool,
        names: Vec<Bytes>,
    ) -> Option<u64> {
        self.sw_ready(Script::Read)?;
        let mut unique: Vec<Bytes> = Vec::with_capacity(names.len());
        for n in names {
            if check_name(&n).is_ok() && !unique.contains(&n) {
                unique.push(n);
            }
        }
        let seq = self.sw_seq();
        if wait {
            for n in &unique {
                let named = self.q.sw.named.entry(n.clone()).or_insert(Named {
                    waits: HashSet::new(),
                    listen: Listen::No,
                    acks: 0,
                    idle: false,
                });
                named.waits.insert(seq);
                named.idle = false;
            }
        }
        self.q.sw.waits.insert(
            seq,
            Wait {
                conn,
                from,
                names: unique.clone(),
                once: !wait,
                reading: false,
                again: false,
            },
        );
        self.sw_subscribe(&unique);
        self.sw_read(seq);
        Some(seq)
    }

    /// Subscribes to the notifications of those of `names` not listened
    /// for, while the subscriber link is up.
    fn sw_subscribe(&mut self, names: &[Bytes]) {
        let Some(s) = &self.settings else {
            return;
        };
        let p = switch_prefix(&s.prefix);
        let [sub, _, _] = &mut self.links;
        if !matches!(sub.state, State::Up(_)) {
            return;
        }
        for n in names {
            let Some(named) = self.q.sw.named.get_mut(n) else {
                continue;
            };
            if named.listen != Listen::No {
                continue;
            }
            let mut ch = p.clone();
            ch.extend_from_slice(b"n:");
            ch.extend_from_slice(n);
            resp::command(&mut sub.out, &[b"SUBSCRIBE", &ch]);
            named.listen = Listen::Asked;
            named.acks += 1;
        }
    }

    /// Reads for transfer `seq` (unless a read is in flight: then once more
    /// after it).
    fn sw_read(&mut self, seq: u64) {
        let Some((sha, p)) = self.sw_ready(Script::Read) else {
            return;
        };
        let Some(w) = self.q.sw.waits.get_mut(&seq) else {
            return;
        };
        if w.reading {
            w.again = true;
            return;
        }
        w.reading = true;
        w.again = false;
        let start = match w.from {
            None => Some("-".to_string()),
            Some(f) => f.checked_add(1).and_then(entry_id),
        };
        let Some(start) = start else {
            // Nothing can come after the greatest id.
            w.reading = false;
            if w.once {
                let t = Transferred {
                    messages: Vec::new(),
                    next: i64::MAX,
                };
                let conn = w.conn;
                self.sw_finish(seq);
                self.q.sw.done.push((
                    conn,
                    Polled::Cluster {
                        seq,
                        reply: ClusterReply::Transfer(t),
                    },
                ));
            }
            return;
        };
        let names = w.names.clone();
        let (count, bytes) = (MAX_READ.to_string(), MAX_READ_BYTES.to_string());
        let mut args: Vec<&[u8]> = vec![&p, start.as_bytes(), count.as_bytes(), bytes.as_bytes()];
        args.extend(names.iter().map(|n| &n[..]));
        self.sw_eval(&sha, &args, SwCmd::Read { seq });
    }

    /// Withdraws transfer `seq` (its deadline came, or its connection
    /// closed).
    pub fn switch_cancel(&mut self, seq: u64) {
        self.sw_finish(seq);
    }

    fn sw_finish(&mut self, seq: u64) {
        let Some(w) = self.q.sw.waits.remove(&seq) else {
            return;
        };
        for n in &w.names {
            if let Some(named) = self.q.sw.named.get_mut(n) {
                named.waits.remove(&seq);
            }
        }
    }

    /// A session's last connection here closed: its transient queues made
    /// here go, in Redis, unless they are no longer its own.
    pub fn switch_session_ended(&mut self, session: &Bytes) {
        let Some(names) = self.q.sw.owned.remove(session) else {
            return;
        };
        for n in names {
            self.q.sw.owner_of.remove(&n);
            self.q.sw.orphans.push((session.clone(), n));
        }
        self.sw_destroy_orphans();
    }

    /// The hash value of a transient queue `session` made here.
    fn transient_value(&self, session: &[u8]) -> Vec<u8> {
        let mut value = b"t ".to_vec();
        value.extend_from_slice(&self.node);
        value.push(b' ');
        value.extend_from_slice(session);
        value
    }

    /// Destroys the transient queues of ended sessions, unless they are no
    /// longer theirs; while the queue link is down they wait for it.
    fn sw_destroy_orphans(&mut self) {
        let Some((sha, p)) = self.sw_ready(Script::Destroy) else {
            return;
        };
        for (session, name) in std::mem::take(&mut self.q.sw.orphans) {
            let value = self.transient_value(&session);
            let cmd = SwCmd::Destroy {
                call: None,
                name: name.clone(),
            };
            self.sw_eval(&sha, &[&p, &name, &value], cmd);
        }
    }

    /// Makes this node's transient queues again (after the queue link was
    /// down, other nodes may have swept them).
    fn sw_recreate(&mut self) {
        let Some((sha, p)) = self.sw_ready(Script::Create) else {
            return;
        };
        let node = self.node;
        let max = MAX_QUEUES.to_string();
        let owned: Vec<(Bytes, Bytes)> = self
            .q
            .sw
            .owner_of
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, session) in owned {
            let value = self.transient_value(&session);
            self.sw_eval(
                &sha,
                &[&p, &name, &value, &node, max.as_bytes()],
                SwCmd::Recreate,
            );
        }
    }

    /// The answer to a switch command.
    pub(super) fn switch_answer(&mut self, cmd: SwCmd, frame: Frame) {
        if let Frame::Error(e) = &frame {
            let why = format!("Redis refused the call: {}", String::from_utf8_lossy(e));
            if let SwCmd::Send { bytes, .. } = &cmd {
                self.q.pending_bytes = self.q.pending_bytes.saturating_sub(*bytes);
            }
            if let SwCmd::Read { seq } = &cmd {
                self.sw_read_failed(*seq, &why);
                return;
            }
            if let Some((conn, seq)) = call_of(&cmd) {
                self.sw_reply(conn, seq, ClusterReply::Unavailable(why));
            }
            return;
        }
        let int = match &frame {
            Frame::Integer(n) => Some(*n),
            _ => None,
        };
        match cmd {
            SwCmd::Create {
                conn,
                seq,
                name,
                owner,
            } => match int {
                Some(1) | Some(0) => {
                    if let (Some(1), Some(s)) = (int, owner) {
                        let sw = &mut self.q.sw;
                        if sw.owner_of.len() < MAX_QUEUES {
                            sw.owner_of.insert(name.clone(), s.clone());
                            sw.owned.entry(s).or_default().insert(name.clone());
                        }
                    }
                    self.sw_reply(conn, seq, ClusterReply::Created(name));
                }
                Some(-1) => {
                    let why = format!("too many queues (the limit is {MAX_QUEUES})");
                    self.sw_reply(conn, seq, ClusterReply::Unavailable(why));
                }
                _ => self.sw_malformed(Some((conn, seq)), "create", &frame),
            },
            SwCmd::Destroy { call, name } => {
                if call.is_some() {
                    if let Some(s) = self.q.sw.owner_of.remove(&name) {
                        if let Some(set) = self.q.sw.owned.get_mut(&s) {
                            set.remove(&name);
                            if set.is_empty() {
                                self.q.sw.owned.remove(&s);
                            }
                        }
                    }
                }
                if int.is_none() {
                    self.sw_malformed(call, "destroy", &frame);
                } else if let Some((conn, seq)) = call {
                    self.sw_reply(conn, seq, ClusterReply::Done);
                }
            }
            SwCmd::Send {
                conn,
                seq,
                name,
                bytes,
            } => {
                self.q.pending_bytes = self.q.pending_bytes.saturating_sub(bytes);
                match int {
                    Some(n) if n >= 0 => {
                        let id: MessageId = (name, n.unsigned_abs());
                        self.sw_reply(conn, seq, ClusterReply::Sent(Some(id)));
                    }
                    Some(-1) => self.sw_reply(conn, seq, ClusterReply::Sent(None)),
                    Some(-2) => self.sw_reply(conn, seq, unavailable("queue full")),
                    _ => self.sw_malformed(Some((conn, seq)), "send", &frame),
                }
            }
            SwCmd::Ack { conn, seq } => {
                if int.is_some() {
                    self.sw_reply(conn, seq, ClusterReply::Done);
                } else {
                    self.sw_malformed(Some((conn, seq)), "ack", &frame);
                }
            }
            SwCmd::List { conn, seq } => {
                let names = match &frame {
                    Frame::Array(Some(items)) if items.len() <= MAX_LIST => items
                        .iter()
                        .map(|f| f.as_bytes().cloned())
                        .collect::<Option<Vec<Bytes>>>(),
                    _ => None,
                };
                match names {
                    Some(mut names) => {
                        // In byte order, as without `--cluster` (Lua's
                        // order follows Redis' locale).
                        names.sort();
                        self.sw_reply(conn, seq, ClusterReply::List(names))
                    }
                    None => self.sw_malformed(Some((conn, seq)), "list", &frame),
                }
            }
            SwCmd::Read { seq } => self.sw_read_answer(seq, &frame),
            SwCmd::Recreate => {
                if int.is_none() {
                    self.sw_malformed(None, "create", &frame);
                }
            }
            SwCmd::Live => {
                if !matches!(frame, Frame::Simple(_)) {
                    self.sw_malformed(None, "liveness SET", &frame);
                }
            }
            SwCmd::Sweep => match int {
                Some(n) if n > 0 => log::info!(
                    "cluster: removed {n} transient switch queues of nodes gone from Redis"
                ),
                Some(_) => {}
                None => self.sw_malformed(None, "sweep", &frame),
            },
        }
    }

    fn sw_reply(&mut self, conn: ConnId, seq: u64, reply: ClusterReply) {
        self.q.sw.done.push((conn, Polled::Cluster { seq, reply }));
    }

    fn sw_malformed(&mut self, call: Option<(ConnId, u64)>, what: &str, frame: &Frame) {
        self.stats.errors += 1;
        if self.stats.errors.is_power_of_two() {
            log::warn!(
                "cluster: Redis answered a switch {what} with {frame:?} ({} errors so far)",
                self.stats.errors
            );
        }
        if let Some((conn, seq)) = call {
            self.sw_reply(
                conn,
                seq,
                unavailable("Redis answered with what is not an answer"),
            );
        }
    }

    fn sw_read_failed(&mut self, seq: u64, why: &str) {
        let Some(conn) = self.q.sw.waits.get(&seq).map(|w| w.conn) else {
            return;
        };
        self.sw_finish(seq);
        self.sw_reply(conn, seq, unavailable(why));
    }

    fn sw_read_answer(&mut self, seq: u64, frame: &Frame) {
        let Some(w) = self.q.sw.waits.get_mut(&seq) else {
            return;
        };
        w.reading = false;
        let Some(t) = parse_read(&w.names, w.from, frame) else {
            self.stats.errors += 1;
            if self.stats.errors.is_power_of_two() {
                log::warn!(
                    "cluster: Redis answered a switch transfer with what is not a read's answer ({} errors so far)",
                    self.stats.errors
                );
            }
            self.sw_read_failed(seq, "Redis answered with what is not an answer");
            return;
        };
        if !t.messages.is_empty() || w.once {
            let conn = w.conn;
            self.sw_finish(seq);
            self.sw_reply(conn, seq, ClusterReply::Transfer(t));
            return;
        }
        if w.again {
            self.sw_read(seq);
        }
    }

    /// A notification (or a confirmed subscription) on the subscriber
    /// link; false when `ch` is not a switch queue's.
    pub(super) fn switch_notified(&mut self, ch: &[u8], confirmed: Option<bool>) -> bool {
        let Some(s) = &self.settings else {
            return false;
        };
        let mut p = switch_prefix(&s.prefix);
        p.extend_from_slice(b"n:");
        let Some(name) = ch.strip_prefix(&p[..]) else {
            return false;
        };
        if let Some(on) = confirmed {
            if on {
                self.q.notify_confirmed += 1;
            } else {
                self.q.notify_confirmed = self.q.notify_confirmed.saturating_sub(1);
            }
            if let Some(n) = self.q.sw.named.get_mut(name) {
                n.acks = n.acks.saturating_sub(1);
                if n.acks == 0 && n.listen == Listen::Asked {
                    n.listen = Listen::Yes;
                }
                if n.acks == 0 && n.listen == Listen::No && n.waits.is_empty() {
                    self.q.sw.named.remove(name);
                }
            }
            if !on {
                return true;
            }
        }
        let seqs: Vec<u64> = self
            .q
            .sw
            .named
            .get(name)
            .map(|n| n.waits.iter().copied().collect())
            .unwrap_or_default();
        for seq in seqs {
            self.sw_read(seq);
        }
        true
    }

    /// The subscriber link came back (or went): listened for again.
    pub(super) fn switch_resubscribe(&mut self) {
        for n in self.q.sw.named.values_mut() {
            n.listen = Listen::No;
            n.acks = 0;
        }
        self.q
            .sw
            .named
            .retain(|_, n| !n.waits.is_empty() || n.listen != Listen::No);
        let names: Vec<Bytes> = self.q.sw.named.keys().cloned().collect();
        self.sw_subscribe(&names);
    }

    /// The queue link went down: the calls it carried are answered 503
    /// (each was done in Redis or not); transfers wait on and read again
    /// once it is back, except those that were to answer at once.
    pub(super) fn switch_down(&mut self, fifo: &[super::queue_link::QCmd]) {
        for c in fifo {
            let super::queue_link::QCmd::Switch(c) = c else {
                continue;
            };
            if let Some((conn, seq)) = call_of(c) {
                self.sw_reply(
                    conn,
                    seq,
                    unavailable(
                        "the cluster's queue link to Redis went down before Redis answered; the call may or may not have been done",
                    ),
                );
            }
        }
        let once: Vec<u64> = self
            .q
            .sw
            .waits
            .iter()
            .filter(|(_, w)| w.once && w.reading)
            .map(|(s, _)| *s)
            .collect();
        for seq in once {
            self.sw_read_failed(seq, "the cluster's queue link to Redis went down");
        }
        for w in self.q.sw.waits.values_mut() {
            w.reading = false;
            w.again = false;
        }
        self.q.sw.live_at = None;
        self.q.sw.sweep_at = None;
    }

    /// The queue link is up (again): the liveness key, a sweep, and a read
    /// for every waiting transfer.
    pub(super) fn switch_link_ready(&mut self, now: Millis) {
        if !self.q.sw.active {
            return;
        }
        self.q.sw.live_at = Some(now);
        self.q.sw.sweep_at = Some(now);
        self.switch_timers(now);
        self.sw_destroy_orphans();
        self.sw_recreate();
        let seqs: Vec<u64> = self.q.sw.waits.keys().copied().collect();
        for seq in seqs {
            self.sw_read(seq);
        }
    }

    /// The switch timers' next deadline.
    pub(super) fn switch_deadline(&self) -> Option<Millis> {
        // Answers made without Redis (an id no entry can have) go out at
        // the next turn.
        let now = (!self.q.sw.done.is_empty()).then_some(0);
        self.q
            .sw
            .live_at
            .into_iter()
            .chain(now)
            .chain(self.q.sw.sweep_at)
            .min()
    }

    /// Refreshes the liveness key, sweeps the transient queues of nodes
    /// gone, unsubscribes from queues no transfer waited on at two sweeps
    /// in a row.
    pub(super) fn switch_timers(&mut self, now: Millis) {
        let Some(s) = &self.settings else {
            return;
        };
        let p = switch_prefix(&s.prefix);
        if !matches!(super::queue_link::queue_state(&self.links), State::Up(_)) {
            return;
        }
        if self.q.sw.live_at.is_some_and(|at| at <= now) {
            self.sw_live(now);
        }
        if self.q.sw.sweep_at.is_some_and(|at| at <= now) {
            if let Some((sha, p)) = self.sw_ready(Script::Sweep) {
                self.sw_eval(&sha, &[&p], SwCmd::Sweep);
            }
            self.q.sw.sweep_at = Some(now + SWEEP_EVERY_MS);
            self.sw_unsubscribe_idle(&p);
        }
    }

    fn sw_unsubscribe_idle(&mut self, p: &[u8]) {
        let [sub, _, _] = &mut self.links;
        let up = matches!(sub.state, State::Up(_));
        let mut gone = Vec::new();
        for (name, n) in &mut self.q.sw.named {
            if !n.waits.is_empty() {
                n.idle = false;
                continue;
            }
            if !n.idle {
                n.idle = true;
                continue;
            }
            if n.listen != Listen::No {
                if up {
                    let mut ch = p.to_vec();
                    ch.extend_from_slice(b"n:");
                    ch.extend_from_slice(name);
                    resp::command(&mut sub.out, &[b"UNSUBSCRIBE", &ch]);
                    n.acks += 1;
                }
                n.listen = Listen::No;
            }
            if n.acks == 0 {
                gone.push(name.clone());
            }
        }
        for name in gone {
            self.q.sw.named.remove(&name);
        }
    }

    /// The switch's timers, and what they or a closed link answered.
    pub fn switch_tick(&mut self, now: Millis, out: &mut (impl Outbox + ?Sized)) {
        if !self.is_on() {
            return;
        }
        self.switch_timers(now);
        self.switch_deliver(out);
        self.flush(out);
    }

    /// Hands the answers of switch calls to their connections.
    pub fn switch_deliver(&mut self, out: &mut (impl Outbox + ?Sized)) {
        for (conn, polled) in std::mem::take(&mut self.q.sw.done) {
            out.answer(conn, crate::broker::Answer::Switch(&polled));
        }
    }

    /// Transfers waiting here (parked on Redis).
    pub fn switch_waits(&self) -> usize {
        self.q.sw.waits.len()
    }

    /// Queues whose notifications Redis has confirmed for this node.
    pub fn switch_listening(&self) -> usize {
        self.q
            .sw
            .named
            .values()
            .filter(|n| n.listen == Listen::Yes)
            .count()
    }
}

/// The waiting call a command answers, if any.
fn call_of(cmd: &SwCmd) -> Option<(ConnId, u64)> {
    match cmd {
        SwCmd::Create { conn, seq, .. }
        | SwCmd::Send { conn, seq, .. }
        | SwCmd::Ack { conn, seq }
        | SwCmd::List { conn, seq } => Some((*conn, *seq)),
        SwCmd::Destroy { call, .. } => *call,
        SwCmd::Read { .. } | SwCmd::Recreate | SwCmd::Live | SwCmd::Sweep => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bulk, confirm, conn, pong, sent_to, up};
    use super::*;
    use crate::broker::channels::Channels;
    use crate::broker::RecordingOutbox;

    const SUB: u64 = 1 << 2;
    const QUEUE: u64 = 1 << 2 | 2;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn feed(c: &mut Cluster, tag: u64, frame: Frame, out: &mut RecordingOutbox) {
        let mut ch = Channels::default();
        assert!(c.on_frame(tag, frame, 0, &mut ch, out));
    }

    fn ok_frame() -> Frame {
        Frame::Simple(b("OK"))
    }

    /// A read's answer: (name's index from 1, message number, kind,
    /// reply-to or queue, response id, payload).
    fn read_answer(entries: &[(i64, u64, &str, &str, &str, &str)]) -> Frame {
        let mut items = Vec::new();
        for (i, n, k, r, id, p) in entries {
            items.push(Frame::Integer(*i));
            items.push(bulk(format!("0-{}", n + 1).as_bytes()));
            for s in [k, r, id, p] {
                items.push(bulk(s.as_bytes()));
            }
        }
        Frame::Array(Some(items))
    }

    fn polled(out: &RecordingOutbox) -> Vec<(u64, ClusterReply)> {
        out.polled
            .iter()
            .filter_map(|(_, p)| match p {
                Polled::Cluster { seq, reply } => Some((*seq, reply.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_namespace_and_the_ids_of_entries() {
        assert_eq!(switch_prefix(b"switchboard:"), b"mswitchboard:");
        assert_eq!(switch_prefix(b"m:"), b"Mm:");
        for p in [&b"sb:"[..], b"m", b"q:", b"M"] {
            let sp = switch_prefix(p);
            assert!(!sp.starts_with(p));
            assert!(!sp.starts_with(&super::super::queue_link::queue_prefix(p)));
        }
        assert_eq!(entry_id(0).as_deref(), Some("0-1"));
        assert_eq!(entry_id(u64::MAX), None);
        for n in [0, 1, 17, u64::MAX - 1] {
            assert_eq!(message_number(entry_id(n).unwrap().as_bytes()), Some(n));
        }
        for junk in [
            &b"0-0"[..],
            b"1-5",
            b"0-",
            b"0-x",
            b"",
            b"0-99999999999999999999",
        ] {
            assert_eq!(message_number(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn read_answers_are_read_and_junk_is_refused() {
        let names = [b("a"), b("b")];
        let good = read_answer(&[
            (1, 3, "q", "reply", "", "hello"),
            (2, 0, "r", "a", "3", "HELLO"),
        ]);
        let t = parse_read(&names, None, &good).unwrap();
        assert_eq!(t.next, 3);
        assert_eq!(
            t.messages,
            vec![
                (
                    (b("a"), 3),
                    Message {
                        payload: b("hello"),
                        kind: Kind::Request(b("reply"))
                    }
                ),
                (
                    (b("b"), 0),
                    Message {
                        payload: b("HELLO"),
                        kind: Kind::Response((b("a"), 3))
                    }
                ),
            ]
        );
        let empty = Frame::Array(Some(Vec::new()));
        assert_eq!(parse_read(&names, Some(7), &empty).unwrap().next, 7);
        assert_eq!(parse_read(&names, None, &empty).unwrap().next, -1);
        let junk = [
            Frame::Integer(0),
            Frame::Array(None),
            Frame::Array(Some(vec![Frame::Integer(1)])),
            read_answer(&[(3, 0, "q", "", "", "x")]),
            read_answer(&[(0, 0, "q", "", "", "x")]),
            read_answer(&[(1, 0, "z", "", "", "x")]),
            read_answer(&[(1, 0, "r", "a", "x", "x")]),
            // At or below the transfer's `from`.
            read_answer(&[(1, 0, "q", "", "", "x")]),
        ];
        for (i, j) in junk.iter().enumerate() {
            assert!(parse_read(&names, Some(0), j).is_none(), "{i}: {j:?}");
        }
        let many: Vec<(i64, u64, &str, &str, &str, &str)> = (0..=MAX_READ as u64)
            .map(|n| (1, n, "q", "", "", ""))
            .collect();
        assert!(parse_read(&names, None, &read_answer(&many)).is_none());
    }

    #[test]
    fn a_call_goes_to_redis_behind_the_liveness_key_and_its_answer_to_the_caller() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seq = c.switch_create(conn(1), &b("svc"), None).unwrap();
        c.flush(&mut out);
        let sha = "c".repeat(40);
        assert_eq!(
            sent_to(&out, 110),
            format!(
                "*5\r\n$3\r\nSET\r\n$25\r\nmsb:live:aaaaaaaaaaaaaaaa\r\n$1\r\n1\r\n$2\r\nPX\r\n$4\r\n6000\r\n\
                 *8\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n0\r\n$4\r\nmsb:\r\n$3\r\nsvc\r\n$1\r\np\r\n$16\r\naaaaaaaaaaaaaaaa\r\n$6\r\n100000\r\n"
            )
        );
        let mut out = RecordingOutbox::default();
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        assert!(out.polled.is_empty());
        feed(&mut c, QUEUE, Frame::Integer(1), &mut out);
        assert_eq!(out.polled.len(), 1);
        assert_eq!(out.polled[0].0, conn(1));
        assert_eq!(polled(&out), [(seq, ClusterReply::Created(b("svc")))]);
        // A send: its id, a drop, a refusal.
        let m = Message {
            payload: b("hi"),
            kind: Kind::Request(b("r")),
        };
        let mut out = RecordingOutbox::default();
        let s1 = c
            .switch_send(conn(1), &b("svc"), b"me", &m, (1000, 2000))
            .unwrap();
        let s2 = c
            .switch_send(conn(1), &b("no"), b"me", &m, (1000, 2000))
            .unwrap();
        let s3 = c
            .switch_send(conn(1), &b("svc"), b"me", &m, (1000, 2000))
            .unwrap();
        c.flush(&mut out);
        let written = sent_to(&out, 110);
        assert_eq!(written.matches("EVALSHA").count(), 3);
        assert!(written.contains(&"e".repeat(40)));
        assert!(
            written.contains("$4\r\n1000\r\n$4\r\n2000\r\n"),
            "{written}"
        );
        for f in [Frame::Integer(4), Frame::Integer(-1), Frame::Integer(-2)] {
            feed(&mut c, QUEUE, f, &mut out);
        }
        assert_eq!(
            polled(&out),
            [
                (s1, ClusterReply::Sent(Some((b("svc"), 4)))),
                (s2, ClusterReply::Sent(None)),
                (s3, ClusterReply::Unavailable("queue full".into())),
            ]
        );
        assert_eq!(c.q.pending_bytes, 0);
        // Over the pending bytes (1024 in these settings): refused at once.
        let big = Message {
            payload: Bytes::from(vec![b'x'; 2000]),
            kind: Kind::Request(Bytes::new()),
        };
        assert!(c
            .switch_send(conn(1), &b("svc"), b"me", &big, (1 << 20, 1 << 20))
            .is_err());
        // An ack of an id with no entry id is answered here.
        let mut out = RecordingOutbox::default();
        let s = c.switch_ack(conn(1), b"svc", u64::MAX).unwrap();
        assert_eq!(c.next_deadline(), Some(0));
        c.switch_tick(0, &mut out);
        assert_eq!(polled(&out), [(s, ClusterReply::Done)]);
        assert_eq!(c.stats().errors, 0);
    }

    #[test]
    fn a_transfer_with_nothing_listens_and_reads_again_when_notified() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seq = c.switch_transfer(conn(2), None, true, vec![b("svc"), b("svc"), b("bad name")]);
        let seq = seq.unwrap();
        c.flush(&mut out);
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$9\r\nSUBSCRIBE\r\n$9\r\nmsb:n:svc\r\n"
        );
        let sha = "g".repeat(40);
        let q = sent_to(&out, 110);
        assert!(
            q.ends_with(&format!(
                "*8\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n0\r\n$4\r\nmsb:\r\n$1\r\n-\r\n$3\r\n256\r\n$7\r\n4194304\r\n$3\r\nsvc\r\n"
            )),
            "{q}"
        );
        let mut out = RecordingOutbox::default();
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        feed(&mut c, QUEUE, read_answer(&[]), &mut out);
        assert!(out.polled.is_empty());
        assert_eq!(c.switch_waits(), 1);
        // The subscription's confirmation reads again; a notification
        // meanwhile brings one more read after it.
        feed(&mut c, SUB, confirm("subscribe", "msb:n:svc", 1), &mut out);
        assert_eq!(c.switch_listening(), 1);
        assert_eq!(c.stats().confirmed, 0, "not counted as a channel");
        assert_eq!(sent_to(&out, 110).matches("EVALSHA").count(), 1);
        let note = Frame::Array(Some(vec![bulk(b"message"), bulk(b"msb:n:svc"), bulk(b"0")]));
        feed(&mut c, SUB, note, &mut out);
        assert_eq!(sent_to(&out, 110).matches("EVALSHA").count(), 1);
        feed(&mut c, QUEUE, read_answer(&[]), &mut out);
        assert_eq!(sent_to(&out, 110).matches("EVALSHA").count(), 2);
        assert!(out.polled.is_empty());
        feed(
            &mut c,
            QUEUE,
            read_answer(&[(1, 0, "q", "back", "", "job")]),
            &mut out,
        );
        let [(s, ClusterReply::Transfer(t))] = &polled(&out)[..] else {
            panic!("{:?}", out.polled)
        };
        assert_eq!((*s, t.next, t.messages.len()), (seq, 0, 1));
        assert_eq!(c.switch_waits(), 0);
        // Nobody waits on it at two sweeps in a row: unsubscribed, then
        // forgotten once Redis confirms.
        let mut out = RecordingOutbox::default();
        c.switch_tick(SWEEP_EVERY_MS, &mut out);
        assert!(!sent_to(&out, 100).contains("UNSUBSCRIBE"));
        c.switch_tick(2 * SWEEP_EVERY_MS, &mut out);
        assert!(sent_to(&out, 100).contains("UNSUBSCRIBE"));
        assert_eq!(c.q.sw.named.len(), 1);
        let unsub = confirm("unsubscribe", "msb:n:svc", 0);
        feed(&mut c, SUB, unsub, &mut out);
        assert_eq!(c.q.sw.named.len(), 0);
    }

    #[test]
    fn a_transfer_that_may_not_wait_answers_with_its_first_read_and_a_cancel_forgets() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seq = c
            .switch_transfer(conn(2), Some(5), false, vec![b("a")])
            .unwrap();
        c.flush(&mut out);
        assert!(sent_to(&out, 100).is_empty(), "no subscription");
        assert!(sent_to(&out, 110).contains("$3\r\n0-7\r\n"));
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        feed(&mut c, QUEUE, read_answer(&[]), &mut out);
        assert_eq!(
            polled(&out),
            [(
                seq,
                ClusterReply::Transfer(Transferred {
                    messages: Vec::new(),
                    next: 5
                })
            )]
        );
        // Withdrawn before its answer: the answer is dropped.
        let mut out = RecordingOutbox::default();
        let seq = c
            .switch_transfer(conn(2), None, true, vec![b("a")])
            .unwrap();
        c.switch_cancel(seq);
        feed(
            &mut c,
            QUEUE,
            read_answer(&[(1, 0, "q", "", "", "x")]),
            &mut out,
        );
        assert!(out.polled.is_empty());
        assert_eq!(c.switch_waits(), 0);
    }

    #[test]
    fn the_queue_link_going_answers_its_calls_and_transfers_read_again_after() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let m = Message {
            payload: b("x"),
            kind: Kind::Request(Bytes::new()),
        };
        let sent = c
            .switch_send(conn(1), &b("q"), b"me", &m, (1000, 1000))
            .unwrap();
        let waiting = c
            .switch_transfer(conn(2), None, true, vec![b("q")])
            .unwrap();
        let once = c
            .switch_transfer(conn(3), None, false, vec![b("q")])
            .unwrap();
        c.link_closed(QUEUE, 10);
        let mut out = RecordingOutbox::default();
        c.switch_deliver(&mut out);
        let got = polled(&out);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got
            .iter()
            .all(|(s, r)| [sent, once].contains(s) && matches!(r, ClusterReply::Unavailable(_))));
        assert_eq!(c.switch_waits(), 1);
        assert!(c.switch_unavailable().is_some());
        assert!(c.switch_create(conn(1), &b("q"), None).is_none());
        // Back: the liveness key, a sweep and the waiting transfer's read.
        c.on_timers(10_000);
        assert_eq!(c.take_links().len(), 1);
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let tag = 2 << 2 | 2;
        assert!(c.link_up(tag, conn(111), 0, &mut out));
        assert!(c.on_frame(tag, pong(), 0, &mut ch, &mut out));
        for x in b'a'..=b'i' {
            assert!(c.on_frame(tag, bulk(&[x; 40]), 0, &mut ch, &mut out));
        }
        assert!(c.queues_up());
        let q = sent_to(&out, 111);
        assert!(q.contains("SET"), "{q}");
        assert!(q.contains(&"i".repeat(40)), "the sweep: {q}");
        assert!(q.contains(&"g".repeat(40)), "the read: {q}");
        let mut out = RecordingOutbox::default();
        assert!(c.on_frame(tag, ok_frame(), 0, &mut ch, &mut out));
        assert!(c.on_frame(tag, Frame::Integer(0), 0, &mut ch, &mut out));
        let found = read_answer(&[(1, 0, "q", "", "", "x")]);
        assert!(c.on_frame(tag, found, 0, &mut ch, &mut out));
        let got = polled(&out);
        assert!(
            matches!(&got[..], [(s, ClusterReply::Transfer(_))] if *s == waiting),
            "{got:?}"
        );
    }

    #[test]
    fn transient_queues_go_with_their_session_and_come_back_after_the_link() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seq = c.switch_create(conn(1), &b("r"), Some(&b("sess"))).unwrap();
        c.flush(&mut out);
        assert!(sent_to(&out, 110).contains("$23\r\nt aaaaaaaaaaaaaaaa sess\r\n"));
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        feed(&mut c, QUEUE, Frame::Integer(1), &mut out);
        assert_eq!(polled(&out), [(seq, ClusterReply::Created(b("r")))]);
        // Its session ends: a destroy of it, only if still its own.
        let mut out = RecordingOutbox::default();
        c.switch_session_ended(&b("sess"));
        c.flush(&mut out);
        let d = "d".repeat(40);
        assert!(sent_to(&out, 110).ends_with(&format!(
            "*6\r\n$7\r\nEVALSHA\r\n$40\r\n{d}\r\n$1\r\n0\r\n$4\r\nmsb:\r\n$1\r\nr\r\n$23\r\nt aaaaaaaaaaaaaaaa sess\r\n"
        )));
        feed(&mut c, QUEUE, Frame::Integer(1), &mut out);
        assert!(out.polled.is_empty());
        // Ended while the link is down: destroyed once it is back.
        c.switch_create(conn(1), &b("r2"), Some(&b("s2"))).unwrap();
        feed(&mut c, QUEUE, Frame::Integer(1), &mut out);
        c.switch_create(conn(1), &b("r3"), Some(&b("s3"))).unwrap();
        feed(&mut c, QUEUE, Frame::Integer(1), &mut out);
        c.link_closed(QUEUE, 10);
        c.switch_session_ended(&b("s2"));
        c.on_timers(10_000);
        c.take_links();
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        let tag = 2 << 2 | 2;
        assert!(c.link_up(tag, conn(111), 0, &mut out));
        assert!(c.on_frame(tag, pong(), 0, &mut ch, &mut out));
        for x in b'a'..=b'i' {
            assert!(c.on_frame(tag, bulk(&[x; 40]), 0, &mut ch, &mut out));
        }
        let q = sent_to(&out, 111);
        assert!(
            q.contains(&format!("{d}\r\n$1\r\n0\r\n$4\r\nmsb:\r\n$2\r\nr2\r\n")),
            "{q}"
        );
        let create = "c".repeat(40);
        assert!(
            q.contains(&format!(
                "{create}\r\n$1\r\n0\r\n$4\r\nmsb:\r\n$2\r\nr3\r\n"
            )),
            "{q}"
        );
        assert!(
            !q.contains("$2\r\nr2\r\n$21\r\nt aaaaaaaaaaaaaaaa s2\r\n$16"),
            "{q}"
        );
    }

    #[test]
    fn malformed_or_error_answers_are_counted_and_answered_503_never_panics() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let a = c.switch_create(conn(1), &b("a"), None).unwrap();
        let l = c.switch_list(conn(1), b"", false).unwrap();
        let t = c
            .switch_transfer(conn(2), None, true, vec![b("a")])
            .unwrap();
        let d = c.switch_destroy(conn(1), b"a").unwrap();
        let k = c.switch_ack(conn(1), b"a", 3).unwrap();
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        feed(&mut c, QUEUE, bulk(b"what"), &mut out);
        feed(
            &mut c,
            QUEUE,
            Frame::Array(Some(vec![Frame::Integer(1)])),
            &mut out,
        );
        feed(&mut c, QUEUE, Frame::Integer(1), &mut out);
        feed(&mut c, QUEUE, Frame::Error(b("WRONGTYPE no")), &mut out);
        feed(&mut c, QUEUE, Frame::Array(None), &mut out);
        let got = polled(&out);
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [a, l, t, d, k]);
        assert!(got
            .iter()
            .all(|(_, r)| matches!(r, ClusterReply::Unavailable(_))));
        assert_eq!(c.stats().errors, 5);
        assert_eq!(c.switch_waits(), 0);
        // A list of names.
        let mut out = RecordingOutbox::default();
        let l = c.switch_list(conn(1), b"", true).unwrap();
        feed(
            &mut c,
            QUEUE,
            Frame::Array(Some(vec![bulk(b"x"), bulk(b"y")])),
            &mut out,
        );
        assert_eq!(
            polled(&out),
            [(l, ClusterReply::List(vec![b("x"), b("y")]))]
        );
    }

    #[test]
    fn a_read_answer_may_hold_as_many_messages_as_a_read_asks_for() {
        let names = [b("a")];
        for n in [8, MAX_READ as u64] {
            let all: Vec<(i64, u64, &str, &str, &str, &str)> =
                (0..n).map(|i| (1, i, "q", "", "", "")).collect();
            let t = parse_read(&names, None, &read_answer(&all)).unwrap();
            assert_eq!(t.messages.len() as u64, n);
        }
    }

    #[test]
    fn the_queue_link_loads_every_script_in_its_place() {
        use super::super::queue_link::{SEND_SCRIPT, TAKE_SCRIPT};
        let mut c = Cluster::new(Some(super::super::tests::settings()), *b"aaaaaaaaaaaaaaaa");
        c.on_timers(0);
        c.take_links();
        let mut out = RecordingOutbox::default();
        assert!(c.link_up(QUEUE, conn(110), 0, &mut out));
        let mut expected = String::from("*1\r\n$4\r\nPING\r\n");
        let (destroy, sweep) = (format!("{DROP}{DESTROY}"), format!("{DROP}{SWEEP}"));
        // The places of `Script`, after the line queues' two.
        let all = [
            SEND_SCRIPT,
            TAKE_SCRIPT,
            CREATE,
            &destroy,
            SEND,
            ACK,
            READ,
            LIST,
            &sweep,
        ];
        assert_eq!(all[Script::Sweep as usize], sweep);
        for s in all {
            expected.push_str(&format!(
                "*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n${}\r\n{s}\r\n",
                s.len()
            ));
        }
        assert_eq!(sent_to(&out, 110), expected);
    }

    #[test]
    fn the_liveness_key_is_set_every_two_seconds_and_the_sweep_runs_every_three() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        assert_eq!(c.next_deadline(), None, "no switch call yet");
        c.switch_create(conn(1), &b("a"), None).unwrap();
        // The second call sets no second key.
        c.switch_create(conn(1), &b("b"), None).unwrap();
        c.flush(&mut out);
        assert_eq!(sent_to(&out, 110).matches("SET").count(), 1);
        // The first sweep at once, then the key every 2 s and the sweep
        // every 3 s, each not before its time.
        assert_eq!(c.next_deadline(), Some(0));
        let sweep = "i".repeat(40);
        let mut seen = Vec::new();
        for now in [0, 1999, 2000, 2999, 3000, 3999, 4000] {
            let mut out = RecordingOutbox::default();
            c.switch_tick(now, &mut out);
            let q = sent_to(&out, 110);
            seen.push((now, q.matches("SET").count(), q.matches(&sweep).count()));
        }
        assert_eq!(
            seen,
            [
                (0, 0, 1),
                (1999, 0, 0),
                (2000, 1, 0),
                (2999, 0, 0),
                (3000, 0, 1),
                (3999, 0, 0),
                (4000, 1, 0)
            ]
        );
        assert_eq!(c.next_deadline(), Some(6000));
    }

    #[test]
    fn a_switch_send_fills_the_pending_bytes_exactly_and_gives_them_back() {
        // The estimate: payload + name + reply-to + session + 256; the
        // bound in these settings is 1024.
        let message = |len: usize| Message {
            payload: Bytes::from(vec![b'x'; len]),
            kind: Kind::Request(b("rr")),
        };
        for (len, goes) in [(762, true), (763, false)] {
            let mut out = RecordingOutbox::default();
            let mut c = up(&mut out);
            let sent = c.switch_send(conn(1), &b("q"), b"sss", &message(len), (1 << 20, 1 << 20));
            assert_eq!(sent.is_ok(), goes, "a payload of {len}");
        }
        // Once written, the command's own bytes are pending until Redis
        // answers it, with an id or with an error.
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        c.switch_create(conn(1), &b("q"), None).unwrap();
        c.flush(&mut out);
        let mut out = RecordingOutbox::default();
        c.switch_send(conn(1), &b("q"), b"s", &message(10), (1000, 1000))
            .unwrap();
        c.switch_send(conn(1), &b("q"), b"s", &message(10), (1000, 1000))
            .unwrap();
        c.flush(&mut out);
        let written = sent_to(&out, 110).len();
        assert_eq!(c.q.pending_bytes, written);
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        feed(&mut c, QUEUE, Frame::Integer(1), &mut out);
        assert_eq!(c.q.pending_bytes, written);
        feed(&mut c, QUEUE, Frame::Integer(0), &mut out);
        assert_eq!(c.q.pending_bytes, written / 2);
        feed(&mut c, QUEUE, Frame::Error(b("OOM no")), &mut out);
        assert_eq!(c.q.pending_bytes, 0);
    }

    #[test]
    fn a_create_over_the_queue_limit_says_so() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seq = c.switch_create(conn(1), &b("a"), None).unwrap();
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        feed(&mut c, QUEUE, Frame::Integer(-1), &mut out);
        let why = format!("too many queues (the limit is {MAX_QUEUES})");
        assert_eq!(polled(&out), [(seq, ClusterReply::Unavailable(why))]);
        assert_eq!(c.stats().errors, 0);
    }

    #[test]
    fn calls_are_numbered_one_after_the_other() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seqs = [
            c.switch_create(conn(1), &b("a"), None).unwrap(),
            c.switch_destroy(conn(1), b"a").unwrap(),
            c.switch_ack(conn(1), b"a", 0).unwrap(),
            c.switch_list(conn(1), b"", false).unwrap(),
            c.switch_transfer(conn(1), None, false, vec![b("a")])
                .unwrap(),
        ];
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    /// A transfer by conn 2 that waits on `svc`: behind the liveness key,
    /// its first read found nothing. Its call number.
    fn waiting_on_svc(c: &mut Cluster, out: &mut RecordingOutbox) -> u64 {
        let seq = c
            .switch_transfer(conn(2), None, true, vec![b("svc")])
            .unwrap();
        feed(c, QUEUE, ok_frame(), out);
        feed(c, QUEUE, read_answer(&[]), out);
        seq
    }

    #[test]
    fn a_queue_let_go_before_its_subscription_is_confirmed_is_unsubscribed_by_the_sweep() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seq = waiting_on_svc(&mut c, &mut out);
        c.switch_cancel(seq);
        feed(&mut c, SUB, confirm("subscribe", "msb:n:svc", 1), &mut out);
        assert_eq!(c.switch_listening(), 1);
        let mut out = RecordingOutbox::default();
        c.switch_tick(0, &mut out);
        c.switch_tick(SWEEP_EVERY_MS, &mut out);
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$11\r\nUNSUBSCRIBE\r\n$9\r\nmsb:n:svc\r\n"
        );
    }

    #[test]
    fn a_queue_waited_on_again_before_its_unsubscribe_is_confirmed_waits_for_its_subscription() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        let seq = waiting_on_svc(&mut c, &mut out);
        feed(&mut c, SUB, confirm("subscribe", "msb:n:svc", 1), &mut out);
        feed(&mut c, QUEUE, read_answer(&[]), &mut out);
        c.switch_cancel(seq);
        c.switch_tick(0, &mut out);
        c.switch_tick(SWEEP_EVERY_MS, &mut out);
        // The two sweeps and the liveness key between them.
        for f in [Frame::Integer(0), ok_frame(), Frame::Integer(0)] {
            feed(&mut c, QUEUE, f, &mut out);
        }
        assert_eq!(c.switch_listening(), 0);
        assert_eq!(c.queue_in_flight(), 0);
        // Waited on again before Redis confirms the unsubscribe.
        let mut out = RecordingOutbox::default();
        c.switch_transfer(conn(3), None, true, vec![b("svc")])
            .unwrap();
        c.flush(&mut out);
        assert_eq!(
            sent_to(&out, 100),
            "*2\r\n$9\r\nSUBSCRIBE\r\n$9\r\nmsb:n:svc\r\n"
        );
        feed(&mut c, QUEUE, read_answer(&[]), &mut out);
        // The unsubscribe's confirmation is not the subscription's.
        let mut out = RecordingOutbox::default();
        feed(
            &mut c,
            SUB,
            confirm("unsubscribe", "msb:n:svc", 0),
            &mut out,
        );
        assert_eq!(c.switch_listening(), 0);
        assert!(sent_to(&out, 110).is_empty());
        feed(&mut c, SUB, confirm("subscribe", "msb:n:svc", 1), &mut out);
        assert_eq!(c.switch_listening(), 1);
        assert_eq!(sent_to(&out, 110).matches("EVALSHA").count(), 1, "a read");
    }

    #[test]
    fn the_subscriber_link_coming_back_listens_again_for_the_queues_waited_on() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        // "done": its transfer answered; "svc": one waiting.
        let done = c
            .switch_transfer(conn(2), None, true, vec![b("done")])
            .unwrap();
        c.switch_transfer(conn(3), None, true, vec![b("svc")])
            .unwrap();
        feed(&mut c, QUEUE, ok_frame(), &mut out);
        feed(
            &mut c,
            QUEUE,
            read_answer(&[(1, 0, "q", "", "", "x")]),
            &mut out,
        );
        feed(&mut c, QUEUE, read_answer(&[]), &mut out);
        assert_eq!(polled(&out)[0].0, done);
        feed(&mut c, SUB, confirm("subscribe", "msb:n:done", 1), &mut out);
        feed(&mut c, SUB, confirm("subscribe", "msb:n:svc", 2), &mut out);
        assert_eq!(c.switch_listening(), 2);
        c.link_closed(SUB, 10);
        assert_eq!(c.switch_listening(), 0);
        c.on_timers(110);
        assert_eq!(c.take_links().len(), 1);
        let tag = 2 << 2;
        let mut ch = Channels::default();
        let mut out = RecordingOutbox::default();
        assert!(c.link_up(tag, conn(120), 110, &mut out));
        assert!(c.on_frame(tag, pong(), 110, &mut ch, &mut out));
        assert_eq!(
            sent_to(&out, 120),
            "*1\r\n$4\r\nPING\r\n*2\r\n$9\r\nSUBSCRIBE\r\n$9\r\nmsb:n:svc\r\n"
        );
        assert!(c.on_frame(
            tag,
            confirm("subscribe", "msb:n:svc", 1),
            110,
            &mut ch,
            &mut out
        ));
        assert_eq!(c.switch_listening(), 1);
    }

    #[test]
    fn a_call_while_the_queue_link_is_down_is_told_why() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        assert_eq!(c.switch_unavailable(), None);
        c.link_closed(QUEUE, 10);
        assert_eq!(
            c.switch_unavailable(),
            Some("the cluster's queue link to Redis is down; try again")
        );
    }

    #[test]
    fn a_node_keeps_the_owners_of_at_most_max_queues_transient_queues() {
        let mut out = RecordingOutbox::default();
        let mut c = up(&mut out);
        for i in 0..MAX_QUEUES - 1 {
            c.q.sw.owner_of.insert(Bytes::from(format!("q{i}")), b("s"));
        }
        c.switch_create(conn(1), &b("last"), Some(&b("s"))).unwrap();
        c.switch_create(conn(1), &b("over"), Some(&b("s"))).unwrap();
        for f in [ok_frame(), Frame::Integer(1), Frame::Integer(1)] {
            feed(&mut c, QUEUE, f, &mut out);
        }
        // Both made, the second not kept for its session's end.
        let made: Vec<ClusterReply> = polled(&out).into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            made,
            [
                ClusterReply::Created(b("last")),
                ClusterReply::Created(b("over"))
            ]
        );
        assert_eq!(c.q.sw.owner_of.len(), MAX_QUEUES);
        assert!(c.q.sw.owner_of.contains_key(&b("last")));
        assert!(!c.q.sw.owner_of.contains_key(&b("over")));
    }
}
