//! Forgetting the datapath flows a released port had while it was held.
//!
//! While the port is held, every packet from it (keepalived's gratuitous ARPs at its
//! transition, the router's own ARP and IPv6 traffic) is translated to `drop`, and the
//! datapath caches that as a megaflow matching little more than `in_port`. After the release
//! ovs-vswitchd's revalidators replace those flows, but asynchronously: `cur_cfg` (see
//! [`super::applied`]) says the new configuration is in place, not that the datapath's cache
//! was revalidated against it, and an announcement sent in between matches the cached `drop`
//! (a lab lost round 1 of 51 in 200 takeovers that way). Deleting exactly the flows whose
//! `in_port` is the released port makes the next packet from it go up to ovs-vswitchd, which
//! translates it with the released configuration. The rest of the datapath is left alone.
//!
//! Batched: releases that arrive while a purge runs are served together by the next one
//! (one dump of the datapath per batch, then one `del-flow` per flow of the batch's ports),
//! so 1,000 routers taking over at once do not dump the datapath 1,000 times.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::debug;

use super::unixctl::{Unixctl, UnixctlError};

/// What a purge found and did for one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Datapath flows whose `in_port` was the port.
    pub flows: usize,
    /// How many of them dropped (the cached translation of the hold).
    pub dropping: usize,
    /// How many were deleted (the others were gone by then).
    pub deleted: usize,
    /// How many ports the batch that served this one had.
    pub batch: usize,
}

type Reply = Result<Purged, Arc<UnixctlError>>;

struct Request {
    datapath: String,
    port: String,
    done: oneshot::Sender<Reply>,
}

/// The datapath flows of one ovs-vswitchd, purged in batches. Cheap to clone.
#[derive(Clone)]
pub struct DatapathFlows {
    rundir: PathBuf,
    pending: Arc<Mutex<Vec<Request>>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for DatapathFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathFlows").field("rundir", &self.rundir).finish_non_exhaustive()
    }
}

/// The dpif name of a bridge's datapath: `<type>@ovs-<type>`, `system` when the Bridge
/// row's `datapath_type` is empty (as `ovs-appctl dpctl/show` lists them).
pub fn datapath_name(datapath_type: &str) -> String {
    let kind = if datapath_type.is_empty() { "system" } else { datapath_type };
    format!("{kind}@ovs-{kind}")
}

impl DatapathFlows {
    /// For the ovs-vswitchd whose pid file and control socket are in `rundir`.
    pub fn new(rundir: PathBuf) -> Self {
        DatapathFlows { rundir, pending: Arc::default(), turn: Arc::default() }
    }

    /// Deletes the flows of `datapath` (see [`datapath_name`]) whose `in_port` is `port`,
    /// together with every other port asked for meanwhile.
    pub async fn purge(&self, datapath: &str, port: &str) -> Reply {
        let (done, reply) = oneshot::channel();
        let request = Request { datapath: datapath.to_owned(), port: port.to_owned(), done };
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(request);
        {
            let _turn = self.turn.lock().await;
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            // Empty: the batch before ours took our request along.
            if !batch.is_empty() {
                self.run(batch).await;
            }
        }
        reply.await.unwrap_or_else(|_| Ok(Purged::default()))
    }

    async fn run(&self, batch: Vec<Request>) {
        let size = batch.len();
        let mut by_datapath: BTreeMap<String, Vec<Request>> = BTreeMap::new();
        for request in batch {
            by_datapath.entry(request.datapath.clone()).or_default().push(request);
        }
        let mut ctl = match Unixctl::connect(&self.rundir).await {
            Ok(ctl) => ctl,
            Err(e) => return answer_all(by_datapath.into_values().flatten(), e),
        };
        for (datapath, requests) in by_datapath {
            let ports: BTreeSet<String> = requests.iter().map(|r| r.port.clone()).collect();
            match purge_ports(&mut ctl, &datapath, &ports).await {
                Ok(per_port) => {
                    for request in requests {
                        let found = per_port.get(&request.port).copied().unwrap_or_default();
                        let _ = request.done.send(Ok(Purged { batch: size, ..found }));
                    }
                }
                Err(e) => answer_all(requests, e),
            }
        }
    }
}

