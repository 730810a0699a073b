//! `bench overhead --against REV`: a second bindtrace, built from another commit, measured in the
//! same interleaved rounds as this tree's — the A/B comparison a change to a kernel program needs,
//! since two separate runs on a virtual machine drift more than most changes are worth.
//!
//! The commit's tree is exported with `git archive` (no worktree to clean up) into
//! `target/bench-against/src-HASH` and built there with a target directory shared by every
//! revision built so (`target/bench-against/target`, so a second revision compiles only what
//! changed); its binary is kept as `target/bench-against/bindtrace-HASH`.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, step};

/// A bindtrace built from another commit.
pub struct Against {
    /// The commit's short hash, as it names the condition (`bindtrace@HASH`).
    pub hash: String,
    pub binary: PathBuf,
}

/// Exports and builds `rev` (any commit-ish git understands) unless already built.
pub fn build(rev: &str) -> Result<Against> {
    let root = util::root();
    let hash = util::output(
        Command::new("git")
            .current_dir(&root)
            .args(["rev-parse", "--short=10", "--verify"])
            .arg(format!("{rev}^{{commit}}")),
    )
    .with_context(|| format!("`{rev}` is not a commit of this repository"))?
    .trim()
    .to_string();
    let dir = root.join("target/bench-against");
    let binary = dir.join(format!("bindtrace-{hash}"));
    if binary.exists() {
        return Ok(Against { hash, binary });
    }
    let src = dir.join(format!("src-{hash}"));
    step(&format!("build bindtrace at {hash} (release)"), || {
        if !src.exists() {
            // Exported beside it and renamed once whole: an interrupted export is redone.
            let part = dir.join(format!("src-{hash}.part"));
            let _ = std::fs::remove_dir_all(&part);
            std::fs::create_dir_all(&part)?;
            let mut archive = Command::new("git")
                .current_dir(&root)
                .args(["archive", "--format=tar", &hash])
                .stdout(Stdio::piped())
                .spawn()
                .context("git archive")?;
            let tar = Command::new("tar")
                .arg("-x")
                .arg("-C")
                .arg(&part)
                .stdin(archive.stdout.take().context("git archive's stdout")?)
                .status()
                .context("tar")?;
            if !archive.wait()?.success() || !tar.success() {
                bail!("could not export {hash} into {}", part.display());
            }
            std::fs::rename(&part, &src)?;
        }
        let target = dir.join("target");
        util::run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&src)
                .env("CARGO_TARGET_DIR", &target)
                .args(["build", "--release", "--package", "tracer"]),
        )?;
        std::fs::copy(target.join("release/bindtrace"), &binary)?;
        Ok(())
    })?;
    Ok(Against { hash, binary })
}
