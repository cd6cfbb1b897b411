//! The served API versions of `HARouter`: `v1beta1` (the storage version, what the agent
//! reads) and `v1alpha1` (still served, deprecated). Both are served with **the same schema**,
//! so the API server's `conversion: None` (it only rewrites `apiVersion`) is a real
//! conversion: any object one version accepts, the other accepts too. What that schema
//! enforces beyond the generated one:
//!
//! - required fields and enums (from the Rust types), device-name lengths and patterns,
//!   absolute pid-file paths;
//! - formats through CEL: every address and route destination `isCIDR`, every next hop `isIP`;
//! - a typed backend union: exactly one of `generic: {}`, `ovs: {port?}`,
//!   `linuxbridge: {port, bridge}`;
//! - CEL rules across fields: `router` or `routerId`, `nodes` with `router`, `routerId` equal
//!   to `router.id`, no `overrides` on a hand-written router, `l2-hold` only with an L2
//!   backend, `primaryVip` only with `haDevice`.
//!
//! The released `v1alpha1` schema differed: `backend` was untyped, the generic backend the
//! string `generic`, and nothing above was checked. Objects stored under it keep that shape
//! until they are written again (`None` does not touch them): `hagw migrate` rewrites every
//! one (`backend: generic` → `{generic: {}}`) and then drops `v1alpha1` from
//! the CRD's `storedVersions`. Until then the agent reads both shapes ([`denormalize`]).
//! Serving `v1alpha1` with its old schema instead would let a client store the string shape
//! as `v1beta1` at any time, after the migration too.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::core::CustomResourceExt;
use serde_json::{Value, json};

use super::crd::HARouter;

/// The version the agent reads and the API server stores.
pub const STORAGE: &str = "v1beta1";
/// The earlier version, still served.
pub const V1ALPHA1: &str = "v1alpha1";

const DEVICE_PATTERN: &str = r"^[^/:\s]+$";

/// The CRD with both versions, as `hagw crd` prints it and the chart ships it. Both have the
/// same schema (see the module docs).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = HARouter::crd();
    let mut beta = crd.spec.versions[0].clone();
    if let Some(schema) = beta.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
        *schema = strict(schema);
    }
    let mut alpha = beta.clone();
    alpha.name = V1ALPHA1.into();
    alpha.storage = false;
    alpha.deprecated = Some(true);
    alpha.deprecation_warning = Some(
        "hagw.dev/v1alpha1 HARouter is deprecated; use hagw.dev/v1beta1 (same fields; \
         `backend: generic` is now `backend: {generic: {}}`)"
            .into(),
    );
    crd.spec.versions = vec![beta, alpha];
    crd
}

/// `schema` with everything v1beta1 enforces beyond the generated schema.
fn strict(schema: &JSONSchemaProps) -> JSONSchemaProps {
    let mut v = serde_json::to_value(schema).expect("a schema serializes");
    let spec = &mut v["properties"]["spec"];
    rules(
        spec,
        &[
            (
                "has(self.router) || has(self.routerId)",
                "needs `router` (a hand-written router) or `routerId` (a discovered one)",
                None,
            ),
            (
                "!has(self.router) || has(self.nodes)",
                "a hand-written router needs the nodes hosting it",
                Some(".nodes"),
            ),
            (
                "!has(self.router) || !has(self.routerId) || self.routerId == self.router.id",
                "must equal router.id",
                Some(".routerId"),
            ),
            (
                "!has(self.router) || !has(self.overrides)",
                "overrides apply to discovered routers; set the fields in `router`",
                Some(".overrides"),
            ),
        ],
    );
    let nodes = &mut spec["properties"]["nodes"];
    nodes["maxItems"] = json!(64);
    nodes["items"]["maxLength"] = json!(253);
    spec["properties"]["routerId"]["maxLength"] = json!(253);
    spec["properties"]["overrides"]["properties"]["backend"] = backend_union();

    let router = &mut spec["properties"]["router"];
    rules(
        router,
        &[
            (
                "(has(self.strategy) ? self.strategy : 'l2-hold') != 'l2-hold' || (has(self.backend) && !has(self.backend.generic))",
                "`l2-hold` (the default strategy) needs an `ovs` or `linuxbridge` backend; with the generic backend use `link-down` or `silence-only`",
                Some(".strategy"),
            ),
            (
                "!has(self.primaryVip) || has(self.haDevice)",
                "needs `haDevice`, the device keepalived puts it on",
                Some(".primaryVip"),
            ),
        ],
    );
    let p = &mut router["properties"];
    p["id"]["minLength"] = json!(1);
    p["id"]["maxLength"] = json!(253);
    p["namespace"]["minLength"] = json!(1);
    p["namespace"]["maxLength"] = json!(255);
    p["namespace"]["pattern"] = json!(r"^[^/]+$");
    rules(
        &mut p["namespace"],
        &[("self != '.' && self != '..'", "not a valid network namespace name", None)],
    );
    for device in ["gatewayDevice", "haDevice"] {
        device_name(&mut p[device]);
    }
    p["keepalivedPidFile"]["pattern"] = json!("^/");
    p["keepalivedPidFile"]["maxLength"] = json!(4096);
    cidr(&mut p["primaryVip"]);
    p["gatewayAddresses"]["maxItems"] = json!(1024);
    cidr(&mut p["gatewayAddresses"]["items"]);
    p["routes"]["maxItems"] = json!(256);
    let route = &mut p["routes"]["items"]["properties"];
    cidr(&mut route["destination"]);
    route["via"]["maxLength"] = json!(64);
    rules(&mut route["via"], &[("isIP(self)", "must be an IP address", None)]);
    p["backend"] = backend_union();
    serde_json::from_value(v).expect("the strict schema is a schema")
}

