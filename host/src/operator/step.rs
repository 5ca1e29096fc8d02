//! What one planned action needs against the live object: its own module, so the applier
//! and the claim rules (`claims`) both use it without importing each other.

/// What one action needs, given what is observed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    Apply,
    /// A Pod whose template changed: pods are immutable, so delete it; the next reconcile
    /// creates it anew from the same PersistentVolumeClaim.
    Recreate,
    /// A Pod made before the applied hash existed that runs the desired template: record
    /// the hash on it (a metadata patch), so that later changes, removals too, are seen.
    Stamp,
    Delete,
    PatchStatus,
    Event,
}
