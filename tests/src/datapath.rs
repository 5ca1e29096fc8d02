//! The data path for end-to-end tests: a real S3-compatible server (MinIO), real PostgreSQL
//! run by the real agent (`pgwarden instance run`), the real barman cloud tools.
//!
//! ```text
//!   S3Server::start()  MinIO on 127.0.0.1:<free port>, generated key and KMS key
//!   Instance::start()  pgwarden instance run  ─► initdb | restore ─► postgres (as `postgres`)
//!                        archive_command = pgwarden instance wal-archive %p ─► barman ─► S3
//! ```
//!
//! Everything is found through environment variables set by `cargo xtask setup`'s defaults
//! (`PGWARDEN_PG_BIN`, `PGWARDEN_BARMAN_BIN`, `PGWARDEN_S3_SERVER`, `PGWARDEN_BIN`). Each
//! process runs in its own process group, stopped on drop and, should the test binary die,
//! by a watchdog shell that waits for the test process to end.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use pgwarden_crds::ArchiveStatus;
use pgwarden_crds::settings::ArchiveSettings;

/// The MinIO build `cargo xtask setup` installs (the default path of PGWARDEN_S3_SERVER).
const MINIO_VERSION: &str = "v0.0.0-20260212201848-7aac2a2c5b7c";

const SETUP_HINT: &str = "run `cargo xtask setup` (installs PostgreSQL, barman and the S3 server)";

/// Where the data path's programs are.
#[derive(Debug, Clone)]
pub struct Deps {
    pub pg_bin: PathBuf,
    pub barman_bin: PathBuf,
    pub s3_server: PathBuf,
    /// The `pgwarden` binary.
    pub pgwarden: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn env_or(name: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(name).map(PathBuf::from).unwrap_or(default)
}

/// The programs, checked once; panics with the set-up hint when one is missing.
pub fn deps() -> &'static Deps {
    static DEPS: OnceLock<Deps> = OnceLock::new();
    DEPS.get_or_init(|| {
        let cache = root().join(".cache");
        let exe = std::env::current_exe().expect("test exe");
        // target/<profile>/deps/<test> → target/<profile>/pgwarden
        let sibling = exe
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("pgwarden"))
            .unwrap_or_default();
        let deps = Deps {
            pg_bin: env_or("PGWARDEN_PG_BIN", "/usr/lib/postgresql/15/bin".into()),
            barman_bin: env_or("PGWARDEN_BARMAN_BIN", cache.join("barman/3.19.1/venv/bin")),
            s3_server: env_or(
                "PGWARDEN_S3_SERVER",
                cache.join("minio").join(MINIO_VERSION).join("bin/minio"),
            ),
            pgwarden: env_or("PGWARDEN_BIN", sibling),
        };
        for (what, path) in [
            ("PostgreSQL", deps.pg_bin.join("postgres")),
            ("barman", deps.barman_bin.join("barman-cloud-wal-archive")),
            ("the S3 server", deps.s3_server.clone()),
        ] {
            assert!(
                path.exists(),
                "{what} is missing at {}: {SETUP_HINT}",
                path.display()
            );
        }
        assert!(
            deps.pgwarden.exists(),
            "the pgwarden binary is missing at {}: `cargo build -p pgwarden` or set PGWARDEN_BIN",
            deps.pgwarden.display()
        );
        deps
    })
}

impl Deps {
    /// The programs a local node's instance pods run.
    pub fn host_programs(&self) -> crate::localnode::HostPrograms {
        crate::localnode::HostPrograms {
            pgwarden: self.pgwarden.clone(),
            pg_bin: self.pg_bin.clone(),
            barman_bin: self.barman_bin.clone(),
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `n` random bytes as hex (from the kernel).
pub fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes (from the kernel).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("urandom");
    buf
}

/// A temporary folder the `postgres` user can enter (PGDATA and sockets live inside).
pub fn shared_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `dir`, removed when dropped; kept (and named on stderr) when `$PGWARDEN_KEEP_STATE` is
/// set, for the pods' logs.
pub fn removed_unless_kept(dir: tempfile::TempDir) -> Option<tempfile::TempDir> {
    if std::env::var_os(crate::controlplane::KEEP_STATE_ENV).is_none() {
        return Some(dir);
    }
    eprintln!("keeping the node's state in {}", dir.keep().display());
    None
}

/// Spawns `cmd` in its own process group, logging to `log`, watched by a watchdog.
fn spawn_watched(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let _ = crate::watchdog::guard_group(child.id());
    child
}

/// Sends `signal` to a process group, then waits (bounded) for the leader; KILLs it after.
fn stop_group(child: &mut Child, signal: &str, grace: Duration) {
    let pgid = child.id();
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .status();
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let _ = child.wait();
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Store credentials, generated per server.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// Temporary credentials carry a session token.
    pub session_token: Option<String>,
}

impl Credentials {
    /// The environment barman reads them from.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
            ("AWS_DEFAULT_REGION", self.region.clone()),
        ]
        .into_iter()
        .chain(
            self.session_token
                .clone()
                .map(|token| ("AWS_SESSION_TOKEN", token)),
        )
        .collect()
    }
}

