//! The state-store traits: everything a node must share with other nodes.
//!
//! Accounts, refresh tokens, route state, guardian shares, the node
//! registry and the login throttle's counters live behind these traits so
//! that a single node keeps them in memory ([`memory::MemoryStore`]) and a
//! cluster keeps them in Redis
//! ([`redis::RedisStore`]), with the rest of the node unaware of which; a
//! single node with a `state_dir` keeps accounts and refresh tokens on
//! disk ([`embedded::EmbeddedStore`]).
//! Methods are async because the Redis implementation does I/O; the memory
//! one never awaits.

pub mod embedded;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::transit::{DisabilityType, TrackState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// A registered rider or guardian.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub user_id: String,
    /// Lower-cased; the login name.
    pub email: String,
    pub username: Option<String>,
    pub disability_type: Option<DisabilityType>,
    /// Argon2id PHC string; never logged, never sent.
    pub password_hash: String,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account; [`StoreError::Conflict`] if the email exists.
    async fn create(&self, account: Account) -> Result<(), StoreError>;
    async fn by_email(&self, email: &str) -> Result<Option<Account>, StoreError>;
    async fn by_id(&self, user_id: &str) -> Result<Option<Account>, StoreError>;
}

/// A refresh-token family as the server remembers it: one login and its
/// rotations, with the one token of it that may be spent next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefreshRecord {
    /// The family's current token.
    pub jti: String,
    pub user_id: String,
    /// All tokens rotated from one login share a family; presenting any
    /// token of it other than the current one revokes the whole family
    /// (the token was stolen or replayed).
    pub family: String,
    /// When the current token expires; the record goes with it.
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Consumed {
    /// The current token: spent, and the next one is current now.
    Fresh(RefreshRecord),
    /// An earlier token of the family: a replay. The family is revoked.
    Reused(RefreshRecord),
    /// Never issued, expired, or revoked.
    Unknown,
}

/// A family as the memory and embedded stores keep it, with the rotation
/// rule both apply (the Redis script `ROTATE_TOKEN` is the same rule).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenFamily {
    pub record: RefreshRecord,
    pub revoked: bool,
}

impl TokenFamily {
    pub fn new(record: RefreshRecord) -> TokenFamily {
        TokenFamily {
            record,
            revoked: false,
        }
    }

    /// Known, unexpired and not revoked at `now` (Unix seconds).
    pub fn alive(&self, now: i64) -> bool {
        !self.revoked && self.record.expires_at >= now
    }

    /// Spends `jti`: the current token makes `next` current; any other
    /// token of a live family revokes it.
    pub fn rotate(&mut self, jti: &str, next: &RefreshRecord, now: i64) -> Consumed {
        if !self.alive(now) {
            Consumed::Unknown
        } else if self.record.jti != jti {
            self.revoked = true;
            Consumed::Reused(self.record.clone())
        } else {
            Consumed::Fresh(std::mem::replace(&mut self.record, next.clone()))
        }
    }
}

/// Refresh-token rotation. One record per family, not per token: the
/// current token is all that spending needs, and any other token of a
/// known family is by definition an earlier one, so replay detection needs
/// nothing more. Memory is bounded by live logins, not by refreshes.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Starts a family (a login) with its first token.
    async fn issue(&self, record: RefreshRecord) -> Result<(), StoreError>;
    /// Atomically spends `jti` of `family` and makes `next` the family's
    /// current token.
    async fn rotate(
        &self,
        family: &str,
        jti: &str,
        next: &RefreshRecord,
    ) -> Result<Consumed, StoreError>;
    /// Whether `family` is known, unexpired and not revoked. An access
    /// token of any other family is refused: revoked, or its login is gone
    /// (the store lost it, or it outlived its refresh token).
    async fn family_alive(&self, family: &str) -> Result<bool, StoreError>;
}

/// One ranked route, stored as station codes so that any node (with the
/// same network data) can rebuild it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredRoute {
    pub rank: u8,
    pub codes: Vec<String>,
}

/// A rider's active navigation. One per rider: a new `start_navigation`
/// replaces it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteRecord {
    pub route_id: String,
    pub origin_code: String,
    pub destination_code: String,
    pub disability_type: DisabilityType,
    pub routes: Arc<Vec<StoredRoute>>,
    pub selected_rank: u8,
    pub track: TrackState,
}

