//! What the bench and the soak reports share: the description of the machine, markdown
//! tables ([`markdown`]), SVG charts ([`svg`]) and writing the result files.

pub(crate) mod markdown;
pub(crate) mod svg;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Failure;

/// Writes a result file.
pub(crate) fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(io_failure(path))
}

/// Creates a directory and its parents.
pub(crate) fn create_dir(path: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(path).map_err(io_failure(path))
}

/// Turns an I/O error on `path` into a run failure that names the path.
pub(crate) fn io_failure(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Run(format!("{}: {e}", path.display()))
}

/// The machine in one line: cores, CPU model, kernel.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores ({cpu}), Linux {kernel}")
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
