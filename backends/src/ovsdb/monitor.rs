//! `monitor` requests (RFC 7047 §4.1.5), table updates and the event stream a monitor yields.
//!
//! A monitor is hagw's view of OVSDB. After a reconnect that view is stale, so the stream says so
//! ([`MonitorEvent::Disconnected`]) and then delivers the complete current contents
//! ([`MonitorEvent::Resync`]) instead of trying to replay what was missed.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use super::error::{OvsdbError, Result};
use super::ops::JsonRow;
use super::value::Uuid;

/// Which kinds of changes a monitor reports; all of them by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSelect {
    pub initial: bool,
    pub insert: bool,
    pub delete: bool,
    pub modify: bool,
}

impl Default for MonitorSelect {
    fn default() -> Self {
        Self { initial: true, insert: true, delete: true, modify: true }
    }
}

/// What to monitor in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorRequest {
    /// `None` monitors every column.
    pub columns: Option<Vec<String>>,
    pub select: MonitorSelect,
}

impl MonitorRequest {
    /// Monitor these columns with every kind of change, e.g. `MonitorRequest::columns(PortRow::COLUMNS)`.
    pub fn columns(columns: &[&str]) -> Self {
        Self {
            columns: Some(columns.iter().map(|c| (*c).to_owned()).collect()),
            select: MonitorSelect::default(),
        }
    }

    fn to_json(&self) -> Json {
        let s = &self.select;
        let mut obj = json!({"select": {"initial": s.initial, "insert": s.insert,
                                        "delete": s.delete, "modify": s.modify}});
        if let Some(columns) = &self.columns {
            obj["columns"] = json!(columns);
        }
        obj
    }
}

/// Monitor requests by table name.
pub type MonitorRequests = BTreeMap<String, MonitorRequest>;

/// The `params` member of a `monitor` request.
pub(crate) fn monitor_params(db: &str, monitor_id: &str, requests: &MonitorRequests) -> Json {
    let tables: serde_json::Map<String, Json> =
        requests.iter().map(|(table, req)| (table.clone(), req.to_json())).collect();
    json!([db, monitor_id, tables])
}

/// Change of one row: `old` is absent for inserts/initial rows, `new` is absent for deletes.
/// In a modify, `old` holds only the changed columns and `new` all monitored columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowUpdate {
    pub old: Option<JsonRow>,
    pub new: Option<JsonRow>,
}

/// Row changes by table name, then row UUID.
pub type TableUpdates = BTreeMap<String, BTreeMap<Uuid, RowUpdate>>;

/// Parses a `<table-updates>` object (monitor reply or `update` notification).
pub(crate) fn parse_table_updates(json: &Json) -> Result<TableUpdates> {
    let protocol = |what: String| OvsdbError::Protocol(format!("bad table-updates: {what}"));
    let tables = json.as_object().ok_or_else(|| protocol(format!("not an object: {json}")))?;
    let mut out = TableUpdates::new();
    for (table, rows) in tables {
        let rows =
            rows.as_object().ok_or_else(|| protocol(format!("table {table} is not an object")))?;
        let mut updates = BTreeMap::new();
        for (uuid, update) in rows {
            let uuid =
                Uuid::parse(uuid).map_err(|e| protocol(format!("table {table} row key: {e}")))?;
            let row_part = |key: &str| match update.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::Object(row)) => Ok(Some(row.clone())),
                Some(other) => Err(protocol(format!(
                    "table {table} row {uuid} {key:?} is not an object: {other}"
                ))),
            };
            updates
                .insert(uuid.clone(), RowUpdate { old: row_part("old")?, new: row_part("new")? });
        }
        out.insert(table.clone(), updates);
    }
    Ok(out)
}

/// One event of a monitor stream.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// Incremental changes, applied on top of what was seen before.
    Update(TableUpdates),
    /// The connection dropped; the view is stale until the next `Resync`.
    Disconnected,
    /// Complete contents after a reconnect: replaces everything seen before (rows missing here
    /// were deleted meanwhile).
    Resync(TableUpdates),
}

/// Events of one monitor. Ends when the client's connection task stops (all [`super::OvsdbClient`]
/// handles dropped) or the monitor can no longer be re-established after a reconnect. Dropping it
/// cancels the monitor on the server.
#[derive(Debug)]
pub struct MonitorStream {
    pub(crate) events: mpsc::UnboundedReceiver<MonitorEvent>,
}

impl Stream for MonitorStream {
    type Item = MonitorEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MonitorEvent>> {
        self.events.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "36a9f2c1-0b4e-4c7d-9f0e-1a2b3c4d5e6f";

    #[test]
    fn request_shape() {
        let reqs =
            MonitorRequests::from([("Port".into(), MonitorRequest::columns(&["name", "tag"]))]);
        assert_eq!(
            monitor_params("Open_vSwitch", "hagw", &reqs),
            json!(["Open_vSwitch", "hagw", {"Port": {"columns": ["name", "tag"],
                "select": {"initial": true, "insert": true, "delete": true, "modify": true}}}])
        );
    }

    #[test]
    fn parse_updates() {
        let json = json!({"Port": {U: {"old": {"tag": 1}, "new": {"name": "p", "tag": 5}}}});
        let updates = parse_table_updates(&json).unwrap();
        let row = &updates["Port"][&Uuid::parse(U).unwrap()];
        assert_eq!(row.old.as_ref().unwrap()["tag"], json!(1));
        assert_eq!(row.new.as_ref().unwrap()["tag"], json!(5));
        let deleted = parse_table_updates(&json!({"Port": {U: {"old": {"name": "p"}}}})).unwrap();
        assert!(deleted["Port"][&Uuid::parse(U).unwrap()].new.is_none());
    }

    #[test]
    fn malformed_updates_are_protocol_errors() {
        for bad in [
            json!([]),
            json!({"Port": 5}),
            json!({"Port": {"nope": {}}}),
            json!({"Port": {U: {"new": 5}}}),
        ] {
            let err = parse_table_updates(&bad).unwrap_err();
            assert!(matches!(err, OvsdbError::Protocol(_)), "{bad}: {err}");
        }
    }
}
