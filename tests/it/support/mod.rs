pub mod fake_google;
pub mod project;
