//! The nftables side of the Linux bridge hold: the `bridge`-family table `hagw`, read and
//! written through the `nft` binary in JSON.
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
//! through every re-plug and veth re-creation. Why `nft` rather than nfnetlink: nothing in
//! our dependency tree speaks nftables, and `nft -f` already gives one atomic transaction
//! per script, which is what makes "ensure the table + add the element" all-or-nothing.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use hagw_core::Error;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::debug;

pub const FAMILY: &str = "bridge";
pub const TABLE: &str = "hagw";
pub const SET: &str = "held_ports";
pub const CHAIN: &str = "hold";
/// Before the bridge's own dstnat (-300 is NF_BR_PRI_NAT_DST_BRIDGED) and anything else a
/// distribution installs at the usual filter priority.
pub const PRIORITY: i64 = -300;

/// How long one `nft` run may take before it is killed and reported as transient.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `nft bridge table hagw`: the target errors about the table name.
pub fn table_target() -> String {
    format!("nft {FAMILY} table {TABLE}")
}

/// What `nft -j list table bridge hagw` shows, reduced to what the hold depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldTable {
    /// The table exists at all (it vanishes with `nft flush ruleset`).
    pub exists: bool,
    /// `held_ports` exists and holds interface names.
    pub set_ok: bool,
    /// `hold` is a prerouting filter chain with policy accept whose only rule is
    /// `iifname @held_ports drop` (an extra rule before ours could `accept` and bypass it).
    pub chain_ok: bool,
    /// The names in `held_ports`.
    pub held: Vec<String>,
}

impl HoldTable {
    /// The structure drops every frame from a port named in the set.
    pub fn is_complete(&self) -> bool {
        self.exists && self.set_ok && self.chain_ok
    }

    pub fn holds(&self, port: &str) -> bool {
        self.held.iter().any(|p| p == port)
    }

    /// Parses `nft -j list table` output. Unknown objects are ignored; a malformed document
    /// is an error, since guessing could report a hold that is not there.
    pub fn parse(json: &str) -> Result<HoldTable, String> {
        let doc: Value = serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?;
        let items = doc
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("no `nftables` array in the output")?;
        let mut table = HoldTable::default();
        let mut rules = Vec::new();
        let ours = |obj: &Value| {
            obj.get("family").and_then(Value::as_str) == Some(FAMILY)
                && obj.get("table").and_then(Value::as_str) == Some(TABLE)
        };
        for item in items {
            if let Some(t) = item.get("table") {
                table.exists |= t.get("family").and_then(Value::as_str) == Some(FAMILY)
                    && t.get("name").and_then(Value::as_str) == Some(TABLE);
            } else if let Some(set) = item.get("set").filter(|s| ours(s)) {
                if set.get("name").and_then(Value::as_str) == Some(SET) {
                    table.set_ok = set.get("type").and_then(Value::as_str) == Some("ifname");
                    table.held = set_elements(set);
                }
            } else if let Some(chain) = item.get("chain").filter(|c| ours(c)) {
                if chain.get("name").and_then(Value::as_str) == Some(CHAIN) {
                    table.chain_ok = chain.get("type").and_then(Value::as_str) == Some("filter")
                        && chain.get("hook").and_then(Value::as_str) == Some("prerouting")
                        && chain.get("policy").and_then(Value::as_str) == Some("accept");
                }
            } else if let Some(rule) = item.get("rule").filter(|r| ours(r))
                && rule.get("chain").and_then(Value::as_str) == Some(CHAIN)
            {
                rules.push(rule);
            }
        }
        table.chain_ok &= matches!(rules.as_slice(), [rule] if is_hold_rule(rule));
        Ok(table)
    }
}

/// Elements are plain strings, or `{"elem": {"val": …, "counter": …}}` when the set counts.
fn set_elements(set: &Value) -> Vec<String> {
    let Some(elems) = set.get("elem").and_then(Value::as_array) else {
        return Vec::new();
    };
    elems
        .iter()
        .filter_map(|e| e.as_str().or_else(|| e.pointer("/elem/val").and_then(Value::as_str)))
        .map(str::to_owned)
        .collect()
}

/// `iifname @held_ports drop`, with or without a counter statement in between.
fn is_hold_rule(rule: &Value) -> bool {
    let Some(exprs) = rule.get("expr").and_then(Value::as_array) else {
        return false;
    };
    let exprs: Vec<&Value> = exprs.iter().filter(|e| e.get("counter").is_none()).collect();
    let [matcher, verdict] = exprs.as_slice() else {
        return false;
    };
    let Some(m) = matcher.get("match") else {
        return false;
    };
    m.get("op").and_then(Value::as_str) == Some("==")
        && m.pointer("/left/meta/key").and_then(Value::as_str) == Some("iifname")
        && m.get("right").and_then(Value::as_str) == Some(&format!("@{SET}"))
        && verdict.get("drop").is_some()
}

