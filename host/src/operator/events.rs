//! Events (`events.k8s.io/v1`), one per distinct message: kube's `Recorder` folds every Event
//! of the same reason into one series and keeps its first note, so a message that changes
//! (a missing Secret, then a missing key) would never reach the user. Here an Event's name
//! derives from what it says: a repeat bumps its series, a new message is a new Event.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::errors::Result;
use pgwarden_core::plan::MANAGER;

/// Who reports: the controller and this replica.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub instance: String,
}

/// The name of the Event that says `note` with `reason` about `regarding`: stable, so the
/// same message again is the same Event.
pub fn event_name(regarding: &ObjectReference, type_: &str, reason: &str, note: &str) -> String {
    let mut hash = Sha256::new();
    for part in [
        regarding.kind.as_deref(),
        regarding.uid.as_deref(),
        Some(type_),
        Some(reason),
        Some(note),
    ] {
        hash.update(part.unwrap_or_default().as_bytes());
        hash.update([0]);
    }
    let name = regarding.name.as_deref().unwrap_or("object");
    let prefix: String = name.chars().take(200).collect();
    format!("{prefix}.{}", &hex::encode(hash.finalize())[..16])
}

/// The Event to create (pure).
pub fn event(
    reporter: &Reporter,
    regarding: &ObjectReference,
    type_: &str,
    reason: &str,
    note: &str,
    now: Timestamp,
) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(regarding, type_, reason, note)),
            namespace: regarding.namespace.clone(),
            ..Default::default()
        },
        action: Some("Reconcile".into()),
        reason: Some(reason.chars().take(128).collect()),
        note: Some(note.chars().take(1024).collect()),
        type_: Some(type_.into()),
        regarding: Some(regarding.clone()),
        event_time: Some(MicroTime(now)),
        reporting_controller: Some(MANAGER.into()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Default::default()
    }
}

/// Creates the Event, or counts one more occurrence of it when it already exists.
pub async fn publish(client: &kube::Client, event: Event) -> Result<()> {
    let namespace = event
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let name = event.metadata.name.clone().unwrap_or_default();
            let existing = api.get(&name).await?;
            let count = existing.series.map_or(2, |s| s.count + 1);
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(Timestamp::now()),
            };
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "series": series })),
            )
            .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> ObjectReference {
        ObjectReference {
            kind: Some("Cluster".into()),
            name: Some("pg".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_message_is_a_new_event_the_same_one_is_not() {
        let a = event_name(
            &pod(),
            "Warning",
            "SecretNotFound",
            "Secret ns/aws-creds not found",
        );
        let b = event_name(
            &pod(),
            "Warning",
            "SecretNotFound",
            "Secret ns/aws-creds has no key K",
        );
        assert_ne!(a, b);
        assert_eq!(
            a,
            event_name(
                &pod(),
                "Warning",
                "SecretNotFound",
                "Secret ns/aws-creds not found"
            )
        );
        assert!(a.starts_with("pg."));
    }

    #[test]
    fn the_event_says_who_what_and_why() {
        let reporter = Reporter {
            instance: "op-1".into(),
        };
        let e = event(
            &reporter,
            &pod(),
            "Warning",
            "PolicyDenied",
            "denied",
            Timestamp::from_second(1).unwrap(),
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(e.reporting_controller.as_deref(), Some(MANAGER));
        assert_eq!(e.note.as_deref(), Some("denied"));
        assert_eq!(e.regarding.unwrap().name.as_deref(), Some("pg"));
    }
}
