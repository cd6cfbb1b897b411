//! The connection actor and its cheap-to-clone handle.
//!
//! One task owns the connection so that requests from many callers, server `echo` probes and
//! monitor notifications are multiplexed without locks: callers send a command and wait on a
//! oneshot. Its writes go through a task of their own (see [`Conn`]), so it never stops reading.
//! The task reconnects with exponential backoff and re-issues every monitor, so a monitor stream
//! survives an ovsdb-server restart (it sees `Disconnected` then `Resync`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio::io::ReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use super::codec::JsonRpcCodec;
use super::error::{OvsdbError, Result};
use super::monitor::{
    MonitorEvent, MonitorRequests, MonitorStream, TableUpdates, monitor_params, parse_table_updates,
};
use super::ops::{Op, OpResult, parse_transact_result};
use super::transport::{Endpoint, Io};

/// Timing knobs of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How often to probe the server with `echo`; the connection is declared dead when nothing at
    /// all arrives for one whole interval after a probe.
    pub echo_interval: Duration,
    /// How long a caller waits for any reply.
    pub request_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            echo_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

type Reply = oneshot::Sender<Result<Json>>;

enum Command {
    Call { method: &'static str, params: Json, reply: Reply },
    Monitor { id: String, params: Json, events: mpsc::UnboundedSender<MonitorEvent>, reply: Reply },
}

/// Handle to one OVSDB connection. Clones share the connection; the connection task ends when the
/// last handle is dropped.
#[derive(Debug, Clone)]
pub struct OvsdbClient {
    commands: mpsc::Sender<Command>,
    request_timeout: Duration,
}

impl OvsdbClient {
    /// Connects to `endpoint` (`unix:<path>` or `tcp:<host>:<port>`) with default timings.
    pub async fn connect(endpoint: &str) -> Result<Self> {
        Self::connect_with(endpoint.parse()?, ClientConfig::default()).await
    }

    /// Connects once (so a wrong path fails here, transiently) and spawns the connection task,
    /// which keeps reconnecting from then on.
    pub async fn connect_with(endpoint: Endpoint, config: ClientConfig) -> Result<Self> {
        let io = endpoint.connect().await?;
        info!(%endpoint, "connected to OVSDB");
        let (tx, rx) = mpsc::channel(64);
        let request_timeout = config.request_timeout;
        let actor = Actor {
            endpoint,
            config,
            commands: rx,
            next_id: 0,
            pending: HashMap::new(),
            monitors: BTreeMap::new(),
        };
        tokio::spawn(actor.run(io));
        Ok(Self { commands: tx, request_timeout })
    }

    async fn request(
        &self,
        method: &'static str,
        cmd: Command,
        rx: oneshot::Receiver<Result<Json>>,
    ) -> Result<Json> {
        let wait = async {
            self.commands.send(cmd).await.map_err(|_| OvsdbError::Closed)?;
            rx.await.map_err(|_| OvsdbError::Closed)?
        };
        tokio::time::timeout(self.request_timeout, wait).await.map_err(|_| OvsdbError::Timeout {
            method: method.into(),
            after_ms: self.request_timeout.as_millis(),
        })?
    }

    async fn call(&self, method: &'static str, params: Json) -> Result<Json> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Call { method, params, reply };
        self.request(method, cmd, rx).await
    }

    /// Round-trips an `echo`: proves the server is alive and answering.
    pub async fn echo(&self) -> Result<()> {
        let params = json!(["hagw"]);
        let result = self.call("echo", params.clone()).await?;
        if result == params {
            Ok(())
        } else {
            Err(OvsdbError::Protocol(format!("echo returned {result}, expected {params}")))
        }
    }

    /// Runs `ops` atomically in database `db`. Any failing op aborts the whole transaction and is
    /// reported as [`OvsdbError::OpFailed`] with its index.
    pub async fn transact(&self, db: &str, ops: &[Op]) -> Result<Vec<OpResult>> {
        let params: Json = std::iter::once(json!(db)).chain(ops.iter().map(Op::to_json)).collect();
        let result = self.call("transact", params).await?;
        parse_transact_result(ops, &result)
    }

