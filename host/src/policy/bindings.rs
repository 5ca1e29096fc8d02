//! Host bindings of `sdk/wit/policy.wit` and conversions to the SDK's wire types.

mod generated {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "pgwarden:policy/policy",
    });
}

pub use generated::pgwarden::policy::types as wit;
pub use generated::{Policy, PolicyPre};

// The enum and record conversions come from the SDK's tables, as the guest's do.
pgwarden_sdk::wit_enum_conversions!(wit);
pgwarden_sdk::wit_record_conversions!(wit);
