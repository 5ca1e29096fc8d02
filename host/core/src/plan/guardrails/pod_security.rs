//! Security contexts of an instance pod: a policy may tighten the SDK's default pod, never
//! loosen it. `allowPrivilegeEscalation: false` is required on every container whatever the
//! default says (unset, a setuid binary regains what was dropped); capabilities may only be
//! dropped (`add` within the default's, `drop` at least the default's); a user, group,
//! seccomp profile or read-only root the default sets must stay. Fields this module does not
//! name must be as in the default, or absent.

use serde_json::Value;

use super::fields::Fields;
use crate::plan::errors::GuardrailError;

type Result<T = ()> = std::result::Result<T, GuardrailError>;

const CONTAINER_RULED: [&str; 8] = [
    "allowPrivilegeEscalation",
    "privileged",
    "capabilities",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "readOnlyRootFilesystem",
    "seccompProfile",
];

const POD_RULED: [&str; 7] = [
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "fsGroupChangePolicy",
    "supplementalGroups",
    "seccompProfile",
];

/// A container's `securityContext` against the default `postgres` container's.
pub(super) fn check_container(
    guard: &Fields,
    path: &str,
    context: Option<&Value>,
    default: Option<&Value>,
) -> Result {
    let null = Value::Null;
    let context = context.unwrap_or(&null);
    guard.same_as_default(path, context, default, &CONTAINER_RULED)?;
    let field = |key: &str| context.get(key);
    let base = |key: &str| default.and_then(|d| d.get(key));
    if field("privileged").is_some_and(|p| p != &Value::Bool(false)) {
        return Err(guard.refuse(
            &format!("{path}.privileged"),
            "asks for privileges; instance pods run without",
        ));
    }
    if field("allowPrivilegeEscalation") != Some(&Value::Bool(false)) {
        return Err(guard.refuse(
            &format!("{path}.allowPrivilegeEscalation"),
            "must be false: instance pods never gain privileges (unset, a setuid binary could)",
        ));
    }
    check_capabilities(guard, path, field("capabilities"), base("capabilities"))?;
    for key in ["runAsNonRoot", "readOnlyRootFilesystem"] {
        kept_true(guard, &format!("{path}.{key}"), field(key), base(key))?;
    }
    for key in ["runAsUser", "runAsGroup"] {
        kept_id(guard, &format!("{path}.{key}"), field(key), base(key))?;
    }
    kept_seccomp(
        guard,
        &format!("{path}.seccompProfile"),
        field("seccompProfile"),
        base("seccompProfile"),
    )
}

/// The pod's `securityContext` against the default pod's.
pub(super) fn check_pod(guard: &Fields, context: Option<&Value>, spec: Option<&Value>) -> Result {
    let path = "spec.securityContext";
    let null = Value::Null;
    let context = context.unwrap_or(&null);
    let default = spec.and_then(|s| s.get("securityContext"));
    guard.same_as_default(path, context, default, &POD_RULED)?;
    let field = |key: &str| context.get(key);
    let base = |key: &str| default.and_then(|d| d.get(key));
    kept_true(
        guard,
        &format!("{path}.runAsNonRoot"),
        field("runAsNonRoot"),
        base("runAsNonRoot"),
    )?;
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        kept_id(guard, &format!("{path}.{key}"), field(key), base(key))?;
    }
    let groups = field("supplementalGroups").and_then(Value::as_array);
    if groups.is_some_and(|g| g.iter().any(|id| id.as_i64() == Some(0))) {
        return Err(guard.refuse(
            &format!("{path}.supplementalGroups"),
            "adds group 0 (root); instance pods never join it",
        ));
    }
    kept_seccomp(
        guard,
        &format!("{path}.seccompProfile"),
        field("seccompProfile"),
        base("seccompProfile"),
    )
}

fn names(value: Option<&Value>, key: &str) -> Vec<String> {
    let list = value.and_then(|v| v.get(key)).and_then(Value::as_array);
    let names = list.into_iter().flatten().filter_map(Value::as_str);
    names.map(str::to_string).collect()
}

/// `add` within the default's `add`, `drop` covering the default's `drop`.
fn check_capabilities(
    guard: &Fields,
    path: &str,
    value: Option<&Value>,
    default: Option<&Value>,
) -> Result {
    let path = format!("{path}.capabilities");
    if let Some(value) = value {
        guard.same_as_default(&path, value, default, &["add", "drop"])?;
    }
    let allowed = names(default, "add");
    let added = names(value, "add");
    if let Some(extra) = added.iter().find(|c| !allowed.contains(c)) {
        let why = format!(
            "adds capability {extra}, beyond the SDK's default pod ({}); a policy may only drop capabilities",
            list_or_none(&allowed)
        );
        return Err(guard.refuse(&format!("{path}.add"), &why));
    }
    let dropped = names(value, "drop");
    if let Some(kept) = names(default, "drop").iter().find(|c| !dropped.contains(c)) {
        let why = format!("must drop {kept} as the SDK's default pod does");
        return Err(guard.refuse(&format!("{path}.drop"), &why));
    }
    Ok(())
}

fn list_or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// A flag that tightens (`runAsNonRoot`, `readOnlyRootFilesystem`): true where the default
/// has it true; a policy may set it true anywhere.
fn kept_true(guard: &Fields, path: &str, value: Option<&Value>, default: Option<&Value>) -> Result {
    let on = Some(&Value::Bool(true));
    if default == on && value != on {
        return Err(guard.refuse(path, "must stay true as in the SDK's default pod"));
    }
    Ok(())
}

/// A user or group id: the default's if it sets one (unset would fall back to the image's,
/// perhaps root); else any id but 0.
fn kept_id(guard: &Fields, path: &str, value: Option<&Value>, default: Option<&Value>) -> Result {
    match (value, default) {
        (v, Some(d)) if v != Some(d) => {
            Err(guard.refuse(path, &format!("must be {d} as in the SDK's default pod")))
        }
        (Some(v), None) if v.as_i64() == Some(0) => {
            Err(guard.refuse(path, "is 0 (root); instance pods do not run as root"))
        }
        _ => Ok(()),
    }
}

/// The default's seccomp profile if it sets one; else any profile but `Unconfined`.
fn kept_seccomp(
    guard: &Fields,
    path: &str,
    value: Option<&Value>,
    default: Option<&Value>,
) -> Result {
    let unconfined = value.and_then(|v| v.get("type")) == Some(&Value::from("Unconfined"));
    match default {
        Some(d) if value != Some(d) => {
            Err(guard.refuse(path, &format!("must be {d} as in the SDK's default pod")))
        }
        None if unconfined => {
            Err(guard.refuse(path, "is Unconfined; instance pods keep a seccomp profile"))
        }
        _ => Ok(()),
    }
}
