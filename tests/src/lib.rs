//! Harness for end-to-end tests: network namespaces, veth pairs and bridges built with
//! iproute2, processes started inside them, and captures at the simulated top-of-rack
//! switch. Everything a test creates is removed when its [`Lab`] is dropped, also when the
//! test panics; names are unique per test so tests run in parallel.

pub mod bench;
pub mod capture;
pub mod debroot;
pub mod disrupt;
pub mod frames;
pub mod gateway;
pub mod k8s;
pub mod keepalived;
pub mod lab;
pub mod linuxbridge;
pub mod neutron;
pub mod node;
pub mod ovs;
pub mod ports;
pub mod primary_watch;
pub mod reboot;
pub mod wait;

pub use capture::Capture;
pub use lab::{Lab, hagw_bin, sh};
