//! The instance pod template a policy returns, checked against an allow-list.
//!
//! The SDK's default pod of the same instance ([`pgwarden_sdk::defaults::instance_pod`], as
//! linked into the host) is the reference: a field may differ from it only where this module
//! says a policy may set it (scheduling, resources, image and command, probes, labels, extra
//! containers and volumes of the kinds listed in [`check_volume`]), and then only within the
//! Cluster (its own claim, settings ConfigMap, Secrets and ServiceAccount) and never with more
//! privileges than the default (`pod_security`). Every other field must be what the
//! default has there, or absent. A field Kubernetes adds later is therefore refused until it
//! is put on the list, instead of let through. A refusal names the field's path in the
//! template (`spec.containers[0].ports[0].hostPort`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use pgwarden_crds::Cluster;
use pgwarden_crds::settings::{env, pod};
use pgwarden_sdk::names;
use serde_json::Value;

use super::fields::Fields;
use super::pod_security;
use crate::plan::errors::GuardrailError;
use crate::plan::instances::instance_index;
use crate::plan::meta::cluster_name;

/// Template metadata a policy may set (the host sets the name, owner and cluster label; a
/// foreign namespace is refused by [`super::check`] with its own message).
const META_FREE: [&str; 3] = ["labels", "annotations", "namespace"];

/// Pod spec fields a policy may set to anything: where the pod runs and for how long it stops.
const SPEC_FREE: [&str; 6] = [
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
    "terminationGracePeriodSeconds",
];

/// Pod spec fields checked below; any other must be as in the default pod.
const SPEC_CHECKED: [&str; 7] = [
    "containers",
    "initContainers",
    "volumes",
    "securityContext",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
];

/// Container fields a policy may set to anything (probes and hooks: see [`check_handlers`]).
const CONTAINER_FREE: [&str; 13] = [
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "workingDir",
    "resources",
    "resizePolicy",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "restartPolicy",
    "livenessProbe",
    "readinessProbe",
];

const CONTAINER_CHECKED: [&str; 7] = [
    "startupProbe",
    "lifecycle",
    "env",
    "envFrom",
    "ports",
    "volumeMounts",
    "securityContext",
];

/// What a template is checked against: the Cluster's own objects and the default pod.
struct Guard {
    fields: Fields,
    cluster: String,
    secrets: BTreeSet<String>,
    claim: String,
    config_map: String,
    agent: String,
}

type Result<T = ()> = std::result::Result<T, GuardrailError>;

/// The secrets the Cluster's spec names: the only ones its pods may read.
fn cluster_secrets(cluster: &Cluster) -> BTreeSet<String> {
    let Some(store) = cluster.spec.backup.as_ref() else {
        return BTreeSet::new();
    };
    let creds = store.s3_credentials.iter().flat_map(|c| c.selectors());
    creds
        .map(|k| k.selector)
        .chain(store.endpoint_ca.as_ref())
        .map(|s| s.name.clone())
        .collect()
}

/// Refuses a template that sets a field off the allow-list, raises privileges above the SDK's
/// default pod, has no `postgres` container, carries a credential by value, or refers to a
/// claim, ConfigMap, Secret or ServiceAccount that is not the Cluster's (the Secrets of
/// `extra`, a restore source's, are allowed too).
pub fn check_pod_template(
    cluster: &Cluster,
    pod_name: &str,
    template: &PodTemplateSpec,
    extra: &BTreeSet<String>,
) -> Result {
    // A name that is not an instance's is held to instance 0's default.
    let instance = instance_index(cluster_name(cluster), pod_name).unwrap_or(0);
    // The default of an instance the Cluster does not have: an empty template, the strictest.
    let default = pgwarden_sdk::defaults::instance_pod(cluster, instance)
        .map(|p| p.build())
        .unwrap_or_default();
    let guard = Guard::new(cluster, pod_name, instance, extra);
    let json = |t: &PodTemplateSpec| serde_json::to_value(t).unwrap_or(Value::Null);
    guard.check(&json(template), &json(&default))
}

