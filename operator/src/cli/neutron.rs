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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Discovery {
        #[command(flatten)]
        args: DiscoveryArgs,
    }

    fn source(argv: &[&str]) -> Result<Option<NeutronSource>, String> {
        let argv = std::iter::once("hagw").chain(argv.iter().copied());
        Discovery::try_parse_from(argv).expect("parses").args.source()
    }

    #[test]
    fn without_the_flag_there_is_no_source() {
        assert!(source(&[]).unwrap().is_none());
    }

    #[test]
    fn the_defaults_find_kolla_and_openstack_helm_through_the_agents_root() {
        let found = source(&["--discover-neutron"]).unwrap().unwrap();
        assert_eq!(
            found.state_paths,
            [PathBuf::from("/var/lib/neutron"), PathBuf::from("/var/lib/neutron/kolla")]
        );
        assert_eq!(
            found.access,
            StateAccess::Processes(vec!["neutron-l3-agent".into(), "keepalived".into()])
        );
        assert_eq!(found.defaults.strategy, Strategy::L2Hold);
        assert_eq!(found.defaults.backend, BackendDefault::Ovs);
    }

    #[test]
    fn a_relative_state_path_is_refused_by_name() {
        let err = source(&["--discover-neutron", "--neutron-state-path", "/ok,var/lib/neutron"])
            .unwrap_err();
        assert!(err.starts_with("--neutron-state-path (HAGW_NEUTRON_STATE_PATH)"), "{err}");
    }

    #[test]
    fn process_roots_need_a_process_to_look_for() {
        let err = source(&["--discover-neutron", "--neutron-process", ","]).unwrap_err();
        assert!(err.starts_with("--neutron-process (HAGW_NEUTRON_PROCESS)"), "{err}");
        let host =
            source(&["--discover-neutron", "--neutron-process", ",", "--neutron-root", "host"])
                .unwrap()
                .unwrap();
        assert_eq!(host.access, StateAccess::Direct);
    }

    #[test]
    fn a_linux_bridge_is_fixed_by_flag_or_read_per_tap() {
        let fixed = source(&[
            "--discover-neutron",
            "--backend",
            "linuxbridge",
            "--bridge",
            "brq1",
            "--strategy",
            "silence-only",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            fixed.defaults.backend,
            BackendDefault::Linuxbridge(BridgeLookup::Fixed("brq1".into()))
        );
        assert_eq!(fixed.defaults.strategy, Strategy::SilenceOnly);
        let per_tap = source(&["--discover-neutron", "--backend", "linuxbridge"]).unwrap().unwrap();
        assert_eq!(
            per_tap.defaults.backend,
            BackendDefault::Linuxbridge(BridgeLookup::Sysfs("/sys/class/net".into()))
        );
    }
}
