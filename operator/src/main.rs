//! `hagw`: keeps the gateway ports of HA routers silent on standby nodes and loud on the
//! primary. See `hagw --help`.

mod agent;
mod cli;
mod k8s;
mod lock;
mod logging;
mod memory;
mod observe;
mod ready;
mod roles;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    memory::tune_allocator();
    let args = cli::Cli::parse();
    logging::init(&args.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hagw: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(memory::give_back_freed_memory());
    runtime.block_on(cli::run(args))
}
