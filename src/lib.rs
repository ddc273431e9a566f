//! ttv: a make-like, content-addressed caching build tool for AI video.
//!
//! Data flows one way: [`project`] (ttv.yaml) -> [`graph`] (nodes, each of a kind in
//! [`kinds`]: its recipe, production, price and pool) -> [`recipe`] (keys) ->
//! [`plan`] (store lookups) -> [`build`] (scheduler) -> [`backends`] -> [`store`] ->
//! [`materialize`] (build/ outputs).

pub(crate) mod backends;
pub(crate) mod build;
pub(crate) mod cache_cmd;
pub mod cli;
pub(crate) mod decide;
pub(crate) mod doctor;
pub(crate) mod error;
pub(crate) mod fastpath;
pub(crate) mod filehash;
pub(crate) mod graph;
pub(crate) mod housekeeping;
pub(crate) mod import;
pub(crate) mod kinds;
pub(crate) mod limiter;
pub(crate) mod materialize;
pub(crate) mod media;
pub(crate) mod models;
pub(crate) mod plan;
pub(crate) mod prices;
pub(crate) mod progress;
pub mod project;
pub(crate) mod recipe;
pub(crate) mod review;
pub(crate) mod secret;
pub(crate) mod stitch;
pub(crate) mod store;
pub(crate) mod storyboard;
