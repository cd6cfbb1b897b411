//! Typed `transact` operations (RFC 7047 §5.2) and their results.
//!
//! hagw changes `Port` columns only under a `wait` precondition on the state it observed, so a
//! concurrent writer (the Neutron OVS agent, an operator with ovs-vsctl) makes the transaction fail
//! instead of being silently overwritten. That is why `Wait` is first-class here.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};

use super::error::{OvsdbError, Result};
use super::value::{Uuid, Value};

/// Column values for `insert`/`update` and the expected rows of a `wait`.
pub type RowValues = BTreeMap<String, Value>;

/// A row as returned by the server (`select` results, monitor `old`/`new`): column → JSON value.
/// Typed access goes through [`super::rows`].
pub type JsonRow = Map<String, Json>;

/// Comparison function of a `where` clause condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
    Includes,
    Excludes,
}

impl Function {
    fn as_str(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Ge => ">=",
            Self::Gt => ">",
            Self::Includes => "includes",
            Self::Excludes => "excludes",
        }
    }
}

/// One `[column, function, value]` condition; a `where` clause is the conjunction of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub function: Function,
    pub value: Value,
}

impl Condition {
    /// `column function value`.
    pub fn new(column: impl Into<String>, function: Function, value: impl Into<Value>) -> Self {
        Self { column: column.into(), function, value: value.into() }
    }

    /// `column == value`, the common lookup by name or `_uuid`.
    pub fn eq(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Function::Eq, value)
    }

    fn to_json(&self) -> Json {
        json!([self.column, self.function.as_str(), self.value.to_json()])
    }
}

/// Mutator of a `mutate` op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Insert,
    Delete,
}

impl Mutator {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "+=",
            Self::Sub => "-=",
            Self::Mul => "*=",
            Self::Div => "/=",
            Self::Mod => "%=",
            Self::Insert => "insert",
            Self::Delete => "delete",
        }
    }
}

/// One `[column, mutator, value]` mutation.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub column: String,
    pub mutator: Mutator,
    pub value: Value,
}

impl Mutation {
    /// `column mutator value`.
    pub fn new(column: impl Into<String>, mutator: Mutator, value: impl Into<Value>) -> Self {
        Self { column: column.into(), mutator, value: value.into() }
    }

    fn to_json(&self) -> Json {
        json!([self.column, self.mutator.as_str(), self.value.to_json()])
    }
}

/// What a `wait` op waits for: the selected rows being equal (or not) to the given rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    Equal,
    NotEqual,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Select {
        table: String,
        conditions: Vec<Condition>,
        /// `None` selects all columns.
        columns: Option<Vec<String>>,
    },
    Insert {
        table: String,
        row: RowValues,
        /// Lets later ops of the same transaction refer to the new row as `Atom::NamedUuid`.
        uuid_name: Option<String>,
    },
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: RowValues,
    },
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    /// Precondition: the `columns` of the rows matching `conditions` must (not) equal `rows`.
    /// `timeout_ms: Some(0)` fails at once instead of blocking the transaction.
    Wait {
        table: String,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: WaitUntil,
        rows: Vec<RowValues>,
        timeout_ms: Option<u64>,
    },
    /// Free text recorded in the database log; shows who made a change.
    Comment(String),
}

fn row_json(row: &RowValues) -> Json {
    Json::Object(row.iter().map(|(column, value)| (column.clone(), value.to_json())).collect())
}

fn conditions_json(conditions: &[Condition]) -> Json {
    conditions.iter().map(Condition::to_json).collect()
}

