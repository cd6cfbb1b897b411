//! Typed rows for the vswitch columns hagw reads.
//!
//! Replies come from a server we do not control (and from whatever version of the schema it
//! runs), so parsing never panics: every mismatch becomes an [`OvsdbError::Row`] naming the table,
//! the row and the column, which is what an operator needs to find the offending record.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::error::{OvsdbError, Result};
use super::ops::{Condition, JsonRow, Op};
use super::value::{Atom, Uuid, Value};

/// Largest valid 802.1Q VLAN id; 4095 is OVS's "dead VLAN" that drops everything.
const MAX_VLAN: i64 = 4095;

/// Reads columns of one row and attributes every failure to table/row/column.
struct RowReader<'a> {
    table: &'static str,
    row_id: String,
    row: &'a JsonRow,
}

impl<'a> RowReader<'a> {
    fn new(table: &'static str, row_uuid: Option<&Uuid>, row: &'a JsonRow) -> Self {
        let row_id = row_uuid
            .map(Uuid::to_string)
            .or_else(|| {
                let atom = Atom::from_json(row.get("_uuid")?).ok()?;
                atom.as_uuid().map(Uuid::to_string)
            })
            .or_else(|| row.get("name").map(Json::to_string))
            .unwrap_or_else(|| "<unknown>".into());
        Self { table, row_id, row }
    }

    fn err(&self, column: &str, reason: impl Into<String>) -> OvsdbError {
        OvsdbError::Row {
            table: self.table.into(),
            row: self.row_id.clone(),
            column: column.into(),
            reason: reason.into(),
        }
    }

    fn value(&self, column: &str) -> Result<Value> {
        let json =
            self.row.get(column).ok_or_else(|| self.err(column, "column missing from reply"))?;
        Value::from_json(json).map_err(|e| self.err(column, e.to_string()))
    }

    /// `_uuid` of the row: the column if selected, else the key of a monitor update.
    fn uuid(&self, row_uuid: Option<&Uuid>) -> Result<Uuid> {
        if self.row.contains_key("_uuid") {
            return match self.value("_uuid")? {
                Value::Atom(Atom::Uuid(u)) => Ok(u),
                other => Err(self.err("_uuid", format!("not a uuid: {}", other.to_json()))),
            };
        }
        row_uuid.cloned().ok_or_else(|| self.err("_uuid", "column missing and no row uuid given"))
    }

    fn atoms(&self, column: &str) -> Result<Vec<Atom>> {
        self.value(column)?.into_atoms().map_err(|reason| self.err(column, reason))
    }

    fn string(&self, column: &str) -> Result<String> {
        match self.value(column)? {
            Value::Atom(Atom::String(s)) => Ok(s),
            other => Err(self.err(column, format!("expected a string, found {}", other.to_json()))),
        }
    }

    fn optional<T>(&self, column: &str, convert: impl Fn(&Atom) -> Option<T>) -> Result<Option<T>> {
        match self.atoms(column)?.as_slice() {
            [] => Ok(None),
            [atom] => convert(atom)
                .map(Some)
                .ok_or_else(|| self.err(column, format!("unexpected value {}", atom.to_json()))),
            many => {
                Err(self.err(column, format!("expected at most one value, found {}", many.len())))
            }
        }
    }

    fn set<T>(&self, column: &str, convert: impl Fn(&Atom) -> Option<T>) -> Result<Vec<T>> {
        self.atoms(column)?
            .iter()
            .map(|atom| {
                convert(atom).ok_or_else(|| {
                    self.err(column, format!("unexpected element {}", atom.to_json()))
                })
            })
            .collect()
    }

    fn string_map(&self, column: &str) -> Result<BTreeMap<String, String>> {
        let pairs = self.value(column)?.into_pairs().map_err(|reason| self.err(column, reason))?;
        pairs
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (Atom::String(k), Atom::String(v)) => Ok((k, v)),
                (k, v) => Err(self.err(
                    column,
                    format!("expected string→string, found {} → {}", k.to_json(), v.to_json()),
                )),
            })
            .collect()
    }
}

