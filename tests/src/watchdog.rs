//! A watchdog for the process groups the harnesses start: a small `sh` in its own group
//! that TERMs (then, after up to 10 s, KILLs) group `pgid` once this process ends, however it
//! ends — also SIGKILL, when no Drop runs. It leaves early when the group is gone. (`kill`
//! without `--`: /bin/sh may be dash, which rejects it.)

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const SCRIPT: &str = r#"
    while kill -0 "$1" 2>/dev/null && kill -0 "-$2" 2>/dev/null; do sleep 0.5; done
    kill -TERM "-$2" 2>/dev/null
    i=0; while kill -0 "-$2" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
    kill -KILL "-$2" 2>/dev/null
"#;

/// Starts the watchdog of process group `pgid`.
pub fn guard_group(pgid: u32) -> std::io::Result<()> {
    Command::new("sh")
        .args(["-c", SCRIPT, "pgwarden-watchdog"])
        .arg(std::process::id().to_string())
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
}
