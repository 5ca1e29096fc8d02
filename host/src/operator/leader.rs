//! Leader election with a `coordination.k8s.io/v1` Lease: one replica reconciles, the others
//! wait until the holder stops renewing.
//!
//! Two rules keep two replicas from reconciling at once, as client-go's leader election does:
//! - **Expiry is measured on the observer's own clock.** A standby never compares the holder's
//!   `renewTime` (another machine's clock) with its own: it notes, on its monotonic clock, when
//!   it last saw the record change, and takes over only a whole lease duration after that.
//!   A clock ten minutes ahead, or behind, changes nothing.
//! - **A leader renews against a deadline shorter than the lease** ([`Timing::renew_deadline`]).
//!   Every attempt is cut off when the deadline passes (a request to a hung API server would
//!   otherwise never return), and the leader steps down then: before any standby, which waits
//!   the whole lease from when it saw the last renewal, can take over.
//!
//! The decisions ([`step`], [`renew_budget`], [`Observer`]) are pure; the requests go through
//! [`LeaseApi`] and the wall clock (only written into the Lease, for people) through [`Clock`],
//! so both are injected in tests.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

/// The durations of the election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a standby waits, from when it saw the Lease last change, before taking over.
    pub lease: Duration,
    /// How long a leader may go without a successful renewal before it steps down: shorter
    /// than `lease` by the margin that absorbs the standby's polling and our teardown.
    pub renew_deadline: Duration,
    /// How often a replica reads or renews the Lease.
    pub retry: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Timing {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as observed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// The holder stopped renewing (or gave it up): take it over.
    TakeOver,
    /// Someone else holds it: wait.
    Wait { holder: String },
}

/// When this replica last saw the Lease record change, on its own monotonic clock.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(String, Instant)>,
}

impl Observer {
    /// Notes the record seen at `now` (its `resourceVersion`, which every write changes) and
    /// returns since when it has been this one.
    pub fn observe(&mut self, version: &str, now: Instant) -> Instant {
        match &self.seen {
            Some((v, since)) if v == version => *since,
            _ => {
                self.seen = Some((version.to_string(), now));
                now
            }
        }
    }
}

