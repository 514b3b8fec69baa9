//! `switchboard`: the server. Flags (and `--config FILE`) → [`Config`] →
//! [`server::run`].

use std::process::ExitCode;

use clap::Parser;
use switchboard::config::{Args, Config};
use switchboard::config_file::{self, ArgsError};
use switchboard::{logging, server};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let command_line: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv = match config_file::with_file(command_line.clone()) {
        Ok(argv) => argv,
        Err(ArgsError::Clap(e)) => e.exit(),
        Err(ArgsError::File(e)) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    let args = Args::try_parse_from(&argv).unwrap_or_else(|e| e.exit());
    let print_config = args.print_config;
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    if print_config {
        match config_file::print(&argv) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => e.exit(),
        }
    }
    logging::init(config.log_level, config.log_format);
    if let Some(c) = config.cluster.as_ref().filter(|c| !c.optional) {
        let wait = std::time::Duration::from_secs(5);
        let tls = config.client_tls.clone().filter(|_| c.tls);
        if let Err(e) = server::check_redis(&c.host, c.port, tls, c.auth.as_ref(), wait) {
            eprintln!(
                "switchboard: --cluster: Redis at {}:{} is unreachable or refuses this node ({e}); start it or fix the URL, or pass --cluster-optional to start without it and join when it comes",
                c.host, c.port
            );
            return ExitCode::from(2);
        }
    }
    match server::run(config, command_line) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Said once, as the last line, not also as a log line.
            eprintln!("switchboard: {e}");
            ExitCode::from(1)
        }
    }
}
