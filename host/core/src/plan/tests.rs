//! The planner and guardrails on decisions made natively by the SDK's defaults: no wasm, no
//! API server; the assertions are on the Actions.

use chrono::{DateTime, Utc};
use pgwarden_crds::settings::{ARCHIVE_SETTINGS_KEY, SETTINGS_MOUNT_PATH};
use pgwarden_crds::{Backup, BackupPhase, Cluster, ScheduledBackup};
use pgwarden_sdk::defaults;
use pgwarden_sdk::types::{ScheduleDecision, ScheduledRun, Transition};
use serde_json::{Value, json};

use super::*;

const UID: &str = "6f1c2f9e-0000-4000-8000-000000000001";

fn cluster() -> Cluster {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": { "name": "pg", "namespace": "prod", "uid": UID },
        "spec": { "instances": 2, "backup": {
            "destinationPath": "s3://backups/pg",
            "s3Credentials": { "accessKeyId": { "name": "aws-creds", "key": "ID" }, "secretAccessKey": { "name": "aws-creds", "key": "SECRET" } },
            "wal": { "compression": "gzip", "encryption": "AES256" } } }
    }))
    .unwrap()
}

fn backup(name: &str, cluster: &str) -> Backup {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Backup",
        "metadata": { "name": name, "namespace": "prod", "uid": format!("uid-{name}") },
        "spec": { "cluster": { "name": cluster } }
    }))
    .unwrap()
}

fn now() -> DateTime<Utc> {
    "2026-11-25T10:00:00Z".parse().unwrap()
}

fn decisions(cluster: &Cluster) -> ClusterDecisions {
    let pods = (0..2)
        .map(|i| defaults::instance_pod(cluster, i).unwrap().build())
        .collect();
    ClusterDecisions {
        archive: defaults::archive_settings(cluster).unwrap(),
        pods,
        storage: vec![defaults::storage(cluster, None).unwrap(); 2],
    }
}

fn applied<'a>(actions: &'a [Action], kind: &str, name: &str) -> &'a Value {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Apply { target, object } if target.kind == kind && target.name == name => {
                Some(object)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in {actions:#?}"))
}

#[test]
fn a_cluster_plans_its_objects_all_owned_and_labelled() {
    let cluster = cluster();
    let actions = plan_cluster(&cluster, &decisions(&cluster)).unwrap();
    let kinds: Vec<String> = actions
        .iter()
        .map(|a| a.target().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount prod/pg-agent",
            "Role prod/pg-agent",
            "RoleBinding prod/pg-agent",
            "ConfigMap prod/pg-settings",
            "PersistentVolumeClaim prod/pg-1",
            "Pod prod/pg-1",
            // The spec asks for 2 and the policy answered 2 templates: one instance runs
            // until standbys stream (a second would archive into the same destination).
            "Service prod/pg-rw",
            "Service prod/pg-r",
            "Service prod/pg-any",
        ]
    );
    for action in &actions {
        let Action::Apply { object, .. } = action else {
            panic!("{action:?}")
        };
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], UID);
        assert_eq!(object["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            object["metadata"]["labels"]["postgresql.k8s.2ndq.io/cluster"],
            "pg"
        );
    }
    guardrails::check(&subject(&cluster), &actions).unwrap();
}

#[test]
fn the_agent_runs_as_its_clusters_account_with_a_role_of_its_own() {
    let cluster = cluster();
    let actions = plan_cluster(&cluster, &decisions(&cluster)).unwrap();
    let pod = applied(&actions, "Pod", "pg-1");
    assert_eq!(pod["spec"]["serviceAccountName"], "pg-agent");
    let role = applied(&actions, "Role", "pg-agent");
    assert_eq!(
        role["rules"],
        json!([
            { "apiGroups": ["postgresql.k8s.2ndq.io"], "resources": ["backups"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["postgresql.k8s.2ndq.io"], "resources": ["backups/status"], "verbs": ["get", "patch"] },
            // Its own Cluster's status only: another Cluster's is not its to write.
            { "apiGroups": ["postgresql.k8s.2ndq.io"], "resources": ["clusters/status"], "resourceNames": ["pg"], "verbs": ["get", "patch"] },
        ])
    );
    let binding = applied(&actions, "RoleBinding", "pg-agent");
    assert_eq!(
        binding["roleRef"],
        json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pg-agent" })
    );
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "pg-agent", "namespace": "prod" }])
    );
}

