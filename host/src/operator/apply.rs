//! The applier: executes planned [`Action`]s against the API server, after the guardrails,
//! and only where the observed state differs from the desired one — a steady-state reconcile
//! sends no write at all.
//!
//! Every applied object carries the hash of the desired object it was applied from
//! ([`applied`]): a new hash means the decision changed (removed fields included), and for
//! a Pod it is the only thing compared, so what the API server rewrites never recreates it.

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::{Value, json};
use tracing::{debug, info};

use super::applied;
use super::claims;
use super::context::{Context, MANAGER};
use super::errors::Result;
use super::quantity::normalised_pod;
pub use super::step::Step;
use pgwarden_core::plan::{Action, EventType, ObjectRef};
use pgwarden_crds::settings::pod::LABEL_ROLE;

/// `desired` is contained in `observed`: every field it sets has the same value there (lists
/// element by element). Server-side defaults in `observed` do not count as a difference.
pub fn contains(observed: &Value, desired: &Value) -> bool {
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => d.iter().all(|(k, v)| match o.get(k) {
            Some(w) => contains(w, v),
            None => is_empty(v),
        }),
        (Value::Array(o), Value::Array(d)) => match keyed(d) {
            // A list map (containers, env, volumes, volumeMounts...): admission plugins add
            // elements of their own (the service account token's volume and mount), so each
            // desired element is looked up by its key and extra observed ones do not count.
            Some(keys) => keys.iter().zip(d).all(|(key, v)| {
                o.iter()
                    .any(|w| element_key(w) == Some(key) && contains(w, v))
            }),
            None => o.len() == d.len() && o.iter().zip(d).all(|(w, v)| contains(w, v)),
        },
        _ => observed == desired,
    }
}

/// The key of an element of a Kubernetes list map: `name`, `mountPath` for volume mounts, or
/// `type` for conditions (another manager's condition, the retention's, is not a difference).
fn element_key(element: &Value) -> Option<&str> {
    element
        .get("name")
        .or_else(|| element.get("mountPath"))
        .or_else(|| element.get("type"))
        .and_then(Value::as_str)
}

/// The keys of a list whose elements all have one, without duplicates.
fn keyed(list: &[Value]) -> Option<Vec<&str>> {
    let keys = list.iter().map(element_key).collect::<Option<Vec<_>>>()?;
    let unique: std::collections::BTreeSet<_> = keys.iter().collect();
    (!keys.is_empty() && unique.len() == keys.len()).then_some(keys)
}

fn is_empty(v: &Value) -> bool {
    v.is_null()
        || v.as_object().is_some_and(|m| m.is_empty())
        || v.as_array().is_some_and(|a| a.is_empty())
}

/// The first place (a JSON pointer) where `desired` is not contained in `observed`, for logs.
pub fn difference(observed: &Value, desired: &Value, at: &str) -> Option<String> {
    match (observed, desired) {
        (Value::Object(o), Value::Object(d)) => d.iter().find_map(|(k, v)| match o.get(k) {
            Some(w) => difference(w, v, &format!("{at}/{k}")),
            None if is_empty(v) => None,
            None => Some(format!("{at}/{k}: absent, desired {v}")),
        }),
        (Value::Array(o), Value::Array(d)) if keyed(d).is_none() && o.len() == d.len() => o
            .iter()
            .zip(d)
            .enumerate()
            .find_map(|(i, (w, v))| difference(w, v, &format!("{at}/{i}"))),
        _ if contains(observed, desired) => None,
        _ => Some(format!("{at}: observed {observed}, desired {desired}")),
    }
}

