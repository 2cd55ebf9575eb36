//! The generic route over real HTTP: both ways of proving a delivery genuine,
//! the simple schema, batches and dedupe by the sender's id.

use actix_web::http::StatusCode;
use attendance_relay::{app::Application, record::State, settings::Settings, store::RecordStatus};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use standardwebhooks::Webhook;

use crate::helpers::{TestApp, metric, now_secs, spawn_app, spawn_app_with, test_env};

const JWT_SECRET: &str = "test-generic-jwt-secret";
/// `whsec_` and base64 of `test-generic-webhook-secret`.
const WEBHOOK_SECRET: &str = "whsec_dGVzdC1nZW5lcmljLXdlYmhvb2stc2VjcmV0";
const ISSUER: &str = "crm-sync";
const AUDIENCE: &str = "attendance-relay";
/// `{"alg":"none","typ":"JWT"}`, base64url.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

// Test-only key pairs, made with `openssl genpkey` for these tests.
const RSA_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC2Ic/rRmKymfTf
9UCMoMIdAu/06NVbxqVzbIi3cUsG7JD/YC30632IhrzUEOhU0BDKR8tO1TS9aY03
hzmfmU2fFJwn8riGfWD2bROTcsyUDExPlA3oiqVNSE7gI0oidtdmUc2oPjafJi8q
fYHzfiHqXK5cm7ybQfJYJjVktJvU8Ct7MYtz/uZsbjYukR/e0BqTySMGjzQhtXui
BIBrdo+khFC4qYlG9tuQ0r57HKN75JZuqNAiMgpxouXfhCoaVjrmaeY7on+ZlDN8
ZZE4a+45ke3OexR7+a4rj82B0XHo0mTiV87M8qhDBez5b27FG0kXmIjaGlP9K2zS
FXkqi8VxAgMBAAECggEAC2ku56SvRlVS/D0XYDgqMTsf4Y4839UgRI0GO8gDVVm4
8+cIuhGO+eDHL9onVDj89E9vM280MLHOQS5ds9wc+tyFtBMG8JYmXwoSceh9XMEw
fsPd4zXciW0AVBah7GrZr/VsFyBet7XiupzGaYT7hv1rhy3SsT9+eXtbWQXfxYVz
hCuHB6BEccPcVNlJarEFA/pnGUiqyDGtgJnfGM7fzZkIOyzsvBV6qBbTsoC2Auek
b+3Nfxcef83isq1cvHcexkfsXnu8doitkoKOLRHcHkpicNHHn9/HxEkyy8ps0ktL
yNHtHx7017DztA119JdH9H1cy50YR++314XXPL7vYQKBgQDb49cNFpJVfTZ9k7tn
4RTfkvZvOsceXl/1FrB3RSEzRI5uDpzC0vL6IJLZla3eBpZ+znxYrQK+6JbJ1G4i
6f3tX2XmDutfy8GFFqlY8ulseQ8YavSCMaVX+zr86Up1xfOS4+BqH62C1CQkLw9O
TsGpxawXPKuNMyBSiORiaedHvQKBgQDUCqG+osxz4NvQgIxBqAnOlJ+ie53vDb+p
EUpUDKXgRfjDmiQ5PCNh5t4Fe8pEDFU9rz808HhkarjoAppd3O67q8HfGuCWvymW
YbytAovI8ZwZ5XHYJDWvF7TDUQAmnNC5i+Oh9jZPSlvmJ/MEhvtxckMm3IkYBsUp
i8yJb5RlxQKBgHqRpwb5pPoYQK6BEb6WvV7eeZWIywNHke95BUaGdzovpcD9Ti5f
DeeVDqZQg8k2HN90U+XOErC9z4eTbQzzJ4MQYSl6+YK9fhKkjiMxzCGV3W879y03
ZTYEqV3e4I2DmQExGp+tJre9bqPow3xf9B2hPQr625lqfULkYYHmDHB1AoGBAMX6
H0alLgvLmLE2NL5grLdq4RmOHcnDpn2unR2YqY+bBUdsNgISel7Ade/cwt+CPFxZ
scQ1+dKYKojFVWfqDiS/m0Y6DBPz7Fpyav2GcQlvPPaY2hCazlzq32W1zVQ/+koj
qKfiAJdLsD5Wcnp5pW8o5jX0lzQNriy6UIDJ416ZAoGBANR5dxPbfUyljSNasdxD
7qMB7oO5gl83YizlzDEt6WLd1DSeE/oh+Mnxap358e6FrXlF9TEwurbXO04U2i4/
01k6uAwA1O/MYdo/UVJSJ0mp8AWUk6+sqaHzNg2APq14gTI32rv7H3HiVvcNpA55
iSbe/UV9a5ENTX+qQ4zbJj40
-----END PRIVATE KEY-----
";
const RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtiHP60Zispn03/VAjKDC
HQLv9OjVW8alc2yIt3FLBuyQ/2At9Ot9iIa81BDoVNAQykfLTtU0vWmNN4c5n5lN
nxScJ/K4hn1g9m0Tk3LMlAxMT5QN6IqlTUhO4CNKInbXZlHNqD42nyYvKn2B834h
6lyuXJu8m0HyWCY1ZLSb1PArezGLc/7mbG42LpEf3tAak8kjBo80IbV7ogSAa3aP
pIRQuKmJRvbbkNK+exyje+SWbqjQIjIKcaLl34QqGlY65mnmO6J/mZQzfGWROGvu
OZHtznsUe/muK4/NgdFx6NJk4lfOzPKoQwXs+W9uxRtJF5iI2hpT/Sts0hV5KovF
cQIDAQAB
-----END PUBLIC KEY-----
";
const EC_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWTeRXd2TlVX5iKA5
ypD1bkvsU9lx++s2sNlgikuzlEahRANCAAS20E6btYijlwa+8YCX7cVEYaw8+B79
CfB601/8Ahdz5LmsLcEYhZSpsDiv9orAMPc/+ByNigZC1FWJxSZgiv1Z
-----END PRIVATE KEY-----
";
const EC_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEttBOm7WIo5cGvvGAl+3FRGGsPPge
/QnwetNf/AIXc+S5rC3BGIWUqbA4r/aKwDD3P/gcjYoGQtRVicUmYIr9WQ==
-----END PUBLIC KEY-----
";
/// On P-384, which ES256 cannot use.
const EC_P384_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAElKZwUgvRgKONE9SVHCja9DamSZEv9Bv/
VZ5v/geV2Ygvc5HOsCRuIM1cpoge2vkyUzNnG/isRIdxqw3BkFRnKk6jxDMcTPa3
TKLXLQzT5Zsnz9W4mfrEeShHhCIA60hB
-----END PUBLIC KEY-----
";

