//! Sockets and process plumbing: non-blocking connects from a chosen source
//! address, the transport (plain TCP or TLS) both tools read and write
//! through, the open-file limit, and the stop signal.
//!
//! Everything that touches the OS lives here or in `tls`; the event loops
//! only see `Transport`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use socket2::{Domain, Protocol, Socket, Type};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill and read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Source address number `k` of `n` (`127.0.0.1` … `127.0.0.n`), or `None`
/// when not spreading.
pub fn source_for(k: usize, n: usize) -> Option<IpAddr> {
    if n == 0 {
        return None;
    }
    let last = (1 + k % n) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// Starts a non-blocking connect, bound to `src` first when given. The port
/// is chosen at connect time (IP_BIND_ADDRESS_NO_PORT), so one source
/// address serves as many connections as the 4-tuples allow.
pub fn connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let domain = Domain::for_address(dst);
    let sock = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_nodelay(true)?;
    if let Some(ip) = src {
        if ip.is_ipv4() {
            set_bind_no_port(&sock)?;
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

fn set_bind_no_port(sock: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// After a writable event on a connecting socket: `Ok(true)` once connected,
/// `Ok(false)` while still in progress, `Err` when the connect failed.
pub fn connect_finished(s: &TcpStream) -> io::Result<bool> {
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    match s.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// TLS settings shared by all connections of a run.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// A connection's byte stream: plain TCP or TLS over TCP. Reads and writes
/// plaintext; with TLS, records are moved to and from the socket as needed.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    sock: TcpStream,
    conn: rustls::ClientConnection,
    eof: bool,
}

impl Transport {
    pub fn new(sock: TcpStream, tls: Option<&TlsSetup>) -> io::Result<Transport> {
        match tls {
            None => Ok(Transport::Plain(sock)),
            Some(t) => {
                let conn = rustls::ClientConnection::new(t.config.clone(), t.server_name.clone())
                    .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
                Ok(Transport::Tls(Box::new(TlsStream {
                    sock,
                    conn,
                    eof: false,
                })))
            }
        }
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Reads plaintext; `Ok(0)` is the end of the stream, `WouldBlock` means
    /// wait for the next readable event.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }

    /// Writes plaintext; may accept less than offered, `WouldBlock` when
    /// nothing fits.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(data),
            Transport::Tls(t) => {
                let n = t.conn.writer().write(data)?;
                t.flush()?;
                if n == 0 && !data.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            }
        }
    }

    /// Pushes buffered TLS records (a handshake, or data written earlier);
    /// a full socket is not an error.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.flush(),
        }
    }
}

impl TlsStream {
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
            // Handshake messages and alerts go out at once.
            self.flush()?;
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // A second signal: the user does not want to wait for the summary.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Makes SIGINT and SIGTERM set the stop flag (a second one exits at once).
/// With `ignore_sigint`, SIGINT is ignored (worker processes: their parent
/// forwards one SIGTERM instead). Without SA_RESTART, so `poll` returns.
pub fn install_stop_handler(ignore_sigint: bool) {
    // SAFETY: installs an async-signal-safe handler (an atomic swap, _exit).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        if ignore_sigint {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        } else {
            libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        }
        // A vanished peer must be an error code, not a signal.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Whether a stop signal has arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks the kernel to send SIGTERM to this process when its parent dies
/// (worker processes).
pub fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
}

/// Sends SIGTERM to a child process.
pub fn terminate(pid: u32) {
    // SAFETY: kill with a pid we spawned and a valid signal.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cycle() {
        assert_eq!(source_for(0, 0), None);
        assert_eq!(source_for(0, 3), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(source_for(2, 3), Some("127.0.0.3".parse().unwrap()));
        assert_eq!(source_for(3, 3), Some("127.0.0.1".parse().unwrap()));
    }

    fn nofile_limits() -> (u64, u64) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit for the kernel to fill.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
        (lim.rlim_cur, lim.rlim_max)
    }

    #[test]
    fn nofile_limit_is_raised_to_hard() {
        // Lower the soft limit first (anyone may), so that there is
        // something to raise; half the hard limit is still far more than
        // this test process uses.
        let (_, hard) = nofile_limits();
        let lowered = libc::rlimit {
            rlim_cur: (hard / 2).max(64).min(hard),
            rlim_max: hard,
        };
        // SAFETY: a valid rlimit, read by the kernel.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) };
        assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
        assert_eq!(nofile_limits(), (lowered.rlim_cur, hard));
        let soft = raise_nofile_limit();
        assert_eq!(soft, hard, "the soft limit returned");
        assert_eq!(nofile_limits(), (hard, hard), "the limits in force");
    }

    #[test]
    fn connect_from_second_loopback_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = listener.local_addr().unwrap();
        let mut s = connect(dst, source_for(1, 4)).unwrap();
        let (_peer, from) = listener.accept().unwrap();
        assert_eq!(from.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
        // Connected by now (the accept finished).
        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut s, mio::Token(0), mio::Interest::WRITABLE)
            .unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert!(connect_finished(&s).unwrap());
    }
}
