//! Accounts and refresh-token families on disk, for a node without Redis.
//!
//! A single node used to keep every account in memory, so a restart lost
//! them all, and an access token issued before it then opened a session for
//! an account that no longer existed. Here they live in a [redb] database
//! file in `state_dir`: an embedded, pure-Rust key-value store whose write
//! transactions are ACID and reach the disk (`fsync`) before `commit`
//! returns, so an account acknowledged with 201, or a rotation answered with
//! 200, survives a crash of the process or of the machine. redb rather than
//! SQLite: no C library to build, and the data is three small maps with
//! no query beyond a key lookup. Routes, shares and throttle counters stay
//! in memory: they are short-lived and a rider starts navigation again.
//!
//! redb blocks (on `fsync`), so every call runs on tokio's blocking pool.
//!
//! [redb]: https://docs.rs/redb

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Account, AccountStore, Consumed, RefreshRecord, StoreError, TokenFamily, TokenStore};

/// user id → account (JSON).
const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// normalised email → user id: the uniqueness constraint.
const EMAILS: TableDefinition<&str, &str> = TableDefinition::new("emails");
/// family → its current token and whether it was revoked (JSON).
const FAMILIES: TableDefinition<&str, &[u8]> = TableDefinition::new("families");

/// Expired families are swept every this many family writes (and at open).
const SWEEP_EVERY: u64 = 4096;

pub struct EmbeddedStore {
    db: Arc<Database>,
    family_writes: AtomicU64,
}

fn failed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("state file: {what}: {e}"))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("state file: {what}: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/navcast.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| failed(&dir.display().to_string(), e))?;
        let path = dir.join("navcast.redb");
        let db = Database::create(&path).map_err(|e| failed(&path.display().to_string(), e))?;
        // Create the tables, so readers never meet a missing one.
        let tx = db.begin_write().map_err(|e| failed("begin", e))?;
        tx.open_table(ACCOUNTS).map_err(|e| failed("accounts", e))?;
        tx.open_table(EMAILS).map_err(|e| failed("emails", e))?;
        tx.open_table(FAMILIES).map_err(|e| failed("families", e))?;
        tx.commit().map_err(|e| failed("commit", e))?;
        let store = EmbeddedStore {
            db: Arc::new(db),
            family_writes: AtomicU64::new(0),
        };
        store.sweep()?;
        Ok(store)
    }

    /// Runs `f` on the blocking pool with the database.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| failed("task", e))?
    }

    /// Drops families whose current token has expired.
    fn sweep(&self) -> Result<(), StoreError> {
        let now = crate::clock::unix_s();
        let tx = self.db.begin_write().map_err(|e| failed("begin", e))?;
        {
            let mut t = tx.open_table(FAMILIES).map_err(|e| failed("families", e))?;
            t.retain(|_, v| {
                serde_json::from_slice::<TokenFamily>(v).is_ok_and(|f| f.record.expires_at >= now)
            })
            .map_err(|e| failed("sweep", e))?;
        }
        tx.commit().map_err(|e| failed("commit", e))
    }

    fn family_written(&self) {
        let n = self.family_writes.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1
            && let Err(e) = self.sweep()
        {
            tracing::warn!(event = "state_sweep_failed", cause = %e, "expired token families not swept");
        }
    }

    /// Refresh-token families on disk (for tests of the bound).
    pub fn families(&self) -> usize {
        self.db
            .begin_read()
            .ok()
            .and_then(|tx| tx.open_table(FAMILIES).ok())
            .and_then(|t| t.len().ok())
            .unwrap_or(0) as usize
    }
}

#[async_trait]
impl AccountStore for EmbeddedStore {
    async fn create(&self, account: Account) -> Result<(), StoreError> {
        let json = serde_json::to_vec(&account).map_err(|e| corrupt("account", e))?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| failed("begin", e))?;
            {
                let mut emails = tx.open_table(EMAILS).map_err(|e| failed("emails", e))?;
                if emails
                    .get(account.email.as_str())
                    .map_err(|e| failed("email", e))?
                    .is_some()
                {
                    return Err(StoreError::Conflict);
                }
                emails
                    .insert(account.email.as_str(), account.user_id.as_str())
                    .map_err(|e| failed("email", e))?;
                let mut accounts = tx.open_table(ACCOUNTS).map_err(|e| failed("accounts", e))?;
                accounts
                    .insert(account.user_id.as_str(), json.as_slice())
                    .map_err(|e| failed("account", e))?;
            }
            tx.commit().map_err(|e| failed("commit", e))
        })
        .await
    }

    async fn by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let email = email.to_string();
        let id = self
            .blocking(move |db| {
                let tx = db.begin_read().map_err(|e| failed("begin", e))?;
                let t = tx.open_table(EMAILS).map_err(|e| failed("emails", e))?;
                Ok(t.get(email.as_str())
                    .map_err(|e| failed("email", e))?
                    .map(|v| v.value().to_string()))
            })
            .await?;
        match id {
            Some(id) => self.by_id(&id).await,
            None => Ok(None),
        }
    }

    async fn by_id(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        let user_id = user_id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(|e| failed("begin", e))?;
            let t = tx.open_table(ACCOUNTS).map_err(|e| failed("accounts", e))?;
            match t.get(user_id.as_str()).map_err(|e| failed("account", e))? {
                Some(v) => serde_json::from_slice(v.value())
                    .map(Some)
                    .map_err(|e| corrupt("account", e)),
                None => Ok(None),
            }
        })
        .await
    }
}

