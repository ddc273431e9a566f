//! The JSON the review page reads: the storyboard as `ttv plan` sees it now (ttv.yaml is read
//! again on every request), with each frame's takes and verdict.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::kinds::Pool;
use crate::media::Media;
use crate::plan::{NodeReport, Session, Status};
use crate::progress::{Progress, Verbosity};
use crate::project::Project;
use crate::store::Store;

#[derive(Debug, Serialize)]
pub struct State {
    pub name: String,
    pub require_approval: bool,
    pub shots: Vec<ShotState>,
    pub totals: Totals,
    #[serde(rename = "final")]
    pub final_: Option<NodeState>,
}

#[derive(Debug, Serialize)]
pub struct ShotState {
    pub id: String,
    pub prompts: Prompts,
    /// The frame this shot starts on when it continues the shot before (not its own node).
    pub starts_on: Option<String>,
    /// Its own start frame (first shot, cuts), end frame and segment, in that order.
    pub nodes: Vec<NodeState>,
}

#[derive(Debug, Serialize)]
pub struct Prompts {
    pub start: Option<String>,
    pub end: String,
    pub motion: String,
}

#[derive(Debug, Serialize)]
pub struct NodeState {
    pub id: String,
    pub kind: &'static str,
    /// `start`, `end`, `segment`, `last` (the extracted last frame of chaining mode) or
    /// `final`.
    pub role: &'static str,
    /// Its output is an image (else a video).
    pub image: bool,
    /// A verdict on it gates what is made from it (`require_approval`): approve and reject
    /// apply.
    pub judged: bool,
    /// Made by a generator: it can be rerolled.
    pub generated: bool,
    pub status: Status,
    pub reasons: Vec<String>,
    pub cost_usd: f64,
    pub cost_unknown: bool,
    pub take: Option<u32>,
    pub blob: Option<String>,
    /// Where build/ holds the current take, relative to the project.
    pub output: Option<String>,
    /// The verdict on the current take (frames).
    pub verdict: Option<&'static str>,
    /// Every take of the node's current recipe.
    pub takes: Vec<Take>,
}

#[derive(Debug, Serialize)]
pub struct Take {
    pub take: u32,
    pub blob: String,
    pub cost_usd: f64,
    pub created_at: i64,
    pub current: bool,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    /// What the current takes of every node cost.
    pub spent_usd: f64,
    /// What every generation in the cache cost, other takes included.
    pub all_takes_usd: f64,
    /// What reusing the cache has saved, over every build.
    pub saved_usd: f64,
    /// The estimate of what is dirty.
    pub estimate_usd: f64,
    pub dirty: usize,
    pub waiting: usize,
    /// Dirty nodes whose model has no known price (not in the estimate).
    pub cost_unknown: usize,
}

/// The state of the project at `root` now.
pub fn state(root: &Path) -> Result<State> {
    let project = Project::load(root)?;
    let targets = crate::graph::all_targets(&project);
    let session = Session::open(project, &targets, &[], Progress::new(Verbosity::Quiet))?;
    let report = session.plan()?;
    let store = session.store.as_deref();
    let verdicts = match store {
        Some(s) => s.verdicts()?,
        None => HashMap::new(),
    };
    let by_id: HashMap<&str, &NodeReport> =
        report.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let node_state = |i: usize| -> Result<Option<NodeState>> {
        let node = &session.graph.nodes[i];
        let kind = node.kind();
        let Some(n) = by_id.get(node.id.as_str()) else {
            return Ok(None);
        };
        let takes = match store {
            Some(s) => takes_of(s, n)?,
            None => Vec::new(),
        };
        let verdict = n
            .blob
            .as_ref()
            .filter(|_| kind.judged())
            .and_then(|b| verdicts.get(b))
            .map(|v| v.as_str());
        Ok(Some(NodeState {
            id: n.id.clone(),
            kind: n.kind,
            role: kind.role(),
            image: kind.media() == Media::Png,
            judged: kind.judged(),
            generated: kind.pool(&session.project.config) != Pool::Local,
            status: n.status,
            reasons: n.reasons.clone(),
            cost_usd: n.cost_usd,
            cost_unknown: n.cost_unknown,
            take: n.take,
            blob: n.blob.clone(),
            output: n.output.clone(),
            verdict,
            takes,
        }))
    };
    let cfg = &session.project.config;
    let mut shots = Vec::new();
    let mut final_ = None;
    for (s, shot) in cfg.shots.iter().enumerate() {
        let mut nodes = Vec::new();
        let mut starts_on = None;
        for (i, node) in session.graph.nodes.iter().enumerate() {
            if node.shot() != Some(s) {
                continue;
            }
            if let Some(f) = node.kind().starts_on()
                && session.graph.nodes[f].shot() != Some(s)
            {
                starts_on = Some(session.graph.nodes[f].id.clone());
            }
            nodes.extend(node_state(i)?);
        }
        shots.push(ShotState {
            id: shot.id.clone(),
            prompts: Prompts {
                start: shot.start.clone(),
                end: shot.end.clone(),
                motion: shot.motion.clone(),
            },
            starts_on,
            nodes,
        });
    }
    if let Some(i) = session.graph.index_of("final") {
        final_ = node_state(i)?;
    }
    let count = |s: Status| report.nodes.iter().filter(|n| n.status == s).count();
    let round = |v: f64| (v * 1e6).round() / 1e6 + 0.0;
    let totals = Totals {
        spent_usd: round(
            report
                .nodes
                .iter()
                .filter(|n| n.status == Status::Cached)
                .map(|n| n.cost_usd)
                .sum(),
        ),
        all_takes_usd: round(
            store
                .map(Store::paid_generations)
                .transpose()?
                .map_or(0.0, |p| p.1),
        ),
        saved_usd: round(
            store
                .map(Store::saved_by_builds)
                .transpose()?
                .unwrap_or(0.0),
        ),
        estimate_usd: report.cost_usd,
        dirty: count(Status::Dirty),
        waiting: count(Status::Waiting),
        cost_unknown: report.cost_unknown,
    };
    Ok(State {
        name: cfg.name.clone().unwrap_or_else(|| {
            root.file_name()
                .map_or("project".into(), |n| n.to_string_lossy().into_owned())
        }),
        require_approval: cfg.video.require_approval,
        shots,
        totals,
        final_,
    })
}

/// The takes of a node's current recipe (none while its recipe is not known: its inputs will
/// be made again first).
fn takes_of(store: &Store, n: &NodeReport) -> Result<Vec<Take>> {
    let Some(key) = &n.key else {
        return Ok(Vec::new());
    };
    let Some(action) = store.action(key)? else {
        return Ok(Vec::new());
    };
    Ok(store
        .takes(&action.base_key)?
        .into_iter()
        .map(|a| Take {
            current: &a.key == key,
            take: a.take,
            blob: a.blob,
            cost_usd: a.cost_usd,
            created_at: a.created_at,
        })
        .collect())
}
