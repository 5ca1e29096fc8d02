//! The storage of an instance's data volume claim.

use pgwarden_crds::Cluster;

use crate::policy::Decided;
use crate::types::{ClaimFacts, Storage};

/// The size of a data volume when `spec.storage.size` is not set.
pub const DEFAULT_STORAGE_SIZE: &str = "1Gi";

/// The seed's storage: `spec.storage.size` (default [`DEFAULT_STORAGE_SIZE`]) and
/// `spec.storage.storageClass`, whatever the claim observed (`current`): a larger
/// `spec.storage.size` grows the claim, as applying the spec always did, and the default grows
/// nothing on its own. The host refuses a shrink or a change of class of an existing claim; a
/// policy that grows volumes by itself answers a larger size than `current`'s.
pub fn storage(cluster: &Cluster, _current: Option<&ClaimFacts>) -> Decided<Storage> {
    let spec = cluster.spec.storage.clone().unwrap_or_default();
    Ok(Storage {
        size: spec.size.unwrap_or_else(|| DEFAULT_STORAGE_SIZE.into()),
        storage_class: spec.storage_class,
    })
}