/// Decides the write an action needs (pure).
pub fn step(action: &Action, observed: Option<&Value>) -> Step {
    match (action, observed) {
        (Action::Apply { .. }, None) => Step::Apply,
        // Created once, never written again: its value is not the plan's.
        (Action::Apply { target, object }, Some(_))
            if super::generated::generated_key(target, object).is_some() =>
        {
            Step::Nothing
        }
        (Action::Apply { target, object }, Some(o)) if target.kind == "PersistentVolumeClaim" => {
            claims::step(o, object)
        }
        (Action::Apply { object, target }, Some(o)) if target.kind == "Pod" => pod_step(o, object),
        (Action::Apply { object, .. }, Some(o)) => {
            // The hash sees a change that removed fields; `contains` sees a change someone
            // else made to fields the operator owns.
            let current = applied::recorded(o) == Some(applied::hash(object).as_str());
            match current && contains(o, &without_status(object)) {
                true => Step::Nothing,
                false => Step::Apply,
            }
        }
        (Action::Delete { .. }, None) => Step::Nothing,
        (Action::Delete { .. }, Some(_)) => Step::Delete,
        (Action::PatchStatus { status, .. }, Some(o)) if contains(&o["status"], status) => {
            Step::Nothing
        }
        (Action::PatchStatus { .. }, _) => Step::PatchStatus,
        (Action::Event { .. }, _) => Step::Event,
        (Action::Requeue { .. }, _) => Step::Nothing,
    }
}

/// A Pod is recreated only when the desired template changed since it was made: its
/// recorded hash differs. A pod without one (made by an older operator) is compared with the
/// desired one field by field, quantities by value.
fn pod_step(observed: &Value, desired: &Value) -> Step {
    match applied::recorded(observed) {
        // The role label alone differs (a failover): applied in place, the pod stays.
        Some(recorded) if recorded == applied::hash(desired) => {
            let role = |o: &Value| o["metadata"]["labels"][LABEL_ROLE].clone();
            match role(observed) == role(desired) {
                true => Step::Nothing,
                false => Step::Apply,
            }
        }
        Some(_) => Step::Recreate,
        None if contains(
            &normalised_pod(observed),
            &normalised_pod(&without_status(desired)),
        ) =>
        {
            Step::Stamp
        }
        None => Step::Recreate,
    }
}

fn without_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    object
}

/// The live object is controlled by the owner `uid`: an ownerReference with `controller:
/// true` and that uid. A label or a non-controller reference anyone can write is not enough.
pub fn controlled_by(live: &Value, uid: &str) -> bool {
    let references = live
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array);
    references.into_iter().flatten().any(|r| {
        r.get("controller") == Some(&Value::Bool(true))
            && r.get("uid").and_then(Value::as_str) == Some(uid)
    })
}

/// The objects the actions would apply that exist and are not controlled by the owner `uid`
/// (someone else's `<cluster>-rw`, say): the operator must leave them unchanged, since a
/// forced apply would take them over and the garbage collector would then delete them with
/// the Cluster. The live object is checked, not the desired one; the cache holds only
/// labelled objects, so one it lacks is read from the API server.
pub async fn not_controlled(
    ctx: &Context,
    actions: &[Action],
    uid: &str,
) -> Result<Vec<ObjectRef>> {
    let mut taken = Vec::new();
    for action in actions {
        let Action::Apply { target, .. } = action else {
            continue;
        };
        let live = match ctx.stores.observed(target) {
            Some(observed) => Some(observed),
            None => api(ctx, target)
                .get_opt(&target.name)
                .await?
                .and_then(|o| serde_json::to_value(o).ok()),
        };
        if live.is_some_and(|o| !controlled_by(&o, uid)) {
            taken.push(target.clone());
        }
    }
    Ok(taken)
}

fn api(ctx: &Context, target: &ObjectRef) -> Api<DynamicObject> {
    let (group, version) = target
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", &target.api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &target.kind));
    match &target.namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    }
}

/// The soonest a policy's requeue answer brings an object back: an answer of 0 (or 1, in a
/// loop) would make the operator reconcile it, and call the policy, without pause.
pub const MIN_REQUEUE_SECONDS: u64 = 5;

/// The shortest requeue the actions ask for, never under [`MIN_REQUEUE_SECONDS`].
pub fn requeue(actions: &[Action]) -> Option<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Requeue { after_seconds } => Some(*after_seconds),
            _ => None,
        })
        .min()
        .map(|seconds| seconds.max(MIN_REQUEUE_SECONDS))
}