fn vlan(atom: &Atom) -> Option<u16> {
    atom.as_i64().filter(|v| (0..=MAX_VLAN).contains(v)).and_then(|v| u16::try_from(v).ok())
}

fn string(atom: &Atom) -> Option<String> {
    atom.as_str().map(str::to_owned)
}

fn uuid(atom: &Atom) -> Option<Uuid> {
    atom.as_uuid().cloned()
}

/// Select op for a typed row: its columns plus `_uuid`, matching `conditions`.
fn select(table: &str, columns: &[&str], conditions: Vec<Condition>) -> Op {
    Op::Select {
        table: table.into(),
        conditions,
        columns: Some(
            std::iter::once("_uuid").chain(columns.iter().copied()).map(str::to_owned).collect(),
        ),
    }
}

/// The `Port` columns hagw reads: the dead-VLAN hold triple (`tag`, `vlan_mode`, `trunks`) and
/// the Neutron bookkeeping in `other_config`/`external_ids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRow {
    pub uuid: Uuid,
    pub name: String,
    pub tag: Option<u16>,
    pub vlan_mode: Option<String>,
    pub trunks: Vec<u16>,
    pub other_config: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
    pub interfaces: Vec<Uuid>,
}

impl PortRow {
    pub const TABLE: &'static str = "Port";
    /// Columns to request in a monitor (`_uuid` comes as the update key there).
    pub const COLUMNS: &'static [&'static str] =
        &["name", "tag", "vlan_mode", "trunks", "other_config", "external_ids", "interfaces"];

    /// A select of every column this type needs, for the rows matching `conditions`.
    pub fn select(conditions: Vec<Condition>) -> Op {
        select(Self::TABLE, Self::COLUMNS, conditions)
    }

    /// Parses a row from a select result (`row_uuid` = None, `_uuid` selected) or from a monitor
    /// update (`row_uuid` = the update key).
    pub fn from_row(row_uuid: Option<&Uuid>, row: &JsonRow) -> Result<Self> {
        let r = RowReader::new(Self::TABLE, row_uuid, row);
        Ok(Self {
            uuid: r.uuid(row_uuid)?,
            name: r.string("name")?,
            tag: r.optional("tag", vlan)?,
            vlan_mode: r.optional("vlan_mode", string)?,
            trunks: r.set("trunks", vlan)?,
            other_config: r.string_map("other_config")?,
            external_ids: r.string_map("external_ids")?,
            interfaces: r.set("interfaces", uuid)?,
        })
    }
}

/// The `Interface` columns hagw reads: `external_ids:iface-id` links it to the Neutron port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRow {
    pub uuid: Uuid,
    pub name: String,
    pub external_ids: BTreeMap<String, String>,
    /// OpenFlow port number; unset until ovs-vswitchd has attached the interface (-1 on failure).
    pub ofport: Option<i64>,
}

