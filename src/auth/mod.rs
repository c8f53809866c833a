//! Accounts, passwords and tokens: everything behind `/api/v1/auth/*` and
//! the token check before a WebSocket upgrade.
//!
//! Password hashing (argon2id) is deliberately slow, so it runs on its own
//! bounded, low-priority thread pool ([`hasher`]) and never competes on
//! equal terms with the threads that serve WebSockets.

mod hasher;
pub mod http;
pub mod jwt;
mod password;
pub mod throttle;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use argon2::Params;
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::store::{
    Account, AccountStore, Consumed, RefreshRecord, StoreError, ThrottleStore, TokenStore,
};
use crate::transit::DisabilityType;
pub use jwt::{Claims, JwtKeys, TokenError, TokenKind};
use throttle::{Throttle, ThrottleError, Throttled};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    BadCredentials,
    #[error("invalid refresh token")]
    BadRefresh,
    #[error("email already registered")]
    EmailTaken,
    #[error("{0}")]
    Invalid(String),
    #[error("this node does not issue tokens")]
    CannotIssue,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed")]
    Hashing,
    #[error("too many logins at once")]
    Busy,
    #[error("too many attempts ({})", .0.as_str())]
    Throttled(Throttled),
    #[error("refresh token replayed; family {family} of {user_id} revoked")]
    Revoked { user_id: String, family: String },
}

impl From<ThrottleError> for AuthError {
    fn from(e: ThrottleError) -> Self {
        match e {
            ThrottleError::Throttled(t) => AuthError::Throttled(t),
            ThrottleError::Store(s) => AuthError::Store(s),
        }
    }
}

impl From<hasher::HasherError> for AuthError {
    fn from(e: hasher::HasherError) -> Self {
        match e {
            hasher::HasherError::Busy => AuthError::Busy,
            hasher::HasherError::Stopped => AuthError::Hashing,
        }
    }
}

/// Tokens handed out by login and refresh.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub user_id: String,
}

pub struct AuthService {
    pub keys: JwtKeys,
    accounts: Arc<dyn AccountStore>,
    tokens: Arc<dyn TokenStore>,
    argon2: Params,
    hasher: hasher::Hasher,
    throttle: Throttle,
    throttle_delay: std::time::Duration,
    /// A real hash of a random password: unknown emails are verified against
    /// it so a login takes as long whether or not the account exists.
    /// Computed on the hashing pool at first need, like every hash.
    dummy_hash: tokio::sync::OnceCell<String>,
}

#[derive(Debug, Deserialize)]
pub struct Registration {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub disability_type: Option<String>,
}

impl AuthService {
    pub fn new(
        keys: JwtKeys,
        cfg: &AuthConfig,
        accounts: Arc<dyn AccountStore>,
        tokens: Arc<dyn TokenStore>,
        throttle: Arc<dyn ThrottleStore>,
    ) -> Result<AuthService, AuthError> {
        let params = Params::new(cfg.argon2_memory_kib, cfg.argon2_iterations, 1, None)
            .map_err(|e| AuthError::Invalid(format!("argon2 parameters: {e}")))?;
        let argon2 = params;
        let dummy_hash = tokio::sync::OnceCell::new();
        Ok(AuthService {
            keys,
            accounts,
            tokens,
            argon2,
            hasher: hasher::Hasher::new(cfg.hash_threads, cfg.hash_nice, cfg.hash_queue),
            throttle: Throttle::new(throttle, cfg),
            throttle_delay: cfg.throttle_delay,
            dummy_hash,
        })
    }

    /// `auth.throttle_delay`.
    pub fn throttle_delay(&self) -> std::time::Duration {
        self.throttle_delay
    }

    async fn hash(&self, password: String) -> Result<String, AuthError> {
        let argon2 = self.argon2.clone();
        self.hasher
            .run(move || password::hash(&argon2, &password).map_err(|_| AuthError::Hashing))
            .await?
    }

    async fn verify_password(&self, password: String, hash: String) -> Result<bool, AuthError> {
        Ok(self
            .hasher
            .run(move || password::verify(&hash, &password))
            .await?)
    }

    /// The hash unknown emails are checked against.
    async fn dummy_hash(&self) -> Result<String, AuthError> {
        self.dummy_hash
            .get_or_try_init(|| self.hash(uuid::Uuid::new_v4().to_string()))
            .await
            .cloned()
    }

