//! `hagw run`: the long-running, event-driven agent, fed by a configuration file or by
//! discovering the HA routers of a Neutron network node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use hagw_core::config::{self, Config, DEFAULT_OVSDB};
use hagw_core::supervisor::WorkerConfig;

use super::EXIT_INVALID_INPUT;
use super::listen::{Listen, ListenArgs};
use super::neutron::NeutronArgs;
use crate::agent::{Agent, NeutronSource};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Router configuration file (YAML).
    #[arg(
        short,
        long,
        env = "HAGW_CONFIG",
        required_unless_present = "neutron",
        conflicts_with = "neutron"
    )]
    pub config: Option<PathBuf>,
    /// Discover routers from this Neutron state path (`<path>/ha_confs/*/keepalived.conf`).
    #[arg(long, env = "HAGW_NEUTRON", value_name = "STATE_PATH")]
    pub neutron: Option<PathBuf>,
    #[command(flatten)]
    pub routers: NeutronArgs,
    /// With --neutron: the OVSDB endpoint.
    #[arg(long, env = "HAGW_OVSDB", default_value = DEFAULT_OVSDB)]
    pub ovsdb: String,
    /// Seconds between full re-observations of every router, even without events.
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
    let (config, neutron) = match (&args.config, &args.neutron) {
        (Some(path), _) => match config::load(path) {
            Ok(c) => (c, None),
            Err(e) => {
                eprintln!("hagw: invalid configuration: {e}");
                return ExitCode::from(EXIT_INVALID_INPUT);
            }
        },
        (None, Some(state_path)) => {
            let config = Config { ovsdb: args.ovsdb.clone(), routers: Vec::new() };
            let source = NeutronSource::at(state_path.clone(), args.routers.defaults());
            (config, Some(source))
        }
        (None, None) => unreachable!("clap requires one source"),
    };
    let dataplane = super::dataplane(&config);
    let result = async {
        let (mut agent, inputs) = Agent::new(dataplane, worker)?;
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
        match neutron {
            Some(source) => {
                let routers = agent.follow_neutron(source);
                agent.set_routers(routers).await
            }
            None => agent.set_routers(config.routers).await,
        }
        observer.set_sources_ready();
        agent.run(inputs, args.config.as_deref()).await
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