/// Decides from the observed Lease, who we are, since when the record has been unchanged
/// (`unchanged_since`, see [`Observer`]) and `now`, both on this replica's monotonic clock.
pub fn step(
    observed: Option<&LeaseSpec>,
    identity: &str,
    unchanged_since: Instant,
    now: Instant,
) -> Step {
    let Some(spec) = observed else {
        return Step::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    let seconds = spec.lease_duration_seconds.unwrap_or(15).max(0) as u64;
    let expired = now.saturating_duration_since(unchanged_since) >= Duration::from_secs(seconds);
    if holder.is_empty() || expired {
        Step::TakeOver
    } else {
        Step::Wait { holder }
    }
}

/// How long the next renewal may take, for a leader whose last successful renewal started at
/// `renewed`; `None` once the renew deadline has passed: step down.
pub fn renew_budget(renewed: Instant, timing: &Timing, now: Instant) -> Option<Duration> {
    (renewed + timing.renew_deadline)
        .checked_duration_since(now)
        .filter(|left| !left.is_zero())
}

/// The Lease spec for `identity` holding the lock at `now` (wall clock, informative only).
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

/// The requests on the one Lease.
pub trait LeaseApi {
    fn get(&self) -> impl Future<Output = kube::Result<Option<Lease>>> + Send;
    fn create(&self, lease: &Lease) -> impl Future<Output = kube::Result<Lease>> + Send;
    /// A replace with the `resourceVersion` read: a 409 when someone wrote in between.
    fn replace(&self, lease: &Lease) -> impl Future<Output = kube::Result<Lease>> + Send;
}

/// The Lease `name` through the API server.
pub struct KubeLease {
    pub api: Api<Lease>,
    pub name: String,
}

impl LeaseApi for KubeLease {
    fn get(&self) -> impl Future<Output = kube::Result<Option<Lease>>> + Send {
        self.api.get_opt(&self.name)
    }

    fn create(&self, lease: &Lease) -> impl Future<Output = kube::Result<Lease>> + Send {
        let lease = lease.clone();
        async move { self.api.create(&PostParams::default(), &lease).await }
    }

    fn replace(&self, lease: &Lease) -> impl Future<Output = kube::Result<Lease>> + Send {
        let lease = lease.clone();
        async move {
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
        }
    }
}

/// The wall clock written into the Lease (`acquireTime`, `renewTime`).
pub trait Clock {
    fn now(&self) -> Timestamp;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A Lease-based lock.
pub struct LeaderElection<L = KubeLease, C = SystemClock> {
    leases: L,
    clock: C,
    name: String,
    identity: String,
    timing: Timing,
    observer: Mutex<Observer>,
    /// When the last request round trip on the Lease succeeded: a standby that can reach the
    /// API server is healthy.
    contact: Mutex<Option<Instant>>,
}

impl<L: LeaseApi, C: Clock> LeaderElection<L, C> {
    pub fn new(leases: L, clock: C, name: &str, identity: &str, timing: Timing) -> Self {
        LeaderElection {
            leases,
            clock,
            name: name.into(),
            identity: identity.into(),
            timing,
            observer: Mutex::default(),
            contact: Mutex::default(),
        }
    }

    /// Whether the Lease was read or written successfully within the last lease duration.
    pub fn in_contact(&self) -> bool {
        self.contact
            .lock()
            .unwrap()
            .is_some_and(|at| at.elapsed() < self.timing.lease)
    }

    fn seen(&self, lease: &Lease) -> Instant {
        let version = lease.metadata.resource_version.as_deref().unwrap_or("");
        let now = Instant::now();
        *self.contact.lock().unwrap() = Some(now);
        self.observer.lock().unwrap().observe(version, now)
    }

    /// One attempt: true when we hold the Lease afterwards.
    pub async fn try_acquire(&self) -> kube::Result<bool> {
        let observed = self.leases.get().await?;
        let since = match &observed {
            Some(lease) => self.seen(lease),
            None => {
                *self.contact.lock().unwrap() = Some(Instant::now());
                Instant::now()
            }
        };
        let spec = observed.as_ref().and_then(|l| l.spec.as_ref());
        let now = self.clock.now();
        let written = match step(spec, &self.identity, since, Instant::now()) {
            Step::Wait { holder } => {
                info!(%holder, lease = %self.name, "another replica leads; waiting");
                return Ok(false);
            }
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(held(None, &self.identity, self.timing.lease, now)),
                };
                self.leases.create(&lease).await
            }
            Step::Renew | Step::TakeOver => {
                let mut lease = observed.expect("a Lease was observed");
                lease.spec = Some(held(
                    lease.spec.as_ref(),
                    &self.identity,
                    self.timing.lease,
                    now,
                ));
                self.leases.replace(&lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.seen(&lease);
                Ok(true)
            }
            // Another replica wrote first: not an error, just not ours.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One attempt cut off after `budget`; a timeout is an error like any failed request.
    async fn attempt(&self, budget: Duration) -> Result<bool, String> {
        match tokio::time::timeout(budget, self.try_acquire()).await {
            Ok(Ok(held)) => Ok(held),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {budget:?}")),
        }
    }

    /// Waits until we hold the Lease; returns when the attempt that won it started (the
    /// leader's lease is counted from there: the API server wrote it later).
    pub async fn acquire(&self) -> Instant {
        loop {
            let started = Instant::now();
            match self.attempt(self.timing.renew_deadline).await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "leading");
                    return started;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, lease = %self.name, "cannot read the lease"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews from `renewed` (when the winning attempt started) until a renewal fails for the
    /// renew deadline, or another replica holds the Lease; returns then: stop leading.
    pub async fn keep(&self, mut renewed: Instant) {
        loop {
            tokio::time::sleep(self.timing.retry).await;
            let started = Instant::now();
            let Some(budget) = renew_budget(renewed, &self.timing, started) else {
                return warn!(lease = %self.name, "lease not renewed in time; stepping down");
            };
            match self.attempt(budget).await {
                Ok(true) => renewed = started,
                Ok(false) => return warn!(lease = %self.name, "leadership lost to another replica"),
                Err(e) => warn!(error = %e, lease = %self.name, "cannot renew the lease"),
            }
            if renew_budget(renewed, &self.timing, Instant::now()).is_none() {
                return warn!(lease = %self.name, "lease not renewed in time; stepping down");
            }
        }
    }

    /// Gives the Lease up if we hold it (holder cleared), so a standby takes over at its next
    /// attempt rather than after the lease duration.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.leases.get().await? else {
            return Ok(());
        };
        let spec = lease.spec.as_ref();
        if spec.and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released(spec, self.clock.now()));
        match self.leases.replace(&lease).await {
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests;
