//! ttv's requests against what Google's own SDK sends for the same call
//! (/work/shared/google-sdk/requests.json, google-genai 3.6.1): the same method, a path of the
//! same pattern on a version the fake serves, the same kind of credential, and every field ttv
//! sends present in the SDK's body with the same JSON type. Values are not compared (the model,
//! prompt and options differ from call to call), nor are fields only the SDK sends: the capture
//! may set more options than ttv.

use std::sync::OnceLock;

use super::*;

/// The capture, in `shared/` beside the repository (CI clones it there as `../shared`).
const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/google-sdk/requests.json"
);

/// Fields Google needs whenever their object is sent, as (object path, one of these fields):
/// without them the object means nothing, so leaving them out is a difference although other
/// missing fields are not.
const REQUIRED: &[(&str, &[&str])] = &[
    ("contents[].parts[].inlineData", &["data"]),
    ("contents[].parts[].inlineData", &["mimeType"]),
    ("instances[].image", &["bytesBase64Encoded", "gcsUri"]),
    ("instances[].image", &["mimeType"]),
    ("instances[].lastFrame", &["bytesBase64Encoded", "gcsUri"]),
    ("instances[].lastFrame", &["mimeType"]),
    ("instances[].referenceImages[]", &["image"]),
    ("instances[].referenceImages[]", &["referenceType"]),
    (
        "instances[].referenceImages[].image",
        &["bytesBase64Encoded", "gcsUri"],
    ),
    ("instances[].referenceImages[].image", &["mimeType"]),
];

/// Every request of the capture, in its order: `{"call", "method", "path", "headers", "body"}`
/// (base64 payloads cut short, e.g. `"iVBORw0KGgoAAAAN...(base64, 96 chars)"`).
pub fn sdk_requests() -> &'static [Value] {
    static REQUESTS: OnceLock<Vec<Value>> = OnceLock::new();
    REQUESTS.get_or_init(|| {
        let text = std::fs::read_to_string(CAPTURE).unwrap_or_else(|e| {
            panic!("{CAPTURE}: {e} (the SDK capture lives in shared/, beside the repository)")
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{CAPTURE}: {e}"))
    })
}

/// [`check_against_sdk_allowing`] with nothing allowed beyond what the SDK sends.
pub fn check_against_sdk(call: &str, recorded: &Recorded) -> Result<(), String> {
    check_against_sdk_allowing(call, recorded, &[])
}

/// Compares a recorded request with the SDK's request for `call` (e.g. `"veo31-vertex-first-
/// last"`) and lists every difference, by field path, in the error.
///
/// `allowed` names fields ttv may send although the SDK's request lacks them: camelCase paths
/// with array indexes written `[]`, e.g. `parameters.storageUri` or `instances[].lastFrame`; a
/// path allows everything under it. Field names are compared in camelCase (`mime_type` is
/// `mimeType`). Each element of a list is compared with the SDK's element that it matches best,
/// the one at the same index first: a `parts` list mixes text and image parts in any order.
pub fn check_against_sdk_allowing(
    call: &str,
    recorded: &Recorded,
    allowed: &[&str],
) -> Result<(), String> {
    let sdk = sdk_requests()
        .iter()
        .find(|r| r["call"] == call)
        .ok_or_else(|| {
            let calls: Vec<&str> = sdk_requests()
                .iter()
                .filter_map(|r| r["call"].as_str())
                .collect();
            format!("no call `{call}` in {CAPTURE}; it has {}", calls.join(", "))
        })?;
    let mut diffs = Vec::new();
    let method = sdk["method"].as_str().unwrap_or_default();
    if recorded.method != method {
        diffs.push(format!(
            "method: ttv sends {}, the SDK {method}",
            recorded.method
        ));
    }
    let sdk_path = sdk["path"].as_str().unwrap_or_default();
    let (ours, theirs) = (path_pattern(&recorded.path), path_pattern(sdk_path));
    if ours != theirs {
        diffs.push(format!(
            "path: ttv's {} is {ours}, the SDK's {sdk_path} is {theirs}",
            recorded.path
        ));
    } else if recorded.route == Route::Unknown {
        diffs.push(format!(
            "path: the fake serves no {} {} (an API version Google does not serve there?)",
            recorded.method, recorded.path
        ));
    }
    let sdk_sends = |name: &str| {
        sdk["headers"]
            .as_object()
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(name)))
    };
    let key = matches!(
        recorded.auth,
        Auth::ApiKeyHeader | Auth::ApiKeyQuery | Auth::WrongApiKey
    );
    let bearer = matches!(recorded.auth, Auth::Bearer | Auth::WrongBearer);
    if sdk_sends("x-goog-api-key") && !key {
        diffs.push("credential: the SDK sends an API key, ttv does not".to_owned());
    }
    if sdk_sends("authorization") && !bearer {
        diffs.push("credential: the SDK sends a bearer token, ttv does not".to_owned());
    }
    match (recorded.body.as_ref().unwrap_or(&Value::Null), &sdk["body"]) {
        (Value::Null, Value::Null) => {}
        (_, Value::Null) => diffs.push("body: ttv sends a JSON body, the SDK none".to_owned()),
        (Value::Null, _) => diffs.push("body: the SDK sends a JSON body, ttv none".to_owned()),
        (ours, theirs) => compare(ours, theirs, "", allowed, &mut diffs),
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(format!(
        "ttv's {} {} differs from what the SDK sends for `{call}`:\n  - {}",
        recorded.method,
        recorded.path,
        diffs.join("\n  - ")
    ))
}

