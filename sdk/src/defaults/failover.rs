//! Failover: which standby becomes the primary once the primary has been unhealthy for
//! longer than a delay. The most advanced ready standby that streamed from it wins (received
//! WAL first, then replayed WAL, then the name, so the answer is deterministic), as
//! CloudNativePG chooses; the delay keeps a restart of the primary from costing a promotion.

use crate::policy::Decided;
use crate::types::{FailoverFacts, InstanceFacts, Promotion, Role};

/// How long the default waits after the primary was last seen healthy before it promotes.
pub const FAILOVER_DELAY_SECONDS: u64 = 30;

/// The reason of a failover promotion.
pub const FAILOVER_REASON: &str = "PrimaryUnhealthy";

/// The standby to promote once the primary has been unhealthy for `delay_seconds`: none
/// while it is healthy, never seen (a Cluster still bootstrapping), within the delay, while
/// a promotion already asked for is under way, or when no standby is fit.
pub fn failover(facts: &FailoverFacts, delay_seconds: u64) -> Decided<Option<Promotion>> {
    let Some(unhealthy) = facts.primary_unhealthy_seconds else {
        return Ok(None);
    };
    if unhealthy < delay_seconds.max(1) {
        return Ok(None);
    }
    if facts.target_primary.is_some() && facts.target_primary != facts.current_primary {
        return Ok(None);
    }
    let current = facts.current_primary.as_deref().unwrap_or("the primary");
    Ok(
        most_advanced_standby(facts).map(|standby| Promotion {
            instance: standby.name.clone(),
            reason: FAILOVER_REASON.into(),
            message: format!(
                "{current} has been unhealthy for {unhealthy}s (more than {delay_seconds}s): {} is the most advanced ready streaming standby (received LSN {})",
                standby.name,
                standby.received_lsn.map_or("unknown".into(), format_lsn),
            ),
        }),
    )
}

/// The ready, streaming standby (not the current primary) with the most WAL received, then
/// replayed; ties go to the first name.
pub fn most_advanced_standby(facts: &FailoverFacts) -> Option<&InstanceFacts> {
    let current = facts.current_primary.as_deref();
    facts
        .instances
        .iter()
        .filter(|i| i.role == Role::Replica && i.ready && i.streaming)
        .filter(|i| Some(i.name.as_str()) != current)
        .min_by(|a, b| {
            (b.received_lsn, b.replayed_lsn)
                .cmp(&(a.received_lsn, a.replayed_lsn))
                .then_with(|| a.name.cmp(&b.name))
        })
}

/// An LSN in PostgreSQL's notation (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}
