//! Per-object exponential backoff of failed reconciles: 5 s, 10 s, ... up to 160 s for an
//! object that keeps failing, back to 5 s once it reconciles (a Cluster that failed six times
//! last week must not wait 160 s after its next failure), and no entry kept for an object that
//! succeeds (the map would otherwise grow with every object that ever failed once). The
//! delays are `backon`'s (the backoff crate kube-runtime already uses), without jitter.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use kube::Resource;
use kube::runtime::controller::Action as Requeue;

use super::context::Context;
use super::errors::Result;

/// The first retry after a failure; each further failure doubles it up to [`LAST`].
const FIRST: Duration = Duration::from_secs(5);
const LAST: Duration = Duration::from_secs(160);

fn delays() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(FIRST)
        .with_factor(2.0)
        .with_max_delay(LAST)
        .without_max_times()
        .build()
}

/// The delays still to come, by object (`Kind/namespace/name`).
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, ExponentialBackoff>>);

impl Backoff {
    /// One more failure of `key`: how long to wait before the next attempt.
    pub fn delay(&self, key: String) -> Duration {
        let mut failing = self.0.lock().unwrap();
        // Without a limit of times the iterator never ends; LAST is the safe answer anyway.
        failing
            .entry(key)
            .or_insert_with(delays)
            .next()
            .unwrap_or(LAST)
    }

    /// `key` reconciled: its next failure starts again from the first delay.
    pub fn succeeded(&self, key: &str) {
        self.0.lock().unwrap().remove(key);
    }
}

/// The key of an object in the failure counts.
pub fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// Runs `reconcile` and, when it succeeds, clears the object's failure count (the
/// controller's error policy only sees failures).
pub async fn counted<K, F, Fut>(
    object: Arc<K>,
    shared: Arc<(Arc<Context>, Backoff)>,
    reconcile: F,
) -> Result<Requeue>
where
    K: Resource<DynamicType = ()>,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Requeue>>,
{
    let key = key(&*object);
    let result = reconcile(object, shared.0.clone()).await;
    if result.is_ok() {
        shared.1.succeeded(&key);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_to_a_ceiling_and_a_success_starts_it_again() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| backoff.delay("Backup/ns/b".into()).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 160, 160]);
        assert_eq!(backoff.delay("Backup/ns/other".into()).as_secs(), 5);
        backoff.succeeded("Backup/ns/b");
        assert_eq!(backoff.delay("Backup/ns/b".into()).as_secs(), 5);
        assert_eq!(backoff.delay("Backup/ns/other".into()).as_secs(), 10);
    }
}