/// One transaction that (re)builds the table around whatever is there, adds `hold` to the
/// set and deletes `release` from it. With nothing to hold the table is left as it is (a
/// release needs no table; deleting from a missing one fails, so callers pass only names
/// the set holds). `add` of an existing table, set or chain is a no-op; flushing the chain
/// before adding the rule keeps exactly one rule however often this runs, and because the
/// whole script commits atomically there is no instant without the rule.
pub fn batch_script(hold: &[&str], release: &[&str]) -> Value {
    let base = json!({"family": FAMILY, "table": TABLE});
    let with = |extra: Value| {
        let mut obj = base.clone();
        obj.as_object_mut()
            .expect("object literal")
            .extend(extra.as_object().expect("object literal").clone());
        obj
    };
    let mut commands = Vec::new();
    if !hold.is_empty() {
        commands.extend([
            json!({"add": {"table": {"family": FAMILY, "name": TABLE}}}),
            json!({"add": {"set": with(json!({"name": SET, "type": "ifname", "flags": [],
                                              "stmt": [{"counter": null}]}))}}),
            json!({"add": {"chain": with(json!({"name": CHAIN, "type": "filter",
                                                "hook": "prerouting", "prio": PRIORITY,
                                                "policy": "accept"}))}}),
            json!({"flush": {"chain": with(json!({"name": CHAIN}))}}),
            json!({"add": {"rule": with(json!({"chain": CHAIN, "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                           "right": format!("@{SET}")}},
                {"drop": null}
            ]}))}}),
            json!({"add": {"element": with(json!({"name": SET, "elem": hold}))}}),
        ]);
    }
    if !release.is_empty() {
        commands.push(json!({"delete": {"element": with(json!({"name": SET, "elem": release}))}}));
    }
    json!({"nftables": commands})
}

/// A failed `nft` run, before it is given an operation and target.
#[derive(Debug, Clone)]
pub enum NftFailure {
    /// The binary is not installed (or not on PATH).
    Missing,
    /// The object does not exist (`No such file or directory`).
    NotFound(String),
    /// Anything else nft or the kernel refused, with its message.
    Failed(String),
    /// The process could not run or did not finish in time.
    Io(String),
}

impl NftFailure {
    /// The loop's error for this failure. A missing binary, missing privileges and a
    /// kernel without bridge nftables will fail the same way again: permanent, with the
    /// fix in the message. Busy or interrupted kernels and timeouts are transient.
    pub fn into_error(self, operation: &str, target: String) -> Error {
        match self {
            NftFailure::Missing => Error::permanent(
                operation,
                target,
                "the `nft` binary was not found: install nftables (Debian/Ubuntu: \
                 `apt-get install nftables`, RHEL: `dnf install nftables`)",
            ),
            NftFailure::NotFound(msg) => Error::transient(operation, target, msg),
            NftFailure::Io(msg) => Error::transient(operation, target, msg),
            NftFailure::Failed(msg) => {
                let lower = msg.to_lowercase();
                if lower.contains("not supported") {
                    Error::permanent(
                        operation,
                        target,
                        format!("{msg} (the kernel needs CONFIG_NF_TABLES_BRIDGE)"),
                    )
                } else if lower.contains("not permitted") || lower.contains("permission denied") {
                    Error::permanent(operation, target, format!("{msg} (needs CAP_NET_ADMIN)"))
                } else if lower.contains("file exists") || lower.contains("syntax error") {
                    // An object of ours exists with a different definition, or our script
                    // is wrong: either way the same script will fail again.
                    Error::permanent(operation, target, msg)
                } else {
                    Error::transient(operation, target, msg)
                }
            }
        }
    }
}

/// Runs the `nft` binary in the calling process's network namespace.
#[derive(Debug, Clone)]
pub struct Nft {
    binary: String,
}

impl Default for Nft {
    fn default() -> Self {
        Nft { binary: "nft".into() }
    }
}

impl Nft {
    /// An `nft` at another path (tests use a missing one).
    pub fn at(binary: impl Into<String>) -> Self {
        Nft { binary: binary.into() }
    }

    /// The table as it is now; a missing table is an empty [`HoldTable`].
    pub async fn list(&self) -> Result<HoldTable, NftFailure> {
        match self.run(&["-j", "list", "table", FAMILY, TABLE], None).await {
            Ok(out) => HoldTable::parse(&out).map_err(NftFailure::Failed),
            Err(NftFailure::NotFound(_)) => Ok(HoldTable::default()),
            Err(e) => Err(e),
        }
    }

    /// Applies a JSON script as one transaction.
    pub async fn apply(&self, script: &Value) -> Result<(), NftFailure> {
        self.run(&["-j", "-f", "-"], Some(script.to_string())).await.map(drop)
    }

