//! Recipes: the typed description of everything that defines a node's output. A recipe's
//! canonical JSON, hashed with blake3, is the node's cache key; the same struct, diffed against
//! the recipe of the last build, is `ttv explain`'s answer (one truth, two uses).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bumped when the meaning of a recipe changes, so that old keys stop matching.
pub const RECIPE_VERSION: u32 = 1;

// New recipe fields are skipped while at their default (`#[serde(skip_serializing_if)]`), so
// a recipe that does not use them keeps the key it had before they existed: upgrading ttv
// never turns paid results into misses. Each kind's recipe struct lives with its kind
// (`crate::kinds`); the list of them is [`Body`].

pub use crate::kinds::Body;

/// The whole recipe: version, body, and the take (a reroll of the same inputs is a new take,
/// so a new key, and the old generation is kept).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    pub recipe: u32,
    #[serde(flatten)]
    pub body: Body,
    pub take: u32,
}

/// The keys of one recipe at any take, with the text before the take hashed once (see
/// [`Recipe::key_at_take`]).
pub struct TakeKeys(blake3::Hasher);

impl TakeKeys {
    pub fn new(base_json: &str) -> Self {
        let prefix = base_json
            .strip_suffix("0}")
            .expect("canonical JSON at take 0 ends with the take");
        let mut h = blake3::Hasher::new();
        h.update(prefix.as_bytes());
        TakeKeys(h)
    }

    pub fn at(&self, take: u32) -> String {
        let mut h = self.0.clone();
        h.update(take.to_string().as_bytes());
        h.update(b"}");
        h.finalize().to_hex().to_string()
    }
}

impl Recipe {
    pub fn new(body: Body, take: u32) -> Recipe {
        Recipe {
            recipe: RECIPE_VERSION,
            body,
            take,
        }
    }

    /// Canonical bytes: serde_json of a struct keeps the field order of its declaration.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).expect("a recipe always serializes")
    }

    /// The cache key.
    pub fn key(&self) -> String {
        blake3::hash(self.canonical_json().as_bytes())
            .to_hex()
            .to_string()
    }

    /// The key of the same recipe without a take: groups all takes of one set of inputs.
    pub fn base_key(&self) -> String {
        Recipe {
            take: 0,
            ..self.clone()
        }
        .key()
    }

    /// The key of this recipe at another take, from its canonical JSON at take 0 (the take is
    /// the last field, so the two texts differ only there): one serialization serves the base
    /// key and the key on the hot path of a no-op build.
    pub fn key_at_take(base_json: &str, take: u32) -> String {
        TakeKeys::new(base_json).at(take)
    }

    /// Whether this node costs money / calls a generator (an image from a file does not).
    pub fn is_generation(&self) -> bool {
        self.body.is_generation()
    }
}

/// The recipe fields that hold other nodes' outputs (each kind says which: `Kind::inputs`),
/// with the nodes' ids, so that an explanation can say "input frame changed because
/// frame/arrival/end was regenerated".
#[derive(Debug, Clone, Default)]
pub struct Upstream(pub Vec<UpstreamField>);

#[derive(Debug, Clone)]
pub struct UpstreamField {
    pub field: &'static str,
    /// How a change of it is named (`input frame`; `segment` for each of a list).
    pub words: &'static str,
    pub nodes: Vec<String>,
    /// Not explained when this other field changed too (it says it better).
    pub unless: Option<&'static str>,
}

impl Upstream {
    fn get(&self, field: &str) -> Option<&UpstreamField> {
        self.0.iter().find(|u| u.field == field)
    }
}

