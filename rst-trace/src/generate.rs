//! `rst-trace generate DIR` (hidden; `cargo xtask docs` runs it): man pages and shell completions
//! rendered from the clap definitions in [`crate::cli`], so that they never disagree with
//! `--help`.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Command, CommandFactory as _};
use clap_complete::Shell;

use crate::cli::Cli;

/// The shells completions are written for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `DIR/man/rst-trace.1` (and one page per subcommand, `rst-trace-backlog.1`, ...) and
/// `DIR/completions/` (`rst-trace.bash`, `_rst-trace` for zsh, `rst-trace.fish`); returns the
/// files written.
pub fn write_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = write_man_pages(&dir.join("man"))?;
    written.extend(write_completions(&dir.join("completions"), &SHELLS)?);
    Ok(written)
}

/// `rst-trace.1` and one page per visible subcommand, into `dir`.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(public_command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    // generate_to does not say what it wrote: the pages are the `rst-trace*.1` files in `dir`.
    Ok(man_pages_in(dir))
}

/// One completion script per shell, into `dir`.
pub fn write_completions(dir: &Path, shells: &[Shell]) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = public_command();
    shells
        .iter()
        .map(|shell| {
            clap_complete::generate_to(*shell, &mut command, "rst-trace", dir)
                .with_context(|| format!("writing the {shell} completions into {}", dir.display()))
        })
        .collect()
}

/// `rst-trace generate DIR`: writes everything and says where it went.
pub fn run(dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    for path in write_all(dir)? {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// The command line as users see it: [`Cli`] without its hidden subcommands. clap_mangen skips
/// hidden subcommands but clap_complete does not, so the command is rebuilt without them.
fn public_command() -> Command {
    let full = Cli::command();
    let mut public = Command::new("rst-trace")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .groups(full.get_groups().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        public = public.about(about.clone());
    }
    if let Some(long_about) = full.get_long_about() {
        public = public.long_about(long_about.clone());
    }
    public
}

fn man_pages_in(dir: &Path) -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "1")
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("rst-trace"))
        })
        .collect();
    pages.sort();
    pages
}

/// Renders the top-level man page to a string (roff).
pub fn man_page() -> io::Result<String> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(public_command()).render(&mut roff)?;
    Ok(String::from_utf8_lossy(&roff).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("rst-trace-generate-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create the temp dir");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// roff escapes every hyphen (`\-\-json`); read it as a reader of the page would.
    fn unescape(roff: &str) -> String {
        roff.replace("\\-", "-")
    }

    /// Whether `text` has `word` as a whole word (`generate`, not `generated`).
    fn has_word(text: &str, word: &str) -> bool {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .any(|token| token == word)
    }

    #[test]
    fn renders_the_man_page_and_bash_completion_with_the_flags_and_subcommands() {
        let dir = TempDir::new("render");
        let pages = write_man_pages(&dir.0.join("man")).unwrap();
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
            .collect();
        for page in [
            "rst-trace.1",
            "rst-trace-check.1",
            "rst-trace-backlog.1",
            "rst-trace-explain.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("generate")),
            "the hidden subcommand has no page: {names:?}"
        );
        let man = unescape(&fs::read_to_string(dir.0.join("man/rst-trace.1")).unwrap());
        for word in ["--json", "backlog", "--summary"] {
            assert!(man.contains(word), "{word} in the man page:\n{man}");
        }
        assert!(
            !has_word(&man, "generate"),
            "the hidden subcommand is listed: {man}"
        );

        let scripts = write_completions(&dir.0.join("completions"), &[Shell::Bash]).unwrap();
        assert_eq!(scripts, [dir.0.join("completions/rst-trace.bash")]);
        let bash = fs::read_to_string(&scripts[0]).unwrap();
        for word in ["--json", "backlog", "--summary"] {
            assert!(bash.contains(word), "{word} in the bash completion");
        }
        assert!(
            !has_word(&bash, "generate") && !bash.contains("__generate"),
            "the hidden subcommand is completed: {bash}"
        );
    }

    #[test]
    fn writes_every_shell_and_page_under_dir() {
        let dir = TempDir::new("all");
        let written = write_all(&dir.0).unwrap();
        for file in [
            "man/rst-trace.1",
            "completions/rst-trace.bash",
            "completions/_rst-trace",
            "completions/rst-trace.fish",
        ] {
            assert!(written.contains(&dir.0.join(file)), "{file}: {written:?}");
        }
        assert!(unescape(&man_page().unwrap()).contains("--ring-buffer-kib"));
    }
}
