//! `hagw run`: the long-running, event-driven agent.

use std::process::ExitCode;
use std::time::Duration;

use hagw_core::supervisor::WorkerConfig;

use super::ConfigArg;
use crate::agent::Agent;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Seconds between full re-observations of every router, even without events.
    #[arg(long, default_value_t = 60)]
    pub resync: u64,
}

pub async fn run(args: RunArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dataplane = super::dataplane(&config);
    let worker =
        WorkerConfig { resync: Duration::from_secs(args.resync.max(1)), ..WorkerConfig::default() };
    let result = async {
        let (mut agent, inputs) = Agent::new(dataplane, worker)?;
        agent.set_routers(config.routers).await;
        agent.run(inputs).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hagw run: {e:#}");
            ExitCode::FAILURE
        }
    }
}
