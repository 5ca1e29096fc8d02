use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use k8s_openapi::jiff::SignedDuration;

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

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn decides_from_when_the_record_last_changed() {
    let t0 = Instant::now();
    assert_eq!(step(None, "a", t0, t0), Step::Create);
    assert_eq!(
        step(Some(&lease("a", 0)), "a", t0, t0 + secs(5)),
        Step::Renew
    );
    let wait = Step::Wait { holder: "b".into() };
    assert_eq!(step(Some(&lease("b", 0)), "a", t0, t0 + secs(14)), wait);
    assert_eq!(
        step(Some(&lease("b", 0)), "a", t0, t0 + secs(15)),
        Step::TakeOver
    );
}

/// The old rule compared the holder's renewTime with the local wall clock: a standby whose
/// clock ran 16 s ahead took over a live leader at once. Now the holder's timestamps do not
/// matter: only how long this replica has seen the same record.
#[test]
fn the_holders_timestamps_do_not_count() {
    let t0 = Instant::now();
    let renewed_ten_minutes_ago = lease("b", 0);
    let wait = Step::Wait { holder: "b".into() };
    assert_eq!(
        step(Some(&renewed_ten_minutes_ago), "a", t0, t0 + secs(1)),
        wait
    );
    let mut observer = Observer::default();
    assert_eq!(observer.observe("7", t0), t0);
    assert_eq!(
        observer.observe("7", t0 + secs(10)),
        t0,
        "same record: still since t0"
    );
    assert_eq!(
        observer.observe("8", t0 + secs(12)),
        t0 + secs(12),
        "renewed: counted anew"
    );
}

#[test]
fn the_renew_budget_ends_at_the_deadline() {
    let timing = Timing::default();
    let t0 = Instant::now();
    assert_eq!(renew_budget(t0, &timing, t0 + secs(4)), Some(secs(6)));
    assert_eq!(renew_budget(t0, &timing, t0 + secs(10)), None);
    assert_eq!(renew_budget(t0, &timing, t0 + secs(11)), None);
    assert!(timing.renew_deadline < timing.lease);
}

#[test]
fn a_released_lease_is_taken_over_at_once() {
    let t0 = Instant::now();
    let given_up = released(Some(&lease("a", 0)), at(5));
    assert_eq!(given_up.holder_identity, None);
    assert_eq!(step(Some(&given_up), "b", t0, t0), Step::TakeOver);
    let taken = held(Some(&given_up), "b", secs(15), at(5));
    assert_eq!(taken.holder_identity.as_deref(), Some("b"));
}

#[test]
fn taking_over_counts_a_transition_renewing_does_not() {
    let taken = held(Some(&lease("b", 0)), "a", secs(15), at(20));
    assert_eq!(taken.lease_transitions, Some(1));
    assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
    let renewed = held(Some(&taken), "a", secs(15), at(25));
    assert_eq!(renewed.lease_transitions, Some(1));
    assert_eq!(renewed.acquire_time, Some(MicroTime(at(20))));
    assert_eq!(renewed.renew_time, Some(MicroTime(at(25))));
}

/// One Lease in memory, shared by replicas, with the API server's optimistic concurrency; a
/// replica's handle can be made to hang (every request pending forever).
#[derive(Clone, Default)]
struct Fake {
    lease: Arc<Mutex<Option<Lease>>>,
    version: Arc<AtomicU64>,
    hung: Arc<AtomicBool>,
}

impl Fake {
    fn handle(&self) -> Fake {
        Fake {
            hung: Arc::default(),
            ..self.clone()
        }
    }

    fn holder(&self) -> Option<String> {
        let lease = self.lease.lock().unwrap();
        lease.as_ref()?.spec.as_ref()?.holder_identity.clone()
    }

