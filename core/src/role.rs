//! The one rule that decides a router's role from its inputs ([`RoleInputs::resolve`]), used
//! by every command and mode, and the file-based inputs (Neutron's state file, keepalived's
//! pid file). The primary VIP is read by the caller, which has the dataplane.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::model::{Role, RoleSource};

/// Reads Neutron's state file. `None` means "no reading": the file is empty, which is a
/// moment inside Neutron's truncate-then-write, not a role; a caller that knows the previous
/// reading keeps it. A missing or unreadable file, or an unknown word, is `Unknown`.
pub fn read_state_file(path: &Path) -> Option<Role> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => None,
        Ok(text) => Some(Role::from_state_word(&text).unwrap_or(Role::Unknown)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Role::Unknown),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read state file");
            Some(Role::Unknown)
        }
    }
}

/// How long a freshly started keepalived still counts as not running. At start-up keepalived
/// (as BACKUP) removes the VIPs a crashed predecessor left on the HA device; until it has,
/// such a VIP is stale and must not make the router primary. keepalived cannot become master
/// sooner than three advertisement intervals after it starts (Neutron's interval: 2 s), so
/// holding the port for this long costs nothing.
pub const KEEPALIVED_STARTUP: Duration = Duration::from_secs(1);

/// A running process named by a pid file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningProcess {
    pub pid: u32,
    /// How long it has been running.
    pub age: Duration,
}

impl RunningProcess {
    /// Whether a keepalived this old is past [`KEEPALIVED_STARTUP`]; if not, how much is left.
    pub fn startup_left(&self) -> Option<Duration> {
        KEEPALIVED_STARTUP.checked_sub(self.age).filter(|left| !left.is_zero())
    }

    pub fn past_startup(&self) -> bool {
        self.startup_left().is_none()
    }
}

/// What the agent's role sources currently say about one router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleInputs {
    /// The role from the spec's `role` source (fixed, or the state file's last reading).
    pub configured: Option<Role>,
    /// Whether keepalived's primary VIP is on the HA device; `None` when the spec names no
    /// VIP or the HA device cannot be observed.
    pub vip_present: Option<bool>,
    /// The router's keepalived as its pid file names it: `None` when the spec names no pid
    /// file, `Some(None)` when no keepalived runs.
    pub keepalived: Option<Option<RunningProcess>>,
    /// The state keepalived just announced to `hagw notify`, if this is that command.
    pub notified: Option<Role>,
}

impl RoleInputs {
    /// The role to act on. A fixed role wins (the operator said so). A router whose
    /// keepalived is not running, or still in its start-up ([`KEEPALIVED_STARTUP`]), is
    /// standby whatever else says primary: the VIP and the state file a crashed keepalived
    /// leaves behind are stale, and the other node takes over within a few VRRP intervals.
    /// Otherwise the primary VIP decides when it can be observed: keepalived adds it before
    /// anything else on a transition and Neutron's state file follows it, so it is both
    /// earlier and authoritative; in particular a hold is never released while the VIP is
    /// absent, even if a stale state file says primary. Without a VIP reading, keepalived's
    /// own word to a notify script decides (it adds or removes the VIPs before it runs the
    /// script, so the two agree whenever both are there), and without that the state file.
    pub fn resolve(&self, source: &RoleSource) -> Role {
        self.decide(source).0
    }

    /// [`RoleInputs::resolve`] with the input that decided it.
    pub fn decide(&self, source: &RoleSource) -> (Role, RoleReason) {
        if let RoleSource::Fixed(role) = source {
            return (*role, RoleReason::Fixed);
        }
        match self.keepalived {
            Some(None) => return (Role::Standby, RoleReason::KeepalivedDown),
            Some(Some(k)) if !k.past_startup() => {
                return (Role::Standby, RoleReason::KeepalivedStarting);
            }
            _ => {}
        }
        match (self.vip_present, self.notified) {
            (Some(true), _) => (Role::Primary, RoleReason::Vip),
            (Some(false), _) => (Role::Standby, RoleReason::Vip),
            (None, Some(word)) => (word, RoleReason::Notify),
            (None, None) => match self.configured {
                Some(role) => (role, RoleReason::StateFile),
                None => (Role::Unknown, RoleReason::NoSource),
            },
        }
    }

