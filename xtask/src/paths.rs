//! Where things live: the workspace root, the gitignored cache and state folders.

use std::path::PathBuf;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Heavy, versioned build artefacts that survive between runs.
pub fn cache() -> PathBuf {
    root().join(".cache")
}

/// Runtime state of the local sandbox.
pub fn state() -> PathBuf {
    root().join(".state")
}
