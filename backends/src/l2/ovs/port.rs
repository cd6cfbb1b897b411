//! The pure part of the OVS backend: what a `Port` row means for the hold, and the operations
//! that hold and release it. No I/O, so every rule here is unit-tested.
//!
//! The hold is exactly Neutron's dead VLAN: `tag=4095`, `vlan_mode=trunk`, `trunks=[4095]`.
//! The tag alone is not enough: an access port still passes untagged frames to NORMAL, which
//! floods them (LP 1930414). Both changes are guarded by a `wait` on the row as it was read,
//! so a concurrent writer (the OVS agent retagging the port) makes hagw's transaction fail and
//! be re-planned instead of silently overwriting the agent or being overwritten half-way.

use hagw_core::observed::{HoldState, L2State};

use crate::ovsdb::{Condition, Mutation, Mutator, Op, PortRow, RowValues, Value, WaitUntil};

/// OVS's dead VLAN: a port tagged with it reaches no uplink (the provider bridges only pass
/// the real local VLAN) and Neutron's br-int drop flow discards it when it arrives tagged.
pub const DEAD_VLAN: u16 = 4095;

/// `Port.other_config` key where Neutron's OVS agent keeps the port's local VLAN.
pub const AGENT_TAG_KEY: &str = "tag";

/// `Port.external_ids` key where hagw records the real tag a hold overwrote, so a release
/// after a hagw restart (or before the agent has written `other_config`) can restore it.
pub const SAVED_TAG_KEY: &str = "hagw-saved-tag";

/// The hold columns, in the order they are compared by the `wait` guard.
const HOLD_COLUMNS: [&str; 3] = ["tag", "vlan_mode", "trunks"];

/// A local VLAN the OVS agent could have assigned: not 0 (untagged) and not the dead VLAN.
pub fn is_real_vlan(tag: u16) -> bool {
    (1..DEAD_VLAN).contains(&tag)
}

fn parse_vlan(text: Option<&String>) -> Option<u16> {
    text.and_then(|t| t.trim().parse().ok()).filter(|t| is_real_vlan(*t))
}

/// Whether the row carries the complete dead-VLAN hold.
pub fn is_held(row: &PortRow) -> bool {
    row.tag == Some(DEAD_VLAN)
        && row.vlan_mode.as_deref() == Some("trunk")
        && row.trunks == [DEAD_VLAN]
}

/// The real local VLAN of the port, in order of trust: the OVS agent's `other_config:tag` (its
/// own truth, also after it restarts), the tag hagw saved when it held the port, and a real
/// tag currently on the port (wired by hand or by an agent that keeps no `other_config`).
pub fn local_vlan(row: &PortRow) -> Option<u16> {
    parse_vlan(row.other_config.get(AGENT_TAG_KEY))
        .or_else(|| parse_vlan(row.external_ids.get(SAVED_TAG_KEY)))
        .or(row.tag.filter(|t| is_real_vlan(*t)))
}

/// What the reconcile loop sees of a port; `None` is a port missing from OVSDB (not plugged
/// yet, or deleted), which is not held.
pub fn l2_state(row: Option<&PortRow>) -> L2State {
    match row {
        None => L2State { hold: HoldState::Unknown, wired: false },
        Some(row) => L2State {
            hold: if is_held(row) { HoldState::Held } else { HoldState::Released },
            wired: local_vlan(row).is_some(),
        },
    }
}

/// As [`l2_state`] for an existing row, with its OpenFlow `no-receive` bit where it applies
/// (`None`: the backend does not use it, or ovs-vswitchd has not attached the port yet, so
/// the triple is all a hold can be for now). With both halves the port is held; with one
/// it is [`HoldState::Partial`], which still keeps its frames off the uplink: a primary
/// releases it, a standby's pass completes it.
pub fn l2_state_with(row: &PortRow, no_receive: Option<bool>) -> L2State {
    let mut state = l2_state(Some(row));
    state.hold = match (state.hold == HoldState::Held, no_receive) {
        (true, None | Some(true)) => HoldState::Held,
        (true, Some(false)) | (false, Some(true)) => HoldState::Partial,
        (false, None | Some(false)) => HoldState::Released,
    };
    state
}