impl InterfaceRow {
    pub const TABLE: &'static str = "Interface";
    /// Columns to request in a monitor (`_uuid` comes as the update key there).
    pub const COLUMNS: &'static [&'static str] = &["name", "external_ids", "ofport"];

    /// A select of every column this type needs, for the rows matching `conditions`.
    pub fn select(conditions: Vec<Condition>) -> Op {
        select(Self::TABLE, Self::COLUMNS, conditions)
    }

    /// Parses a row; see [`PortRow::from_row`].
    pub fn from_row(row_uuid: Option<&Uuid>, row: &JsonRow) -> Result<Self> {
        let r = RowReader::new(Self::TABLE, row_uuid, row);
        Ok(Self {
            uuid: r.uuid(row_uuid)?,
            name: r.string("name")?,
            external_ids: r.string_map("external_ids")?,
            ofport: r.optional("ofport", Atom::as_i64)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const U: &str = "36a9f2c1-0b4e-4c7d-9f0e-1a2b3c4d5e6f";
    const I: &str = "00000000-0000-4000-8000-000000000001";

    fn port_json() -> JsonRow {
        json!({
            "_uuid": ["uuid", U],
            "name": "qg-1",
            "tag": 4095,
            "vlan_mode": "trunk",
            "trunks": 4095,
            "other_config": ["map", [["tag", "5"], ["net_uuid", "n"]]],
            "external_ids": ["map", []],
            "interfaces": ["uuid", I],
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    #[test]
    fn port_from_select_row() {
        let port = PortRow::from_row(None, &port_json()).unwrap();
        assert_eq!(port.uuid.as_str(), U);
        assert_eq!(port.tag, Some(4095));
        assert_eq!(port.vlan_mode.as_deref(), Some("trunk"));
        assert_eq!(port.trunks, vec![4095]);
        assert_eq!(port.other_config["tag"], "5");
        assert!(port.external_ids.is_empty());
        assert_eq!(port.interfaces, vec![Uuid::parse(I).unwrap()]);
    }

    #[test]
    fn port_unset_optionals_and_update_key() {
        let mut row = port_json();
        row.remove("_uuid");
        row.insert("tag".into(), json!(["set", []]));
        row.insert("vlan_mode".into(), json!(["set", []]));
        row.insert("trunks".into(), json!(["set", [1, 4095]]));
        let key = Uuid::parse(I).unwrap();
        let port = PortRow::from_row(Some(&key), &row).unwrap();
        assert_eq!(port.uuid, key);
        assert_eq!((port.tag, port.vlan_mode), (None, None));
        assert_eq!(port.trunks, vec![1, 4095]);
    }

    #[test]
    fn malformed_rows_name_table_row_and_column() {
        let cases = [
            ("tag", json!(5000), "unexpected value 5000"),
            ("tag", json!(["set", [1, 2]]), "at most one value"),
            ("trunks", json!(["set", ["x"]]), "unexpected element"),
            ("name", json!(7), "expected a string"),
            ("other_config", json!(["set", []]), "expected a map"),
            ("external_ids", json!(["map", [["k", 1]]]), "string→string"),
            ("interfaces", json!(["set", [["uuid", "zz"]]]), "not a UUID"),
            ("_uuid", json!("x"), "not a uuid"),
        ];
        for (column, bad, reason) in cases {
            let mut row = port_json();
            row.insert(column.into(), bad);
            let err = PortRow::from_row(None, &row).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("bad Port row "), "{msg}");
            assert!(msg.contains(&format!("column \"{column}\"")), "{msg}");
            assert!(msg.contains(reason), "{column}: {msg}");
            assert!(!err.is_transient());
        }
        let mut row = port_json();
        row.remove("trunks");
        let msg = PortRow::from_row(None, &row).unwrap_err().to_string();
        assert!(msg.contains(U) && msg.contains("missing"), "{msg}");
    }

    #[test]
    fn interface_row() {
        let row = json!({"name": "qg-1", "external_ids": ["map", [["iface-id", "abc"]]],
                         "ofport": ["set", []]});
        let key = Uuid::parse(I).unwrap();
        let iface = InterfaceRow::from_row(Some(&key), row.as_object().unwrap()).unwrap();
        assert_eq!(iface.external_ids["iface-id"], "abc");
        assert_eq!(iface.ofport, None);
        let err = InterfaceRow::from_row(None, row.as_object().unwrap()).unwrap_err();
        assert!(err.to_string().contains("Interface row \"qg-1\" column \"_uuid\""), "{err}");
    }

    #[test]
    fn select_helpers_request_uuid() {
        let op = InterfaceRow::select(vec![Condition::eq("name", "qg-1")]);
        assert_eq!(op.to_json()["columns"], json!(["_uuid", "name", "external_ids", "ofport"]));
    }
}
