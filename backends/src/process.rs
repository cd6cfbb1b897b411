//! Waiting for a process that is not our child to exit: a pidfd (`pidfd_open`, Linux 5.3)
//! becomes readable when its process exits. Used for keepalived, whose death changes nothing
//! that inotify or netlink would report (its pid file, state file and VIPs stay behind).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::libc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Returns once process `pid` has exited (at once if it is already gone). Fails if the
/// process cannot be watched (no pidfd support, not allowed, or no tokio reactor).
pub async fn exited(pid: u32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; nothing
    // is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(()),
            _ => Err(err),
        };
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` was just returned by pidfd_open, is open and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the `OwnedFd` keeps the descriptor open, with the same number, until the
    // `AsyncFd` owning it is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    // Readable means exited; the guard is not cleared, as the state never changes back.
    let _ready = fd.readable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reports_the_exit_of_a_process_that_is_not_awaited_through_its_handle() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let watching = tokio::spawn(exited(child.id()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!watching.is_finished(), "reported an exit of a running process");
        child.kill().unwrap();
        tokio::time::timeout(Duration::from_secs(60), watching).await.unwrap().unwrap().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_process_that_is_gone_has_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        exited(pid).await.unwrap();
    }
}
