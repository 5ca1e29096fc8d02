//! The pgwarden policy SDK.
