//! Builds the Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kubectl) from their Go modules at pinned versions, cached by version.
//!
//! Each build happens in a small throwaway Go module under `.cache/<name>/<version>/module`
//! that requires the upstream module; for Kubernetes, every `k8s.io/*` staging module that
//! `k8s.io/kubernetes` replaces with a local folder is pinned by a `replace` directive to its
//! matching `v0.<minor>.<patch>` release. Binaries land in `.cache/<name>/<version>/bin`,
//! written to a temporary folder first and renamed, so a half-done build is never taken for
//! a finished one. Go's build and module caches for these builds live under `.cache/go/` and
//! are removed once the binaries are in place (see [`clean_go_caches`]): together ~6 GB that
//! nothing reads again until a version changes, and CI machines have little disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use pgwarden_tests::controlplane::{BIN_DIR_ENV, Bins, ETCD_VERSION, KUBERNETES_VERSION};

use crate::progress::{Phase, run_logged};

/// The Kubernetes commands built from `k8s.io/kubernetes`.
const KUBERNETES_COMMANDS: [&str; 4] = [
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler",
    "k8s.io/kubernetes/cmd/kubectl",
];

/// The etcd server's main package.
const ETCD_COMMAND: &str = "go.etcd.io/etcd/server/v3";

/// Builds whatever is missing and returns where the binaries are. Idempotent: a second
/// call finds them cached and returns at once. With `$PGWARDEN_CONTROLPLANE_BIN` set, only
/// checks that folder.
pub fn ensure_built() -> Result<Bins> {
    if std::env::var_os(BIN_DIR_ENV).is_some() {
        let bins = Bins::locate();
        let missing = bins.missing();
        if !missing.is_empty() {
            bail!("${BIN_DIR_ENV} is set but lacks {missing:?}");
        }
        return Ok(bins);
    }
    let bins = Bins::cached();
    let kubernetes = [
        &bins.kube_apiserver,
        &bins.kube_controller_manager,
        &bins.kube_scheduler,
        &bins.kubectl,
    ];
    if kubernetes.iter().any(|b| !b.is_file()) {
        let what = format!(
            "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl \
             (k8s.io/kubernetes {KUBERNETES_VERSION}, Go)"
        );
        let phase = Phase {
            key: "kubernetes",
            what: &what,
            usually: (7 * 60, 18 * 60),
            tool_shows_progress: false,
        };
        phase.run(|log| build_kubernetes(&Bins::kubernetes_dir(), log))?;
    }
    if !bins.etcd.is_file() {
        let what = format!("building etcd {ETCD_VERSION} (Go)");
        let phase = Phase {
            key: "etcd",
            what: &what,
            usually: (60, 4 * 60),
            tool_shows_progress: false,
        };
        phase.run(|log| build_etcd(&Bins::etcd_dir(), log))?;
    }
    let missing = bins.missing();
    if !missing.is_empty() {
        bail!("the control-plane build finished but {missing:?} are missing");
    }
    Ok(bins)
}

fn build_kubernetes(dir: &Path, log: &Path) -> Result<()> {
    let version = KUBERNETES_VERSION;
    let minor_patch = version
        .strip_prefix("v1.")
        .context("Kubernetes versions start with v1.")?;
    let staging_version = format!("v0.{minor_patch}");
    let upstream_mod = download_go_mod("k8s.io/kubernetes", version)?;
    let staging = staging_modules(&upstream_mod);
    if staging.is_empty() {
        bail!("no staging modules found in the go.mod of k8s.io/kubernetes@{version}");
    }
    let mut go_mod = format!(
        "module pgwarden.local/controlplane\n\ngo {}\n\nrequire k8s.io/kubernetes {version}\n\nreplace (\n",
        go_directive(&upstream_mod)
    );
    for m in &staging {
        go_mod.push_str(&format!("\t{m} => {m} {staging_version}\n"));
    }
    go_mod.push_str(")\n");
    let module = write_module(dir, &go_mod, &KUBERNETES_COMMANDS, log)?;

    let (major, minor) = minor_patch
        .split_once('.')
        .map(|(minor, _)| ("1", minor))
        .context("bad Kubernetes version")?;
    let mut ldflags = String::from("-s -w");
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        ldflags.push_str(&format!(
            " -X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} \
             -X {pkg}.gitTreeState=clean"
        ));
    }
    go_build(dir, &module, &ldflags, &KUBERNETES_COMMANDS, log)
}

fn build_etcd(dir: &Path, log: &Path) -> Result<()> {
    let version = ETCD_VERSION;
    let upstream_mod = download_go_mod(ETCD_COMMAND, version)?;
    let go_mod = format!(
        "module pgwarden.local/etcd\n\ngo {}\n\nrequire {ETCD_COMMAND} {version}\n",
        go_directive(&upstream_mod)
    );
    let module = write_module(dir, &go_mod, &[ETCD_COMMAND], log)?;
    let ldflags = format!("-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA={version}");
    go_build(dir, &module, &ldflags, &[ETCD_COMMAND], log)?;
    // `go build` names the binary after the module path without its major version suffix.
    let bin = dir.join("bin");
    std::fs::rename(bin.join("server"), bin.join("etcd")).context("cannot rename the etcd binary")
}

