//! The native WAL archiver and restorer: barman's store format written and read in Rust,
//! inside the agent, without a Python process per WAL file.
//!
//! ```text
//!   key     object keys and compression suffixes, as barman-cloud-wal-archive names them
//!   codec   the six WAL compressions in barman's formats, streamed
//!   store   the S3 client (endpoint, path style, CA, SSE, credentials) and the verified
//!           upload / the download of one WAL file
//!   archiver the agent's resident archiver: follows `.ready` files, answers archive_command
//!   restorer the agent's restore_command server, prefetching the next segments
//!   put     the PUT of an uncompressed segment, its body streamed from the file (SigV4)
//!   stream  bounded memory: the upload budget, a core per compression, streamed downloads
//!   socket  the agent's side of both sockets: one request line in, one reply line out
//!   client  archive_command's and restore_command's side: ask the agent over its socket,
//!           or do the work in the calling process when no agent answers
//! ```
//!
//! The store stays a barman catalogue: barman-cloud-wal-restore, -backup, -restore and
//! retention read what this writes, and this reads what barman-cloud-wal-archive wrote.

pub mod archiver;
pub mod client;
pub mod codec;
pub mod key;
mod put;
pub mod restorer;
mod socket;
pub mod store;
mod stream;

pub use archiver::Archiver;
pub use key::{Destination, WalName};
pub use put::Sse;
pub use restorer::Restorer;
pub use store::{Store, Stored};
