//! `hagw run`: the long-running, event-driven agent, fed by a configuration file or by
//! discovering the HA routers of a Neutron network node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hagw_core::config::Config;
use hagw_core::supervisor::WorkerConfig;

use super::listen::{Listen, ListenArgs};
use super::routers::RoutersArg;
use crate::agent::{Agent, NeutronSource, Source};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub routers: RoutersArg,
    /// Seconds between full re-observations of every router, even without events (each wait
    /// spread by ±10 %).
    #[arg(long, env = "HAGW_RESYNC", default_value_t = 60)]
    pub resync: u64,
    /// If the endpoint's address cannot be bound, the agent logs an error and runs without it.
    #[command(flatten)]
    pub endpoint: ListenArgs,
    /// A lock file that makes this the only agent on the node: another agent holding it
    /// (the chart's pod locks `<stateDir>/agent.lock`) is waited for, and taken over from
    /// when it exits. Without it, no lock is taken.
    #[arg(long, env = "HAGW_LOCK_FILE", value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
}

pub async fn run(args: RunArgs) -> ExitCode {
    let worker =
        WorkerConfig { resync: Duration::from_secs(args.resync.max(1)), ..WorkerConfig::default() };
    let (config, source) = match &args.routers.neutron {
        None => match args.routers.load() {
            Ok(config) => {
                let path = args.routers.config_file().expect("not Neutron's");
                let source = Source::File { path, routers: config.routers.clone() };
                (config, source)
            }
            Err(code) => return code,
        },
        Some(state_path) => {
            let config = Config { ovsdb: args.routers.ovsdb.clone(), routers: Vec::new() };
            let defaults = args.routers.discovered.defaults();
            (config, Source::neutron(NeutronSource::at(state_path.clone(), defaults)))
        }
    };
    let dataplane = super::dataplane(&config);
    let result = async {
        let agent = Agent::new(dataplane, worker)?;
        let observer = agent.observer();
        if let Listen(Some(addr)) = args.endpoint.listen {
            // Enforcement matters more than its metrics: a taken port is reported, not fatal.
            match crate::observe::server::serve(addr, observer.clone()).await {
                Ok(bound) => {
                    tracing::info!(metrics = %bound, "serving /metrics, /healthz, /readyz")
                }
                Err(e) => tracing::error!(
                    %addr, error = %e,
                    "cannot serve /metrics, /healthz, /readyz; running without them"
                ),
            }
        }
        let _lock = match &args.lock_file {
            Some(path) => Some(
                crate::lock::acquire(path, &observer)
                    .await
                    .with_context(|| format!("node lock {}", path.display()))?,
            ),
            None => None,
        };
        agent.run(source).await.context("signal handler")
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
