use std::process::ExitCode;

use billgate::allocator::Mimalloc;
use clap::Parser;

#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

fn main() -> ExitCode {
    billgate::run(billgate::cli::Opts::parse())
}
