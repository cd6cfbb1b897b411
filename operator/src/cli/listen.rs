//! `--listen`: the address of the agent's HTTP endpoint, the same flag, environment variable
//! and default for `hagw run` and `hagw agent --kubernetes`.

use std::net::SocketAddr;

/// The port of the endpoint in every mode, and the default of `hagw status --addr`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9477";

#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Address serving /metrics (Prometheus), /healthz, /readyz, /status and /log-level;
    /// `none` to serve nothing. (`--metrics-addr`, its name before 0.1.0, still works.)
    #[arg(
        long,
        alias = "metrics-addr",
        env = "HAGW_LISTEN",
        default_value = DEFAULT_LISTEN,
        value_name = "ADDR:PORT|none",
        value_parser = parse_listen
    )]
    pub listen: Listen,
}

/// An optional listening address: `none` disables the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{e} (expected ADDRESS:PORT or none)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_or_none() {
        assert_eq!(parse_listen("none"), Ok(Listen(None)));
        assert_eq!(parse_listen("NONE"), Ok(Listen(None)));
        assert_eq!(parse_listen("127.0.0.1:0"), Ok(Listen(Some("127.0.0.1:0".parse().unwrap()))));
        assert_eq!(parse_listen("[::1]:9477"), Ok(Listen(Some("[::1]:9477".parse().unwrap()))));
        let error = parse_listen("9477").unwrap_err();
        assert!(error.contains("expected ADDRESS:PORT or none"), "{error}");
        assert_eq!(parse_listen(DEFAULT_LISTEN).unwrap().0.map(|a| a.port()), Some(9477));
    }
}