#[test]
fn a_template_running_as_another_account_is_refused() {
    let refused = planned_with(|spec| spec.service_account_name = Some("admin".into()));
    assert_eq!(
        refused,
        "refused Pod prod/pg-1: it refers to ServiceAccount admin (spec.serviceAccountName), which does not belong to Cluster pg"
    );
}

#[test]
fn guardrails_keep_roles_to_the_agents_rules() {
    let cluster = cluster();
    let subject = subject(&cluster);
    let mut role = serde_json::to_value(agent_role(&cluster)).unwrap();
    let target = reference(&agent_role(&cluster));
    let apply_role = |object: Value| Action::Apply {
        target: target.clone(),
        object,
    };
    guardrails::check_one(&subject, &apply_role(role.clone())).unwrap();
    role["rules"][0]["resources"] = json!(["secrets"]);
    let err = guardrails::check_one(&subject, &apply_role(role)).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "refused Role prod/pg-agent: a Role may grant only the instance agent's rules"
        ),
        "{err}"
    );
    let mut binding = serde_json::to_value(agent_role_binding(&cluster)).unwrap();
    let target = reference(&agent_role_binding(&cluster));
    binding["roleRef"]["kind"] = json!("ClusterRole");
    binding["roleRef"]["name"] = json!("cluster-admin");
    let err = guardrails::check_one(
        &subject,
        &Action::Apply {
            target: target.clone(),
            object: binding.clone(),
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused RoleBinding prod/pg-agent: a RoleBinding may bind only a Role of its namespace"
    );
    binding["roleRef"]["kind"] = json!("Role");
    binding["subjects"][0]["namespace"] = json!("kube-system");
    let err = guardrails::check_one(
        &subject,
        &Action::Apply {
            target,
            object: binding,
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("may bind only ServiceAccounts of namespace prod"),
        "{err}"
    );
}

#[test]
fn the_settings_config_map_holds_the_decided_archive_settings() {
    let cluster = cluster();
    let actions = plan_cluster(&cluster, &decisions(&cluster)).unwrap();
    let config = applied(&actions, "ConfigMap", "pg-settings");
    let settings: Value =
        serde_json::from_str(config["data"][ARCHIVE_SETTINGS_KEY].as_str().unwrap()).unwrap();
    assert_eq!(
        settings,
        json!({
            "destinationPath": "s3://backups/pg", "serverName": "pg", "compression": "gzip", "encryption": "AES256",
            "maxParallel": 1, "archiveTimeoutSeconds": 300, "archiver": "barman-cloud",
        })
    );
}

#[test]
fn pods_run_the_agent_with_credentials_by_secret_name_only() {
    let cluster = cluster();
    let actions = plan_cluster(&cluster, &decisions(&cluster)).unwrap();
    let pod = applied(&actions, "Pod", "pg-1");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["pgwarden", "instance", "run"]));
    let env = container["env"].as_array().unwrap();
    let secret = env
        .iter()
        .find(|e| e["name"] == "AWS_SECRET_ACCESS_KEY")
        .unwrap();
    assert_eq!(
        secret,
        &json!({ "name": "AWS_SECRET_ACCESS_KEY", "valueFrom": { "secretKeyRef": { "name": "aws-creds", "key": "SECRET" } } })
    );
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == SETTINGS_MOUNT_PATH && m["name"] == "settings")
    );
    assert_eq!(
        pod["metadata"]["labels"]["postgresql.k8s.2ndq.io/role"],
        "primary"
    );
    let claim = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str());
    assert_eq!(claim, Some("pg-1"));
}

