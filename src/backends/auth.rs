//! Credentials of the Google backends, found when a backend is constructed (no request made):
//! an API key for the Gemini API, a project, location and OAuth bearer for Vertex AI.

use std::path::PathBuf;
use std::sync::Arc;

use gcp_auth::TokenProvider;
use tokio::sync::OnceCell;

use super::GenError;
use super::http::Secret;
use crate::error::ProjectError;

pub const GEMINI_API_KEY: &str = "GEMINI_API_KEY";
pub const GOOGLE_API_KEY: &str = "GOOGLE_API_KEY";
pub const GOOGLE_CLOUD_PROJECT: &str = "GOOGLE_CLOUD_PROJECT";
pub const GCP_PROJECT_ID: &str = "GCP_PROJECT_ID";
pub const GOOGLE_CLOUD_LOCATION: &str = "GOOGLE_CLOUD_LOCATION";
pub const GOOGLE_OAUTH_ACCESS_TOKEN: &str = "GOOGLE_OAUTH_ACCESS_TOKEN";
pub const GOOGLE_APPLICATION_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

const DEFAULT_LOCATION: &str = "us-central1";
const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Where ProjectErrors about credentials point: there is no file to blame.
const ENVIRONMENT: &str = "environment";

/// A set, non-blank environment variable.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The Gemini API key: `GEMINI_API_KEY`, then `GOOGLE_API_KEY`, then the key in ttv.yaml at
/// `setting` (the project already warns about that one).
pub fn api_key(from_config: Option<&str>, setting: &str) -> Result<Secret, ProjectError> {
    env(GEMINI_API_KEY)
        .or_else(|| env(GOOGLE_API_KEY))
        .or_else(|| {
            from_config
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
        })
        .map(Secret::new)
        .ok_or_else(|| {
            ProjectError::new(
                ENVIRONMENT,
                None,
                format!("{GEMINI_API_KEY} is not set: the Gemini API needs an API key"),
            )
            .help(format!(
                "export {GEMINI_API_KEY}=... (a key from https://aistudio.google.com/apikey; \
                 {GOOGLE_API_KEY} also works), or use `backend: preview` under `{setting}`"
            ))
        })
}

/// The Vertex AI project and location.
#[derive(Debug, Clone, PartialEq)]
pub struct VertexTarget {
    pub project: String,
    pub location: String,
}

impl VertexTarget {
    pub fn from_env() -> Result<VertexTarget, ProjectError> {
        let project = env(GOOGLE_CLOUD_PROJECT)
            .or_else(|| env(GCP_PROJECT_ID))
            .ok_or_else(|| {
                ProjectError::new(
                    ENVIRONMENT,
                    None,
                    format!("{GOOGLE_CLOUD_PROJECT} is not set: Vertex AI needs a project id"),
                )
                .help(format!(
                    "export {GOOGLE_CLOUD_PROJECT}=your-project-id ({GCP_PROJECT_ID} also \
                     works), or use `api: gemini` with {GEMINI_API_KEY}"
                ))
            })?;
        let location = env(GOOGLE_CLOUD_LOCATION).unwrap_or_else(|| DEFAULT_LOCATION.into());
        Ok(VertexTarget { project, location })
    }

    /// `https://{L}-aiplatform.googleapis.com`, or the global endpoint for `global`.
    pub fn default_base_url(&self) -> String {
        if self.location == "global" {
            "https://aiplatform.googleapis.com".into()
        } else {
            format!("https://{}-aiplatform.googleapis.com", self.location)
        }
    }
}

/// Where Vertex bearer tokens come from.
pub struct Bearer(Source);

enum Source {
    Fixed(Secret),
    /// Application Default Credentials, resolved on first use (it may ask the metadata server).
    Adc(OnceCell<Arc<dyn TokenProvider>>),
}

impl Bearer {
    /// `GOOGLE_OAUTH_ACCESS_TOKEN`, else Application Default Credentials if any can be found
    /// without a request: `GOOGLE_APPLICATION_CREDENTIALS` or gcloud's
    /// application_default_credentials.json.
    pub fn from_env() -> Result<Bearer, ProjectError> {
        if let Some(token) = env(GOOGLE_OAUTH_ACCESS_TOKEN) {
            return Ok(Bearer::fixed(Secret::new(token)));
        }
        if let Some(path) = env(GOOGLE_APPLICATION_CREDENTIALS) {
            if !PathBuf::from(&path).is_file() {
                return Err(ProjectError::new(
                    ENVIRONMENT,
                    None,
                    format!("{GOOGLE_APPLICATION_CREDENTIALS} names {path}, which is not a file"),
                )
                .help(format!(
                    "point {GOOGLE_APPLICATION_CREDENTIALS} at a service account key JSON, or \
                     unset it and run `gcloud auth application-default login`"
                )));
            }
            return Ok(Bearer::adc());
        }
        if gcloud_credentials().is_some_and(|p| p.is_file()) {
            return Ok(Bearer::adc());
        }
        Err(ProjectError::new(
            ENVIRONMENT,
            None,
            "no Google Cloud credentials found for Vertex AI",
        )
        .help(format!(
            "run `gcloud auth application-default login`, or set \
             {GOOGLE_APPLICATION_CREDENTIALS} to a service account key file, or \
             {GOOGLE_OAUTH_ACCESS_TOKEN} to an access token"
        )))
    }

    pub fn fixed(token: Secret) -> Bearer {
        Bearer(Source::Fixed(token))
    }

    fn adc() -> Bearer {
        Bearer(Source::Adc(OnceCell::new()))
    }

    /// A current access token (providers cache and refresh them).
    pub async fn token(&self) -> Result<Secret, GenError> {
        match &self.0 {
            Source::Fixed(t) => Ok(t.clone()),
            Source::Adc(cell) => {
                let provider = cell
                    .get_or_try_init(gcp_auth::provider)
                    .await
                    .map_err(|e| auth_error("finding Application Default Credentials", &e))?;
                let token = provider
                    .token(&[CLOUD_PLATFORM_SCOPE])
                    .await
                    .map_err(|e| auth_error("getting an OAuth access token", &e))?;
                Ok(Secret::new(token.as_str()))
            }
        }
    }
}

/// gcloud's user credentials file, as gcp_auth looks for it on Unix.
fn gcloud_credentials() -> Option<PathBuf> {
    let home = env("HOME")?;
    Some(PathBuf::from(home).join(".config/gcloud/application_default_credentials.json"))
}

fn auth_error(doing: &str, e: &gcp_auth::Error) -> GenError {
    let mut text = format!("{doing} for Vertex AI failed: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    GenError::Permanent(format!(
        "{text} (check {GOOGLE_APPLICATION_CREDENTIALS} or run `gcloud auth \
         application-default login`)"
    ))
}
