//! The interfaces every tier of the cache implements: a blob store (by blake3 hash) and an
//! action index (a recipe's takes, in-flight operations). The local tier (`.ttv/objects` and
//! SQLite, [`super::local`]) and the remote one (object storage, [`super::remote`]) are two
//! implementations; [`super::tiers`] composes them, and nothing outside `store` knows which one
//! it talks to.

use std::path::Path;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::recipe::Recipe;

/// One result as a tier records it: the action and the recipe its key was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub key: String,
    pub base_key: String,
    pub take: u32,
    pub node_kind: String,
    pub node_id: String,
    pub blob: String,
    pub size: u64,
    pub media_type: String,
    pub backend: String,
    pub model: String,
    pub cost_usd: f64,
    pub created_at: i64,
    pub gen_ms: i64,
    #[serde(default)]
    pub provenance: Option<String>,
    /// The canonical recipe JSON the key was made from.
    pub recipe: String,
    /// Who made it (`user@host`; empty for a result made before it was recorded).
    #[serde(default)]
    pub machine: String,
}

impl ActionRecord {
    /// The key of take `take` of this record's recipe (for a result that must become the next
    /// free take), or `None` if the recipe does not parse.
    pub fn key_at(&self, take: u32) -> Option<String> {
        let r: Recipe = serde_json::from_str(&self.recipe).ok()?;
        Some(Recipe::key_at_take(
            &Recipe { take: 0, ..r }.canonical_json(),
            take,
        ))
    }

    /// This record as take `take` (its key follows).
    pub fn renumbered(&self, take: u32) -> ActionRecord {
        ActionRecord {
            take,
            key: self.key_at(take).unwrap_or_else(|| self.key.clone()),
            ..self.clone()
        }
    }
}

/// A submitted video operation, so that whoever resumes the key polls it instead of paying
/// again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// The backend's label (`veo (vertex)`), as the operation log keys it.
    pub backend: String,
    pub operation: String,
    #[serde(default)]
    pub machine: String,
    pub submitted_at: i64,
}

/// Content-addressed blobs by blake3 hash.
#[async_trait]
pub trait BlobTier: Send + Sync {
    /// The blob's size, if the tier has it.
    async fn blob_size(&self, hash: &str) -> Result<Option<u64>>;
    /// Copies the blob into `dest` (a temp file). `false`: the tier does not have it. The
    /// caller checks the bytes against the hash: no tier is trusted to hold what it names.
    async fn read_blob(&self, hash: &str, dest: &Path) -> Result<bool>;
    /// Stores `src`, whose bytes the caller checked hash to `hash`.
    async fn write_blob(&self, hash: &str, src: &Path) -> Result<()>;
}

/// The action index: which results a recipe has, and operations in flight.
#[async_trait]
pub trait ActionTier: Send + Sync {
    /// The takes recorded for a base key, in order.
    async fn takes(&self, base_key: &str) -> Result<Vec<u32>>;
    async fn action(&self, base_key: &str, take: u32) -> Result<Option<ActionRecord>>;
    /// Records a result whose blob this tier already holds. Never overwrites another result:
    /// when its take is taken by other bytes (made elsewhere at the same time), it becomes the
    /// next free take. Returns the take it was recorded as.
    async fn record(&self, a: &ActionRecord) -> Result<u32>;
    async fn operation(&self, key: &str) -> Result<Option<OperationRecord>>;
    async fn record_operation(&self, key: &str, op: &OperationRecord) -> Result<()>;
    async fn clear_operation(&self, key: &str) -> Result<()>;
}

/// A whole tier: blobs and the index of what they are.
pub trait Tier: BlobTier + ActionTier {
    /// For messages: `local`, or the remote's URL.
    fn name(&self) -> String;
}