impl Op {
    /// The RFC 7047 op name, used in errors to say which kind of op failed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Select { .. } => "select",
            Self::Insert { .. } => "insert",
            Self::Update { .. } => "update",
            Self::Mutate { .. } => "mutate",
            Self::Wait { .. } => "wait",
            Self::Comment(_) => "comment",
        }
    }

    /// The op object sent in `transact` params.
    pub fn to_json(&self) -> Json {
        let mut obj = json!({"op": self.name()});
        let fields = obj.as_object_mut().expect("object literal");
        match self {
            Self::Select { table, conditions, columns } => {
                fields.insert("table".into(), json!(table));
                fields.insert("where".into(), conditions_json(conditions));
                if let Some(columns) = columns {
                    fields.insert("columns".into(), json!(columns));
                }
            }
            Self::Insert { table, row, uuid_name } => {
                fields.insert("table".into(), json!(table));
                fields.insert("row".into(), row_json(row));
                if let Some(name) = uuid_name {
                    fields.insert("uuid-name".into(), json!(name));
                }
            }
            Self::Update { table, conditions, row } => {
                fields.insert("table".into(), json!(table));
                fields.insert("where".into(), conditions_json(conditions));
                fields.insert("row".into(), row_json(row));
            }
            Self::Mutate { table, conditions, mutations } => {
                fields.insert("table".into(), json!(table));
                fields.insert("where".into(), conditions_json(conditions));
                let mutations: Json = mutations.iter().map(Mutation::to_json).collect();
                fields.insert("mutations".into(), mutations);
            }
            Self::Wait { table, conditions, columns, until, rows, timeout_ms } => {
                fields.insert("table".into(), json!(table));
                fields.insert("where".into(), conditions_json(conditions));
                fields.insert("columns".into(), json!(columns));
                let until = match until {
                    WaitUntil::Equal => "==",
                    WaitUntil::NotEqual => "!=",
                };
                fields.insert("until".into(), json!(until));
                fields.insert("rows".into(), rows.iter().map(row_json).collect());
                if let Some(ms) = timeout_ms {
                    fields.insert("timeout".into(), json!(ms));
                }
            }
            Self::Comment(text) => {
                fields.insert("comment".into(), json!(text));
            }
        }
        obj
    }
}

/// The successful result of one op: `rows` for select, `count` for update/mutate, `uuid` for
/// insert; all `None` for wait and comment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpResult {
    pub rows: Option<Vec<JsonRow>>,
    pub count: Option<u64>,
    pub uuid: Option<Uuid>,
}

impl OpResult {
    fn from_json(index: usize, op: &Op, json: &Json) -> Result<Self> {
        let protocol = |what: &str| {
            OvsdbError::Protocol(format!("transact result #{index} ({}) {what}: {json}", op.name()))
        };
        let Some(obj) = json.as_object() else {
            return Err(protocol("is not an object"));
        };
        let rows = match obj.get("rows") {
            None => None,
            Some(Json::Array(rows)) => Some(
                rows.iter()
                    .map(|r| r.as_object().cloned().ok_or_else(|| protocol("has a non-object row")))
                    .collect::<Result<_>>()?,
            ),
            Some(_) => return Err(protocol("has non-array rows")),
        };
        let count = match obj.get("count") {
            None => None,
            Some(c) => Some(c.as_u64().ok_or_else(|| protocol("has a bad count"))?),
        };
        let uuid = match obj.get("uuid") {
            None => None,
            Some(u) => Some(
                super::value::Atom::from_json(u)?
                    .as_uuid()
                    .cloned()
                    .ok_or_else(|| protocol("has a bad uuid"))?,
            ),
        };
        Ok(Self { rows, count, uuid })
    }
}

