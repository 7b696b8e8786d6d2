//! The `dilaseg` binary: a thin layer over the library (see `cli`).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Devices { gpu } => cli::devices(gpu).map(|()| true),
        Command::Train(args) => cli::train::run(args, &argv).map(|()| true),
        Command::Infer(args) => cli::infer::run(args),
        Command::Eval(args) => cli::eval::run(args),
        Command::Profile(args) => cli::profile::run(args).map(|()| true),
        Command::Bench(args) => cli::bench::run(args),
        Command::Demo(args) => cli::demo::run(args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // Some inputs failed (each reported); the rest were done.
        Ok(false) => ExitCode::from(cli::status::PARTIAL),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::error_status(&e))
        }
    }
}
