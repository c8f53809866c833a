//! In-memory implementation of every store trait, for a single node.
//!
//! DashMap shards keep contention low; no guard is held across an await
//! because no method awaits. Route records expire lazily: an expired record
//! is treated as absent when read and dropped when written over.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::*;

#[derive(Default)]
pub struct MemoryStore {
    /// Accounts by user id.
    accounts: DashMap<String, Account>,
    /// Lower-cased email → user id; the uniqueness constraint.
    emails: DashMap<String, String>,
    /// Refresh-token families: the current token, and whether revoked.
    families: DashMap<String, TokenFamily>,
    /// Active route per rider, with its expiry.
    routes: DashMap<String, (RouteRecord, Instant)>,
    /// (rider, guardian) pairs.
    shares: DashMap<(String, String), ()>,
    /// Node heartbeats with their expiry.
    nodes: DashMap<String, (NodeInfo, Instant)>,
    /// Throttle windows: count and when the window ends.
    hits: DashMap<String, (u64, Instant)>,
    /// Failed logins per account: count, when they are forgotten, and the
    /// end of the lockout in force.
    failures: DashMap<String, Failures>,
    /// Writes of expiring entries (families, throttle counters) since the
    /// last sweep of the expired ones.
    expiring_writes: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u64,
    forget_at: Instant,
    locked_until: Option<Instant>,
}

/// Expired entries are swept every this many writes of expiring ones.
const SWEEP_EVERY: u64 = 1024;

impl MemoryStore {
    /// Counts a write of an expiring entry; every `SWEEP_EVERY` writes,
    /// drops every expired family and throttle entry, so keys a client
    /// never reuses (random emails, many logins) do not pile up.
    fn expiring_written(&self) {
        let n = self
            .expiring_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            self.hits.retain(|_, (_, end)| *end > now);
            self.failures.retain(|_, f| f.forget_at > now);
            let now = chrono_now();
            self.families.retain(|_, f| f.record.expires_at >= now);
        }
    }

    /// Entries the throttle holds now (for tests of its bound).
    pub fn throttle_entries(&self) -> usize {
        self.hits.len() + self.failures.len()
    }
}

#[async_trait]
impl ThrottleStore for MemoryStore {
    async fn hit(&self, key: &str, window: Duration) -> Result<(u64, Duration), StoreError> {
        let now = Instant::now();
        let (count, end) = {
            let mut e = self
                .hits
                .entry(key.to_string())
                .or_insert((0, now + window));
            if e.1 <= now {
                *e = (0, now + window);
            }
            e.0 += 1;
            *e
        };
        self.expiring_written();
        Ok((count, end - now))
    }

    async fn locked_for(&self, account: &str) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        Ok(self
            .failures
            .get(account)
            .and_then(|f| f.locked_until)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero()))
    }

    async fn failed(
        &self,
        account: &str,
        policy: &LockoutPolicy,
    ) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        let lock = {
            let mut f = self
                .failures
                .entry(account.to_string())
                .or_insert(Failures {
                    count: 0,
                    forget_at: now,
                    locked_until: None,
                });
            if f.forget_at <= now {
                f.count = 0;
                f.locked_until = None;
            }
            f.count += 1;
            let lock = policy.lockout(f.count);
            if let Some(lock) = lock {
                f.locked_until = Some(now + lock);
            }
            f.forget_at = now + policy.max + lock.unwrap_or_default();
            lock
        };
        self.expiring_written();
        Ok(lock)
    }

    async fn clear(&self, account: &str) -> Result<(), StoreError> {
        self.failures.remove(account);
        Ok(())
    }
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create(&self, account: Account) -> Result<(), StoreError> {
        match self.emails.entry(account.email.clone()) {
            Entry::Occupied(_) => Err(StoreError::Conflict),
            Entry::Vacant(v) => {
                v.insert(account.user_id.clone());
                self.accounts.insert(account.user_id.clone(), account);
                Ok(())
            }
        }
    }

    async fn by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let id = self.emails.get(email).map(|r| r.value().clone());
        Ok(id.and_then(|id| self.accounts.get(&id).map(|a| a.value().clone())))
    }

    async fn by_id(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.accounts.get(user_id).map(|a| a.value().clone()))
    }
}

impl MemoryStore {
    /// Refresh-token families held now (for tests of the bound).
    pub fn families(&self) -> usize {
        self.families.len()
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn issue(&self, record: RefreshRecord) -> Result<(), StoreError> {
        self.families
            .insert(record.family.clone(), TokenFamily::new(record));
        self.expiring_written();
        Ok(())
    }

    async fn rotate(
        &self,
        family: &str,
        jti: &str,
        next: &RefreshRecord,
    ) -> Result<Consumed, StoreError> {
        let outcome = match self.families.get_mut(family) {
            None => Consumed::Unknown,
            Some(mut f) => f.rotate(jti, next, chrono_now()),
        };
        self.expiring_written();
        Ok(outcome)
    }

    async fn family_alive(&self, family: &str) -> Result<bool, StoreError> {
        Ok(self
            .families
            .get(family)
            .is_some_and(|f| f.alive(chrono_now())))
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl RouteStore for MemoryStore {
    async fn get(&self, user_id: &str) -> Result<Option<RouteRecord>, StoreError> {
        Ok(self
            .routes
            .get(user_id)
            .filter(|r| r.value().1 > Instant::now())
            .map(|r| r.value().0.clone()))
    }

    async fn put(
        &self,
        user_id: &str,
        record: RouteRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.routes
            .insert(user_id.to_string(), (record, Instant::now() + ttl));
        Ok(())
    }

    async fn save_progress(
        &self,
        user_id: &str,
        route_id: &str,
        selected_rank: u8,
        track: &TrackState,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        match self.routes.get_mut(user_id) {
            Some(mut entry) if entry.0.route_id == route_id && entry.1 > now => {
                entry.0.track = *track;
                entry.0.selected_rank = selected_rank;
                entry.1 = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn remove(&self, user_id: &str, route_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .routes
            .remove_if(user_id, |_, (r, _)| r.route_id == route_id)
            .is_some())
    }
}

#[async_trait]
impl ShareStore for MemoryStore {
    async fn share(&self, rider: &str, guardian: &str) -> Result<(), StoreError> {
        self.shares
            .insert((rider.to_string(), guardian.to_string()), ());
        Ok(())
    }

    async fn unshare(&self, rider: &str, guardian: &str) -> Result<bool, StoreError> {
        Ok(self
            .shares
            .remove(&(rider.to_string(), guardian.to_string()))
            .is_some())
    }

    async fn is_shared(&self, rider: &str, guardian: &str) -> Result<bool, StoreError> {
        Ok(self
            .shares
            .contains_key(&(rider.to_string(), guardian.to_string())))
    }
}

#[async_trait]
impl NodeRegistry for MemoryStore {
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        self.nodes
            .insert(node.node_id.clone(), (node.clone(), Instant::now() + ttl));
        Ok(())
    }

    async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        self.nodes.remove(node_id);
        Ok(())
    }

    async fn live(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let now = Instant::now();
        self.nodes.retain(|_, (_, expires)| *expires > now);
        let mut nodes: Vec<NodeInfo> = self.nodes.iter().map(|n| n.value().0.clone()).collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }
}