#[test]
fn a_template_reading_an_unnamed_secret_is_refused() {
    let cluster = cluster();
    let mut decisions = decisions(&cluster);
    let pod = defaults::instance_pod(&cluster, 0).unwrap();
    let mut template = pod.build();
    let env = template.spec.as_mut().unwrap().containers[0]
        .env
        .as_mut()
        .unwrap();
    env.push(pgwarden_sdk::defaults::secret_env(
        "EXTRA",
        &pgwarden_crds::SecretKeySelector {
            name: "db-admin".into(),
            key: "password".into(),
        },
    ));
    decisions.pods[0] = template;
    let err = plan_cluster(&cluster, &decisions).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "refused Pod prod/pg-1: it refers to Secret db-admin (spec.containers[0].env["
        ) && err.ends_with("].valueFrom.secretKeyRef), which does not belong to Cluster pg"),
        "{err}"
    );
}

/// The first instance's template changed by `edit`, planned: the guardrail's verdict.
fn planned_with(edit: impl FnOnce(&mut k8s_openapi::api::core::v1::PodSpec)) -> String {
    let cluster = cluster();
    let mut decisions = decisions(&cluster);
    edit(decisions.pods[0].spec.as_mut().unwrap());
    plan_cluster(&cluster, &decisions)
        .map(|_| "planned".to_string())
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn templates_reaching_other_secrets_or_the_node_are_refused() {
    use k8s_openapi::api::core::v1::{
        EnvFromSource, HostPathVolumeSource, ProjectedVolumeSource, SecretEnvSource,
        SecretProjection, SecurityContext, Volume, VolumeProjection,
    };
    let env_from = planned_with(|spec| {
        spec.containers[0].env_from = Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: "db-admin".into(),
                optional: None,
            }),
            ..Default::default()
        }]);
    });
    assert_eq!(
        env_from,
        "refused Pod prod/pg-1: it refers to Secret db-admin (spec.containers[0].envFrom[0].secretRef), which does not belong to Cluster pg"
    );
    let projected = planned_with(|spec| {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "all".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    secret: Some(SecretProjection {
                        name: "db-admin".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    });
    assert!(
        projected.starts_with("refused Pod prod/pg-1: it refers to Secret db-admin (spec.volumes[")
            && projected.contains("].projected.sources[0].secret)"),
        "{projected}"
    );
    let host_path = planned_with(|spec| {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "root".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                type_: None,
            }),
            ..Default::default()
        });
    });
    assert!(
        host_path.starts_with("refused Pod prod/pg-1: spec.volumes[")
            && host_path.contains("].hostPath is not a field a policy may set"),
        "{host_path}"
    );
    let privileged = planned_with(|spec| {
        spec.containers[0].security_context = Some(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        });
    });
    assert!(
        privileged.contains("spec.containers[0].securityContext.privileged asks for privileges"),
        "{privileged}"
    );
    let host_network = planned_with(|spec| spec.host_network = Some(true));
    assert!(host_network.contains("hostNetwork"), "{host_network}");
    // The Cluster's own credential Secret by envFrom is fine.
    let own = planned_with(|spec| {
        spec.containers[0].env_from = Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: "aws-creds".into(),
                optional: None,
            }),
            ..Default::default()
        }]);
    });
    assert_eq!(own, "planned");
}

