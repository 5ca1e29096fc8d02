//! OCI layouts with Debian's tools: layers staged in folders and packed as reproducible tars,
//! `umoci` to assemble the layout, `skopeo` to write the loadable `docker-archive`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::{Image, VERSION};

/// The image configuration umoci writes (`umoci config`).
#[derive(Debug)]
pub struct Config {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: String,
    pub volumes: Vec<String>,
}

/// One image being built in its cache folder.
pub struct Build {
    pub name: &'static str,
    pub dir: PathBuf,
}

impl Build {
    fn image(&self) -> Image {
        Image {
            name: self.name,
            layout: self.dir.join("oci"),
            archive: self.dir.join(format!("{}.docker.tar", self.name)),
        }
    }

    /// The image, when a previous run finished building it.
    pub fn done(&self) -> Option<Image> {
        let done = self.dir.join(".done").exists();
        if done {
            eprintln!("    cached ({})", self.dir.display());
        }
        done.then(|| self.image())
    }

    /// Packs the staged folders as layers on top of `base` (an OCI layout tagged `base`), sets
    /// the configuration, tags it with the version and writes the docker-archive.
    pub fn pack(
        &self,
        base: Option<&Path>,
        layers: &[(&Path, &str)],
        config: &Config,
    ) -> Result<Image> {
        let image = self.image();
        let layout = &image.layout;
        if layout.exists() {
            std::fs::remove_dir_all(layout)?;
        }
        match base {
            Some(base) => {
                run(Command::new("cp").arg("-a").arg(base).arg(layout))?;
                run(umoci(layout, "base", "tag").arg(VERSION))?;
                run(&mut umoci(layout, "base", "rm"))?;
            }
            None => new_layout(layout, VERSION)?,
        }
        for (i, (staged, what)) in layers.iter().enumerate() {
            let tar = self.dir.join(format!("layer-{i}.tar"));
            tar_folder(staged, &tar)?;
            add_layer(layout, VERSION, &tar, what)?;
            std::fs::remove_file(&tar)?;
            std::fs::remove_dir_all(staged)?;
        }
        set_config(layout, config)?;
        run(Command::new("umoci").arg("gc").arg("--layout").arg(layout))?;
        write_archive(&image)?;
        std::fs::write(self.dir.join(".done"), VERSION)?;
        Ok(image)
    }
}

/// An empty OCI layout with one empty image under `tag`.
pub fn new_layout(layout: &Path, tag: &str) -> Result<()> {
    run(Command::new("umoci").args(["init", "--layout"]).arg(layout))?;
    run(&mut umoci(layout, tag, "new"))
}

/// Appends an uncompressed tar as a gzip layer (umoci compresses it); `what` is its history.
pub fn add_layer(layout: &Path, tag: &str, tar: &Path, what: &str) -> Result<()> {
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--history.author", "cargo xtask image"])
        .arg(format!("--history.created_by={what}"))
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(tar))
}

fn set_config(layout: &Path, config: &Config) -> Result<()> {
    let mut cmd = umoci(layout, VERSION, "config");
    cmd.args(["--no-history", "--config.user", &config.user])
        .args(["--config.workingdir", &config.workdir])
        .args(["--os", "linux", "--architecture", "amd64"])
        .args(["--author", "pgwarden (cargo xtask image)"])
        .arg(format!(
            "--config.label=org.opencontainers.image.version={VERSION}"
        ));
    for (flag, values) in [
        ("--config.env", &config.env),
        ("--config.entrypoint", &config.entrypoint),
        ("--config.cmd", &config.cmd),
        ("--config.volume", &config.volumes),
    ] {
        for value in values {
            cmd.arg(format!("{flag}={value}"));
        }
    }
    run(&mut cmd)
}

/// The docker-archive, named `name:version` inside (what `ctr images import` and `docker
/// load` list).
fn write_archive(image: &Image) -> Result<()> {
    if image.archive.exists() {
        std::fs::remove_file(&image.archive)?;
    }
    run(Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:{VERSION}", image.layout.display()))
        .arg(format!(
            "docker-archive:{}:{}",
            image.archive.display(),
            image.reference()
        )))
}

fn umoci(layout: &Path, tag: &str, verb: &str) -> Command {
    let mut cmd = Command::new("umoci");
    cmd.arg(verb)
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()));
    cmd
}

/// A reproducible tar of a staged folder: sorted, mtime 0, numeric owners as staged, no
/// access or change times, and no entry for the root itself (it would reset `/`'s mode).
fn tar_folder(dir: &Path, tar: &Path) -> Result<()> {
    let mut top: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    top.sort();
    run(Command::new("tar")
        .args(["--create", "--sort=name", "--mtime=@0", "--numeric-owner"])
        .args(["--format=posix", "--pax-option=delete=atime,delete=ctime"])
        .arg("--file")
        .arg(tar)
        .arg("--directory")
        .arg(dir)
        .args(&top))
}

/// Copies `src` to `inside` (relative to `dir`) with this owner (uid = gid) and mode.
pub fn stage(dir: &Path, src: &Path, inside: &str, owner: u32, mode: u32) -> Result<()> {
    let dest = dir.join(inside);
    std::fs::create_dir_all(dest.parent().expect("a file in a folder"))?;
    std::fs::copy(src, &dest).with_context(|| format!("cannot stage {}", src.display()))?;
    own(&dest, owner, mode)
}

/// Writes `bytes` to `inside` (relative to `dir`) with this owner and mode.
pub fn stage_bytes(dir: &Path, bytes: &[u8], inside: &str, owner: u32, mode: u32) -> Result<()> {
    let dest = dir.join(inside);
    std::fs::create_dir_all(dest.parent().expect("a file in a folder"))?;
    std::fs::write(&dest, bytes)?;
    own(&dest, owner, mode)
}

/// A folder at `inside` (relative to `dir`) with this owner and mode.
pub fn stage_dir(dir: &Path, inside: &str, owner: u32, mode: u32) -> Result<()> {
    let dest = dir.join(inside);
    std::fs::create_dir_all(&dest)?;
    own(&dest, owner, mode)
}

fn own(path: &Path, owner: u32, mode: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(owner), Some(owner)).with_context(|| {
        format!(
            "cannot chown {} (the image build runs as root)",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The shared libraries `bin` loads, as `ldd` resolves them on this host (which built it).
pub fn linked_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(bin))?;
    let mut libs: Vec<PathBuf> = out
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.trim().split(" (").next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libs.sort();
    libs.dedup();
    if libs.is_empty() {
        bail!("ldd found no library for {}", bin.display());
    }
    Ok(libs)
}

/// Sum of the layer sizes (compressed) of the image tagged with the version.
pub fn compressed_size(layout: &Path) -> Result<u64> {
    let manifest = blob(layout, &manifest_digest(layout)?)?;
    Ok(manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["size"].as_u64())
        .sum())
}

fn manifest_digest(layout: &Path) -> Result<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == VERSION)
        .and_then(|m| m["digest"].as_str())
        .map(String::from)
        .with_context(|| format!("no image tagged {VERSION} in {}", layout.display()))
}

fn blob(layout: &Path, digest: &str) -> Result<serde_json::Value> {
    let path = layout.join("blobs").join(digest.replacen(':', "/", 1));
    Ok(serde_json::from_slice(&std::fs::read(&path)?)?)
}

/// `sha256sum` of a file (fast on the ~150 MB debug binary, unlike an unoptimised hasher).
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg(path))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `sha256sum` of some bytes.
pub fn sha256_bytes(bytes: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run sha256sum")?;
    child.stdin.take().expect("piped").write_all(bytes)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, failing with the command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
