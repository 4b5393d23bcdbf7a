use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    billgate::run(billgate::cli::Opts::parse())
}