/// Field-by-field reasons why `now` differs from `before` (empty when they are equal). The walk
/// is over the recipes' own serialized fields, so a field added to a recipe is explained by
/// its name without a line here; the fields below only get friendlier words.
pub fn explain(before: &Recipe, now: &Recipe, upstream: &Upstream) -> Vec<String> {
    let b = fields(before);
    let n = fields(now);
    if b.get("kind") != n.get("kind") {
        let mut out =
            vec!["the node's kind changed (a start prompt became a start image, or back)".into()];
        if before.take != now.take {
            out.push(format!("take changed ({} -> {})", before.take, now.take));
        }
        return out;
    }
    // In the order the recipe declares its fields (its canonical JSON's order), with the take
    // last, after what it is a take of.
    let (b_json, n_json) = (before.canonical_json(), now.canonical_json());
    let position = |k: &str| {
        let quoted = format!("\"{k}\":");
        [&n_json, &b_json]
            .iter()
            .find_map(|j| {
                j.match_indices(&quoted)
                    .find(|(i, _)| *i > 0 && matches!(j.as_bytes()[i - 1], b'{' | b','))
                    .map(|(i, _)| i)
            })
            .unwrap_or(usize::MAX)
    };
    let mut names: Vec<&String> = n.keys().collect();
    names.extend(b.keys().filter(|k| !n.contains_key(*k)));
    names.sort_by_key(|k| (*k == "take", position(k)));
    let mut out = Vec::new();
    for name in names {
        // A field left out of a recipe is at its default.
        let (bv, nv) = (
            b.get(name).cloned().unwrap_or_else(|| default_of(name)),
            n.get(name).cloned().unwrap_or_else(|| default_of(name)),
        );
        let (bv, nv) = (&bv, &nv);
        if bv == nv {
            continue;
        }
        match name.as_str() {
            "recipe" => out.push(format!(
                "recipe format changed (ttv upgrade: {} -> {})",
                show(bv),
                show(nv)
            )),
            "prompt" => out.push("prompt changed".into()),
            "negative_prompt" => out.push("negative prompt changed".into()),
            "references" => references(&mut out, &pairs(bv), &pairs(nv)),
            "frames" => out.push(format!(
                "frames sent changed ({} -> {}: video.mode or keyframe_position)",
                show(bv),
                show(nv)
            )),
            "source" => out.push("start image file changed".into()),
            field if let Some(up) = upstream.get(field) => {
                if up.unless.is_some_and(|f| b.get(f) != n.get(f)) {
                    continue;
                }
                match (bv, nv) {
                    (Value::Array(bl), Value::Array(nl)) => each_input(&mut out, bl, nl, up),
                    _ => out.extend(changed_input(up.words, bv, nv, up.nodes.first())),
                }
            }
            other => out.push(format!(
                "{} changed ({} -> {})",
                label(other),
                show(bv),
                show(nv)
            )),
        }
    }
    out
}

