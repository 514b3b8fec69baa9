//! Scale tests of the HTTP bus, against the real server binary:
//!
//! - 10,000 subscribers, spread over several client processes, each receive
//!   every message of a burst exactly once and in order;
//! - a subscriber that never reads does not hold back 1,000 others, the
//!   server's memory stays bounded, and the slow-subscriber policy (drop and
//!   count, or disconnect) is applied to it alone.
//!
//! The assertions are functional (what arrived, what was counted, how much
//! memory), never about timing; deadlines only stop a hung test.
//!
//! Clients are non-blocking sockets on one `mio` poll each. Every message of a
//! stream has a body of one fixed length that starts with its sequence number,
//! so each framing (chunked multipart, HTTP/1.0 multipart, event stream) has a
//! fixed frame length and a subscriber checks a frame by comparing it with the
//! expected bytes.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{read_until, send, Server};
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;

/// The heavy tests of this file run one at a time (the machine may have two
/// cores; two of them at once would measure each other).
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Descriptors the server needs for the largest test here: 10,000
/// subscribers and a few more.
const OPEN_FILES_NEEDED: u64 = 10_240;

/// Raises the open-file limit (for this process and the processes it
/// starts, the server among them) to the hard limit, and fails with what to
/// do when that is still too low.
fn enough_open_files() {
    let soft = sys::raise_open_file_limit().expect("raise the open-file limit");
    assert!(
        soft >= OPEN_FILES_NEEDED,
        "the server must hold {OPEN_FILES_NEEDED} descriptors and the open-file limit is \
         {soft} (the hard limit): raise it (`ulimit -Hn 20000` as root; .ci/run checks it)"
    );
}

const BOUNDARY_LINE: &[u8] = b"--00MsgBus00\r\n";
/// Digits of the sequence number at the start of every stream body.
const SEQ_DIGITS: usize = 8;
/// The sequence number of the message that ends a stream.
const END: u64 = 99_999_999;

// ---------------------------------------------------------------------------
// Sockets with a chosen source address (std cannot bind before connecting).

mod sys {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::raw::{c_int, c_void};

    const AF_INET: c_int = 2;
    const SOCK_STREAM: c_int = 1;
    const SOCK_NONBLOCK: c_int = 0o4000;
    const SOCK_CLOEXEC: c_int = 0o2000000;
    const SOL_SOCKET: c_int = 1;
    const SO_RCVBUF: c_int = 8;
    const IPPROTO_IP: c_int = 0;
    const IP_BIND_ADDRESS_NO_PORT: c_int = 24;
    const EINPROGRESS: i32 = 115;

    #[repr(C)]
    struct SockaddrIn {
        family: u16,
        port: [u8; 2],
        addr: [u8; 4],
        zero: [u8; 8],
    }

    impl SockaddrIn {
        fn new(ip: Ipv4Addr, port: u16) -> SockaddrIn {
            SockaddrIn {
                family: AF_INET as u16,
                port: port.to_be_bytes(),
                addr: ip.octets(),
                zero: [0; 8],
            }
        }
    }