fn items(value: Option<&Value>) -> &[Value] {
    value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The element of `list` whose `name` is `name`: containers and volumes are matched to the
/// default's by name, not position.
fn named<'a>(list: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    items(list).iter().find(|v| text(v, "name") == name)
}

impl Guard {
    fn new(cluster: &Cluster, pod_name: &str, instance: u32, extra: &BTreeSet<String>) -> Self {
        let name = cluster_name(cluster);
        let mut secrets = cluster_secrets(cluster);
        secrets.extend(extra.iter().cloned());
        let object = format!(
            "Pod {}/{pod_name}",
            cluster.metadata.namespace.as_deref().unwrap_or_default()
        );
        Guard {
            fields: Fields { object },
            cluster: format!("Cluster {name}"),
            secrets,
            claim: names::instance(name, instance),
            config_map: names::settings_config_map(name),
            agent: names::agent(name),
        }
    }

    fn refuse(&self, path: &str, why: &str) -> GuardrailError {
        self.fields.refuse(path, why)
    }

    fn foreign(&self, path: &str, reference: String) -> GuardrailError {
        GuardrailError::ForeignReference {
            object: self.fields.object.clone(),
            reference: format!("{reference} ({path})"),
            subject: self.cluster.clone(),
        }
    }

    fn same_as_default(
        &self,
        path: &str,
        value: &Value,
        default: Option<&Value>,
        allowed: &[&str],
    ) -> Result {
        self.fields.same_as_default(path, value, default, allowed)
    }

    fn check(&self, template: &Value, default: &Value) -> Result {
        let meta = template.get("metadata").unwrap_or(&Value::Null);
        self.same_as_default("metadata", meta, default.get("metadata"), &META_FREE)?;
        let spec = template.get("spec").unwrap_or(&Value::Null);
        let base = default.get("spec");
        let allowed: Vec<&str> = SPEC_FREE.iter().chain(&SPEC_CHECKED).copied().collect();
        self.same_as_default("spec", spec, base, &allowed)?;
        let containers = spec.get("containers");
        if named(containers, pod::CONTAINER).is_none() {
            return Err(GuardrailError::Invalid {
                object: self.fields.object.clone(),
                detail: format!("the pod template has no container named {}", pod::CONTAINER),
            });
        }
        self.check_account(spec, base)?;
        pod_security::check_pod(&self.fields, spec.get("securityContext"), base)?;
        // Every container (init or not, the default's or an extra one) is held to the
        // default `postgres` container's security context.
        let base_container = base.and_then(|b| named(b.get("containers"), pod::CONTAINER));
        for list in ["containers", "initContainers"] {
            let default_list = base.and_then(|b| b.get(list));
            for (i, c) in items(spec.get(list)).iter().enumerate() {
                let path = format!("spec.{list}[{i}]");
                let same_name = named(default_list, text(c, "name"));
                self.check_container(&path, c, same_name, base_container)?;
            }
        }
        for (i, volume) in items(spec.get("volumes")).iter().enumerate() {
            let same_name = base.and_then(|b| named(b.get("volumes"), text(volume, "name")));
            if same_name != Some(volume) {
                self.check_volume(&format!("spec.volumes[{i}]"), volume)?;
            }
        }
        Ok(())
    }

    /// The Cluster's own ServiceAccount (the host sets it anyway), and no token mounted where
    /// the default mounts none.
    fn check_account(&self, spec: &Value, base: Option<&Value>) -> Result {
        for key in ["serviceAccountName", "serviceAccount"] {
            if let Some(account) = spec.get(key).and_then(Value::as_str)
                && account != self.agent
            {
                let path = format!("spec.{key}");
                return Err(self.foreign(&path, format!("ServiceAccount {account}")));
            }
        }
        let key = "automountServiceAccountToken";
        let default_off = base.and_then(|b| b.get(key)) == Some(&Value::Bool(false));
        if default_off && spec.get(key) != Some(&Value::Bool(false)) {
            return Err(self.refuse(
                &format!("spec.{key}"),
                "must be false as in the SDK's default pod (the token is mounted only where the agent reads it)",
            ));
        }
        Ok(())
    }

