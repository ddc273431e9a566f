//! The review page: one HTML document with its CSS and a little vanilla JavaScript, no external
//! assets. It reads `/api/state` and posts the person's decisions back with the token of its URL.

/// Shared by the live page and the static contact sheet.
pub const CSS: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f2; color: #222; }
header { background: #fff; border-bottom: 1px solid #ccc; padding: 0.6em 1em; }
h1 { font-size: 1.2em; margin: 0 0 0.3em 0; }
#totals span { margin-right: 1.5em; }
#controls { margin-top: 0.4em; }
#controls button { margin-right: 0.5em; }
#build-status[data-running="true"] { color: #a60; font-weight: bold; }
#error { color: #b00; white-space: pre-wrap; }
main { padding: 0 1em; }
.shot { background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 1em 0;
  padding: 0.8em; }
.shot h2 { font-size: 1em; margin: 0 0 0.4em 0; }
.prompts { font-size: 0.9em; color: #444; margin-bottom: 0.6em; }
.prompts div { margin: 0.1em 0; }
.nodes { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }
.node { width: 340px; border: 2px solid #ddd; border-radius: 4px; padding: 0.4em; }
.node[data-status="cached"] { border-color: #6a6; }
.node[data-status="dirty"] { border-color: #c90; }
.node[data-status="waiting"] { border-color: #69c; }
.node[data-status="failed"] { border-color: #c33; }
.node[data-verdict="approved"] { background: #eef8ee; }
.node[data-verdict="rejected"] { background: #fbecec; }
.node .current { width: 100%; aspect-ratio: 16 / 9; object-fit: contain; background: #222;
  display: block; }
.node .missing { width: 100%; aspect-ratio: 16 / 9; background: #ddd; display: flex;
  align-items: center; justify-content: center; color: #777; }
.node .id { font-family: monospace; font-size: 0.85em; }
.status { font-weight: bold; }
.reasons { font-size: 0.8em; color: #555; margin: 0.2em 0; padding-left: 1.2em; }
.takes { display: flex; gap: 4px; margin: 0.3em 0; flex-wrap: wrap; }
.takes img { width: 64px; height: 36px; object-fit: cover; cursor: pointer;
  border: 2px solid transparent; }
.takes img.is-current { border-color: #36c; cursor: default; }
.node button { margin: 0.2em 0.3em 0 0; }
#final { padding: 1em; }
#final video { max-width: 720px; width: 100%; }
"#;

pub const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ttv review</title>
<style>/*CSS*/</style>
</head>
<body>
<header>
  <h1 id="title">ttv review</h1>
  <div id="totals">
    <span>spent <b id="spent">-</b></span>
    <span>saved <b id="saved">-</b></span>
    <span>estimate of what is dirty <b id="estimate">-</b></span>
  </div>
  <div id="controls">
    <button id="build-frames">Build frames</button>
    <button id="build-segments">Build approved segments</button>
    <span id="build-status" data-running="false"></span>
  </div>
  <div id="error"></div>
</header>
<main id="shots"></main>
<section id="final"></section>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
let last = "";
let running = false;
let timer = null;

function money(v) { return "$" + v.toFixed(2); }

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  if (text !== undefined) e.textContent = text;
  return e;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", "x-ttv-token": token },
    body: JSON.stringify(body),
  });
  const j = await r.json().catch(() => ({}));
  document.getElementById("error").textContent = r.ok ? "" : (j.error || r.statusText);
  await refresh();
}

function media(n) {
  if (!n.blob) return el("div", { class: "missing" }, "not made yet");
  if (n.image) {
    return el("img", { class: "current", src: "/blob/" + n.blob, alt: n.id });
  }
  return el("video", { class: "current", src: "/blob/" + n.blob, controls: "" });
}

function nodeView(n) {
  const box = el("div", {
    class: "node " + n.kind, "data-node": n.id, "data-status": n.status,
    "data-verdict": n.verdict || "", "data-take": n.take || "",
  });
  box.append(el("div", { class: "id" }, n.id + (n.take ? " (take " + n.take + ")" : "")));
  box.append(media(n));
  if (n.takes.length > 1) {
    const takes = el("div", { class: "takes" });
    for (const t of n.takes) {
      const attrs = { "data-take": t.take, title: "take " + t.take + ", " + money(t.cost_usd) };
      if (n.image) {
        attrs.src = "/blob/" + t.blob;
        attrs.class = "take-thumb" + (t.current ? " is-current" : "");
        const img = el("img", attrs);
        if (!t.current) img.onclick = () => post("/api/pin", { node: n.id, take: t.take });
        takes.append(img);
      } else {
        attrs.class = "take-thumb" + (t.current ? " is-current" : "");
        const b = el("button", attrs, "take " + t.take);
        if (!t.current) b.onclick = () => post("/api/pin", { node: n.id, take: t.take });
        takes.append(b);
      }
    }
    box.append(takes);
  }
  const line = el("div");
  line.append(el("span", { class: "status" }, n.status));
  if (n.verdict) line.append(el("span", { class: "verdict" }, ", " + n.verdict));
  line.append(el("span", { class: "cost" },
    " " + (n.cost_unknown ? "$? (no known price)" : money(n.cost_usd))));
  box.append(line);
  if (n.reasons.length) {
    const ul = el("ul", { class: "reasons" });
    for (const r of n.reasons) ul.append(el("li", {}, r));
    box.append(ul);
  }
  if (n.judged && n.blob) {
    const a = el("button", { class: "approve" }, "Approve");
    a.onclick = () => post("/api/approve", { nodes: [n.id] });
    const r = el("button", { class: "reject" }, "Reject");
    r.onclick = () => post("/api/reject", { nodes: [n.id] });
    box.append(a, r);
  }
  if (n.generated) {
    const rr = el("button", { class: "reroll" }, "Reroll");
    rr.onclick = () => post("/api/build", { targets: [n.id], reroll: [n.id] });
    box.append(rr);
  }
  return box;
}

function render(s) {
  document.getElementById("title").textContent = "ttv review: " + s.name;
  document.getElementById("spent").textContent = money(s.totals.spent_usd);
  document.getElementById("saved").textContent = money(s.totals.saved_usd);
  document.getElementById("estimate").textContent = money(s.totals.estimate_usd) +
    (s.totals.cost_unknown ? " + " + s.totals.cost_unknown + " of unknown price" : "") +
    " (" + s.totals.dirty + " to make, " + s.totals.waiting + " waiting)";
  const status = document.getElementById("build-status");
  status.dataset.running = String(s.build.running);
  status.textContent = s.build.running
    ? "building " + s.build.targets.join(" ") + "..."
    : (s.build.message || "");
  for (const b of ["build-frames", "build-segments"]) {
    document.getElementById(b).disabled = s.build.running;
  }
  const main = document.getElementById("shots");
  main.replaceChildren();
  for (const shot of s.shots) {
    const sec = el("section", { class: "shot", "data-shot": shot.id });
    sec.append(el("h2", {}, shot.id));
    const p = el("div", { class: "prompts" });
    if (shot.prompts.start) p.append(el("div", { class: "prompt-start" }, "start: " + shot.prompts.start));
    if (shot.starts_on) p.append(el("div", { class: "starts-on" }, "starts on " + shot.starts_on));
    p.append(el("div", { class: "prompt-end" }, "end: " + shot.prompts.end));
    p.append(el("div", { class: "prompt-motion" }, "motion: " + shot.prompts.motion));
    sec.append(p);
    const nodes = el("div", { class: "nodes" });
    for (const n of shot.nodes) nodes.append(nodeView(n));
    sec.append(nodes);
    main.append(sec);
  }
  const fin = document.getElementById("final");
  fin.replaceChildren();
  if (s.final) {
    fin.append(el("h2", {}, "Final video"));
    fin.append(nodeView(s.final));
  }
}

async function refresh() {
  try {
    const r = await fetch("/api/state?token=" + encodeURIComponent(token));
    const text = await r.text();
    if (!r.ok) {
      document.getElementById("error").textContent = (JSON.parse(text).error || r.statusText);
      return;
    }
    if (text !== last) {
      last = text;
      render(JSON.parse(text));
    }
    const s = JSON.parse(text);
    document.body.dataset.loaded = "true";
    if (s.build.running !== running) {
      running = s.build.running;
      clearInterval(timer);
      timer = setInterval(refresh, running ? 1000 : 5000);
    }
  } catch (e) {
    document.getElementById("error").textContent = String(e);
  }
}

document.getElementById("build-frames").onclick = () => post("/api/build", { targets: ["frames"] });
document.getElementById("build-segments").onclick = () => post("/api/build", { targets: ["segments"] });
timer = setInterval(refresh, 5000);
refresh();
</script>
</body>
</html>
"#;
