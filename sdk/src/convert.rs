//! Conversions between the WIT records (guest side) and the SDK's serde types.

use chrono::{DateTime, Utc};

/// Seconds since the epoch → a UTC time (out-of-range values clamp to the epoch).
pub fn time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// A status time as the operator and the agent write it (RFC 3339), if it is one: a
/// missing or malformed time counts as absent.
pub fn parse_time(value: Option<&str>) -> Option<DateTime<Utc>> {
    value
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A Kubernetes (jiff) timestamp as a chrono time.
pub fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

/// The enums the WIT interface shares with the crds and SDK types, listed once. Each line is
/// `WitName = module::Type { Variants }`; a variant has the same name on both sides (the WIT
/// spells it in kebab-case), so one table gives `From` both ways for the guest's bindings
/// (`crate::wit`, below) and the host's (`host/src/policy/bindings.rs`). A variant missing on
/// either side is a compile error (the matches are exhaustive). Also emits a test
/// `wit_enums_round_trip` in the invoking crate.
#[macro_export]
macro_rules! wit_enum_conversions {
    ($($wit:ident)::+) => {
        $crate::wit_enum_conversions!(@table [$($wit)::+]
            WalCompression = crds::WalCompression { Gzip, Bzip2, Snappy, Lz4, Xz, Zstd },
            DataCompression = crds::DataCompression { Gzip, Bzip2, Snappy, Lz4 },
            Encryption = crds::Encryption { Aes256, AwsKms },
            BackupPhase = crds::BackupPhase { Pending, Running, Completed, Failed },
            ExpiredObject = crds::ExpiredObject { Remove, Keep },
            Role = types::Role { Primary, Replica },
            Archiver = types::Archiver { BarmanCloud, Native },
            CloneSource = types::CloneSource { Primary, ObjectStore },
        );
    };
    (@table [$($wit:ident)::+]
        $($name:ident = $m:ident :: $ty:ident { $($v:ident),* }),* $(,)?) => {
        const _: () = {
            use $($wit)::+ as wit_types;
            $(
                impl ::core::convert::From<$crate::$m::$ty> for wit_types::$name {
                    fn from(v: $crate::$m::$ty) -> Self {
                        match v { $($crate::$m::$ty::$v => Self::$v,)* }
                    }
                }
                impl ::core::convert::From<wit_types::$name> for $crate::$m::$ty {
                    fn from(v: wit_types::$name) -> Self {
                        match v { $(wit_types::$name::$v => Self::$v,)* }
                    }
                }
            )*
        };

        #[cfg(test)]
        #[test]
        fn wit_enums_round_trip() {
            use $($wit)::+ as wit_types;
            let mut checked = 0;
            $($(
                let v = $crate::$m::$ty::$v;
                let back = <$crate::$m::$ty>::from(<wit_types::$name>::from(v));
                assert_eq!(back, v, "{} does not round-trip through the WIT enum", stringify!($ty::$v));
                checked += 1;
            )*)*
            assert!(checked > 0);
        }
    };
}

crate::wit_enum_conversions!(crate::wit);

/// The records the WIT interface shares field for field with the crds and SDK types, listed
/// once like the enums: `From` both ways for the guest's bindings and the host's. Each field
/// is moved through `Into` (so an enum or a listed record converts too); `field: option` marks
/// an `Option` whose value converts. A field missing on either side is a compile error. Records
/// that change shape on the way (times as seconds, the Cluster as JSON text) are written out
/// once in `@shaped`, each in the direction(s) a side needs.
#[macro_export]
macro_rules! wit_record_conversions {
    ($($wit:ident)::+) => {
        $crate::wit_record_conversions!(@table [$($wit)::+]
            ArchiveSettings = crds::settings::ArchiveSettings {
                destination_path, endpoint_url, endpoint_ca_file, server_name, compression: option,
                encryption: option, max_parallel, archive_timeout_seconds, archiver,
                standby_clone,
            } host { sse_kms_key_id },
            BackupSettings = crds::settings::BackupSettings {
                target_pod, compression: option, encryption: option, jobs, immediate_checkpoint,
            } host { sse_kms_key_id },
            Instance = types::Instance { name, role, ready },
            Transition = types::Transition { phase, reason, message, requeue_after_seconds },
            Expiry = types::Expiry { name, object },
            Denial = types::Denial { reason, message },
            Storage = types::Storage { size, storage_class },
            ClaimFacts = types::ClaimFacts { name, size, storage_class },
            ConditionDecision = types::ConditionDecision { status, reason, message },
            ClusterHealth = types::ClusterHealth { phase, ready },
            InstanceFacts = types::InstanceFacts {
                name, role, ready, streaming, received_lsn, replayed_lsn, lag_bytes, lag_seconds,
            },
            Promotion = types::Promotion { instance, reason, message },
        );
        $crate::wit_record_conversions!(@shaped [$($wit)::+]);
    };
    (@table [$($wit:ident)::+]
        $($name:ident = $($m:ident)::+ { $($f:ident $(: $how:ident)?),* $(,)? }
            $(host { $($h:ident),* })?),* $(,)?) => {
        const _: () = {
            use $($wit)::+ as wit_types;
            $(
                impl ::core::convert::From<$crate::$($m)::+> for wit_types::$name {
                    // A field of the same type on both sides converts to itself.
                    #[allow(clippy::useless_conversion)]
                    fn from(v: $crate::$($m)::+) -> Self {
                        Self { $($f: $crate::wit_record_conversions!(@field v.$f $($how)?),)* }
                    }
                }
                // `host { .. }` fields do not cross the ABI: the host fills them after.
                impl ::core::convert::From<wit_types::$name> for $crate::$($m)::+ {
                    #[allow(clippy::useless_conversion)]
                    fn from(v: wit_types::$name) -> Self {
                        Self {
                            $($f: $crate::wit_record_conversions!(@field v.$f $($how)?),)*
                            $($($h: ::core::default::Default::default(),)*)?
                        }
                    }
                }
            )*
        };
    };
    (@shaped [$($wit:ident)::+]) => {
        const _: () = {
            use $($wit)::+ as wit_types;
            use $crate::convert::time;
            use $crate::types::{ClusterFacts, FailoverFacts, PodFacts, ScheduleDecision, ScheduledRun};

            impl ::core::convert::From<&PodFacts> for wit_types::PodFacts {
                fn from(p: &PodFacts) -> Self {
                    Self {
                        name: p.name.clone(),
                        phase: p.phase.clone(),
                        ready: p.ready,
                        restart_count: p.restart_count,
                        container_started_at: p.container_started_at.map(|t| t.timestamp()),
                    }
                }
            }
            impl ::core::convert::From<wit_types::PodFacts> for PodFacts {
                fn from(p: wit_types::PodFacts) -> Self {
                    Self {
                        name: p.name,
                        phase: p.phase,
                        ready: p.ready,
                        restart_count: p.restart_count,
                        container_started_at: p.container_started_at.map(time),
                    }
                }
            }
            impl ::core::convert::From<ScheduleDecision> for wit_types::ScheduleDecision {
                fn from(d: ScheduleDecision) -> Self {
                    Self {
                        create: d.create.map(|r| wit_types::ScheduledRun {
                            name: r.name,
                            scheduled_at: r.scheduled_at.timestamp(),
                        }),
                        next_run: d.next_run.map(|t| t.timestamp()),
                    }
                }
            }
            impl ::core::convert::From<wit_types::ScheduleDecision> for ScheduleDecision {
                fn from(d: wit_types::ScheduleDecision) -> Self {
                    Self {
                        create: d.create.map(|r| ScheduledRun {
                            name: r.name,
                            scheduled_at: time(r.scheduled_at),
                        }),
                        next_run: d.next_run.map(time),
                    }
                }
            }
            // The facts go only to the guest, the Cluster as JSON text.
            impl ::core::convert::From<&ClusterFacts> for wit_types::ClusterFacts {
                fn from(f: &ClusterFacts) -> Self {
                    Self {
                        cluster: $crate::serde_json::to_string(&f.cluster).unwrap_or_default(),
                        instances: f.instances.iter().cloned().map(Into::into).collect(),
                        missing_secrets: f.missing_secrets.clone(),
                        failure: f.failure.clone().map(Into::into),
                        waiting: f.waiting.clone().map(Into::into),
                        now: f.now.timestamp(),
                    }
                }
            }
            impl ::core::convert::From<&FailoverFacts> for wit_types::FailoverFacts {
                fn from(f: &FailoverFacts) -> Self {
                    Self {
                        cluster: $crate::serde_json::to_string(&f.cluster).unwrap_or_default(),
                        instances: f.instances.iter().cloned().map(Into::into).collect(),
                        current_primary: f.current_primary.clone(),
                        target_primary: f.target_primary.clone(),
                        primary_unhealthy_seconds: f.primary_unhealthy_seconds,
                        now: f.now.timestamp(),
                    }
                }
            }
        };
    };
    (@field $v:ident . $f:ident) => { $v.$f.into() };
    (@field $v:ident . $f:ident option) => { $v.$f.map(::core::convert::Into::into) };
}

crate::wit_record_conversions!(crate::wit);