    async fn run(&self, args: &[&str], stdin: Option<String>) -> Result<String, NftFailure> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NftFailure::Missing,
            _ => NftFailure::Io(format!("cannot run {}: {e}", self.binary)),
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .map_err(|e| NftFailure::Io(format!("writing the script to nft: {e}")))?;
        }
        let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| NftFailure::Io(format!("nft did not finish in {TIMEOUT:?}")))?
            .map_err(|e| NftFailure::Io(format!("waiting for nft: {e}")))?;
        debug!(?args, status = %out.status, "nft ran");
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = stderr
            .lines()
            .find_map(|l| l.split_once("Error: ").map(|(_, m)| m.trim().to_owned()))
            .unwrap_or_else(|| stderr.trim().to_owned());
        if msg.contains("No such file or directory") {
            Err(NftFailure::NotFound(msg))
        } else {
            Err(NftFailure::Failed(msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `nft -j list table bridge hagw` output of nft 1.0.6 with one held port.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "bridge", "name": "hagw", "handle": 1}}, {"set": {"family": "bridge", "name": "held_ports", "table": "hagw", "type": "ifname", "handle": 1, "elem": [{"elem": {"val": "tapabc", "counter": {"packets": 0, "bytes": 0}}}], "stmt": [{"counter": null}]}}, {"chain": {"family": "bridge", "table": "hagw", "name": "hold", "handle": 2, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}}, {"rule": {"family": "bridge", "table": "hagw", "chain": "hold", "handle": 3, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@held_ports"}}, {"drop": null}]}}]}"#;

    #[test]
    fn parses_a_complete_table() {
        let t = HoldTable::parse(LISTED).unwrap();
        assert!(t.is_complete());
        assert!(t.holds("tapabc"));
        assert!(!t.holds("tapother"));
    }

    #[test]
    fn a_second_rule_makes_the_chain_incomplete() {
        let mut doc: Value = serde_json::from_str(LISTED).unwrap();
        let accept = json!({"rule": {"family": "bridge", "table": "hagw", "chain": "hold",
                                     "expr": [{"accept": null}]}});
        doc["nftables"].as_array_mut().unwrap().insert(4, accept);
        let t = HoldTable::parse(&doc.to_string()).unwrap();
        assert!(!t.is_complete());
        assert!(t.holds("tapabc"));
    }

    #[test]
    fn missing_rule_or_wrong_policy_is_incomplete() {
        let mut doc: Value = serde_json::from_str(LISTED).unwrap();
        doc["nftables"].as_array_mut().unwrap().pop();
        assert!(!HoldTable::parse(&doc.to_string()).unwrap().is_complete());
        let drop_policy = LISTED.replace(r#""policy": "accept""#, r#""policy": "drop""#);
        assert!(!HoldTable::parse(&drop_policy).unwrap().chain_ok);
    }

    #[test]
    fn plain_string_elements_and_a_counter_statement_are_understood() {
        let doc = LISTED
            .replace(
                r#"[{"elem": {"val": "tapabc", "counter": {"packets": 0, "bytes": 0}}}]"#,
                r#"["tapabc", "tapdef"]"#,
            )
            .replace(
                r#"{"drop": null}"#,
                r#"{"counter": {"packets": 1, "bytes": 2}}, {"drop": null}"#,
            );
        let t = HoldTable::parse(&doc).unwrap();
        assert!(t.is_complete());
        assert_eq!(t.held, ["tapabc", "tapdef"]);
    }

    #[test]
    fn a_set_of_another_type_is_not_ours() {
        let doc = LISTED.replace(r#""type": "ifname""#, r#""type": "ether_addr""#);
        assert!(!HoldTable::parse(&doc).unwrap().set_ok);
    }

    #[test]
    fn garbage_is_an_error_not_a_guess() {
        assert!(HoldTable::parse("not json").is_err());
        assert!(HoldTable::parse(r#"{"other": []}"#).is_err());
    }

    #[test]
    fn a_hold_is_one_transaction_ending_with_the_elements() {
        let script = batch_script(&["tap123", "tap456"], &[]);
        let cmds = script["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 6);
        assert!(cmds[3].get("flush").is_some(), "the chain is flushed before its rule");
        assert_eq!(cmds[5]["add"]["element"]["elem"], json!(["tap123", "tap456"]));
    }

    #[test]
    fn a_release_only_deletes_elements_and_a_batch_does_both() {
        let script = batch_script(&[], &["tap1"]);
        assert_eq!(script["nftables"].as_array().unwrap().len(), 1);
        assert_eq!(script["nftables"][0]["delete"]["element"]["elem"], json!(["tap1"]));
        let script = batch_script(&["tap2"], &["tap1"]);
        let cmds = script["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 7);
        assert_eq!(cmds[6]["delete"]["element"]["elem"], json!(["tap1"]));
        assert!(batch_script(&[], &[])["nftables"].as_array().unwrap().is_empty());
    }

    #[test]
    fn failures_are_classified_with_hints() {
        let e = NftFailure::Missing.into_error("hold", table_target());
        assert!(!e.is_transient());
        assert!(e.to_string().contains("install nftables"), "{e}");
        assert_eq!(e.target, "nft bridge table hagw");
        let e = NftFailure::Failed("Could not process rule: Operation not supported".into())
            .into_error("hold", table_target());
        assert!(!e.is_transient());
        assert!(e.to_string().contains("CONFIG_NF_TABLES_BRIDGE"), "{e}");
        let e = NftFailure::Failed("Operation not permitted (you must be root)".into())
            .into_error("hold", table_target());
        assert!(!e.is_transient());
        let e = NftFailure::Failed("Could not process rule: Device or resource busy".into())
            .into_error("hold", table_target());
        assert!(e.is_transient());
    }
}
