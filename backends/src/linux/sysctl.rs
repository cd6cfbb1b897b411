//! Per-device IPv6 sysctls under `/proc/sys/net/ipv6/conf/<device>/`.
//!
//! `/proc/sys/net` follows the network namespace of the *thread* reading it, so the files
//! are read and written on a thread that joined the router namespace ([`Netns::run`]).
//! (`/proc/self/net` and `/sys/class/net` do not follow it and must not be used there.)
//! Writes happen only when the value differs: some writes have side effects even when the
//! value is unchanged (`addr_gen_mode` re-runs address configuration on an up device), and
//! a sysctl that is already right is the common case on every reconcile pass.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hagw_core::observed::{Ipv6Conf, Ipv6Sysctl};
use hagw_core::{Error, ErrorKind};
use tracing::{info, instrument};

use super::LinuxNet;
use super::error::{Target, from_io, io_kind};
use crate::netns::Netns;

/// Longest device name the kernel accepts (IFNAMSIZ - 1).
const MAX_DEVICE_NAME: usize = 15;

/// The sysctl file for `key` of `device`. The name is checked so that it cannot walk out
/// of the `conf` directory: device names come from configuration.
pub fn ipv6_conf_path(device: &str, key: &str) -> Result<PathBuf, String> {
    let valid = !device.is_empty()
        && device.len() <= MAX_DEVICE_NAME
        && device != "."
        && device != ".."
        && !device.contains(['/', '\0'])
        && !device.chars().any(char::is_whitespace);
    if !valid {
        return Err(format!("invalid device name {device:?}"));
    }
    Ok(Path::new("/proc/sys/net/ipv6/conf").join(device).join(key))
}

/// A failure inside the namespace thread, with the path and the error as they came.
#[derive(Debug, thiserror::Error)]
enum ProcError {
    /// The conf directory exists exactly while the device does.
    #[error("{}: no such device", .path.display())]
    NoDevice {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: unexpected value {text:?}: {source}", .path.display())]
    Value {
        path: PathBuf,
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

impl ProcError {
    fn io(path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => ProcError::NoDevice { path, source },
            _ => ProcError::Io { path, source },
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            ProcError::NoDevice { source, .. } | ProcError::Io { source, .. } => io_kind(source),
            ProcError::Value { .. } => ErrorKind::Permanent,
        }
    }
}

fn read_value(path: &Path) -> Result<u32, ProcError> {
    let text = std::fs::read_to_string(path).map_err(|e| ProcError::io(path, e))?;
    parse_value(path, &text)
}

fn parse_value(path: &Path, text: &str) -> Result<u32, ProcError> {
    text.trim().parse().map_err(|source| ProcError::Value {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
        source,
    })
}

/// Reads, compares and writes if different; returns whether it wrote. One open serves both:
/// each path walk under `/proc/sys` goes down hash chains as long as the number of
/// namespaces, which made it a large part of a mass failover.
fn write_if_different(path: &Path, value: u32) -> Result<bool, ProcError> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        // Not writable (a container's read-only /proc/sys): fine if there is nothing to write.
        Err(_) if read_value(path).ok() == Some(value) => return Ok(false),
        Err(e) => return Err(ProcError::io(path, e)),
    };
    write_file_if_different(&file, path, value)
}

/// [`write_if_different`] on an open sysctl file (`path` names it in errors).
fn write_file_if_different(file: &File, path: &Path, value: u32) -> Result<bool, ProcError> {
    if read_file(file, path)? == value {
        return Ok(false);
    }
    // At offset 0: the kernel ignores a sysctl write at any other position.
    file.write_all_at(format!("{value}\n").as_bytes(), 0).map_err(|e| ProcError::io(path, e))?;
    Ok(true)
}

/// The value of an open sysctl file, read from its start.
fn read_file(file: &File, path: &Path) -> Result<u32, ProcError> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).map_err(|e| ProcError::io(path, e))?;
    parse_value(path, &String::from_utf8_lossy(&buf[..n]))
}

fn path_error(op: impl fmt::Display, target: Target<'_>, message: String) -> Error {
    Error::permanent(op, target, message)
}

