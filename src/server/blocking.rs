//! Blocking work of the doors (reading a static file) off the loop: it runs
//! on a few helper threads and each result comes back through a channel and
//! the loop's [`Waker`], to the door that asked ([`crate::door::Cx::run_blocking`]).
//!
//! Owns: the helper threads (started on first use, at most [`MAX_THREADS`]),
//! the bound on work under way ([`MAX_PENDING`]), and the queue of results.
//! Must not touch: connections, the clock, the poll (only the waker). A
//! result for a connection that is gone is dropped by the loop.

use std::any::Any;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::broker::ConnId;
use crate::door::Job;

/// Helper threads, at most: a slow read holds one, the others go on.
pub const MAX_THREADS: usize = 4;
/// Jobs asked for and not yet answered, at most: past it a door answers at
/// once (a static file gets `503`).
pub const MAX_PENDING: usize = 256;

/// The result of one job, for connection `conn`.
pub struct Done {
    pub conn: ConnId,
    pub result: Box<dyn Any + Send>,
}

/// The helper threads and their channels.
pub struct Blocking {
    jobs: Sender<(ConnId, Job)>,
    /// Shared by the helper threads: each takes the next job.
    queue: Arc<Mutex<Receiver<(ConnId, Job)>>>,
    done_tx: Sender<Done>,
    done: Receiver<Done>,
    waker: Arc<Waker>,
    threads: usize,
    /// Jobs asked for and not yet drained.
    pending: usize,
}

impl Blocking {
    pub fn new(waker: Arc<Waker>) -> Blocking {
        let (jobs, queue) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        Blocking {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            done_tx,
            done,
            waker,
            threads: 0,
            pending: 0,
        }
    }

    /// How many more jobs are taken now.
    pub fn room(&self) -> usize {
        MAX_PENDING.saturating_sub(self.pending)
    }

    /// Runs `job` for `conn` on a helper thread. `Err` when too many jobs
    /// are under way or no helper thread could start (the job is dropped).
    pub fn run(&mut self, conn: ConnId, job: Job) -> io::Result<()> {
        if self.pending >= MAX_PENDING {
            return Err(io::Error::other(format!(
                "{MAX_PENDING} blocking jobs are already under way"
            )));
        }
        if self.threads < MAX_THREADS && self.pending >= self.threads {
            self.spawn()?;
        }
        self.jobs
            .send((conn, job))
            .map_err(|_| io::Error::other("the helper threads are gone"))?;
        self.pending += 1;
        Ok(())
    }

    fn spawn(&mut self) -> io::Result<()> {
        let queue = Arc::clone(&self.queue);
        let done = self.done_tx.clone();
        let waker = Arc::clone(&self.waker);
        std::thread::Builder::new()
            .name(format!("blocking-{}", self.threads))
            .spawn(move || loop {
                let next = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                let Ok((conn, job)) = next else {
                    return;
                };
                let result = job();
                if done.send(Done { conn, result }).is_err() {
                    return;
                }
                let _ = waker.wake();
            })?;
        self.threads += 1;
        Ok(())
    }

    /// The results that have come back since the last call.
    pub fn results(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(d) => {
                    self.pending = self.pending.saturating_sub(1);
                    out.push(d);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    #[test]
    fn results_come_back_through_the_waker_while_a_job_blocks() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(9)).unwrap());
        let mut b = Blocking::new(waker);
        let (release, held) = mpsc::channel::<()>();
        let slow = ConnId { key: 1, gen: 1 };
        let quick = ConnId { key: 2, gen: 1 };
        // The first job blocks until released; the second must come back
        // meanwhile, from another thread.
        b.run(
            slow,
            Box::new(move || {
                let _ = held.recv();
                Box::new("slow") as Box<dyn Any + Send>
            }),
        )
        .unwrap();
        b.run(quick, Box::new(|| Box::new(7u32) as Box<dyn Any + Send>))
            .unwrap();
        assert_eq!(b.room(), MAX_PENDING - 2);
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        while got.is_empty() {
            poll.poll(&mut events, Some(Duration::from_secs(30)))
                .unwrap();
            assert!(!events.is_empty(), "no wake-up within 30 s");
            got.extend(b.results());
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].conn, quick);
        assert_eq!(got[0].result.downcast_ref::<u32>(), Some(&7));
        release.send(()).unwrap();
        while got.len() < 2 {
            poll.poll(&mut events, Some(Duration::from_secs(30)))
                .unwrap();
            got.extend(b.results());
        }
        assert_eq!(got[1].conn, slow);
        assert_eq!(got[1].result.downcast_ref::<&str>(), Some(&"slow"));
        assert_eq!(b.room(), MAX_PENDING);
    }

    #[test]
    fn threads_start_as_jobs_wait_up_to_four_and_jobs_past_the_bound_are_refused() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(9)).unwrap());
        let mut b = Blocking::new(waker);
        // Every job waits for one release: none finishes during the test.
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        let job = || -> Job {
            let held = Arc::clone(&held);
            Box::new(move || {
                let _ = held.lock().map(|h| h.recv());
                Box::new(()) as Box<dyn Any + Send>
            })
        };
        let conn = ConnId { key: 1, gen: 1 };
        b.run(conn, job()).unwrap();
        assert_eq!(b.threads, 1, "one job, one thread");
        for n in 2..=2 * MAX_THREADS {
            b.run(conn, job()).unwrap();
            assert_eq!(b.threads, n.min(MAX_THREADS), "after {n} jobs");
        }
        while b.room() > 0 {
            b.run(conn, job()).unwrap();
        }
        assert_eq!(b.pending, MAX_PENDING);
        assert_eq!(b.threads, MAX_THREADS);
        let refused = b.run(conn, job()).unwrap_err();
        assert!(
            refused.to_string().contains("already under way"),
            "{refused}"
        );
        drop(release);
    }
}
