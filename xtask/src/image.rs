//! `cargo xtask image`: pgwarden's two OCI images, built on this machine from Debian packages
//! and PyPI with Debian's tools (no registry is reachable here, and none is needed).
//!
//! ```text
//!   instance  layer 1 (base): mmdebstrap bookworm minbase + postgresql-15 + the barman venv
//!                             cached by its recipe's hash: built once, ~3 min
//!             layer 2 (app):  pgwarden, the entrypoint, /run/postgresql (uid 999)
//!                             repacked alone when the binary changes
//!   operator  one layer:      pgwarden, the C libraries it links, the policy modules, passwd
//!   each ->   .cache/images/<name>-<hash>/oci                 OCI layout (umoci), tag = version
//!             .cache/images/<name>-<hash>/<name>.docker.tar   docker-archive (skopeo)
//! ```
//!
//! The `<hash>` covers every input (recipe, binary, libraries, modules), so an unchanged
//! input set is a cache hit and prints the paths at once.

mod base;
mod oci;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::paths;

/// The tag of both images: the workspace's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Image names, as the SDK's default image and deploy/operator.yaml spell them.
pub const INSTANCE: &str = "pgwarden-instance";
pub const OPERATOR: &str = "pgwarden-operator";
/// The Debian tools the build and the runc tests use.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("umoci", "umoci"),
    ("skopeo", "skopeo"),
    ("runc", "runc"),
];
/// The operator's user: the uid deploy/operator.yaml runs it as.
const OPERATOR_UID: u32 = 65532;
/// Where the operator image holds the built policy modules.
pub const POLICY_DIR_IN_IMAGE: &str = "/usr/share/pgwarden/policies";

/// One built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// `pgwarden-instance` or `pgwarden-operator`.
    pub name: &'static str,
    /// The OCI layout (umoci), holding the image under the tag [`VERSION`].
    pub layout: PathBuf,
    /// The same image as a `docker-archive` (`ctr images import`, `docker load`,
    /// `kind load image-archive`).
    pub archive: PathBuf,
}

impl Image {
    /// `name:version`, the reference pods and Deployments use.
    pub fn reference(&self) -> String {
        format!("{}:{VERSION}", self.name)
    }
}

/// Both images.
pub struct Images {
    pub instance: Image,
    pub operator: Image,
}

impl Images {
    /// The environment variables under which the tests find the OCI layouts (tag: the version).
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("PGWARDEN_INSTANCE_IMAGE", self.instance.layout.clone()),
            ("PGWARDEN_OPERATOR_IMAGE", self.operator.layout.clone()),
        ]
    }
}

/// `cargo xtask image`: builds the `pgwarden` binary and the policy modules, then both images.
pub fn run(release: bool) -> Result<()> {
    let started = Instant::now();
    let (bin, policies) = match given_inputs(release) {
        Some(given) => given,
        None => (
            phase("pgwarden binary", || build_binary(release))?,
            phase("policy modules", crate::policies::build)?,
        ),
    };
    let images = ensure(&bin, &policies)?;
    for image in [&images.instance, &images.operator] {
        eprintln!(
            "image {}: {} compressed, archive {}\n  oci layout: {}\n  archive:    {}",
            image.reference(),
            human(oci::compressed_size(&image.layout)?),
            human(std::fs::metadata(&image.archive)?.len()),
            image.layout.display(),
            image.archive.display()
        );
    }
    eprintln!("images: done in {:.1?}", started.elapsed());
    Ok(())
}

/// `$PGWARDEN_BIN` and `$PGWARDEN_POLICY_DIR`, when both are set (and no release build is
/// asked): the images are made of them and nothing is built, as `cargo xtask test` does. So
/// a binary built under another `$CARGO_TARGET_DIR` goes into the images, and the shared
/// `target/` (policy modules) is left alone.
fn given_inputs(release: bool) -> Option<(PathBuf, PathBuf)> {
    let bin = std::env::var_os("PGWARDEN_BIN")?;
    let policies = std::env::var_os("PGWARDEN_POLICY_DIR")?;
    (!release).then(|| (PathBuf::from(bin), PathBuf::from(policies)))
}

/// Both images from the set-up's `pgwarden` binary and policy modules (`cargo xtask test`).
pub fn for_tests(env: &[(&str, PathBuf)]) -> Result<Images> {
    let find = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, path)| path.clone())
            .with_context(|| format!("the set-up gave no {name}"))
    };
    ensure(&find("PGWARDEN_BIN")?, &find("PGWARDEN_POLICY_DIR")?)
}

/// Both images for this binary and these policy modules; cached, so fast when unchanged.
pub fn ensure(bin: &Path, policies: &Path) -> Result<Images> {
    ensure_tools()?;
    let root = paths::cache().join("images");
    std::fs::create_dir_all(&root)?;
    let instance = phase("instance image", || instance(&root, bin))?;
    let operator = phase("operator image", || operator(&root, bin, policies))?;
    Ok(Images { instance, operator })
}

/// The instance image: the cached base layer, then pgwarden and its entrypoint on top.
fn instance(root: &Path, bin: &Path) -> Result<Image> {
    let base = base::ensure(root)?;
    let recipe = format!(
        "{VERSION}\nbase {}\nbin {}\n{ENTRYPOINT}\n{:?}",
        base.key,
        oci::sha256_file(bin)?,
        base::config()
    );
    let image = cached(root, INSTANCE, &recipe)?;
    if let Some(done) = image.done() {
        return Ok(done);
    }
    let app = image.dir.join("app");
    oci::stage(&app, bin, "usr/local/bin/pgwarden", 0, 0o755)?;
    oci::stage_bytes(&app, ENTRYPOINT.as_bytes(), ENTRYPOINT_PATH, 0, 0o755)?;
    // mmdebstrap empties /run; the pod's `command` skips the entrypoint, so the socket
    // folder also ships in the layer, owned by postgres.
    oci::stage_dir(&app, "run/postgresql", base::POSTGRES_UID, 0o2775)?;
    let layer = (app.as_path(), "pgwarden, its entrypoint, /run/postgresql");
    image.pack(Some(&base.layout), &[layer], &base::config())
}

