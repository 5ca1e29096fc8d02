//! Production policy.
