//! Test dependencies of the data path: PostgreSQL (Debian), the barman cloud tools (PyPI, in a
//! venv) and an S3-compatible server, installed idempotently.
