//! Containers from the project's OCI images, run with `runc` as a node would run them: the
//! image unpacked by `umoci`, its user, environment, working folder and entrypoint, host
//! volumes bind-mounted, and the host's network namespace (each pod keeps its 127.x address).
//!
//! `cargo xtask image` (run by the set-up) builds the images; the tests find their OCI
//! layouts in `$PGWARDEN_INSTANCE_IMAGE` and `$PGWARDEN_OPERATOR_IMAGE`, tagged with the
//! workspace's version.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

/// The tag of the project's images: the workspace's version.
pub const TAG: &str = env!("CARGO_PKG_VERSION");

/// The OCI layout named by `var`, or a panic saying how to build it.
pub fn image_layout(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("${var} is not set: run `cargo xtask image` and set it to the OCI layout it prints")
    });
    assert!(
        path.join("index.json").is_file(),
        "${var}={} is not an OCI layout (no index.json): run `cargo xtask image`",
        path.display()
    );
    path
}

/// The project's images the tests run pods from, reference → OCI layout: the instance
/// image from `$PGWARDEN_INSTANCE_IMAGE`, the operator's from `$PGWARDEN_OPERATOR_IMAGE`
/// (`cargo xtask test` sets both); `None` when the instance image is not set, and the local
/// node then runs the host's binaries.
pub fn images_from_env() -> Option<Vec<(String, PathBuf)>> {
    let instance = std::env::var_os("PGWARDEN_INSTANCE_IMAGE")?;
    let mut images = vec![(format!("pgwarden-instance:{TAG}"), PathBuf::from(instance))];
    if let Some(operator) = std::env::var_os("PGWARDEN_OPERATOR_IMAGE") {
        images.push((format!("pgwarden-operator:{TAG}"), PathBuf::from(operator)));
    }
    Some(images)
}

/// An unpacked image: `rootfs/` and the runtime configuration umoci derived from the image.
pub struct Bundle {
    dir: tempfile::TempDir,
    config: Value,
    entrypoint: Vec<String>,
}

impl Bundle {
    /// `umoci unpack` of `layout:tag` into a fresh folder (as root: owners as in the image).
    pub fn unpack(layout: &Path, tag: &str) -> Bundle {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("bundle");
        let image = format!("{}:{tag}", layout.display());
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(&bundle),
        );
        let config = read_json(&bundle.join("config.json"));
        let entrypoint = image_config(layout, tag)["config"]["Entrypoint"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        Bundle {
            dir,
            config,
            entrypoint,
        }
    }

    /// The unpacked root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }

    /// The uid the image runs as (from its configuration).
    pub fn uid(&self) -> u64 {
        self.config["process"]["user"]["uid"]
            .as_u64()
            .expect("process.user.uid")
    }

    /// Runs `args` as the image's command (its entrypoint kept, as `docker run image args`),
    /// with `mounts` (host folder, path inside) bind-mounted read-write; waits for it.
    pub fn run(&self, args: &[&str], mounts: &[(&Path, &str)]) -> Output {
        let mut config = self.config.clone();
        let process = &mut config["process"];
        process["terminal"] = json!(false);
        let argv: Vec<&str> = self
            .entrypoint
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        process["args"] = json!(argv);
        // The host's network namespace: the container listens on the host's addresses.
        if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
        }
        let list = config["mounts"].as_array_mut().expect("mounts");
        for (source, destination) in mounts {
            list.push(json!({
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["rbind", "rw"],
            }));
        }
        let bundle = self.dir.path().join("bundle");
        std::fs::write(bundle.join("config.json"), config.to_string()).expect("config.json");
        Command::new("runc")
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg(container_id())
            .output()
            .expect("cannot run runc")
    }
}

/// A container id unique on this machine for this run.
fn container_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "pgwarden-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The image configuration blob of `layout:tag` (index → manifest → config).
fn image_config(layout: &Path, tag: &str) -> Value {
    let index = read_json(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no image tagged {tag} in {}", layout.display()));
    let manifest = blob(layout, &manifest["digest"]);
    blob(layout, &manifest["config"]["digest"])
}

fn blob(layout: &Path, digest: &Value) -> Value {
    let digest = digest.as_str().expect("a digest");
    read_json(&layout.join("blobs").join(digest.replacen(':', "/", 1)))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
