//! Google's wire rules as the fake enforces them: the error body, proto3 JSON field names (camelCase
//! or snake_case, nothing else), and inline images that must really be PNG / JPEG / WebP.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde_json::{Value, json};

/// A Google API error: an HTTP status and `{"error": {"code", "message", "status", "details"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub http: u16,
    pub status: &'static str,
    pub message: String,
    pub details: Vec<Value>,
}

impl ApiError {
    pub fn new(http: u16, status: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            http,
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(400, "INVALID_ARGUMENT", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(404, "NOT_FOUND", message)
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.details.push(detail);
        self
    }

    /// An invalid field, with the `BadRequest` detail Google attaches to it.
    pub fn field(field: &str, message: String) -> Self {
        ApiError::invalid(message.clone()).detail(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": message}],
        }))
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"code": self.http, "message": self.message, "status": self.status});
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(status, &self.body())
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        bytes,
    )
        .into_response()
}

/// The shape of a request body, as far as the fake checks it. `Any` is a field Google knows
/// whose content ttv never sends.
pub enum Field {
    Str,
    Int,
    Num,
    Bool,
    Any,
    List(&'static Field),
    /// An object with names of the caller's choosing (a schema's `properties`).
    Map(&'static Field),
    Obj(&'static [(&'static str, Field)]),
    /// Another shape by reference, for recursive ones (a schema's `items`).
    Ref(&'static Field),
}

const BLOB: Field = Field::Obj(&[("mimeType", Field::Str), ("data", Field::Str)]);
const PART: Field = Field::Obj(&[
    ("text", Field::Str),
    ("inlineData", BLOB),
    ("fileData", Field::Any),
    ("thought", Field::Bool),
]);
const CONTENT: Field = Field::Obj(&[("role", Field::Str), ("parts", Field::List(&PART))]);
const GENERATION_CONFIG: Field = Field::Obj(&[
    ("responseModalities", Field::List(&Field::Str)),
    (
        "imageConfig",
        Field::Obj(&[("aspectRatio", Field::Str), ("imageSize", Field::Str)]),
    ),
    ("candidateCount", Field::Int),
    ("maxOutputTokens", Field::Int),
    ("temperature", Field::Num),
    ("topP", Field::Num),
    ("topK", Field::Int),
    ("seed", Field::Int),
    ("stopSequences", Field::List(&Field::Str)),
    ("responseMimeType", Field::Str),
    ("responseSchema", Field::Ref(&SCHEMA)),
    ("responseJsonSchema", Field::Any),
    ("thinkingConfig", Field::Any),
]);
/// Gemini's `Schema` (an OpenAPI subset), for `responseSchema`.
static SCHEMA: Field = Field::Obj(&[
    ("type", Field::Str),
    ("format", Field::Str),
    ("title", Field::Str),
    ("description", Field::Str),
    ("nullable", Field::Bool),
    ("enum", Field::List(&Field::Str)),
    ("properties", Field::Map(&SCHEMA)),
    ("propertyOrdering", Field::List(&Field::Str)),
    ("required", Field::List(&Field::Str)),
    ("items", Field::Ref(&SCHEMA)),
    ("anyOf", Field::List(&SCHEMA)),
    ("minItems", Field::Int),
    ("maxItems", Field::Int),
    ("minProperties", Field::Int),
    ("maxProperties", Field::Int),
    ("minLength", Field::Int),
    ("maxLength", Field::Int),
    ("pattern", Field::Str),
    ("minimum", Field::Num),
    ("maximum", Field::Num),
    ("example", Field::Any),
    ("default", Field::Any),
]);
pub const GENERATE_CONTENT: Field = Field::Obj(&[
    ("contents", Field::List(&CONTENT)),
    ("generationConfig", GENERATION_CONFIG),
    ("systemInstruction", CONTENT),
    ("safetySettings", Field::Any),
    ("tools", Field::Any),
    ("toolConfig", Field::Any),
    ("cachedContent", Field::Str),
]);

const VEO_IMAGE: Field = Field::Obj(&[
    ("bytesBase64Encoded", Field::Str),
    ("gcsUri", Field::Str),
    ("mimeType", Field::Str),
    ("inlineData", BLOB),
]);
const VEO_INSTANCE: Field = Field::Obj(&[
    ("prompt", Field::Str),
    ("image", VEO_IMAGE),
    ("lastFrame", VEO_IMAGE),
    ("video", Field::Any),
    (
        "referenceImages",
        Field::List(&Field::Obj(&[
            ("image", VEO_IMAGE),
            ("referenceType", Field::Str),
        ])),
    ),
    ("mask", Field::Any),
]);
const VEO_PARAMETERS: Field = Field::Obj(&[
    ("aspectRatio", Field::Str),
    ("durationSeconds", Field::Int),
    ("resolution", Field::Str),
    ("generateAudio", Field::Bool),
    ("negativePrompt", Field::Str),
    ("seed", Field::Int),
    ("sampleCount", Field::Int),
    ("personGeneration", Field::Str),
    ("storageUri", Field::Str),
    ("enhancePrompt", Field::Bool),
    ("compressionQuality", Field::Str),
]);
pub const PREDICT_LONG_RUNNING: Field = Field::Obj(&[
    ("instances", Field::List(&VEO_INSTANCE)),
    ("parameters", VEO_PARAMETERS),
]);
pub const FETCH_PREDICT_OPERATION: Field = Field::Obj(&[("operationName", Field::Str)]);

pub fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A field of a JSON object by its camelCase name, or its snake_case spelling.
pub fn get<'a>(value: &'a Value, camel: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake_case(camel)))
}

