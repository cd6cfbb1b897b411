//! Command-line interface: argument definitions and dispatch.

mod agent;
mod crd;
mod docs;
mod listen;
mod migrate;
mod neutron;
mod notify;
mod plan;
mod reconcile;
mod release;
mod routers;
mod run;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hagw_core::config::{self, Config};

use crate::logging::LogArgs;

/// Exit code for invalid input (configuration errors).
pub const EXIT_INVALID_INPUT: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "hagw",
    version,
    about = "Keeps the gateway ports of HA routers silent on standby nodes and loud on the primary",
    long_about = "hagw compares the desired state of each HA router's gateway port (role, \
                  strategy) with what it observes (link, addresses, IPv6 sysctls, layer-2 \
                  hold), plans the ordered steps between them, applies them and verifies."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a configuration file and exit: 0 if valid, 2 if not.
    #[command(after_help = "Example:\n  hagw validate -c /etc/hagw/routers.yaml")]
    Validate(ConfigArg),
    /// Observe this host and print the ordered actions per router, changing nothing.
    #[command(after_help = "Examples:\n  hagw plan -c /etc/hagw/routers.yaml\n  \
                            hagw plan -c routers.yaml --output json\n  \
                            hagw plan --neutron /var/lib/neutron --backend ovs --strategy l2-hold")]
    Plan(plan::PlanArgs),
    /// Apply the plans, then re-observe and verify. Exit 1 if any router fails.
    #[command(after_help = "Examples:\n  hagw reconcile -c /etc/hagw/routers.yaml --once\n  \
                            hagw reconcile -c routers.yaml --interval 10")]
    Reconcile(reconcile::ReconcileArgs),
    /// Run the event-driven agent: keep every router converged, react to failovers at once.
    #[command(after_help = "Examples:\n  hagw run -c /etc/hagw/routers.yaml\n  \
                            hagw run -c routers.yaml --resync 30 --log-level info\n  \
                            hagw run --neutron /var/lib/neutron --backend ovs --strategy l2-hold\n  \
                            hagw run -c routers.yaml --lock-file /var/lib/hagw/agent.lock")]
    Run(run::RunArgs),
    /// One pass for one router with the role keepalived announces (a notify script).
    #[command(after_help = "Example (keepalived.conf, vrrp_instance):\n  \
                            notify_master \"/usr/bin/hagw notify -c /etc/hagw/routers.yaml r1 MASTER\"\n  \
                            notify_backup \"/usr/bin/hagw notify -c /etc/hagw/routers.yaml r1 BACKUP\"")]
    Notify(notify::NotifyArgs),
    /// Run as the per-node agent of the Kubernetes operator (DaemonSet mode).
    #[command(after_help = "Examples:\n  NODE_NAME=net-1 hagw agent --kubernetes\n  \
                            NODE_NAME=net-1 hagw agent --kubernetes --discover-neutron \\\n      \
                            --neutron-state-path /var/lib/neutron,/var/lib/neutron/kolla \\\n      \
                            --neutron-process neutron-l3-agent,keepalived --backend ovs")]
    Agent(agent::AgentArgs),
    /// Ask a running agent what it does: one line per router (role, hold and since when,
    /// last role change, errors, leak alarm). Needs no privileges.
    #[command(after_help = "Examples:\n  hagw status\n  \
                            hagw status --addr 10.0.0.5:9477 -o json")]
    Status(status::StatusArgs),
    /// Hand routers' ports back as Neutron's agents would have them without hagw (held
    /// standbys silenced as far as possible, then released). Stop the agent first: it would
    /// hold them again.
    #[command(after_help = "Examples:\n  hagw release -c /etc/hagw/routers.yaml r1 r2\n  \
                            systemctl stop hagw && hagw release -c /etc/hagw/routers.yaml --all \\\n      \
                            --lock-file /var/lib/hagw/agent.lock\n  \
                            hagw release --neutron /var/lib/neutron --backend ovs --all\n  \
                            hagw release --state-dir /var/lib/hagw --lock-file /var/lib/hagw/agent.lock --all")]
    Release(release::ReleaseArgs),
    /// Write the manual pages (hagw.1 and one per subcommand) into a directory.
    #[command(after_help = "Example:\n  hagw man /usr/share/man/man1")]
    Man(docs::ManArgs),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  hagw completions bash > /usr/share/bash-completion/completions/hagw"
    )]
    Completions(docs::CompletionsArgs),
    /// Print the HARouter CustomResourceDefinition (YAML).
    #[command(after_help = "Example:\n  hagw crd | kubectl apply --server-side -f -")]
    Crd,
    /// Store every HARouter as v1beta1 and drop v1alpha1 from the CRD's storedVersions (once,
    /// after applying the new CRD; needs update on harouters and on the CRD's status).
    #[command(
        after_help = "Examples:\n  hagw migrate --dry-run\n  KUBECONFIG=admin.conf hagw migrate"
    )]
    Migrate(migrate::MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Router configuration file (YAML).
    #[arg(short, long, env = "HAGW_CONFIG", default_value = "/etc/hagw/routers.yaml")]
    pub config: PathBuf,
}