    fn check_container(
        &self,
        path: &str,
        container: &Value,
        same_name: Option<&Value>,
        base: Option<&Value>,
    ) -> Result {
        let allowed: Vec<&str> = CONTAINER_FREE
            .iter()
            .chain(&CONTAINER_CHECKED)
            .copied()
            .collect();
        self.same_as_default(path, container, same_name, &allowed)?;
        for key in [
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
        ] {
            self.check_handlers(&format!("{path}.{key}"), container.get(key))?;
        }
        for (i, port) in items(container.get("ports")).iter().enumerate() {
            let allowed = ["containerPort", "name", "protocol"];
            self.same_as_default(&format!("{path}.ports[{i}]"), port, None, &allowed)?;
        }
        for (i, mount) in items(container.get("volumeMounts")).iter().enumerate() {
            let mount_path = format!("{path}.volumeMounts[{i}]");
            let allowed = ["name", "mountPath", "readOnly", "subPath", "subPathExpr"];
            self.same_as_default(&mount_path, mount, None, &allowed)?;
        }
        self.check_env(path, container)?;
        let context = container.get("securityContext");
        let default_context = base.and_then(|b| b.get("securityContext"));
        pod_security::check_container(
            &self.fields,
            &format!("{path}.securityContext"),
            context,
            default_context,
        )
    }

    /// Probes and lifecycle hooks run in the container, except that `httpGet.host` and
    /// `tcpSocket.host` make the kubelet connect from the node to any address: refused.
    fn check_handlers(&self, path: &str, value: Option<&Value>) -> Result {
        for (key, v) in value.and_then(Value::as_object).into_iter().flatten() {
            let here = format!("{path}.{key}");
            if matches!(key.as_str(), "httpGet" | "tcpSocket") && v.get("host").is_some() {
                return Err(self.refuse(
                    &format!("{here}.host"),
                    "makes the kubelet connect to another host; a probe or hook stays within the pod",
                ));
            }
            if v.is_object() {
                self.check_handlers(&here, Some(v))?;
            }
        }
        Ok(())
    }

    fn check_env(&self, path: &str, container: &Value) -> Result {
        let credentials = [
            env::ACCESS_KEY_ID,
            env::SECRET_ACCESS_KEY,
            env::SESSION_TOKEN,
            env::REGION,
        ];
        for (i, var) in items(container.get("env")).iter().enumerate() {
            let name = text(var, "name");
            if credentials.contains(&name) && var.get("value").is_some() {
                return Err(GuardrailError::SecretValue {
                    object: self.fields.object.clone(),
                    env: name.into(),
                });
            }
            let from = var.get("valueFrom").unwrap_or(&Value::Null);
            let from_path = format!("{path}.env[{i}].valueFrom");
            let allowed = [
                "fieldRef",
                "resourceFieldRef",
                "secretKeyRef",
                "configMapKeyRef",
            ];
            self.same_as_default(&from_path, from, None, &allowed)?;
            self.check_secret(
                &format!("{from_path}.secretKeyRef"),
                from.get("secretKeyRef"),
            )?;
            let config = from.get("configMapKeyRef");
            self.check_config_map(&format!("{from_path}.configMapKeyRef"), config)?;
        }
        for (i, source) in items(container.get("envFrom")).iter().enumerate() {
            let here = format!("{path}.envFrom[{i}]");
            let allowed = ["prefix", "secretRef", "configMapRef"];
            self.same_as_default(&here, source, None, &allowed)?;
            self.check_secret(&format!("{here}.secretRef"), source.get("secretRef"))?;
            self.check_config_map(&format!("{here}.configMapRef"), source.get("configMapRef"))?;
        }
        Ok(())
    }