pub fn get_str<'a>(value: &'a Value, camel: &str) -> Option<&'a str> {
    get(value, camel).and_then(Value::as_str)
}

/// An integer field; proto3 JSON also accepts integers written as strings.
pub fn get_int(value: &Value, camel: &str) -> Option<i64> {
    get(value, camel).and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
}

/// Checks `value` against `shape` like Google's proto3 JSON parser: unknown or wrongly-cased
/// names and wrong types are a 400. Field paths spelled in snake_case go to `snake`.
pub fn check(
    value: &Value,
    shape: &Field,
    path: &str,
    snake: &mut Vec<String>,
) -> Result<(), ApiError> {
    let wrong =
        |kind: &str| ApiError::field(path, format!("Invalid value at '{path}' ({kind}), {value}"));
    match shape {
        Field::Any => Ok(()),
        Field::Str if value.is_string() => Ok(()),
        Field::Str => Err(wrong("TYPE_STRING")),
        Field::Bool if value.is_boolean() => Ok(()),
        Field::Bool => Err(wrong("TYPE_BOOL")),
        Field::Int
            if value.is_i64() || value.as_str().is_some_and(|s| s.parse::<i64>().is_ok()) =>
        {
            Ok(())
        }
        Field::Int => Err(wrong("TYPE_INT32")),
        Field::Num
            if value.is_number() || value.as_str().is_some_and(|s| s.parse::<f64>().is_ok()) =>
        {
            Ok(())
        }
        Field::Num => Err(wrong("TYPE_FLOAT")),
        Field::Ref(shape) => check(value, shape, path, snake),
        Field::Map(item) => {
            for (key, v) in object(value, path)? {
                check(v, item, &format!("{path}[{key}]"), snake)?;
            }
            Ok(())
        }
        Field::List(item) => {
            let items = value.as_array().ok_or_else(|| {
                ApiError::field(
                    path,
                    format!("Invalid value at '{path}', {value}: expected a list"),
                )
            })?;
            for (i, v) in items.iter().enumerate() {
                check(v, item, &format!("{path}[{i}]"), snake)?;
            }
            Ok(())
        }
        Field::Obj(fields) => {
            for (key, v) in object(value, path)? {
                let known = fields
                    .iter()
                    .find(|(camel, _)| camel == key || snake_case(camel) == *key);
                let Some((camel, shape)) = known else {
                    let at = if path.is_empty() {
                        String::new()
                    } else {
                        format!(" at '{path}'")
                    };
                    let message = format!(
                        "Invalid JSON payload received. Unknown name \"{key}\"{at}: Cannot find field."
                    );
                    return Err(ApiError::field(path, message));
                };
                let child = match path {
                    "" => snake_case(camel),
                    _ => format!("{path}.{}", snake_case(camel)),
                };
                if key != camel {
                    snake.push(child.clone());
                }
                check(v, shape, &child, snake)?;
            }
            Ok(())
        }
    }
}

fn object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a serde_json::Map<String, Value>, ApiError> {
    value.as_object().ok_or_else(|| {
        ApiError::field(
            path,
            format!("Invalid value at '{path}', {value}: expected an object"),
        )
    })
}

/// Decodes an inline image and checks it is what its MIME type says, as Google does before the
/// model sees it. Returns the decoded bytes.
pub fn check_image(path: &str, mime: Option<&str>, data: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = STANDARD
        .decode(data)
        .or_else(|_| URL_SAFE.decode(data))
        .map_err(|_| {
            ApiError::field(
                path,
                format!("Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed"),
            )
        })?;
    let expected = match mime {
        Some("image/png") => image::ImageFormat::Png,
        Some("image/jpeg") => image::ImageFormat::Jpeg,
        Some("image/webp") => image::ImageFormat::WebP,
        Some(other) => return Err(ApiError::invalid(format!("Unsupported MIME type: {other}"))),
        None => return Err(ApiError::invalid(format!("Missing mime type at '{path}'."))),
    };
    let valid = image::guess_format(&bytes).is_ok_and(|f| f == expected)
        && image::load_from_memory_with_format(&bytes, expected).is_ok();
    if !valid {
        return Err(ApiError::invalid(format!(
            "Unable to process input image at '{path}': not a valid {} image.",
            mime.unwrap_or_default()
        )));
    }
    Ok(bytes)
}