#[async_trait]
impl TokenStore for EmbeddedStore {
    async fn issue(&self, record: RefreshRecord) -> Result<(), StoreError> {
        let family = record.family.clone();
        let json =
            serde_json::to_vec(&TokenFamily::new(record)).map_err(|e| corrupt("family", e))?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| failed("begin", e))?;
            {
                let mut t = tx.open_table(FAMILIES).map_err(|e| failed("families", e))?;
                t.insert(family.as_str(), json.as_slice())
                    .map_err(|e| failed("family", e))?;
            }
            tx.commit().map_err(|e| failed("commit", e))
        })
        .await?;
        self.family_written();
        Ok(())
    }

    async fn rotate(
        &self,
        family: &str,
        jti: &str,
        next: &RefreshRecord,
    ) -> Result<Consumed, StoreError> {
        let (family, jti, next) = (family.to_string(), jti.to_string(), next.clone());
        let outcome = self
            .blocking(move |db| {
                let now = crate::clock::unix_s();
                let tx = db.begin_write().map_err(|e| failed("begin", e))?;
                let outcome = {
                    let mut t = tx.open_table(FAMILIES).map_err(|e| failed("families", e))?;
                    let current: Option<TokenFamily> =
                        match t.get(family.as_str()).map_err(|e| failed("family", e))? {
                            Some(v) => Some(
                                serde_json::from_slice(v.value())
                                    .map_err(|e| corrupt("family", e))?,
                            ),
                            None => None,
                        };
                    let Some(mut f) = current else {
                        return Ok(Consumed::Unknown);
                    };
                    let outcome = f.rotate(&jti, &next, now);
                    if !matches!(outcome, Consumed::Unknown) {
                        let json = serde_json::to_vec(&f).map_err(|e| corrupt("family", e))?;
                        t.insert(family.as_str(), json.as_slice())
                            .map_err(|e| failed("family", e))?;
                    }
                    outcome
                };
                tx.commit().map_err(|e| failed("commit", e))?;
                Ok(outcome)
            })
            .await?;
        self.family_written();
        Ok(outcome)
    }

    async fn family_alive(&self, family: &str) -> Result<bool, StoreError> {
        let family = family.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(|e| failed("begin", e))?;
            let t = tx.open_table(FAMILIES).map_err(|e| failed("families", e))?;
            match t.get(family.as_str()).map_err(|e| failed("family", e))? {
                Some(v) => serde_json::from_slice::<TokenFamily>(v.value())
                    .map(|f| f.alive(crate::clock::unix_s()))
                    .map_err(|e| corrupt("family", e)),
                None => Ok(false),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, email: &str) -> Account {
        Account {
            user_id: id.into(),
            email: email.into(),
            username: None,
            disability_type: None,
            password_hash: "$argon2id$…".into(),
        }
    }

    fn record(family: &str, jti: &str, expires_at: i64) -> RefreshRecord {
        RefreshRecord {
            jti: jti.into(),
            user_id: "u".into(),
            family: family.into(),
            expires_at,
        }
    }

    #[tokio::test]
    async fn accounts_and_families_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let far = crate::clock::unix_s() + 3600;
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.create(account("u1", "a@example.com")).await.unwrap();
            assert!(matches!(
                s.create(account("u2", "a@example.com")).await,
                Err(StoreError::Conflict)
            ));
            s.issue(record("f1", "t1", far)).await.unwrap();
            assert!(matches!(
                s.rotate("f1", "t1", &record("f1", "t2", far))
                    .await
                    .unwrap(),
                Consumed::Fresh(_)
            ));
            s.issue(record("old", "x", crate::clock::unix_s() - 5))
                .await
                .unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let a = s.by_email("a@example.com").await.unwrap().expect("kept");
        assert_eq!(a.user_id, "u1");
        assert_eq!(s.families(), 1, "the expired family was swept at open");
        assert!(matches!(
            s.rotate("f1", "t1", &record("f1", "t3", far))
                .await
                .unwrap(),
            Consumed::Reused(_)
        ));
        assert!(!s.family_alive("f1").await.unwrap());
        assert_eq!(
            s.rotate("f1", "t2", &record("f1", "t4", far))
                .await
                .unwrap(),
            Consumed::Unknown
        );
    }
}
