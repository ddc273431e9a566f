//! The build graph (DESIGN.md §3), built from ttv.yaml alone before any work starts. Nodes are
//! created in data-flow order, so their index order is a topological order.

use std::collections::BTreeSet;

use crate::error::UsageError;
use crate::materialize::BUILD_DIR;
use crate::project::{KeyframePosition, Project, Transition, VideoMode};

pub use crate::kinds::{
    AutoReference, Final, Frame, FrameRole, Kind, LastFrame, NodeKind, Segment,
};

#[derive(Debug, Clone)]
pub struct Node {
    /// The node id of the CLI contract (`frame/arrival/end`).
    pub id: String,
    pub kind: NodeKind,
    /// Indices of the nodes whose outputs this one consumes.
    pub deps: Vec<usize>,
    /// Where the output is materialized, relative to the project: `build/frames/...` (made
    /// once here: the no-op build's stat, the report and the manifest all use it).
    pub output: String,
}

impl Node {
    /// What its kind is (recipe, production, price, pool).
    pub fn kind(&self) -> &dyn Kind {
        self.kind.get()
    }

    /// `frame`, `segment`, `final`, `reference`, `last_frame`: the `kind` field of the JSON
    /// output.
    pub fn kind_name(&self) -> &'static str {
        self.kind().name()
    }

    /// The shot this node belongs to, if any.
    pub fn shot(&self) -> Option<usize> {
        self.kind().shot()
    }

    fn new(id: String, kind: NodeKind, output: String) -> Node {
        Node {
            id,
            deps: kind.deps(),
            kind,
            output,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// For each node, the nodes that consume its output.
    pub dependents: Vec<Vec<usize>>,
}

impl Graph {
    pub fn from_project(project: &Project) -> Graph {
        let cfg = &project.config;
        let mut nodes: Vec<Node> = Vec::new();
        let auto_reference = if project.references.is_empty()
            && cfg.keyframes.auto_reference
            && cfg.shots.first().is_some_and(|s| s.start.is_some())
        {
            nodes.push(Node::new(
                "reference/auto".into(),
                NodeKind::AutoReference(AutoReference { shot: 0 }),
                format!("{BUILD_DIR}/references/auto.png"),
            ));
            Some(0)
        } else {
            None
        };
        let mut prev_end: Option<usize> = None;
        let mut segments: Vec<usize> = Vec::new();
        for (i, shot) in cfg.shots.iter().enumerate() {
            let number = i + 1;
            let start = if let Some(p) = prev_end.filter(|_| shot.transition != Transition::Cut) {
                p
            } else {
                nodes.push(Node::new(
                    format!("frame/{}/start", shot.id),
                    NodeKind::Frame(Frame {
                        shot: i,
                        role: FrameRole::Start,
                        input: None,
                        auto_reference: auto_reference.filter(|_| shot.start_image.is_none()),
                    }),
                    format!("{BUILD_DIR}/frames/{number:03}-{}-start.png", shot.id),
                ));
                nodes.len() - 1
            };
            nodes.push(Node::new(
                format!("frame/{}/end", shot.id),
                NodeKind::Frame(Frame {
                    shot: i,
                    role: FrameRole::End,
                    input: cfg.keyframes.chain.then_some(start),
                    auto_reference,
                }),
                format!("{BUILD_DIR}/frames/{number:03}-{}-end.png", shot.id),
            ));
            let end = nodes.len() - 1;
            // Chaining: the segment starts on the previous video's last frame (the end frame
            // keeps its keyframe chain, so an edit of a video does not remake keyframes).
            let chained_from = match segments.last() {
                Some(&prev) if cfg.chained(i) => {
                    let prev_shot = &cfg.shots[i - 1];
                    nodes.push(Node::new(
                        format!("frame/{}/last", prev_shot.id),
                        NodeKind::LastFrame(LastFrame {
                            shot: i - 1,
                            segment: prev,
                        }),
                        format!("{BUILD_DIR}/frames/{:03}-{}-last.png", i, prev_shot.id),
                    ));
                    Some(nodes.len() - 1)
                }
                _ => None,
            };
            // A references-mode segment takes no keyframe: its frames are made only if
            // something else uses them.
            let (first, last) = match (cfg.video_mode(i), cfg.video.keyframe_position) {
                (VideoMode::FirstLast, _) => (Some(chained_from.unwrap_or(start)), Some(end)),
                (VideoMode::Single, _) if chained_from.is_some() => (chained_from, None),
                (VideoMode::Single, KeyframePosition::Last) => (Some(end), None),
                (VideoMode::Single, _) => (Some(start), None),
                (VideoMode::References, _) => (None, None),
            };
            nodes.push(Node::new(
                format!("segment/{}", shot.id),
                NodeKind::Segment(Segment {
                    shot: i,
                    first,
                    last,
                }),
                format!("{BUILD_DIR}/segments/{number:03}-{}.mp4", shot.id),
            ));
            segments.push(nodes.len() - 1);
            prev_end = Some(end);
        }
        if let Some(f) = &cfg.final_ {
            nodes.push(Node::new(
                "final".into(),
                NodeKind::Final(Final { segments }),
                format!("{BUILD_DIR}/{}", f.output),
            ));
        }
        let mut dependents = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            for &d in &n.deps {
                dependents[d].push(i);
            }
        }
        Graph { nodes, dependents }
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The nodes a build of `targets` needs, sorted (so in data-flow order). No targets means
    /// the default: every segment and the final video.
    pub fn select(&self, project: &Project, targets: &[String]) -> Result<Vec<usize>, UsageError> {
        let mut roots = BTreeSet::new();
        if targets.is_empty() {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.kind().default_target() {
                    roots.insert(i);
                }
            }
        }
        for t in targets {
            roots.extend(self.resolve_target(project, t)?);
        }
        let mut needed = BTreeSet::new();
        let mut stack: Vec<usize> = roots.into_iter().collect();
        while let Some(i) = stack.pop() {
            if needed.insert(i) {
                stack.extend(&self.nodes[i].deps);
            }
        }
        Ok(needed.into_iter().collect())
    }

    /// A node id, a shot id (all its nodes), or a group (`frames`, `segments`, `final`).
    pub fn resolve_target(
        &self,
        project: &Project,
        target: &str,
    ) -> Result<Vec<usize>, UsageError> {
        let all = |f: &dyn Fn(&Node) -> bool| -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|&i| f(&self.nodes[i]))
                .collect()
        };
        let found = match target {
            "frames" | "segments" => all(&|n| n.kind().group() == Some(target)),
            _ => {
                if let Some(i) = self.index_of(target) {
                    vec![i]
                } else if let Some(s) = project.config.shots.iter().position(|s| s.id == target) {
                    all(&|n| n.shot() == Some(s))
                } else {
                    Vec::new()
                }
            }
        };
        if found.is_empty() {
            let mut names: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
            names.extend(project.config.shots.iter().map(|s| s.id.as_str()));
            names.extend(["frames", "segments"]);
            let suggestion = names
                .iter()
                .map(|n| (strsim::jaro_winkler(n, target), *n))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n)| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            let hint = if target == "final" {
                " ttv.yaml has no `final:` section.".to_string()
            } else {
                String::new()
            };
            return Err(UsageError::new(format!(
                "unknown target `{target}`{suggestion}.{hint} Targets are node ids (`ttv plan` lists them), shot ids, or the groups frames, segments, final"
            )));
        }
        Ok(found)
    }
}

/// Every node of the project (the groups that name them all): what gc keeps and the review page
/// shows.
pub fn all_targets(project: &Project) -> Vec<String> {
    let mut t = vec!["frames".to_string(), "segments".to_string()];
    if project.config.final_.is_some() {
        t.push("final".into());
    }
    t
}
