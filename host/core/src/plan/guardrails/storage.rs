//! The storage invariants the host keeps whatever the policy answers. The policy decides an
//! instance's storage (size and class, and when to grow); the host refuses what would lose
//! data or cannot be done to a claim that exists:
//!
//! - a claim never shrinks: a smaller size than the observed claim's is refused (the data on
//!   it would not fit, and the API server refuses it anyway, later and less clearly);
//! - the storage class of an existing claim never changes: a claim's class is fixed when it
//!   is made, and moving the data to another class means a new claim. A policy that names no
//!   class keeps the claim's ([`settle`]).
//!
//! Growth is a larger size applied to the existing claim (the operator's `apply::step`).

use pgwarden_sdk::types::{ClaimFacts, Storage};

use crate::plan::errors::GuardrailError;
use crate::quantity::nanos;

/// The storage to apply to claim `claim` (`PersistentVolumeClaim <ns>/<name>`), given what
/// the policy answered and the claim as observed (`None`: not created yet). Refuses a size
/// that is not a positive quantity, a shrink and a change of class; a policy that names no
/// class keeps the existing claim's.
pub fn settle(
    claim: &str,
    storage: &Storage,
    current: Option<&ClaimFacts>,
) -> Result<Storage, GuardrailError> {
    let desired =
        nanos(&storage.size)
            .filter(|n| *n > 0)
            .ok_or_else(|| GuardrailError::Invalid {
                object: claim.to_string(),
                detail: format!(
                    "the policy's storage size {:?} is not a positive quantity (such as 10Gi)",
                    storage.size
                ),
            })?;
    let Some(current) = current else {
        return Ok(storage.clone());
    };
    if nanos(&current.size).is_some_and(|observed| desired < observed) {
        return Err(GuardrailError::ClaimShrinks {
            claim: claim.to_string(),
            desired: storage.size.clone(),
            observed: current.size.clone(),
        });
    }
    match (&storage.storage_class, &current.storage_class) {
        (Some(desired), observed) if Some(desired) != observed.as_ref() => {
            Err(GuardrailError::ClaimClassChanges {
                claim: claim.to_string(),
                desired: desired.clone(),
                observed: observed.clone().unwrap_or_else(|| "none".into()),
            })
        }
        (_, observed) => Ok(Storage {
            size: storage.size.clone(),
            storage_class: observed.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIM: &str = "PersistentVolumeClaim prod/pg-1";

    fn storage(size: &str, class: Option<&str>) -> Storage {
        Storage {
            size: size.into(),
            storage_class: class.map(str::to_string),
        }
    }

    fn claim(size: &str, class: Option<&str>) -> ClaimFacts {
        ClaimFacts {
            name: "pg-1".into(),
            size: size.into(),
            storage_class: class.map(str::to_string),
        }
    }

    #[test]
    fn a_new_claim_takes_the_policys_storage() {
        let s = storage("10Gi", Some("fast"));
        assert_eq!(settle(CLAIM, &s, None), Ok(s));
    }

    #[test]
    fn a_claim_grows_or_stays_but_never_shrinks() {
        let current = claim("2Gi", None);
        assert_eq!(
            settle(CLAIM, &storage("3Gi", None), Some(&current)),
            Ok(storage("3Gi", None))
        );
        // One size, another spelling: no change.
        assert!(settle(CLAIM, &storage("2048Mi", None), Some(&current)).is_ok());
        let refused = settle(CLAIM, &storage("1Gi", None), Some(&current)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "refused PersistentVolumeClaim prod/pg-1: the policy asks for 1Gi, smaller than the claim's 2Gi; a claim never shrinks (the data on it would not fit): ask for 2Gi or more"
        );
    }

    #[test]
    fn the_class_of_an_existing_claim_never_changes() {
        let current = claim("2Gi", Some("standard"));
        let refused = settle(CLAIM, &storage("2Gi", Some("fast")), Some(&current)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "refused PersistentVolumeClaim prod/pg-1: the policy asks for storage class fast, but the claim was made with standard; the class of an existing claim never changes (another class needs a new claim)"
        );
        // No class named: the claim keeps its own.
        assert_eq!(
            settle(CLAIM, &storage("2Gi", None), Some(&current)),
            Ok(storage("2Gi", Some("standard")))
        );
        let classless = claim("2Gi", None);
        assert!(settle(CLAIM, &storage("2Gi", Some("fast")), Some(&classless)).is_err());
    }

    #[test]
    fn a_size_that_is_no_quantity_is_refused() {
        for bad in ["", "ten", "0", "-1Gi"] {
            let e = settle(CLAIM, &storage(bad, None), None).unwrap_err();
            assert!(e.to_string().contains("not a positive quantity"), "{e}");
        }
    }
}
