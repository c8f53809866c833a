//! Accounts, passwords and tokens: everything behind `/api/v1/auth/*` and
//! the token check before a WebSocket upgrade.
//!
//! Password hashing (argon2id) is deliberately slow, so it runs on its own
//! bounded, low-priority thread pool ([`hasher`]) and never competes on
//! equal terms with the threads that serve WebSockets.

mod hasher;
pub mod http;
pub mod jwt;

use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::store::{Account, AccountStore, Consumed, RefreshRecord, StoreError, TokenStore};
use crate::transit::DisabilityType;
pub use jwt::{Claims, JwtKeys, TokenError, TokenKind};

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
    argon2: Argon2<'static>,
    hasher: hasher::Hasher,
    /// A real hash of a random password: unknown emails are verified against
    /// it so a login takes as long whether or not the account exists.
    dummy_hash: String,
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
    ) -> Result<AuthService, AuthError> {
        let params = Params::new(cfg.argon2_memory_kib, cfg.argon2_iterations, 1, None)
            .map_err(|e| AuthError::Invalid(format!("argon2 parameters: {e}")))?;
        let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let dummy_hash = hash_with(&argon2, &uuid::Uuid::new_v4().to_string())?;
        Ok(AuthService {
            keys,
            accounts,
            tokens,
            argon2,
            hasher: hasher::Hasher::new(cfg.hash_threads, cfg.hash_nice, cfg.hash_queue),
            dummy_hash,
        })
    }

    async fn hash(&self, password: String) -> Result<String, AuthError> {
        let argon2 = self.argon2.clone();
        self.hasher
            .run(move || hash_with(&argon2, &password))
            .await?
    }

    async fn verify_password(&self, password: String, hash: String) -> Result<bool, AuthError> {
        let argon2 = self.argon2.clone();
        Ok(self
            .hasher
            .run(move || {
                PasswordHash::new(&hash)
                    .map(|h| argon2.verify_password(password.as_bytes(), &h).is_ok())
                    .unwrap_or(false)
            })
            .await?)
    }

    /// Validates and creates an account; returns its new user id.
    pub async fn register(&self, reg: Registration) -> Result<String, AuthError> {
        let email = reg.email.trim().to_ascii_lowercase();
        if !valid_email(&email) {
            return Err(AuthError::Invalid("email: not a valid address".into()));
        }
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
        let account = Account {
            user_id: uuid::Uuid::new_v4().to_string(),
            email,
            username: reg.username,
            disability_type,
            password_hash: self.hash(reg.password).await?,
        };
        let user_id = account.user_id.clone();
        match self.accounts.create(account).await {
            Ok(()) => Ok(user_id),
            Err(StoreError::Conflict) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn login(&self, email: &str, password: String) -> Result<TokenPair, AuthError> {
        let email = email.trim().to_ascii_lowercase();
        let account = self.accounts.by_email(&email).await?;
        let hash = account
            .as_ref()
            .map(|a| a.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let ok = self.verify_password(password, hash).await?;
        match account {
            Some(a) if ok => self.issue_pair(&a.user_id, None).await,
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// Rotates a refresh token: the presented one is spent, a new pair is
    /// issued in the same family. A replayed token revokes its family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        let claims = self
            .keys
            .verify(refresh_token, TokenKind::Refresh)
            .map_err(|_| AuthError::BadRefresh)?;
        match self.tokens.consume(&claims.jti).await? {
            Consumed::Fresh(record) => self.issue_pair(&record.user_id, Some(&record.family)).await,
            Consumed::Reused(record) => {
                tracing::warn!(
                    event = "refresh_token_reuse",
                    user_id = %record.user_id,
                    family = %record.family,
                    "a spent refresh token was presented again; its family is revoked"
                );
                Err(AuthError::BadRefresh)
            }
            Consumed::Unknown => Err(AuthError::BadRefresh),
        }
    }

    async fn issue_pair(
        &self,
        user_id: &str,
        family: Option<&str>,
    ) -> Result<TokenPair, AuthError> {
        let family = family
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let (access, access_claims) = self
            .keys
            .mint(user_id, TokenKind::Access, None)
            .ok_or(AuthError::CannotIssue)?;
        let (refresh, refresh_claims) = self
            .keys
            .mint(user_id, TokenKind::Refresh, Some(&family))
            .ok_or(AuthError::CannotIssue)?;
        self.tokens
            .issue(RefreshRecord {
                jti: refresh_claims.jti,
                user_id: user_id.to_string(),
                family,
                expires_at: refresh_claims.exp,
            })
            .await?;
        Ok(TokenPair {
            access_token: access,
            refresh_token: refresh,
            token_type: "bearer",
            expires_in: access_claims.exp - access_claims.iat,
            user_id: user_id.to_string(),
        })
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
            let email = seed.email.trim().to_ascii_lowercase();
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

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Hashing)
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