fn detail_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Turns a `transact` result array into per-op results, or the first per-op error.
///
/// RFC 7047 §4.1.3: on failure the failing op's slot holds `{"error", "details"}` and later slots
/// are null; a commit-time failure (e.g. referential integrity) is an extra element after the ops.
pub(crate) fn parse_transact_result(ops: &[Op], result: &Json) -> Result<Vec<OpResult>> {
    let Some(items) = result.as_array() else {
        return Err(OvsdbError::Protocol(format!("transact result is not an array: {result}")));
    };
    for (index, item) in items.iter().enumerate() {
        if let Some(error) = item.get("error").filter(|e| !e.is_null()) {
            return Err(OvsdbError::OpFailed {
                index,
                op: ops.get(index).map_or("commit", Op::name).to_owned(),
                error: detail_string(Some(error)).unwrap_or_default(),
                details: detail_string(item.get("details")),
            });
        }
    }
    if items.len() != ops.len() {
        return Err(OvsdbError::Protocol(format!(
            "transact returned {} results for {} ops",
            items.len(),
            ops.len()
        )));
    }
    ops.iter()
        .zip(items)
        .enumerate()
        .map(|(index, (op, item))| OpResult::from_json(index, op, item))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::value::Atom;

    fn hold_row() -> RowValues {
        RowValues::from([
            ("tag".into(), Value::from(4095u16)),
            ("vlan_mode".into(), Value::from("trunk")),
            ("trunks".into(), Value::set([4095u16])),
        ])
    }

    #[test]
    fn wait_and_update_shape() {
        let by_name = vec![Condition::eq("name", "qg-1")];
        let wait = Op::Wait {
            table: "Port".into(),
            conditions: by_name.clone(),
            columns: vec!["tag".into()],
            until: WaitUntil::Equal,
            rows: vec![RowValues::from([("tag".into(), Value::empty())])],
            timeout_ms: Some(0),
        };
        assert_eq!(
            wait.to_json(),
            json!({"op": "wait", "table": "Port", "where": [["name", "==", "qg-1"]],
                   "columns": ["tag"], "until": "==", "rows": [{"tag": ["set", []]}], "timeout": 0})
        );
        let update = Op::Update { table: "Port".into(), conditions: by_name, row: hold_row() };
        assert_eq!(
            update.to_json(),
            json!({"op": "update", "table": "Port", "where": [["name", "==", "qg-1"]],
                   "row": {"tag": 4095, "trunks": ["set", [4095]], "vlan_mode": "trunk"}})
        );
    }

    #[test]
    fn select_mutate_insert_comment_shape() {
        let select = Op::Select {
            table: "Interface".into(),
            conditions: vec![],
            columns: Some(vec!["name".into(), "ofport".into()]),
        };
        assert_eq!(
            select.to_json(),
            json!({"op": "select", "table": "Interface", "where": [], "columns": ["name", "ofport"]})
        );
        let mutate = Op::Mutate {
            table: "Bridge".into(),
            conditions: vec![Condition::new("name", Function::Ne, "br-ex")],
            mutations: vec![Mutation::new(
                "ports",
                Mutator::Insert,
                Value::set([Atom::named_uuid("p")]),
            )],
        };
        assert_eq!(
            mutate.to_json(),
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "!=", "br-ex"]],
                   "mutations": [["ports", "insert", ["set", [["named-uuid", "p"]]]]]})
        );
        let insert = Op::Insert {
            table: "Port".into(),
            row: RowValues::from([("name".into(), Value::from("p"))]),
            uuid_name: Some("p".into()),
        };
        assert_eq!(
            insert.to_json(),
            json!({"op": "insert", "table": "Port", "row": {"name": "p"}, "uuid-name": "p"})
        );
        assert_eq!(
            Op::Comment("hagw: hold".into()).to_json(),
            json!({"op": "comment", "comment": "hagw: hold"})
        );
    }

    #[test]
    fn results_are_typed() {
        let ops = [
            Op::Comment("c".into()),
            Op::Select { table: "Port".into(), conditions: vec![], columns: None },
        ];
        let res = parse_transact_result(&ops, &json!([{}, {"rows": [{"name": "p"}]}])).unwrap();
        assert_eq!(res[0], OpResult::default());
        assert_eq!(res[1].rows.as_ref().unwrap()[0]["name"], json!("p"));
    }

    #[test]
    fn op_error_names_index_op_and_details() {
        let ops = [Op::Comment("c".into()), Op::Comment("d".into())];
        let err = parse_transact_result(
            &ops,
            &json!([{}, {"error": "timed out", "details": "\"wait\" timed out"}]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "transaction op #1 (comment) failed: timed out: \"wait\" timed out"
        );
        let commit = parse_transact_result(
            &ops,
            &json!([{}, {}, {"error": "referential integrity violation"}]),
        )
        .unwrap_err();
        assert!(matches!(commit, OvsdbError::OpFailed { index: 2, ref op, .. } if op == "commit"));
    }

    #[test]
    fn malformed_results_are_protocol_errors() {
        let ops = [Op::Comment("c".into())];
        for bad in [json!({}), json!([]), json!([5]), json!([{"count": "x"}])] {
            let err = parse_transact_result(&ops, &bad).unwrap_err();
            assert!(matches!(err, OvsdbError::Protocol(_)), "{bad}: {err}");
        }
    }
}
