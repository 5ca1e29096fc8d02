//! Status conditions as data: the reconcile core's, shared by every controller.

pub use pgwarden_core::conditions::{DesiredCondition, set, set_all};
