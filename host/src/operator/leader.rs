//! Leader election with a `coordination.k8s.io/v1` Lease: one replica reconciles, the others
//! wait until the holder stops renewing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// What to do with the Lease as observed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// The holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait { holder: String },
}

/// Decides from the observed Lease, who we are and the time.
pub fn step(observed: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Step {
    let Some(spec) = observed else {
        return Step::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    let expired = match &spec.renew_time {
        Some(MicroTime(renewed)) => renewed
            .checked_add(duration)
            .map(|until| until < now)
            .unwrap_or(true),
        None => true,
    };
    if holder.is_empty() || expired {
        Step::TakeOver
    } else {
        Step::Wait { holder }
    }
}

/// The Lease spec for `identity` holding the lock at `now`.
pub fn held(
    previous: Option<&LeaseSpec>,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let same_holder = previous.and_then(|p| p.holder_identity.as_deref()) == Some(identity);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(duration.as_secs() as i32),
        acquire_time: if same_holder {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if same_holder {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// The Lease spec after its holder gave it up: no holder, so [`step`] says `TakeOver`.
pub fn released(previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: previous.and_then(|p| p.acquire_time.clone()),
        renew_time: Some(MicroTime(now)),
        lease_transitions: previous.and_then(|p| p.lease_transitions),
        ..LeaseSpec::default()
    }
}

/// A Lease-based lock.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElection {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// One attempt: true when we hold the Lease afterwards.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let observed = self.api.get_opt(&self.name).await?;
        let spec = observed.as_ref().and_then(|l| l.spec.as_ref());
        let now = Timestamp::now();
        match step(spec, &self.identity, now) {
            Step::Wait { holder } => {
                info!(%holder, lease = %self.name, "another replica leads; waiting");
                Ok(false)
            }
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(held(None, &self.identity, self.duration, now)),
                };
                conflict_is_false(self.api.create(&PostParams::default(), &lease).await)
            }
            Step::Renew | Step::TakeOver => {
                let mut lease = observed.expect("a Lease was observed");
                lease.spec = Some(held(
                    lease.spec.as_ref(),
                    &self.identity,
                    self.duration,
                    now,
                ));
                conflict_is_false(
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await,
                )
            }
        }
    }

    /// Waits until we hold the Lease.
    pub async fn acquire(&self) -> kube::Result<()> {
        loop {
            if self.try_acquire().await? {
                info!(lease = %self.name, identity = %self.identity, "leading");
                return Ok(());
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Gives the Lease up if we hold it (holder cleared), so a standby takes over at its next
    /// attempt rather than after the lease duration.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.as_ref();
        if spec.and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released(spec, Timestamp::now()));
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
        .map(|_| ())
    }

    /// Renews until renewal fails for a whole lease duration; returns when leadership is lost.
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return warn!(lease = %self.name, "leadership lost to another replica"),
                Err(e) => warn!(error = %e, "cannot renew the lease"),
            }
            if last_ok.elapsed() > self.duration {
                return warn!(lease = %self.name, "lease not renewed in time; stepping down");
            }
        }
    }
}

/// A 409 Conflict means another replica wrote first: not an error, just not ours.
fn conflict_is_false<T>(result: kube::Result<T>) -> kube::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn lease(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decides_from_the_observed_lease() {
        assert_eq!(step(None, "a", at(0)), Step::Create);
        assert_eq!(step(Some(&lease("a", 0)), "a", at(5)), Step::Renew);
        assert_eq!(
            step(Some(&lease("b", 0)), "a", at(10)),
            Step::Wait { holder: "b".into() }
        );
        assert_eq!(step(Some(&lease("b", 0)), "a", at(16)), Step::TakeOver);
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once() {
        let ours = lease("a", 0);
        let given_up = released(Some(&ours), at(5));
        assert_eq!(given_up.holder_identity, None);
        assert_eq!(step(Some(&given_up), "b", at(5)), Step::TakeOver);
        let taken = held(Some(&given_up), "b", Duration::from_secs(15), at(5));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
    }

    #[test]
    fn taking_over_counts_a_transition_renewing_does_not() {
        let taken = held(Some(&lease("b", 0)), "a", Duration::from_secs(15), at(20));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
        let renewed = held(Some(&taken), "a", Duration::from_secs(15), at(25));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(25))));
    }
}
