//! The pgwarden host: operator, instance agent, policy engine.
