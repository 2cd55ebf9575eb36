//! `/openapi.json` is true: it documents exactly the routes the gateway
//! serves (`http::ROUTES`, which the wiring itself checks), each on its
//! listener, and every answer the running gateway gives them has a
//! documented status and the documented shape.

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use attendance_relay::http::{Listener, ROUTES};
use serde_json::Value;

use crate::helpers::{ADMIN_SECRET, TestApp, admin_token, spawn_app_with};

const EVENTBRITE_TOKEN: &str = "openapi-eventbrite-token";

/// `$ref` followed within the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(pointer) => resolve(doc, doc.pointer(&pointer[1..]).expect("$ref resolves")),
        None => schema,
    }
}

/// The subset of JSON Schema the document uses: types (with null),
/// required and declared properties, maps, arrays, oneOf, enums, bounds
/// and patterns.
fn conforms(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(choices) = schema["oneOf"].as_array() {
        return match choices
            .iter()
            .filter(|c| conforms(doc, c, value).is_ok())
            .count()
        {
            1 => Ok(()),
            n => Err(format!("{value} matches {n} of oneOf {schema}")),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()),
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let typed = types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !typed {
        return Err(format!("{value} is not {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{value} is not one of {allowed:?}"));
    }
    if let Some(number) = value.as_i64() {
        let below = schema["minimum"].as_i64().is_some_and(|min| number < min);
        let above = schema["maximum"].as_i64().is_some_and(|max| number > max);
        if below || above {
            return Err(format!("{value} is out of the bounds of {schema}"));
        }
    }
    if let (Some(text), Some(pattern)) = (value.as_str(), schema["pattern"].as_str())
        && !regex_lite::Regex::new(pattern).unwrap().is_match(text)
    {
        return Err(format!("{value} does not match {pattern}"));
    }
    match value {
        Value::Object(fields) => {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                if !fields.contains_key(name) {
                    return Err(format!("{name} missing from {value}"));
                }
            }
            for (name, field) in fields {
                let declared = &schema["properties"][name];
                let field_schema = if declared.is_null() {
                    &schema["additionalProperties"]
                } else {
                    declared
                };
                if field_schema.is_object() {
                    conforms(doc, field_schema, field).map_err(|e| format!("{name}: {e}"))?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| conforms(doc, &schema["items"], item)),
        _ => Ok(()),
    }
}

fn listener_of(item: &Value) -> Listener {
    match item["x-listener"].as_str() {
        Some("public") => Listener::Public,
        Some("admin") => Listener::Admin,
        other => panic!("x-listener {other:?}"),
    }
}

fn base(app: &TestApp, listener: Listener) -> &str {
    match listener {
        Listener::Public => &app.public,
        Listener::Admin => &app.admin,
    }
}

/// Every source and the admin API on.
async fn configured_app() -> TestApp {
    spawn_app_with(&[
        ("RELAY_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ("EVENTBRITE_WEBHOOK_TOKEN", EVENTBRITE_TOKEN),
        ("GENERIC_JWT_SECRET", "openapi-generic-secret"),
    ])
    .await
}

async fn document(app: &TestApp) -> Value {
    let (status, text) = app.get(&format!("{}/openapi.json", app.admin)).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

#[actix_web::test]
async fn the_document_lists_exactly_the_routes_the_gateway_serves_each_on_its_listener() {
    let app = configured_app().await;
    let doc = document(&app).await;
    let documented: BTreeSet<(String, String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let listener = format!("{:?}", listener_of(item));
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| ["get", "post", "put", "patch", "delete"].contains(&key.as_str()))
                .map(move |method| (listener.clone(), method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|r| {
            (
                format!("{:?}", r.listener),
                r.method.to_owned(),
                r.path.to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, served);
}

#[actix_web::test]
async fn every_answer_of_every_route_is_documented_with_its_status_and_shape() {
    let app = configured_app().await;
    let doc = document(&app).await;
    // Something to list and tally.
    let join = crate::helpers::zoom_join("42", "a@example.com", "2026-01-01T10:00:00Z");
    assert_eq!(app.post_zoom(&join).await.0, StatusCode::OK);
    for route in ROUTES {
        let item = &doc["paths"][route.path];
        let operation = &item[route.method.to_lowercase()];
        let concrete =
            |token: &str, id: &str| route.path.replace("{token}", token).replace("{id}", id);
        // A plain request, an authorized one, and wrong path values.
        let mut probes = vec![
            (concrete(EVENTBRITE_TOKEN, "1"), None),
            (concrete(EVENTBRITE_TOKEN, "1"), Some(admin_token())),
            (concrete("wrong", "d999"), Some(admin_token())),
            (concrete("wrong", "x"), Some(admin_token())),
        ];
        if route.path == "/admin/records" {
            probes.push(("/admin/records?status=lost".into(), Some(admin_token())));
        }
        for (path, token) in probes {
            let url = format!("{}{path}", base(&app, route.listener));
            let mut request = app.client.request(
                actix_web::http::Method::from_bytes(route.method.as_bytes()).unwrap(),
                url,
            );
            if let Some(token) = &token {
                request = request.insert_header(("authorization", format!("Bearer {token}")));
            }
            let mut response = request
                .insert_header(("content-type", "application/json"))
                .send_body("{}")
                .await
                .unwrap();
            let status = response.status();
            let body = response.body().limit(1 << 22).await.unwrap();
            let documented = &operation["responses"][status.as_str()];
            assert!(
                documented.is_object(),
                "{} {path} answered {status}, undocumented",
                route.method
            );
            if let Some(schema) = documented.pointer("/content/application~1json/schema") {
                let value: Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| panic!("{} {path}: {status} is not JSON", route.method));
                if let Err(why) = conforms(&doc, schema, &value) {
                    panic!("{} {path} {status}: {why}", route.method);
                }
            }
        }
        // Never on the other listener.
        let other = match route.listener {
            Listener::Public => Listener::Admin,
            Listener::Admin => Listener::Public,
        };
        let url = format!("{}{}", base(&app, other), concrete(EVENTBRITE_TOKEN, "1"));
        let (status, _) = app.call(route.method, &url, Some(&admin_token())).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{} {} on {other:?}",
            route.method,
            route.path
        );
    }
}

/// A path value as a client that follows the document sends it: an
/// integer when it reads as one, else a string.
fn path_value(text: &str) -> Value {
    match text.parse::<i64>() {
        Ok(number) if number.to_string() == text => Value::from(number),
        _ => Value::from(text),
    }
}

#[actix_web::test]
async fn the_declared_shape_of_a_retried_id_is_what_the_route_accepts() {
    let app = configured_app().await;
    let doc = document(&app).await;
    let operation = &doc["paths"]["/admin/records/{id}/retry"]["post"];
    let id = operation["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "id")
        .expect("{id} is declared");
    let schema = &id["schema"];
    let probes = [
        "1",
        "42",
        "9223372036854775807",
        "d1",
        "d42",
        "0",
        "-1",
        "d0",
        "d",
        "dd1",
        "x",
        "1.5",
        "d-1",
        "D1",
        "9223372036854775808",
    ];
    for probe in probes {
        let (status, body) = app
            .call(
                "POST",
                &format!("{}/admin/records/{probe}/retry", app.admin),
                Some(&admin_token()),
            )
            .await;
        let declared = conforms(&doc, schema, &path_value(probe));
        assert_eq!(
            declared.is_ok(),
            status != StatusCode::BAD_REQUEST,
            "{probe}: {declared:?}, answered {status} {body}"
        );
        // Declared ids name nothing here: the answer is the documented 404.
        if declared.is_ok() {
            assert_eq!(status, StatusCode::NOT_FOUND, "{probe}: {body}");
        }
    }
}

#[actix_web::test]
async fn methods_and_paths_the_document_does_not_name_are_not_served() {
    let app = configured_app().await;
    let doc = document(&app).await;
    let refusal = &doc["components"]["responses"]["MethodNotAllowed"];
    assert!(refusal["headers"]["Allow"].is_object(), "{refusal}");
    let schema = refusal
        .pointer("/content/application~1json/schema")
        .expect("a 405's shape is documented");
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = format!(
            "{}{}",
            base(&app, listener_of(item)),
            path.replace("{token}", EVENTBRITE_TOKEN)
                .replace("{id}", "1")
        );
        let served: Vec<String> = ["get", "post", "put", "patch", "delete"]
            .into_iter()
            .filter(|method| item[*method].is_object())
            .map(str::to_uppercase)
            .collect();
        for method in ["GET", "POST", "PUT", "DELETE"] {
            if served.iter().any(|m| m == method) {
                continue;
            }
            let mut response = app
                .client
                .request(
                    actix_web::http::Method::from_bytes(method.as_bytes()).unwrap(),
                    &url,
                )
                .insert_header(("authorization", format!("Bearer {}", admin_token())))
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let allow = response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(allow, Some(served.join(", ")), "{method} {path}");
            let body: Value = serde_json::from_slice(&response.body().await.unwrap()).unwrap();
            conforms(&doc, schema, &body).unwrap_or_else(|why| panic!("{method} {path}: {why}"));
            assert_eq!(body["error"], "method_not_allowed");
        }
    }
    for (listener, path) in [
        (Listener::Admin, "/admin"),
        (Listener::Admin, "/admin/records/1"),
        (Listener::Public, "/webhooks"),
        (Listener::Public, "/openapi.json"),
    ] {
        let (status, _) = app
            .call(
                "GET",
                &format!("{}{path}", base(&app, listener)),
                Some(&admin_token()),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}
