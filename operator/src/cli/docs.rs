//! `hagw man` and `hagw completions`: the manual pages and shell completions, generated from
//! the same definitions as `--help`, so a package ships what the binary accepts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write `hagw.1` and one `hagw-<subcommand>.1` per subcommand into.
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    pub shell: Shell,
}

pub fn man(args: ManArgs) -> ExitCode {
    match write_pages(&args.dir) {
        Ok(pages) => {
            for page in pages {
                println!("{}", page.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hagw man: cannot write into {}: {e}", args.dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Writes the pages and returns their paths.
fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let command = Cli::command();
    let mut pages = Vec::new();
    let mut write = |name: String, command: clap::Command| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(command.name(name.clone())).render(&mut out)?;
        std::fs::write(&path, out)?;
        pages.push(path);
        Ok(())
    };
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write(format!("hagw-{}", sub.get_name()), sub.clone())?;
    }
    write("hagw".into(), command)?;
    Ok(pages)
}

pub fn completions(args: CompletionsArgs) -> ExitCode {
    clap_complete::generate(args.shell, &mut Cli::command(), "hagw", &mut std::io::stdout());
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_subcommand_with_its_examples() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_pages(dir.path()).unwrap();
        let names: Vec<String> =
            pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for expected in ["hagw.1", "hagw-run.1", "hagw-status.1", "hagw-release.1", "hagw-man.1"] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
        let run = std::fs::read_to_string(dir.path().join("hagw-run.1")).unwrap();
        assert!(run.starts_with(".ie") || run.contains(".TH hagw-run"), "{run}");
        assert!(run.contains("lock\\-file"), "the options are documented: {run}");
    }
}
