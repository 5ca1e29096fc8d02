//! One pod: its address, folders, volumes, env, containers and status report.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------
// One pod.

pub(super) struct PodRuntime {
    pub(super) pod: Pod,
    pub(super) ip: String,
    pub(super) dir: PathBuf,
    pub(super) started: String,
    pub(super) containers: Vec<ContainerRuntime>,
    /// Claim name → its folder (by the claim's uid).
    pub(super) claims: HashMap<String, PathBuf>,
    pub(super) last_status: Option<Value>,
    pub(super) terminating_since: Option<Instant>,
    /// Projected service-account tokens by file path: the token and when to renew it.
    pub(super) tokens: HashMap<PathBuf, (String, Instant)>,
}

#[derive(Default)]
pub(super) struct ContainerRuntime {
    pub(super) name: String,
    pub(super) child: Option<Child>,
    /// RFC 3339 start of the running process.
    pub(super) started_at: Option<String>,
    pub(super) restarts: i32,
    /// Exit code, reason, start and end of the last finished run.
    pub(super) last_exit: Option<(i32, String, String, String)>,
    /// Why it is not running, when it is not.
    pub(super) waiting: Option<(String, String)>,
    pub(super) next_start: Option<Instant>,
    pub(super) ready: bool,
    pub(super) next_probe: Option<Instant>,
    /// The runc container's id while one runs (a container from its image, see `runc`).
    pub(super) runc: Option<String>,
    /// The image it runs from (runc), for the status.
    pub(super) image: String,
    /// The liveness probe's schedule and consecutive failures (containers.rs).
    pub(super) liveness: super::containers::Liveness,
    pub(super) done: bool,
}

