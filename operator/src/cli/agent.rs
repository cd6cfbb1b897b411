//! `hagw agent --kubernetes`: the per-node agent of the Kubernetes operator.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hagw_core::config::DEFAULT_OVSDB;
use hagw_core::supervisor::WorkerConfig;

use super::EXIT_INVALID_INPUT;
use super::listen::ListenArgs;
use super::neutron::DiscoveryArgs;
use crate::k8s::{self, Limit, agent::Options};

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Take the routers from HARouter resources (required: for a routers file, use `hagw run`).
    #[arg(long)]
    pub kubernetes: bool,
    /// This node's name as listed in `HARouter.spec.nodes` (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Namespace of the HARouter objects the agent creates for the routers it discovers (the
    /// DaemonSet's own, through the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Directory for the local copy of this node's specs (enforced at start-up before the API
    /// server answers, and used to hand back routers deleted while the agent was down).
    #[arg(long, env = "HAGW_STATE_DIR", default_value = "/var/lib/hagw")]
    pub state_dir: PathBuf,
    /// A file to create once this node's routers are enforced (their first pass done), for
    /// Neutron's agents to wait for at boot; on a tmpfs such as /run, so that a boot clears
    /// it. Never removed by the agent.
    #[arg(long, env = "HAGW_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// The kubelet's probes use the endpoint: an address that cannot be bound stops the agent.
    #[command(flatten)]
    pub endpoint: ListenArgs,
    /// OVSDB endpoint for routers with the `ovs` backend.
    #[arg(long, env = "HAGW_OVSDB", default_value = DEFAULT_OVSDB)]
    pub ovsdb: String,
    /// Seconds between full re-observations of every router, even without events (each wait
    /// spread by ±10 %).
    #[arg(long, env = "HAGW_RESYNC", default_value_t = 60)]
    pub resync: u64,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// Sustained API writes per second (status entries, discovered routers' objects).
    #[arg(long, env = "HAGW_API_QPS", default_value_t = 20.0)]
    pub api_qps: f64,
    /// API writes allowed at once after a quiet time.
    #[arg(long, env = "HAGW_API_BURST", default_value_t = 50)]
    pub api_burst: u32,
    /// Milliseconds status updates are collected before they are written (a router's
    /// passes during one failover become one write).
    #[arg(long, env = "HAGW_STATUS_WINDOW_MS", default_value_t = 250)]
    pub status_window_ms: u64,
    /// Milliseconds the nodes' entries of an HARouter must be unchanged before its
    /// Ready/Degraded/SplitBrain conditions follow (a clean failover is not reported as "no
    /// primary" or split brain).
    #[arg(long, env = "HAGW_CONDITIONS_SETTLE_MS", default_value_t = 2000)]
    pub conditions_settle_ms: u64,
}

pub async fn run(args: AgentArgs) -> ExitCode {
    if !args.kubernetes {
        eprintln!("hagw agent: only --kubernetes mode exists; for a routers file use `hagw run`");
        return ExitCode::from(EXIT_INVALID_INPUT);
    }
    let neutron = match args.discovery.source() {
        Ok(source) => source,
        Err(e) => {
            eprintln!("hagw agent: {e}");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    let options = match args.node_name.filter(|n| !n.is_empty()) {
        Some(node) => Options {
            node,
            namespace: args.namespace,
            state_dir: args.state_dir,
            ready_file: args.ready_file.filter(|p| !p.as_os_str().is_empty()),
            listen: args.endpoint.listen.0,
            ovsdb: args.ovsdb,
            neutron,
            worker: WorkerConfig {
                resync: Duration::from_secs(args.resync.max(1)),
                ..WorkerConfig::default()
            },
            writes: Limit { qps: args.api_qps.max(0.1), burst: args.api_burst.max(1) },
            status_window: Duration::from_millis(args.status_window_ms),
            conditions_settle: Duration::from_millis(args.conditions_settle_ms),
        },
        None => {
            eprintln!("hagw agent: {}", k8s::Error::NoNodeName);
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
    };
    match k8s::agent::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hagw agent: {e}");
            ExitCode::FAILURE
        }
    }
}
