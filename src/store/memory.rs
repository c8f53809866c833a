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
    /// Refresh tokens by jti, with whether they were spent.
    refresh: DashMap<String, (RefreshRecord, bool)>,
    /// Families revoked because a spent token was replayed.
    revoked_families: DashMap<String, ()>,
    /// Active route per rider, with its expiry.
    routes: DashMap<String, (RouteRecord, Instant)>,
    /// (rider, guardian) pairs.
    shares: DashMap<(String, String), ()>,
    /// Node heartbeats with their expiry.
    nodes: DashMap<String, (NodeInfo, Instant)>,
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

#[async_trait]
impl TokenStore for MemoryStore {
    async fn issue(&self, record: RefreshRecord) -> Result<(), StoreError> {
        self.refresh.insert(record.jti.clone(), (record, false));
        Ok(())
    }

    async fn consume(&self, jti: &str) -> Result<Consumed, StoreError> {
        let now = chrono_now();
        let outcome = match self.refresh.get_mut(jti) {
            None => Consumed::Unknown,
            Some(mut entry) => {
                let (record, spent) = entry.value_mut();
                if record.expires_at < now || self.revoked_families.contains_key(&record.family) {
                    Consumed::Unknown
                } else if *spent {
                    Consumed::Reused(record.clone())
                } else {
                    *spent = true;
                    Consumed::Fresh(record.clone())
                }
            }
        };
        if let Consumed::Reused(record) = &outcome {
            self.revoked_families.insert(record.family.clone(), ());
        }
        Ok(outcome)
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