    /// Validates and creates an account for a client at `ip`; returns its
    /// new user id.
    pub async fn register(&self, reg: Registration, ip: IpAddr) -> Result<String, AuthError> {
        let email = normalize_email(&reg.email)?;
        if reg.password.chars().count() < 8 || reg.password.len() > 1024 {
            return Err(AuthError::Invalid(
                "password: must be 8 to 1024 characters".into(),
            ));
        }
        let disability_type = match reg.disability_type.as_deref() {
            None => None,
            Some(t) => Some(t.parse::<DisabilityType>().map_err(|_| {
                AuthError::Invalid("disability_type: must be one of PHY VIS AUD ELD NONE".into())
            })?),
        };
        if reg
            .username
            .as_deref()
            .is_some_and(|u| u.chars().count() > 64)
        {
            return Err(AuthError::Invalid("username: at most 64 characters".into()));
        }
        let hashing = self.throttle.admit(ip).await?;
        let password_hash = self.hash(reg.password).await?;
        drop(hashing);
        let account = Account {
            user_id: uuid::Uuid::new_v4().to_string(),
            email,
            username: reg.username,
            disability_type,
            password_hash,
        };
        let user_id = account.user_id.clone();
        match self.accounts.create(account).await {
            Ok(()) => Ok(user_id),
            Err(StoreError::Conflict) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks a password for a client at `ip`, within the throttle's
    /// rules (see [`throttle`]).
    pub async fn login(
        &self,
        email: &str,
        password: String,
        ip: IpAddr,
    ) -> Result<TokenPair, AuthError> {
        // No account can have an address that does not normalise.
        let email = normalize_email(email).map_err(|_| AuthError::BadCredentials)?;
        let hashing = self.throttle.admit(ip).await?;
        self.throttle.check_account(&email).await?;
        let account = self.accounts.by_email(&email).await?;
        let hash = match &account {
            Some(a) => a.password_hash.clone(),
            None => self.dummy_hash().await?,
        };
        let ok = self.verify_password(password, hash).await?;
        drop(hashing);
        match account {
            Some(a) if ok => {
                self.throttle.succeeded(&email).await?;
                self.issue_pair(&a.user_id).await
            }
            _ => {
                if let Some(lock) = self.throttle.failed(&email).await? {
                    tracing::warn!(
                        event = "account_locked",
                        lockout_s = lock.as_secs_f64(),
                        cause = "failed logins in a row",
                        "logins to this account refused until the lockout ends"
                    );
                }
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// Rotates a refresh token: the presented one is spent, a new pair is
    /// issued in the same family. A replayed token revokes its family; the
    /// error then names it, so the caller can close its sessions.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        let claims = self
            .keys
            .verify(refresh_token, TokenKind::Refresh)
            .map_err(|_| AuthError::BadRefresh)?;
        let family = claims.fam.clone().ok_or(AuthError::BadRefresh)?;
        let (pair, next) = self.mint_pair(&claims.sub, &family)?;
        match self.tokens.rotate(&family, &claims.jti, &next).await? {
            Consumed::Fresh(_) => Ok(pair),
            Consumed::Reused(record) => {
                tracing::warn!(
                    event = "refresh_token_reuse",
                    user_id = %record.user_id,
                    family = %record.family,
                    "an earlier refresh token of a family was presented; the family is revoked"
                );
                Err(AuthError::Revoked {
                    user_id: record.user_id,
                    family: record.family,
                })
            }
            Consumed::Unknown => Err(AuthError::BadRefresh),
        }
    }

    /// Whether an access token's login is over: its family was revoked,
    /// or is not known (the store lost it). Tokens without a family (from
    /// another issuer) are judged by their signature and `exp` alone.
    pub async fn is_revoked(&self, claims: &Claims) -> Result<bool, AuthError> {
        match &claims.fam {
            Some(family) => Ok(!self.tokens.family_alive(family).await?),
            None => Ok(false),
        }
    }

    /// A fresh login: a new family and its first pair.
    async fn issue_pair(&self, user_id: &str) -> Result<TokenPair, AuthError> {
        let family = uuid::Uuid::new_v4().simple().to_string();
        let (pair, record) = self.mint_pair(user_id, &family)?;
        self.tokens.issue(record).await?;
        Ok(pair)
    }

    /// An access and a refresh token of `family`, and the record that
    /// makes the refresh token the family's current one.
    fn mint_pair(
        &self,
        user_id: &str,
        family: &str,
    ) -> Result<(TokenPair, RefreshRecord), AuthError> {
        let (access, access_claims) = self
            .keys
            .mint(user_id, TokenKind::Access, Some(family))
            .ok_or(AuthError::CannotIssue)?;
        let (refresh, refresh_claims) = self
            .keys
            .mint(user_id, TokenKind::Refresh, Some(family))
            .ok_or(AuthError::CannotIssue)?;
        let record = RefreshRecord {
            jti: refresh_claims.jti,
            user_id: user_id.to_string(),
            family: family.to_string(),
            expires_at: refresh_claims.exp,
        };
        let pair = TokenPair {
            access_token: access,
            refresh_token: refresh,
            token_type: "bearer",
            expires_in: access_claims.exp - access_claims.iat,
            user_id: user_id.to_string(),
        };
        Ok((pair, record))
    }

    pub async fn account(&self, user_id: &str) -> Result<Option<Account>, AuthError> {
        Ok(self.accounts.by_id(user_id).await?)
    }

    /// Creates the accounts of a seed file that do not exist yet. Returns
    /// how many were created.
    pub async fn seed(&self, path: &Path) -> anyhow::Result<usize> {
        #[derive(Deserialize)]
        struct SeedFile {
            account: Vec<SeedAccount>,
        }
        #[derive(Deserialize)]
        struct SeedAccount {
            email: String,
            password: String,
            username: Option<String>,
            disability_type: Option<DisabilityType>,
            user_id: Option<String>,
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("seed file {}: {e}", path.display()))?;
        let file: SeedFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("seed file {}: {e}", path.display()))?;
        let mut created = 0;
        for seed in file.account {
            let email = normalize_email(&seed.email)
                .map_err(|e| anyhow::anyhow!("seed file {}: {e}", path.display()))?;
            if self.accounts.by_email(&email).await?.is_some() {
                continue;
            }
            let account = Account {
                user_id: seed
                    .user_id
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                email,
                username: seed.username,
                disability_type: seed.disability_type,
                password_hash: self.hash(seed.password).await?,
            };
            match self.accounts.create(account).await {
                Ok(()) => created += 1,
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(created)
    }
}

/// The login name of an email: trimmed, NFKC-normalised and lower-cased,
/// so that visually identical spellings are one account. Control and
/// invisible formatting characters (zero-width spaces and joiners, bidi
/// overrides, soft hyphens) are refused rather than stripped: an address
/// that contains them was not typed by a person.
pub fn normalize_email(raw: &str) -> Result<String, AuthError> {
    use unicode_normalization::UnicodeNormalization;
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
    };
    let trimmed = raw.trim();
    if trimmed.chars().any(invisible) {
        return Err(AuthError::Invalid(
            "email: contains control or invisible characters".into(),
        ));
    }
    let email: String = trimmed.nfkc().collect::<String>().to_lowercase();
    let email = email.trim().to_string();
    if !valid_email(&email) || email.chars().any(invisible) {
        return Err(AuthError::Invalid("email: not a valid address".into()));
    }
    Ok(email)
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_before_uniqueness() {
        let n = |s: &str| normalize_email(s).unwrap();
        assert_eq!(n("  Rider@Example.COM "), "rider@example.com");
        // Fullwidth letters (NFKC) and a non-ASCII capital (full lower-casing).
        assert_eq!(n("ｒｉｄｅｒ@example.com"), "rider@example.com");
        assert_eq!(n("ÜBER@example.com"), "über@example.com");
        // A decomposed ü is the same account as the composed one.
        assert_eq!(n("u\u{0308}ber@example.com"), n("\u{00FC}ber@example.com"));
    }

    #[test]
    fn control_and_invisible_characters_are_refused() {
        for bad in [
            "rider\u{200B}@example.com",
            "ri\u{200D}der@example.com",
            "rider@exa\u{00AD}mple.com",
            "rider@example.com\u{202E}",
            "\u{FEFF}rider@example.com",
            "rider\u{0007}@example.com",
            "rider\n@example.com",
        ] {
            match normalize_email(bad) {
                Err(AuthError::Invalid(m)) => assert!(m.starts_with("email:"), "{m}"),
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
        assert!(normalize_email("not-an-address").is_err());
    }
}
