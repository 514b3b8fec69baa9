//! Name lookups off the loop: `getaddrinfo` blocks (files, DNS, timeouts),
//! so it runs on a few helper threads and each answer comes back through a
//! channel and the loop's [`Waker`].
//!
//! Owns: the helper threads (started on first use, at most
//! [`MAX_THREADS`]), the bound on lookups under way ([`MAX_PENDING`]), and
//! the queue of answers. Must not touch: connections, the clock, the poll
//! (only the waker). The loop owns what a lookup is for and when it times
//! out: a late answer for a connection that is gone is dropped there.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::broker::ConnId;

/// Helper threads, at most: a slow lookup holds one, the others go on.
pub const MAX_THREADS: usize = 4;
/// Lookups asked for and not yet answered, at most.
pub const MAX_PENDING: usize = 256;

/// One lookup: for connection `conn`, `host` with `port`.
struct Job {
    conn: ConnId,
    host: String,
    port: u16,
}

/// The answer to one lookup.
pub struct Resolved {
    pub conn: ConnId,
    pub result: io::Result<SocketAddr>,
}

/// The helper threads and their channels.
pub struct Resolver {
    jobs: Sender<Job>,
    /// Shared by the helper threads: each takes the next job.
    queue: Arc<Mutex<Receiver<Job>>>,
    answers_tx: Sender<Resolved>,
    answers: Receiver<Resolved>,
    waker: Arc<Waker>,
    threads: usize,
    /// Lookups asked for and not yet drained.
    pending: usize,
}

impl Resolver {
    pub fn new(waker: Arc<Waker>) -> Resolver {
        let (jobs, queue) = mpsc::channel();
        let (answers_tx, answers) = mpsc::channel();
        Resolver {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            answers_tx,
            answers,
            waker,
            threads: 0,
            pending: 0,
        }
    }

    /// Lookups under way.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Asks for the address of `host:port` on behalf of `conn`. `Err` when
    /// too many lookups are under way or no helper thread could start.
    pub fn lookup(&mut self, conn: ConnId, host: &str, port: u16) -> io::Result<()> {
        if self.pending >= MAX_PENDING {
            return Err(io::Error::other(format!(
                "{MAX_PENDING} name lookups are already under way"
            )));
        }
        if self.threads < MAX_THREADS && self.pending >= self.threads {
            self.spawn()?;
        }
        let job = Job {
            conn,
            host: host.to_string(),
            port,
        };
        self.jobs
            .send(job)
            .map_err(|_| io::Error::other("the name lookup threads are gone"))?;
        self.pending += 1;
        Ok(())
    }

    fn spawn(&mut self) -> io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let answers = self.answers_tx.clone();
        let waker = Arc::clone(&self.waker);
        std::thread::Builder::new()
            .name(format!("resolve-{}", self.threads))
            .spawn(move || loop {
                let job = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else {
                    return;
                };
                let result = lookup(&job.host, job.port);
                if answers
                    .send(Resolved {
                        conn: job.conn,
                        result,
                    })
                    .is_err()
                {
                    return;
                }
                let _ = waker.wake();
            })?;
        self.threads += 1;
        Ok(())
    }

    /// The answers that have come back since the last call.
    pub fn answers(&mut self) -> Vec<Resolved> {
        let mut out = Vec::new();
        loop {
            match self.answers.try_recv() {
                Ok(a) => {
                    self.pending = self.pending.saturating_sub(1);
                    out.push(a);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

/// The first address of `host` (IPv4 first, as most receivers listen there).
fn lookup(host: &str, port: u16) -> io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("`{host}` has no address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    #[test]
    fn answers_come_back_through_the_waker() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(9)).unwrap());
        let mut r = Resolver::new(waker);
        let a = ConnId { key: 1, gen: 1 };
        let b = ConnId { key: 2, gen: 1 };
        r.lookup(a, "localhost", 80).unwrap();
        r.lookup(b, "no-such-host.invalid", 80).unwrap();
        assert_eq!(r.pending(), 2);
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        while got.len() < 2 {
            poll.poll(&mut events, Some(Duration::from_secs(30)))
                .unwrap();
            assert!(!events.is_empty(), "no wake-up within 30 s");
            assert!(events.iter().all(|e| e.token() == Token(9)));
            got.extend(r.answers());
        }
        assert_eq!(r.pending(), 0);
        let of = |id| got.iter().find(|x| x.conn == id).unwrap();
        let addr = of(a).result.as_ref().unwrap();
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 80);
        assert!(of(b).result.is_err());
    }

    #[test]
    fn threads_start_as_lookups_wait_up_to_four_and_lookups_past_the_bound_are_refused() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(9)).unwrap());
        let mut r = Resolver::new(waker);
        let conn = ConnId { key: 1, gen: 1 };
        // A lookup stays under way until its answer is taken, so nothing
        // here depends on how fast the threads answer.
        for n in 1..=2 * MAX_THREADS {
            r.lookup(conn, "127.0.0.1", 80).unwrap();
            assert_eq!(r.threads, n.min(MAX_THREADS), "after {n} lookups");
        }
        while r.pending() < MAX_PENDING {
            r.lookup(conn, "127.0.0.1", 80).unwrap();
        }
        assert_eq!(r.threads, MAX_THREADS);
        let refused = r.lookup(conn, "127.0.0.1", 80).unwrap_err();
        assert!(
            refused.to_string().contains("already under way"),
            "{refused}"
        );
        let mut answered = 0;
        let mut events = Events::with_capacity(8);
        while answered < MAX_PENDING {
            poll.poll(&mut events, Some(Duration::from_secs(30)))
                .unwrap();
            assert!(!events.is_empty(), "no wake-up within 30 s");
            for a in r.answers() {
                assert_eq!(a.result.unwrap(), SocketAddr::from(([127, 0, 0, 1], 80)));
                answered += 1;
            }
        }
        assert_eq!(r.pending(), 0);
    }
}
