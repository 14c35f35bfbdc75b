//! What more than one of the CLI's integration tests uses (each test file is its own
//! crate and takes this in with `mod common;`).

use std::path::PathBuf;

/// An empty directory `chaos-<tag>-<pid>` under the system temp dir, removed on drop
/// (also after a failed assertion).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("chaos-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
