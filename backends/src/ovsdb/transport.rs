//! OVSDB endpoints in the notation OVS tools use (`unix:/run/openvswitch/db.sock`,
//! `tcp:127.0.0.1:6640`), so hagw's configuration reads like `ovs-vsctl --db=...`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use super::error::{OvsdbError, Result};

/// Where the OVSDB server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

/// A connected byte stream of either kind; boxed so the connection task has one concrete type.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Endpoint {
    /// Opens a new connection to the endpoint.
    pub(crate) async fn connect(&self) -> Result<Box<dyn Io>> {
        let connect_err = |source| OvsdbError::Connect { endpoint: self.to_string(), source };
        match self {
            Self::Unix(path) => Ok(Box::new(UnixStream::connect(path).await.map_err(connect_err)?)),
            Self::Tcp { host, port } => {
                let stream =
                    TcpStream::connect((host.as_str(), *port)).await.map_err(connect_err)?;
                // Requests are small and latency-bound; don't let Nagle hold them back.
                stream.set_nodelay(true).map_err(connect_err)?;
                Ok(Box::new(stream))
            }
        }
    }
}

impl FromStr for Endpoint {
    type Err = OvsdbError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: &str| OvsdbError::InvalidEndpoint {
            endpoint: s.into(),
            reason: reason.into(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("empty socket path"));
            }
            return Ok(Self::Unix(path.into()));
        }
        let Some(rest) = s.strip_prefix("tcp:") else {
            return Err(invalid("expected unix:<path> or tcp:<host>:<port>"));
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid("missing :<port>"))?;
        let port = port.parse::<u16>().map_err(|_| invalid("port is not a number in 0..=65535"))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        Ok(Self::Tcp { host: host.into(), port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for text in [
            "unix:/run/openvswitch/db.sock",
            "tcp:127.0.0.1:6640",
            "tcp:[::1]:6640",
            "tcp:ovsdb.example:6641",
        ] {
            let ep: Endpoint = text.parse().unwrap();
            assert_eq!(ep.to_string(), text);
        }
        assert_eq!(
            "tcp:[::1]:6640".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp { host: "::1".into(), port: 6640 }
        );
    }

    #[test]
    fn invalid_endpoints() {
        for (text, reason) in [
            ("ssl:1.2.3.4:6640", "expected unix:"),
            ("unix:", "empty socket path"),
            ("tcp:1.2.3.4", "missing :<port>"),
            ("tcp:host:99999", "port is not a number"),
            ("tcp::6640", "empty host"),
        ] {
            let err = text.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(text) && err.contains(reason), "{err}");
        }
    }

    #[tokio::test]
    async fn connect_refused_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let ep = Endpoint::Unix(dir.path().join("missing.sock"));
        let err = ep.connect().await.err().expect("no server");
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("missing.sock"), "{err}");
    }
}
