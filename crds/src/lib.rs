//! The pgwarden API types.