/// What every instance container runs first: PostgreSQL's socket folder, then the command.
const ENTRYPOINT_PATH: &str = "usr/local/bin/pgwarden-entrypoint";
const ENTRYPOINT: &str = r#"#!/bin/sh
# mmdebstrap empties /run and a runtime may mount a fresh one: PostgreSQL's socket folder is
# made here, at start (as root it is given to postgres; as postgres it must already exist).
set -e
if [ ! -d /run/postgresql ]; then
    mkdir -p /run/postgresql
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres /run/postgresql; fi
fi
exec "$@"
"#;

/// The operator image: pgwarden, the C libraries it links (from this host, which built it),
/// the policy modules and a passwd naming its user. No shell, no package manager.
fn operator(root: &Path, bin: &Path, policies: &Path) -> Result<Image> {
    let libs = oci::linked_libraries(bin)?;
    let modules = policy_modules(policies)?;
    let mut recipe = format!("{VERSION}\nbin {}\n", oci::sha256_file(bin)?);
    for file in libs.iter().chain(&modules) {
        recipe += &format!("{} {}\n", file.display(), oci::sha256_file(file)?);
    }
    let image = cached(root, OPERATOR, &recipe)?;
    if let Some(done) = image.done() {
        return Ok(done);
    }
    let dir = image.dir.join("rootfs");
    oci::stage(&dir, bin, "usr/local/bin/pgwarden", 0, 0o755)?;
    for lib in &libs {
        let inside = lib.strip_prefix("/").unwrap_or(lib);
        oci::stage(&dir, lib, &inside.to_string_lossy(), 0, 0o755)?;
    }
    for module in &modules {
        let name = module.file_name().expect("a file").to_string_lossy();
        let inside = format!("{}/{name}", &POLICY_DIR_IN_IMAGE[1..]);
        oci::stage(&dir, module, &inside, 0, 0o644)?;
    }
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{OPERATOR_UID}:{OPERATOR_UID}:pgwarden operator:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{OPERATOR_UID}:\n");
    oci::stage_bytes(&dir, passwd.as_bytes(), "etc/passwd", 0, 0o644)?;
    oci::stage_bytes(&dir, group.as_bytes(), "etc/group", 0, 0o644)?;
    oci::stage_dir(&dir, "tmp", 0, 0o1777)?;
    oci::stage_dir(&dir, "home/nonroot", OPERATOR_UID, 0o755)?;
    let config = oci::Config {
        user: format!("{OPERATOR_UID}:{OPERATOR_UID}"),
        env: vec!["PATH=/usr/local/bin".into()],
        entrypoint: vec!["/usr/local/bin/pgwarden".into()],
        cmd: vec!["operator".into()],
        workdir: "/".into(),
        volumes: vec![],
    };
    let layer = (
        dir.as_path(),
        "pgwarden, its C libraries, the policy modules",
    );
    image.pack(None, &[layer], &config)
}

/// The `.wasm` files of the shipped policies, sorted (the recipe's order is stable).
fn policy_modules(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut modules: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the policy modules in {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    // The adversarial module exists for the sandbox tests; users never run it.
    modules
        .retain(|p| p.extension().is_some_and(|e| e == "wasm") && !p.ends_with("adversarial.wasm"));
    modules.sort();
    if modules.is_empty() {
        bail!("no policy module (.wasm) in {}", dir.display());
    }
    Ok(modules)
}

/// The cache folder of one image: `<root>/<name>-<hash of recipe>`; older builds of the same
/// image are removed.
fn cached(root: &Path, name: &'static str, recipe: &str) -> Result<oci::Build> {
    let key = oci::sha256_bytes(recipe.as_bytes())?;
    let dir = root.join(format!("{name}-{}", &key[..16]));
    prune(root, name, &dir)?;
    Ok(oci::Build { name, dir })
}

/// Removes the builds `<root>/<name>-<16 hex>` other than `keep`: each holds hundreds of MB.
fn prune(root: &Path, name: &str, keep: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(name))
            .is_some_and(|rest| rest.starts_with('-') && rest.len() == 17);
        if stale && path != keep {
            eprintln!("    removing the previous build {}", path.display());
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// The `pgwarden` binary: debug as the tests build it (the same features, so neither build
/// undoes the other), or `cargo build --release -p pgwarden`.
fn build_binary(release: bool) -> Result<PathBuf> {
    if !release {
        crate::test::build_pgwarden()?;
        // Where that build put it: under `$CARGO_TARGET_DIR` when set.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| paths::root().join("target"), PathBuf::from);
        return Ok(target.join("debug/pgwarden"));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked", "--release", "-p", "pgwarden"])
        .env("CARGO_INCREMENTAL", "0")
        .current_dir(paths::root());
    oci::run(&mut cmd)?;
    Ok(paths::root().join("target/release/pgwarden"))
}

/// mmdebstrap, umoci, skopeo and runc from Debian (idempotent: nothing when all are there).
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("    installing {} with apt-get", missing.join(" "));
    oci::run(Command::new("apt-get").arg("update"))?;
    oci::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Runs one phase of the build, printing its name and duration.
pub(crate) fn phase<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("--> {name}");
    let started = Instant::now();
    let out = f().with_context(|| format!("image build step failed: {name}"))?;
    eprintln!("--> {name}: {:.1?}", started.elapsed());
    Ok(out)
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
