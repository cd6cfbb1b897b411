//! Southbound backends for hagw: the Linux network-namespace layer (netlink, sysctls),
//! the OVSDB client, and the L2 backends (generic, OVS, Linux bridge).

pub mod announce;
pub mod dataplane;
pub mod events;
pub mod l2;
pub mod linux;
pub mod netns;
pub mod ovs_watch;
pub mod ovsdb;
pub mod process;
