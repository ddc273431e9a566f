//! What the backends' unit tests share: the `operations` table in memory, a generation
//! context, and a segment recipe to make requests from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{GenContext, OperationLog, Pending};
use crate::kinds::SegmentRecipe;

/// The `operations` table as a map: key -> (backend, what is pending).
#[derive(Default)]
pub(crate) struct MemoryOperations(Mutex<BTreeMap<String, (String, Pending)>>);

impl MemoryOperations {
    /// The recorded operation name of `key`, if one is recorded.
    pub(crate) fn name(&self, key: &str) -> Option<String> {
        match self.0.lock().unwrap().get(key) {
            Some((_, Pending::Operation(n))) => Some(n.clone()),
            _ => None,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<Pending> {
        self.0.lock().unwrap().get(key).map(|(_, p)| p.clone())
    }
}

impl OperationLog for MemoryOperations {
    fn pending(&self, key: &str, backend: &str) -> Option<Pending> {
        let ops = self.0.lock().unwrap();
        ops.get(key)
            .filter(|(b, _)| b == backend)
            .map(|(_, p)| p.clone())
    }

    fn intend(&self, key: &str, backend: &str) -> anyhow::Result<()> {
        let pending = Pending::Uncertain {
            since: 0,
            detail: "intent".into(),
        };
        self.0
            .lock()
            .unwrap()
            .insert(key.into(), (backend.into(), pending));
        Ok(())
    }

    fn uncertain(&self, key: &str, backend: &str, detail: &str) -> anyhow::Result<()> {
        let pending = Pending::Uncertain {
            since: 0,
            detail: detail.into(),
        };
        self.0
            .lock()
            .unwrap()
            .insert(key.into(), (backend.into(), pending));
        Ok(())
    }

    fn record(&self, key: &str, backend: &str, name: &str) -> anyhow::Result<()> {
        let pending = Pending::Operation(name.into());
        self.0
            .lock()
            .unwrap()
            .insert(key.into(), (backend.into(), pending));
        Ok(())
    }

    fn clear(&self, key: &str) -> anyhow::Result<()> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

/// A context for node `test` with key `k`, writing under `tmp_dir`, and the statuses the
/// backend reported.
pub(crate) fn context(
    tmp_dir: &Path,
    ops: Arc<MemoryOperations>,
) -> (GenContext, Arc<Mutex<Vec<String>>>) {
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = statuses.clone();
    let ctx = GenContext {
        node_id: "segment/test".into(),
        key: "k".into(),
        tmp_dir: tmp_dir.to_path_buf(),
        operations: ops,
        status: Arc::new(move |s| seen.lock().unwrap().push(s)),
        uncertain: Arc::default(),
        resubmit: false,
        load: Arc::new(|_| {}),
    };
    (ctx, statuses)
}

/// A segment recipe: single mode from the start frame, 8 s of 720p 16:9, no audio.
pub(crate) fn segment(model: &str, prompt: &str) -> SegmentRecipe {
    SegmentRecipe {
        backend: "test".into(),
        model: model.into(),
        duration_seconds: 8,
        resolution: "720p".into(),
        aspect_ratio: "16:9".into(),
        generate_audio: false,
        negative_prompt: String::new(),
        seed: None,
        prompt: prompt.into(),
        frames: "start".into(),
        first: Some("first".into()),
        last: None,
        person_generation: None,
        sample_count: 1,
        references: Vec::new(),
    }
}
