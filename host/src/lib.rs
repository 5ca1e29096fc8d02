//! The pgwarden host.
