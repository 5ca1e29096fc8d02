//! A real control plane for the tests (built by `cargo xtask setup`).