const ROUTE: &str = "/webhooks/generic";

type Headers = Vec<(&'static str, String)>;

async fn generic_app(overrides: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![
        ("GENERIC_JWT_SECRET", JWT_SECRET),
        ("GENERIC_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    settings.extend_from_slice(overrides);
    spawn_app_with(&settings).await
}

fn claims(exp_in_secs: i64) -> Value {
    json!({"sub": "crm", "iss": ISSUER, "aud": AUDIENCE, "exp": now_secs() + exp_in_secs})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn record(id: &str, email: &str) -> Value {
    json!({
        "id": id, "externalEventId": "webinar-42", "externalAccountId": "acc-7",
        "state": "attend", "email": email, "occurredAt": "2026-01-01T10:00:00Z",
        "firstName": "Jane", "lastName": "Doe", "properties": {"joinedAt": "2026-01-01T10:00:00Z"}
    })
}

fn bearer(token: &str) -> Headers {
    vec![("authorization", format!("Bearer {token}"))]
}

/// A valid HS256 token with the configured issuer and audience.
fn valid_bearer() -> Headers {
    bearer(&hs256(&claims(300), JWT_SECRET))
}

/// The three Standard Webhooks headers, signed with `secret` at `timestamp`.
fn signed(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Headers {
    let signature = Webhook::new(secret)
        .unwrap()
        .sign(id, timestamp, body)
        .unwrap();
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ]
}

async fn assert_refused(app: &TestApp, body: &[u8], headers: &[(&str, String)], named: &str) {
    let (status, answer) = app.post(ROUTE, body, headers).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{named}: {answer}");
    assert_eq!(answer["error"], "unauthorized");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains(named), "{message:?} should name {named:?}");
    for (_, value) in headers {
        let credential = value.trim_start_matches("Bearer ");
        assert!(
            credential.len() < 20 || !message.contains(credential),
            "the answer repeats a credential: {message}"
        );
    }
}

#[actix_web::test]
async fn a_valid_hs256_token_stores_the_record_as_sent() {
    let app = generic_app(&[]).await;
    let body = record("r-1", "Jane@Example.com").to_string();
    let (status, answer) = app.post(ROUTE, body.as_bytes(), &valid_bearer()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 1, "duplicates": 0, "ignored": 0})
    );

    let records = app.records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].source, "generic");
    assert_eq!(records[0].status, RecordStatus::Pending);
    let stored = &records[0].record;
    assert_eq!(stored.state, State::Attend);
    assert_eq!(stored.email, "jane@example.com");
    assert_eq!(stored.first_name.as_deref(), Some("Jane"));
    assert_eq!(stored.external_event_id, "webinar-42");
    assert_eq!(stored.external_account_id, "acc-7");
    assert_eq!(stored.interaction_ms, 1_767_261_600_000);
    assert_eq!(stored.properties["joinedAt"], "2026-01-01T10:00:00Z");
    let metrics = app.metrics().await;
    let accepted = [("source", "generic"), ("outcome", "accepted")];
    assert_eq!(
        metric(&metrics, "relay_webhooks_received_total", &accepted),
        Some(1.0)
    );
}

