//! Where barman keeps a WAL file in the store, and under which name (barman 3.19.1,
//! `barman/xlog.py` `hash_dir` and `barman-cloud-wal-archive`'s `retrieve_wal_name`):
//!
//! ```text
//!   s3://<bucket>/<path>/<server>/wals/<TTTTTTTTLLLLLLLL>/<segment><suffix>
//!          segments, `<segment>.partial`, `<segment>.<offset>.backup` (backup labels)
//!   s3://<bucket>/<path>/<server>/wals/<TTTTTTTT>.history<suffix>
//!          timeline history files: no hash folder
//! ```
//!
//! The suffix is the compression's (`.gz` `.bz2` `.snappy` `.lz4` `.xz` `.zst`); barman's
//! restore finds a file by listing its folder and reading the suffix back, so the same map
//! decides the decompression here.

use anyhow::{Result, bail};
use pgwarden_crds::WalCompression;

/// A WAL file name PostgreSQL hands to archive_command or restore_command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalName {
    name: String,
    /// `TTTTTTTTLLLLLLLL` for segments, partials and backup labels; empty for history files.
    hash_dir: String,
}

impl WalName {
    /// Checks `name` against the names barman accepts; anything else is refused with a
    /// message naming it (barman exits 3 on such a name).
    pub fn parse(name: &str) -> Result<Self> {
        // Only ASCII passes `hex`, so slicing after it stays on character boundaries.
        let hex = |s: Option<&str>| s.is_some_and(|s| s.bytes().all(|b| b.is_ascii_hexdigit()));
        let ok = |hash_dir: String| {
            Ok(Self {
                name: name.to_string(),
                hash_dir,
            })
        };
        if name.len() >= 24 && hex(name.get(..24)) {
            let rest = &name[24..];
            // barman formats the folder as "%08X%08X": upper case whatever the name's case.
            let dir = name[..16].to_ascii_uppercase();
            let label = rest.len() == 16
                && rest.starts_with('.')
                && hex(rest.get(1..9))
                && rest.get(9..) == Some(".backup");
            if rest.is_empty() || rest == ".partial" || label {
                return ok(dir);
            }
        }
        if name.len() == 16 && hex(name.get(..8)) && name.get(8..) == Some(".history") {
            return ok(String::new());
        }
        bail!("{name:?} is not a WAL segment, partial segment, backup label or history file name")
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn is_history(&self) -> bool {
        self.hash_dir.is_empty()
    }

    /// The folder holding this file: `<prefix><server>/wals/<hash dir>/` (history files:
    /// `<prefix><server>/wals/`).
    pub fn folder(&self, dest: &Destination, server: &str) -> String {
        let mut key = format!("{}{server}/wals/", dest.prefix);
        if !self.hash_dir.is_empty() {
            key.push_str(&self.hash_dir);
            key.push('/');
        }
        key
    }

    /// The object key barman-cloud-wal-archive writes for this file with `compression`.
    pub fn key(&self, dest: &Destination, server: &str, c: Option<WalCompression>) -> String {
        format!("{}{}{}", self.folder(dest, server), self.name, suffix(c))
    }
}

/// The file-name suffix of a compression, as barman writes and reads it.
pub fn suffix(c: Option<WalCompression>) -> &'static str {
    match c {
        None => "",
        Some(WalCompression::Gzip) => ".gz",
        Some(WalCompression::Bzip2) => ".bz2",
        Some(WalCompression::Snappy) => ".snappy",
        Some(WalCompression::Lz4) => ".lz4",
        Some(WalCompression::Xz) => ".xz",
        Some(WalCompression::Zstd) => ".zst",
    }
}

/// Every way the store holds a WAL file: plain, then each compression barman writes.
pub const COMPRESSIONS: [Option<WalCompression>; 7] = [
    None,
    Some(WalCompression::Gzip),
    Some(WalCompression::Bzip2),
    Some(WalCompression::Snappy),
    Some(WalCompression::Lz4),
    Some(WalCompression::Xz),
    Some(WalCompression::Zstd),
];

/// Which compression an object whose file name is `file` holds, if it is `wal` at all:
/// `Some(None)` for the plain file, `Some(Some(c))` for a known suffix, `None` otherwise
/// (another file, or `<wal>.partial`).
pub fn compression_of(file: &str, wal: &str) -> Option<Option<WalCompression>> {
    let rest = file.strip_prefix(wal)?;
    if rest.is_empty() {
        return Some(None);
    }
    (COMPRESSIONS.into_iter().flatten())
        .find(|c| suffix(Some(*c)) == rest)
        .map(Some)
}

/// `destinationPath` taken apart: `s3://<bucket>/<path>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub bucket: String,
    /// `<path>/`, or empty when the destination is the bucket itself.
    pub prefix: String,
}

impl Destination {
    pub fn parse(url: &str) -> Result<Self> {
        let Some(rest) = url.strip_prefix("s3://") else {
            bail!("destinationPath {url:?} is not an s3:// URL");
        };
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("destinationPath {url:?} names no bucket");
        }
        // barman strips the leading slash and joins with os.path.join, which also absorbs
        // a trailing one.
        let path = path.trim_matches('/');
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest() -> Destination {
        Destination::parse("s3://bucket/some/path/").unwrap()
    }

    #[test]
    fn keys_follow_barmans_layout() {
        let d = dest();
        let seg = WalName::parse("00000001000000A2000000FE").unwrap();
        assert_eq!(
            seg.key(&d, "pg-1", Some(WalCompression::Zstd)),
            "some/path/pg-1/wals/00000001000000A2/00000001000000A2000000FE.zst"
        );
        assert_eq!(
            seg.key(&d, "pg-1", None),
            "some/path/pg-1/wals/00000001000000A2/00000001000000A2000000FE"
        );
        let history = WalName::parse("0000000A.history").unwrap();
        assert!(history.is_history());
        assert_eq!(
            history.key(&d, "pg-1", Some(WalCompression::Gzip)),
            "some/path/pg-1/wals/0000000A.history.gz"
        );
        let label = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(
            label.key(&d, "pg-1", Some(WalCompression::Snappy)),
            "some/path/pg-1/wals/0000000100000000/000000010000000000000002.00000028.backup.snappy"
        );
        let partial = WalName::parse("000000020000000000000005.partial").unwrap();
        assert_eq!(
            partial.key(&Destination::parse("s3://b").unwrap(), "s", None),
            "s/wals/0000000200000000/000000020000000000000005.partial"
        );
    }

    #[test]
    fn other_names_are_refused_by_name() {
        for bad in [
            "",
            "../../etc/passwd",
            "00000001000000000000000",
            "0000000100000000000000XY",
            "000000010000000000000002.backup",
            "0000000A.history.gz",
            "000000010000000000000001/x",
        ] {
            let e = WalName::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn suffixes_read_back_to_their_compression() {
        let wal = "000000010000000000000003";
        assert_eq!(compression_of(wal, wal), Some(None));
        assert_eq!(
            compression_of(&format!("{wal}.bz2"), wal),
            Some(Some(WalCompression::Bzip2))
        );
        assert_eq!(compression_of(&format!("{wal}.partial"), wal), None);
        assert_eq!(compression_of(&format!("{wal}.gz.tmp"), wal), None);
        assert_eq!(compression_of("000000010000000000000004", wal), None);
    }

    #[test]
    fn destinations_need_a_bucket() {
        assert_eq!(
            Destination::parse("s3://b").unwrap(),
            Destination {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert!(Destination::parse("s3:///path").is_err());
        assert!(Destination::parse("gs://b/p").is_err());
    }
}
