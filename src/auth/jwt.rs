//! JWT minting and verification with a pinned algorithm.
//!
//! The verifier accepts exactly one algorithm (the configured one), so
//! `alg: none` and HS/RS confusion (an HMAC token "signed" with a public
//! key) are rejected before any signature check. `type` separates access
//! from refresh tokens; only access tokens open a WebSocket.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{JwtAlgorithm, JwtConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    #[serde(rename = "type")]
    pub kind: TokenKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (RFC 7519 §4.1.3 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The rotation family (one login): on refresh tokens to rotate them,
    /// on access tokens so that revoking the family refuses them too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

/// The `aud` claim: a string, or an array of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Why a token was refused. The HTTP layer turns every variant into 401;
/// the variant only goes to logs and metrics.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong token type")]
    WrongType,
    #[error("bad signature")]
    BadSignature,
    #[error("algorithm not accepted")]
    BadAlgorithm,
    #[error("issuer or audience mismatch")]
    BadClaims,
    #[error("malformed token")]
    Malformed,
}

impl TokenError {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongType => "wrong_type",
            TokenError::BadSignature => "bad_signature",
            TokenError::BadAlgorithm => "bad_algorithm",
            TokenError::BadClaims => "bad_claims",
            TokenError::Malformed => "malformed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEM key for {alg:?}")]
    Pem { path: String, alg: JwtAlgorithm },
}

pub struct JwtKeys {
    algorithm: Algorithm,
    /// `None` when the node only verifies tokens minted elsewhere.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    pub access_ttl_s: i64,
    pub refresh_ttl_s: i64,
}

impl JwtKeys {
    /// Builds the keys from config. `secret` is the HS256 secret to use
    /// (the configured one or a generated dev secret).
    pub fn new(cfg: &JwtConfig, secret: Option<&[u8]>) -> Result<JwtKeys, KeyError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let pem_err = |path: &std::path::Path| KeyError::Pem {
            path: path.display().to_string(),
            alg: cfg.algorithm,
        };
        let (algorithm, encoding, decoding) = match cfg.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = secret.unwrap_or_default();
                (
                    Algorithm::HS256,
                    Some(EncodingKey::from_secret(secret)),
                    DecodingKey::from_secret(secret),
                )
            }
            alg @ (JwtAlgorithm::RS256 | JwtAlgorithm::ES256) => {
                let public = cfg
                    .public_key_file
                    .as_deref()
                    .expect("validated: RS/ES needs a public key");
                let pem = read(public)?;
                let decoding = match alg {
                    JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                    _ => DecodingKey::from_ec_pem(&pem),
                }
                .map_err(|_| pem_err(public))?;
                let encoding = match &cfg.private_key_file {
                    None => None,
                    Some(private) => {
                        let pem = read(private)?;
                        Some(
                            match alg {
                                JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                                _ => EncodingKey::from_ec_pem(&pem),
                            }
                            .map_err(|_| pem_err(private))?,
                        )
                    }
                };
                let algorithm = if alg == JwtAlgorithm::RS256 {
                    Algorithm::RS256
                } else {
                    Algorithm::ES256
                };
                (algorithm, encoding, decoding)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not only checked
        // when present: a token without it is not one of ours.
        let mut required = vec!["exp", "sub"];
        match &cfg.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtKeys {
            algorithm,
            encoding,
            decoding,
            validation,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            access_ttl_s: cfg.access_ttl.as_secs() as i64,
            refresh_ttl_s: cfg.refresh_ttl.as_secs() as i64,
        })
    }

    pub fn can_issue(&self) -> bool {
        self.encoding.is_some()
    }

    /// Mints a token; `None` if this node has no signing key.
    pub fn mint(
        &self,
        sub: &str,
        kind: TokenKind,
        family: Option<&str>,
    ) -> Option<(String, Claims)> {
        let key = self.encoding.as_ref()?;
        let now = crate::clock::unix_s();
        let ttl = match kind {
            TokenKind::Access => self.access_ttl_s,
            TokenKind::Refresh => self.refresh_ttl_s,
        };
        let claims = Claims {
            sub: sub.to_string(),
            exp: now + ttl,
            iat: now,
            nbf: Some(now),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            kind,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Audience::One),
            fam: family.map(str::to_string),
        };
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).ok()?;
        Some((token, claims))
    }

    /// Verifies signature, algorithm, `exp`/`nbf` (with leeway), `iss`/`aud`
    /// when configured, and that the token is of the expected kind.
    pub fn verify(&self, token: &str, expected: TokenKind) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::BadAlgorithm
                }
                ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::MissingRequiredClaim(_) => TokenError::BadClaims,
                _ => TokenError::Malformed,
            })?;
        if data.claims.kind != expected {
            return Err(TokenError::WrongType);
        }
        // Issued in the future beyond the clock leeway: not a token this
        // cluster minted (or a clock badly wrong).
        if data.claims.iat > crate::clock::unix_s() + self.validation.leeway as i64 {
            return Err(TokenError::NotYetValid);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::clock::unix_s;

    const SECRET: &[u8] = b"unit-test-secret-0123456789abcdef";

    fn keys(issuer: Option<&str>, audience: Option<&str>) -> JwtKeys {
        let cfg = JwtConfig {
            issuer: issuer.map(str::to_string),
            audience: audience.map(str::to_string),
            leeway: Duration::from_secs(30),
            ..JwtConfig::default()
        };
        JwtKeys::new(&cfg, Some(SECRET)).unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn claims() -> serde_json::Value {
        let now = unix_s();
        json!({"sub": "u1", "exp": now + 600, "iat": now, "jti": "j", "type": "access"})
    }

    #[test]
    fn a_configured_issuer_and_audience_are_required() {
        let k = keys(Some("navcast"), Some("riders"));
        assert_eq!(
            k.verify(&token(claims()), TokenKind::Access),
            Err(TokenError::BadClaims)
        );
        let mut c = claims();
        c["iss"] = json!("navcast");
        assert_eq!(
            k.verify(&token(c.clone()), TokenKind::Access),
            Err(TokenError::BadClaims),
            "no aud"
        );
        c["aud"] = json!("riders");
        assert!(k.verify(&token(c.clone()), TokenKind::Access).is_ok());
        c["aud"] = json!("others");
        assert_eq!(
            k.verify(&token(c), TokenKind::Access),
            Err(TokenError::BadClaims)
        );
        // Minted tokens carry both.
        let (t, _) = k.mint("u1", TokenKind::Access, None).unwrap();
        assert!(k.verify(&t, TokenKind::Access).is_ok());
    }

    #[test]
    fn an_audience_array_containing_ours_is_accepted() {
        let k = keys(None, Some("riders"));
        let mut c = claims();
        c["aud"] = json!(["guardians", "riders"]);
        assert!(k.verify(&token(c.clone()), TokenKind::Access).is_ok());
        c["aud"] = json!(["guardians"]);
        assert_eq!(
            k.verify(&token(c), TokenKind::Access),
            Err(TokenError::BadClaims)
        );
    }

    #[test]
    fn a_token_issued_in_the_future_is_refused() {
        let k = keys(None, None);
        let mut c = claims();
        c["iat"] = json!(unix_s() + 20);
        assert!(
            k.verify(&token(c.clone()), TokenKind::Access).is_ok(),
            "within the leeway"
        );
        c["iat"] = json!(unix_s() + 120);
        assert_eq!(
            k.verify(&token(c), TokenKind::Access),
            Err(TokenError::NotYetValid)
        );
    }
}