impl PodRuntime {
    pub(super) fn new(pod: &Pod, ip: String, dir: PathBuf) -> Result<Self> {
        for sub in ["logs", "volumes", "run"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        chmod(&dir, 0o755)?;
        chmod(&dir.join("volumes"), 0o755)?;
        chmod(&dir.join("run"), 0o1777)?;
        let containers = spec_containers(pod)
            .iter()
            .map(|c| ContainerRuntime {
                name: c.name.clone(),
                next_start: Some(Instant::now()),
                ..Default::default()
            })
            .collect();
        Ok(Self {
            pod: pod.clone(),
            ip,
            dir,
            started: now(),
            containers,
            claims: HashMap::new(),
            last_status: None,
            terminating_since: None,
            tokens: HashMap::new(),
        })
    }

    pub(super) fn name(&self) -> String {
        name_of(&self.pod)
    }

    pub(super) fn namespace(&self) -> String {
        namespace_of(&self.pod)
    }

    pub(super) fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    pub(super) async fn sync(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let volumes = self.sync_volumes(ctx).await?;
        let specs = spec_containers(&self.pod);
        let policy = self.restart_policy();
        for (i, spec) in specs.iter().enumerate() {
            let mounts = mounts(spec, &volumes, |v| self.volume_dir(ctx.opts, v));
            self.containers[i].reap(&policy);
            let c = &self.containers[i];
            let due =
                c.child.is_none() && !c.done && c.next_start.is_some_and(|t| Instant::now() >= t);
            let layout = runc::layout_for(ctx.opts, spec);
            if due {
                let env = self.env_for(ctx, spec, &mounts, layout.is_some()).await;
                let started = match (env, layout) {
                    (Ok(env), Some(layout)) => self.start_runc(ctx, i, spec, &volumes, env, layout),
                    (Ok(env), None) => {
                        self.containers[i].start(spec, env, &mounts, &self.dir, ctx.opts);
                        Ok(())
                    }
                    (Err(e), _) => Err(e),
                };
                if let Err(e) = started {
                    let c = &mut self.containers[i];
                    c.waiting = Some(("CreateContainerConfigError".into(), format!("{e:#}")));
                    c.next_start = Some(Instant::now() + Duration::from_secs(2));
                }
            }
            // From an image: no path inside the container is rewritten.
            let mounts = if layout.is_some() { Vec::new() } else { mounts };
            let c = &mut self.containers[i];
            if c.child.is_some() {
                c.probe(spec, &self.ip, &mounts, &ctx.opts.binaries).await;
            } else {
                c.ready = false;
            }
        }
        Ok(())
    }

    /// Makes each volume's folder and writes ConfigMap/Secret files; returns the volumes.
    pub(super) async fn sync_volumes(&mut self, ctx: &Ctx<'_>) -> Result<Vec<Volume>> {
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let ns = self.namespace();
        let runs_images = self.runs_images(ctx.opts);
        for v in &volumes {
            if let Some(c) = &v.persistent_volume_claim
                && !self.claims.contains_key(&c.claim_name)
            {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
                let uid = api
                    .get(&c.claim_name)
                    .await?
                    .metadata
                    .uid
                    .unwrap_or_default();
                let dir = claim_dir(&ctx.opts.state_dir, &ns, &c.claim_name, &uid);
                self.claims.insert(c.claim_name.clone(), dir);
            }
            let dir = self.volume_dir(ctx.opts, v);
            std::fs::create_dir_all(&dir)?;
            if v.persistent_volume_claim.is_none() {
                // A kubelet's emptyDir is writable by any user the containers run as.
                let any = runs_images && v.empty_dir.is_some();
                chmod(&dir, if any { 0o777 } else { 0o755 })?;
            }
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let modes = file_modes(v);
            if let Some(cm) = &v.config_map {
                files.extend(
                    config_map_files(ctx.client, &ns, &cm.name, cm.items.as_deref()).await?,
                );
            }
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                files.extend(secret_files(ctx.client, &ns, &name, s.items.as_deref()).await?);
            }
            if let Some(p) = &v.projected {
                for src in p.sources.iter().flatten() {
                    if let Some(cm) = &src.config_map {
                        files.extend(
                            config_map_files(ctx.client, &ns, &cm.name, cm.items.as_deref())
                                .await?,
                        );
                    }
                    if let Some(s) = &src.secret {
                        files.extend(
                            secret_files(ctx.client, &ns, &s.name, s.items.as_deref()).await?,
                        );
                    }
                    if let Some(t) = &src.service_account_token {
                        let file = dir.join(&t.path);
                        let token = self.token(ctx, &file, t).await?;
                        files.insert(t.path.clone(), token.into_bytes());
                    }
                    for item in src
                        .downward_api
                        .iter()
                        .flat_map(|d| d.items.iter().flatten())
                    {
                        if let Some(value) = item
                            .field_ref
                            .as_ref()
                            .and_then(|f| self.field(&f.field_path))
                        {
                            files.insert(item.path.clone(), value.into_bytes());
                        }
                    }
                }
            }
            let tokens = runc::token_paths(v);
            for (path, content) in files {
                let mode = modes.get(&path).copied().unwrap_or(modes.default);
                let file = dir.join(&path);
                match runs_images {
                    false => write_mode_if_changed(&file, &content, mode)?,
                    true => runc::write_volume_file(
                        &self.pod,
                        &file,
                        &content,
                        mode,
                        tokens.contains(&path),
                    )?,
                }
            }
        }
        Ok(volumes)
    }