    /// Whether the node's own sources contradict each other: one of the primary VIP, the
    /// state file and keepalived's liveness says primary while another says standby (a
    /// keepalived that is not running says standby; a fixed role is no source here). During
    /// a failover this holds for the moment between keepalived adding the VIP and Neutron
    /// rewriting the state file; for longer, one of them is stale.
    pub fn disagree(&self, source: &RoleSource) -> bool {
        let state_file = match source {
            RoleSource::StateFile(_) => self.configured,
            RoleSource::Fixed(_) => None,
        };
        let vip = self.vip_present.map(|on| if on { Role::Primary } else { Role::Standby });
        let keepalived = matches!(self.keepalived, Some(None)).then_some(Role::Standby);
        let says: Vec<Role> = [vip, state_file, keepalived]
            .into_iter()
            .flatten()
            .filter(|r| *r != Role::Unknown)
            .collect();
        says.contains(&Role::Primary) && says.contains(&Role::Standby)
    }
}

/// Which input decided a router's role ([`RoleInputs::decide`]), as `hagw status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleReason {
    /// `role: {fixed: …}`.
    Fixed,
    /// The router's keepalived is not running: standby whatever else says.
    KeepalivedDown,
    /// Its keepalived started less than [`KEEPALIVED_STARTUP`] ago.
    KeepalivedStarting,
    /// The primary VIP is on the HA device (primary), or not (standby).
    Vip,
    /// keepalived's word to `hagw notify`.
    Notify,
    /// Neutron's state file (its last non-empty reading).
    StateFile,
    /// No input could be read: unknown, handled as standby.
    NoSource,
}

