pub mod fake_google;
pub mod project;
pub mod s3;

/// A reqwest client builder for the tests' own requests, with the process's one TLS crypto
/// provider installed first (ttv builds reqwest without a provider of its own).
pub fn http() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
