//! `GET /openapi.json` (SPEC 3.4): the OpenAPI 3.1 document of the whole contract, kept in
//! the repository as `openapi/numgen.json` and built into the binary, so that what a
//! server serves is the document of its own version. External clients are generated from
//! it and schemathesis tests the server against it (`scripts/schemathesis.sh`).
//!
//! The tests below hold the document and the router to each other: every path the router
//! serves (and its `/api` alias) is in the document with exactly the methods the router
//! allows, and every documented path is served.

use http::{HeaderValue, StatusCode, header};

use super::{HttpResponse, respond};

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../../openapi/numgen.json");

/// `GET /openapi.json`
pub fn document() -> HttpResponse {
    let mut resp = respond(
        StatusCode::OK,
        "application/json",
        DOCUMENT.as_bytes().to_vec(),
    );
    // The document changes only with the binary; a client may keep it for a while.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::super::router::ROUTES;
    use super::super::router::tests::{methods_of, routed};
    use super::DOCUMENT;

    const HTTP_METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi/numgen.json is JSON")
    }

    /// Documented path → its methods, upper case, sorted.
    fn documented() -> BTreeMap<String, Vec<String>> {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        paths
            .iter()
            .map(|(path, item)| {
                let mut methods: Vec<String> = item
                    .as_object()
                    .map(|o| o.keys().filter(|k| HTTP_METHODS.contains(&k.as_str())))
                    .into_iter()
                    .flatten()
                    .map(|m| m.to_uppercase())
                    .collect();
                methods.sort();
                (path.clone(), methods)
            })
            .collect()
    }

    /// Served path → its methods (without HEAD, which is implicit wherever GET is).
    fn served() -> BTreeMap<String, Vec<String>> {
        let mut all = BTreeMap::new();
        for (pattern, route) in ROUTES {
            for path in [pattern.to_string(), format!("/api{pattern}")] {
                all.insert(path, methods_of(route));
            }
        }
        all
    }

    #[test]
    fn the_document_and_the_router_list_the_same_routes() {
        let documented = documented();
        let served = served();
        let only_served: Vec<_> = served
            .keys()
            .filter(|p| !documented.contains_key(*p))
            .collect();
        let only_documented: Vec<_> = documented
            .keys()
            .filter(|p| !served.contains_key(*p))
            .collect();
        assert!(
            only_served.is_empty() && only_documented.is_empty(),
            "served but not documented: {only_served:?}; documented but not served: {only_documented:?}"
        );
        for (path, methods) in &served {
            assert_eq!(&documented[path], methods, "methods of {path}");
        }
    }

    #[test]
    fn every_documented_path_routes_to_its_route() {
        for (path, _) in documented() {
            let concrete = path.replace("{key}", "K").replace("{id}", "1");
            let canonical = path.strip_prefix("/api").unwrap_or(&path);
            let want = ROUTES
                .iter()
                .find(|(p, _)| *p == canonical)
                .map(|(_, r)| *r);
            assert_eq!(Some(routed(&concrete)), want, "{path}");
        }
    }

    /// The `/api` aliases are the same operations: each alias path item equals its
    /// canonical one but for the operation IDs, which end in `Api` (IDs are unique).
    #[test]
    fn api_aliases_mirror_their_paths() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            let Some(canonical) = path.strip_prefix("/api") else {
                continue;
            };
            let mut alias = item.clone();
            let Some(original) = paths.get(canonical) else {
                panic!("{path} has no canonical path {canonical}");
            };
            for (method, op) in alias.as_object_mut().into_iter().flatten() {
                let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                    continue;
                };
                let want = original[method.as_str()]["operationId"]
                    .as_str()
                    .map(|o| format!("{o}Api"));
                assert_eq!(Some(id.to_string()), want, "{method} {path}");
                op["operationId"] = original[method.as_str()]["operationId"].clone();
            }
            assert_eq!(
                &alias, original,
                "{path} differs from {canonical}: run scripts/openapi-aliases.py"
            );
        }
    }

    #[test]
    fn every_error_code_of_the_contract_is_documented() {
        let doc = document();
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode enum");
        let codes: Vec<&str> = codes.iter().filter_map(Value::as_str).collect();
        // SPEC 3.5, in its order.
        let spec = [
            "INVALID_FORMAT",
            "INVALID_CONFIG",
            "INVALID_PREFIX_KEY",
            "INVALID_COUNT",
            "PREFIX_NOT_REGISTERED",
            "UNAUTHORIZED",
            "NOT_FOUND",
            "METHOD_NOT_ALLOWED",
            "PREFIX_EXISTS",
            "MODE_CHANGE",
            "FORMAT_CLASH",
            "SEQUENCE_OVERFLOW",
            "BODY_TOO_LARGE",
            "RATE_LIMITED",
            "NOT_READY",
            "STORAGE_UNAVAILABLE",
        ];
        assert_eq!(codes, spec);
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
    }
}
