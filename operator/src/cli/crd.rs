//! `hagw crd`: prints the `HARouter` CustomResourceDefinition generated from the Rust types.
//! The chart's `crds/harouter.yaml` is this output; a test keeps them identical.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    match crate::k8s::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hagw: cannot render the CRD: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// The chart ships the CRD as a file (Helm installs `crds/` before templates); it must be
    /// exactly what the types generate. Regenerate with `hagw crd > charts/hagw/crds/harouter.yaml`.
    #[test]
    fn chart_crd_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hagw/crds/harouter.yaml");
        let chart = std::fs::read_to_string(path).expect("charts/hagw/crds/harouter.yaml");
        let generated = crate::k8s::crd::crd_yaml().expect("CRD renders");
        assert!(
            chart == generated,
            "{path} is stale: run `cargo run -p hagw -- crd > charts/hagw/crds/harouter.yaml`"
        );
    }
}
