//! PostgreSQL, the barman cloud tools and an S3-compatible server for the tests.
