//! [`TempDir`]: a fresh directory for one test's files, removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh, empty directory under the system's temporary directory, for the files of one
/// test (databases, socket files, certificates), removed with everything in it when
/// dropped (also when the test fails).
///
/// Its name holds a tag, the process id and a counter, so tests running at once in one
/// test binary, and several test binaries, never share one.
///
/// ```
/// let dir = duo_testkit::TempDir::new("doc");
/// std::fs::write(dir.join("a.txt"), b"x").unwrap();
/// let path = dir.path().to_owned();
/// drop(dir);
/// assert!(!path.exists());
/// ```
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates the directory; `tag` (a few plain characters) goes into its name, to tell
    /// which test left it behind should a process be killed before the drop.
    ///
    /// # Panics
    /// If the directory cannot be created (a test set-up that cannot go on).
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("duo-{tag}-{}-{n}", std::process::id()));
        // A directory of a dead process with the same id and counter.
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` in the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