impl ConfigArg {
    /// Loads the file, printing the error and returning the exit code if it is invalid.
    fn load(&self) -> Result<Config, ExitCode> {
        config::load(&self.config).map_err(|e| {
            eprintln!("hagw: invalid configuration: {e}");
            ExitCode::from(EXIT_INVALID_INPUT)
        })
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(args) => match args.load() {
            Ok(config) => {
                println!("{}: ok, {} router(s)", args.config.display(), config.routers.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Plan(args) => plan::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Notify(args) => notify::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Status(args) => status::run(args),
        Command::Release(args) => release::run(args).await,
        Command::Man(args) => docs::man(args),
        Command::Completions(args) => docs::completions(args),
        Command::Crd => crd::run(),
        Command::Migrate(args) => migrate::run(args).await,
    }
}

/// The dataplane for this host, shared by all routers of a configuration.
fn dataplane(config: &Config) -> hagw_backends::dataplane::HostDataplane {
    hagw_backends::dataplane::HostDataplane::for_config(config)
}

fn describe_wait(wait: &hagw_core::Wait) -> String {
    match wait {
        hagw_core::Wait::DeviceMissing => "the gateway device does not exist yet".into(),
        hagw_core::Wait::SilenceSettling { remaining } => {
            format!("silence to settle ({} ms) before lifting a hold", remaining.as_millis())
        }
        hagw_core::Wait::L2NotWired => "the L2 agent to wire the port before release".into(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// The project rule: every subcommand's `--help` ends with an example of its use.
    #[test]
    fn every_subcommand_shows_an_example() {
        let command = Cli::command();
        let missing: Vec<&str> = command
            .get_subcommands()
            .filter(|sub| sub.get_name() != "help")
            .filter(|sub| {
                let after = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
                !(after.starts_with("Example") && after.contains("hagw "))
            })
            .map(|sub| sub.get_name())
            .collect();
        assert!(missing.is_empty(), "subcommands without an example: {missing:?}");
    }

    #[test]
    fn every_example_parses_with_the_current_flags() {
        for sub in Cli::command().get_subcommands().filter(|s| s.get_name() != "help") {
            let after = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            let lines = example_lines(&after);
            assert!(!lines.is_empty(), "`{}` has no `hagw …` example line", sub.get_name());
            for line in lines {
                let words = shell_words(&line);
                Cli::try_parse_from(&words).unwrap_or_else(|e| {
                    panic!("example of `{}` does not parse: {line}\n{e}", sub.get_name())
                });
            }
        }
    }

    /// The `hagw …` command lines of an example text: continuation lines joined, comments,
    /// environment assignments, redirections and anything after `&&` or `|` dropped.
    fn example_lines(text: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut pending = String::new();
        for raw in text.lines().skip(1) {
            let part = raw.split(" #").next().unwrap_or_default().trim();
            pending.push_str(part.trim_end_matches('\\'));
            pending.push(' ');
            if part.ends_with('\\') {
                continue;
            }
            let command = std::mem::take(&mut pending);
            let command = command.split(" > ").next().unwrap_or_default();
            let command = command.rsplit("&& ").next().unwrap_or_default();
            if let Some(start) = command.find("hagw ") {
                let line = command[start..].split(" | ").next().unwrap_or_default();
                let words: Vec<&str> =
                    line.trim_end().trim_end_matches('"').split_whitespace().collect();
                lines.push(words.join(" "));
            }
        }
        lines
    }

    fn shell_words(line: &str) -> Vec<String> {
        line.split_whitespace().map(|w| w.trim_matches('"').to_string()).collect()
    }

    #[test]
    fn example_lines_are_extracted_as_a_shell_would_run_them() {
        let text = "Examples:\n  NODE_NAME=n hagw agent --kubernetes \\\n      --backend ovs\n  \
                    systemctl stop hagw && hagw release --all   # note\n  \
                    hagw completions bash > /tmp/x\n  notify_master \"/usr/bin/hagw notify r1 MASTER\"";
        assert_eq!(
            example_lines(text),
            [
                "hagw agent --kubernetes --backend ovs",
                "hagw release --all",
                "hagw completions bash",
                "hagw notify r1 MASTER",
            ]
        );
    }
}
