//! `hagw notify`: a one-shot pass for one router with the role keepalived just announced,
//! usable as keepalived's notify script so a takeover completes even if the agent is down.

use std::process::ExitCode;

use hagw_core::Role;
use hagw_core::reconcile::{RetryPolicy, RouterMemory, reconcile_router};

use super::{ConfigArg, EXIT_INVALID_INPUT};
use crate::roles::RoleReader;

#[derive(Debug, clap::Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Router id as in the configuration.
    pub router: String,
    /// The new state: keepalived's MASTER, BACKUP or FAULT, or primary / backup / standby.
    pub state: String,
}

/// keepalived's words and Neutron's: anything not a known primary is handled as standby.
fn parse_state(word: &str) -> Option<Role> {
    match word.to_ascii_lowercase().as_str() {
        "master" | "primary" => Some(Role::Primary),
        "backup" | "standby" | "fault" | "stop" => Some(Role::Standby),
        _ => None,
    }
}

pub async fn run(args: NotifyArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(role) = parse_state(&args.state) else {
        eprintln!("hagw notify: unknown state {:?} (expected MASTER, BACKUP or FAULT)", args.state);
        return ExitCode::from(EXIT_INVALID_INPUT);
    };
    let Some(spec) = config.routers.iter().find(|r| r.id == args.router) else {
        eprintln!(
            "hagw notify: router {:?} is not in {}",
            args.router,
            args.config.config.display()
        );
        return ExitCode::from(EXIT_INVALID_INPUT);
    };
    let dataplane = super::dataplane(&config);
    // keepalived's word is one input of the rule every command uses: a VIP reading or a dead
    // keepalived outranks it (a notify script can run late, after the next transition).
    let roles = RoleReader::new(dataplane.linux().clone());
    let (role, _) = roles.resolve_notified(spec, Some(role)).await;
    let mut memory = RouterMemory::default();
    match reconcile_router(&dataplane, spec, role, &mut memory, &RetryPolicy::default(), None).await
    {
        Ok(report) => {
            println!(
                "router {} ({}): {} step(s) applied",
                spec.id,
                role.as_str(),
                report.applied.len()
            );
            for failure in &report.degraded {
                eprintln!("hagw notify: router {}: DEGRADED: {failure}", spec.id);
            }
            if report.degraded.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("hagw notify: router {}: {e}", spec.id);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalived_and_neutron_words() {
        assert_eq!(parse_state("MASTER"), Some(Role::Primary));
        assert_eq!(parse_state("primary"), Some(Role::Primary));
        assert_eq!(parse_state("BACKUP"), Some(Role::Standby));
        assert_eq!(parse_state("FAULT"), Some(Role::Standby));
        assert_eq!(parse_state("sideways"), None);
    }
}