/// The typed backend: exactly one member; absent means `generic`.
fn backend_union() -> Value {
    let mut port =
        json!({"type": "string", "description": "The OVS port (default: the gateway device)."});
    device_name(&mut port);
    let mut tap = json!({"type": "string", "description": "The bridge-side (`tap…`) end of the gateway veth, in hagw's namespace."});
    device_name(&mut tap);
    let mut bridge = json!({"type": "string", "description": "Its `brq…` bridge."});
    device_name(&mut bridge);
    json!({
        "description": "How the port is attached at layer 2, exactly one of: `generic: {}` (the default when absent), `ovs: {port: NAME}` (port defaults to the gateway device), `linuxbridge: {port: TAP, bridge: BRQ}`.",
        "type": "object",
        "properties": {
            "generic": {"type": "object", "description": "Nothing known about the switch side: only `link-down` and `silence-only` are possible."},
            "ovs": {"type": "object", "description": "An Open vSwitch port (Neutron ML2/OVS).", "properties": {"port": port}},
            "linuxbridge": {
                "type": "object",
                "description": "A Linux bridge port (Neutron ML2/Linuxbridge).",
                "required": ["port", "bridge"],
                "properties": {"port": tap, "bridge": bridge},
            },
        },
        "x-kubernetes-validations": [{
            "rule": "[has(self.generic), has(self.ovs), has(self.linuxbridge)].filter(x, x).size() == 1",
            "message": "exactly one of `generic`, `ovs`, `linuxbridge`",
        }],
    })
}

fn device_name(field: &mut Value) {
    field["minLength"] = json!(1);
    field["maxLength"] = json!(15);
    field["pattern"] = json!(DEVICE_PATTERN);
    rules(field, &[("self != '.' && self != '..'", "not a valid device name", None)]);
}

fn cidr(field: &mut Value) {
    field["maxLength"] = json!(64);
    rules(
        field,
        &[(
            "isCIDR(self)",
            "must be an address in CIDR notation, e.g. 203.0.113.5/24 or 2001:db8::5/64",
            None,
        )],
    );
}

fn rules(field: &mut Value, list: &[(&str, &str, Option<&str>)]) {
    let list: Vec<Value> = list
        .iter()
        .map(|(rule, message, path)| {
            let mut r = json!({"rule": rule, "message": message});
            if let Some(path) = path {
                r["fieldPath"] = json!(path);
            }
            r
        })
        .collect();
    field["x-kubernetes-validations"] = Value::Array(list);
}

/// Where a spec holds a backend.
pub(super) const BACKENDS: [&str; 2] = ["/router/backend", "/overrides/backend"];

/// An object's spec in the shape the Rust types read (both versions' shapes accepted):
/// `generic: {}` becomes `generic`.
pub fn denormalize(spec: &mut Value) {
    for path in BACKENDS {
        let Some(backend) = spec.pointer_mut(path) else { continue };
        if backend.get("generic").is_some() {
            *backend = json!("generic");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_are_served_and_v1beta1_is_stored() {
        let crd = crd();
        let versions: Vec<(&str, bool, bool)> =
            crd.spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
        assert_eq!(versions, [("v1beta1", true, true), ("v1alpha1", true, false)]);
        assert!(crd.spec.conversion.is_none(), "no webhook: the schemas are the same");
        assert_eq!(crd.spec.versions[0].schema, crd.spec.versions[1].schema);
        let beta = serde_json::to_value(&crd.spec.versions[0]).unwrap();
        let router =
            &beta["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["router"];
        assert_eq!(router["properties"]["backend"]["type"], "object");
        assert_eq!(
            router["properties"]["gatewayAddresses"]["items"]["x-kubernetes-validations"][0]["rule"],
            "isCIDR(self)"
        );
    }
}
