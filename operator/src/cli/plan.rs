//! `hagw plan`: observe and print the plan per router, changing nothing.

use std::process::ExitCode;

use clap::ValueEnum;
use hagw_core::reconcile::{RetryPolicy, RouterMemory, dry_run};
use hagw_core::{Observed, Plan, Role, RouterSpec};
use serde::Serialize;

use crate::roles::RoleReader;

use super::routers::RoutersArg;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub routers: RoutersArg,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Serialize)]
struct RouterPlan<'a> {
    router: &'a str,
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed: Option<Observed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(args: PlanArgs) -> ExitCode {
    let config = match args.routers.load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let dataplane = super::dataplane(&config);
    let policy = RetryPolicy::default();
    let roles = RoleReader::new(dataplane.linux().clone());
    let plans = futures::future::join_all(config.routers.iter().map(|spec| {
        let (dataplane, roles) = (&dataplane, &roles);
        async move {
            let (role, _) = roles.resolve(spec).await;
            let result =
                dry_run(dataplane, spec, role, &mut RouterMemory::default(), &policy, None).await;
            (spec, role, result)
        }
    }))
    .await;
    let mut failed = false;
    let mut out = Vec::new();
    for (spec, role, result) in plans {
        let (observed, plan, error) = match result {
            Ok((o, p)) => (Some(o), Some(p), None),
            Err(e) => {
                failed = true;
                (None, None, Some(e.to_string()))
            }
        };
        out.push(RouterPlan { router: &spec.id, role, observed, plan, error });
        if let Output::Text = args.output {
            print_text(spec, out.last().expect("just pushed"));
        }
    }
    if let Output::Json = args.output {
        match serde_json::to_string_pretty(&out) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("hagw: cannot encode the plan: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn print_text(spec: &RouterSpec, entry: &RouterPlan<'_>) {
    println!(
        "router {} (netns {}, dev {}): role {}, strategy {}, backend {}",
        spec.id,
        spec.namespace,
        spec.gateway_device,
        entry.role.as_str(),
        spec.strategy.as_str(),
        spec.backend.kind()
    );
    if let Some(error) = &entry.error {
        println!("  error: {error}");
        return;
    }
    let Some(plan) = &entry.plan else { return };
    if plan.actions.is_empty() {
        println!("  nothing to do");
    }
    for (i, action) in plan.actions.iter().enumerate() {
        println!("  {}. {action}", i + 1);
    }
    if let Some(wait) = &plan.wait {
        println!("  then waiting: {}", super::describe_wait(wait));
    }
}
