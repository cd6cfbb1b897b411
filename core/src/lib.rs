//! hagw core: the model of an HA router's gateway port, the pure planner that orders the
//! actions bringing it to the desired state, and the reconcile loop that applies them through
//! a [`Dataplane`](reconcile::Dataplane).
//!
//! Data flows one way: a spec and a role (desired) and a [`PortState`](observed::PortState)
//! (observed) go into [`plan`](planner::plan), whose [`Action`](action::Action)s a backend
//! applies; the loop then re-observes to verify.

pub mod action;
pub mod config;
pub mod error;
pub mod lane;
pub mod liveness;
pub mod model;
pub mod neutron;
pub mod observed;
pub mod planner;
pub mod reconcile;
pub mod role;
pub mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use action::Action;
pub use error::{Error, ErrorKind};
pub use model::{Role, RoleSource, RouterSpec, Strategy};
pub use observed::{Observed, PortState};
pub use planner::{Plan, Wait, plan};