#[actix_web::test]
async fn refused_tokens_get_401_naming_the_problem_and_nothing_is_stored() {
    let app = generic_app(&[
        ("GENERIC_JWT_ISSUER", ISSUER),
        ("GENERIC_JWT_AUDIENCE", AUDIENCE),
    ])
    .await;
    let body = record("r-1", "a@example.com").to_string();
    let body = body.as_bytes();
    let with = |changes: Value| {
        let mut claims = claims(300);
        claims
            .as_object_mut()
            .unwrap()
            .extend(changes.as_object().unwrap().clone());
        claims
    };
    let valid = hs256(&claims(300), JWT_SECRET);
    let other = hs256(&with(json!({"sub": "someone-else"})), JWT_SECRET);
    // The other token's header and claims under the valid token's signature.
    let tampered = format!(
        "{}.{}",
        other.rsplit_once('.').unwrap().0,
        valid.rsplit_once('.').unwrap().1
    );
    let mut no_exp = claims(300);
    no_exp.as_object_mut().unwrap().remove("exp");
    let payload = valid.split('.').nth(1).unwrap();
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &claims(300),
        &EncodingKey::from_rsa_pem(RSA_PRIVATE_KEY.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, Headers, &str)> = vec![
        (
            "expired",
            bearer(&hs256(&claims(-3600), JWT_SECRET)),
            "expired",
        ),
        (
            "wrong key",
            bearer(&hs256(&claims(300), "guess")),
            "signature does not match",
        ),
        (
            "tampered claims",
            bearer(&tampered),
            "signature does not match",
        ),
        (
            "wrong audience",
            bearer(&hs256(&with(json!({"aud": "other-app"})), JWT_SECRET)),
            "audience",
        ),
        (
            "wrong issuer",
            bearer(&hs256(&with(json!({"iss": "stranger"})), JWT_SECRET)),
            "issuer",
        ),
        (
            "missing exp",
            bearer(&hs256(&no_exp, JWT_SECRET)),
            "exp claim",
        ),
        (
            "alg none",
            bearer(&format!("{ALG_NONE_HEADER}.{payload}.")),
            "malformed",
        ),
        ("another algorithm", bearer(&rs256), "not signed with HS256"),
        ("not a JWT", bearer("abc"), "malformed"),
        (
            "not bearer",
            vec![("authorization", format!("Basic {valid}"))],
            "not a Bearer token",
        ),
        ("no credentials", vec![], "missing credentials"),
    ];
    for (_case, headers, named) in &cases {
        assert_refused(&app, body, headers, named).await;
    }
    assert!(app.records().await.is_empty());
    let metrics = app.metrics().await;
    let refused = [("source", "generic"), ("outcome", "unauthorized")];
    assert_eq!(
        metric(&metrics, "relay_webhooks_received_total", &refused),
        Some(cases.len() as f64)
    );

    let (status, answer) = app.post(ROUTE, body, &bearer(&valid)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the valid token itself passes: {answer}"
    );
}

