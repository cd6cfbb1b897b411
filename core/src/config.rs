//! The standalone configuration file: a list of router specs plus node-wide settings.
//! Parsing and validation happen entirely before anything is applied, and every error names
//! the file, line, column and field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use crate::model::{L2BackendSpec, RouterSpec, Strategy};

/// Default OVSDB endpoint of a Neutron network node.
pub const DEFAULT_OVSDB: &str = "unix:/run/openvswitch/db.sock";

/// Contents of `routers.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// OVSDB endpoint for routers with the `ovs` backend (`unix:PATH` or `tcp:HOST:PORT`).
    #[serde(default = "default_ovsdb")]
    pub ovsdb: String,
    pub routers: Vec<RouterSpec>,
}

fn default_ovsdb() -> String {
    DEFAULT_OVSDB.to_string()
}

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(u64, u64)>,
    /// Dotted path of the offending field, e.g. `routers[1].strategy`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        position: None,
        field: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `file` is used in error messages only.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config = serde_saphyr::from_str(text).map_err(|e| syntax_error(file, text, &e))?;
    if let Err((index, field, message)) = validate(&config) {
        let position = locate(text, index, field);
        let field = Some(format!("routers[{index}].{field}"));
        return Err(ConfigError { file: file.to_owned(), position, field, message });
    }
    Ok(config)
}

fn syntax_error(file: &Path, text: &str, error: &serde_saphyr::Error) -> ConfigError {
    let position = error.location().map(|l| (l.line(), l.column()));
    let message = parser_message(&error.to_string());
    // Name the router (by index) and, for unknown fields, the field itself, so the message
    // is useful in a long file.
    let router = position.and_then(|(line, _)| router_at_line(text, line));
    let unknown = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next());
    let field = match (router, unknown) {
        (Some(i), Some(name)) => Some(format!("routers[{i}].{name}")),
        (Some(i), None) => Some(format!("routers[{i}]")),
        (None, Some(name)) => Some(name.to_string()),
        (None, None) => None,
    };
    ConfigError { file: file.to_owned(), position, field, message }
}

/// The parser's first line without its own `error: line N column M:` prefix, which the
/// `file:line:column` of [`ConfigError`] already says.
fn parser_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    let without_error = first.strip_prefix("error: ").unwrap_or(first);
    match without_error.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((position, rest)) if position.contains("column") => rest.to_string(),
        _ => without_error.to_string(),
    }
}

/// A lightweight second reading of the file that keeps the position of every router field,
/// so semantic errors can point at the line they come from.
#[derive(Deserialize)]
struct RouterPositions {
    routers: Vec<Spanned<BTreeMap<String, Spanned<IgnoredAny>>>>,
}

fn locate(text: &str, index: usize, field: &str) -> Option<(u64, u64)> {
    let positions: RouterPositions = serde_saphyr::from_str(text).ok()?;
    let router = positions.routers.get(index)?;
    let top = field.split('.').next().unwrap_or(field);
    let location = match router.value.get(top) {
        Some(value) => value.referenced,
        None => router.referenced,
    };
    Some((location.line(), location.column()))
}

fn router_at_line(text: &str, line: u64) -> Option<usize> {
    let positions: RouterPositions = serde_saphyr::from_str(text).ok()?;
    positions.routers.iter().rposition(|r| r.referenced.line() <= line)
}

/// Checks what the schema cannot express. Returns the router index, field and message of
/// the first problem.
fn validate(config: &Config) -> Result<(), (usize, &'static str, String)> {
    let mut ids = HashSet::new();
    let mut ports = HashSet::new();
    for (i, router) in config.routers.iter().enumerate() {
        validate_router(router).map_err(|(field, message)| (i, field, message))?;
        if !ids.insert(router.id.as_str()) {
            return Err((i, "id", format!("duplicate router id `{}`", router.id)));
        }
        if !ports.insert((router.namespace.as_str(), router.gateway_device.as_str())) {
            return Err((
                i,
                "gatewayDevice",
                format!(
                    "`{}` in namespace `{}` is already managed by another router",
                    router.gateway_device, router.namespace
                ),
            ));
        }
    }
    Ok(())
}

/// Checks one router spec on its own (also used for specs from other sources).
pub fn validate_router(router: &RouterSpec) -> Result<(), (&'static str, String)> {
    if router.id.is_empty() {
        return Err(("id", "must not be empty".into()));
    }
    check_namespace(&router.namespace).map_err(|m| ("namespace", m))?;
    check_device(&router.gateway_device).map_err(|m| ("gatewayDevice", m))?;
    if let Some(ha) = &router.ha_device {
        check_device(ha).map_err(|m| ("haDevice", m))?;
    }
    if router.primary_vip.is_some() && router.ha_device.is_none() {
        return Err(("primaryVip", "needs `haDevice`, the device keepalived puts it on".into()));
    }
    if router.keepalived_pid_file.as_ref().is_some_and(|p| !p.is_absolute()) {
        return Err(("keepalivedPidFile", "must be an absolute path".into()));
    }
    match &router.backend {
        L2BackendSpec::Generic if router.strategy == Strategy::L2Hold => {
            return Err((
                "strategy",
                "`l2-hold` (the default strategy) needs an `ovs` or `linuxbridge` backend; \
                 with the generic backend use `link-down` or `silence-only`"
                    .into(),
            ));
        }
        L2BackendSpec::Ovs { port: Some(port) } => {
            check_device(port).map_err(|m| ("backend", m))?
        }
        L2BackendSpec::Linuxbridge { port, bridge } => {
            check_device(port).map_err(|m| ("backend", m))?;
            check_device(bridge).map_err(|m| ("backend", m))?;
        }
        _ => {}
    }
    for route in &router.routes {
        if let Some(via) = route.via
            && via.is_ipv4() != route.destination.addr().is_ipv4()
        {
            return Err((
                "routes",
                format!("route {} via {via} mixes IPv4 and IPv6", route.destination),
            ));
        }
    }
    if router.announce.interval_ms == 0 && router.announce.repeats > 0 {
        return Err(("announce", "intervalMs must be > 0 when repeats > 0".into()));
    }
    Ok(())
}

/// Linux interface names: 1–15 bytes, no `/`, whitespace or `:`.
fn check_device(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("device name `{name}` must be 1 to 15 characters"));
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
        || name == "."
        || name == ".."
    {
        return Err(format!("`{name}` is not a valid device name"));
    }
    Ok(())
}

/// Named namespaces are files under `/run/netns`.
fn check_namespace(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid network namespace name"));
    }
    Ok(())
}
