//! Credentials of the Google backends, found when a backend is constructed (no request made):
//! an API key for the Gemini API, a project, location and OAuth bearer for Vertex AI.

use std::path::PathBuf;
use std::sync::Arc;

use gcp_auth::TokenProvider;
use tokio::sync::OnceCell;

use crate::backends::GenError;
use crate::error::ProjectError;
use crate::secret::Secret;

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

    /// The host the SDK uses for a location: `https://{L}-aiplatform.googleapis.com`, the
    /// global endpoint for `global`, and the multi-region hosts for `us` and `eu`.
    pub fn default_base_url(&self) -> String {
        match self.location.as_str() {
            "global" => "https://aiplatform.googleapis.com".into(),
            multi @ ("us" | "eu") => format!("https://aiplatform.{multi}.rep.googleapis.com"),
            region => format!("https://{region}-aiplatform.googleapis.com"),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::backends::http::test_server::{Reply, serve};

    /// An RSA key made for this test only (openssl genpkey), never registered anywhere.
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDsUsWnM/G6rxKm\nMjMn/AEhKHw4OL7G9lUiEZJJhN3wD49/TGREXjkmQd4sHsYdxq3Vqb4WOVXqjeyl\nDTBC6kaTeJtdh4906zw56EniQPwUt5ZMEP7f8hfVYSkv3wmhEnfCt+pmUG9CWq2a\nnUwK2dh/IIfTAZeZtE4tty8xVqWmomUZoPUl5i+UKYfjB08R70YpVTxX6gcTsNU6\nOzoXssoTtQC0k9BWPCEhZ89Is/TX7pQTffXiluH2DE83mW06FO7DaBooulGD8Jg5\n1OoCCpoAUV3ZW/icbfdaMWur5/2vgujSm5KjrnxQ5N768Su4V4CnibPYQutEgfmH\noKn049i/AgMBAAECggEAGbwHFhF2rgjz6PE9LN9+Z/6hTaYFmw5RcFJQMdKsMGt2\ntDq8uHfiP/jwRAcIiqQ2DeGxd3jAPbiSyoPIe6DzaopkW30FnDUkQSdl1E5ApSjm\nJFu9cDmhasptJ8S2pw78clHWI/93qNbNt4aQNKZLCHJMbX1A5atYJWugp1NzhSpN\nwbS+itp3uhgyUDSFpvMdyBK5o3LJPu3SWgSY2Vos3y7dA1UuZfKkN2+MlgYDDgLO\nS5QT9MbAjM1i+l7x5nzyheUq2StK5eZydn5CcCyZmD/QsOtuvaZMk6MIcEXW0lWl\noIgTZwQT4462GcSr+s0jfz8kzKNj5Af0MOUHvPIO8QKBgQD9TSw1UTt2ycGzTLlS\nxaLX/vrmn6Bb5lGSLnPZ7GhIJMSndu+9YA4pL8IU68Vq3B/UewAyEv/p4ru0cRiu\ndf/japxy5GFcYiTzBGORXsZkYnWVDk52lzLSuSP/WySf1gXgYz7yt16jI6EDxiJA\nH6TN6ZlHyooivMf4mPm1XlgXIwKBgQDu10uJWFNLjhK6xPqUE1sD/f9+5MbPWHNs\nYBDVHFT5T7qC0f8sIGX+R0Si2M8gBQT/mY3T8jc9xulmPrKew+6mYBm0xC/e67/R\nm3tnkYhljso4u4ESo0QB0AJ93pBFVNgfe1RaUWQwz5630fe6CqHgPJClBlNYRkFl\nptefKvzftQKBgQCATpAfLdeuM0K//RQ+3ke/m7QiECedhYw6PPeIIt0r9hv7LB8C\nUV669Cseh9NHbttcuTV/J+qj4artGwDClpkY7E71T8QVlM1coBODdnuOK+WdrFKI\ndcxTu16FofhqUnJFmGAxeDsi7hBIphuBWcYUW8i9+dWBBRlSTsLmYTTD+wKBgQCH\nkg1+WHRvXqWi/kx94L649WQhUxrGdx6NVbo4PWy+V1M3DpwZIArE2w9KoGZxdmfv\n7eljdQmGN3IkZ1JcbDr6lXIB+Zpynr6y696QWztg6jw/F6+cNLBVlwzTBZI+yHok\n5Ixs9+Y3DqK5FKXZJE/eSIKSKZUFdluIp7uczXncQQKBgDuFTVhc5NObxCY0lLQd\n5VHZZecIpF18/W0P90zOIRWdAtuUt9922J4PmgymDsUkQHTGdv8KdyPsDwjw+sS1\n10BiF5EHusPf03AQDPwSZjftNjpSlndGigugI0n3DuGs3/aCR9RHOpgx7ISGvxqV\nOOydoWiqPb163lq4jpKK4S2z\n-----END PRIVATE KEY-----";

    #[tokio::test]
    async fn service_account_tokens_come_from_the_token_uri_in_the_key_file() {
        let (base, log) = serve(|req, _| match req.target.as_str() {
            "/token" => Reply::json(
                200,
                json!({"access_token": "ya29.from-fake", "expires_in": 3600,
                    "token_type": "Bearer"}),
            ),
            _ => Reply::bytes(404, Vec::new()),
        })
        .await;
        let key_file = json!({"type": "service_account", "project_id": "proj",
            "private_key_id": "1", "private_key": TEST_KEY,
            "client_email": "ttv@proj.iam.gserviceaccount.com",
            "token_uri": format!("{base}/token")});
        let provider = gcp_auth::CustomServiceAccount::from_json(&key_file.to_string()).unwrap();
        let provider: Arc<dyn TokenProvider> = Arc::new(provider);
        let bearer = Bearer(Source::Adc(OnceCell::new_with(Some(provider))));
        let token = tokio::time::timeout(Duration::from_secs(10), bearer.token())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(token.expose(), "ya29.from-fake");
        // Cached: a second token needs no second exchange.
        bearer.token().await.unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        let form = String::from_utf8(log[0].body.clone()).unwrap();
        assert!(
            form.starts_with(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion="
            ),
            "{form}"
        );
    }

    #[test]
    fn vertex_base_url_follows_the_location() {
        let t = |location: &str| VertexTarget {
            project: "p".into(),
            location: location.into(),
        };
        assert_eq!(
            t("europe-west4").default_base_url(),
            "https://europe-west4-aiplatform.googleapis.com"
        );
        assert_eq!(
            t("global").default_base_url(),
            "https://aiplatform.googleapis.com"
        );
        // The multi-regions, as the SDK addresses them.
        assert_eq!(
            t("us").default_base_url(),
            "https://aiplatform.us.rep.googleapis.com"
        );
        assert_eq!(
            t("eu").default_base_url(),
            "https://aiplatform.eu.rep.googleapis.com"
        );
    }
}
