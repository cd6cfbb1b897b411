//! `hagw release`: hands routers' ports back deliberately, as the agent does when a router
//! leaves its node — a standby silenced as far as it can be and released once that has
//! settled (settings that cannot be written are printed, and do not keep the hold), a
//! primary left forwarding — so that Neutron's agents and keepalived work without hagw.
//! Refuses while an agent holds the node lock: it would hold the ports again. With
//! `--state-dir` it releases what a Kubernetes agent enforced last, for a node whose agent
//! was not running when the chart was uninstalled.

use std::path::PathBuf;
use std::process::ExitCode;

use hagw_core::RouterSpec;

use super::EXIT_INVALID_INPUT;
use super::routers::RoutersArg;
use crate::k8s::handback;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["routers", "all"])))]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub source: RoutersArg,
    /// Router ids to release.
    pub routers: Vec<String>,
    /// Release every router of the configuration.
    #[arg(long)]
    pub all: bool,
    /// The node lock of the agents (`hagw run --lock-file`): release refuses while it is held.
    #[arg(long, env = "HAGW_LOCK_FILE")]
    pub lock_file: Option<PathBuf>,
    /// Release the routers the Kubernetes agent with this state directory (the chart's
    /// `stateDir`) enforced last, from its spec caches: for a node whose agent was not
    /// running when the chart was uninstalled.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "neutron"])]
    pub state_dir: Option<PathBuf>,
}

pub async fn run(args: ReleaseArgs) -> ExitCode {
    let config = match &args.state_dir {
        Some(dir) => {
            let routers = crate::k8s::cached_routers(dir);
            if routers.is_empty() {
                eprintln!("hagw release: no cached routers in {}; nothing released", dir.display());
                return ExitCode::from(EXIT_INVALID_INPUT);
            }
            hagw_core::config::Config { ovsdb: args.source.ovsdb.clone(), routers }
        }
        None => match args.source.load() {
            Ok(config) => config,
            Err(code) => return code,
        },
    };
    let chosen: Vec<RouterSpec> = if args.all {
        config.routers.clone()
    } else {
        let unknown: Vec<&String> =
            args.routers.iter().filter(|id| !config.routers.iter().any(|r| &r.id == *id)).collect();
        if !unknown.is_empty() {
            let origin = match &args.state_dir {
                Some(dir) => format!("the spec caches in {}", dir.display()),
                None => args.source.origin(),
            };
            eprintln!("hagw release: no router {unknown:?} in {origin}; nothing released");
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
        config.routers.iter().filter(|r| args.routers.contains(&r.id)).cloned().collect()
    };
    let _lock = match &args.lock_file {
        Some(path) => match crate::lock::try_acquire(path) {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => {
                eprintln!(
                    "hagw release: an agent holds {} and would hold the ports again: stop it first",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("hagw release: cannot open the lock {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let dataplane = super::dataplane(&config);
    let passes = chosen.iter().map(|spec| {
        let span = tracing::info_span!("release", router = %spec.id, netns = %spec.namespace);
        tracing::Instrument::instrument(handback::hand_back(dataplane.clone(), spec.clone()), span)
    });
    let done = futures::future::join_all(passes).await;
    let mut failed = false;
    for (spec, released) in chosen.iter().zip(done) {
        let port = format!("{}/{}", spec.namespace, spec.gateway_device);
        match released.as_deref() {
            Some([]) => println!("{}: released ({port})", spec.id),
            Some(unapplied) => {
                let unapplied: Vec<String> = unapplied.iter().map(ToString::to_string).collect();
                println!("{}: released ({port}) without: {}", spec.id, unapplied.join(", "));
            }
            None => {
                println!("{}: NOT released: the port may still be held (see the log)", spec.id);
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