    /// A Secret reference (`name` or `secretName`) must name one of the Cluster's Secrets.
    fn check_secret(&self, path: &str, reference: Option<&Value>) -> Result {
        let Some(reference) = reference else {
            return Ok(());
        };
        let name = reference
            .get("name")
            .or_else(|| reference.get("secretName"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self.secrets.contains(name) {
            return Ok(());
        }
        Err(self.foreign(path, format!("Secret {name}")))
    }

    /// A ConfigMap reference must name the Cluster's settings ConfigMap.
    fn check_config_map(&self, path: &str, reference: Option<&Value>) -> Result {
        match reference.map(|r| text(r, "name")) {
            Some(name) if name != self.config_map => {
                Err(self.foreign(path, format!("ConfigMap {name}")))
            }
            _ => Ok(()),
        }
    }

    /// A volume the default pod does not have: `emptyDir`, `downwardAPI`, the Cluster's own
    /// claim, settings ConfigMap or Secrets (also `projected`), or a generic `ephemeral` claim
    /// that starts empty (no `dataSource`, no binding to a chosen volume). Any other source
    /// (`hostPath`, `csi`, `nfs`, `iscsi`, ...) is refused by its path.
    fn check_volume(&self, path: &str, volume: &Value) -> Result {
        let allowed = [
            "name",
            "emptyDir",
            "downwardAPI",
            "persistentVolumeClaim",
            "configMap",
            "secret",
            "projected",
            "ephemeral",
        ];
        self.same_as_default(path, volume, None, &allowed)?;
        if let Some(claim) = volume.get("persistentVolumeClaim") {
            let name = text(claim, "claimName");
            if name != self.claim {
                let here = format!("{path}.persistentVolumeClaim");
                return Err(self.foreign(&here, format!("PersistentVolumeClaim {name}")));
            }
        }
        self.check_config_map(&format!("{path}.configMap"), volume.get("configMap"))?;
        self.check_secret(&format!("{path}.secret"), volume.get("secret"))?;
        let projected = volume.get("projected").unwrap_or(&Value::Null);
        let sources = projected.get("sources");
        for (i, source) in items(sources).iter().enumerate() {
            let here = format!("{path}.projected.sources[{i}]");
            let allowed = ["secret", "configMap", "downwardAPI"];
            self.same_as_default(&here, source, None, &allowed)?;
            self.check_secret(&format!("{here}.secret"), source.get("secret"))?;
            self.check_config_map(&format!("{here}.configMap"), source.get("configMap"))?;
        }
        self.check_ephemeral(path, volume.get("ephemeral"))
    }

    fn check_ephemeral(&self, path: &str, ephemeral: Option<&Value>) -> Result {
        let Some(ephemeral) = ephemeral else {
            return Ok(());
        };
        let path = format!("{path}.ephemeral");
        self.same_as_default(&path, ephemeral, None, &["volumeClaimTemplate"])?;
        let template = ephemeral.get("volumeClaimTemplate").unwrap_or(&Value::Null);
        let path = format!("{path}.volumeClaimTemplate");
        self.same_as_default(&path, template, None, &["metadata", "spec"])?;
        let meta = template.get("metadata").unwrap_or(&Value::Null);
        let labels = ["labels", "annotations"];
        self.same_as_default(&format!("{path}.metadata"), meta, None, &labels)?;
        let spec = template.get("spec").unwrap_or(&Value::Null);
        let allowed = [
            "accessModes",
            "resources",
            "storageClassName",
            "volumeMode",
            "volumeAttributesClassName",
        ];
        self.same_as_default(&format!("{path}.spec"), spec, None, &allowed)
    }
}