#[actix_web::test]
async fn without_a_configured_audience_a_token_naming_one_is_accepted() {
    let app = generic_app(&[]).await;
    let body = record("r-1", "a@example.com").to_string();
    let (status, answer) = app.post(ROUTE, body.as_bytes(), &valid_bearer()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[actix_web::test]
async fn rs256_and_es256_tokens_are_checked_with_the_configured_public_key() {
    let keys = [
        (RSA_PUBLIC_KEY, RSA_PRIVATE_KEY, Algorithm::RS256),
        (EC_PUBLIC_KEY, EC_PRIVATE_KEY, Algorithm::ES256),
    ];
    for (public, private, algorithm) in keys {
        let app = spawn_app_with(&[("GENERIC_JWT_PUBLIC_KEY_PEM", public)]).await;
        let signing_key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private.as_bytes()),
            _ => EncodingKey::from_ec_pem(private.as_bytes()),
        }
        .unwrap();
        let token = encode(&Header::new(algorithm), &claims(300), &signing_key).unwrap();
        let body = record("r-1", "a@example.com").to_string();
        let (status, answer) = app.post(ROUTE, body.as_bytes(), &bearer(&token)).await;
        assert_eq!(status, StatusCode::OK, "{algorithm:?}: {answer}");
        assert_eq!(answer["accepted"], 1, "{algorithm:?}");

        let expired = encode(&Header::new(algorithm), &claims(-3600), &signing_key).unwrap();
        assert_refused(&app, body.as_bytes(), &bearer(&expired), "expired").await;
        let hs256_token = hs256(&claims(300), "public keys are no HMAC secrets");
        assert_refused(
            &app,
            body.as_bytes(),
            &bearer(&hs256_token),
            "not signed with",
        )
        .await;
        assert_refused(
            &app,
            body.as_bytes(),
            &[],
            "expected an Authorization: Bearer token",
        )
        .await;
    }
}

#[actix_web::test]
async fn with_an_issuer_and_audience_configured_a_token_lacking_either_claim_is_refused() {
    let keys = [
        (
            ("GENERIC_JWT_SECRET", JWT_SECRET),
            Algorithm::HS256,
            EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        ),
        (
            ("GENERIC_JWT_PUBLIC_KEY_PEM", RSA_PUBLIC_KEY),
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE_KEY.as_bytes()),
        ),
        (
            ("GENERIC_JWT_PUBLIC_KEY_PEM", EC_PUBLIC_KEY),
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIVATE_KEY.as_bytes()),
        ),
    ];
    let body = record("r-1", "a@example.com").to_string();
    for (key_setting, algorithm, signing_key) in keys {
        let app = spawn_app_with(&[
            key_setting,
            ("GENERIC_JWT_ISSUER", ISSUER),
            ("GENERIC_JWT_AUDIENCE", AUDIENCE),
        ])
        .await;
        let signing_key = signing_key.unwrap();
        let token = |claims: &Value| encode(&Header::new(algorithm), claims, &signing_key).unwrap();
        for claim in ["iss", "aud"] {
            let mut lacking = claims(300);
            lacking.as_object_mut().unwrap().remove(claim);
            let named = format!("lacks the required {claim} claim");
            assert_refused(&app, body.as_bytes(), &bearer(&token(&lacking)), &named).await;
        }
        assert!(app.records().await.is_empty(), "{algorithm:?}");
        let (status, answer) = app
            .post(ROUTE, body.as_bytes(), &bearer(&token(&claims(300))))
            .await;
        assert_eq!(status, StatusCode::OK, "{algorithm:?}: {answer}");
    }
}

