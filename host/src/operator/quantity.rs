//! A pod's quantities compared by value ([`nanos`], the core's): the API server stores
//! `cpu: "0.5"` as `500m` and `memory: 1024Mi` as `1Gi`. Used to compare a pod made before
//! the applied hash existed (see [`super::applied`]) with the desired one.

use pgwarden_core::quantity::nanos;
use serde_json::Value;

/// `pod` (JSON) with the quantities of its containers' resources and its overhead written
/// as their value, so that two spellings of one value compare equal.
pub fn normalised_pod(pod: &Value) -> Value {
    let mut pod = pod.clone();
    let Some(spec) = pod.get_mut("spec") else {
        return pod;
    };
    for list in ["containers", "initContainers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut);
        for container in containers.into_iter().flatten() {
            for kind in ["requests", "limits"] {
                if let Some(map) = container.pointer_mut(&format!("/resources/{kind}")) {
                    normalise_map(map);
                }
            }
        }
    }
    if let Some(overhead) = spec.get_mut("overhead") {
        normalise_map(overhead);
    }
    pod
}

fn normalise_map(map: &mut Value) {
    for value in map.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        if let Some(n) = value.as_str().and_then(nanos) {
            *value = Value::String(format!("{n}n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_resource_quantities_are_normalised() {
        let pod = json!({"spec": {
            "containers": [{"name": "postgres", "env": [{"name": "X", "value": "0.5"}],
                "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "1"}}}],
            "overhead": {"cpu": "250m"},
        }});
        let n = normalised_pod(&pod);
        let c = &n["spec"]["containers"][0];
        assert_eq!(c["resources"]["requests"]["cpu"], "500000000n");
        assert_eq!(c["resources"]["requests"]["memory"], n_of("1Gi"));
        assert_eq!(c["resources"]["limits"]["cpu"], "1000000000n");
        assert_eq!(c["env"][0]["value"], "0.5");
        assert_eq!(n["spec"]["overhead"]["cpu"], "250000000n");
        assert_eq!(
            normalised_pod(&json!({"metadata": {}})),
            json!({"metadata": {}})
        );
    }

    fn n_of(q: &str) -> String {
        format!("{}n", nanos(q).unwrap())
    }
}