fn answer_all(requests: impl IntoIterator<Item = Request>, error: UnixctlError) {
    let error = Arc::new(error);
    for request in requests {
        let _ = request.done.send(Err(error.clone()));
    }
}

/// One dump of `datapath` (filtered by ovs-vswitchd itself when there is one port), then
/// `del-flow` by flow id for each flow of `ports`.
async fn purge_ports<'a>(
    ctl: &mut Unixctl,
    datapath: &str,
    ports: &'a BTreeSet<String>,
) -> Result<BTreeMap<&'a String, Purged>, UnixctlError> {
    let filter = match ports.iter().collect::<Vec<_>>().as_slice() {
        [only] => Some(format!("filter=in_port({only})")),
        _ => None,
    };
    let mut params = vec!["-m", "--names", datapath];
    params.extend(filter.as_deref());
    let dump = ctl.call("dpctl/dump-flows", &params).await?;
    let mut per_port: BTreeMap<&String, Purged> = BTreeMap::new();
    for flow in dump.lines().filter_map(DumpedFlow::parse) {
        let Some(port) = ports.get(flow.in_port) else { continue };
        let purged = per_port.entry(port).or_default();
        purged.flows += 1;
        purged.dropping += usize::from(flow.drops);
        match ctl.call("dpctl/del-flow", &[datapath, flow.ufid]).await {
            Ok(_) => purged.deleted += 1,
            // Gone meanwhile (a revalidator deleted it): that is what we wanted.
            Err(UnixctlError::Command { error, .. }) => {
                debug!(port, ufid = flow.ufid, error, "datapath flow not deleted")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(per_port)
}

/// One line of `dpctl/dump-flows -m --names`.
#[derive(Debug, PartialEq, Eq)]
struct DumpedFlow<'a> {
    /// `ufid:<uuid>`, as `del-flow` takes it.
    ufid: &'a str,
    in_port: &'a str,
    drops: bool,
}

impl<'a> DumpedFlow<'a> {
    fn parse(line: &'a str) -> Option<DumpedFlow<'a>> {
        let (ufid, rest) = line.trim().split_once(", ")?;
        if !ufid.starts_with("ufid:") {
            return None;
        }
        let in_port = rest.split_once("in_port(")?.1.split_once(')')?.0;
        let in_port = in_port.trim_matches('"');
        let actions = rest.rsplit_once("actions:")?.1;
        let drops = actions.split(',').next().is_some_and(|a| a.trim() == "drop");
        Some(DumpedFlow { ufid, in_port, drops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "flow-dump from the main thread:\n\
ufid:5f595a13-d42e-4ab7-8256-08bfee0f442f, skb_priority(0/0),recirc_id(0),dp_hash(0/0),in_port(up1),packet_type(ns=0,id=0),eth(src=76:9d:88:ec:31:96,dst=33:33:00:00:00:02),eth_type(0x86dd), packets:2, bytes:140, used:10.288s, dp:ovs, actions:push_vlan(vid=5,pcp=0),br-int,pop_vlan,p1, dp-extra-info:miniflow_bits(5,1)\n\
ufid:6835ee5a-1512-4859-9380-146ac0716000, skb_priority(0/0),recirc_id(0),dp_hash(0/0),in_port(qg-1),packet_type(ns=0,id=0),eth_type(0x0806), packets:0, bytes:0, used:never, dp:ovs, actions:drop, dp-extra-info:miniflow_bits(5,2)\n";

    #[test]
    fn a_dump_line_gives_the_flow_id_its_in_port_and_whether_it_drops() {
        let flows: Vec<DumpedFlow> = DUMP.lines().filter_map(DumpedFlow::parse).collect();
        assert_eq!(
            flows,
            [
                DumpedFlow {
                    ufid: "ufid:5f595a13-d42e-4ab7-8256-08bfee0f442f",
                    in_port: "up1",
                    drops: false
                },
                DumpedFlow {
                    ufid: "ufid:6835ee5a-1512-4859-9380-146ac0716000",
                    in_port: "qg-1",
                    drops: true
                },
            ]
        );
        assert_eq!(datapath_name(""), "system@ovs-system");
        assert_eq!(datapath_name("netdev"), "netdev@ovs-netdev");
    }
}