    /// A token of the pod's ServiceAccount, bound to the pod, from the TokenRequest API (as a
    /// kubelet projects it); renewed once 80% of its lifetime has passed.
    async fn token(
        &mut self,
        ctx: &Ctx<'_>,
        file: &Path,
        projection: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    ) -> Result<String> {
        if let Some((token, renew_at)) = self.tokens.get(file)
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let account = self.service_account();
        let seconds = projection.expiration_seconds.unwrap_or(3600);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: projection.audience.clone().map(|a| vec![a]),
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: self.pod.metadata.name.clone(),
                    uid: self.pod.metadata.uid.clone(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &self.namespace());
        let answer = api
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("cannot get a token of ServiceAccount {account}"))?;
        let token = answer.status.and_then(|s| s.token).with_context(|| {
            format!("the TokenRequest of ServiceAccount {account} returned no token")
        })?;
        let renew_at = Instant::now() + Duration::from_secs(seconds.max(10) as u64 * 8 / 10);
        self.tokens
            .insert(file.to_path_buf(), (token.clone(), renew_at));
        Ok(token)
    }

    /// The ServiceAccount the pod runs as (`default` when it names none).
    pub(super) fn service_account(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into())
    }

    /// A `fieldRef` of the pod, as the downward API resolves it.
    fn field(&self, path: &str) -> Option<String> {
        match path {
            "metadata.name" => Some(self.name()),
            "metadata.namespace" => Some(self.namespace()),
            "metadata.uid" => self.pod.metadata.uid.clone(),
            "spec.serviceAccountName" => Some(self.service_account()),
            _ => None,
        }
    }

    /// Where the pod's service-account token is projected (the volume mounted at
    /// [`SERVICE_ACCOUNT_DIR`], as admission adds it), on this host.
    pub(super) fn service_account_volume(&self, opts: &Options) -> Option<PathBuf> {
        let spec = self.pod.spec.as_ref()?;
        let mount = spec
            .containers
            .iter()
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .find(|m| m.mount_path == SERVICE_ACCOUNT_DIR)?;
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)?;
        let projects_token = volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .any(|s| s.service_account_token.is_some());
        projects_token.then(|| self.volume_dir(opts, volume))
    }

    /// Writes `<podDir>/kubeconfig`: the API server, its CA and the projected token of the
    /// pod's ServiceAccount, what in-cluster configuration reads from
    /// /var/run/secrets/kubernetes.io/serviceaccount (there is no such path here).
    pub(super) fn write_kubeconfig(&self, opts: &Options) -> Result<Option<PathBuf>> {
        let Some(dir) = self.service_account_volume(opts) else {
            return Ok(None);
        };
        let node = kube::config::Kubeconfig::read_from(&opts.kubeconfig)?;
        let server = node
            .clusters
            .iter()
            .find_map(|c| c.cluster.as_ref()?.server.clone())
            .context("the node's kubeconfig names no server")?;
        let config = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: {account}\n  user:\n    tokenFile: {token}\n\
             contexts:\n- name: pod\n  context:\n    cluster: local\n    user: {account}\n    namespace: {ns}\n\
             current-context: pod\n",
            ca = dir.join("ca.crt").display(),
            token = dir.join("token").display(),
            account = self.service_account(),
            ns = self.namespace(),
        );
        let path = self.dir.join("kubeconfig");
        write_if_changed(&path, config.as_bytes())?;
        Ok(Some(path))
    }

    pub(super) fn volume_dir(&self, opts: &Options, v: &Volume) -> PathBuf {
        match &v.persistent_volume_claim {
            Some(c) => self.claims.get(&c.claim_name).cloned().unwrap_or_else(|| {
                claim_dir(&opts.state_dir, &self.namespace(), &c.claim_name, "")
            }),
            None => self.dir.join("volumes").join(&v.name),
        }
    }

    /// The container's env; `from_image`: it runs from its image (runc), so no path is
    /// rewritten and in-cluster configuration applies (no kubeconfig is written).
    pub(super) async fn env_for(
        &self,
        ctx: &Ctx<'_>,
        spec: &Container,
        mounts: &[(String, PathBuf)],
        from_image: bool,
    ) -> Result<Vec<(String, String)>> {
        let ns = self.namespace();
        let mut env: Vec<(String, String)> = Vec::new();
        for from in spec.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(cm) = &from.config_map_ref {
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
                match api.get_opt(&cm.name).await? {
                    Some(o) => env.extend(
                        o.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (format!("{prefix}{k}"), v)),
                    ),
                    None if cm.optional == Some(true) => {}
                    None => return Err(anyhow!("configmap \"{}\" not found", cm.name)),
                }
            }
            if let Some(s) = &from.secret_ref {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
                match api.get_opt(&s.name).await? {
                    Some(o) => env.extend(o.data.unwrap_or_default().into_iter().map(|(k, v)| {
                        (
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        )
                    })),
                    None if s.optional == Some(true) => {}
                    None => return Err(anyhow!("secret \"{}\" not found", s.name)),
                }
            }
        }
        for var in spec.env.iter().flatten() {
            if let Some(value) = self.env_value(ctx, var).await? {
                // A literal value may name variables defined before it, `$(NAME)`.
                let value = match &var.value_from {
                    None => expand(&value, &env),
                    Some(_) => value,
                };
                env.retain(|(k, _)| k != &var.name);
                env.push((var.name.clone(), value));
            }
        }
        let mut env: Vec<(String, String)> = match from_image {
            true => env,
            false => env
                .into_iter()
                .map(|(k, v)| (k, rewrite(&v, mounts)))
                .collect(),
        };
        if from_image {
            // As a kubelet sets them: in-cluster configuration finds the API server.
            for (k, v) in runc::service_env(&ctx.opts.kubeconfig)? {
                if !env.iter().any(|(name, _)| *name == k) {
                    env.push((k, v));
                }
            }
        } else if let Some(kubeconfig) = self.write_kubeconfig(ctx.opts)?
            && !env.iter().any(|(k, _)| k == "KUBECONFIG")
        {
            // The pod talks to the API server as its ServiceAccount, as in a cluster.
            env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        }
        for (k, v) in &ctx.opts.env {
            let v = v
                .replace("{podIP}", &self.ip)
                .replace("{podDir}", &self.dir.display().to_string());
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v));
        }
        Ok(env)
    }

    pub(super) async fn env_value(&self, ctx: &Ctx<'_>, var: &EnvVar) -> Result<Option<String>> {
        let Some(from) = &var.value_from else {
            return Ok(Some(var.value.clone().unwrap_or_default()));
        };
        let ns = self.namespace();
        if let Some(f) = &from.field_ref {
            let value = match f.field_path.as_str() {
                "metadata.name" => self.name(),
                "metadata.namespace" => ns,
                "metadata.uid" => self.pod.metadata.uid.clone().unwrap_or_default(),
                "spec.nodeName" => ctx.opts.name.clone(),
                "status.podIP" | "status.hostIP" => self.ip.clone(),
                other => {
                    return Err(anyhow!(
                        "fieldRef {other} is not supported by the local node"
                    ));
                }
            };
            return Ok(Some(value));
        }
        if let Some(k) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            let value = api
                .get_opt(&k.name)
                .await?
                .and_then(|s| s.data)
                .and_then(|d| {
                    d.get(&k.key)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                });
            return match value {
                Some(v) => Ok(Some(v)),
                None if k.optional == Some(true) => Ok(None),
                None => Err(anyhow!(
                    "secret \"{}\" has no key \"{}\" (or is missing)",
                    k.name,
                    k.key
                )),
            };
        }
        if let Some(k) = &from.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let value = api
                .get_opt(&k.name)
                .await?
                .and_then(|c| c.data)
                .and_then(|d| d.get(&k.key).cloned());
            return match value {
                Some(v) => Ok(Some(v)),
                None if k.optional == Some(true) => Ok(None),
                None => Err(anyhow!(
                    "configmap \"{}\" has no key \"{}\" (or is missing)",
                    k.name,
                    k.key
                )),
            };
        }
        Err(anyhow!("env {}: unsupported valueFrom", var.name))
    }

    /// Sends TERM once, KILL after `grace`; true when every process has exited.
    pub(super) fn terminate(&mut self, grace: Duration) -> bool {
        let since = *self.terminating_since.get_or_insert_with(|| {
            for c in &self.containers {
                c.signal("-TERM");
            }
            Instant::now()
        });
        if since.elapsed() >= grace {
            for c in &self.containers {
                c.signal("-KILL");
            }
        }
        self.containers.iter_mut().all(|c| match c.child.as_mut() {
            None => true,
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
        })
    }

    pub(super) fn kill_now(&mut self) {
        for c in &mut self.containers {
            c.signal("-KILL");
            if let Some(mut child) = c.child.take() {
                let _ = child.wait();
            }
            if let Some(id) = c.runc.take() {
                runc::delete(&id);
            }
        }
    }

    pub(super) fn remove_ephemeral(&self) {
        for id in self.containers.iter().filter_map(|c| c.runc.as_deref()) {
            runc::delete(id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The pod's status as a kubelet reports it.
    pub(super) fn status(&self) -> Value {
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(ContainerRuntime::status)
            .collect();
        let any_started = self
            .containers
            .iter()
            .any(|c| c.started_at.is_some() || c.last_exit.is_some());
        let all_ready = self.containers.iter().all(|c| c.ready);
        let all_done = self.containers.iter().all(|c| c.done);
        let phase = if all_done {
            let failed = self
                .containers
                .iter()
                .any(|c| c.last_exit.as_ref().is_some_and(|e| e.0 != 0));
            if failed { "Failed" } else { "Succeeded" }
        } else if any_started {
            "Running"
        } else {
            "Pending"
        };
        let cond =
            |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
        json!({
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.started,
            "conditions": [
                cond("PodScheduled", true),
                cond("Initialized", true),
                cond("ContainersReady", all_ready),
                cond("Ready", all_ready),
            ],
            "containerStatuses": statuses,
        })
    }
}
