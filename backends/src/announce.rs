//! PLACEHOLDER (written by the linux/dataplane developer so the dataplane compiles): the
//! real gratuitous ARP / unsolicited NA sender replaces this file. It announces nothing.

use std::net::IpAddr;

use hagw_core::model::AnnounceSchedule;

use crate::netns::Netns;

/// Announces `addresses` on `device` in `netns` on `schedule`. Placeholder: does nothing.
pub async fn announce(
    netns: &Netns,
    device: &str,
    addresses: &[IpAddr],
    schedule: AnnounceSchedule,
) -> Result<(), hagw_core::Error> {
    tracing::warn!(
        netns = netns.name(),
        device,
        count = addresses.len(),
        repeats = schedule.repeats,
        "announce is a placeholder: nothing sent"
    );
    Ok(())
}
