//! Finding a port: the OVSDB reads behind every observe, hold and release, kept pure so
//! their shape is unit-tested.
//!
//! A read selects only rows it names. On a network node br-int has three ports per router,
//! so its `Bridge.ports` column is a set of 3,000+ UUIDs: selecting it to find the port's
//! bridge made every read return ~145 KB, and a pass over 1,000 routers queued 145 MB behind
//! one OVSDB connection until every read timed out. The bridge is instead found by asking
//! which Bridge `includes` the port's UUID, returning its name and datapath type alone.

use crate::ovsdb::{Condition, Function, InterfaceRow, JsonRow, Op, PortRow, Uuid, Value};

use super::dpflows;

/// The first read: the Port row named `port` and its Interface (whose `ofport` says whether
/// ovs-vswitchd has attached it), in one transaction.
pub fn port_ops(port: &str) -> [Op; 2] {
    [
        PortRow::select(vec![Condition::eq("name", port)]),
        InterfaceRow::select(vec![Condition::eq("name", port)]),
    ]
}

/// The second read, where the bridge matters: the Bridge listing `port`, by name and
/// datapath type, without its port list.
pub fn bridge_op(port: &Uuid) -> Op {
    Op::Select {
        table: "Bridge".into(),
        conditions: vec![Condition::new("ports", Function::Includes, port.clone())],
        columns: Some(vec!["name".into(), "datapath_type".into()]),
    }
}

/// The bridge's name and the name of its datapath ([`dpflows::datapath_name`]) from the
/// result of [`bridge_op`]; `None` while no Bridge lists the port.
pub fn bridge_of(bridges: &[JsonRow]) -> Option<(String, String)> {
    let atoms =
        |row: &JsonRow, column: &str| Value::from_json(row.get(column)?).ok()?.into_atoms().ok();
    let row = bridges.first()?;
    let name = atoms(row, "name")?.first()?.as_str()?.to_owned();
    let kind = atoms(row, "datapath_type").and_then(|t| Some(t.first()?.as_str()?.to_owned()));
    Some((name, dpflows::datapath_name(kind.as_deref().unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const U: &str = "36a9f2c1-0b4e-4c7d-9f0e-1a2b3c4d5e6f";

    #[test]
    fn reads_select_only_the_named_rows_and_never_a_port_list() {
        let uuid = Uuid::parse(U).unwrap();
        let [port, iface] = port_ops("qg-1");
        for op in [&port, &iface, &bridge_op(&uuid)] {
            let json = op.to_json();
            let conditions = json["where"].as_array().unwrap();
            assert!(!conditions.is_empty(), "a whole table selected: {json}");
            assert!(!json["columns"].as_array().unwrap().contains(&json!("ports")), "{json}");
        }
        assert_eq!(
            bridge_op(&uuid).to_json(),
            json!({"op": "select", "table": "Bridge",
                   "where": [["ports", "includes", ["uuid", U]]],
                   "columns": ["name", "datapath_type"]})
        );
    }

    #[test]
    fn the_bridge_and_its_datapath() {
        let row = |kind: &str| {
            json!({"name": "br-int", "datapath_type": kind}).as_object().unwrap().clone()
        };
        assert_eq!(bridge_of(&[row("")]), Some(("br-int".into(), "system@ovs-system".into())));
        assert_eq!(
            bridge_of(&[row("netdev")]),
            Some(("br-int".into(), "netdev@ovs-netdev".into()))
        );
        assert_eq!(bridge_of(&[]), None);
    }
}