#[test]
fn guardrails_refuse_foreign_kinds_namespaces_and_owners() {
    let subject = subject(&cluster());
    let secret = ObjectRef {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some("prod".into()),
        name: "x".into(),
    };
    let apply = Action::Apply {
        target: secret,
        object: json!({ "metadata": { "ownerReferences": [{ "uid": UID }] } }),
    };
    assert_eq!(
        guardrails::check_one(&subject, &apply)
            .unwrap_err()
            .to_string(),
        "refused Secret prod/x: kind v1/Secret is not one the operator manages"
    );

    let foreign = reference(&backup("theirs", "other"));
    let delete = Action::Delete {
        target: foreign,
        owner_uids: vec![],
        cluster: Some("other".into()),
    };
    assert_eq!(
        guardrails::check_one(&subject, &delete)
            .unwrap_err()
            .to_string(),
        "refused Backup prod/theirs: it is not owned by Cluster prod/pg"
    );

    let mut elsewhere = reference(&backup("b", "pg"));
    elsewhere.namespace = Some("kube-system".into());
    let patch = Action::PatchStatus {
        target: elsewhere,
        status: json!({}),
    };
    assert!(matches!(
        guardrails::check_one(&subject, &patch),
        Err(GuardrailError::WrongNamespace { .. })
    ));

    let status_of_other = Action::PatchStatus {
        target: reference(&backup("b", "pg")),
        status: json!({}),
    };
    assert!(matches!(
        guardrails::check_one(&subject, &status_of_other),
        Err(GuardrailError::NotOwned { .. })
    ));
}

#[test]
fn a_backup_that_starts_gets_its_start_time_pod_and_store() {
    let (cluster, backup) = (cluster(), backup("b1", "pg"));
    let settings = defaults::backup_settings(
        &backup,
        &cluster,
        &[pgwarden_sdk::types::Instance {
            name: "pg-1".into(),
            role: pgwarden_sdk::types::Role::Primary,
            ready: true,
        }],
    )
    .unwrap();
    let t = Transition {
        phase: BackupPhase::Running,
        reason: "Started".into(),
        message: "running".into(),
        requeue_after_seconds: Some(10),
    };
    let actions = plan_backup(&backup, Some(&cluster), &t, Some(&settings), now());
    assert_eq!(actions.len(), 3, "{actions:#?}");
    let Action::PatchStatus { status, .. } = &actions[0] else {
        panic!()
    };
    assert_eq!(
        status,
        &json!({
            "phase": "running", "reason": "Started", "message": "running", "startedAt": "2026-11-25T10:00:00Z",
            "instanceID": { "podName": "pg-1" }, "destinationPath": "s3://backups/pg", "serverName": "pg",
        })
    );
    assert!(
        matches!(&actions[1], Action::Event { event_type: EventType::Normal, reason, .. } if reason == "Started")
    );
    assert_eq!(actions[2], Action::Requeue { after_seconds: 10 });
    guardrails::check(&backup_subject(&backup), &actions).unwrap();
}

#[test]
fn an_unchanged_backup_is_not_patched_and_a_failure_is_a_warning() {
    let mut backup = backup("b1", "pg");
    let t = Transition {
        phase: BackupPhase::Failed,
        reason: "PodGone".into(),
        message: "pod pg-1 vanished".into(),
        requeue_after_seconds: None,
    };
    let actions = plan_backup(&backup, None, &t, None, now());
    let Action::PatchStatus { status, .. } = &actions[0] else {
        panic!()
    };
    assert_eq!(status["stoppedAt"], "2026-11-25T10:00:00Z");
    assert!(matches!(
        &actions[1],
        Action::Event {
            event_type: EventType::Warning,
            ..
        }
    ));
    backup.status = Some(
        serde_json::from_value(
            json!({ "phase": "failed", "reason": "PodGone", "message": "pod pg-1 vanished" }),
        )
        .unwrap(),
    );
    assert!(plan_backup(&backup, None, &t, None, now()).is_empty());
}

