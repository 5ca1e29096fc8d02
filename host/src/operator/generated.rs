//! Secrets the operator generates: created once with a random value, never written again.
//!
//! The plan carries such a Secret without data, marked by [`GENERATE_ANNOTATION`] (its value
//! names the key to fill): a dry run, a policy or a log never sees the value. Here it is
//! created with a fresh random value when absent; when present (controlled by the Cluster,
//! which the NameInUse check before any apply ensured) it is left as it is, so a password the
//! instances already use is never replaced under them.

use std::collections::BTreeMap;
use std::io::Read;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use pgwarden_core::plan::{GENERATE_ANNOTATION, ObjectRef};
use serde_json::Value;
use tracing::info;

use super::context::Context;
use super::errors::Result;

/// The key to generate when `object` is a Secret marked for generation.
pub fn generated_key(target: &ObjectRef, object: &Value) -> Option<String> {
    if target.kind != "Secret" {
        return None;
    }
    let key = object.pointer(&format!(
        "/metadata/annotations/{}",
        GENERATE_ANNOTATION.replace('~', "~0").replace('/', "~1")
    ))?;
    key.as_str().map(str::to_string)
}

/// Creates the Secret with a random value under `key` if it does not exist; `true` when it
/// was created. An existing one (or one created meanwhile: 409) is never touched.
pub async fn create_once(
    ctx: &Context,
    target: &ObjectRef,
    object: &Value,
    key: &str,
) -> Result<bool> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if api.get_opt(&target.name).await?.is_some() {
        return Ok(false);
    }
    let mut secret: Secret =
        serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
    let password = random_password().map_err(|e| kube::Error::Service(Box::new(e)))?;
    secret.data = Some(BTreeMap::from([(
        key.to_string(),
        ByteString(password.into_bytes()),
    )]));
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(object = %target, "created with a generated value");
            ctx.metrics.wrote("create");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// 32 random bytes from the kernel as 64 hex digits: no quoting trouble in a passfile or a
/// conninfo string.
fn random_password() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_secrets_are_generated_and_passwords_differ() {
        let cluster: pgwarden_crds::Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "pg", "namespace": "ns", "uid": "u"}, "spec": {}
        }))
        .unwrap();
        let secret = pgwarden_core::plan::replication_secret(&cluster);
        let target = pgwarden_core::plan::reference(&secret);
        let object = serde_json::to_value(&secret).unwrap();
        assert_eq!(generated_key(&target, &object).as_deref(), Some("password"));
        assert!(
            object.get("data").is_none(),
            "the plan carries no value: {object}"
        );
        // An existing one is never written again, whatever it holds.
        let apply = pgwarden_core::plan::Action::Apply {
            target: target.clone(),
            object: object.clone(),
        };
        let live = serde_json::json!({"metadata": {"name": "pg-replication"}, "data": {"password": "eA=="}});
        assert_eq!(
            super::super::apply::step(&apply, Some(&live)),
            super::super::apply::Step::Nothing
        );
        let other = ObjectRef {
            kind: "ConfigMap".into(),
            ..target
        };
        assert_eq!(generated_key(&other, &object), None);
        let (a, b) = (random_password().unwrap(), random_password().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
