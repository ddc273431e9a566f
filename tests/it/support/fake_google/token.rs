//! The OAuth token endpoint for service-account JWTs.

use super::*;

/// The OAuth token endpoint, checking a service-account JWT the way Google's does: an RS256
/// signature by the fixture's key, our client_email as issuer, this endpoint as audience, the
/// cloud-platform scope, and a lifetime of at most an hour. Errors use OAuth's own body shape.
pub(super) async fn token(
    shared: &Shared,
    form: &BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let oauth_error = |error: &str, description: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": error, "error_description": description}),
        )
    };
    let grant = form
        .get("grant_type")
        .map(String::as_str)
        .unwrap_or_default();
    if grant != JWT_BEARER {
        return Ok(oauth_error(
            "unsupported_grant_type",
            format!("Invalid grant_type: {grant}"),
        ));
    }
    let assertion = form
        .get("assertion")
        .map(String::as_str)
        .unwrap_or_default();
    let parts: Vec<&str> = assertion.split('.').collect();
    let decode_json = |part: &str| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?).ok()
    };
    let (Some(header), Some(claims), Some(signature)) = (
        parts.first().and_then(|p| decode_json(p)),
        parts.get(1).and_then(|p| decode_json(p)),
        parts
            .get(2)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
            .filter(|_| parts.len() == 3),
    ) else {
        return Ok(oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".to_owned()));
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let iat = claims["iat"].as_i64().unwrap_or(0);
    let scopes = claims["scope"].as_str().unwrap_or_default();
    let problem = if header["alg"] != "RS256" {
        Some(format!(
            "Invalid JWT: algorithm {} is not RS256.",
            header["alg"]
        ))
    } else if claims["iss"].as_str() != Some(FakeGoogle::service_account_email().as_str()) {
        Some("Invalid JWT: unknown issuer.".to_owned())
    } else if claims["aud"].as_str() != Some(format!("{}/token", shared.base_url).as_str()) {
        Some(format!(
            "Invalid JWT: audience {} is not this token endpoint.",
            claims["aud"]
        ))
    } else if !scopes.split(' ').any(|s| s == CLOUD_PLATFORM_SCOPE) {
        Some(format!(
            "Invalid JWT: scope \"{scopes}\" lacks {CLOUD_PLATFORM_SCOPE}."
        ))
    } else if exp <= now || iat > now + 60 || exp - iat > 3600 {
        Some("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".to_owned())
    } else if !signature_ok(&format!("{}.{}", parts[0], parts[1]), &signature).await {
        Some("Invalid JWT Signature.".to_owned())
    } else {
        None
    };
    if let Some(description) = problem {
        return Ok(oauth_error("invalid_grant", description));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
    ))
}

/// RS256 verification with the openssl command line against the fixture's public key.
async fn signature_ok(signed: &str, signature: &[u8]) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
    if std::fs::write(&data, signed).is_err() || std::fs::write(&sig, signature).is_err() {
        return false;
    }
    let status = tokio::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            &format!("{FIXTURES}/service-account.pub.pem"),
            "-signature",
        ])
        .arg(&sig)
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    status.is_ok_and(|s| s.success())
}
