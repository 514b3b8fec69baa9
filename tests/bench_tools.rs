//! The helpers of the bench scripts, on input of the shape they read.
//!
//! `benches/perf_split.py` reads `perf script -F pid,ip,sym,dso`: a line
//! with a sample's pid (right-aligned, so short pids start with spaces),
//! then its frames, leaf first, each indented by a tab.

// Test code may unwrap, index and panic (see [lints.clippy] in Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs perf_split.py on `input` with its three arguments.
fn run_perf_split(input: &str, args: [&str; 3]) -> Output {
    let mut child = Command::new(common::program("python3"))
        .arg(format!("{REPO}/benches/perf_split.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// perf_split.py's table for `input`, or a failure with its stderr.
fn perf_split(input: &str, rate: &str, server: &str, handlers: &str) -> String {
    let out = run_perf_split(input, [rate, server, handlers]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "perf_split.py failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The cells of the row of `side`, as numbers.
fn row(table: &str, side: &str) -> Vec<f64> {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {side} |")))
        .unwrap_or_else(|| panic!("no row {side} in\n{table}"));
    line.split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .skip(1)
        .map(|c| c.parse().unwrap())
        .collect()
}

/// Six samples: the server in its own code, in a send that delivered over
/// loopback, in a receive; a handler (its pid shorter, so indented) in a
/// wait and outside any system call; the idle task.
const SAMPLES: &str = "\
 4242 
\t          3a4776 switchboard::http::proxy::parse_whole (/x/switchboard)
\t          3a0000 main (/x/switchboard)

 4242 
\tffffffff820745e4 tcp_ack ([kernel.kallsyms])
\tffffffff81eb1bfe net_rx_action ([kernel.kallsyms])
\tffffffff8207e2b4 __tcp_transmit_skb ([kernel.kallsyms])
\tffffffff81e78b60 __x64_sys_sendto ([kernel.kallsyms])
\tffffffff8223df91 do_syscall_64 ([kernel.kallsyms])
\t          10a929 __libc_send (/usr/lib/x86_64-linux-gnu/libc.so.6)

 4242 
\tffffffff82067650 tcp_recvmsg_locked ([kernel.kallsyms])
\tffffffff81e78b60 __x64_sys_recvfrom ([kernel.kallsyms])

   77 
\tffffffff81e78b60 ep_poll ([kernel.kallsyms])
\tffffffff81e78b61 __x64_sys_epoll_wait ([kernel.kallsyms])

   77 
\tffffffff81e78b60 finish_task_switch.isra.0 ([kernel.kallsyms])
\tffffffff81e78b61 schedule ([kernel.kallsyms])

    0 
\tffffffff8224379b pv_native_safe_halt ([kernel.kallsyms])
";

#[test]
fn perf_split_puts_each_sample_in_its_room() {
    // 6 samples at 1,000 requests/s: each sample is 1e6 / 1000 / 6 µs a request.
    let table = perf_split(SAMPLES, "1000", "4242", "77 78");
    let each = 1e6 / 1000.0 / 6.0;
    let close = |got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w * each).abs() < 0.01,
                "{got:?} against {want:?} samples\n{table}"
            );
        }
    };
    // user, send, recv, poll, syscall, other, delivery, total
    close(
        &row(&table, "server"),
        &[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 3.0],
    );
    close(
        &row(&table, "handlers"),
        &[0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 2.0],
    );
    close(
        &row(&table, "idle"),
        &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0],
    );
    assert!(!table.contains("| others |"), "{table}");
}

#[test]
fn perf_split_refuses_an_empty_recording() {
    let out = run_perf_split("", ["1000", "1", "2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no samples"));
}
