//! The API contract: `openapi.json` at the repository root is the document the handlers'
//! annotations generate, and the document says what the issue pins (OpenAPI 3.1, bearer JWT
//! with scopes, problem bodies, 402 and 429 with their fields and headers).

use hookline::api::openapi;
use serde_json::Value;
use std::path::PathBuf;

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi.json")
}

/// `HOOKLINE_WRITE_OPENAPI=1` rewrites the file instead of failing.
#[test]
fn the_checked_in_openapi_json_is_the_generated_document() {
    let generated = openapi::to_json();
    let path = checked_in_path();
    if std::env::var("HOOKLINE_WRITE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| checked_in.lines().count().min(generated.lines().count()));
        panic!(
            "openapi.json is stale (first difference at line {}: checked in {:?}, generated {:?}).\n\
             Regenerate it with `cargo run -q --bin hookline -- openapi > openapi.json`, or \
             `HOOKLINE_WRITE_OPENAPI=1 cargo test -p hookline-shared --test openapi`, and commit it.",
            line + 1,
            checked_in.lines().nth(line).unwrap_or("<end of file>"),
            generated.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
    // What the servers answer is the same text.
    assert_eq!(
        openapi::CHECKED_IN,
        checked_in,
        "rebuild: the served copy is compiled in"
    );
}

fn doc() -> Value {
    openapi::document()
}

fn operations(doc: &Value) -> impl Iterator<Item = (&String, &String, &Value)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .filter(|(m, _)| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(move |(m, op)| (path, m, op))
        })
}

/// A `$ref` to `#/components/responses/X` resolved, or the response itself.
fn resolve<'a>(doc: &'a Value, response: &'a Value) -> &'a Value {
    match response["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/responses/").unwrap();
            &doc["components"]["responses"][name]
        }
        None => response,
    }
}

#[test]
fn the_document_is_openapi_3_1_with_a_bearer_jwt_scheme() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");
}

#[test]
fn every_api_operation_needs_a_token_but_the_webhooks_the_oauth_callback_and_the_document() {
    let doc = doc();
    let open = [
        "/api/v1/oauth/{provider}/callback",
        "/api/v1/openapi.json",
        "/healthz",
    ];
    for (path, method, op) in operations(&doc) {
        let webhook = op["tags"][0] == "webhooks";
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        if webhook || open.contains(&path.as_str()) {
            assert!(!secured, "{method} {path} is answered without a token");
        } else {
            assert!(secured, "{method} {path} has no security requirement");
            for requirement in op["security"].as_array().unwrap() {
                assert!(requirement.get("bearer").is_some(), "{method} {path}");
            }
        }
    }
}

#[test]
fn scoped_operations_name_the_scope_and_answer_401_403_429_and_503() {
    let doc = doc();
    let scopes = [
        "repos:read",
        "repos:write",
        "webhooks:manage",
        "events:write",
        "billing:manage",
        "admin",
        "licenses:issue",
    ];
    let mut scoped = 0;
    for (path, method, op) in operations(&doc) {
        let Some(security) = op["security"].as_array().filter(|s| !s.is_empty()) else {
            continue;
        };
        let named: Vec<&str> = security
            .iter()
            .flat_map(|r| r["bearer"].as_array().unwrap())
            .map(|s| s.as_str().unwrap())
            .collect();
        for scope in &named {
            assert!(
                scopes.contains(scope),
                "{method} {path}: unknown scope {scope}"
            );
        }
        let responses = op["responses"].as_object().unwrap();
        let mut expected = vec!["401", "429", "503"];
        if !named.is_empty() {
            scoped += 1;
            expected.push("403");
        }
        for status in expected {
            assert!(
                responses.contains_key(status),
                "{method} {path} lacks {status}"
            );
        }
    }
    assert!(scoped > 30, "only {scoped} scoped operations");
}

#[test]
fn a_429_carries_retry_after_and_the_ratelimit_headers() {
    let doc = doc();
    let mut seen = 0;
    for (path, method, op) in operations(&doc) {
        let Some(response) = op["responses"].get("429") else {
            continue;
        };
        seen += 1;
        let response = resolve(&doc, response);
        for header in [
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
        ] {
            assert!(
                response["headers"].get(header).is_some(),
                "{method} {path}: 429 without {header}"
            );
        }
        assert_eq!(
            response["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }
    assert!(seen > 30);
}

#[test]
fn errors_are_problem_bodies_and_402_is_the_plan_limit_body() {
    let doc = doc();
    let problem = &doc["components"]["schemas"]["Problem"];
    let required: Vec<&str> = problem["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["error", "message"]);
    let plan = &doc["components"]["schemas"]["PlanLimitReached"];
    for field in ["error", "limit", "upgrade", "resource", "tier", "message"] {
        assert!(
            plan["properties"].get(field).is_some(),
            "402 body lacks {field}"
        );
    }
    let mut limited = Vec::new();
    for (path, method, op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().unwrap() {
            let response = resolve(&doc, response);
            let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
                continue;
            };
            if status == "402" {
                assert_eq!(schema["$ref"], "#/components/schemas/PlanLimitReached");
                limited.push(format!("{method} {path}"));
            } else if status.starts_with('4') || status.starts_with('5') {
                // A problem body, or one that extends it (`AlreadyConnected`, `NotConfigured`).
                let name = schema["$ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} {status}: inline error schema"))
                    .trim_start_matches("#/components/schemas/");
                let fields = &doc["components"]["schemas"][name]["properties"];
                assert!(
                    fields.get("error").is_some() && fields.get("message").is_some(),
                    "{method} {path} {status}: {name} is not a problem body"
                );
            }
        }
    }
    limited.sort();
    assert_eq!(
        limited,
        [
            "post /api/v1/endpoints",
            "post /api/v1/events",
            "post /api/v1/repositories/connect"
        ]
    );
}

#[test]
fn operation_ids_are_unique() {
    let doc = doc();
    let mut ids: Vec<&str> = operations(&doc)
        .map(|(_, _, op)| op["operationId"].as_str().unwrap())
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "{ids:?}");
}

#[test]
fn list_routes_take_limit_and_cursor() {
    let doc = doc();
    for path in [
        "/api/v1/repositories/connections",
        "/api/v1/endpoints",
        "/api/v1/deliveries",
        "/api/v1/webhooks/deliveries",
    ] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        for name in ["limit", "cursor"] {
            let p = params
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{path} lacks {name}"));
            assert_eq!(p["in"], "query");
        }
        let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!(limit["schema"]["minimum"], 1, "{path}");
        assert!(limit["schema"]["maximum"].as_u64().is_some(), "{path}");
    }
}

#[test]
fn provider_routes_take_opaque_bytes_and_answer_202_and_401() {
    let doc = doc();
    let routes: Vec<(&String, &String)> = operations(&doc)
        .filter(|(_, _, op)| op["tags"][0] == "webhooks")
        .map(|(path, method, _)| (path, method))
        .collect();
    for source in hookline::model::Source::ALL {
        let op = &doc["paths"][source.route()]["post"];
        assert!(op.is_object(), "{} is not in the document", source.route());
        let body = op["requestBody"]["content"].as_object().unwrap();
        for (media, content) in body {
            assert_eq!(content["schema"]["format"], "binary", "{source} {media}");
        }
        for status in ["200", "202", "401", "413", "503"] {
            assert!(op["responses"].get(status).is_some(), "{source}: {status}");
        }
    }
    assert_eq!(
        routes.len(),
        7,
        "six POST routes and WhatsApp's GET handshake"
    );
}
