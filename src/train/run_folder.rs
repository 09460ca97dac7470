//! The run folder every training run writes: resolved config, code revision, data
//! fingerprints, one JSON line per epoch, checkpoints and the final report. Everything is
//! written atomically so a kill never leaves a half-written file.

use crate::error::{Error, Result};
use crate::formats::write_file_atomically;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct RunFolder {
    pub root: PathBuf,
}

impl RunFolder {
    /// Creates (or reopens, for `--resume`) a run folder.
    pub fn create(root: &Path) -> Result<RunFolder> {
        std::fs::create_dir_all(root.join("checkpoints")).map_err(|e| Error::io(root, e))?;
        Ok(RunFolder {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.root.join("checkpoints").join(name)
    }

    /// Writes `value` as pretty JSON to `name`, atomically.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::config(format!("{name}: {e}")))?;
        self.write_text(name, &(text + "\n"))
    }

    pub fn write_text(&self, name: &str, text: &str) -> Result<()> {
        write_file_atomically(&self.path(name), text.as_bytes())
    }

    /// Appends one JSON line to `name` (the epoch log). Each line is written with a single
    /// write call and flushed.
    pub fn append_jsonl(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let path = self.path(name);
        let mut line =
            serde_json::to_string(value).map_err(|e| Error::config(format!("{name}: {e}")))?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(line.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        file.sync_data().map_err(|e| Error::io(&path, e))
    }

    /// Keeps only the first `lines` lines of a JSONL log (on resume, epochs after the
    /// checkpoint are dropped so the log matches the weights).
    pub fn truncate_jsonl(&self, name: &str, lines: usize) -> Result<()> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let kept: String = text.lines().take(lines).map(|l| format!("{l}\n")).collect();
        self.write_text(name, &kept)
    }
}

/// The code revision gfer was built from: the git commit when it was built from a
/// checkout (recorded at build time), and the crate version.
pub fn code_revision() -> String {
    match option_env!("GFER_GIT_REVISION") {
        Some(rev) if !rev.is_empty() => format!("{rev} (gfer {})", env!("CARGO_PKG_VERSION")),
        _ => format!("gfer {}", env!("CARGO_PKG_VERSION")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_appends_and_truncates() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let run = RunFolder::create(dir.path())?;
        for epoch in 0..3 {
            run.append_jsonl("log.jsonl", &serde_json::json!({ "epoch": epoch }))?;
        }
        run.truncate_jsonl("log.jsonl", 2)?;
        let text =
            std::fs::read_to_string(run.path("log.jsonl")).map_err(|e| Error::io("log", e))?;
        assert_eq!(text, "{\"epoch\":0}\n{\"epoch\":1}\n");
        assert!(run
            .checkpoint("x")
            .starts_with(dir.path().join("checkpoints")));
        Ok(())
    }
}
