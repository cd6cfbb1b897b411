//! The Debian package (`scripts/package.sh`) in a clean Debian 12 root: installed, upgraded
//! from a previous version with the admin's change to its conffile kept, removed and purged
//! without a trace; and README's "Install on a network node" steps, run verbatim.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use hagw_e2e::debroot::{DebRoot, build_package, repo_root};
use hagw_e2e::hagw_bin;

/// Where the package puts things, each checked after install and after purge.
const SHIPPED: &[&str] = &[
    "/usr/bin/hagw",
    "/lib/systemd/system/hagw.service",
    "/etc/hagw/hagw.env",
    "/usr/share/man/man1/hagw.1.gz",
    "/usr/share/man/man1/hagw-run.1.gz",
    "/usr/share/man/man1/hagw-status.1.gz",
    "/usr/share/bash-completion/completions/hagw",
    "/usr/share/zsh/vendor-completions/_hagw",
    "/usr/share/fish/vendor_completions.d/hagw.fish",
    "/usr/share/doc/hagw/copyright",
    "/usr/share/doc/hagw/changelog.gz",
    "/usr/share/doc/hagw/changelog.Debian.gz",
];
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/hagw.service";

fn status(root: &DebRoot) -> Result<String> {
    root.run("/", "dpkg-query -W -f='${Status} ${Version}' hagw 2>/dev/null || true")
}

#[test]
fn install_upgrade_remove_purge_in_a_clean_debian_root() -> Result<()> {
    let out = tempfile::Builder::new().prefix("hagw-deb-").tempdir()?;
    let old = build_package(&hagw_bin(), Some("0.0.1-1"), &out.path().join("old"))?;
    let new = build_package(&hagw_bin(), None, &out.path().join("new"))?;
    let root = DebRoot::new()?;
    std::fs::copy(&old, root.path("/tmp/old.deb"))?;
    std::fs::copy(&new, root.path("/tmp/new.deb"))?;
    let before = root.files()?;

    // Install: every file, the conffile registered, the unit enabled (deb-systemd-helper
    // works without a running systemd), the binary runs.
    root.run("/", "dpkg -i /tmp/old.deb")?;
    ensure!(status(&root)?.starts_with("install ok installed 0.0.1-1"), "{}", status(&root)?);
    for path in SHIPPED.iter().chain([&ENABLED]) {
        ensure!(root.path(path).symlink_metadata().is_ok(), "{path} missing after install");
    }
    let conffiles = root.run("/", "dpkg-query -W -f='${Conffiles}' hagw")?;
    ensure!(conffiles.contains("/etc/hagw/hagw.env"), "not a conffile: {conffiles}");
    ensure!(root.run("/", "hagw --version")?.starts_with("hagw "), "hagw does not run");
    // The man page and the completions come from the CLI: they know `hagw run`'s settings.
    let man = root.run("/", "zcat /usr/share/man/man1/hagw-run.1.gz")?;
    ensure!(man.contains("HAGW_NEUTRON"), "hagw-run(1) lacks the environment:\n{man}");
    ensure!(root.run("/", "cat /usr/share/bash-completion/completions/hagw")?.contains("release"));

    // The admin changes a setting, the agent has made its state directory; then the upgrade.
    root.run("/", "sed -i 's/^HAGW_LOG=warn$/HAGW_LOG=info/' /etc/hagw/hagw.env")?;
    root.run("/", "mkdir -p /var/lib/hagw && touch /var/lib/hagw/agent.lock")?;
    root.run("/", "dpkg -i /tmp/new.deb")?;
    let version = status(&root)?;
    ensure!(version.starts_with("install ok installed") && !version.contains("0.0.1"), "{version}");
    let env = std::fs::read_to_string(root.path("/etc/hagw/hagw.env"))?;
    ensure!(env.contains("\nHAGW_LOG=info\n"), "the admin's setting was lost:\n{env}");
    let leftovers = root.run("/", "ls -A /etc/hagw")?;
    ensure!(leftovers.trim() == "hagw.env", "dpkg left files in /etc/hagw: {leftovers}");
    ensure!(root.path(ENABLED).symlink_metadata().is_ok(), "the upgrade disabled the unit");
    ensure!(root.path("/var/lib/hagw/agent.lock").exists(), "the upgrade lost the state dir");

    // Remove: the program goes, the settings stay (and the unit is masked meanwhile).
    root.run("/", "dpkg -r hagw")?;
    ensure!(status(&root)?.starts_with("deinstall ok config-files"), "{}", status(&root)?);
    ensure!(!root.path("/usr/bin/hagw").exists(), "the binary survived removal");
    ensure!(root.path("/etc/hagw/hagw.env").exists(), "removal took the settings");

    // Purge: nothing of hagw is left anywhere.
    root.run("/", "dpkg -P hagw")?;
    ensure!(status(&root)?.trim().is_empty(), "still known to dpkg: {}", status(&root)?);
    let after = root.files()?;
    let added: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    let removed: Vec<&String> = before.iter().filter(|p| !after.contains(p)).collect();
    ensure!(added.is_empty(), "left behind after purge: {added:#?}");
    ensure!(removed.is_empty(), "purge removed what it had not installed: {removed:#?}");
    Ok(())
}

/// The first `sh` code block after README's "## Install on a network node" heading.
fn readme_install_steps() -> Result<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let section = readme
        .split("\n## Install on a network node\n")
        .nth(1)
        .context("README.md has no \"## Install on a network node\" section")?;
    let block = section.split("```sh\n").nth(1).context("no ```sh block in the section")?;
    Ok(block.split("\n```").next().unwrap_or_default().to_string())
}

#[test]
fn readme_install_steps_run_verbatim_in_a_clean_debian_root() -> Result<()> {
    let steps = readme_install_steps()?;
    let out = tempfile::Builder::new().prefix("hagw-deb-").tempdir()?;
    let deb = build_package(&hagw_bin(), None, out.path())?;
    let root = DebRoot::new()?;
    let name = deb.file_name().and_then(|n| n.to_str()).context("package name")?;
    std::fs::copy(&deb, root.path("/root").join(name))?;

    let output = root.run("/root", &steps)?;
    ensure!(status(&root)?.starts_with("install ok installed"), "{output}");
    ensure!(root.path(ENABLED).symlink_metadata().is_ok(), "not enabled:\n{output}");
    let env = std::fs::read_to_string(root.path("/etc/hagw/hagw.env"))?;
    ensure!(env.contains("\nHAGW_NEUTRON=/var/lib/neutron\n"), "{env}");
    ensure!(Path::new(&root.path("/usr/bin/hagw")).exists());
    Ok(())
}