    const RLIMIT_NOFILE: c_int = 7;

    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }

    extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut Rlimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const Rlimit) -> c_int;
        fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
        fn bind(fd: c_int, addr: *const SockaddrIn, len: u32) -> c_int;
        fn connect(fd: c_int, addr: *const SockaddrIn, len: u32) -> c_int;
        fn setsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            len: u32,
        ) -> c_int;
    }

    fn set_int(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
        // SAFETY: `value` lives across the call and its size is passed.
        let rc = unsafe {
            setsockopt(
                fd,
                level,
                name,
                (&value as *const c_int).cast(),
                std::mem::size_of::<c_int>() as u32,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Raises this process's soft open-file limit to its hard limit (the
    /// server and the workers it starts inherit it); returns the new soft
    /// limit.
    pub fn raise_open_file_limit() -> io::Result<u64> {
        let mut lim = Rlimit { cur: 0, max: 0 };
        // SAFETY: `lim` is a valid rlimit for the kernel to fill.
        if unsafe { getrlimit(RLIMIT_NOFILE, &mut lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.cur < lim.max {
            let want = Rlimit {
                cur: lim.max,
                max: lim.max,
            };
            // SAFETY: a valid rlimit, read by the kernel.
            if unsafe { setrlimit(RLIMIT_NOFILE, &want) } != 0 {
                return Err(io::Error::last_os_error());
            }
            lim.cur = lim.max;
        }
        Ok(lim.cur)
    }

    /// A TCP connection to `dst` from `src` (port chosen at connect time).
    /// Non-blocking sockets return while the connect is under way.
    /// `rcvbuf` sets SO_RCVBUF before connecting, so the window is small
    /// from the start.
    pub fn connect_from(
        src: Ipv4Addr,
        dst: SocketAddrV4,
        nonblocking: bool,
        rcvbuf: Option<i32>,
    ) -> io::Result<TcpStream> {
        let mut ty = SOCK_STREAM | SOCK_CLOEXEC;
        if nonblocking {
            ty |= SOCK_NONBLOCK;
        }
        // SAFETY: plain system call; the descriptor is owned right below.
        let fd = unsafe { socket(AF_INET, ty, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_int(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)?;
        if let Some(size) = rcvbuf {
            set_int(fd, SOL_SOCKET, SO_RCVBUF, size)?;
        }
        let local = SockaddrIn::new(src, 0);
        let len = std::mem::size_of::<SockaddrIn>() as u32;
        // SAFETY: `local` is a valid sockaddr_in of `len` bytes.
        if unsafe { bind(fd, &local, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = SockaddrIn::new(*dst.ip(), dst.port());
        // SAFETY: `remote` is a valid sockaddr_in of `len` bytes.
        if unsafe { connect(fd, &remote, len) } != 0 {
            let e = io::Error::last_os_error();
            if !(nonblocking && e.raw_os_error() == Some(EINPROGRESS)) {
                return Err(e);
            }
        }
        let s = TcpStream::from(owned);
        s.set_nodelay(true)?;
        Ok(s)
    }
}

// ---------------------------------------------------------------------------
// Expected frames.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// HTTP/1.1: multipart in chunked coding.
    Chunked = 0,
    /// HTTP/1.0: multipart as a plain stream.
    Plain = 1,
    /// `Accept: text/event-stream`.
    Sse = 2,
}

impl Kind {
    fn nth(i: usize) -> Kind {
        [Kind::Chunked, Kind::Plain, Kind::Sse][i % 3]
    }

    fn request(self, channel: &str) -> Vec<u8> {
        match self {
            Kind::Chunked => format!("GET /msgbus/{channel} HTTP/1.1\r\nHost: scale\r\n\r\n"),
            Kind::Plain => format!("GET /msgbus/{channel} HTTP/1.0\r\n\r\n"),
            Kind::Sse => format!(
                "GET /msgbus/{channel} HTTP/1.1\r\nHost: scale\r\nAccept: text/event-stream\r\n\r\n"
            ),
        }
        .into_bytes()
    }

    /// What follows the response head before the first message.
    fn opening(self) -> &'static [u8] {
        match self {
            Kind::Chunked => b"e\r\n--00MsgBus00\r\n\r\n",
            Kind::Plain => BOUNDARY_LINE,
            Kind::Sse => b"retry: 3000\n: subscribed\n\n",
        }
    }
}

/// A stream body: the sequence number, then filler up to `len` bytes
/// (no line breaks, so an event stream carries it as one `data:` line).
fn body(seq: u64, len: usize) -> Vec<u8> {
    let mut b = format!("{seq:0width$}", width = SEQ_DIGITS).into_bytes();
    let filler = b"-abcdefghijklmnopqrstuvwxyz0123456789";
    while b.len() < len {
        b.push(filler[b.len() % filler.len()]);
    }
    b.truncate(len);
    b
}

/// The exact frame of one stream message for one kind of subscriber, with the
/// offset of the sequence digits.
struct Template {
    frame: Vec<u8>,
    seq_at: usize,
}

impl Template {
    fn new(kind: Kind, channel: &str, content_type: &str, body_len: usize) -> Template {
        let b = body(0, body_len);
        let (mut frame, mut seq_at) = match kind {
            Kind::Chunked | Kind::Plain => {
                let head =
                    format!("Content-Type: {content_type}\r\nContent-Length: {body_len}\r\n\r\n");
                let mut part = head.clone().into_bytes();
                part.extend_from_slice(&b);
                part.extend_from_slice(b"\r\n");
                part.extend_from_slice(BOUNDARY_LINE);
                (part, head.len())
            }
            Kind::Sse => {
                let head = format!(": channel={channel} type={content_type}\ndata: ");
                let mut ev = head.clone().into_bytes();
                ev.extend_from_slice(&b);
                ev.extend_from_slice(b"\n\n");
                (ev, head.len())
            }
        };
        if kind == Kind::Chunked {
            let size = format!("{:x}\r\n", frame.len()).into_bytes();
            seq_at += size.len();
            frame.splice(0..0, size);
            frame.extend_from_slice(b"\r\n");
        }
        Template { frame, seq_at }
    }

    /// The sequence number of `frame` (exactly one frame long), or why it is
    /// not a frame of this stream.
    fn check(&self, frame: &[u8]) -> Result<u64, String> {
        let digits = self.seq_at..self.seq_at + SEQ_DIGITS;
        if frame[..digits.start] != self.frame[..digits.start]
            || frame[digits.end..] != self.frame[digits.end..]
        {
            return Err(format!(
                "unexpected frame {:?}, wanted one like {:?}",
                String::from_utf8_lossy(&frame[..frame.len().min(120)]),
                String::from_utf8_lossy(&self.frame[..self.frame.len().min(120)])
            ));
        }
        std::str::from_utf8(&frame[digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| "bad sequence digits".to_string())
    }
}

// ---------------------------------------------------------------------------
// Many subscribers on one poll.

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Head,
    Streaming,
    Finished,
    Failed(String),
}

struct Sub {
    /// `None` when the connect could not even start.
    stream: Option<mio::net::TcpStream>,
    kind: Kind,
    request: Vec<u8>,
    written: usize,
    phase: Phase,
    pending: Vec<u8>,
    /// The next sequence number expected.
    next: u64,
}

/// Counters a subscriber moves.
#[derive(Default)]
struct Tally {
    confirmed: usize,
    finished: usize,
    failed: usize,
}

impl Sub {
    fn fail(&mut self, why: String, tally: &mut Tally) {
        if !matches!(self.phase, Phase::Failed(_) | Phase::Finished) {
            tally.failed += 1;
            self.phase = Phase::Failed(why);
        }
    }

    fn on_writable(&mut self, tally: &mut Tally) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if self.phase != Phase::Connecting {
            return;
        }
        if let Ok(Some(e)) | Err(e) = stream.take_error() {
            return self.fail(format!("connect: {e}"), tally);
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(e) => return self.fail(format!("connect: {e}"), tally),
        }
        while self.written < self.request.len() {
            match stream.write(&self.request[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.fail(format!("write request: {e}"), tally),
            }
        }
        self.phase = Phase::Head;
    }

    fn on_readable(&mut self, scratch: &mut [u8], tmpl: &Template, tally: &mut Tally) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        loop {
            match stream.read(scratch) {
                Ok(0) => {
                    let why = format!("closed by the server after {} messages", self.next);
                    return self.fail(why, tally);
                }
                Ok(n) => self.pending.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(format!("read: {e}"), tally),
            }
        }
        self.consume(tmpl, tally);
    }

    fn consume(&mut self, tmpl: &Template, tally: &mut Tally) {
        let mut at = 0;
        if self.phase == Phase::Head {
            let Some(end) = find(&self.pending, b"\r\n\r\n") else {
                return;
            };
            let opening = self.kind.opening();
            if self.pending.len() < end + 4 + opening.len() {
                return;
            }
            let head = &self.pending[..end];
            if !(head.starts_with(b"HTTP/1.1 200 ") || head.starts_with(b"HTTP/1.0 200 ")) {
                let why = format!("subscribe answered {:?}", String::from_utf8_lossy(head));
                return self.fail(why, tally);
            }
            if &self.pending[end + 4..end + 4 + opening.len()] != opening {
                return self.fail("no stream opening after the head".into(), tally);
            }
            at = end + 4 + opening.len();
            self.phase = Phase::Streaming;
            tally.confirmed += 1;
        }
        let len = tmpl.frame.len();
        while self.phase == Phase::Streaming && self.pending.len() - at >= len {
            match tmpl.check(&self.pending[at..at + len]) {
                Ok(END) => {
                    self.phase = Phase::Finished;
                    tally.finished += 1;
                }
                Ok(seq) if seq == self.next => self.next += 1,
                Ok(seq) => {
                    let why = format!("got message {seq} when {} was due", self.next);
                    return self.fail(why, tally);
                }
                Err(why) => return self.fail(why, tally),
            }
            at += len;
        }
        self.pending.drain(..at);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Subscribers of one channel, connected from one source address, with at
/// most `window` connects under way at once.
struct Pool {
    poll: Poll,
    events: Events,
    subs: Vec<Sub>,
    want: usize,
    window: usize,
    src: Ipv4Addr,
    dst: SocketAddrV4,
    channel: String,
    templates: [Template; 3],
    tally: Tally,
    scratch: Vec<u8>,
}

impl Pool {
    fn new(
        src: Ipv4Addr,
        dst: SocketAddrV4,
        channel: &str,
        want: usize,
        content_type: &str,
        body_len: usize,
    ) -> Pool {
        let t = |k| Template::new(k, channel, content_type, body_len);
        Pool {
            poll: Poll::new().expect("poll"),
            events: Events::with_capacity(4096),
            subs: Vec::with_capacity(want),
            want,
            window: 200,
            src,
            dst,
            channel: channel.to_string(),
            templates: [t(Kind::Chunked), t(Kind::Plain), t(Kind::Sse)],
            tally: Tally::default(),
            scratch: vec![0u8; 256 * 1024],
        }
    }

    fn all_confirmed(&self) -> bool {
        self.tally.confirmed + self.tally.failed >= self.want && self.subs.len() == self.want
    }

    fn all_done(&self) -> bool {
        self.tally.finished + self.tally.failed >= self.want
    }

    /// Starts connects while fewer than `window` are unconfirmed.
    fn start_more(&mut self) {
        while self.subs.len() < self.want
            && self.subs.len() - self.tally.confirmed - self.tally.failed < self.window
        {
            let i = self.subs.len();
            let kind = Kind::nth(i);
            let (stream, phase) = match sys::connect_from(self.src, self.dst, true, None) {
                Ok(s) => {
                    let mut s = mio::net::TcpStream::from_std(s);
                    self.poll
                        .registry()
                        .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                        .expect("register");
                    (Some(s), Phase::Connecting)
                }
                Err(e) => {
                    self.tally.failed += 1;
                    (
                        None,
                        Phase::Failed(format!("connect from {}: {e}", self.src)),
                    )
                }
            };
            self.subs.push(Sub {
                stream,
                kind,
                request: kind.request(&self.channel),
                written: 0,
                phase,
                pending: Vec::new(),
                next: 0,
            });
        }
    }

    /// One poll round; returns the number of events handled.
    fn turn(&mut self, timeout: Duration) -> usize {
        self.start_more();
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return 0,
            Err(e) => panic!("poll: {e}"),
        }
        let mut n = 0;
        for ev in self.events.iter() {
            n += 1;
            let Some(sub) = self.subs.get_mut(ev.token().0) else {
                continue;
            };
            if ev.is_writable() {
                sub.on_writable(&mut self.tally);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                if matches!(sub.phase, Phase::Connecting) {
                    sub.on_writable(&mut self.tally);
                }
                if matches!(sub.phase, Phase::Head | Phase::Streaming) {
                    let tmpl = &self.templates[sub.kind as usize];
                    sub.on_readable(&mut self.scratch, tmpl, &mut self.tally);
                }
            }
        }
        n
    }

    /// The lowest next-expected sequence over the subscribers still streaming.
    fn min_next(&self) -> u64 {
        self.subs
            .iter()
            .filter(|s| s.phase == Phase::Streaming)
            .map(|s| s.next)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn failures(&self) -> Vec<String> {
        self.subs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.phase {
                Phase::Failed(why) => Some(format!("subscriber {i} ({:?}): {why}", s.kind)),
                Phase::Finished => None,
                other => Some(format!(
                    "subscriber {i} ({:?}): still {other:?} after {} messages",
                    s.kind, s.next
                )),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Publishing and stats over one keep-alive connection.

struct Publisher {
    s: TcpStream,
    host: String,
    /// Bytes read and not yet consumed.
    inbuf: Vec<u8>,
    published: u64,
}

impl Publisher {
    fn new(bus: &str) -> Publisher {
        let s = TcpStream::connect(bus).expect("publisher connect");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Publisher {
            s,
            host: bus.to_string(),
            inbuf: Vec::new(),
            published: 0,
        }
    }

    fn publish(&mut self, channel: &str, content_type: &str, body: &[u8]) {
        self.publish_many(&[(channel, content_type, body)]);
    }

    /// Publishes `(channel, type, body)` messages with pipelined requests
    /// (so the server may batch them), then reads every `204`.
    fn publish_many(&mut self, messages: &[(&str, &str, &[u8])]) {
        let mut req = Vec::new();
        for (channel, content_type, body) in messages {
            req.extend_from_slice(
                format!(
                    "POST /msgbus/{channel} HTTP/1.1\r\nHost: {}\r\n\
                     Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    self.host,
                    body.len()
                )
                .as_bytes(),
            );
            req.extend_from_slice(body);
        }
        send(&mut self.s, &req);
        for _ in messages {
            let head = self.read_head();
            assert!(
                head.starts_with("HTTP/1.1 204 "),
                "publish answered {head:?}"
            );
            self.published += 1;
        }
    }

    fn stats(&mut self) -> Value {
        let req = format!("GET /msgbus-stats HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        send(&mut self.s, req.as_bytes());
        let head = self.read_head();
        assert!(head.starts_with("HTTP/1.1 200 "), "stats answered {head:?}");
        let len: usize = common::content_length(&head);
        while self.inbuf.len() < len {
            self.fill();
        }
        let body: Vec<u8> = self.inbuf.drain(..len).collect();
        serde_json::from_slice(&body).expect("stats JSON")
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.s.read(&mut chunk).expect("read response");
        assert!(n > 0, "server closed the publisher connection");
        self.inbuf.extend_from_slice(&chunk[..n]);
    }

    /// Takes one response head (the caller takes the body, if any).
    fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.inbuf, b"\r\n\r\n") {
                let head: Vec<u8> = self.inbuf.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            self.fill();
        }
    }
}

fn stat(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in stats {v}"))
}

fn bus_addr(server: &Server) -> SocketAddrV4 {
    server.bus().parse().expect("bus address")
}

// ---------------------------------------------------------------------------
// 10,000 subscribers in worker processes.

const WORKERS: usize = 4;
const PER_WORKER: usize = 2_500;
const BURST: u64 = 20;
const BURST_BODY: usize = 64;
const WORKER_ENV: &str = "SWITCHBOARD_SCALE_WORKER";

/// A worker process; killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The worker side of `ten_thousand_subscribers`: this test binary run again
/// with `WORKER_ENV=BUS,SOURCE,COUNT,CHANNEL`. Prints `SCALE-WORKER ready N`
/// once every subscriber is confirmed, then `SCALE-WORKER done OK FAILED`
/// and the failures. Without the variable it fails: run on its own it
/// would test nothing.
#[test]
#[ignore = "run by ten_thousand_subscribers in a child process"]
fn scale_worker() {
    let spec = std::env::var(WORKER_ENV).unwrap_or_else(|e| {
        panic!(
            "{WORKER_ENV}: {e}; this is the worker of \
             ten_thousand_subscribers_get_every_message, which sets it"
        )
    });
    let f: Vec<&str> = spec.split(',').collect();
    let [bus, src, count, channel] = f[..] else {
        panic!("bad {WORKER_ENV}={spec}");
    };
    let dst: SocketAddrV4 = bus.parse().expect("bus");
    let src: Ipv4Addr = src.parse().expect("source");
    let count: usize = count.parse().expect("count");
    let mut pool = Pool::new(src, dst, channel, count, "text/plain", BURST_BODY);
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = io::stdout();

    while !pool.all_confirmed() && Instant::now() < deadline {
        pool.turn(Duration::from_millis(20));
    }
    writeln!(out.lock(), "SCALE-WORKER ready {}", pool.tally.confirmed).unwrap();
    out.lock().flush().unwrap();

    while !pool.all_done() && Instant::now() < deadline {
        pool.turn(Duration::from_millis(50));
    }
    let failures = pool.failures();
    let mut o = out.lock();
    writeln!(
        o,
        "SCALE-WORKER done {} {}",
        pool.tally.finished,
        failures.len()
    )
    .unwrap();
    for f in failures.iter().take(5) {
        writeln!(o, "SCALE-WORKER failure {f}").unwrap();
    }
    o.flush().unwrap();
}

#[test]
fn ten_thousand_subscribers_get_every_message() {
    let _heavy = heavy();
    enough_open_files();
    let server = Server::start(&[]);
    let rss_start = server.rss_kib();
    let exe = std::env::current_exe().expect("test binary");
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let spec = format!("{},127.0.0.{},{PER_WORKER},burst", server.bus(), w + 1);
        let mut child = Command::new(&exe)
            .args(["scale_worker", "--exact", "--ignored", "--nocapture"])
            .env(WORKER_ENV, spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start worker");
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("SCALE-WORKER ") {
                    let _ = tx.send((w, rest.to_string()));
                }
            }
            let _ = tx.send((w, "exit".into()));
        });
        workers.push(Worker(child));
    }
    drop(tx);

    // Every worker reports its subscribers confirmed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ready = HashMap::new();
    while ready.len() < WORKERS {
        let left = deadline.saturating_duration_since(Instant::now());
        let (w, line) = rx
            .recv_timeout(left)
            .expect("workers did not get ready in time");
        let n: usize = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("worker {w} before ready: {line}"))
            .parse()
            .unwrap();
        assert_eq!(n, PER_WORKER, "worker {w} confirmed subscribers");
        ready.insert(w, n);
    }
    let mut publisher = Publisher::new(server.bus());
    let stats = publisher.stats();
    let total = WORKERS * PER_WORKER;
    assert_eq!(
        stat(&stats, "subscribers"),
        total as u64,
        "subscribers in stats"
    );
    let rss_subscribed = server.rss_kib();

    for seq in 0..BURST {
        publisher.publish("burst", "text/plain", &body(seq, BURST_BODY));
    }
    publisher.publish("burst", "text/plain", &body(END, BURST_BODY));

    let mut done = 0;
    let mut failures = Vec::new();
    let mut reported = std::collections::HashSet::new();
    while done < WORKERS {
        let left = deadline.saturating_duration_since(Instant::now());
        let (w, line) = rx
            .recv_timeout(left)
            .expect("workers did not finish in time");
        if let Some(counts) = line.strip_prefix("done ") {
            let (ok, failed) = counts.split_once(' ').unwrap();
            let ok: usize = ok.parse().unwrap();
            let failed: usize = failed.parse().unwrap();
            if ok != PER_WORKER || failed != 0 {
                failures.push(format!("worker {w}: {ok} complete, {failed} failed"));
            }
            reported.insert(w);
            done += 1;
        } else if line.starts_with("failure ") {
            failures.push(format!("worker {w}: {line}"));
        } else if line == "exit" && !reported.contains(&w) {
            // (A worker that has reported exits while others still work.)
            panic!("worker {w} exited before reporting");
        }
    }
    let stats = publisher.stats();
    let rss_end = server.rss_kib();
    eprintln!(
        "10k: {total} subscribers x {} messages; server RSS {rss_start} KiB at start, \
         {rss_subscribed} KiB subscribed, {rss_end} KiB after; messages_out {}, drops {}",
        BURST + 1,
        stat(&stats, "messages_out"),
        stat(&stats, "drops")
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(stat(&stats, "drops"), 0, "nothing dropped");
    assert_eq!(
        stat(&stats, "messages_out"),
        total as u64 * (BURST + 1),
        "every subscriber was sent every message"
    );
    for mut w in workers {
        let status = w.0.wait().expect("wait worker");
        assert!(status.success(), "worker exit status {status}");
    }
}

// ---------------------------------------------------------------------------
// One subscriber that never reads among many that do.

const FAST: usize = 1_000;
const STREAM: u64 = 2_000;
const STREAM_BODY: usize = 1024;
/// Stream messages the publisher may be ahead of the slowest fast subscriber:
/// 256 × ~1.1 KiB stays well under the backlog limit, so a fast subscriber is
/// never mistaken for a slow one.
const WINDOW: u64 = 256;
/// Large messages on another channel, which only the slow subscriber (on the
/// root, all channels) is sent: 1,536 × 64 KiB = 96 MiB, three times the
/// memory bound below, so a queue that grew without limit would fail it.
const BULK: u64 = 1_536;
const BULK_BODY: usize = 64 * 1024;
/// Stream messages published with pipelined requests at a time.
const GROUP: u64 = 32;
/// The bound on the server's RSS growth while streaming. What it may hold:
/// the slow subscriber's backlog (limit 1,000,000 bytes, plus the one frame
/// that crosses it, ≤ 64 KiB); for the fast subscribers at most WINDOW
/// messages each, whose frames are shared (≤ 3 framings × 256 × 1.1 KiB)
/// plus a 32-byte handle per queued frame per subscriber (≤ 1,000 × 256 ×
/// 32 B = 8 MiB); and allocator slack. 32 MiB is generous for that and
/// still a third of what was addressed to the slow subscriber.
const RSS_GROWTH_BOUND_KIB: u64 = 32 * 1024;

struct SlowOutcome {
    server: Server,
    publisher: Publisher,
    slow: TcpStream,
    rss_before: u64,
    rss_peak: u64,
    stats: Value,
}

/// Connects the slow subscriber (root, tiny receive buffer, reads only the
/// response head) and `FAST` fast ones, streams STREAM messages to the fast
/// ones' channel with BULK large messages on another channel in between,
/// and checks every fast subscriber got the whole stream in order.
fn slow_subscriber_run(policy: &str) -> SlowOutcome {
    enough_open_files();
    let server = Server::start(&["--slow-subscriber", policy]);
    let dst = bus_addr(&server);
    let rss_start = server.rss_kib();

    let mut slow = sys::connect_from(Ipv4Addr::new(127, 0, 0, 2), dst, false, Some(4096))
        .expect("slow subscriber connect");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    send(&mut slow, b"GET /msgbus/ HTTP/1.1\r\nHost: scale\r\n\r\n");
    let head = read_until(&mut slow, Kind::Chunked.opening());
    assert!(head.starts_with(b"HTTP/1.1 200 "), "slow subscribe");

    let mut pool = Pool::new(
        Ipv4Addr::new(127, 0, 0, 1),
        dst,
        "stream",
        FAST,
        "text/plain",
        STREAM_BODY,
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while !pool.all_confirmed() {
        assert!(
            Instant::now() < deadline,
            "fast subscribers never confirmed"
        );
        pool.turn(Duration::from_millis(20));
    }
    assert_eq!(pool.tally.failed, 0, "{:#?}", pool.failures());
    let mut publisher = Publisher::new(server.bus());
    assert_eq!(stat(&publisher.stats(), "subscribers"), FAST as u64 + 1);

    let rss_before = server.rss_kib();
    let mut rss_peak = rss_before;
    let mut seq = 0u64;
    let mut bulk = 0u64;
    let mut ended = false;
    let stream_bodies: Vec<Vec<u8>> = (0..STREAM).map(|i| body(i, STREAM_BODY)).collect();
    let bulk_bodies: Vec<Vec<u8>> = (0..BULK).map(bulk_body).collect();
    while !pool.all_done() {
        assert!(
            Instant::now() < deadline,
            "stream did not complete: {:?}",
            pool.failures().first()
        );
        // A group of stream messages, as far as the window allows, then
        // bulk messages in proportion.
        let until = STREAM
            .min(pool.min_next().saturating_add(WINDOW))
            .min(seq + GROUP);
        let published = seq < until;
        if published {
            let group: Vec<(&str, &str, &[u8])> = (seq..until)
                .map(|i| ("stream", "text/plain", &stream_bodies[i as usize][..]))
                .collect();
            publisher.publish_many(&group);
            let bulk_until = (until * BULK).div_ceil(STREAM).min(BULK);
            let group: Vec<(&str, &str, &[u8])> = (bulk..bulk_until)
                .map(|k| {
                    (
                        "bulk",
                        "application/octet-stream",
                        &bulk_bodies[k as usize][..],
                    )
                })
                .collect();
            publisher.publish_many(&group);
            bulk = bulk_until;
            seq = until;
            rss_peak = rss_peak.max(server.rss_kib());
        }
        if seq == STREAM && !ended {
            publisher.publish("stream", "text/plain", &body(END, STREAM_BODY));
            ended = true;
        }
        let wait = if published { 0 } else { 20 };
        pool.turn(Duration::from_millis(wait));
    }
    rss_peak = rss_peak.max(server.rss_kib());
    assert!(
        pool.tally.failed == 0,
        "fast subscribers failed: {:#?}",
        &pool.failures()[..pool.failures().len().min(5)]
    );
    assert_eq!(pool.tally.finished, FAST);
    let stats = publisher.stats();
    eprintln!(
        "slow subscriber ({policy}): {FAST} fast subscribers x {STREAM} messages of \
         {STREAM_BODY} B, {BULK} x {BULK_BODY} B to the slow one; server RSS {rss_start} KiB \
         at start, {rss_before} KiB subscribed, peak {rss_peak} KiB (+{} KiB); drops {}, \
         slow disconnects {}",
        rss_peak - rss_before,
        stat(&stats, "drops"),
        stat(&stats, "slow_disconnects"),
    );
    assert!(
        rss_peak - rss_before < RSS_GROWTH_BOUND_KIB,
        "server RSS grew by {} KiB (bound {RSS_GROWTH_BOUND_KIB} KiB)",
        rss_peak - rss_before
    );
    SlowOutcome {
        server,
        publisher,
        slow,
        rss_before,
        rss_peak,
        stats,
    }
}

fn bulk_body(k: u64) -> Vec<u8> {
    let mut b = format!("bulk {k:08} ").into_bytes();
    b.resize(BULK_BODY, b'.');
    b
}

/// One part read from a root subscriber's chunked multipart stream.
struct Part {
    channel: String,
    body: Vec<u8>,
}

/// Takes the complete chunks at the front of `buf` and returns their parts.
fn take_parts(buf: &mut Vec<u8>) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(eol) = find(rest, b"\r\n") else {
            break;
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("bad chunk size line {:?}", &rest[..eol.min(40)]));
        if rest.len() < eol + 2 + size + 2 {
            break;
        }
        let part = &rest[eol + 2..eol + 2 + size];
        assert_eq!(&rest[eol + 2 + size..eol + 4 + size], b"\r\n", "chunk end");
        at += eol + 4 + size;
        let head_end = find(part, b"\r\n\r\n").expect("part head");
        let head = String::from_utf8_lossy(&part[..head_end]).into_owned();
        let field = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let len: usize = field("Content-Length")
            .and_then(|v| v.parse().ok())
            .expect("part Content-Length");
        let location = field("Content-Location").expect("root part Content-Location");
        let body = part[head_end + 4..head_end + 4 + len].to_vec();
        assert_eq!(&part[head_end + 4 + len..], b"\r\n--00MsgBus00\r\n");
        parts.push(Part {
            channel: location
                .strip_prefix("/msgbus/")
                .expect("location")
                .to_string(),
            body,
        });
    }
    buf.drain(..at);
    parts
}

#[test]
fn slow_subscriber_is_dropped_others_get_everything() {
    let _heavy = heavy();
    let mut run = slow_subscriber_run("drop");
    let drops = stat(&run.stats, "drops");
    assert!(drops > 0, "the slow subscriber had messages dropped");
    assert_eq!(stat(&run.stats, "slow_disconnects"), 0);

    // Now read the slow subscriber: what it was sent plus what was dropped
    // for it is everything published. A marker message ends the count; it
    // is published again until it is not itself dropped.
    let mut got: Vec<Part> = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut drops_now = drops;
    let mut marker = 0u64;
    'outer: loop {
        let body = format!("marker {marker}");
        run.publisher
            .publish("marker", "text/plain", body.as_bytes());
        let after = stat(&run.publisher.stats(), "drops");
        let marker_dropped = after > drops_now;
        drops_now = after;
        marker += 1;
        // Read at least 256 KiB (or up to the marker).
        let mut read = 0;
        while !marker_dropped || read < 256 * 1024 {
            let n = run.slow.read(&mut chunk).expect("read slow subscriber");
            assert!(n > 0, "the slow subscriber was disconnected");
            read += n;
            buf.extend_from_slice(&chunk[..n]);
            for p in take_parts(&mut buf) {
                let is_marker = p.channel == "marker" && p.body == body.as_bytes();
                got.push(p);
                if is_marker {
                    assert!(!marker_dropped, "a dropped marker arrived");
                    break 'outer;
                }
            }
        }
    }
    let received = got.len() as u64;
    assert_eq!(
        received + drops_now,
        run.publisher.published,
        "sent to the slow subscriber ({received}) + dropped ({drops_now}) = published"
    );
    // What it did get is in order, without repeats.
    let mut last_seq = None;
    let mut last_bulk = None;
    for p in &got {
        match p.channel.as_str() {
            "stream" => {
                let seq: u64 = std::str::from_utf8(&p.body[..SEQ_DIGITS])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    last_seq < Some(seq),
                    "stream order: {seq} after {last_seq:?}"
                );
                last_seq = Some(seq);
            }
            "bulk" => {
                let k: u64 = std::str::from_utf8(&p.body[5..13])
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(last_bulk < Some(k), "bulk order: {k} after {last_bulk:?}");
                last_bulk = Some(k);
            }
            "marker" => {}
            other => panic!("message from channel {other}"),
        }
    }
    eprintln!(
        "slow subscriber (drop): it was sent {received} messages, {drops_now} were dropped, \
         of {} published; RSS {} -> peak {} KiB",
        run.publisher.published, run.rss_before, run.rss_peak
    );
    assert!(run.server.alive());
}

#[test]
fn slow_subscriber_is_disconnected_others_get_everything() {
    let _heavy = heavy();
    let mut run = slow_subscriber_run("disconnect");
    assert_eq!(
        stat(&run.stats, "slow_disconnects"),
        1,
        "exactly the slow subscriber was disconnected"
    );
    assert_eq!(stat(&run.stats, "subscribers"), FAST as u64);
    // Its socket reaches the end after what was queued for it.
    let mut sink = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        match run.slow.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("slow subscriber: {e} after {total} bytes (expected the end)"),
        }
    }
    eprintln!(
        "slow subscriber (disconnect): read {total} bytes before the end; RSS {} -> peak {} KiB",
        run.rss_before, run.rss_peak
    );
    assert!(run.server.alive());
}
