//! Southbound backends for hagw: the Linux network-namespace layer (netlink, sysctls),
//! the OVSDB client, and the L2 backends (generic, OVS, Linux bridge).

pub mod netns;
pub mod ovsdb;
pub mod linux;
pub mod l2;
pub mod dataplane;
pub mod events;
pub mod announce;