#[actix_web::test]
async fn what_hubspot_would_refuse_gets_a_400_naming_the_field_and_nothing_is_stored() {
    let app = generic_app(&[]).await;
    let mut seconds = record("r-2", "b@example.com");
    seconds["occurredAt"] = json!(1_767_261_600);
    let mut color = record("r-3", "c@example.com");
    color["properties"]["color"] = json!("red");
    let mut register = record("r-4", "d@example.com");
    register["state"] = json!("register");
    let mut backwards = record("r-5", "e@example.com");
    backwards["properties"]["leftAt"] = json!("2026-01-01T09:00:00Z");
    let cases = [
        (seconds, "occurredAt: expected", "epoch milliseconds"),
        (color, "properties.color: ", "only joinedAt and leftAt"),
        (register, "properties.joinedAt: ", "on attend records"),
        (backwards, "properties.leftAt: ", "before joinedAt"),
    ];
    for (bad, field, why) in cases {
        let batch = json!({"records": [record("r-1", "a@example.com"), record("r-0", "z@example.com"), bad]});
        let (status, answer) = app
            .post(ROUTE, batch.to_string().as_bytes(), &valid_bearer())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("records[2].{field}")),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
    }
    assert!(app.records().await.is_empty());

    let mut offset = record("r-6", "f@example.com");
    offset["properties"] = json!({"joinedAt": "2026-01-01T11:00:00.5+01:00"});
    let (status, answer) = app
        .post(ROUTE, offset.to_string().as_bytes(), &valid_bearer())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let records = app.records().await;
    assert_eq!(
        records[0].record.properties["joinedAt"],
        "2026-01-01T10:00:00.500Z"
    );
}

#[actix_web::test]
async fn standard_webhooks_signatures_are_checked_rotation_included() {
    let app = spawn_app_with(&[("GENERIC_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await;
    let now = now_secs();

    let body = record("r-1", "a@example.com").to_string();
    let headers = signed(WEBHOOK_SECRET, "msg_1", now, body.as_bytes());
    let (status, answer) = app.post(ROUTE, body.as_bytes(), &headers).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], 1);

    // During a key rotation the sender signs with the old and the new secret.
    let body = record("r-2", "b@example.com").to_string();
    let old_secret = "whsec_b2xkLXNlY3JldC1ub3QtY29uZmlndXJlZA==";
    let old = signed(old_secret, "msg_2", now, body.as_bytes());
    let mut headers = signed(WEBHOOK_SECRET, "msg_2", now, body.as_bytes());
    headers[2].1 = format!("{} {}", old[2].1, headers[2].1);
    let (status, answer) = app.post(ROUTE, body.as_bytes(), &headers).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["accepted"], 1);

    let body = record("r-3", "c@example.com").to_string();
    let tampered = body.replace("c@example.com", "mallory@example.com");
    let headers = signed(WEBHOOK_SECRET, "msg_3", now, body.as_bytes());
    assert_refused(
        &app,
        tampered.as_bytes(),
        &headers,
        "webhook-signature does not match",
    )
    .await;
    let stale = signed(WEBHOOK_SECRET, "msg_3", now - 600, body.as_bytes());
    assert_refused(
        &app,
        body.as_bytes(),
        &stale,
        "webhook-timestamp is more than 5 minutes old",
    )
    .await;
    let wrong_secret = signed(old_secret, "msg_3", now, body.as_bytes());
    assert_refused(&app, body.as_bytes(), &wrong_secret, "does not match").await;
    let mut no_id = signed(WEBHOOK_SECRET, "msg_3", now, body.as_bytes());
    no_id.remove(0);
    assert_refused(&app, body.as_bytes(), &no_id, "missing webhook-id header").await;
    let token = hs256(&claims(300), JWT_SECRET);
    assert_refused(
        &app,
        body.as_bytes(),
        &bearer(&token),
        "bearer tokens are not configured",
    )
    .await;

    assert_eq!(app.records().await.len(), 2);
}

#[actix_web::test]
async fn a_batch_is_stored_once_and_a_resent_id_is_a_duplicate_even_when_changed() {
    let app = generic_app(&[]).await;
    let auth = valid_bearer();
    let batch = json!({"records": [
        record("r-1", "a@example.com"), record("r-2", "b@example.com"), record("r-3", "c@example.com"),
    ]})
    .to_string();
    let (status, answer) = app.post(ROUTE, batch.as_bytes(), &auth).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"accepted": 3, "duplicates": 0, "ignored": 0})
    );

    let (status, answer) = app.post(ROUTE, batch.as_bytes(), &auth).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"accepted": 0, "duplicates": 3, "ignored": 0})
    );

    // The same ids in another delivery, with another time and properties.
    let mut changed = record("r-2", "b@example.com");
    changed["occurredAt"] = json!(1_767_265_200_000_i64);
    changed["properties"] = json!({"leftAt": "2026-01-01T11:00:00Z"});
    let resent = json!({"records": [changed, record("r-4", "d@example.com")]}).to_string();
    let (_, answer) = app.post(ROUTE, resent.as_bytes(), &auth).await;
    assert_eq!(
        answer,
        json!({"accepted": 1, "duplicates": 1, "ignored": 0})
    );
    assert_eq!(app.records().await.len(), 4);
}

