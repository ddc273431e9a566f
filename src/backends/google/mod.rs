//! Google's generation services as the official SDK calls them: Gemini image and text models
//! (`gemini`), Veo on Vertex AI or the Gemini API (`veo`), the HTTP client, retries and error
//! shape they share (`http`), and their credentials (`auth`).

pub mod auth;
pub mod gemini;
pub mod http;
pub mod veo;
