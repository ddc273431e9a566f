//! ttv: a make-like, content-addressed caching build tool for AI video.
//!
//! Data flows one way: [`project`] (ttv.yaml) -> [`graph`] -> [`recipe`] (keys) ->
//! [`plan`] (store lookups) -> [`build`] (scheduler) -> [`backends`] -> [`store`] ->
//! [`materialize`] (build/ outputs).

pub mod backends;
pub mod build;
pub mod cache_cmd;
pub mod cli;
pub mod decide;
pub mod doctor;
pub mod error;
pub mod fastpath;
pub mod filehash;
pub mod graph;
pub mod housekeeping;
pub mod import;
pub mod kinds;
pub mod limiter;
pub mod materialize;
pub mod media;
pub mod models;
pub mod plan;
pub mod prices;
pub mod progress;
pub mod project;
pub mod recipe;
pub mod review;
pub mod secret;
pub mod stitch;
pub mod store;
pub mod storyboard;