#[actix_web::test]
async fn a_record_with_a_vid_and_no_email_is_stored_with_that_vid() {
    let app = generic_app(&[("GENERIC_EXTERNAL_ACCOUNT_ID", "default-account")]).await;
    let body = json!({
        "id": 17, "externalEventId": 42, "state": "register", "vid": 1001,
        "occurredAt": 1_767_261_600_000_i64
    })
    .to_string();
    let (status, answer) = app.post(ROUTE, body.as_bytes(), &valid_bearer()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let records = app.records().await;
    let stored = &records[0];
    assert_eq!(
        stored.status,
        RecordStatus::Pending,
        "forwardable without an email"
    );
    assert_eq!(stored.record.vid, Some(1001));
    assert_eq!(stored.record.email, "");
    assert_eq!(stored.record.external_event_id, "42");
    assert_eq!(stored.record.external_account_id, "default-account");
    assert_eq!(stored.record.state, State::Register);
}

#[actix_web::test]
async fn a_bad_field_gets_a_400_naming_it_and_its_record() {
    let app = generic_app(&[]).await;
    let auth = valid_bearer();
    let mut bad = record("r-2", "b@example.com");
    bad["state"] = json!("joined");
    let batch = json!({"records": [record("r-1", "a@example.com"), bad]}).to_string();
    let (status, answer) = app.post(ROUTE, batch.as_bytes(), &auth).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "invalid_request");
    assert_eq!(
        answer["message"],
        "records[1].state: expected register, attend or cancel"
    );

    let over = json!({"records": vec![record("r", "a@example.com"); 1001]}).to_string();
    let app = generic_app(&[("RELAY_MAX_BODY_BYTES", "1000000")]).await;
    let (status, answer) = app.post(ROUTE, over.as_bytes(), &auth).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["message"].as_str().unwrap().contains("at most 1000"),
        "{answer}"
    );
    assert!(app.records().await.is_empty());
}

#[actix_web::test]
async fn the_generic_route_is_absent_without_a_key() {
    let app = spawn_app().await;
    let (status, answer) = app.post(ROUTE, b"{}", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"], "not_found");
    let app = spawn_app_with(&[("GENERIC_JWT_SECRET", ""), ("GENERIC_WEBHOOK_SECRET", "")]).await;
    assert_eq!(app.post(ROUTE, b"{}", &[]).await.0, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn unusable_keys_stop_the_start_with_a_clear_error() {
    let cases = [
        (
            vec![("GENERIC_JWT_PUBLIC_KEY_PEM", EC_P384_PUBLIC_KEY)],
            "GENERIC_JWT_PUBLIC_KEY_PEM",
        ),
        (
            vec![("GENERIC_JWT_PUBLIC_KEY_PEM", "not a pem")],
            "GENERIC_JWT_PUBLIC_KEY_PEM",
        ),
        (
            vec![("GENERIC_WEBHOOK_SECRET", "dGVzdA==")],
            "GENERIC_WEBHOOK_SECRET",
        ),
        (
            vec![
                ("GENERIC_JWT_SECRET", JWT_SECRET),
                ("GENERIC_JWT_PUBLIC_KEY_PEM", RSA_PUBLIC_KEY),
            ],
            "not both",
        ),
    ];
    for (overrides, named) in cases {
        let dir = crate::helpers::StoreDir::new();
        let settings = Settings::init_from_hashmap(&test_env(&dir, &overrides)).unwrap();
        match Application::build(settings) {
            Ok(_) => panic!("{named}: started with an unusable key"),
            Err(err) => assert!(err.to_string().contains(named), "{err}"),
        }
    }
}