/// A single-node MinIO server on 127.0.0.1: generated root credentials (the tests' key), a
/// static KMS key so that `AES256` and `aws:kms` server-side encryption work, buckets made on
/// demand.
pub struct S3Server {
    dir: tempfile::TempDir,
    pub port: u16,
    pub credentials: Credentials,
    kms_key: String,
    child: Option<Child>,
}

/// The name of the server's KMS key (`aws:kms` without a key id uses it).
pub const KMS_KEY_NAME: &str = "pgwarden-tests";

impl S3Server {
    /// Starts MinIO with generated credentials and KMS key.
    pub fn start() -> Self {
        let dir = shared_tempdir("pgwarden-s3-");
        std::fs::create_dir_all(dir.path().join("data")).expect("data folder");
        let credentials = Credentials {
            access_key_id: format!("GK{}", random_hex(10)),
            secret_access_key: random_hex(24),
            region: "us-east-1".into(),
            session_token: None,
        };
        let mut s3 = Self {
            dir,
            port: free_port(),
            credentials,
            kms_key: format!("{KMS_KEY_NAME}:{}", BASE64.encode(random_bytes(32))),
            child: None,
        };
        s3.spawn();
        s3
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("minio.log");
        let mut cmd = Command::new(&deps().s3_server);
        cmd.arg("server")
            .arg(self.dir.path().join("data"))
            .args(["--address", &format!("127.0.0.1:{}", self.port)])
            .args(["--console-address", &format!("127.0.0.1:{}", free_port())])
            .arg("--quiet")
            .env("MINIO_ROOT_USER", &self.credentials.access_key_id)
            .env("MINIO_ROOT_PASSWORD", &self.credentials.secret_access_key)
            .env("MINIO_REGION", &self.credentials.region)
            .env("MINIO_KMS_SECRET_KEY", &self.kms_key)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("HOME", self.dir.path());
        self.child = Some(spawn_watched(&mut cmd, &log));
        let port = self.port;
        let up = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
            live(port).then_some(())
        });
        assert!(
            up.is_some(),
            "minio did not answer on {port}: {}",
            log_tail(&log, 20)
        );
    }

    /// Runs a boto3 snippet against this server with its credentials; `sys.argv[1]` is the
    /// endpoint, the rest are `args`. Returns stdout; panics with stderr on failure.
    pub fn boto3(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(deps().barman_bin.join("python3"))
            .args(["-c", script, &self.endpoint()])
            .args(args)
            .envs(self.credentials.env())
            .stdin(Stdio::null())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Creates a bucket the key may read and write.
    pub fn create_bucket(&self, name: &str) {
        self.boto3(
            "import boto3,sys\n\
             boto3.client('s3',endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])\n",
            &[name],
        );
    }

    /// Temporary credentials (STS AssumeRole) allowed object reads and writes in every bucket
    /// but not to create buckets: what a production key usually is. barman creates a missing
    /// bucket when the key may, so "unknown bucket" needs such a key to be an error.
    pub fn scoped_credentials(&self) -> Credentials {
        let script = r#"import boto3,json,sys
policy={"Version":"2012-10-17","Statement":[{"Effect":"Allow","Resource":["arn:aws:s3:::*"],
 "Action":["s3:GetObject","s3:PutObject","s3:DeleteObject","s3:ListBucket","s3:GetBucketLocation"]}]}
sts=boto3.client('sts',endpoint_url=sys.argv[1])
c=sts.assume_role(RoleArn='arn:aws:iam::minio:role/pgwarden-tests',RoleSessionName='pgwarden-tests',
 Policy=json.dumps(policy),DurationSeconds=3600)['Credentials']
print(c['AccessKeyId']);print(c['SecretAccessKey']);print(c['SessionToken'])
"#;
        let out = self.boto3(script, &[]);
        let mut lines = out.lines().map(str::to_string);
        let mut next = || lines.next().expect("three lines from assume_role");
        Credentials {
            access_key_id: next(),
            secret_access_key: next(),
            session_token: Some(next()),
            region: self.credentials.region.clone(),
        }
    }

    /// The server-side encryption the store reports for an object (`None` when plain).
    pub fn encryption_of(&self, bucket: &str, key: &str) -> Option<String> {
        let out = self.boto3(
            "import boto3,sys\n\
             h=boto3.client('s3',endpoint_url=sys.argv[1]).head_object(Bucket=sys.argv[2],Key=sys.argv[3])\n\
             print(h.get('ServerSideEncryption') or '')\n",
            &[bucket, key],
        );
        Some(out.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(&mut child, "-TERM", Duration::from_secs(10));
        }
    }

    /// Starts the stopped server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Object keys under `prefix` in `bucket`, listed with barman's own boto3.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let script = "import boto3,sys\n\
            s3=boto3.client('s3',endpoint_url=sys.argv[1])\n\
            p=s3.get_paginator('list_objects_v2')\n\
            for page in p.paginate(Bucket=sys.argv[2],Prefix=sys.argv[3]):\n\
            \x20   [print(o['Key']) for o in page.get('Contents',[])]\n";
        self.boto3(script, &[bucket, prefix])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// MinIO's liveness probe answers 200 once the server serves requests.
fn live(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /minio/health/live HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let mut head = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.ends_with(b" 200")
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Archive settings for a server folder of a bucket on `s3`.
pub fn archive_settings(s3: &S3Server, bucket: &str, server_name: &str) -> ArchiveSettings {
    ArchiveSettings {
        destination_path: format!("s3://{bucket}/pg"),
        endpoint_url: Some(s3.endpoint()),
        endpoint_ca_file: None,
        server_name: server_name.into(),
        compression: Some(pgwarden_crds::WalCompression::Gzip),
        encryption: None,
        sse_kms_key_id: None,
        max_parallel: 4,
        archive_timeout_seconds: 60,
        archiver: Default::default(),
        standby_clone: Default::default(),
    }
}

/// How to start an instance.
#[derive(Clone, Debug)]
pub struct InstanceOptions {
    pub settings: ArchiveSettings,
    pub credentials: Credentials,
    /// `pgwarden instance run` extra arguments (e.g. `--restore-backup ID --target-time T`).
    pub extra_args: Vec<String>,
    /// Extra environment of the agent (e.g. `KUBECONFIG`, `POD_NAMESPACE`).
    pub env: Vec<(String, String)>,
}

/// One PostgreSQL instance run by `pgwarden instance run`.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub opts: InstanceOptions,
    child: Option<Child>,
}

impl Instance {
    /// Starts the agent and waits until PostgreSQL answers (and, restoring, is promoted).
    pub fn start(opts: InstanceOptions) -> Self {
        let dir = shared_tempdir("pgwarden-pg-");
        let mut inst = Self {
            dir,
            port: free_port(),
            opts,
            child: None,
        };
        inst.write_settings(&inst.opts.settings.clone());
        inst.spawn();
        inst
    }

    pub fn pgdata(&self) -> PathBuf {
        self.dir.path().join("pgdata")
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn settings_dir(&self) -> PathBuf {
        self.dir.path().join("settings")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("pgwarden")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Writes archive.json, as the operator's ConfigMap would.
    pub fn write_settings(&self, s: &ArchiveSettings) {
        let dir = self.settings_dir();
        std::fs::create_dir_all(&dir).expect("settings dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = dir.join("archive.json");
        std::fs::write(&path, serde_json::to_vec_pretty(s).expect("json")).expect("archive.json");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    /// The environment of the agent and its child commands.
    pub fn env(&self) -> Vec<(String, String)> {
        let d = deps();
        let mut env: Vec<(String, String)> = vec![
            ("PGDATA".into(), self.pgdata().display().to_string()),
            (
                "PGWARDEN_SETTINGS_DIR".into(),
                self.settings_dir().display().to_string(),
            ),
            ("PGWARDEN_PG_BIN".into(), d.pg_bin.display().to_string()),
            (
                "PGWARDEN_BARMAN_BIN".into(),
                d.barman_bin.display().to_string(),
            ),
            ("PGWARDEN_PORT".into(), self.port.to_string()),
            (
                "PGWARDEN_SOCKET_DIR".into(),
                self.socket_dir().display().to_string(),
            ),
            ("PGWARDEN_LISTEN_ADDRESSES".into(), "127.0.0.1".into()),
            ("PGWARDEN_REPORT_INTERVAL".into(), "1".into()),
            ("POD_NAME".into(), "pg-1".into()),
            ("HOME".into(), self.dir.path().display().to_string()),
        ];
        env.extend(self.opts.env.iter().cloned());
        env.extend(
            self.opts
                .credentials
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        env
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&deps().pgwarden);
        cmd.args(["instance", "run"])
            .args(&self.opts.extra_args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env());
        self.child = Some(spawn_watched(&mut cmd, &self.log()));
        let ready = wait_for(Duration::from_secs(600), Duration::from_millis(300), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("the agent exited ({status}): {}", log_tail(&self.log(), 40));
            }
            std::fs::read_to_string(self.log())
                .ok()
                .filter(|l| l.contains("PostgreSQL ready on port"))
        });
        assert!(
            ready.is_some(),
            "the agent did not start PostgreSQL: {}",
            log_tail(&self.log(), 40)
        );
    }

    /// Kills the agent alone with SIGKILL, as a crash or the OOM killer would; its exit.
    pub fn kill_agent(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the agent runs");
        child.kill().expect("SIGKILL the agent");
        child.wait().expect("the agent's exit")
    }

    /// Starts the agent again on the same PGDATA and settings; waits for PostgreSQL.
    pub fn restart_agent(&mut self) {
        self.spawn();
    }

    /// The pid in PGDATA's `postmaster.pid`, when that process is alive.
    pub fn live_postmaster(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pgdata().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// Stops the agent with SIGTERM (fast shutdown of PostgreSQL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            stop_group(&mut child, "-KILL", Duration::from_secs(5));
        }
    }

    /// Runs `tool args` from PostgreSQL's bin folder against this instance.
    pub fn pg_tool(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(deps().pg_bin.join(tool))
            .args([
                "-h",
                &self.socket_dir().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("postgres tool")
    }

    /// Runs SQL and returns its unaligned output; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.pg_tool(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        );
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `pgbench -i -s scale`.
    pub fn pgbench_init(&self, scale: u32) {
        let out = self.pg_tool(
            "pgbench",
            &["-i", "-q", "-s", &scale.to_string(), "postgres"],
        );
        assert!(
            out.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `pgbench` for `seconds` in the background.
    pub fn pgbench_spawn(&self, clients: u32, seconds: u32) -> Child {
        self.pgbench_spawn_with(clients, seconds, &[])
    }

    /// [`Instance::pgbench_spawn`] with more options, e.g. `["-R", "100"]` (a rate limit).
    pub fn pgbench_spawn_with(&self, clients: u32, seconds: u32, extra: &[&str]) -> Child {
        Command::new(deps().pg_bin.join("pgbench"))
            .args([
                "-h",
                &self.socket_dir().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-n",
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
            ])
            .args(extra)
            .arg("postgres")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pgbench")
    }

    /// Starts `pgbench -f script` (no vacuum) for `seconds` in the background.
    pub fn pgbench_script_spawn(&self, script: &Path, clients: u32, seconds: u32) -> Child {
        Command::new(deps().pg_bin.join("pgbench"))
            .args([
                "-h",
                &self.socket_dir().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-n",
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                "-f",
            ])
            .arg(script)
            .arg("postgres")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pgbench")
    }

    /// The archive facts the agent last wrote (its `status.archive`).
    pub fn archive_facts(&self) -> Option<ArchiveStatus> {
        let text = std::fs::read_to_string(self.state_dir().join("archive-facts.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Runs `pgwarden instance <args>` with this instance's environment.
    pub fn pgwarden(&self, args: &[&str]) -> Output {
        Command::new(&deps().pgwarden)
            .arg("instance")
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .expect("pgwarden instance")
    }

    /// `pgwarden instance backup --name NAME`; returns the exit success and the facts JSON.
    pub fn backup(&self, name: &str) -> (bool, serde_json::Value, String) {
        let out = self.pgwarden(&["backup", "--name", name]);
        let facts = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.success(),
            facts,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Switches to a new WAL file and returns its predecessor's name (the one now archivable).
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until pg_stat_archiver says `wal` (or a later file) is archived.
    pub fn wait_archived(&self, wal: &str, timeout: Duration) -> bool {
        wait_for(timeout, Duration::from_millis(500), || {
            let last = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            (last.as_str() >= wal).then_some(())
        })
        .is_some()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}
