//! Reading a router's role from its source. Only fixed roles and Neutron's state file are
//! read here; event-driven sources live in the agent.

use std::io;

use crate::model::{Role, RoleSource};

/// The role a source gives right now. A missing, empty or unreadable state file gives
/// `Unknown` (handled as standby): Neutron rewrites the file in place, so an empty read is a
/// moment in a write, not a role.
pub fn current_role(source: &RoleSource) -> Role {
    match source {
        RoleSource::Fixed(role) => *role,
        RoleSource::StateFile(path) => match std::fs::read_to_string(path) {
            Ok(text) => Role::from_state_word(&text).unwrap_or(Role::Unknown),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Role::Unknown,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read state file");
                Role::Unknown
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_words_as_neutron_writes_them() {
        let dir = std::env::temp_dir().join(format!("hagw-role-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        let source = RoleSource::StateFile(path.clone());
        assert_eq!(current_role(&source), Role::Unknown, "missing file");
        for (word, role) in [
            ("primary", Role::Primary),
            ("master", Role::Primary),
            ("backup", Role::Standby),
            ("", Role::Unknown),
            ("fault", Role::Unknown),
            ("primary\n", Role::Primary),
        ] {
            std::fs::write(&path, word).unwrap();
            assert_eq!(current_role(&source), role, "{word:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
