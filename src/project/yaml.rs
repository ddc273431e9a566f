//! Where things stand in ttv.yaml: positions of every setting from saphyr's marked nodes, and the
//! translation of serde-saphyr errors into [`ProjectError`]s that name the setting, its line and
//! what to write instead.

use std::collections::BTreeMap;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, ScanError, YamlData};

use super::CONFIG_FILE;
use crate::error::ProjectError;

/// A position in the source: 1-based line, 0-based column (in characters), as saphyr counts.
type Pos = (usize, usize);

/// One node of the document, named by its dotted path (`video.fallback.0.backend`).
struct Entry {
    path: String,
    /// The line users think of: the key's for a mapping value, the dash's for a list item.
    line: usize,
    start: Pos,
    end: Pos,
    /// Scalar text, to quote a bad value back.
    scalar: Option<String>,
}

/// Every node of the first document, the root (path "") included, in document order.
fn entries(source: &str) -> Result<Vec<Entry>, ScanError> {
    let docs = MarkedYaml::load_from_str(source)?;
    let mut out = Vec::new();
    if let Some(root) = docs.first() {
        let start = pos(root.span.start);
        walk(root, String::new(), start.0, &mut out);
    }
    Ok(out)
}

fn pos(m: saphyr::Marker) -> Pos {
    (m.line(), m.col())
}

fn walk(node: &MarkedYaml<'_>, path: String, line: usize, out: &mut Vec<Entry>) {
    let scalar = match &node.data {
        YamlData::Value(s) => scalar_text(s),
        _ => None,
    };
    out.push(Entry {
        path: path.clone(),
        line,
        start: pos(node.span.start),
        end: pos(node.span.end),
        scalar,
    });
    let child = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    match &node.data {
        YamlData::Mapping(map) => {
            for (k, v) in map {
                if let YamlData::Value(s) = &k.data
                    && let Some(name) = scalar_text(s)
                {
                    walk(v, child(&name), k.span.start.line(), out);
                }
            }
        }
        YamlData::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, child(&i.to_string()), v.span.start.line(), out);
            }
        }
        YamlData::Tagged(_, inner) => walk(inner, path, line, out),
        _ => {}
    }
}

fn scalar_text(s: &Scalar<'_>) -> Option<String> {
    match s {
        Scalar::String(s) => Some(s.to_string()),
        Scalar::Integer(i) => Some(i.to_string()),
        Scalar::Boolean(b) => Some(b.to_string()),
        Scalar::FloatingPoint(f) => Some(f.to_string()),
        Scalar::Null => None,
    }
}

/// The line of every setting, by dotted path. Empty when the document does not parse (a config
/// that parsed with serde-saphyr always does).
pub(super) fn line_map(source: &str) -> BTreeMap<String, usize> {
    entries(source)
        .map(|es| {
            es.into_iter()
                .filter(|e| !e.path.is_empty())
                .map(|e| (e.path, e.line))
                .collect()
        })
        .unwrap_or_default()
}

