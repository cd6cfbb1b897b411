//! `hagw migrate`: moves every stored HARouter to `v1beta1` after the CRD was upgraded
//! (see docs/kubernetes.md, "Upgrading from v1alpha1").

use std::process::ExitCode;

use crate::k8s::migrate::migrate;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Only show what would be written (server-side dry run); nothing changes.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: MigrateArgs) -> ExitCode {
    let report = match migrate(args.dry_run).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("hagw migrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verb = if args.dry_run { "would write" } else { "wrote" };
    for (name, rewritten) in &report.migrated {
        let note = if *rewritten { " (backend: generic -> {generic: {}})" } else { "" };
        println!("{verb} HARouter {name} as v1beta1{note}");
    }
    for (name, reason) in &report.invalid {
        eprintln!("hagw migrate: warning: HARouter {name} is invalid and not enforced: {reason}");
    }
    for (name, reason) in &report.failed {
        eprintln!("hagw migrate: HARouter {name} cannot be stored as v1beta1: {reason}");
    }
    println!("storedVersions: {}", report.stored_versions.join(", "));
    if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
