//! Small helpers: pod names and keys, claim folders, mounts and path rewriting, files,
//! process groups.

#[allow(unused_imports)]
use super::*;
use std::os::unix::fs::OpenOptionsExt;

// ---------------------------------------------------------------------------------------
// Helpers.

pub(super) fn spec_containers(pod: &Pod) -> Vec<Container> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
}

pub(super) fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

pub(super) fn namespace_of(pod: &Pod) -> String {
    namespace_of_meta(&pod.metadata)
}

pub(super) fn namespace_of_meta(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

pub(super) fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", namespace_of(pod), name_of(pod))
}

/// A claim's folder: named after the claim and its uid, so a re-created claim starts empty.
pub(super) fn claim_dir(state: &Path, namespace: &str, claim: &str, uid: &str) -> PathBuf {
    let short: String = uid.chars().take(8).collect();
    state
        .join("volumes")
        .join(namespace)
        .join(format!("{claim}-{short}"))
}

/// mountPath → host folder (with subPath), longest first.
pub(super) fn mounts(
    spec: &Container,
    volumes: &[Volume],
    dir_of: impl Fn(&Volume) -> PathBuf,
) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = spec
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let v = volumes.iter().find(|v| v.name == m.name)?;
            let mut dir = dir_of(v);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                dir = dir.join(sub);
            }
            Some((m.mount_path.trim_end_matches('/').to_string(), dir))
        })
        .collect();
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    out
}

/// A container path under a mount becomes the host folder's path; other values are kept.
pub(super) fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mp, dir) in mounts {
        if value == mp {
            return dir.display().to_string();
        }
        if let Some(rest) = value
            .strip_prefix(mp.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            return dir.join(rest).display().to_string();
        }
    }
    value.to_string()
}

pub(super) async fn config_map_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<String, Vec<u8>> = api
        .get_opt(name)
        .await?
        .map(|c| {
            let mut d: BTreeMap<String, Vec<u8>> = c
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            d.extend(
                c.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            d
        })
        .unwrap_or_default();
    Ok(select(data, items))
}

pub(super) async fn secret_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<String, Vec<u8>> = api
        .get_opt(name)
        .await?
        .and_then(|s| s.data)
        .map(|d| d.into_iter().map(|(k, v)| (k, v.0)).collect())
        .unwrap_or_default();
    Ok(select(data, items))
}

pub(super) fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => data,
        Some(items) => items
            .iter()
            .filter_map(|i| Some((i.path.clone(), data.get(&i.key)?.clone())))
            .collect(),
    }
}

pub(super) fn write_if_changed(path: &Path, content: &[u8]) -> Result<()> {
    write_mode_if_changed(path, content, 0o644)
}

/// Writes `content` with `mode` (as a kubelet honours a volume's `defaultMode` or an item's
/// `mode`) unless the file already holds both; the file appears whole, already with its mode.
pub(super) fn write_mode_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let current = std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    if current == Some(mode) && std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("localnode-tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, content))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    chmod(&tmp, mode)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub(super) fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Every process descending from `root` (from `/proc/*/stat`'s parent pids).
pub(super) fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid: u32 = after.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether every live process in `pids` is stopped (SIGSTOP; zombies do not count), and
/// there is one at least.
pub(super) fn all_stopped(pids: &[u32]) -> bool {
    let states: Vec<char> = pids
        .iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat[stat.rfind(')')? + 2..].chars().next()
        })
        .filter(|state| !matches!(state, 'Z' | 'X'))
        .collect();
    !states.is_empty() && states.iter().all(|state| matches!(state, 'T' | 't'))
}

pub(super) fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The modes of a volume's files, as a kubelet sets them: the volume's `defaultMode` (0644
/// when unset), or an item's own `mode`.
pub(super) struct FileModes {
    pub(super) default: u32,
    items: BTreeMap<String, u32>,
}

impl FileModes {
    pub(super) fn get(&self, path: &str) -> Option<&u32> {
        self.items.get(path)
    }
}

pub(super) fn file_modes(v: &Volume) -> FileModes {
    let default = v
        .config_map
        .as_ref()
        .and_then(|c| c.default_mode)
        .or(v.secret.as_ref().and_then(|s| s.default_mode))
        .or(v.projected.as_ref().and_then(|p| p.default_mode))
        .map_or(0o644, |m| m as u32 & 0o777);
    let mut items = BTreeMap::new();
    let key_items = v
        .config_map
        .iter()
        .flat_map(|c| c.items.iter().flatten())
        .chain(v.secret.iter().flat_map(|s| s.items.iter().flatten()));
    let projected = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
    let projected_items = projected.clone().flat_map(|s| {
        let cm = s.config_map.iter().flat_map(|c| c.items.iter().flatten());
        cm.chain(s.secret.iter().flat_map(|c| c.items.iter().flatten()))
    });
    for item in key_items.chain(projected_items) {
        if let Some(mode) = item.mode {
            items.insert(item.path.clone(), mode as u32 & 0o777);
        }
    }
    for file in projected.flat_map(|s| s.downward_api.iter().flat_map(|d| d.items.iter().flatten()))
    {
        if let Some(mode) = file.mode {
            items.insert(file.path.clone(), mode as u32 & 0o777);
        }
    }
    FileModes { default, items }
}

/// `$(NAME)` replaced by the value of `NAME` in `env`, as a kubelet expands a container's
/// `command`, `args` and env values: `$$` is a literal `$`, and a reference to a variable
/// that is not set stays as written.
pub(super) fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|a| a.split_once(')'))
            .filter(|(name, _)| !name.is_empty())
        {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expand_replaces_set_variables_as_a_kubelet_does() {
        let env = [("POD_IP".to_string(), "127.20.0.2".to_string())];
        assert_eq!(expand("$(POD_IP):8080", &env), "127.20.0.2:8080");
        assert_eq!(
            expand("$(UNSET) $$(POD_IP) $x $", &env),
            "$(UNSET) $(POD_IP) $x $"
        );
        assert_eq!(expand("a$()b", &env), "a$()b");
    }
}