/// A path with the parts that vary from call to call (version, project, location, model,
/// operation and file ids) replaced by placeholders, and the query dropped:
/// `/{version}/models/{model}:generateContent`.
fn path_pattern(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let mut out = Vec::new();
    let mut previous = "";
    for (i, segment) in path.trim_start_matches('/').split('/').enumerate() {
        let action = segment
            .split_once(':')
            .map(|(_, a)| format!(":{a}"))
            .unwrap_or_default();
        let placeholder = match previous {
            _ if i == 0 => Some("version"),
            "projects" => Some("project"),
            "locations" => Some("location"),
            "models" => Some("model"),
            "operations" => Some("operation"),
            "files" => Some("file"),
            _ => None,
        };
        out.push(match placeholder {
            Some(name) => format!("{{{name}}}{action}"),
            None => segment.to_owned(),
        });
        previous = segment;
    }
    format!("/{}", out.join("/"))
}

/// `mime_type` -> `mimeType`: proto3 JSON takes both.
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        match c {
            '_' if !out.is_empty() => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// A field path with its array indexes written `[]`: `instances[0].image` -> `instances[].image`.
fn pattern_of(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

fn field<'a>(object: &'a serde_json::Map<String, Value>, camel: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(k, _)| camel_case(k) == camel)
        .map(|(_, v)| v)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value as a message shows it: scalars in full (up to 40 characters), containers by kind.
fn shown(value: &Value) -> String {
    match value {
        Value::Array(_) | Value::Object(_) => kind(value).to_owned(),
        scalar => {
            let text = scalar.to_string();
            match text.char_indices().nth(40) {
                Some((cut, _)) => format!("{} ({}...)", kind(value), &text[..cut]),
                None => format!("{} ({text})", kind(value)),
            }
        }
    }
}

fn compare(ours: &Value, theirs: &Value, path: &str, allowed: &[&str], diffs: &mut Vec<String>) {
    let at = if path.is_empty() { "(body)" } else { path };
    if kind(ours) != kind(theirs) {
        diffs.push(format!(
            "{at}: ttv sends {}, the SDK {}",
            shown(ours),
            shown(theirs)
        ));
        return;
    }
    match (ours, theirs) {
        (Value::Object(ours), Value::Object(theirs)) => {
            let pattern = pattern_of(path);
            for (_, needs) in REQUIRED.iter().filter(|(p, _)| *p == pattern) {
                let has = |o: &serde_json::Map<String, Value>| {
                    needs.iter().any(|n| field(o, n).is_some())
                };
                if has(theirs) && !has(ours) {
                    diffs.push(format!(
                        "{at}: lacks `{}`, which the SDK sends and Google needs",
                        needs.join("` or `")
                    ));
                }
            }
            for (name, value) in ours {
                let camel = camel_case(name);
                let child = match path {
                    "" => camel.clone(),
                    _ => format!("{path}.{camel}"),
                };
                match field(theirs, &camel) {
                    Some(sdk_value) => compare(value, sdk_value, &child, allowed, diffs),
                    None if is_allowed(&child, allowed) => {}
                    None => diffs.push(format!("{child}: sent by ttv, not by the SDK")),
                }
            }
        }
        (Value::Array(ours), Value::Array(theirs)) if !theirs.is_empty() => {
            for (i, value) in ours.iter().enumerate() {
                let child = format!("{path}[{i}]");
                let same_index_first = (0..theirs.len()).map(|j| (j + i) % theirs.len());
                let best = same_index_first
                    .map(|j| {
                        let mut found = Vec::new();
                        compare(value, &theirs[j], &child, allowed, &mut found);
                        found
                    })
                    .min_by_key(Vec::len)
                    .unwrap_or_default();
                diffs.extend(best);
            }
        }
        _ => {}
    }
}

fn is_allowed(path: &str, allowed: &[&str]) -> bool {
    let pattern = pattern_of(path);
    allowed.iter().any(|a| {
        pattern == *a
            || pattern
                .strip_prefix(a)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}