#[test]
fn a_scheduled_run_creates_a_labelled_backup_owned_as_asked() {
    let cluster = cluster();
    let scheduled: ScheduledBackup = serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "ScheduledBackup",
        "metadata": { "name": "nightly", "namespace": "prod", "uid": "uid-nightly" },
        "spec": { "schedule": "0 2 * * *", "cluster": { "name": "pg" }, "backupOwnerReference": "cluster" }
    }))
    .unwrap();
    let at: DateTime<Utc> = "2026-11-25T02:00:00Z".parse().unwrap();
    let next: DateTime<Utc> = "2026-11-26T02:00:00Z".parse().unwrap();
    let decision = ScheduleDecision {
        create: Some(ScheduledRun {
            name: "nightly-20261125020000".into(),
            scheduled_at: at,
        }),
        next_run: Some(next),
    };
    let actions = plan_schedule(&scheduled, Some(&cluster), &decision, now());
    let backup = applied(&actions, "Backup", "nightly-20261125020000");
    assert_eq!(backup["spec"]["cluster"]["name"], "pg");
    assert_eq!(backup["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(
        backup["metadata"]["labels"]["postgresql.k8s.2ndq.io/cluster"],
        "pg"
    );
    // The Backup first, then the status recording its run (a stop in between must not lose it).
    let backup_at = actions
        .iter()
        .position(|a| matches!(a, Action::Apply { target, .. } if target.kind == "Backup"));
    let status_at = actions
        .iter()
        .position(|a| matches!(a, Action::PatchStatus { .. }));
    assert!(backup_at.unwrap() < status_at.unwrap(), "{actions:?}");
    let status = actions
        .iter()
        .find_map(|a| match a {
            Action::PatchStatus { status, .. } => Some(status),
            _ => None,
        })
        .unwrap();
    assert_eq!(status["lastScheduleTime"], "2026-11-25T02:00:00Z");
    assert_eq!(status["nextScheduleTime"], "2026-11-26T02:00:00Z");
    assert_eq!(
        actions.last(),
        Some(&Action::Requeue {
            after_seconds: 16 * 3600
        })
    );
    guardrails::check(&scheduled_subject(&scheduled), &actions).unwrap();
}

#[test]
fn claims_take_the_policys_storage_and_the_observed_claim_bounds_it() {
    use pgwarden_sdk::types::{ClaimFacts, Storage};
    let cluster = cluster();
    let mut decisions = decisions(&cluster);
    decisions.storage = vec![
        Storage {
            size: "5Gi".into(),
            storage_class: None,
        };
        2
    ];
    let live = |t: &ObjectRef| {
        (t.name == "pg-1").then(|| {
            json!({"metadata": {"name": "pg-1"}, "spec": {"storageClassName": "standard",
                "resources": {"requests": {"storage": "2Gi"}}}})
        })
    };
    let claims = instance_claims(&cluster, live);
    let observed = ClaimFacts {
        name: "pg-1".into(),
        size: "2Gi".into(),
        storage_class: Some("standard".into()),
    };
    // One instance planned (MAX_INSTANCES), so one claim.
    assert_eq!(claims, vec![Some(observed)]);
    let actions = plan_cluster_observed(&cluster, &decisions, Bootstrap::Fresh, &claims).unwrap();
    let grown = applied(&actions, "PersistentVolumeClaim", "pg-1");
    assert_eq!(grown["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(
        grown["spec"]["storageClassName"], "standard",
        "the claim's class kept"
    );
    let fresh = plan_cluster_observed(&cluster, &decisions, Bootstrap::Fresh, &[]).unwrap();
    let new = applied(&fresh, "PersistentVolumeClaim", "pg-1");
    assert!(new["spec"].get("storageClassName").is_none(), "{new}");

    decisions.storage[0].size = "1Gi".into();
    let refused = plan_cluster_observed(&cluster, &decisions, Bootstrap::Fresh, &claims);
    assert_eq!(
        refused.unwrap_err(),
        GuardrailError::ClaimShrinks {
            claim: "PersistentVolumeClaim prod/pg-1".into(),
            desired: "1Gi".into(),
            observed: "2Gi".into(),
        }
    );
    decisions.storage.clear();
    let none = plan_cluster_observed(&cluster, &decisions, Bootstrap::Fresh, &[]).unwrap_err();
    assert!(
        none.to_string().contains("no storage for instance 0"),
        "{none}"
    );
}
