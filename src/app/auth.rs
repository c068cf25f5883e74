//! Who a connection is (SPEC §4): HS256 JWTs when `JWT_SECRET` is set,
//! trusted user ids in development mode.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::errors::RequestError;
use super::validate;

// One per broker, never moved on a hot path: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Authenticator {
    /// No secret: the `userId` a client gives is believed.
    Development,
    Jwt { key: DecodingKey, validation: Validation },
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
}

impl Authenticator {
    pub fn new(jwt_secret: Option<&str>) -> Authenticator {
        match jwt_secret {
            None => Authenticator::Development,
            Some(secret) => {
                // HS256 only: `alg: none` and every other algorithm are refused.
                let mut validation = Validation::new(Algorithm::HS256);
                validation.required_spec_claims = ["sub".to_string()].into();
                validation.validate_exp = true;
                // A token that is not valid yet is refused too (jsonwebtoken ignores `nbf` by default).
                validation.validate_nbf = true;
                // Expired is expired: no grace period beyond what the issuer chose.
                validation.leeway = 0;
                Authenticator::Jwt { key: DecodingKey::from_secret(secret.as_bytes()), validation }
            }
        }
    }

    /// The user a request names, from a token or (development mode only) a bare user id.
    /// With a secret, a token is required and its `sub` wins over any `userId`.
    pub fn identify(&self, token: Option<&str>, user_id: Option<&str>) -> Result<String, RequestError> {
        match self {
            Authenticator::Development => match (user_id, token) {
                (Some(user), _) => {
                    validate::check_name("userId", user)?;
                    Ok(user.to_string())
                }
                (None, Some(_)) => Err(RequestError::AuthFailed(
                    "tokens are not accepted: the server runs without JWT_SECRET; send userId".into(),
                )),
                (None, None) => Err(RequestError::Validation("userId is required".into())),
            },
            Authenticator::Jwt { .. } => match token {
                Some(token) => self.verify(token),
                None => Err(RequestError::AuthFailed("a token is required".into())),
            },
        }
    }

    fn verify(&self, token: &str) -> Result<String, RequestError> {
        let Authenticator::Jwt { key, validation } = self else {
            unreachable!("verify is only called with a secret");
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidAlgorithm => "only HS256 tokens are accepted",
                ErrorKind::MissingRequiredClaim(_) => "token has no sub claim",
                ErrorKind::ImmatureSignature => "token not valid yet",
                _ => "malformed token",
            };
            RequestError::AuthFailed(why.into())
        })?;
        let Some(serde_json::Value::String(sub)) = data.claims.sub else {
            return Err(RequestError::AuthFailed("token has no sub claim (a string)".into()));
        };
        validate::check_name("sub", &sub).map_err(|e| RequestError::AuthFailed(format!("bad sub claim: {e}")))?;
        Ok(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "s3cret";

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(alg: Algorithm, claims: serde_json::Value, secret: &str) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn jwt() -> Authenticator {
        Authenticator::new(Some(SECRET))
    }

    #[test]
    fn accepts_a_valid_token_and_prefers_its_sub() {
        let t = token(Algorithm::HS256, serde_json::json!({"sub": "alice", "exp": now() + 60}), SECRET);
        assert_eq!(jwt().identify(Some(&t), Some("mallory")).unwrap(), "alice");
        let no_exp = token(Algorithm::HS256, serde_json::json!({"sub": "bob"}), SECRET);
        assert_eq!(jwt().identify(Some(&no_exp), None).unwrap(), "bob");
    }

    #[test]
    fn refuses_bad_tokens() {
        let expired = token(Algorithm::HS256, serde_json::json!({"sub": "a", "exp": now() - 10}), SECRET);
        let wrong_key = token(Algorithm::HS256, serde_json::json!({"sub": "a"}), "other");
        let hs384 = token(Algorithm::HS384, serde_json::json!({"sub": "a"}), SECRET);
        let no_sub = token(Algorithm::HS256, serde_json::json!({"exp": now() + 60}), SECRET);
        let not_yet = token(Algorithm::HS256, serde_json::json!({"sub": "a", "nbf": now() + 60}), SECRET);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"a"}"#)
        );
        for (t, why) in [
            (expired.as_str(), "expired"),
            (&wrong_key, "bad signature"),
            (&hs384, "HS256"),
            (&no_sub, "sub"),
            (&not_yet, "not valid yet"),
            (&none, "token"),
            ("garbage", "malformed"),
        ] {
            let err = jwt().identify(Some(t), None).unwrap_err();
            assert_eq!(err.code(), "AUTH_FAILED");
            assert!(err.to_string().contains(why), "{err} should mention {why}");
        }
        assert_eq!(jwt().identify(None, Some("alice")).unwrap_err().code(), "AUTH_FAILED");
    }

    #[test]
    fn development_mode_trusts_user_ids() {
        let dev = Authenticator::new(None);
        assert_eq!(dev.identify(None, Some("user123")).unwrap(), "user123");
        assert_eq!(dev.identify(None, Some("")).unwrap_err().code(), "VALIDATION_ERROR");
        assert_eq!(dev.identify(None, None).unwrap_err().code(), "VALIDATION_ERROR");
    }
}