/// The best of `candidates` for a misspelt `word`, if one is close enough to be a likely typo.
pub(super) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Translates a failure to read ttv.yaml into the config structs. YAML syntax errors are taken
/// from saphyr (its messages say what the scanner expected); schema errors from serde-saphyr,
/// located on the saphyr nodes to name the setting.
pub(super) fn config_error(source: &str, err: &serde_saphyr::Error) -> ProjectError {
    let entries = match entries(source) {
        Ok(e) => e,
        Err(scan) => {
            let error = ProjectError::new(
                CONFIG_FILE,
                Some(scan.marker().line()),
                format!("YAML syntax error: {}", scan.info()),
            );
            return if scan.info().contains("duplicated key") {
                error.help("a setting is written twice: keep one of them")
            } else {
                error.help(
                    "fix the YAML on this line: indentation, a missing `:`, or an unclosed quote \
                     or bracket",
                )
            };
        }
    };
    let err = innermost(err);
    let loc = err
        .location()
        .map(|l| (l.line() as usize, (l.column() as usize).saturating_sub(1)));
    let at = loc.and_then(|l| deepest_at(&entries, l));
    let line = at.map(|e| e.line).or(loc.map(|l| l.0));
    let path = at.map_or("", |e| e.path.as_str());
    let here = |message: String| ProjectError::new(CONFIG_FILE, line, message);
    use serde_saphyr::Error as E;
    match err {
        E::SerdeUnknownField {
            field, expected, ..
        } => ProjectError::new(
            CONFIG_FILE,
            loc.map(|l| l.0),
            format!("unknown key `{field}` {}", section(path)),
        )
        .help(match did_you_mean(field, expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("expected one of: {}", expected.join(", ")),
        }),
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => here(format!("`{variant}` is not a valid {}", setting(path))).help(
            match did_you_mean(variant, expected) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("use one of: {}", expected.join(", ")),
            },
        ),
        E::SerdeMissingField { field, .. } => here(format!("missing `{field}` {}", section(path)))
            .help(match *field {
                "version" => "add `version: 1` at the top".to_string(),
                "shots" => "add a `shots:` list, one `- id: ...` per shot".to_string(),
                "end" | "motion" | "start" => format!("add `{field}: \"...\"` (a prompt)"),
                _ => format!("add `{field}:` {}", section(path)),
            }),
        E::InvalidScalar { ty, .. } => {
            let (kind, example) = scalar_kind(ty);
            let got = quoted_value(at, path);
            here(format!("{} must be {kind}{got}", setting(path)))
                .help(format!("for example `{}: {example}`", leaf(path)))
        }
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => here(format!(
            "{} must be {expected}, not {}",
            setting(path),
            if path.ends_with("api_key") {
                "this"
            } else {
                unexpected
            }
        ))
        .help("see the ttv.yaml section of the README, or the ttv.yaml `ttv init` writes, for the expected shape"),
        E::Eof { .. } => ProjectError::new(CONFIG_FILE, None, "ttv.yaml is empty")
            .help("start with `version: 1` and a `shots:` list (`ttv init` writes an example)"),
        E::MultipleDocuments { .. } => here("ttv.yaml holds more than one YAML document".into())
            .help("remove the `---` line: one ttv.yaml describes one project"),
        E::Unexpected { .. } if path.is_empty() => {
            here("ttv.yaml must be a mapping of settings".into())
                .help("start with `version: 1` and a `shots:` list (`ttv init` writes an example)")
        }
        E::Unexpected { expected, .. } => {
            let (kind, help) = match *expected {
                "sequence start" => ("a list", "write one `- ...` line per item below it"),
                "mapping start" => ("a mapping", "write `key: value` lines indented below it"),
                _ => (
                    "a single value, not a list or a mapping",
                    "write the value on the same line, e.g. `key: value`",
                ),
            };
            here(format!("{} must be {kind}", setting(path))).help(help)
        }
        // Messages written for Rust programmers ("use Option<String>", "externally tagged
        // enum") are said in the terms of ttv.yaml.
        other => {
            let text = strip_location(&other.to_string());
            if text.contains("null into") {
                here(format!("{} is empty", setting(path)))
                    .help(format!("give it a value, e.g. `{}: \"...\"`", leaf(path)))
            } else if text.contains("enum") {
                here(format!("{} must be a single word", setting(path)))
                    .help("see the ttv.yaml section of the README for the words it takes")
            } else {
                here(text).help(
                    "see the ttv.yaml section of the README, or the ttv.yaml `ttv init` \
                     writes, for the expected shape",
                )
            }
        }
    }
}

/// Alias errors wrap the error at the use site; the wrapped one names what is wrong.
fn innermost(err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match err.without_snippet() {
        serde_saphyr::Error::AliasError { error, .. } => innermost(error),
        e => e,
    }
}

/// The deepest node whose span holds `at`: the scalar for a bad value, the enclosing mapping for
/// an unknown or missing key.
fn deepest_at(entries: &[Entry], at: Pos) -> Option<&Entry> {
    entries
        .iter()
        .filter(|e| e.start <= at && (at < e.end || e.start == at))
        .max_by_key(|e| (depth(&e.path), e.start))
}

fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.matches('.').count() + 1
    }
}

fn section(path: &str) -> String {
    if path.is_empty() {
        "at the top level".into()
    } else {
        format!("in {path}")
    }
}

fn setting(path: &str) -> String {
    if path.is_empty() {
        "this value".into()
    } else {
        format!("`{path}`")
    }
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// `, not `eight`` — never for a secret.
fn quoted_value(at: Option<&Entry>, path: &str) -> String {
    match at.and_then(|e| e.scalar.as_deref()) {
        Some(v) if !path.ends_with("api_key") => format!(", not `{v}`"),
        _ => String::new(),
    }
}

fn scalar_kind(ty: &str) -> (&'static str, &'static str) {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => ("a whole number (0 or more)", "8"),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => ("a whole number", "8"),
        "f32" | "f64" | "floating point" => ("a number", "0.5"),
        "bool" | "boolean" => ("`true` or `false`", "true"),
        _ => ("text", "\"...\""),
    }
}

/// serde-saphyr's Display appends " at line L, column C", which our own location replaces.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
