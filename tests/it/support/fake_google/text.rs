//! The text models (storyboards): `generationConfig` checks and answers, JSON ones shaped by the
//! request's `responseSchema`.

use super::*;

const SCHEMA_TYPES: &[&str] = &[
    "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL",
];

pub(super) fn check_config(config: &Value) -> Result<(), ApiError> {
    for modality in array(get(config, "responseModalities")) {
        if modality != "TEXT" {
            let name = modality.as_str().unwrap_or_default().to_lowercase();
            return Err(ApiError::invalid(format!(
                "Model does not support the requested response modalities: {name}"
            )));
        }
    }
    let mime = get_str(config, "responseMimeType");
    if let Some(mime) = mime
        && !["text/plain", "application/json", "text/x.enum"].contains(&mime)
    {
        return Err(ApiError::invalid(format!(
            "* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes are `text/plain`, `application/json`, and `text/x.enum`, got {mime}."
        )));
    }
    let Some(schema) = get(config, "responseSchema") else {
        return Ok(());
    };
    if !matches!(mime, Some("application/json" | "text/x.enum")) {
        return Err(ApiError::invalid(
            "* GenerateContentRequest.generation_config.response_schema: response_mime_type must be `application/json` or `text/x.enum` to use response_schema.",
        ));
    }
    check_schema(schema, "generation_config.response_schema")
}

/// What Google checks in a schema beyond its shape: the type names (upper case, as the proto
/// enum spells them), `items` for arrays, `properties` for objects, `required` among them.
fn check_schema(schema: &Value, path: &str) -> Result<(), ApiError> {
    let problem = |what: &str| {
        Err(ApiError::invalid(format!(
            "* GenerateContentRequest.{path}{what}"
        )))
    };
    if let Some(alternatives) = get(schema, "anyOf").and_then(Value::as_array) {
        for (i, alternative) in alternatives.iter().enumerate() {
            check_schema(alternative, &format!("{path}.any_of[{i}]"))?;
        }
        return Ok(());
    }
    let kind = get_str(schema, "type").unwrap_or_default();
    if !SCHEMA_TYPES.contains(&kind) {
        return Err(ApiError::field(
            &format!("{path}.type"),
            format!(
                "Invalid value at '{path}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), \"{kind}\""
            ),
        ));
    }
    let properties = get(schema, "properties").and_then(Value::as_object);
    match (kind, get(schema, "items"), properties) {
        ("ARRAY", None, _) => problem(".items: missing field."),
        ("ARRAY", Some(items), _) => check_schema(items, &format!("{path}.items")),
        ("OBJECT", _, None) => problem(".properties: should be non-empty for OBJECT type"),
        ("OBJECT", _, Some(properties)) if properties.is_empty() => {
            problem(".properties: should be non-empty for OBJECT type")
        }
        ("OBJECT", _, Some(properties)) => {
            for (name, property) in properties {
                check_schema(property, &format!("{path}.properties[{name}].value"))?;
            }
            for (i, name) in array(get(schema, "required")).iter().enumerate() {
                if !name.as_str().is_some_and(|n| properties.contains_key(n)) {
                    return problem(&format!(".required[{i}]: property is not defined"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The candidate's text: with `responseMimeType: application/json`, a JSON instance of the
/// `responseSchema` (see [`instance`]); otherwise a sentence about the prompt.
pub(super) fn answer(config: &Value, prompt: &str) -> String {
    let words = excerpt(prompt);
    let json = get_str(config, "responseMimeType") == Some("application/json");
    match (json, get(config, "responseSchema")) {
        (true, Some(schema)) => {
            let items = items_in(prompt);
            serde_json::to_string(&instance(schema, "item", "item", 1, items, &words))
                .expect("JSON")
        }
        (true, None) => json!({ "text": words }).to_string(),
        (false, _) => format!("A short answer about: {words}"),
    }
}

/// The first six words of the prompt, which every generated string quotes.
fn excerpt(prompt: &str) -> String {
    prompt
        .split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many items each array gets: the first number in the prompt if it is 2 to 12 ("4 shots"),
/// else 2 (always within the schema's minItems / maxItems).
fn items_in(prompt: &str) -> usize {
    prompt
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<usize>().ok())
        .find(|n| (2..=12).contains(n))
        .unwrap_or(2)
}

/// A deterministic, minimal instance of a Gemini schema, as a model following it would write:
/// objects with every property, arrays of [`items_in`] items, strings quoting the prompt
/// (`"motion 2: A lighthouse keeper's night, 4 shots"`), the first value of an enum, an `id`-like
/// property as a slug of its array's item name (`shot-2` in `shots`), integers and numbers from
/// the item's 1-based position within `minimum` / `maximum`, booleans true.
fn instance(schema: &Value, name: &str, item: &str, n: usize, items: usize, words: &str) -> Value {
    if let Some(first) = array(get(schema, "anyOf")).first() {
        return instance(first, name, item, n, items, words);
    }
    let bound = |field: &str| get(schema, field).and_then(Value::as_f64);
    let clamp = |x: f64| {
        let x = bound("minimum").map_or(x, |min| x.max(min));
        bound("maximum").map_or(x, |max| x.min(max))
    };
    match get_str(schema, "type").unwrap_or_default() {
        "OBJECT" => {
            let properties = get(schema, "properties").and_then(Value::as_object);
            let object = properties
                .into_iter()
                .flatten()
                .map(|(key, sub)| (key.clone(), instance(sub, key, item, n, items, words)))
                .collect();
            Value::Object(object)
        }
        "ARRAY" => {
            let min = get_int(schema, "minItems").unwrap_or(0) as usize;
            let max = get_int(schema, "maxItems").map_or(usize::MAX, |m| m as usize);
            let count = items.max(min).min(max);
            let singular = name
                .strip_suffix('s')
                .filter(|s| !s.is_empty())
                .unwrap_or("item");
            let sub = get(schema, "items").cloned().unwrap_or(Value::Null);
            let values = (1..=count).map(|i| instance(&sub, name, singular, i, items, words));
            Value::Array(values.collect())
        }
        "STRING" => {
            if let Some(first) = array(get(schema, "enum")).first() {
                return first.clone();
            }
            let id_like = name == "id" || name.ends_with("_id") || name.ends_with("Id");
            let text = match id_like {
                true => format!("{}-{n}", slug(item)),
                false => format!("{name} {n}: {words}"),
            };
            let max = get_int(schema, "maxLength").map_or(usize::MAX, |m| m as usize);
            json!(text.chars().take(max).collect::<String>())
        }
        "INTEGER" => json!(clamp(n as f64) as i64),
        "NUMBER" => json!(clamp(n as f64 + 0.5)),
        "BOOLEAN" => json!(true),
        _ => Value::Null,
    }
}

fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    match out.trim_end_matches('-') {
        "" => "item".to_owned(),
        s => s.to_owned(),
    }
}
