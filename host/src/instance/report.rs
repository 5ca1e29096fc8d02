//! The thin I/O edge of reporting: status patches go to the API server with server-side
//! apply under [`FIELD_MANAGER`] when a kube client is available (KUBECONFIG or in-cluster);
//! the facts are always written under the agent's state folder too.

use anyhow::Result;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

use super::facts::FIELD_MANAGER;
use pgwarden_crds::{ClusterStatus, GROUP, VERSION};

/// How long one call to the API server may take. kube's default read timeout is almost five
/// minutes: a stalled API server would hold the agent's loop that long, its liveness beat
/// and its isolation guard with it (see `alive`, `isolation`).
pub const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A client from the inferred configuration (KUBECONFIG or in-cluster), with [`API_TIMEOUT`].
async fn client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.connect_timeout = Some(API_TIMEOUT);
    config.read_timeout = Some(API_TIMEOUT);
    config.write_timeout = Some(API_TIMEOUT);
    Ok(kube::Client::try_from(config)?)
}

/// Where status patches go.
pub struct Reporter {
    client: Option<kube::Client>,
    namespace: String,
}

impl Reporter {
    /// A reporter with a kube client if one can be configured, else files only.
    pub async fn connect(namespace: Option<String>) -> Self {
        let client = match (&namespace, client().await) {
            (Some(_), Ok(c)) => Some(c),
            (None, _) => None,
            (Some(_), Err(e)) => {
                eprintln!("pgwarden-agent: no Kubernetes client ({e}); facts go to files only");
                None
            }
        };
        Self {
            client,
            namespace: namespace.unwrap_or_default(),
        }
    }

    /// Applies a status patch (built by `facts`) to `kind`/`name`; a no-op without a client.
    pub async fn apply_status(
        &self,
        kind: &str,
        plural: &str,
        name: &str,
        patch: &Value,
    ) -> Result<()> {
        self.apply_status_as(FIELD_MANAGER, kind, plural, name, patch)
            .await
    }

    /// Cluster `cluster`'s status (through the status subresource, which the agent's Role
    /// may read); none without a client.
    pub async fn cluster_status(&self, cluster: &str) -> Result<Option<ClusterStatus>> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, "Cluster");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "clusters");
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &self.namespace, &resource);
        let object = api.get_status(cluster).await?;
        let status = object.data.get("status").cloned().unwrap_or_default();
        Ok(Some(serde_json::from_value(status).unwrap_or_default()))
    }

    /// [`Self::apply_status`] under field manager `manager`. Server-side apply removes the
    /// fields a manager set before and leaves out now: a status block reported on its own
    /// schedule (e.g. `status.parameters`) needs a manager of its own.
    pub async fn apply_status_as(
        &self,
        manager: &str,
        kind: &str,
        plural: &str,
        name: &str,
        patch: &Value,
    ) -> Result<()> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &self.namespace, &resource);
        let params = PatchParams::apply(manager).force();
        api.patch_status(name, &params, &Patch::Apply(patch))
            .await?;
        Ok(())
    }
}
