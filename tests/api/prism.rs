//! Stoplight Prism as a validating proxy between the gateway and a fake HubSpot.
//!
//! HubSpot's OpenAPI documents are proprietary, so they are never in this
//! repository: they are read at test time from `../shared/specs/hubspot/prism`
//! (copies with Prism-specific fixes, see the README there). Prism is the npm
//! dev dependency in package.json (`npm ci` installs it).
//!
//! What Prism 5.14 does in `proxy --errors` mode (checked by experiment):
//! - invalid request: answers 422 (problem+json with a `validation` list) and
//!   does NOT forward it upstream;
//! - no `Authorization: Bearer …`: answers 401, not forwarded;
//! - upstream answer that breaks the spec: answers 500 `#VIOLATIONS` instead,
//!   with the details in the `sl-violations` header;
//! - path not in the documents: 404 `#NO_PATH_MATCHED_ERROR`, not forwarded.
//!
//! Its log is signale text only (no JSON mode), and with `--errors` it logs the
//! error kind of a rejected request but not the individual violation messages.

use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Map, Value};
use tempfile::TempDir;

/// The documents whose paths the gateway calls. Prism serves one document per
/// process and the gateway has one base URL, so they are merged into one.
const DOCUMENTS: [&str; 3] = [
    "crm-contacts.v3.json",
    "marketing-events.2026-03.json",
    "oauth.2026-03.json",
];

/// Every line Prism printed, with the time of the last one.
type Log = Arc<Mutex<(Vec<String>, Instant)>>;

/// A Prism proxy in front of `upstream`, validating every request and response against
/// HubSpot's documents. Starting one fails the test when ../shared/specs is missing or
/// Prism is not installed (`npm ci` not run).
pub struct Prism {
    child: Child,
    port: u16,
    log: Log,
    _dir: TempDir,
}

impl Prism {
    pub async fn start(upstream: &str) -> Prism {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let specs = root.join("../shared/specs/hubspot/prism");
        assert!(
            DOCUMENTS.iter().all(|name| specs.join(name).is_file()),
            "HubSpot's documents are needed in {}",
            specs.display()
        );
        let prism_bin = root.join("node_modules/.bin/prism");
        assert!(
            prism_bin.is_file(),
            "Prism is needed: run `npm ci` in {}",
            root.display()
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let merged = dir.path().join("hubspot.json");
        let mut documents = DOCUMENTS.iter().map(|name| {
            let prefix = name.split('.').next().expect("named");
            (prefix, read_json(&specs.join(name)))
        });
        let (_, base) = documents.next().unwrap();
        let doc = documents.fold(base, |base, (prefix, other)| merge(base, other, prefix));
        std::fs::write(&merged, serde_json::to_vec(&doc).unwrap())
            .expect("merged document written");

        // A free port: the OS picks one, we release it for Prism (tiny race, fine in tests).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spawned = Command::new(&prism_bin)
            .arg("proxy")
            .arg(&merged)
            // Prism appends the request path to the upstream URL's path.
            .arg(upstream)
            .args([
                "--errors",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .env("FORCE_COLOR", "0") // plain log lines to parse
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = spawned.unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}); is Node installed?",
                prism_bin.display()
            )
        });

        let log: Log = Arc::new(Mutex::new((Vec::new(), Instant::now())));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        collect_lines(stdout, log.clone());
        collect_lines(stderr, log.clone());

        wait_until_listening(&mut child, port, &log).await;
        Prism {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// What the gateway gets as HUBSPOT_BASE_URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request Prism judged, one line each, in order:
    /// `POST /crm/v3/objects/contacts/batch/read -> 200` or
    /// `POST /marketing/… -> 422 UNPROCESSABLE_ENTITY: Invalid request`,
    /// followed by ` | Violation: …` for each violation Prism logged for it.
    /// A contract test asserts that none of them is a 4xx/5xx.
    pub fn violations(&self) -> Vec<String> {
        // Prism logs a rejection just after it answers: let its log go quiet first.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && self.log.lock().unwrap().1.elapsed() < Duration::from_millis(300)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        summarize(&self.log.lock().unwrap().0)
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls with TCP connects; a Prism that exits or takes over 30 s fails the test with its output.
async fn wait_until_listening(child: &mut Child, port: u16, log: &Log) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = ([127, 0, 0, 1], port).into();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        let exited = child.try_wait().unwrap().is_some();
        if exited || Instant::now() > deadline {
            let _ = child.kill();
            let output = log.lock().unwrap().0.join("\n");
            panic!("Prism did not listen on port {port} (exited: {exited}):\n{output}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn collect_lines(stream: impl Read + Send + 'static, log: Log) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            log.0.push(line);
            log.1 = Instant::now();
        }
    });
}