fn this_row(row: &PortRow) -> Vec<Condition> {
    vec![Condition::eq("_uuid", row.uuid.clone())]
}

/// Writes the three columns that make or unmake a hold, together.
fn set_vlan(row: &PortRow, tag: Value, vlan_mode: Value, trunks: Value) -> Op {
    Op::Update {
        table: PortRow::TABLE.into(),
        conditions: this_row(row),
        row: RowValues::from([
            ("tag".into(), tag),
            ("vlan_mode".into(), vlan_mode),
            ("trunks".into(), trunks),
        ]),
    }
}

/// Fails the transaction at once unless the hold columns are still what `row` says: the row
/// was read in an earlier round trip, and anything may have changed it since.
fn unchanged(row: &PortRow) -> Op {
    let seen = RowValues::from([
        ("tag".into(), Value::set(row.tag)),
        ("vlan_mode".into(), Value::set(row.vlan_mode.clone())),
        ("trunks".into(), Value::set(row.trunks.iter().copied())),
    ]);
    Op::Wait {
        table: PortRow::TABLE.into(),
        conditions: this_row(row),
        columns: HOLD_COLUMNS.map(str::to_owned).to_vec(),
        until: WaitUntil::Equal,
        rows: vec![seen],
        timeout_ms: Some(0),
    }
}

fn drop_saved_tag(row: &PortRow) -> Op {
    Op::Mutate {
        table: PortRow::TABLE.into(),
        conditions: this_row(row),
        mutations: vec![Mutation::new(
            "external_ids",
            Mutator::Delete,
            Value::set([SAVED_TAG_KEY]),
        )],
    }
}

/// The transaction that holds the port, or `None` if it is held already. A real tag being
/// overwritten is recorded in `external_ids` (delete, then insert: a map `insert` never
/// replaces an existing key).
pub fn hold_ops(row: &PortRow) -> Option<Vec<Op>> {
    if is_held(row) {
        return None;
    }
    let mut ops = vec![
        Op::Comment(format!("hagw: hold {} in dead VLAN {DEAD_VLAN}", row.name)),
        unchanged(row),
        set_vlan(row, Value::from(DEAD_VLAN), Value::from("trunk"), Value::set([DEAD_VLAN])),
    ];
    if let Some(tag) = row.tag.filter(|t| is_real_vlan(*t)) {
        ops.push(drop_saved_tag(row));
        ops.push(Op::Mutate {
            table: PortRow::TABLE.into(),
            conditions: this_row(row),
            mutations: vec![Mutation::new(
                "external_ids",
                Mutator::Insert,
                Value::map([(SAVED_TAG_KEY, tag.to_string())]),
            )],
        });
    }
    Some(ops)
}

/// Releasing needs a real local VLAN to go back to; without one the port would become an
/// untagged access port on br-int, which is worse than staying held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWired;

