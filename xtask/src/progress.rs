//! How the set-up shows its long phases: what each builds, how long it has run, and how long it
//! took last time on this machine (`.cache/timings.json`), else a documented default.
//!
//! ```text
//!   terminal:  ⠙ building kube-apiserver … (control plane) 6m 12s so far, last time here 9m 40s
//!   CI, pipe:  ==> building kube-apiserver … (usually 7–18 min on 2 cores)
//!              ... building kube-apiserver …: 1 min so far          (one line a minute)
//!              ==> building kube-apiserver …: done in 9m 40s
//! ```
//!
//! The tools' own chatter (Go's downloads, apt, pip) goes to a log file per phase under
//! `.cache/logs/`; a failure names that file and shows its tail.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::paths;

/// One long phase of the set-up.
pub struct Phase<'a> {
    /// The key of its measured durations in `timings.json`, and its log file's name.
    pub key: &'a str,
    /// What it does, as shown ("building kube-apiserver, … from k8s.io/kubernetes v1.37.2").
    pub what: &'a str,
    /// The documented range in seconds, shown until this machine has measured one.
    pub usually: (u64, u64),
    /// The tool prints its own progress to the terminal (cargo): no spinner, no log file.
    pub tool_shows_progress: bool,
}

impl Phase<'_> {
    /// The log file that receives the phase's commands' output.
    pub fn log(&self) -> PathBuf {
        paths::cache()
            .join("logs")
            .join(format!("{}.log", self.key))
    }

    /// Runs `f`, showing the phase while it runs; records its duration when it succeeds.
    pub fn run<T>(&self, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let log = self.log();
        if !self.tool_shows_progress {
            std::fs::create_dir_all(log.parent().expect("logs/ is a folder"))?;
            // A fresh log per run: its tail is this run's, not an older one's.
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        }
        let estimate = estimate(self.key, self.usually);
        let shown = if self.tool_shows_progress {
            say(&format!("==> {} ({estimate})", self.what));
            Shown::Tool
        } else {
            Shown::start(self.what, &estimate)
        };
        let started = Instant::now();
        let out = f(&log);
        let took = started.elapsed();
        shown.finish(self.what, took, out.is_ok());
        if out.is_ok() {
            record(self.key, took);
        }
        if self.tool_shows_progress {
            return out.with_context(|| self.what.to_string());
        }
        out.with_context(|| format!("{} (its log: {})", self.what, log.display()))
    }
}

/// Prints a line without tearing the progress display.
pub fn say(line: &str) {
    match multi() {
        Some(m) => {
            let _ = m.println(line);
        }
        None => eprintln!("{line}"),
    }
}

/// Runs `cmd` with its output appended to `log`; a failure shows the log's last lines.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}); the last lines of {}:\n{}",
            log.display(),
            tail(log, 20)
        );
    }
    Ok(())
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A spinner on a terminal; outside one (CI, a pipe, a log file) plain lines.
fn multi() -> Option<&'static MultiProgress> {
    static MULTI: OnceLock<Option<MultiProgress>> = OnceLock::new();
    MULTI
        .get_or_init(|| {
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
            (std::io::stderr().is_terminal() && !ci).then(MultiProgress::new)
        })
        .as_ref()
}

/// The phase on screen while it runs.
enum Shown {
    /// The tool shows its own progress.
    Tool,
    Bar(ProgressBar),
    /// Dropping the sender stops the thread that prints a line a minute.
    Lines(mpsc::Sender<()>, std::thread::JoinHandle<()>),
}

impl Shown {
    fn start(what: &str, estimate: &str) -> Shown {
        if let Some(m) = multi() {
            let bar = m.add(ProgressBar::new_spinner());
            let style = ProgressStyle::with_template("{spinner} {prefix} {elapsed} so far, {msg}")
                .expect("a valid template");
            bar.set_style(style);
            bar.set_prefix(what.to_string());
            bar.set_message(estimate.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            return Shown::Bar(bar);
        }
        eprintln!("==> {what} ({estimate})");
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        let started = Instant::now();
        // CI shows a job alive by its output: one line a minute while the phase runs.
        let beat = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(60)) {
                eprintln!("... {what}: {} so far", human(started.elapsed()));
            }
        });
        Shown::Lines(tx, beat)
    }

    fn finish(self, what: &str, took: Duration, ok: bool) {
        let verdict = if ok { "done in" } else { "FAILED after" };
        let line = format!("==> {what}: {verdict} {}", human(took));
        match self {
            Shown::Tool => say(&line),
            Shown::Bar(bar) => {
                bar.finish_and_clear();
                say(&line);
            }
            Shown::Lines(tx, beat) => {
                drop(tx);
                let _ = beat.join();
                eprintln!("{line}");
            }
        }
    }
}

/// "4m 05s", "12s".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The last durations measured on this machine, per phase (seconds, newest last).
type Timings = BTreeMap<String, Vec<u64>>;
/// How many durations a phase keeps.
const KEPT: usize = 5;

fn timings_file() -> PathBuf {
    paths::cache().join("timings.json")
}

/// Phases run in parallel threads: one read-modify-write of the file at a time.
static TIMINGS: Mutex<()> = Mutex::new(());

fn load() -> Timings {
    std::fs::read_to_string(timings_file())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn record(key: &str, took: Duration) {
    // A cargo step with nothing to rebuild is a check, not a figure of the build.
    if took < Duration::from_secs(5) {
        return;
    }
    let _guard = TIMINGS.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = load();
    let runs = all.entry(key.to_string()).or_default();
    runs.push(took.as_secs());
    let excess = runs.len().saturating_sub(KEPT);
    runs.drain(..excess);
    // Losing a figure only costs a less precise estimate next time.
    if let Ok(text) = serde_json::to_string_pretty(&all) {
        let _ = std::fs::write(timings_file(), text);
    }
}

/// "last time here 9m 40s; 7m 02s to 9m 40s over the last 3 runs", else the documented range.
fn estimate(key: &str, usually: (u64, u64)) -> String {
    let _guard = TIMINGS.lock().unwrap_or_else(|e| e.into_inner());
    describe(
        load().get(key).map(Vec::as_slice).unwrap_or_default(),
        usually,
    )
}

fn describe(runs: &[u64], (low, high): (u64, u64)) -> String {
    let secs = |s: u64| human(Duration::from_secs(s));
    match runs {
        [] => format!("usually {} to {} on 2 cores", secs(low), secs(high)),
        [one] => format!("last time here {}", secs(*one)),
        [.., last] => {
            let min = runs.iter().min().copied().unwrap_or(*last);
            let max = runs.iter().max().copied().unwrap_or(*last);
            let n = runs.len();
            format!(
                "last time here {}; {} to {} over the last {n} runs",
                secs(*last),
                secs(min),
                secs(max)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_from_measured_runs_else_the_documented_range() {
        assert_eq!(
            describe(&[], (420, 1080)),
            "usually 7m 00s to 18m 00s on 2 cores"
        );
        assert_eq!(describe(&[580], (420, 1080)), "last time here 9m 40s");
        assert_eq!(
            describe(&[422, 580, 30], (1, 2)),
            "last time here 30.0s; 30.0s to 9m 40s over the last 3 runs"
        );
    }
}
