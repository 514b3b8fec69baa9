//! Random and half-valid input on every door at once, from many clients:
//! the server must neither die nor disturb a well-behaved client meanwhile.
//! The input is generated from a fixed seed, so a failure replays.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{connect, line_sync, read_exact_n, send, Server};

/// A small deterministic generator (xorshift64*), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.below(items.len() as u64) as usize]
    }
}

const LINE_PIECES: &[&[u8]] = &[
    b"> 5 1 q\r\nhello\r\n",
    b"< 0 q\r\n",
    b"< 0 a b c d e f g h i\r\n",
    b"? 2 0 svc\r\nhi\r\n",
    b"+ chaos\r\n",
    b"~ chaos\r\n",
    b"+ *\r\n",
    b"! 3 chaos text/plain\r\nabc\r\n",
    b"! 0 chaos\r\n",
    b"! 99999999999999999999 x\r\n",
    b"> -1 1 q\r\n",
    b"> 3 1 q\r\nab",
    b"\r\n\r\n",
    b".\r\n",
    b"\x00\xff\xfe\r\n",
    b"> 4 1",
];

const HTTP_PIECES: &[&[u8]] = &[
    b"GET /msgbus/chaos HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /msgbus/ HTTP/1.0\r\n\r\n",
    b"POST /msgbus/chaos HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /msgbus/chaos HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: t\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /msgbus/chaos HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /msgbus-stats HTTP/1.1\r\n\r\n",
    b"GET /../../etc/passwd HTTP/1.1\r\n\r\n",
    b"GET /msgbus/x?type=!*,*&sender=%zz HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
    b"BREW /msgbus/x HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"POST /msgbus/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /msgbus/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /msgbus/x HTTP/1.1\r\nAuthorization: Basic !!!\r\n\r\n",
    b"\r\n",
    b"GET /msgbus/x HTTP/1.1\r\nX: y",
];

/// Sends `rounds` random pieces (valid, broken, cut, or pure noise) and
/// reads whatever comes back, ignoring errors: the server may close.
fn stir(addr: &str, seed: u64, rounds: usize, pieces: &[&[u8]]) {
    let mut rng = Rng(seed);
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    for _ in 0..rounds {
        let mut chunk = rng.pick(pieces).to_vec();
        match rng.below(4) {
            0 => {
                let cut = rng.below(chunk.len() as u64 + 1) as usize;
                chunk.truncate(cut);
            }
            1 => {
                let n = rng.below(64) as usize;
                chunk = (0..n).map(|_| rng.next() as u8).collect();
            }
            _ => {}
        }
        if s.write_all(&chunk).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    }
}

#[test]
fn random_input_on_every_door_harms_nobody() {
    let server = Server::start(&["--max-body", "4096", "--request-timeout", "2"]);
    let line = server.line().to_string();
    let bus = server.bus().to_string();
    // A well-behaved client that keeps working throughout.
    let mut good = connect(&line);
    line_sync(&mut good, "before");
    let workers: Vec<_> = (0..40u64)
        .map(|i| {
            let (addr, pieces) = if i % 2 == 0 {
                (line.clone(), LINE_PIECES)
            } else {
                (bus.clone(), HTTP_PIECES)
            };
            std::thread::spawn(move || {
                for round in 0..5u64 {
                    stir(&addr, 0x9e37_79b9_7f4a_7c15 ^ (i << 8) ^ round, 40, pieces);
                }
            })
        })
        .collect();
    for k in 0..50 {
        send(
            &mut good,
            format!("> 4 30 good.q\r\nm{k:03}\r\n< 5 good.q\r\n").as_bytes(),
        );
        let want = format!("> 4 30 good.q\r\nm{k:03}\r\n");
        assert_eq!(read_exact_n(&mut good, want.len()), want.as_bytes());
    }
    for w in workers {
        w.join().expect("a worker thread");
    }
    // Still alive, still serving both doors.
    line_sync(&mut good, "after");
    let mut http = connect(&bus);
    send(&mut http, b"GET /msgbus-stats HTTP/1.0\r\n\r\n");
    let reply = common::read_to_close(&mut http);
    assert!(
        reply.starts_with(b"HTTP/1.0 200 OK"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}
