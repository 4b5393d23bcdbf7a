use std::process::ExitCode;

use clap::Parser;

/// mimalloc: a request allocates about ten times (hyper's head buffers, header maps, the
/// answer); glibc's malloc spent about 5% of the gateway's instructions on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    billgate::run(billgate::cli::Opts::parse())
}