/// Executes the actions in order; returns how many writes were sent.
pub async fn apply(ctx: &Context, actions: &[Action]) -> Result<usize> {
    let mut writes = 0;
    for action in actions {
        // A generated Secret is created once and never applied over (its value would change).
        if let Action::Apply { target, object } = action
            && let Some(key) = super::generated::generated_key(target, object)
        {
            writes += usize::from(super::generated::create_once(ctx, target, object, &key).await?);
            continue;
        }
        let observed = action.target().and_then(|t| ctx.stores.observed(t));
        let step = step(action, observed.as_ref());
        debug!(?step, target = ?action.target().map(|t| t.to_string()), "action");
        match (step, action) {
            (Step::Nothing, _) => continue,
            (Step::Apply, Action::Apply { target, object }) => {
                let applied = server_side_apply(ctx, target, object).await;
                match (&observed, target.kind.as_str()) {
                    (Some(o), "PersistentVolumeClaim") => {
                        applied.map_err(|e| claims::not_grown(e, o, object, target))?
                    }
                    _ => applied?,
                }
            }
            (Step::Stamp, Action::Apply { target, object }) => {
                stamp(ctx, target, object).await?;
            }
            (Step::Recreate | Step::Delete, a) => {
                let target = a.target().expect("delete has a target");
                if let (Action::Apply { object, .. }, Some(o)) = (a, &observed) {
                    info!(
                        object = %target,
                        recorded = ?applied::recorded(o),
                        desired = %applied::hash(object),
                        difference = ?difference(o, &without_status(object), ""),
                        "recreating: the desired template changed"
                    );
                }
                match api(ctx, target)
                    .delete(&target.name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => info!(object = %target, "deleted"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                ctx.metrics.wrote("delete");
            }
            (Step::PatchStatus, Action::PatchStatus { target, status }) => {
                // A merge patch: the operator sets the fields it decides and leaves the agent's.
                let patch = Patch::Merge(json!({ "status": status }));
                api(ctx, target)
                    .patch_status(&target.name, &PatchParams::default(), &patch)
                    .await?;
                ctx.metrics.wrote("status");
            }
            (
                Step::Event,
                Action::Event {
                    regarding,
                    event_type,
                    reason,
                    note,
                },
            ) => {
                publish(ctx, regarding, *event_type, reason, note).await?;
            }
            _ => continue,
        }
        writes += 1;
    }
    Ok(writes)
}

/// Server-side apply of the whole object, stamped with its hash, as this manager's full
/// intent: what it no longer sends, and owned alone, the server removes.
async fn server_side_apply(ctx: &Context, target: &ObjectRef, object: &Value) -> Result<()> {
    let params = PatchParams::apply(MANAGER).force();
    let patch = Patch::Apply(applied::stamped(object));
    api(ctx, target)
        .patch(&target.name, &params, &patch)
        .await?;
    info!(object = %target, "applied");
    ctx.metrics.wrote("apply");
    Ok(())
}

/// Records the hash of `object` on the live one: a merge patch of the annotation alone (an
/// apply of it would be this manager's whole intent and remove every other field it owns).
async fn stamp(ctx: &Context, target: &ObjectRef, object: &Value) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {applied::ANNOTATION: applied::hash(object)}}});
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    api(ctx, target)
        .patch(&target.name, &params, &Patch::Merge(&patch))
        .await?;
    info!(object = %target, "recorded the applied hash");
    ctx.metrics.wrote("apply");
    Ok(())
}