    /// Starts monitor `monitor_id` (unique per client) and returns the initial contents plus a
    /// stream of later changes.
    pub async fn monitor(
        &self,
        db: &str,
        monitor_id: &str,
        requests: &MonitorRequests,
    ) -> Result<(TableUpdates, MonitorStream)> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Monitor {
            id: monitor_id.into(),
            params: monitor_params(db, monitor_id, requests),
            events: events_tx,
            reply,
        };
        let initial = self.request("monitor", cmd, rx).await?;
        Ok((parse_table_updates(&initial)?, MonitorStream { events }))
    }
}

/// A registered monitor, kept so it can be re-issued after a reconnect.
struct Monitor {
    params: Json,
    // Unbounded: the actor must never block on a slow consumer, or it would stop answering the
    // server's echo probes and get disconnected.
    events: mpsc::UnboundedSender<MonitorEvent>,
}

enum Pending {
    Call {
        method: &'static str,
        reply: Reply,
    },
    MonitorStart {
        id: String,
        reply: Reply,
    },
    Resync {
        id: String,
    },
    /// Our own echo probe or a monitor_cancel: only the fact that something arrived matters.
    Internal,
}

struct Actor {
    endpoint: Endpoint,
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    monitors: BTreeMap<String, Monitor>,
}

/// One connection: the actor reads, a task of its own writes. Writing in the actor would
/// deadlock under load: ovsdb-server reads no request while a reply to us is unsent, so an
/// actor blocked on a full socket (1,000 routers' reads at once) stopped reading the replies
/// the server was blocked on, and every request timed out.
struct Conn {
    reader: FramedRead<ReadHalf<Box<dyn Io>>, JsonRpcCodec>,
    out: mpsc::UnboundedSender<Json>,
    writer: JoinHandle<Result<()>>,
}

impl Conn {
    fn new(io: Box<dyn Io>) -> Self {
        let (read, write) = tokio::io::split(io);
        let (out, mut queued) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            let mut sink = FramedWrite::new(write, JsonRpcCodec::default());
            while let Some(msg) = queued.recv().await {
                sink.feed(msg).await?;
                // Everything queued meanwhile goes out in the same flush.
                while let Ok(msg) = queued.try_recv() {
                    sink.feed(msg).await?;
                }
                sink.flush().await?;
            }
            Ok(())
        });
        Self { reader: FramedRead::new(read, JsonRpcCodec::default()), out, writer }
    }

    /// Queues a message for the writer; fails once the writer has ended (a write failed).
    fn send(&self, msg: Json) -> Result<()> {
        self.out.send(msg).map_err(|_| OvsdbError::ConnectionLost("write failed".into()))
    }
}