/// `other`'s paths and components added to `base`. A component name both define
/// with different contents (crm-contacts and marketing-events differ on
/// `schemas.NextPage`, `schemas.StandardError` and `securitySchemes.oauth2`'s
/// scopes) is renamed `{prefix}.{name}` in `other`, with its `$ref`s and
/// security requirements, so each operation keeps its own definition.
fn merge(mut base: Value, mut other: Value, prefix: &str) -> Value {
    let mut renames = Vec::new(); // (section, old, new)
    for (section, items) in other["components"].as_object().unwrap() {
        for (name, value) in items.as_object().unwrap() {
            if base["components"][section]
                .get(name)
                .is_some_and(|mine| mine != value)
            {
                renames.push((section.clone(), name.clone(), format!("{prefix}.{name}")));
            }
        }
    }
    rename_refs(&mut other, &renames);
    for (section, old, new) in &renames {
        let items = other["components"][section].as_object_mut().unwrap();
        let value = items.remove(old).unwrap();
        items.insert(new.clone(), value);
    }

    let Value::Object(components) = other["components"].take() else {
        panic!("components")
    };
    for (section, items) in components {
        let target = base["components"]
            .as_object_mut()
            .unwrap()
            .entry(section)
            .or_insert_with(|| Value::Object(Map::new()));
        for (name, value) in items.as_object().unwrap() {
            target[name] = value.clone(); // equal when already there
        }
    }
    let Value::Object(paths) = other["paths"].take() else {
        panic!("paths")
    };
    for (path, item) in paths {
        let previous = base["paths"]
            .as_object_mut()
            .unwrap()
            .insert(path.clone(), item);
        assert!(previous.is_none(), "both documents define {path}");
    }
    // Tags only label operations; keep one of each name.
    if let Some(tags) = other["tags"].as_array() {
        let base_tags = base["tags"].as_array_mut().unwrap();
        for tag in tags {
            if !base_tags.iter().any(|t| t["name"] == tag["name"]) {
                base_tags.push(tag.clone());
            }
        }
    }
    base
}

/// Points `$ref`s (`#/components/{section}/{old}[/…]`) and security requirement
/// keys (`security: [{old: scopes}]`) at the renamed components.
fn rename_refs(value: &mut Value, renames: &[(String, String, String)]) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("$ref") {
                for (section, old, new) in renames {
                    let from = format!("#/components/{section}/{old}");
                    if *reference == from || reference.starts_with(&format!("{from}/")) {
                        *reference =
                            format!("#/components/{section}/{new}{}", &reference[from.len()..]);
                    }
                }
            }
            if let Some(Value::Array(requirements)) = map.get_mut("security") {
                for requirement in requirements.iter_mut().filter_map(Value::as_object_mut) {
                    for (section, old, new) in renames {
                        if section == "securitySchemes"
                            && let Some(scopes) = requirement.remove(old)
                        {
                            requirement.insert(new.clone(), scopes);
                        }
                    }
                }
            }
            map.values_mut().for_each(|v| rename_refs(v, renames));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, renames)),
        _ => {}
    }
}

/// One line per request from Prism's signale log, e.g.
/// `[9:00:00 AM] › [HTTP SERVER] post /x ℹ  info      Request received`,
/// `… [PROXY] ℹ  info      The upstream call to /x has returned 200`,
/// `… [HTTP SERVER] post /x ✖  error     Request terminated with error: https://stoplight.io/prism/errors#UNPROCESSABLE_ENTITY: Invalid request`.
fn summarize(lines: &[String]) -> Vec<String> {
    struct Judged {
        request: String,
        path: String,
        status: Option<String>,
        violations: Vec<String>,
    }
    let mut judged: Vec<Judged> = Vec::new();
    for line in lines {
        if let Some(rest) = line.split_once("[HTTP SERVER] ").map(|(_, rest)| rest) {
            let mut words = rest.split_whitespace();
            let (Some(method), Some(path)) = (words.next(), words.next()) else {
                continue;
            };
            let request = format!("{} {path}", method.to_uppercase());
            if line.ends_with("Request received") {
                judged.push(Judged {
                    request,
                    path: path.to_owned(),
                    status: None,
                    violations: vec![],
                });
            } else if let Some((_, error)) = line.split_once("Request terminated with error: ")
                && let Some(j) = judged.iter_mut().rev().find(|j| j.request == request)
            {
                j.status = Some(error_status(error));
            }
        } else if let Some((_, rest)) = line.split_once("The upstream call to ") {
            // The upstream status stands unless Prism then rejects the response.
            if let Some((path, status)) = rest.split_once(" has returned ")
                && let Some(j) = judged
                    .iter_mut()
                    .rev()
                    .find(|j| j.path == path && j.status.is_none())
            {
                j.status = Some(status.trim().to_owned());
            }
        } else if let Some((_, violation)) = line.split_once("Violation: ") {
            // Logged without the request; it belongs to the latest one.
            if let Some(j) = judged.last_mut() {
                j.violations.push(format!("Violation: {violation}"));
            }
        }
    }
    judged
        .into_iter()
        .map(|j| {
            let mut text = format!(
                "{} -> {}",
                j.request,
                j.status.as_deref().unwrap_or("no answer logged")
            );
            for violation in j.violations {
                text.push_str(" | ");
                text.push_str(&violation);
            }
            text
        })
        .collect()
}

/// `https://stoplight.io/prism/errors#UNPROCESSABLE_ENTITY: Invalid request` ->
/// `422 UNPROCESSABLE_ENTITY: Invalid request` (statuses from Prism's error templates).
fn error_status(error: &str) -> String {
    let kind = error.rsplit_once('#').map_or(error, |(_, kind)| kind);
    let code = match kind.split(':').next().unwrap_or("") {
        "UNPROCESSABLE_ENTITY" => "422",
        "UNAUTHORIZED" => "401",
        "INVALID_CONTENT_TYPE" => "415",
        "NOT_ACCEPTABLE" => "406",
        "NO_PATH_MATCHED_ERROR" | "NO_SERVER_MATCHED_ERROR" | "NOT_FOUND" => "404",
        "NO_METHOD_MATCHED_ERROR" => "405",
        "UPSTREAM_NOT_IMPLEMENTED" | "PROXY_UNSUPPORTED_REQUEST_BODY" => "501",
        _ => "500", // VIOLATIONS (invalid upstream response), upstream unreachable, …
    };
    format!("{code} {kind}")
}