/// A recipe's serialized fields (a recipe always serializes to an object).
fn fields(r: &Recipe) -> serde_json::Map<String, Value> {
    match serde_json::to_value(r) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// The value of a field that is left out of a recipe's JSON while at its default.
fn default_of(field: &str) -> Value {
    match field {
        "sample_count" => Value::from(1),
        "references" => Value::Array(Vec::new()),
        _ => Value::Null,
    }
}

/// How a field is named in an explanation.
fn label(field: &str) -> String {
    match field {
        "duration_seconds" => "duration".into(),
        "stitch" => "stitch settings".into(),
        "generate_audio" | "person_generation" | "sample_count" | "image_size" => field.into(),
        other => other.replace('_', " "),
    }
}

/// A value as the user wrote it: text without quotes, `none` for an unset option.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

fn changed_input(what: &str, b: &Value, n: &Value, up: Option<&String>) -> Option<String> {
    if b == n {
        return None;
    }
    Some(match (b.is_null(), n.is_null(), up) {
        (true, false, _) => format!("{what} added"),
        (false, true, _) => format!("{what} removed"),
        (_, _, Some(node)) => format!("{what} changed because {node} was regenerated"),
        _ => format!("{what} changed"),
    })
}

/// A list of inputs (the segments of the final), position by position.
fn each_input(out: &mut Vec<String>, b: &[Value], n: &[Value], up: &UpstreamField) {
    let what = up.words;
    if b.len() != n.len() {
        out.push(format!(
            "number of {what}s changed ({} -> {})",
            b.len(),
            n.len()
        ));
        return;
    }
    for (i, (x, y)) in b.iter().zip(n).enumerate() {
        if x != y {
            match up.nodes.get(i) {
                Some(node) => out.push(format!(
                    "{what} {} changed because {node} was regenerated",
                    i + 1
                )),
                None => out.push(format!("{what} {} changed", i + 1)),
            }
        }
    }
}

fn references(out: &mut Vec<String>, before: &[(String, String)], now: &[(String, String)]) {
    for (name, hash) in now {
        match before.iter().find(|(n, _)| n == name) {
            None => out.push(format!("reference {name} added")),
            Some((_, h)) if h != hash => out.push(format!("reference {name} changed")),
            Some(_) => {}
        }
    }
    for (name, _) in before {
        if !now.iter().any(|(n, _)| n == name) {
            out.push(format!("reference {name} removed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::FrameRecipe;

    fn frame(prompt: &str) -> Recipe {
        Recipe::new(
            Body::Frame(FrameRecipe {
                backend: "preview".into(),
                model: "m".into(),
                aspect_ratio: "16:9".into(),
                prompt: prompt.into(),
                references: vec![("hero".into(), "aa".into())],
                input: Some("in".into()),
                image_size: None,
            }),
            1,
        )
    }

    #[test]
    fn key_is_stable_and_depends_on_every_field() {
        let a = frame("a lighthouse");
        assert_eq!(a.key(), frame("a lighthouse").key());
        assert_ne!(a.key(), frame("a lighthouse!").key());
        let mut b = a.clone();
        b.take = 2;
        assert_ne!(a.key(), b.key());
        assert_eq!(a.base_key(), b.base_key());
        let base_json = Recipe {
            take: 0,
            ..a.clone()
        }
        .canonical_json();
        assert_eq!(Recipe::key_at_take(&base_json, 2), b.key());
        assert_eq!(Recipe::key_at_take(&base_json, 0), a.base_key());
        b.take = 117;
        assert_eq!(Recipe::key_at_take(&base_json, 117), b.key());
    }

    #[test]
    fn canonical_json_has_the_version_kind_and_take() {
        let j = frame("x").canonical_json();
        assert!(
            j.starts_with(r#"{"recipe":1,"kind":"frame","backend":"preview""#),
            "{j}"
        );
        assert!(j.ends_with(r#""take":1}"#), "{j}");
    }

    #[test]
    fn explain_names_each_changed_field() {
        let a = frame("a");
        let mut b = frame("b");
        if let Body::Frame(f) = &mut b.body {
            f.references[0].1 = "bb".into();
            f.input = Some("other".into());
        }
        let up = Upstream(vec![UpstreamField {
            field: "input",
            words: "input frame",
            nodes: vec!["frame/arrival/end".into()],
            unless: None,
        }]);
        assert_eq!(
            explain(&a, &b, &up),
            vec![
                "prompt changed",
                "reference hero changed",
                "input frame changed because frame/arrival/end was regenerated"
            ]
        );
        assert!(explain(&a, &a, &up).is_empty());
    }

    /// One recipe of each kind with every field set.
    fn every_kind() -> Vec<Recipe> {
        Body::samples()
            .into_iter()
            .map(|b| Recipe::new(b, 1))
            .collect()
    }

    /// Recipes as earlier versions of ttv wrote them: each reads back to exactly the same
    /// text, so the keys of paid results survive any move or rename in the code.
    const GOLDEN: &[&str] = &[
        r#"{"recipe":1,"kind":"frame","backend":"preview","model":"m","aspect_ratio":"16:9","prompt":"a","references":[["hero","aa"]],"input":"in","image_size":"2K","take":1}"#,
        r#"{"recipe":1,"kind":"frame","backend":"gemini","model":"m","aspect_ratio":"16:9","prompt":"a","references":[],"input":null,"take":3}"#,
        r#"{"recipe":1,"kind":"image","source":"s","take":1}"#,
        r#"{"recipe":1,"kind":"segment","backend":"veo","model":"veo-3.1-generate-001","duration_seconds":8,"resolution":"720p","aspect_ratio":"16:9","generate_audio":true,"negative_prompt":"blur","seed":7,"prompt":"dolly in","frames":"start+end","first":"f","last":"l","person_generation":"allow_adult","sample_count":2,"references":[["hero","aa"]],"take":1}"#,
        r#"{"recipe":1,"kind":"segment","backend":"veo","model":"veo-3.1-generate-001","duration_seconds":8,"resolution":"720p","aspect_ratio":"16:9","generate_audio":false,"negative_prompt":"","seed":null,"prompt":"dolly in","frames":"start","first":"f","last":null,"take":1}"#,
        r#"{"recipe":1,"kind":"final","segments":["a","b"],"stitch":"concat-1","take":1}"#,
        r#"{"recipe":1,"kind":"final","segments":["a","b"],"stitch":"concat-1","trims":{"1":[0.5,4.0]},"take":1}"#,
        r#"{"recipe":1,"kind":"storyboard","backend":"gemini","model":"gemini-3.5-flash","prompt":"a lighthouse keeper's night","shots":4,"seconds":24,"durations":[4,6,8],"instructions":1,"take":1}"#,
        r#"{"recipe":1,"kind":"last_frame","video":"v","extract":"ffmpeg-sseof-png-v1","take":1}"#,
    ];

    #[test]
    fn recipes_of_earlier_versions_keep_their_keys() {
        for json in GOLDEN {
            let r: Recipe = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(r.canonical_json(), *json);
            assert_eq!(r.key(), blake3::hash(json.as_bytes()).to_hex().to_string());
        }
        let frame: Recipe = serde_json::from_str(GOLDEN[0]).unwrap();
        assert_eq!(
            frame.key(),
            "3793b9fc00856aea68194fada9f26669ba65b9c91ecd99b51a21891aa8a7eea0"
        );
    }

    /// `v` changed, keeping its JSON type (null becomes a string: an option that gets set).
    fn changed(v: &Value) -> Value {
        match v {
            Value::Null => Value::String("set".into()),
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) => serde_json::json!(n.as_u64().unwrap_or(0) + 1),
            Value::String(s) => Value::String(format!("{s}-edited")),
            Value::Array(a) if a.is_empty() => serde_json::json!([["x", "y"]]),
            Value::Array(a) => {
                let mut a = a.clone();
                match &mut a[0] {
                    // A (name, hash) pair: the same name with other bytes.
                    Value::Array(pair) => pair[1] = changed(&pair[1]),
                    first => *first = changed(first),
                }
                Value::Array(a)
            }
            Value::Object(m) => {
                let mut m = m.clone();
                if let Some(first) = m.values_mut().next() {
                    *first = changed(first);
                }
                Value::Object(m)
            }
        }
    }

    #[test]
    fn every_field_of_every_recipe_is_explained_by_name() {
        let up = Upstream::default();
        for before in every_kind() {
            let fields = super::fields(&before);
            for (name, value) in &fields {
                if name == "kind" {
                    continue;
                }
                let mut edited = fields.clone();
                edited.insert(name.clone(), changed(value));
                let Ok(now) = serde_json::from_value::<Recipe>(Value::Object(edited)) else {
                    panic!("{name}: the edited recipe does not read back");
                };
                assert_ne!(now.key(), before.key(), "{name} is not in the key");
                let reasons = explain(&before, &now, &up);
                assert_eq!(reasons.len(), 1, "{name}: {reasons:?}");
                let words = label(name);
                let named = reasons[0].contains(&words)
                    || (name == "references" && reasons[0].starts_with("reference "))
                    || (name == "source" && reasons[0] == "start image file changed")
                    || (name == "segments" && reasons[0].starts_with("segment 1 changed"))
                    || (name == "recipe" && reasons[0].starts_with("recipe format changed"));
                assert!(named, "{name} explained as {reasons:?}");
                assert_ne!(reasons[0], "changed", "{name}");
            }
        }
    }
}