impl RoleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleReason::Fixed => "fixed",
            RoleReason::KeepalivedDown => "keepalived-down",
            RoleReason::KeepalivedStarting => "keepalived-starting",
            RoleReason::Vip => "vip",
            RoleReason::Notify => "notify",
            RoleReason::StateFile => "state-file",
            RoleReason::NoSource => "no-source",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vip_overrules_the_state_file_and_a_fixed_role_overrules_both() {
        let file = RoleSource::StateFile("/nonexistent".into());
        let stale_primary = RoleInputs {
            configured: Some(Role::Primary),
            vip_present: Some(false),
            ..RoleInputs::default()
        };
        assert_eq!(stale_primary.resolve(&file), Role::Standby);
        let early = RoleInputs {
            configured: Some(Role::Standby),
            vip_present: Some(true),
            ..RoleInputs::default()
        };
        assert_eq!(early.resolve(&file), Role::Primary);
        let no_vip = RoleInputs { configured: Some(Role::Primary), ..RoleInputs::default() };
        assert_eq!(no_vip.resolve(&file), Role::Primary);
        assert_eq!(RoleInputs::default().resolve(&file), Role::Unknown);
        let fixed = RoleSource::Fixed(Role::Standby);
        assert_eq!(early.resolve(&fixed), Role::Standby);
    }

    #[test]
    fn the_deciding_input_is_named_and_contradicting_inputs_are_told() {
        let file = RoleSource::StateFile("/nonexistent".into());
        let stale_primary = RoleInputs {
            configured: Some(Role::Primary),
            vip_present: Some(false),
            ..RoleInputs::default()
        };
        assert_eq!(stale_primary.decide(&file), (Role::Standby, RoleReason::Vip));
        assert!(stale_primary.disagree(&file), "VIP absent, state file primary");
        let agreeing = RoleInputs { vip_present: Some(true), ..stale_primary };
        assert_eq!(agreeing.decide(&file), (Role::Primary, RoleReason::Vip));
        assert!(!agreeing.disagree(&file));
        let dead = RoleInputs { keepalived: Some(None), ..agreeing };
        assert_eq!(dead.decide(&file), (Role::Standby, RoleReason::KeepalivedDown));
        assert!(dead.disagree(&file), "keepalived dead, VIP and state file primary");
        let starting = RoleInputs {
            keepalived: Some(Some(RunningProcess { pid: 1, age: Duration::ZERO })),
            ..agreeing
        };
        assert_eq!(starting.decide(&file), (Role::Standby, RoleReason::KeepalivedStarting));
        let no_vip = RoleInputs { configured: Some(Role::Standby), ..RoleInputs::default() };
        assert_eq!(no_vip.decide(&file), (Role::Standby, RoleReason::StateFile));
        assert!(!no_vip.disagree(&file));
        let notified = RoleInputs { notified: Some(Role::Primary), ..no_vip };
        assert_eq!(notified.decide(&file), (Role::Primary, RoleReason::Notify));
        assert_eq!(RoleInputs::default().decide(&file), (Role::Unknown, RoleReason::NoSource));
        let fixed = RoleSource::Fixed(Role::Primary);
        assert_eq!(stale_primary.decide(&fixed), (Role::Primary, RoleReason::Fixed));
        assert!(!stale_primary.disagree(&fixed), "a fixed role is not a source to contradict");
    }

    #[test]
    fn a_dead_keepalived_makes_a_standby_whatever_its_leftovers_say() {
        let file = RoleSource::StateFile("/nonexistent".into());
        let leftovers = RoleInputs {
            configured: Some(Role::Primary),
            vip_present: Some(true),
            keepalived: Some(None),
            notified: None,
        };
        assert_eq!(leftovers.resolve(&file), Role::Standby);
        let process = |age| Some(Some(RunningProcess { pid: 7, age }));
        let running = RoleInputs { keepalived: process(Duration::from_secs(60)), ..leftovers };
        assert_eq!(running.resolve(&file), Role::Primary);
        let starting = RoleInputs { keepalived: process(Duration::from_millis(200)), ..leftovers };
        assert_eq!(starting.resolve(&file), Role::Standby, "still in its start-up");
        let fixed = RoleSource::Fixed(Role::Primary);
        assert_eq!(leftovers.resolve(&fixed), Role::Primary, "the operator's word wins");
    }

    #[test]
    fn the_start_up_is_measured_from_the_process_start() {
        let old = RunningProcess { pid: 1, age: Duration::from_secs(60) };
        assert!(old.past_startup());
        let young = RunningProcess { pid: 1, age: Duration::from_millis(300) };
        assert_eq!(young.startup_left(), Some(KEEPALIVED_STARTUP - Duration::from_millis(300)));
    }

    #[test]
    fn state_file_words_as_neutron_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(read_state_file(&path), Some(Role::Unknown), "missing file");
        for (word, role) in [
            ("primary", Role::Primary),
            ("master", Role::Primary),
            ("backup", Role::Standby),
            ("fault", Role::Unknown),
            ("primary\n", Role::Primary),
        ] {
            std::fs::write(&path, word).unwrap();
            assert_eq!(read_state_file(&path), Some(role), "{word:?}");
        }
        std::fs::write(&path, "").unwrap();
        assert_eq!(read_state_file(&path), None, "an empty file is a write in progress");
    }

    /// Every combination of the inputs against the rule written out as a table: fixed role,
    /// keepalived (not named / dead / starting / running), primary VIP (unreadable / absent /
    /// present), notify word (none / MASTER / BACKUP), state file (none / primary / backup).
    #[test]
    fn the_role_rule_over_every_input() {
        use Role::{Primary as P, Standby as S, Unknown as U};
        let file = RoleSource::StateFile("/nonexistent".into());
        let process = |age| Some(RunningProcess { pid: 7, age });
        let keepalived = [
            ("not named", None),
            ("dead", Some(None)),
            ("starting", Some(process(Duration::from_millis(200)))),
            ("running", Some(process(Duration::from_secs(60)))),
        ];
        for fixed in [None, Some(P), Some(S), Some(U)] {
            for (k_name, k) in keepalived {
                for vip in [None, Some(false), Some(true)] {
                    for notified in [None, Some(P), Some(S)] {
                        for configured in [None, Some(P), Some(S)] {
                            let inputs = RoleInputs {
                                configured,
                                vip_present: vip,
                                keepalived: k,
                                notified,
                            };
                            let source = fixed.map(RoleSource::Fixed).unwrap_or(file.clone());
                            let expected = if let Some(role) = fixed {
                                role
                            } else if matches!(k_name, "dead" | "starting") {
                                S
                            } else if let Some(present) = vip {
                                if present { P } else { S }
                            } else {
                                notified.or(configured).unwrap_or(U)
                            };
                            assert_eq!(
                                inputs.resolve(&source),
                                expected,
                                "fixed {fixed:?}, keepalived {k_name}, vip {vip:?}, notified {notified:?}, file {configured:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
