//! `switchboard`: the server. Flags → [`Config`] → [`server::run`].

use std::process::ExitCode;

use clap::Parser;
use switchboard::config::{Args, Config};
use switchboard::server;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = simple_logger::SimpleLogger::new()
        .with_level(config.log_level.filter())
        .with_utc_timestamps()
        .init();
    match server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Said once, as the last line, not also as a log line.
            eprintln!("switchboard: {e}");
            ExitCode::from(1)
        }
    }
}