impl LinuxNet {
    /// Runs `work` on a thread inside `netns` and turns both namespace-level failures (the
    /// namespace is missing: transient) and `work`'s own failures into [`Error`]s.
    async fn in_netns<T, F>(
        &self,
        netns: &Netns,
        op: &str,
        target: Target<'_>,
        work: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ProcError> + Send + 'static,
    {
        match netns.run(move || Ok(work())).await {
            Ok((Ok(value), _)) => Ok(value),
            Ok((Err(e), _)) => Err(Error::new(e.kind(), op, target, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::transient(op, target, "namespace does not exist"))
            }
            Err(e) => Err(from_io(op, target, e)),
        }
    }

    /// All IPv6 sysctls hagw manages for `device`, read in one pass.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn ipv6_conf(&self, netns: &Netns, device: &str) -> Result<Ipv6Conf, Error> {
        const OP: &str = "read ipv6 sysctls";
        let target = Target::dev(netns.name(), device);
        let paths = Ipv6Sysctl::ALL
            .into_iter()
            .map(|s| ipv6_conf_path(device, s.key()).map(|p| (s, p)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| path_error(OP, target, e))?;
        self.in_netns(netns, OP, target, move || {
            let mut conf =
                Ipv6Conf { addr_gen_mode: 0, accept_ra: 0, forwarding: 0, disable_ipv6: 0 };
            for (sysctl, path) in paths {
                conf.set(sysctl, read_value(&path)?);
            }
            Ok(conf)
        })
        .await
    }

    /// The current value of one IPv6 sysctl of `device`.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn read_ipv6_sysctl(
        &self,
        netns: &Netns,
        device: &str,
        sysctl: Ipv6Sysctl,
    ) -> Result<u32, Error> {
        let op = format!("read ipv6 {}", sysctl.key());
        let target = Target::dev(netns.name(), device);
        let path = ipv6_conf_path(device, sysctl.key()).map_err(|e| path_error(&op, target, e))?;
        self.in_netns(netns, &op, target, move || read_value(&path)).await
    }

    /// Whether `device` forwards IPv6, from its `forwarding` file kept open (see
    /// [`super::sysctl_files`]); `None` if it cannot be read.
    pub async fn forwards_ipv6(&self, netns: &Netns, device: &str) -> Option<bool> {
        let sysctl = Ipv6Sysctl::Forwarding;
        let path = ipv6_conf_path(device, sysctl.key()).ok()?;
        // Twice at most: a file kept from a device deleted since fails, and is opened again.
        for _ in 0..2 {
            let file = self.files.file(netns, device, sysctl, path.clone()).await.ok()?;
            match read_file(&file, &path) {
                Ok(value) => return Some(value != 0),
                Err(_) => self.files.forget(netns, device, sysctl),
            }
        }
        None
    }

    /// Sets one IPv6 sysctl of `device` to `value` if it differs; returns whether it wrote.
    #[instrument(level = "debug", skip(self, netns), fields(netns = netns.name()))]
    pub async fn write_ipv6_sysctl(
        &self,
        netns: &Netns,
        device: &str,
        sysctl: Ipv6Sysctl,
        value: u32,
    ) -> Result<bool, Error> {
        let op = format!("set ipv6 {} = {value}", sysctl.key());
        let target = Target::dev(netns.name(), device);
        let path = ipv6_conf_path(device, sysctl.key()).map_err(|e| path_error(&op, target, e))?;
        // Only `forwarding` is kept open: it changes with every role change and the
        // announcement reads it; the others are written once per device, and a file kept
        // per setting would be a file descriptor per router each.
        let kept = match sysctl {
            Ipv6Sysctl::Forwarding => self.files.file(netns, device, sysctl, path.clone()).await,
            _ => Err(io::ErrorKind::Unsupported.into()),
        };
        let written = match kept {
            Ok(file) => match write_file_if_different(&file, &path, value) {
                // Its device was deleted since the file was opened: open it again below.
                Err(ProcError::NoDevice { .. }) => {
                    self.files.forget(netns, device, sysctl);
                    None
                }
                Err(e) => return Err(Error::new(e.kind(), op, target, e)),
                Ok(written) => Some(written),
            },
            // Not kept, or no namespace, no device or a read-only /proc/sys: the path tells
            // which.
            Err(_) => None,
        };
        let written = match written {
            Some(written) => written,
            None => {
                self.in_netns(netns, &op, target, move || write_if_different(&path, value)).await?
            }
        };
        if written {
            info!(sysctl = sysctl.key(), value, "ipv6 sysctl written");
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_under_conf() {
        assert_eq!(
            ipv6_conf_path("qg-1234abcd-56", "accept_ra").unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/qg-1234abcd-56/accept_ra")
        );
    }

    #[test]
    fn hostile_or_impossible_names_are_rejected() {
        for name in ["", ".", "..", "../all", "a/b", "qg-1234567890123", "a b"] {
            assert!(ipv6_conf_path(name, "accept_ra").is_err(), "{name:?}");
        }
    }

    #[test]
    fn write_only_if_different() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accept_ra");
        std::fs::write(&path, "1\n").unwrap();
        assert!(!write_if_different(&path, 1).unwrap());
        assert!(write_if_different(&path, 0).unwrap());
        assert_eq!(read_value(&path).unwrap(), 0);
        assert!(!write_if_different(&path, 0).unwrap());
    }

    #[test]
    fn missing_file_is_transient_garbage_is_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_value(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::Transient);
        assert!(missing.to_string().ends_with("nope: no such device"), "{missing}");
        // The cause is kept as it came, for the chain in a log.
        let source = std::error::Error::source(&missing).unwrap();
        assert_eq!(source.downcast_ref::<io::Error>().unwrap().kind(), io::ErrorKind::NotFound);
        let path = dir.path().join("garbage");
        std::fs::write(&path, "yes\n").unwrap();
        let garbage = read_value(&path).unwrap_err();
        assert_eq!(garbage.kind(), ErrorKind::Permanent);
        assert!(garbage.to_string().contains(r#"unexpected value "yes""#), "{garbage}");
    }
}