/// Writes `go.mod` and a `tools.go` that imports the commands (so `go mod tidy` keeps their
/// dependencies), then runs `go mod tidy`.
fn write_module(dir: &Path, go_mod: &str, commands: &[&str], log: &Path) -> Result<PathBuf> {
    let module = dir.join("module");
    std::fs::create_dir_all(&module)?;
    std::fs::write(module.join("go.mod"), go_mod)?;
    let imports: String = commands.iter().map(|c| format!("\t_ \"{c}\"\n")).collect();
    std::fs::write(
        module.join("tools.go"),
        format!("//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"),
    )?;
    let _ = std::fs::remove_file(module.join("go.sum"));
    go(&module, &["mod", "tidy"], log)?;
    Ok(module)
}

/// `go build` into `bin.partial`, renamed to `bin` when every command is built.
fn go_build(dir: &Path, module: &Path, ldflags: &str, commands: &[&str], log: &Path) -> Result<()> {
    // Per process: two builds at once (say `sandbox up` and `xtask test`) do not mix.
    let partial = dir.join(format!("bin.partial.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let out = format!("{}/", partial.display());
    let mut args = vec!["build", "-buildvcs=false", "-ldflags", ldflags, "-o", &out];
    args.extend_from_slice(commands);
    go(module, &args, log)?;
    let bin = dir.join("bin");
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&partial, &bin)
        .with_context(|| format!("cannot move {} to {}", partial.display(), bin.display()))?;
    Ok(())
}

/// Downloads a module's go.mod through the module proxy and returns its text.
fn download_go_mod(module: &str, version: &str) -> Result<String> {
    let dir = std::env::temp_dir();
    let out = go_output(
        &dir,
        &["mod", "download", "-json", &format!("{module}@{version}")],
    )?;
    let info: serde_json::Value =
        serde_json::from_str(&out).context("bad `go mod download -json` output")?;
    let path = info["GoMod"]
        .as_str()
        .with_context(|| format!("no GoMod in `go mod download` of {module}@{version}: {out}"))?;
    std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
}

/// The modules a go.mod replaces with `./staging/src/...` folders.
fn staging_modules(go_mod: &str) -> Vec<String> {
    go_mod
        .lines()
        .filter(|l| l.contains("=> ./staging/src/"))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The `go` directive of a go.mod (our module needs at least the same).
fn go_directive(go_mod: &str) -> String {
    go_mod
        .lines()
        .find_map(|l| l.strip_prefix("go "))
        .unwrap_or("1.26.0")
        .trim()
        .to_string()
}

/// Go's build and module caches of the set-up's builds (control plane, S3 server).
fn go_caches() -> [(&'static str, PathBuf); 2] {
    let root = crate::paths::cache().join("go");
    [
        ("GOCACHE", root.join("build")),
        ("GOMODCACHE", root.join("mod")),
    ]
}

/// `go` for the set-up's builds: the installed toolchain, static binaries, the caches of
/// [`go_caches`].
pub fn go_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(go_binary());
    cmd.args(args)
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        // Never fetch another Go toolchain: the installed one must do.
        .env("GOTOOLCHAIN", "local")
        .envs(go_caches());
    cmd
}

/// Removes the Go caches of the set-up's builds (called after each build, once its binaries
/// are cached by version); prints what it freed. Keep them with `PGWARDEN_KEEP_GO_CACHE=1` (faster rebuilds
/// after a version bump, ~6 GB of disk).
pub fn clean_go_caches() -> Result<()> {
    if std::env::var_os("PGWARDEN_KEEP_GO_CACHE").is_some() {
        return Ok(());
    }
    let root = crate::paths::cache().join("go");
    if !root.exists() {
        return Ok(());
    }
    let freed = du(&root);
    // `go clean -modcache` removes the read-only module files that a plain rm cannot.
    let log = crate::paths::cache().join("logs/go-clean.log");
    std::fs::create_dir_all(crate::paths::cache().join("logs"))?;
    go(
        &crate::paths::root(),
        &["clean", "-cache", "-modcache"],
        &log,
    )?;
    std::fs::remove_dir_all(&root)
        .or_else(|e| if root.exists() { Err(e) } else { Ok(()) })
        .with_context(|| format!("cannot remove {}", root.display()))?;
    crate::progress::say(&format!(
        "removed the Go caches of the set-up's builds ({:.1} GiB)",
        freed as f64 / f64::from(1u32 << 30)
    ));
    Ok(())
}

/// Bytes under `dir` (symbolic links not followed).
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// `go <args>` with its output (module downloads, compiler errors) in `log`: a failure shows
/// the log's tail and names the file.
pub fn go(dir: &Path, args: &[&str], log: &Path) -> Result<()> {
    if !go_binary().is_file() {
        bail!(
            "cannot run `go` ({}); install Go 1.26+",
            go_binary().display()
        );
    }
    run_logged(&mut go_command(dir, args), log)
        .with_context(|| format!("`go {}` failed in {}", args.join(" "), dir.display()))
}

fn go_output(dir: &Path, args: &[&str]) -> Result<String> {
    let out = go_command(dir, args).output().with_context(|| {
        format!(
            "cannot run `go` ({}); install Go 1.26+",
            go_binary().display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "`go {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `go` from PATH, else the standard install location.
fn go_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("go"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/local/go/bin/go"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GO_MOD: &str = "module k8s.io/kubernetes\n\ngo 1.26.0\n\nreplace (\n\
        \tk8s.io/api => ./staging/src/k8s.io/api\n\
        \tk8s.io/kubectl => ./staging/src/k8s.io/kubectl\n)\n";

    #[test]
    fn finds_staging_modules_and_go_version() {
        assert_eq!(staging_modules(GO_MOD), ["k8s.io/api", "k8s.io/kubectl"]);
        assert_eq!(go_directive(GO_MOD), "1.26.0");
    }
}
