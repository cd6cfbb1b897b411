//! `hagw reconcile`: apply, re-observe, verify; once or on an interval.

use std::process::ExitCode;
use std::time::Duration;

use hagw_backends::dataplane::HostDataplane;
use hagw_core::Wait;
use hagw_core::config::Config;
use hagw_core::reconcile::{
    PassReport, ReconcileError, RetryPolicy, RouterMemory, reconcile_router,
};
use hagw_core::{Role, RouterSpec};

use crate::roles::RoleReader;

use super::ConfigArg;

/// Passes `--once` spends at most waiting for a standby's silence to settle.
const SETTLE_PASSES: usize = 3;

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Run until every router has converged (or failed), then exit.
    #[arg(long)]
    pub once: bool,
    /// Without --once: seconds between passes.
    #[arg(long, default_value_t = 10, conflicts_with = "once")]
    pub interval: u64,
}

pub async fn run(args: ReconcileArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dataplane = super::dataplane(&config);
    let mut memories = vec![RouterMemory::default(); config.routers.len()];
    loop {
        let ok = pass(&config, &dataplane, &mut memories).await;
        if args.once {
            return if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.interval)) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// Reconciles every router concurrently; true if all converged.
async fn pass(config: &Config, dataplane: &HostDataplane, memories: &mut [RouterMemory]) -> bool {
    let roles = RoleReader::new(dataplane.linux().clone());
    let results = futures::future::join_all(
        config
            .routers
            .iter()
            .zip(memories.iter_mut())
            .map(|(spec, memory)| converge(dataplane, &roles, spec, memory)),
    )
    .await;
    let mut ok = true;
    for (spec, (role, result)) in config.routers.iter().zip(results) {
        ok &= report(spec, role, &result);
    }
    ok
}

/// One router: passes until nothing is left but waiting for something outside hagw, so a
/// standby whose silence must settle before a hold is lifted still converges in one run.
async fn converge(
    dataplane: &HostDataplane,
    roles: &RoleReader,
    spec: &RouterSpec,
    memory: &mut RouterMemory,
) -> (Role, Result<Vec<PassReport>, ReconcileError>) {
    let policy = RetryPolicy::default();
    let (role, _) = roles.resolve(spec).await;
    let mut reports = Vec::new();
    for _ in 0..SETTLE_PASSES {
        match reconcile_router(dataplane, spec, role, memory, &policy, None).await {
            Ok(report) => {
                let settle = match report.wait {
                    Some(Wait::SilenceSettling { remaining }) => Some(remaining),
                    _ => None,
                };
                reports.push(report);
                match settle {
                    Some(remaining) => tokio::time::sleep(remaining).await,
                    None => break,
                }
            }
            Err(e) => return (role, Err(e)),
        }
    }
    (role, Ok(reports))
}

fn report(spec: &RouterSpec, role: Role, result: &Result<Vec<PassReport>, ReconcileError>) -> bool {
    let head = format!("router {} ({}, {})", spec.id, role.as_str(), spec.strategy.as_str());
    match result {
        Ok(reports) => {
            let applied: Vec<String> =
                reports.iter().flat_map(|r| r.applied.iter().map(ToString::to_string)).collect();
            let wait = reports.last().and_then(|r| r.wait);
            if applied.is_empty() {
                println!("{head}: already converged");
            } else {
                println!("{head}: applied {} step(s), verified", applied.len());
                for step in applied {
                    println!("  - {step}");
                }
            }
            if let Some(wait) = wait {
                println!("  waiting: {}", super::describe_wait(&wait));
            }
            let degraded: Vec<_> = reports.iter().flat_map(|r| &r.degraded).collect();
            for failure in &degraded {
                eprintln!("{head}: DEGRADED: {failure}");
            }
            degraded.is_empty()
        }
        Err(e) => {
            eprintln!("{head}: FAILED: {e}");
            false
        }
    }
}
