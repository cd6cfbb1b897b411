//! Waiting until ovs-vswitchd has applied a change committed to OVSDB, as
//! `ovs-vsctl --wait=vswitchd` does: the transaction also increments
//! `Open_vSwitch.next_cfg`, and ovs-vswitchd copies that value to `cur_cfg` once it has
//! reconfigured itself with everything committed up to it.
//!
//! A release needs this: the commit returns before ovs-vswitchd has moved the port out of
//! the dead VLAN, and an announcement sent in between is dropped by the switch — while the
//! port was held, keepalived's own gratuitous ARPs were dropped too, so hagw's first round is
//! the one that counts (an acceptance run lost it in 4 of 13 IPv4-only takeovers on OVS).

use std::time::Duration;

use tokio::time::Instant;

use crate::ovsdb::{Mutation, Mutator, Op, OvsdbClient, OvsdbError, VSWITCH_DB};

const TABLE: &str = "Open_vSwitch";

/// The ops to append to a transaction: bump `next_cfg`, then read the new value (the result
/// of the last op, see [`target_cfg`]).
pub fn bump_ops() -> [Op; 2] {
    [
        Op::Mutate {
            table: TABLE.into(),
            conditions: vec![],
            mutations: vec![Mutation::new("next_cfg", Mutator::Add, 1i64)],
        },
        Op::Select {
            table: TABLE.into(),
            conditions: vec![],
            columns: Some(vec!["next_cfg".into()]),
        },
    ]
}

/// The `next_cfg` the transaction's last op read, if it did.
pub fn target_cfg(results: &[crate::ovsdb::OpResult]) -> Option<i64> {
    results.last()?.rows.as_ref()?.first()?.get("next_cfg")?.as_i64()
}

/// The `next_cfg` ovs-vswitchd has not reached yet, if any: a port found released in OVSDB
/// may have been released by a commit whose wait ran out (see [`wait_applied`]).
pub async fn behind(client: &OvsdbClient) -> Result<Option<i64>, OvsdbError> {
    let select = Op::Select {
        table: TABLE.into(),
        conditions: vec![],
        columns: Some(vec!["next_cfg".into(), "cur_cfg".into()]),
    };
    let results = client.transact(VSWITCH_DB, std::slice::from_ref(&select)).await?;
    let row = results.first().and_then(|r| r.rows.as_ref()?.first().cloned()).unwrap_or_default();
    let cfg = |column: &str| row.get(column).and_then(|v| v.as_i64()).unwrap_or(0);
    Ok(Some(cfg("next_cfg")).filter(|next| cfg("cur_cfg") < *next))
}

/// How it ended: applied after how long, or not within the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    After(Duration),
    TimedOut,
}

/// Polls `cur_cfg` until it reaches `target` or `within` has passed. The first poll is at
/// once (ovs-vswitchd usually needs a few hundred microseconds), then every 1, 2, 4 … 8 ms.
pub async fn wait_applied(
    client: &OvsdbClient,
    target: i64,
    within: Duration,
) -> Result<Applied, OvsdbError> {
    let start = Instant::now();
    let select = Op::Select {
        table: TABLE.into(),
        conditions: vec![],
        columns: Some(vec!["cur_cfg".into()]),
    };
    let mut delay = Duration::from_millis(1);
    loop {
        let results = client.transact(VSWITCH_DB, std::slice::from_ref(&select)).await?;
        let current = results
            .first()
            .and_then(|r| r.rows.as_ref()?.first()?.get("cur_cfg")?.as_i64())
            .unwrap_or(0);
        if current >= target {
            return Ok(Applied::After(start.elapsed()));
        }
        if start.elapsed() >= within {
            return Ok(Applied::TimedOut);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(8));
    }
}