#[async_trait]
pub trait RouteStore: Send + Sync {
    async fn get(&self, user_id: &str) -> Result<Option<RouteRecord>, StoreError>;
    async fn put(
        &self,
        user_id: &str,
        record: RouteRecord,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Saves progress and the selected rank if `route_id` is still the
    /// rider's active route; `false` if it is not (ended or replaced).
    async fn save_progress(
        &self,
        user_id: &str,
        route_id: &str,
        selected_rank: u8,
        track: &TrackState,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Removes the route if it is the active one; `false` if it was not.
    async fn remove(&self, user_id: &str, route_id: &str) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait ShareStore: Send + Sync {
    async fn share(&self, rider: &str, guardian: &str) -> Result<(), StoreError>;
    async fn unshare(&self, rider: &str, guardian: &str) -> Result<bool, StoreError>;
    async fn is_shared(&self, rider: &str, guardian: &str) -> Result<bool, StoreError>;
}

/// How failed logins lock an account: the first `free` failures cost
/// nothing; each one after that locks the account for `base`, doubling per
/// failure up to `max`. Failures are forgotten `max` after the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub free: u32,
    pub base: Duration,
    pub max: Duration,
}

impl LockoutPolicy {
    /// The lockout after the `failures`-th failure in a row, if any.
    pub fn lockout(&self, failures: u64) -> Option<Duration> {
        let over = failures.checked_sub(u64::from(self.free))?.checked_sub(1)?;
        let factor = 1u32.checked_shl(over.min(31) as u32).unwrap_or(u32::MAX);
        Some(self.base.saturating_mul(factor).min(self.max))
    }
}

/// Counters that throttle password requests, shared by every node of a
/// cluster so that spreading a flood over nodes gains nothing.
#[async_trait]
pub trait ThrottleStore: Send + Sync {
    /// Counts one request under `key` in fixed windows of `window`: the
    /// count so far in the current window and the time until it ends.
    async fn hit(&self, key: &str, window: Duration) -> Result<(u64, Duration), StoreError>;
    /// The time left on `account`'s lockout, if one is in force.
    async fn locked_for(&self, account: &str) -> Result<Option<Duration>, StoreError>;
    /// Records a failed login of `account`; returns the lockout it set.
    async fn failed(
        &self,
        account: &str,
        policy: &LockoutPolicy,
    ) -> Result<Option<Duration>, StoreError>;
    /// Forgets `account`'s failures (a successful login).
    async fn clear(&self, account: &str) -> Result<(), StoreError>;
}

/// One live node as the registry knows it, for `/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub node_id: String,
    /// Open sessions at the last heartbeat.
    pub sessions: u64,
    /// Unix seconds when the node started.
    pub started_at: i64,
    /// Unix milliseconds of the last heartbeat.
    pub heartbeat_at_ms: i64,
    pub version: String,
}

/// Which nodes are alive: each node writes a heartbeat record that expires
/// unless refreshed, so a node that dies leaves the list by itself.
#[async_trait]
pub trait NodeRegistry: Send + Sync {
    /// Writes (or refreshes) `node`'s record, to expire after `ttl`.
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError>;
    /// Removes a node's record (clean shutdown).
    async fn leave(&self, node_id: &str) -> Result<(), StoreError>;
    /// Every node whose record has not expired, sorted by id.
    async fn live(&self) -> Result<Vec<NodeInfo>, StoreError>;
}

/// The stores a node uses, as trait objects.
#[derive(Clone)]
pub struct Stores {
    pub accounts: Arc<dyn AccountStore>,
    pub tokens: Arc<dyn TokenStore>,
    pub routes: Arc<dyn RouteStore>,
    pub shares: Arc<dyn ShareStore>,
    pub nodes: Arc<dyn NodeRegistry>,
    pub throttle: Arc<dyn ThrottleStore>,
}

impl Stores {
    /// Everything in this process's memory: a single node, or tests.
    pub fn memory() -> Stores {
        let store = Arc::new(memory::MemoryStore::default());
        Stores {
            accounts: store.clone(),
            tokens: store.clone(),
            routes: store.clone(),
            shares: store.clone(),
            nodes: store.clone(),
            throttle: store,
        }
    }

    /// A single node that keeps accounts and refresh-token families in a
    /// crash-safe file under `dir` and the rest in memory.
    pub fn embedded(dir: &std::path::Path) -> Result<Stores, StoreError> {
        let disk = Arc::new(embedded::EmbeddedStore::open(dir)?);
        let memory = Arc::new(memory::MemoryStore::default());
        Ok(Stores {
            accounts: disk.clone(),
            tokens: disk,
            routes: memory.clone(),
            shares: memory.clone(),
            nodes: memory.clone(),
            throttle: memory,
        })
    }

    /// Everything in Redis, for a cluster. Connects lazily: building this
    /// never fails because Redis is down; calls made while it is down fail
    /// with [`StoreError::Unavailable`].
    pub fn redis(
        target: impl Into<crate::redis_conn::Target>,
        options: redis::Options,
    ) -> Result<Stores, StoreError> {
        let store = Arc::new(redis::RedisStore::new(target, options)?);
        Ok(Stores {
            accounts: store.clone(),
            tokens: store.clone(),
            routes: store.clone(),
            shares: store.clone(),
            nodes: store.clone(),
            throttle: store,
        })
    }
}
