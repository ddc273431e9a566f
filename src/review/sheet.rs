//! `ttv review --static`: the storyboard as `build/review.html`, for people who do not run ttv.
//! It shows what build/ holds (the current takes), by paths relative to build/, and has no
//! buttons.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::page::CSS;
use super::state::{NodeState, state};
use crate::materialize::BUILD_DIR;

/// Writes `build/review.html` for the project at `root`; returns its path.
pub fn write_static(root: &Path) -> Result<PathBuf> {
    let s = state(root)?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{name}: storyboard</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <header><h1>{name}: storyboard</h1><div id=\"totals\"><span>spent <b>${spent:.2}</b></span>\
         <span>estimate of what is not made <b>${estimate:.2}</b></span></div></header>\n<main>\n",
        name = escape(&s.name),
        spent = s.totals.spent_usd,
        estimate = s.totals.estimate_usd,
    );
    for shot in &s.shots {
        let _ = write!(
            html,
            "<section class=\"shot\" data-shot=\"{id}\">\n<h2>{id}</h2>\n<div class=\"prompts\">",
            id = escape(&shot.id)
        );
        if let Some(start) = &shot.prompts.start {
            let _ = write!(html, "<div>start: {}</div>", escape(start));
        }
        if let Some(from) = &shot.starts_on {
            let _ = write!(html, "<div>starts on {}</div>", escape(from));
        }
        let _ = write!(
            html,
            "<div>end: {}</div><div>motion: {}</div></div>\n<div class=\"nodes\">\n",
            escape(&shot.prompts.end),
            escape(&shot.prompts.motion)
        );
        for n in &shot.nodes {
            node(&mut html, root, n);
        }
        html.push_str("</div>\n</section>\n");
    }
    html.push_str("</main>\n");
    if let Some(f) = &s.final_ {
        html.push_str("<section id=\"final\"><h2>Final video</h2>\n");
        node(&mut html, root, f);
        html.push_str("</section>\n");
    }
    html.push_str("</body>\n</html>\n");
    let dir = root.join(BUILD_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("review.html");
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One node: its file in build/ when it is there (a node not built yet, or whose output is
/// stale, shows its status only).
fn node(html: &mut String, root: &Path, n: &NodeState) {
    let _ = write!(
        html,
        "<div class=\"node\" data-node=\"{id}\" data-status=\"{status}\" data-verdict=\"{verdict}\">\
         <div class=\"id\">{id}{take}</div>",
        id = escape(&n.id),
        status = serde_json::to_value(n.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        verdict = n.verdict.unwrap_or(""),
        take = n.take.map(|t| format!(" (take {t})")).unwrap_or_default(),
    );
    let prefix = format!("{BUILD_DIR}/");
    let file = n
        .output
        .as_deref()
        .filter(|_| n.blob.is_some())
        .and_then(|o| o.strip_prefix(&prefix))
        .filter(|rel| root.join(BUILD_DIR).join(rel).is_file());
    match file {
        Some(rel) if n.image => {
            let _ = write!(
                html,
                "<img class=\"current\" src=\"{}\" alt=\"{}\">",
                escape(rel),
                escape(&n.id)
            );
        }
        Some(rel) => {
            let _ = write!(
                html,
                "<video class=\"current\" src=\"{}\" controls></video>",
                escape(rel)
            );
        }
        None => html.push_str("<div class=\"missing\">not made yet</div>"),
    }
    let _ = write!(
        html,
        "<div><span class=\"status\">{}</span>{}</div>",
        escape(&format!("{:?}", n.status).to_lowercase()),
        n.verdict.map(|v| format!(", {v}")).unwrap_or_default()
    );
    if !n.reasons.is_empty() {
        html.push_str("<ul class=\"reasons\">");
        for r in &n.reasons {
            let _ = write!(html, "<li>{}</li>", escape(r));
        }
        html.push_str("</ul>");
    }
    html.push_str("</div>\n");
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
