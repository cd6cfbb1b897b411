//! The nftables side of the Linux bridge hold: the `bridge`-family table `hagw`, written and
//! read over nf_tables netlink ([`crate::l2::nftables`]) on one socket in hagw's own
//! network namespace, where the Linuxbridge agent keeps its bridges.
//!
//! ```text
//! table bridge hagw {
//!   set held_ports { type ifname; counter; }
//!   chain hold { type filter hook prerouting priority -300; policy accept;
//!                iifname @held_ports drop }
//! }
//! ```
//!
//! Why this shape (measured in docs/linuxbridge-hold.md): the bridge prerouting hook sees a
//! frame before FDB learning and before forwarding, a `drop` is final across tables, and
//! the match is on the port's *name*, so the hold is in force before the tap exists and
//! through every re-plug and veth re-creation. One batch ensures the table and adds the
//! element, atomically: there is no instant with the element but without the rule.

use std::sync::Mutex;

use crate::l2::nftables::read::{self, HoldTable};
use crate::l2::nftables::socket::Socket;
use crate::l2::nftables::{Family, HoldSpec, Key, NameMatch, NftError, TABLE};

/// The hold table. Hook 0 is `NF_BR_PRE_ROUTING`; each element counts the frames it dropped.
pub const SPEC: HoldSpec = HoldSpec {
    family: Family::Bridge,
    set: "held_ports",
    hook: 0,
    name_match: NameMatch::Input,
    counter: true,
};

/// What the kernel needs for the table.
pub const KERNEL_CONFIG: &str = "CONFIG_NF_TABLES_BRIDGE";

/// `nft bridge table hagw`: the target of errors about the table.
pub fn table_target() -> String {
    format!("nft {} table {TABLE}", SPEC.family.name())
}

/// `nft set bridge hagw held_ports element tapX`: where hold and release act.
pub fn element_target(port: &str) -> String {
    format!("nft set {} {TABLE} {} element {port}", SPEC.family.name(), SPEC.set)
}

/// The nf_tables socket in hagw's own namespace: opened on first use by the thread that
/// uses it first (a tokio worker, which never changes namespace; a test's thread that has
/// unshared its own), kept open — closing a socket that has committed waits for an RCU grace
/// period — and opened afresh after any error.
#[derive(Debug, Default)]
pub struct HostNft {
    socket: Mutex<Option<Socket>>,
}

impl HostNft {
    fn with<T>(
        &self,
        exchange: impl FnOnce(&mut Socket) -> Result<T, NftError>,
    ) -> Result<T, NftError> {
        let mut slot = self.socket.lock().expect("nft socket lock poisoned");
        let socket = match slot.as_mut() {
            Some(socket) => socket,
            None => slot.insert(Socket::open()?),
        };
        let result = exchange(socket);
        if result.is_err() {
            *slot = None;
        }
        result
    }

    /// The table as it is now; a missing table is an empty [`HoldTable`].
    pub fn read(&self) -> Result<HoldTable, NftError> {
        self.with(|socket| read::read_table(socket, &SPEC))
    }

    /// The names in the set; none when there is no set.
    pub fn held(&self) -> Result<Vec<String>, NftError> {
        self.with(|socket| read::read_elements(socket, &SPEC))
    }

    /// One batch that (re)builds the table and adds `hold` (if any) and deletes `release`
    /// (names the set holds: deleting a missing one aborts the batch with ENOENT).
    pub fn commit(&self, hold: &[Key], release: &[Key]) -> Result<(), NftError> {
        self.with(|socket| {
            socket.commit(|batch| {
                if !hold.is_empty() {
                    batch.ensure(&SPEC);
                    batch.add_elements(&SPEC, hold);
                }
                batch.delete_elements(&SPEC, release);
            })
        })
    }
}
