//! The periodic look for what no event reports: `no-receive` changed by another OpenFlow
//! client, or lost in an ovs-vswitchd restart the run directory's watch missed.
//!
//! It used to wake every router's pass every 10 s, which is a pass over netlink, OVSDB and
//! OpenFlow per router: with 1,000 routers 5–7 % of a core at rest, and the per-namespace
//! netlink connections, closed after 10 s unused, never were (1,000 more sockets, ~20 MiB
//! more RSS at rest). Now it lists each bridge's ports once (one OpenFlow exchange per
//! bridge) and reports the ports whose `no-receive` differs from the last look; only if it
//! cannot tell (no listing yet, a bridge that does not answer) does it wake every router.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::l2::ovs::openflow;

/// Each bridge's ports' `no-receive` bits, by port name.
pub(super) type Bits = BTreeMap<String, bool>;

/// Lists every bridge of `rundir` (its `<bridge>.mgmt` sockets); `None` if any of them
/// cannot be listed.
pub(super) async fn look(rundir: PathBuf) -> Option<Bits> {
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(&rundir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| is_mgmt(path))
        .collect();
    sockets.sort();
    let mut bits = Bits::new();
    for socket in sockets {
        match openflow::exchange(&socket, &[]).await {
            Ok(done) => bits.extend(done.ports.iter().map(|p| (p.name.clone(), p.no_receive()))),
            Err(e) => {
                debug!(socket = %socket.display(), error = %e, "recheck: bridge not listed");
                return None;
            }
        }
    }
    Some(bits)
}

/// The ports whose bit differs between two looks, including ports in only one of them.
pub(super) fn changed(before: &Bits, now: &Bits) -> Vec<String> {
    let mut ports: Vec<String> = now
        .iter()
        .filter(|(port, bit)| before.get(*port) != Some(bit))
        .map(|(p, _)| p.clone())
        .collect();
    ports.extend(before.keys().filter(|port| !now.contains_key(*port)).cloned());
    ports
}

/// Whether `path` is a bridge's management socket (`<bridge>.mgmt`).
fn is_mgmt(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "mgmt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ports_whose_bit_changed_or_that_came_or_went_are_reported() {
        let bits = |list: &[(&str, bool)]| -> Bits {
            list.iter().map(|(p, b)| ((*p).to_owned(), *b)).collect()
        };
        let before = bits(&[("qg-1", true), ("qg-2", false), ("qg-3", true), ("qg-gone", true)]);
        let now = bits(&[("qg-1", true), ("qg-2", true), ("qg-3", false), ("qg-new", false)]);
        assert_eq!(changed(&before, &now), ["qg-2", "qg-3", "qg-new", "qg-gone"]);
        assert!(changed(&now, &now).is_empty());
        assert!(is_mgmt(Path::new("/run/openvswitch/br-int.mgmt")));
        assert!(!is_mgmt(Path::new("/run/openvswitch/br-int.snoop")));
    }
}
