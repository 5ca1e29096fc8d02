//! Harness for pgwarden's control-plane and end-to-end tests: a real kube-apiserver and etcd
//! (plus controller-manager and scheduler), a real S3-compatible server, real PostgreSQL and
//! the real barman cloud tools, each started by the tests themselves on 127.0.0.1.

pub mod controlplane;
pub mod datapath;
pub mod localnode;
pub mod operator;
pub mod restoring;
pub mod runc;
pub mod stallproxy;
pub mod watchdog;
pub mod world;