/// The transaction that puts the port back on its local VLAN as the OVS agent wires it (tag
/// set, `vlan_mode` and `trunks` cleared) and forgets the saved tag; `None` if it is already
/// exactly like that.
pub fn release_ops(row: &PortRow) -> Result<Option<Vec<Op>>, NotWired> {
    let vlan = local_vlan(row).ok_or(NotWired)?;
    let released = row.tag == Some(vlan) && row.vlan_mode.is_none() && row.trunks.is_empty();
    if released && !row.external_ids.contains_key(SAVED_TAG_KEY) {
        return Ok(None);
    }
    Ok(Some(vec![
        Op::Comment(format!("hagw: release {} to local VLAN {vlan}", row.name)),
        unchanged(row),
        set_vlan(row, Value::from(vlan), Value::empty(), Value::empty()),
        drop_saved_tag(row),
    ]))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::ovsdb::Uuid;

    const U: &str = "36a9f2c1-0b4e-4c7d-9f0e-1a2b3c4d5e6f";

    fn port(tag: Option<u16>, mode: Option<&str>, trunks: &[u16]) -> PortRow {
        PortRow {
            uuid: Uuid::parse(U).unwrap(),
            name: "qg-1".into(),
            tag,
            vlan_mode: mode.map(str::to_owned),
            trunks: trunks.to_vec(),
            other_config: BTreeMap::new(),
            external_ids: BTreeMap::new(),
            interfaces: vec![],
        }
    }

    fn held() -> PortRow {
        port(Some(DEAD_VLAN), Some("trunk"), &[DEAD_VLAN])
    }

    fn with_agent_tag(mut row: PortRow, tag: &str) -> PortRow {
        row.other_config.insert(AGENT_TAG_KEY.into(), tag.into());
        row
    }

    fn json_ops(ops: &[Op]) -> Vec<serde_json::Value> {
        ops.iter().map(Op::to_json).collect()
    }

    #[test]
    fn only_the_full_triple_is_held() {
        assert!(is_held(&held()));
        // The L3 agent's plug state and LP 1930414's half hold both still pass untagged frames.
        assert!(!is_held(&port(Some(DEAD_VLAN), None, &[])));
        assert!(!is_held(&port(Some(DEAD_VLAN), Some("trunk"), &[])));
        assert!(!is_held(&port(Some(DEAD_VLAN), Some("trunk"), &[DEAD_VLAN, 5])));
        assert!(!is_held(&port(Some(5), Some("trunk"), &[DEAD_VLAN])));
        assert!(!is_held(&port(Some(DEAD_VLAN), Some("access"), &[DEAD_VLAN])));
    }

    #[test]
    fn l2_state_of_rows() {
        assert_eq!(l2_state(None), L2State { hold: HoldState::Unknown, wired: false });
        assert_eq!(l2_state(Some(&held())), L2State { hold: HoldState::Held, wired: false });
        let wired_held = with_agent_tag(held(), "7");
        assert_eq!(l2_state(Some(&wired_held)), L2State { hold: HoldState::Held, wired: true });
        let agent_tagged = with_agent_tag(port(Some(7), None, &[]), "7");
        assert_eq!(
            l2_state(Some(&agent_tagged)),
            L2State { hold: HoldState::Released, wired: true }
        );
        let plugged = port(Some(DEAD_VLAN), None, &[]);
        assert_eq!(l2_state(Some(&plugged)), L2State { hold: HoldState::Released, wired: false });
    }

    #[test]
    fn either_half_alone_is_a_partial_hold() {
        let retagged = with_agent_tag(port(Some(7), None, &[]), "7");
        let partial = L2State { hold: HoldState::Partial, wired: true };
        assert_eq!(l2_state_with(&retagged, Some(true)), partial);
        assert_eq!(l2_state_with(&retagged, Some(false)).hold, HoldState::Released);
        assert_eq!(l2_state_with(&retagged, None).hold, HoldState::Released);
        assert_eq!(l2_state_with(&held(), Some(false)).hold, HoldState::Partial);
        assert_eq!(l2_state_with(&held(), Some(true)).hold, HoldState::Held);
        // Not attached yet (or the triple alone is the whole hold): the triple is held.
        assert_eq!(l2_state_with(&held(), None).hold, HoldState::Held);
    }

    #[test]
    fn local_vlan_prefers_the_agent_then_the_saved_tag() {
        let mut row = held();
        assert_eq!(local_vlan(&row), None);
        row.external_ids.insert(SAVED_TAG_KEY.into(), "9".into());
        assert_eq!(local_vlan(&row), Some(9));
        let row = with_agent_tag(row, "7");
        assert_eq!(local_vlan(&row), Some(7));
        // Garbage and non-real VLANs are not a local VLAN.
        for bad in ["0", "4095", "x", ""] {
            assert_eq!(local_vlan(&with_agent_tag(held(), bad)), None, "{bad}");
        }
        assert_eq!(local_vlan(&port(Some(12), None, &[])), Some(12));
        assert_eq!(local_vlan(&port(Some(0), None, &[])), None);
    }

    #[test]
    fn hold_is_one_guarded_transaction_that_saves_a_real_tag() {
        let ops = hold_ops(&with_agent_tag(port(Some(7), None, &[]), "7")).unwrap();
        let by_uuid = json!([["_uuid", "==", ["uuid", U]]]);
        assert_eq!(
            json_ops(&ops[1..]),
            vec![
                json!({"op": "wait", "table": "Port", "where": by_uuid, "until": "==", "timeout": 0,
                   "columns": ["tag", "vlan_mode", "trunks"],
                   "rows": [{"tag": ["set", [7]], "vlan_mode": ["set", []], "trunks": ["set", []]}]}),
                json!({"op": "update", "table": "Port", "where": by_uuid,
                   "row": {"tag": 4095, "vlan_mode": "trunk", "trunks": ["set", [4095]]}}),
                json!({"op": "mutate", "table": "Port", "where": by_uuid,
                   "mutations": [["external_ids", "delete", ["set", ["hagw-saved-tag"]]]]}),
                json!({"op": "mutate", "table": "Port", "where": by_uuid,
                   "mutations": [["external_ids", "insert", ["map", [["hagw-saved-tag", "7"]]]]]}),
            ]
        );
        assert!(matches!(&ops[0], Op::Comment(c) if c.contains("qg-1")));
    }

    #[test]
    fn hold_keeps_an_earlier_saved_tag_when_nothing_real_is_overwritten() {
        // Re-holding after the L3 agent re-plugged at 4095: nothing real to save, and the tag
        // saved by an earlier hold must survive.
        let ops = hold_ops(&port(Some(DEAD_VLAN), None, &[])).unwrap();
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|op| !matches!(op, Op::Mutate { .. })));
        assert_eq!(hold_ops(&held()), None);
    }

    #[test]
    fn release_restores_the_agent_tag_and_forgets_the_saved_one() {
        let mut row = with_agent_tag(held(), "7");
        row.external_ids.insert(SAVED_TAG_KEY.into(), "9".into());
        let ops = release_ops(&row).unwrap().unwrap();
        let by_uuid = json!([["_uuid", "==", ["uuid", U]]]);
        assert_eq!(
            json_ops(&ops[1..]),
            vec![
                json!({"op": "wait", "table": "Port", "where": by_uuid, "until": "==", "timeout": 0,
                   "columns": ["tag", "vlan_mode", "trunks"],
                   "rows": [{"tag": ["set", [4095]], "vlan_mode": ["set", ["trunk"]],
                             "trunks": ["set", [4095]]}]}),
                json!({"op": "update", "table": "Port", "where": by_uuid,
                   "row": {"tag": 7, "vlan_mode": ["set", []], "trunks": ["set", []]}}),
                json!({"op": "mutate", "table": "Port", "where": by_uuid,
                   "mutations": [["external_ids", "delete", ["set", ["hagw-saved-tag"]]]]}),
            ]
        );
    }

    #[test]
    fn release_uses_the_saved_tag_and_refuses_without_any() {
        let mut row = held();
        assert_eq!(release_ops(&row), Err(NotWired));
        row.external_ids.insert(SAVED_TAG_KEY.into(), "9".into());
        let ops = release_ops(&row).unwrap().unwrap();
        assert!(matches!(&ops[2], Op::Update { row, .. } if row["tag"] == Value::from(9u16)));
        let done = with_agent_tag(port(Some(7), None, &[]), "7");
        assert_eq!(release_ops(&done), Ok(None));
    }
}