/// Records an Event about `regarding`.
pub async fn publish(
    ctx: &Context,
    regarding: &ObjectRef,
    kind: EventType,
    reason: &str,
    note: &str,
) -> Result<()> {
    let observed = ctx.stores.observed(regarding).unwrap_or_default();
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(regarding.api_version.clone()),
        kind: Some(regarding.kind.clone()),
        name: Some(regarding.name.clone()),
        namespace: regarding.namespace.clone(),
        uid: observed
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..Default::default()
    };
    let type_ = match kind {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    };
    let event = super::events::event(
        &ctx.reporter,
        &reference,
        type_,
        reason,
        note,
        k8s_openapi::jiff::Timestamp::now(),
    );
    super::events::publish(&ctx.client, event).await?;
    ctx.metrics.wrote("event");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("ns".into()),
            name: "x".into(),
        }
    }

    #[test]
    fn a_role_label_change_relabels_the_pod_in_place() {
        let pod = |role: &str| {
            json!({"metadata": {"name": "pg-1", "labels": {LABEL_ROLE: role}},
                   "spec": {"containers": [{"name": "postgres"}]}})
        };
        let action = Action::Apply {
            target: target("Pod"),
            object: pod("replica"),
        };
        let live = applied::stamped(&pod("primary"));
        assert_eq!(step(&action, Some(&live)), Step::Apply, "not a recreate");
        let same = applied::stamped(&pod("replica"));
        assert_eq!(step(&action, Some(&same)), Step::Nothing);
    }

    #[test]
    fn server_defaults_are_not_a_difference() {
        let desired = json!({"spec": {"containers": [{"name": "postgres", "image": "pg"}]}});
        let observed = json!({"spec": {"containers": [{"name": "postgres", "image": "pg", "imagePullPolicy": "IfNotPresent"}], "dnsPolicy": "ClusterFirst"}});
        assert!(contains(&observed, &desired));
        let changed = json!({"spec": {"containers": [{"name": "postgres", "image": "pg2"}]}});
        assert!(!contains(&observed, &changed));
        let more = json!({"spec": {"containers": [{"name": "postgres"}, {"name": "sidecar"}]}});
        assert!(!contains(&observed, &more));
    }

    #[test]
    fn list_maps_match_by_key_and_tolerate_admitted_elements() {
        let desired = json!({"volumeMounts": [{"name": "pgdata", "mountPath": "/data"}, {"name": "settings", "mountPath": "/etc/pgwarden"}]});
        let admitted = json!({"volumeMounts": [
            {"name": "settings", "mountPath": "/etc/pgwarden", "readOnly": true},
            {"name": "pgdata", "mountPath": "/data"},
            {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        ]});
        assert!(contains(&admitted, &desired));
        assert_eq!(difference(&admitted, &desired, ""), None);
        let moved = json!({"volumeMounts": [{"name": "pgdata", "mountPath": "/elsewhere"}, {"name": "settings", "mountPath": "/etc/pgwarden"}]});
        assert!(!contains(&admitted, &moved));
        let unkeyed = json!({"args": ["instance", "run"]});
        assert!(!contains(
            &json!({"args": ["instance", "run", "--x"]}),
            &unkeyed
        ));
        let diff = difference(
            &json!({"spec": {"image": "a"}}),
            &json!({"spec": {"image": "b"}}),
            "",
        )
        .unwrap();
        assert!(diff.starts_with("/spec/image: observed \"a\""), "{diff}");
    }

    #[test]
    fn steady_state_needs_no_write() {
        let object = json!({"metadata": {"name": "x"}, "data": {"a": "1"}});
        let apply = Action::Apply {
            target: target("ConfigMap"),
            object: object.clone(),
        };
        assert_eq!(
            step(&apply, Some(&applied::stamped(&object))),
            Step::Nothing
        );
        // Made by an operator that did not record the hash: applied once, to record it.
        assert_eq!(step(&apply, Some(&object)), Step::Apply);
        assert_eq!(step(&apply, None), Step::Apply);
        assert_eq!(
            step(
                &apply,
                Some(&json!({"metadata": {"name": "x"}, "data": {"a": "2"}}))
            ),
            Step::Apply
        );
        let status = Action::PatchStatus {
            target: target("Backup"),
            status: json!({"phase": "running"}),
        };
        assert_eq!(
            step(
                &status,
                Some(&json!({"status": {"phase": "running", "backupId": "b"}}))
            ),
            Step::Nothing
        );
        assert_eq!(
            step(&status, Some(&json!({"status": {"phase": "pending"}}))),
            Step::PatchStatus
        );
    }

    #[test]
    fn a_changed_pod_is_recreated_a_claim_only_grown() {
        let pod = Action::Apply {
            target: target("Pod"),
            object: json!({"spec": {"containers": [{"name": "a"}]}}),
        };
        assert_eq!(
            step(
                &pod,
                Some(&json!({"spec": {"containers": [{"name": "b"}]}}))
            ),
            Step::Recreate
        );
        let claim = Action::Apply {
            target: target("PersistentVolumeClaim"),
            object: json!({"spec": {"x": 1}}),
        };
        assert_eq!(
            step(&claim, Some(&json!({"spec": {"x": 2}}))),
            Step::Nothing
        );
    }

    #[test]
    fn a_removed_config_map_key_is_applied() {
        // Last applied with `archive.json`; the desired object no longer has it.
        let observed = json!({
            "metadata": {"name": "x", "annotations": {"postgresql.k8s.2ndq.io/applied-hash": "sha256:old"}},
            "data": {"archive.json": "{}", "restore-source.json": "{}"},
        });
        let apply = Action::Apply {
            target: target("ConfigMap"),
            object: json!({"metadata": {"name": "x"}, "data": {"restore-source.json": "{}"}}),
        };
        assert_eq!(step(&apply, Some(&observed)), Step::Apply);
    }

    #[test]
    fn a_removed_env_var_recreates_the_pod() {
        let observed = json!({
            "metadata": {"name": "x", "annotations": {"postgresql.k8s.2ndq.io/applied-hash": "sha256:old"}},
            "spec": {"containers": [{"name": "postgres", "env": [
                {"name": "PGDATA", "value": "/data"},
                {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ]}]},
        });
        let pod = Action::Apply {
            target: target("Pod"),
            object: json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "postgres", "env": [
                {"name": "PGDATA", "value": "/data"},
            ]}]}}),
        };
        assert_eq!(step(&pod, Some(&observed)), Step::Recreate);
    }

    #[test]
    fn quantities_the_server_normalised_do_not_recreate_a_pod() {
        // A pod made before the applied hash existed: compared field by field, quantities
        // by value (the API server stores cpu "0.5" as "500m" and 1024Mi as "1Gi").
        let resources = |cpu: &str, memory: &str| {
            json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "postgres",
                "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu}}}]}})
        };
        let pod = Action::Apply {
            target: target("Pod"),
            object: resources("0.5", "1024Mi"),
        };
        let observed = resources("500m", "1Gi");
        assert_ne!(step(&pod, Some(&observed)), Step::Recreate);
        assert_eq!(step(&pod, Some(&observed)), Step::Stamp);
        let changed = resources("750m", "1Gi");
        assert_eq!(step(&pod, Some(&changed)), Step::Recreate);
    }

    #[test]
    fn a_pod_made_from_the_current_template_stays_whatever_the_server_rewrote() {
        let desired = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "postgres",
            "image": "pg:15", "resources": {"requests": {"cpu": "0.5"}}}]}});
        let pod = Action::Apply {
            target: target("Pod"),
            object: desired.clone(),
        };
        // As stored: quantity rewritten, image pinned to a digest by a webhook, defaults.
        let mut live = applied::stamped(&desired);
        live["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("500m");
        live["spec"]["containers"][0]["image"] = json!("pg@sha256:0123");
        live["spec"]["dnsPolicy"] = json!("ClusterFirst");
        live["status"] = json!({"phase": "Running"});
        assert_eq!(step(&pod, Some(&live)), Step::Nothing);
        let changed = Action::Apply {
            target: target("Pod"),
            object: json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "postgres",
                "image": "pg:15", "resources": {"requests": {"cpu": "0.75"}}}]}}),
        };
        assert_eq!(step(&changed, Some(&live)), Step::Recreate);
    }

    #[test]
    fn only_a_controller_reference_with_the_uid_is_control() {
        let owned = |controller: bool, uid: &str| json!({"metadata": {"ownerReferences": [{"uid": uid, "controller": controller}]}});
        assert!(controlled_by(&owned(true, "u1"), "u1"));
        assert!(!controlled_by(&owned(false, "u1"), "u1"));
        assert!(!controlled_by(&owned(true, "u2"), "u1"));
        let labelled_only =
            json!({"metadata": {"labels": {"postgresql.k8s.2ndq.io/cluster": "pg"}}});
        assert!(!controlled_by(&labelled_only, "u1"));
    }

    #[test]
    fn shortest_requeue_wins() {
        let actions = [
            Action::Requeue { after_seconds: 30 },
            Action::Requeue { after_seconds: 5 },
        ];
        assert_eq!(requeue(&actions), Some(5));
        assert_eq!(requeue(&[]), None);
    }

    #[test]
    fn a_requeue_answer_has_a_floor() {
        let now = [Action::Requeue { after_seconds: 0 }];
        assert_eq!(requeue(&now), Some(MIN_REQUEUE_SECONDS));
        let later = [Action::Requeue { after_seconds: 6 }];
        assert_eq!(requeue(&later), Some(6));
    }
}
