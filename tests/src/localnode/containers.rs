//! One container: its process group, restarts with backoff, readiness and liveness probes,
//! stop.

#[allow(unused_imports)]
use super::*;

impl ContainerRuntime {
    pub(super) fn start(
        &mut self,
        spec: &Container,
        env: Vec<(String, String)>,
        mounts: &[(String, PathBuf)],
        dir: &Path,
        opts: &Options,
    ) {
        self.next_start = None;
        let Some(mut argv) = argv(spec, mounts, opts) else {
            self.waiting = Some((
                "NoCommand".into(),
                "the local node runs a container's command; this one has none".into(),
            ));
            self.done = true;
            return;
        };
        for arg in &mut argv[1..] {
            *arg = expand(arg, &env);
        }
        let log = dir.join("logs").join(format!("{}.log", self.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir)
            .envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(0);
        if let Ok((out, err)) = out.and_then(|o| Ok((o.try_clone()?, o))) {
            cmd.stdout(out).stderr(err);
        }
        match cmd.spawn() {
            Ok(child) => {
                let _ = crate::watchdog::guard_group(child.id());
                self.child = Some(child);
                self.started_at = Some(now());
                self.waiting = None;
                self.next_probe = None;
                self.liveness = Liveness::default();
                self.ready = false;
            }
            Err(e) => {
                self.waiting = Some((
                    "RunContainerError".into(),
                    format!("cannot start {}: {e}", argv[0]),
                ));
                self.note_failure(-1, "StartError");
            }
        }
    }

    /// Notices an exit; schedules the restart the policy asks for, with a backoff.
    pub(super) fn reap(&mut self, policy: &str) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let Ok(Some(status)) = child.try_wait() else {
            return;
        };
        self.child = None;
        if let Some(id) = self.runc.take() {
            runc::delete(&id);
        }
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        let reason = if code == 0 { "Completed" } else { "Error" };
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        self.last_exit = Some((
            code,
            reason.into(),
            self.started_at.take().unwrap_or_default(),
            now(),
        ));
        self.ready = false;
        if restart {
            self.restarts += 1;
            let backoff = Duration::from_secs(1u64 << (self.restarts - 1).clamp(0, 5) as u64);
            self.next_start = Some(Instant::now() + backoff);
            self.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("back-off {}s restarting the container", backoff.as_secs()),
            ));
        } else {
            self.done = true;
        }
    }

    pub(super) fn note_failure(&mut self, code: i32, reason: &str) {
        self.last_exit = Some((code, reason.into(), now(), now()));
        self.restarts += 1;
        self.next_start = Some(Instant::now() + Duration::from_secs(2));
    }

    pub(super) fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            if let Some(id) = &self.runc {
                // TERM to the container's first process, as a kubelet stops a container.
                runc::kill(id, signal);
                if signal != "-KILL" {
                    return;
                }
            }
            if signal == "-KILL" {
                // Programs that leave the group (postgres calls setsid) are found by ancestry.
                for pid in descendants(child.id()) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            kill_group(child.id(), signal);
        }
    }

    pub(super) async fn probe(
        &mut self,
        spec: &Container,
        ip: &str,
        mounts: &[(String, PathBuf)],
        binaries: &[(String, PathBuf)],
    ) {
        if self.live(spec, ip, mounts, binaries).await {
            self.ready = false;
            return;
        }
        let Some(probe) = &spec.readiness_probe else {
            self.ready = true;
            return;
        };
        let now = Instant::now();
        if !probe_due(&mut self.next_probe, probe, now) {
            return;
        }
        let period = period_of(probe);
        // Until first ready, probe every second: the kubelet's period is a steady-state figure.
        let every = if self.ready { period } else { period.min(1) };
        self.next_probe = Some(now + Duration::from_secs(every));
        let timeout = timeout_of(probe);
        let env = self.probe_env();
        self.ready = run_probe(
            probe,
            spec,
            ip,
            &env,
            mounts,
            self.exec_in(binaries),
            timeout,
        )
        .await;
    }

    /// The liveness probe, as the kubelet runs it: after `initialDelaySeconds`, every
    /// `periodSeconds`; `failureThreshold` failures in a row kill the container (SIGKILL of
    /// its groups), and the restart policy and backoff of any exit apply (`reap`). `true`:
    /// it killed the container.
    async fn live(
        &mut self,
        spec: &Container,
        ip: &str,
        mounts: &[(String, PathBuf)],
        binaries: &[(String, PathBuf)],
    ) -> bool {
        let Some(probe) = &spec.liveness_probe else {
            return false;
        };
        if self.frozen_whole() {
            return false;
        }
        let now = Instant::now();
        if !probe_due(&mut self.liveness.next, probe, now) {
            return false;
        }
        self.liveness.next = Some(now + Duration::from_secs(period_of(probe)));
        let timeout = timeout_of(probe);
        let env = self.probe_env();
        if run_probe(
            probe,
            spec,
            ip,
            &env,
            mounts,
            self.exec_in(binaries),
            timeout,
        )
        .await
        {
            self.liveness.failures = 0;
            return false;
        }
        self.liveness.failures += 1;
        if self.liveness.failures < probe.failure_threshold.unwrap_or(3).max(1) {
            return false;
        }
        eprintln!(
            "localnode: container {} failed its liveness probe {} times: killing it",
            self.name, self.liveness.failures
        );
        self.signal("-KILL");
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
        self.liveness = Liveness::default();
        true
    }

    /// Whether every process of the container is stopped (SIGSTOP). The tests freeze a whole
    /// container to stand for a hung node, whose kubelet probes nothing and restarts nothing;
    /// killing it here would turn that scenario into a restart that races the failover. A
    /// container with one process still running (a hung agent beside a live PostgreSQL) is
    /// probed and killed as a kubelet would.
    fn frozen_whole(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let mut pids = descendants(child.id());
        // Under runc the child is `runc run`, which is not the container's; on the host it is
        // the container's first process.
        if self.runc.is_none() {
            pids.push(child.id());
        }
        all_stopped(&pids)
    }

    /// The probe runs with the env the process was started with.
    pub(super) fn probe_env(&self) -> Vec<(String, String)> {
        self.child
            .as_ref()
            .and_then(|c| std::fs::read(format!("/proc/{}/environ", c.id())).ok())
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter_map(|kv| {
                        let kv = String::from_utf8_lossy(kv);
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn status(&self) -> Value {
        let state = match (&self.child, &self.waiting, &self.last_exit) {
            (Some(_), _, _) => json!({"running": {"startedAt": self.started_at}}),
            (None, Some((reason, message)), _) if !self.done => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            (None, _, Some(exit)) => terminated(exit),
            (None, Some((reason, message)), None) => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            (None, None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
        };
        let last = match (self.child.is_some() || !self.done, &self.last_exit) {
            (true, Some(exit)) => terminated(exit),
            _ => json!({}),
        };
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": match &self.runc {
                Some(id) => Some(format!("runc://{id}")),
                None => self.child.as_ref().map(|c| format!("localnode://{}", c.id())),
            },
            "ready": self.ready,
            "started": self.child.is_some(),
            "restartCount": self.restarts,
            "state": state,
            "lastState": last,
        })
    }
}

