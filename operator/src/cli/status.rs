//! `hagw status`: asks a running agent (`hagw run` or `hagw agent`) over its loopback HTTP
//! endpoint what it is doing, one line per router. Needs no privileges: the endpoint is the
//! one that serves `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::observe::status::RouterStatus;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's `--listen` address (`hagw run` and `hagw agent` alike).
    #[arg(long, env = "HAGW_STATUS_ADDR", default_value = "127.0.0.1:9477")]
    pub addr: SocketAddr,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
}

pub fn run(args: StatusArgs) -> ExitCode {
    match fetch(args.addr).and_then(|routers| render(&routers, args.output)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hagw: cannot read the agent's status at {}: {e:#}", args.addr);
            ExitCode::FAILURE
        }
    }
}

/// `GET /status` over plain HTTP/1.1.
fn fetch(addr: SocketAddr) -> Result<Vec<RouterStatus>> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).context("connecting")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response).context("reading the answer")?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("the agent answered {status} (an agent older than `hagw status`?): {body}");
    }
    serde_json::from_str(body).context("parsing the agent's answer")
}

fn render(routers: &[RouterStatus], output: Output) -> Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(routers)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&routers)?,
        Output::Text => table(routers),
    })
}

fn table(routers: &[RouterStatus]) -> String {
    let header = [
        "ROUTER",
        "ROLE",
        "WHY",
        "PORT",
        "STRATEGY",
        "BACKEND",
        "HOLD",
        "SINCE",
        "LAST CHANGE",
        "NOTES",
    ];
    let rows: Vec<[String; 10]> = routers
        .iter()
        .map(|r| {
            let mut notes = Vec::new();
            if r.leak_alarm {
                notes.push("LEAK ALARM".to_string());
            }
            if r.role_sources_disagree {
                notes.push("role sources disagree".to_string());
            }
            if let Some(e) = &r.last_error {
                notes.push(format!("error: {e}"));
            }
            notes.extend(r.degraded.iter().map(|d| format!("degraded: {d}")));
            if !r.read_only.is_empty() {
                notes.push(format!("read-only /proc/sys: {}", r.read_only.join(", ")));
            }
            [
                r.router.clone(),
                r.role.clone().unwrap_or_else(|| "-".into()),
                r.role_reason.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", r.namespace, r.gateway_device),
                r.strategy.clone(),
                r.backend.clone(),
                if r.held { "held" } else { "released" }.into(),
                r.held_since.clone().unwrap_or_else(|| "-".into()),
                match (&r.previous_role, &r.last_transition) {
                    (Some(from), Some(at)) => {
                        format!("{from}->{} {at}", r.role.as_deref().unwrap_or("?"))
                    }
                    _ => "-".into(),
                },
                notes.join("; "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut text = line(header.to_vec());
    for row in &rows {
        text += &line(row.iter().map(String::as_str).collect());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_role_hold_and_alarms() {
        let routers: Vec<RouterStatus> = serde_json::from_value(serde_json::json!([
            {"router": "r1", "namespace": "qrouter-1", "gatewayDevice": "qg-1",
             "strategy": "l2-hold", "backend": "ovs", "role": "primary", "roleReason": "vip",
             "held": false,
             "heldSince": "2026-12-02T17:00:00Z", "lastTransition": "2026-12-02T17:00:00Z",
             "previousRole": "standby", "leakAlarm": false},
            {"router": "r2", "namespace": "qrouter-2", "gatewayDevice": "qg-2",
             "strategy": "silence-only", "backend": "generic", "role": "standby",
             "held": false, "leakAlarm": true, "lastError": "set link down: EPERM",
             "roleReason": "keepalived-down", "roleSourcesDisagree": true},
        ]))
        .unwrap();
        let text = table(&routers);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ROUTER  ROLE     WHY"), "{text}");
        assert!(lines[1].contains("primary  vip "), "{text}");
        assert!(lines[2].contains("standby  keepalived-down "), "{text}");
        assert!(lines[1].contains("primary") && lines[1].contains("standby->primary"), "{text}");
        assert!(lines[1].contains("qrouter-1/qg-1") && lines[1].contains("released"), "{text}");
        assert!(
            lines[2].contains("LEAK ALARM; role sources disagree; error: set link down: EPERM"),
            "{text}"
        );
        let yaml = render(&routers, Output::Yaml).unwrap();
        assert!(yaml.contains("leakAlarm: true"), "{yaml}");
    }
}
