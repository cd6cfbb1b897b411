//! Where `run`, `plan` and `release` take their routers from: a routers file, or Neutron's
//! files on this node (followed by `run`, read once by the one-shot commands).

use std::path::PathBuf;
use std::process::ExitCode;

use hagw_core::config::{self, Config, DEFAULT_OVSDB};
use hagw_core::neutron::{DiscoveryError, discover};

use super::EXIT_INVALID_INPUT;
use super::neutron::NeutronArgs;

const DEFAULT_CONFIG: &str = "/etc/hagw/routers.yaml";

#[derive(Debug, clap::Args)]
pub struct RoutersArg {
    /// Router configuration file (YAML) [default: /etc/hagw/routers.yaml].
    #[arg(short, long, env = "HAGW_CONFIG", conflicts_with = "neutron")]
    pub config: Option<PathBuf>,
    /// Take the routers from this Neutron state path (`<path>/ha_confs/*/keepalived.conf`)
    /// instead of a file: `run` follows them as Neutron changes them, `plan` and `release`
    /// read them once.
    #[arg(long, env = "HAGW_NEUTRON", value_name = "STATE_PATH")]
    pub neutron: Option<PathBuf>,
    #[command(flatten)]
    pub discovered: NeutronArgs,
    /// With --neutron (or `release --state-dir`): the OVSDB endpoint.
    #[arg(long, env = "HAGW_OVSDB", default_value = DEFAULT_OVSDB)]
    pub ovsdb: String,
}

impl RoutersArg {
    /// Where the routers come from, for messages.
    pub fn origin(&self) -> String {
        match (&self.neutron, &self.config) {
            (Some(state_path), _) => format!("{} (Neutron)", state_path.display()),
            (None, Some(config)) => config.display().to_string(),
            (None, None) => DEFAULT_CONFIG.to_string(),
        }
    }

    /// The routers file, unless the routers come from Neutron.
    pub fn config_file(&self) -> Option<PathBuf> {
        match self.neutron {
            Some(_) => None,
            None => Some(self.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into())),
        }
    }

    /// Loads the routers, printing the error and returning the exit code if there are none
    /// to load: an invalid file, or a state path without `ha_confs`. A Neutron router that
    /// cannot be read is reported and left out, as the agent does.
    pub fn load(&self) -> Result<Config, ExitCode> {
        let Some(state_path) = &self.neutron else {
            let path = self.config_file().unwrap_or_else(|| DEFAULT_CONFIG.into());
            return config::load(&path).map_err(|e| {
                eprintln!("hagw: invalid configuration: {e}");
                ExitCode::from(EXIT_INVALID_INPUT)
            });
        };
        let found = discover(state_path, &self.discovered.defaults());
        for error in &found.errors {
            if let DiscoveryError::Io { .. } = error {
                eprintln!("hagw: no Neutron routers: {error}");
                return Err(ExitCode::from(EXIT_INVALID_INPUT));
            }
            eprintln!("hagw: router left out: {error}");
        }
        let routers = found.routers.into_iter().map(|r| r.spec).collect();
        Ok(Config { ovsdb: self.ovsdb.clone(), routers })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        routers: RoutersArg,
    }

    fn parse(args: &[&str]) -> Result<RoutersArg, clap::Error> {
        Cli::try_parse_from(std::iter::once("hagw").chain(args.iter().copied())).map(|c| c.routers)
    }

    #[test]
    fn a_routers_file_is_the_default() {
        let routers = parse(&[]).unwrap();
        assert_eq!(routers.config_file(), Some(PathBuf::from(DEFAULT_CONFIG)));
        assert_eq!(routers.origin(), DEFAULT_CONFIG);
        let routers = parse(&["-c", "r.yaml"]).unwrap();
        assert_eq!(routers.config_file(), Some(PathBuf::from("r.yaml")));
    }

    #[test]
    fn neutron_replaces_the_file_and_excludes_it() {
        let routers = parse(&["--neutron", "/var/lib/neutron", "--strategy", "link-down"]).unwrap();
        assert_eq!(routers.config_file(), None);
        assert_eq!(routers.origin(), "/var/lib/neutron (Neutron)");
        let both = parse(&["--neutron", "/var/lib/neutron", "-c", "r.yaml"]).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn an_invalid_file_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routers.yaml");
        std::fs::write(&path, "routers: [{id: r1}]\n").unwrap();
        let routers = parse(&["-c", path.to_str().unwrap()]).unwrap();
        assert_eq!(routers.load().unwrap_err(), ExitCode::from(EXIT_INVALID_INPUT));
    }

    #[test]
    fn a_state_path_without_ha_confs_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        let routers = parse(&["--neutron", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(routers.load().unwrap_err(), ExitCode::from(EXIT_INVALID_INPUT));
    }
}