/// `command` + `args`, paths rewritten, the first word resolved through `opts.binaries`.
pub(super) fn argv(
    spec: &Container,
    mounts: &[(String, PathBuf)],
    opts: &Options,
) -> Option<Vec<String>> {
    let command = spec.command.clone().unwrap_or_default();
    if command.is_empty() {
        return None;
    }
    let mut argv: Vec<String> = command
        .into_iter()
        .chain(spec.args.clone().unwrap_or_default())
        .map(|a| rewrite(&a, mounts))
        .collect();
    if let Some((_, path)) = opts.binaries.iter().find(|(n, _)| *n == argv[0]) {
        argv[0] = path.display().to_string();
    }
    Some(argv)
}

/// A container's liveness probe state: when it runs next, and its failures in a row.
#[derive(Default)]
pub(super) struct Liveness {
    pub(super) next: Option<Instant>,
    pub(super) failures: i32,
}

/// Where an exec probe runs: on the host (its first word resolved through
/// [`Options::binaries`]) or inside the runc container of that id.
pub(super) enum ExecIn<'a> {
    Host(&'a [(String, PathBuf)]),
    Container(&'a str),
}

impl ContainerRuntime {
    fn exec_in<'a>(&'a self, binaries: &'a [(String, PathBuf)]) -> ExecIn<'a> {
        match &self.runc {
            Some(id) => ExecIn::Container(id),
            None => ExecIn::Host(binaries),
        }
    }
}

/// Whether a probe whose next run is `next` is due at `now`; its first run waits
/// `initialDelaySeconds` (readiness and liveness alike, as the kubelet).
fn probe_due(next: &mut Option<Instant>, probe: &Probe, now: Instant) -> bool {
    let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
    now >= *next.get_or_insert_with(|| now + Duration::from_secs(delay))
}

/// `periodSeconds` (the kubelet's default 10, at least 1).
fn period_of(probe: &Probe) -> u64 {
    probe.period_seconds.unwrap_or(10).max(1) as u64
}

/// `timeoutSeconds` (the kubelet's default 1, at least 1).
fn timeout_of(probe: &Probe) -> Duration {
    Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64)
}

pub(super) fn terminated(exit: &(i32, String, String, String)) -> Value {
    json!({"terminated": {"exitCode": exit.0, "reason": exit.1, "startedAt": exit.2, "finishedAt": exit.3}})
}

pub(super) async fn run_probe(
    probe: &Probe,
    spec: &Container,
    ip: &str,
    env: &[(String, String)],
    mounts: &[(String, PathBuf)],
    exec_in: ExecIn<'_>,
    timeout: Duration,
) -> bool {
    let port_of = |p: &IntOrString| -> Option<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => spec
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
    };
    if let Some(exec) = &probe.exec {
        let argv: Vec<String> = exec
            .command
            .iter()
            .flatten()
            .map(|a| rewrite(a, mounts))
            .collect();
        let Some((first, rest)) = argv.split_first() else {
            return false;
        };
        let mut cmd = match exec_in {
            // Inside the container: its user, env, root and namespaces.
            ExecIn::Container(id) => runc::exec(id, &argv),
            ExecIn::Host(binaries) => {
                // As for the container's command: `pgwarden` is the image's binary on its PATH.
                let first = binaries
                    .iter()
                    .find(|(name, _)| name == first)
                    .map_or_else(|| first.clone(), |(_, path)| path.display().to_string());
                let mut cmd = tokio::process::Command::new(first);
                cmd.args(rest).env_clear().envs(env.iter().cloned());
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        return match tokio::time::timeout(timeout, cmd.status()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port_of(&tcp.port) else {
            return false;
        };
        let connect = tokio::net::TcpStream::connect((ip, port));
        return matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
    }
    if let Some(http) = &probe.http_get {
        let Some(port) = port_of(&http.port) else {
            return false;
        };
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        return matches!(
            tokio::time::timeout(timeout, http_ok(ip, port, &path)).await,
            Ok(true)
        );
    }
    true
}

pub(super) async fn http_ok(ip: &str, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect((ip, port)).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: pgwarden-localnode\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).await.is_err() {
        return false;
    }
    let code: u16 = String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0);
    (200..400).contains(&code)
}
