//! OVSDB (RFC 7047) client.
//!
//! hagw holds standby HA-router gateway ports in OVS's dead VLAN 4095 by writing `Port.tag`,
//! `vlan_mode` and `trunks` in one transaction, guarded by a `wait` on the state it observed, and
//! watches those columns through a monitor so it notices when anything undoes the hold. The
//! available crates could not do that (no `wait`/`mutate`, panics on notifications), so this is a
//! small purpose-built client:
//!
//! - [`codec`]: JSON-RPC 1.0 framing over a byte stream,
//! - [`value`]: OVSDB atoms, sets, maps and UUIDs,
//! - [`ops`]: typed `transact` operations and results,
//! - [`monitor`]: monitor requests, table updates and the event stream,
//! - [`rows`]: typed `Port`/`Interface` rows,
//! - [`client`]: the connection task and the [`OvsdbClient`] handle.

pub mod client;
pub mod codec;
pub mod error;
pub mod monitor;
pub mod ops;
pub mod rows;
pub mod transport;
pub mod value;

pub use client::{ClientConfig, OvsdbClient};
pub use error::{OvsdbError, Result};
pub use monitor::{
    MonitorEvent, MonitorRequest, MonitorRequests, MonitorSelect, MonitorStream, RowUpdate,
    TableUpdates,
};
pub use ops::{
    Condition, Function, JsonRow, Mutation, Mutator, Op, OpResult, RowValues, WaitUntil,
};
pub use rows::{InterfaceRow, PortRow};
pub use transport::Endpoint;
pub use value::{Atom, Uuid, Value};

/// Name of the Open vSwitch database served by ovsdb-server.
pub const VSWITCH_DB: &str = "Open_vSwitch";
