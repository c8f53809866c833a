//! Who may ask for a password hash, and how often.
//!
//! Hashing is the one expensive thing an anonymous client can ask for, and
//! every login on a node shares one queue of it. Three rules keep a flood
//! from one address, or guessing at one account, from costing anyone else:
//!
//! - **in flight per address** (this node): at most
//!   `auth.hashes_per_address` password requests of one client address are
//!   queued or hashing at once, so a flood occupies a couple of places in
//!   the queue, not all of them;
//! - **rate per address** (cluster-wide): `auth.attempts_per_address` per
//!   `auth.address_window`, counted in the shared store;
//! - **failures per account** (cluster-wide): after `auth.free_failures`
//!   failed logins in a row, the account is locked for `auth.lockout_base`,
//!   doubling per further failure up to `auth.lockout_max`. Unknown emails
//!   are counted the same way, so a lockout tells nothing about whether an
//!   account exists.
//!
//! Every refusal is a 429 with `Retry-After`, and no hash is computed for
//! it. Accounts are keyed by a digest of the normalised email, so the
//! store's keys carry no address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::limits::{KeySlot, PerKeyLimit};
use crate::store::{LockoutPolicy, StoreError, ThrottleStore};

/// Why a password request was refused before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The address has `auth.hashes_per_address` requests in progress.
    InFlight,
    /// The address used its `auth.attempts_per_address` for this window.
    AddressRate { retry_after: Duration },
    /// The account is locked after failed logins.
    AccountLocked { retry_after: Duration },
}

impl Throttled {
    pub fn retry_after(&self) -> Duration {
        match self {
            Throttled::InFlight => Duration::from_secs(1),
            Throttled::AddressRate { retry_after } | Throttled::AccountLocked { retry_after } => {
                *retry_after
            }
        }
    }

    /// The metric outcome and log cause.
    pub fn as_str(&self) -> &'static str {
        match self {
            Throttled::InFlight => "throttled_in_flight",
            Throttled::AddressRate { .. } => "throttled_address",
            Throttled::AccountLocked { .. } => "throttled_account",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("throttled: {0:?}")]
    Throttled(Throttled),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Throttle {
    store: Arc<dyn ThrottleStore>,
    in_flight: PerKeyLimit<IpAddr>,
    attempts: u64,
    window: Duration,
    policy: LockoutPolicy,
}

/// A place among an address's requests in flight; released on drop.
pub type InFlight = KeySlot<IpAddr>;

impl Throttle {
    pub fn new(store: Arc<dyn ThrottleStore>, cfg: &AuthConfig) -> Throttle {
        Throttle {
            store,
            in_flight: PerKeyLimit::new(cfg.hashes_per_address),
            attempts: cfg.attempts_per_address,
            window: cfg.address_window,
            policy: LockoutPolicy {
                free: cfg.free_failures,
                base: cfg.lockout_base,
                max: cfg.lockout_max,
            },
        }
    }

    /// Admits one password request of `ip`: counts it against the
    /// address's rate, then takes a place among its requests in flight.
    pub async fn admit(&self, ip: IpAddr) -> Result<InFlight, ThrottleError> {
        let (count, left) = self
            .store
            .hit(&format!("password:{ip}"), self.window)
            .await?;
        if count > self.attempts {
            return Err(ThrottleError::Throttled(Throttled::AddressRate {
                retry_after: left,
            }));
        }
        self.in_flight
            .acquire(&ip)
            .ok_or(ThrottleError::Throttled(Throttled::InFlight))
    }

    /// Refuses a login to a locked account.
    pub async fn check_account(&self, email: &str) -> Result<(), ThrottleError> {
        match self.store.locked_for(&account_key(email)).await? {
            Some(retry_after) => Err(ThrottleError::Throttled(Throttled::AccountLocked {
                retry_after,
            })),
            None => Ok(()),
        }
    }

    /// Records a failed login; returns the lockout it started, if any.
    pub async fn failed(&self, email: &str) -> Result<Option<Duration>, StoreError> {
        self.store.failed(&account_key(email), &self.policy).await
    }

    /// A successful login forgets the account's failures.
    pub async fn succeeded(&self, email: &str) -> Result<(), StoreError> {
        self.store.clear(&account_key(email)).await
    }

    /// Addresses with a request in flight (tests of the bound).
    pub fn addresses_in_flight(&self) -> usize {
        self.in_flight.keys()
    }
}

/// A digest of the normalised email: fixed length, and no address in the
/// store's key names.
fn account_key(email: &str) -> String {
    let digest = Sha256::digest(email.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn cfg() -> AuthConfig {
        AuthConfig {
            hashes_per_address: 2,
            attempts_per_address: 5,
            free_failures: 2,
            lockout_base: Duration::from_secs(1),
            lockout_max: Duration::from_secs(8),
            ..AuthConfig::default()
        }
    }

    #[tokio::test]
    async fn in_flight_is_bounded_per_address_and_released() {
        let t = Throttle::new(Arc::new(MemoryStore::default()), &cfg());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = t.admit(a).await.unwrap();
        let _second = t.admit(a).await.unwrap();
        assert!(matches!(
            t.admit(a).await,
            Err(ThrottleError::Throttled(Throttled::InFlight))
        ));
        let _other = t.admit(b).await.expect("another address is not affected");
        drop(first);
        let _third = t.admit(a).await.expect("a released place is free again");
        drop((_second, _other, _third));
        assert_eq!(t.addresses_in_flight(), 0, "no entry outlives its requests");
    }

    #[tokio::test]
    async fn the_address_rate_is_counted_per_window() {
        let t = Throttle::new(Arc::new(MemoryStore::default()), &cfg());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            drop(t.admit(a).await.unwrap());
        }
        match t.admit(a).await {
            Err(ThrottleError::Throttled(Throttled::AddressRate { retry_after })) => {
                assert!(retry_after <= Duration::from_secs(60) && !retry_after.is_zero());
            }
            other => panic!("expected the address rate: {:?}", other.err()),
        }
    }

    #[test]
    fn lockouts_double_up_to_the_maximum() {
        let p = LockoutPolicy {
            free: 2,
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        let locks: Vec<_> = (1..=8).map(|n| p.lockout(n).map(|d| d.as_secs())).collect();
        assert_eq!(
            locks,
            [
                None,
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(8),
                Some(8)
            ]
        );
        assert_eq!(p.lockout(u64::MAX), Some(Duration::from_secs(8)));
    }

    #[tokio::test]
    async fn failures_lock_the_account_and_success_forgets_them() {
        let t = Throttle::new(Arc::new(MemoryStore::default()), &cfg());
        assert_eq!(t.failed("a@example.com").await.unwrap(), None);
        assert_eq!(t.failed("a@example.com").await.unwrap(), None);
        assert_eq!(
            t.failed("a@example.com").await.unwrap(),
            Some(Duration::from_secs(1))
        );
        assert!(matches!(
            t.check_account("a@example.com").await,
            Err(ThrottleError::Throttled(Throttled::AccountLocked { .. }))
        ));
        t.check_account("b@example.com")
            .await
            .expect("other accounts are not affected");
        t.succeeded("a@example.com").await.unwrap();
        t.check_account("a@example.com").await.unwrap();
    }
}
