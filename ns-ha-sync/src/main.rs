//! ns-ha-sync binary: parse the command line, run the library, print the
//! error once with its chain, exit with its code from the shared table.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = ns_ha_sync::Cli::parse();
    match ns_ha_sync::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ns-ha-sync: {err:#}");
            ExitCode::from(ns_ha_common::code_of(&err).as_u8())
        }
    }
}
