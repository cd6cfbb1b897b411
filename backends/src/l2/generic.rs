//! The generic backend: for ports whose switch side hagw knows nothing about. It reports
//! the port as always wired (nothing to wait for) and unholdable, which makes the planner
//! guard a standby with link-down instead.

use hagw_core::Error;
use hagw_core::model::RouterSpec;
use hagw_core::observed::{L2Hold, L2State};

use super::target;

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenericL2;

impl GenericL2 {
    pub async fn observe(&self, _spec: &RouterSpec) -> Result<L2State, Error> {
        Ok(L2State { hold: L2Hold::Unsupported, wired: true })
    }

    pub async fn hold(&self, spec: &RouterSpec) -> Result<(), Error> {
        Err(Error::permanent("hold l2", target(spec), "generic backend cannot hold"))
    }

    pub async fn release(&self, spec: &RouterSpec) -> Result<(), Error> {
        Err(Error::permanent("release l2", target(spec), "generic backend cannot hold"))
    }
}
