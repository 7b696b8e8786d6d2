//! The `dilaseg` binary: a thin layer over the library (see `cli`).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Devices { gpu } => cli::devices(gpu),
        Command::Train(args) => cli::train::run(args, &argv),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
