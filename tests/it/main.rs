//! ttv's integration tests: the real `ttv` binary on temp copies of fixture projects, real
//! SQLite, real files, real ffmpeg, and a fake Google service on 127.0.0.1.

mod animatic;
mod bad_input;
mod chaining;
mod concurrency;
mod crash;
mod engine;
mod fake_selftest;
mod fastpath;
mod google;
mod google_2026;
mod import;
mod reliability_cli;
mod reliability_store;
mod remote;
mod review;
mod review_gate;
mod storyboard;
mod support;
mod trims;
