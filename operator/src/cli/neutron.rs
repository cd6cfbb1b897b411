//! The settings of discovered Neutron routers, shared by `hagw run --neutron` and
//! `hagw agent --kubernetes --discover-neutron`: what keepalived.conf cannot say (how the
//! gateway port is attached at layer 2 and how to hold it), and for the agent where Neutron's
//! state paths are.

use std::path::PathBuf;

use clap::ValueEnum;
use hagw_core::model::Strategy;
use hagw_core::neutron::{BackendDefault, BridgeLookup, NeutronDefaults, StateAccess};

use crate::agent::NeutronSource;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendKind {
    Ovs,
    Linuxbridge,
    Generic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    L2Hold,
    LinkDown,
    SilenceOnly,
}

/// How discovered routers are attached and held.
#[derive(Debug, clap::Args)]
pub struct NeutronArgs {
    /// Discovered routers: the L2 backend of their gateway ports.
    #[arg(long, env = "HAGW_NEUTRON_BACKEND", value_enum, default_value = "ovs")]
    pub backend: BackendKind,
    /// Discovered routers: the standby strategy.
    #[arg(long, env = "HAGW_NEUTRON_STRATEGY", value_enum, default_value = "l2-hold")]
    pub strategy: StrategyArg,
    /// Discovered routers with --backend linuxbridge: the bridge of every gateway tap
    /// (default: read each tap's bridge from /sys/class/net).
    #[arg(long, env = "HAGW_NEUTRON_BRIDGE")]
    pub bridge: Option<String>,
}

impl NeutronArgs {
    pub fn defaults(&self) -> NeutronDefaults {
        let backend = match self.backend {
            BackendKind::Ovs => BackendDefault::Ovs,
            BackendKind::Generic => BackendDefault::Generic,
            BackendKind::Linuxbridge => BackendDefault::Linuxbridge(match &self.bridge {
                Some(bridge) => BridgeLookup::Fixed(bridge.clone()),
                None => BridgeLookup::Sysfs("/sys/class/net".into()),
            }),
        };
        let strategy = match self.strategy {
            StrategyArg::L2Hold => Strategy::L2Hold,
            StrategyArg::LinkDown => Strategy::LinkDown,
            StrategyArg::SilenceOnly => Strategy::SilenceOnly,
        };
        NeutronDefaults { backend, strategy, ..NeutronDefaults::default() }
    }
}

/// How state paths are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RootArg {
    /// Inside the root of the processes --neutron-process names (`/proc/<pid>/root`).
    Process,
    /// As they are where hagw runs (the host's, or host paths mounted at them).
    Host,
}

/// Neutron discovery in the Kubernetes agent.
#[derive(Debug, clap::Args)]
pub struct DiscoveryArgs {
    /// Also manage the HA routers Neutron's L3 agent runs on this node, found in its
    /// `ha_confs` (keepalived.conf, state, keepalived pid files); an HARouter for the same
    /// router id takes precedence.
    #[arg(long, env = "HAGW_DISCOVER_NEUTRON")]
    pub discover_neutron: bool,
    /// Neutron's state_path as the L3 agent sees it, each holding `ha_confs`; several are
    /// tried (openstack-helm and packages: /var/lib/neutron; kolla-ansible:
    /// /var/lib/neutron/kolla).
    #[arg(
        long,
        env = "HAGW_NEUTRON_STATE_PATH",
        value_delimiter = ',',
        default_value = "/var/lib/neutron,/var/lib/neutron/kolla"
    )]
    pub neutron_state_path: Vec<PathBuf>,
    /// Where the state paths are read: `process` inside the root of the processes
    /// --neutron-process names (containerized Neutron; needs the host pid namespace and
    /// CAP_SYS_PTRACE), `host` as they are where hagw runs.
    #[arg(long, env = "HAGW_NEUTRON_ROOT", value_enum, default_value = "process")]
    pub neutron_root: RootArg,
    /// With --neutron-root process: the processes whose root holds the state paths, by a
    /// string their command line contains, in order of preference.
    #[arg(
        long,
        env = "HAGW_NEUTRON_PROCESS",
        value_delimiter = ',',
        default_value = "neutron-l3-agent,keepalived"
    )]
    pub neutron_process: Vec<String>,
    #[command(flatten)]
    pub routers: NeutronArgs,
}

impl DiscoveryArgs {
    /// The source, if discovery is on; an error names the setting that makes it unusable.
    pub fn source(&self) -> Result<Option<NeutronSource>, String> {
        if !self.discover_neutron {
            return Ok(None);
        }
        if self.neutron_state_path.iter().any(|p| !p.is_absolute()) {
            return Err(format!(
                "--neutron-state-path (HAGW_NEUTRON_STATE_PATH): expected absolute paths, got {:?}",
                self.neutron_state_path
            ));
        }
        let access = match self.neutron_root {
            RootArg::Host => StateAccess::Direct,
            RootArg::Process => {
                let needles: Vec<String> =
                    self.neutron_process.iter().filter(|n| !n.is_empty()).cloned().collect();
                if needles.is_empty() {
                    return Err("--neutron-process (HAGW_NEUTRON_PROCESS): expected at least \
                                one string with --neutron-root process"
                        .into());
                }
                StateAccess::Processes(needles)
            }
        };
        Ok(Some(NeutronSource {
            state_paths: self.neutron_state_path.clone(),
            access,
            defaults: self.routers.defaults(),
        }))
    }
}