/// Why a connection's writer ended: the write that failed.
fn write_failed(ended: std::result::Result<Result<()>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => "writer ended".into(),
        Err(e) => format!("writer task: {e}"),
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// Why `serve` returned.
enum End {
    /// Every handle was dropped.
    Shutdown,
    /// The connection broke; `healthy` says whether anything arrived on it first.
    Lost { reason: String, healthy: bool },
}

impl Actor {
    async fn run(mut self, first: Box<dyn Io>) {
        let mut io = Some(first);
        let mut backoff = self.config.backoff_initial;
        loop {
            let (conn, resync) = match io.take() {
                Some(conn) => (conn, false),
                None => match self.reconnect(&mut backoff).await {
                    Some(conn) => (conn, true),
                    None => return,
                },
            };
            match self.serve(Conn::new(conn), resync).await {
                End::Shutdown => return,
                End::Lost { reason, healthy } => {
                    warn!(endpoint = %self.endpoint, %reason, "OVSDB connection lost");
                    if healthy {
                        backoff = self.config.backoff_initial;
                    }
                    self.connection_lost(&reason);
                }
            }
        }
    }

    /// Fails what was in flight and tells monitors their view is stale.
    fn connection_lost(&mut self, reason: &str) {
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Call { reply, .. } => {
                    let _ = reply.send(Err(OvsdbError::ConnectionLost(reason.into())));
                }
                Pending::MonitorStart { id, reply } => {
                    self.monitors.remove(&id);
                    let _ = reply.send(Err(OvsdbError::ConnectionLost(reason.into())));
                }
                Pending::Resync { .. } | Pending::Internal => {}
            }
        }
        self.monitors.retain(|_, m| m.events.send(MonitorEvent::Disconnected).is_ok());
    }

    /// Sleeps with backoff until a connection succeeds, refusing commands meanwhile (queueing a
    /// transaction across an outage would apply it to state the caller never saw).
    async fn reconnect(&mut self, backoff: &mut Duration) -> Option<Box<dyn Io>> {
        loop {
            let deadline = Instant::now() + *backoff;
            *backoff = (*backoff * 2).min(self.config.backoff_max);
            loop {
                tokio::select! {
                    cmd = self.commands.recv() => {
                        let reply = match cmd? {
                            Command::Call { reply, .. } | Command::Monitor { reply, .. } => reply,
                        };
                        let reason = format!("not connected to {}, reconnecting", self.endpoint);
                        let _ = reply.send(Err(OvsdbError::ConnectionLost(reason)));
                    }
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            match self.endpoint.connect().await {
                Ok(conn) => {
                    info!(endpoint = %self.endpoint, "reconnected to OVSDB");
                    return Some(conn);
                }
                Err(e) => debug!(error = %e, retry_in = ?backoff, "OVSDB reconnect failed"),
            }
        }
    }

    async fn serve(&mut self, mut conn: Conn, resync: bool) -> End {
        let lost = |reason: String, healthy| End::Lost { reason, healthy };
        if resync {
            let monitors: Vec<(String, Json)> =
                self.monitors.iter().map(|(id, m)| (id.clone(), m.params.clone())).collect();
            for (id, params) in monitors {
                if let Err(e) =
                    self.send(&mut conn, "monitor", params, Pending::Resync { id }).await
                {
                    return lost(e.to_string(), false);
                }
            }
        }
        let period = self.config.echo_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut awaiting_probe = false;
        let mut healthy = false;
        loop {
            tokio::select! {
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return End::Shutdown };
                    if let Err(e) = self.command(&mut conn, cmd).await {
                        return lost(e.to_string(), healthy);
                    }
                }
                ended = &mut conn.writer => return lost(write_failed(ended), healthy),
                msg = conn.reader.next() => {
                    let json = match msg {
                        None => return lost("server closed the connection".into(), healthy),
                        Some(Err(e)) => return lost(e.to_string(), healthy),
                        Some(Ok(json)) => json,
                    };
                    awaiting_probe = false;
                    healthy = true;
                    if let Err(e) = self.incoming(&mut conn, json).await {
                        return lost(e.to_string(), healthy);
                    }
                }
                _ = ticker.tick() => {
                    if awaiting_probe {
                        return lost(format!("no reply to echo within {period:?}"), healthy);
                    }
                    if let Err(e) = self.send(&mut conn, "echo", json!([]), Pending::Internal).await {
                        return lost(e.to_string(), healthy);
                    }
                    awaiting_probe = true;
                }
            }
        }
    }

    /// Sends a request, registering `pending` first so a failed write is cleaned up with the rest.
    async fn send(
        &mut self,
        conn: &mut Conn,
        method: &str,
        params: Json,
        pending: Pending,
    ) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, pending);
        debug!(id, method, "OVSDB request");
        conn.send(json!({"id": id, "method": method, "params": params}))
    }

    async fn command(&mut self, conn: &mut Conn, cmd: Command) -> Result<()> {
        match cmd {
            Command::Call { method, params, reply } => {
                self.send(conn, method, params, Pending::Call { method, reply }).await
            }
            Command::Monitor { id, params, events, reply } => {
                if self.monitors.contains_key(&id) {
                    let msg = format!("monitor id {id:?} is already in use on this client");
                    let _ = reply.send(Err(OvsdbError::Protocol(msg)));
                    return Ok(());
                }
                let monitor = Monitor { params: params.clone(), events };
                self.monitors.insert(id.clone(), monitor);
                self.send(conn, "monitor", params, Pending::MonitorStart { id, reply }).await
            }
        }
    }

    /// Handles one message from the server. An error here is a protocol violation that makes the
    /// connection (and therefore our monitor view) untrustworthy, so the caller drops it.
    async fn incoming(&mut self, conn: &mut Conn, msg: Json) -> Result<()> {
        let Some(obj) = msg.as_object() else {
            return Err(OvsdbError::Protocol(format!("message is not an object: {msg}")));
        };
        let id = obj.get("id").cloned().unwrap_or(Json::Null);
        if let Some(method) = obj.get("method").and_then(Json::as_str) {
            let params = obj.get("params").cloned().unwrap_or(Json::Null);
            return match (method, id.is_null()) {
                ("echo", false) => conn.send(json!({"id": id, "result": params, "error": null})),
                ("update", true) => self.update(conn, &params).await,
                (_, false) => {
                    debug!(method, "refusing unsupported server request");
                    conn.send(json!({"id": id, "result": null, "error": "unknown method"}))
                }
                (_, true) => {
                    debug!(method, "ignoring server notification");
                    Ok(())
                }
            };
        }
        let Some(pending) = id.as_u64().and_then(|n| self.pending.remove(&n)) else {
            debug!(%id, "reply to unknown or abandoned request");
            return Ok(());
        };
        let error = obj.get("error").cloned().unwrap_or(Json::Null);
        let result = obj.get("result").cloned().unwrap_or(Json::Null);
        let outcome = |method: &str| match error.is_null() {
            true => Ok(result.clone()),
            false => Err(OvsdbError::Rpc { method: method.into(), error: error.clone() }),
        };
        match pending {
            Pending::Call { method, reply } => {
                let _ = reply.send(outcome(method));
            }
            Pending::MonitorStart { id, reply } => {
                if !error.is_null() {
                    self.monitors.remove(&id);
                }
                let _ = reply.send(outcome("monitor"));
            }
            Pending::Resync { id } => {
                match outcome("monitor").and_then(|r| parse_table_updates(&r)) {
                    Ok(updates) => {
                        let delivered = self
                            .monitors
                            .get(&id)
                            .is_some_and(|m| m.events.send(MonitorEvent::Resync(updates)).is_ok());
                        if !delivered {
                            self.cancel(conn, &id).await?;
                        }
                    }
                    Err(e) => {
                        warn!(monitor = %id, error = %e, "cannot re-establish monitor, ending its stream");
                        self.monitors.remove(&id);
                    }
                }
            }
            Pending::Internal => {}
        }
        Ok(())
    }

    async fn update(&mut self, conn: &mut Conn, params: &Json) -> Result<()> {
        let (Some(Json::String(id)), Some(updates)) = (params.get(0), params.get(1)) else {
            return Err(OvsdbError::Protocol(format!("bad update params: {params}")));
        };
        let updates = parse_table_updates(updates)?;
        let Some(monitor) = self.monitors.get(id) else {
            debug!(monitor = %id, "update for unknown monitor");
            return Ok(());
        };
        if monitor.events.send(MonitorEvent::Update(updates)).is_err() {
            self.cancel(conn, &id.clone()).await?;
        }
        Ok(())
    }

    /// The stream was dropped: stop the server from sending updates nobody reads.
    async fn cancel(&mut self, conn: &mut Conn, id: &str) -> Result<()> {
        debug!(monitor = %id, "monitor stream dropped, cancelling");
        self.monitors.remove(id);
        self.send(conn, "monitor_cancel", json!([id]), Pending::Internal).await
    }
}