    async fn unless_hung(&self) {
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn write(&self, lease: &Lease, create: bool) -> kube::Result<Lease> {
        let mut stored = self.lease.lock().unwrap();
        let current = stored
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        if create != stored.is_none() || (!create && lease.metadata.resource_version != current) {
            let status = kube::core::Status::failure("conflict", "Conflict").with_code(409);
            return Err(kube::Error::Api(Box::new(status)));
        }
        let mut lease = lease.clone();
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        lease.metadata.resource_version = Some(version.to_string());
        *stored = Some(lease.clone());
        Ok(lease)
    }
}

impl LeaseApi for Fake {
    async fn get(&self) -> kube::Result<Option<Lease>> {
        self.unless_hung().await;
        Ok(self.lease.lock().unwrap().clone())
    }

    async fn create(&self, lease: &Lease) -> kube::Result<Lease> {
        self.unless_hung().await;
        self.write(lease, true)
    }

    async fn replace(&self, lease: &Lease) -> kube::Result<Lease> {
        self.unless_hung().await;
        self.write(lease, false)
    }
}

/// A wall clock off by `.0` seconds from the system's.
struct Skewed(i64);

impl Clock for Skewed {
    fn now(&self) -> Timestamp {
        Timestamp::now() + SignedDuration::from_secs(self.0)
    }
}

/// Short durations, so a test takes seconds (the Lease records whole seconds).
fn fast() -> Timing {
    Timing {
        lease: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1300),
        retry: Duration::from_millis(200),
    }
}

fn replica(store: &Fake, identity: &str, skew: i64) -> LeaderElection<Fake, Skewed> {
    LeaderElection::new(store.handle(), Skewed(skew), "lease", identity, fast())
}

/// A renewal that never answers: the leader steps down within the renew deadline (before
/// its lease could expire for a standby), instead of waiting on the request forever.
#[tokio::test]
async fn a_renewal_that_hangs_makes_the_leader_step_down_within_the_lease() {
    let store = Fake::default();
    let leader = replica(&store, "a", 0);
    let won = leader.acquire().await;
    leader.leases.hung.store(true, Ordering::SeqCst);
    let kept = tokio::time::timeout(fast().lease * 4, leader.keep(won)).await;
    assert!(
        kept.is_ok(),
        "the leader still leads with its renewals hung"
    );
    let led_for = won.elapsed();
    assert!(
        led_for < fast().lease,
        "stepped down after {led_for:?}, lease {:?}",
        fast().lease
    );
    assert!(
        led_for >= fast().renew_deadline,
        "stepped down early: {led_for:?}"
    );
}

/// A standby whose wall clock runs ten minutes ahead sees the leader's renewTime ten minutes
/// old at every look, and never takes over while the leader renews; once the leader stops,
/// it takes over a lease duration after it saw the last renewal.
#[tokio::test]
async fn a_standby_ten_minutes_ahead_does_not_take_over_a_live_leader() {
    let store = Fake::default();
    let leader = replica(&store, "a", 0);
    let standby = replica(&store, "b", 600);
    let won = leader.acquire().await;
    let watching = async {
        let start = Instant::now();
        while start.elapsed() < fast().lease * 3 {
            assert!(
                !standby.try_acquire().await.unwrap(),
                "took over a live leader"
            );
            tokio::time::sleep(fast().retry).await;
        }
    };
    tokio::select! {
        () = watching => {}
        () = leader.keep(won) => panic!("the leader lost its lease"),
    }
    assert_eq!(store.holder().as_deref(), Some("a"));
    // The leader is gone (no renewal, no release): the standby waits out one lease.
    let stopped = Instant::now();
    let took_over = standby.acquire().await;
    let waited = took_over.duration_since(stopped);
    assert_eq!(store.holder().as_deref(), Some("b"));
    assert!(
        waited + fast().retry >= fast().lease,
        "took over after {waited:?}"
    );
    assert!(
        waited < fast().lease + fast().retry * 3,
        "took over late: {waited:?}"
    );
}

/// A replica is in contact (healthy, so ready) once a request on the Lease has answered.
#[tokio::test]
async fn contact_follows_the_requests() {
    let store = Fake::default();
    let standby = replica(&store, "b", 0);
    assert!(!standby.in_contact());
    assert!(standby.try_acquire().await.unwrap());
    assert!(standby.in_contact());
}
