//! What a person decides before paying (issue 8): a verdict on a frame's current take, and a
//! pinned take. `ttv approve/reject/pin` and the review page both come here.

use anyhow::Result;
use serde::Serialize;

use crate::error::UsageError;
use crate::graph::Graph;
use crate::plan::Session;
use crate::progress::Progress;
use crate::project::Project;
use crate::store::Verdict;

/// One frame a verdict was recorded on.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub id: String,
    pub take: u32,
    pub blob: String,
    pub verdict: &'static str,
}

/// Records `verdict` on the current take of each frame `targets` names (node ids, shot ids,
/// `frames`); says so on `progress`.
pub fn judge(
    project: Project,
    targets: &[String],
    verdict: Verdict,
    progress: &Progress,
) -> Result<Vec<Judged>> {
    // A verdict can change what a build makes without changing a file the fast path stats.
    crate::fastpath::forget(&project.root);
    let session = Session::open(project, targets, &[], progress.clone())?;
    let report = session.plan()?;
    let Some(store) = &session.store else {
        return Err(UsageError::new(
            "nothing was built yet: run `ttv build frames`, look at the frames, then approve them",
        )
        .into());
    };
    let mut frames = Vec::new();
    for t in targets {
        for i in session.graph.resolve_target(&session.project, t)? {
            if session.graph.nodes[i].kind().judged() {
                frames.push(i);
            }
        }
    }
    if frames.is_empty() {
        return Err(UsageError::new(format!(
            "{} names no frame: approve frames (frame/SHOT/start, frame/SHOT/end, a shot id, or \
             `frames`)",
            targets.join(" ")
        ))
        .into());
    }
    frames.sort_unstable();
    frames.dedup();
    let mut done = Vec::new();
    for i in frames {
        let id = &session.graph.nodes[i].id;
        let node = report.nodes.iter().find(|n| &n.id == id);
        let Some((blob, take)) = node.and_then(|n| Some((n.blob.clone()?, n.take?))) else {
            return Err(UsageError::new(format!(
                "{id} has not been made (or will be made again): run `ttv build {id}` and look \
                 at it first"
            ))
            .into());
        };
        store.set_verdict(&blob, id, verdict)?;
        progress.info(&format!("{} {id} (take {take})", verdict.as_str()));
        done.push(Judged {
            id: id.clone(),
            take,
            blob,
            verdict: verdict.as_str(),
        });
    }
    Ok(done)
}

/// Pins take `take` of a frame or segment: writes `take:`, `start_take:` or `end_take:` under
/// its shot in ttv.yaml (that one line).
pub fn pin(project: &Project, node: &str, take: u32, progress: &Progress) -> Result<()> {
    let graph = Graph::from_project(project);
    let i = graph.index_of(node).ok_or_else(|| {
        UsageError::new(format!(
            "`{node}` is not a node id (`ttv plan -v` lists them)"
        ))
    })?;
    let Some(pin) = graph.nodes[i].kind().pin(&project.config) else {
        return Err(UsageError::new(format!(
            "{node} has no takes to pin: only frames and segments do"
        ))
        .into());
    };
    let (shot, field) = (pin.shot, pin.field);
    if take == 0 {
        return Err(UsageError::new("takes are numbered from 1").into());
    }
    project.set_shot_line(shot, &field, &take.to_string())?;
    progress.info(&format!(
        "pinned {node} to take {take} (`{field}: {take}` under shot `{}` in ttv.yaml)",
        project.config.shots[shot].id
    ));
    Ok(())
}
