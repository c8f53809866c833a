//! Redis implementation of every store trait, for a cluster of nodes.
//!
//! One [`Connection`](crate::redis_conn::Connection) (a multiplexed connection that reconnects
//! itself) serves every call; it connects lazily, so a node starts while
//! Redis is down and its calls fail with [`StoreError::Unavailable`] until
//! Redis is back. Every check-then-write is a Lua script, so two nodes
//! racing on the same record cannot interleave.
//!
//! Every script and transaction touches one key, or keys that share a
//! hash tag, so all of it runs unchanged on a Redis Cluster. The one
//! record that needs two slots is an account (found by id and by email):
//! [`AccountStore::create`] writes the account first, if its id is new,
//! then claims the email with `SET NX`, and takes the account back when
//! the email was taken. A crash between the two leaves an account no
//! email leads to (harmless), never an email claimed by no account.
//!
//! Keys (with the default prefix `navcast`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `navcast:account:<user_id>` | hash | `user_id`, `email`, `username`?, `disability_type`?, `password_hash` |
//! | `navcast:email:<email>` | string | user id; created with `SET NX`, the uniqueness constraint |
//! | `navcast:family:<family>` | hash | `user_id`, `current` (the jti that may be spent next), `expires_at`, `revoked`; expires with the current token |
//! | `navcast:route:<user_id>` | hash | `route_id`, `record` (JSON), `selected_rank`, `track` (JSON); TTL `navigation.route_ttl` |
//! | `navcast:shares:<rider>` | set | guardian ids the rider shares with |
//! | `navcast:{nodes}` | hash | node id → `<expiry ms> <JSON heartbeat>` of each live node; a node's entry expires 3 × the heartbeat period after its last heartbeat (by Redis's clock) and is pruned by the next heartbeat |
//! | `navcast:hits:<key>` | string | requests in the current throttle window (e.g. `login:<address>`); expires with the window |
//! | `navcast:login:{<account hash>}:fails` | string | failed logins in a row; forgotten `auth.lockout_max` after the last |
//! | `navcast:login:{<account hash>}:lock` | string | present while the account is locked; expires with the lockout |

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::{ErrorKind, RedisError, Script};

use crate::redis_conn::Connection;

use super::{
    Account, AccountStore, Consumed, LockoutPolicy, NodeInfo, NodeRegistry, RefreshRecord,
    RouteRecord, RouteStore, ShareStore, StoreError, ThrottleStore, TokenStore,
};
use crate::transit::TrackState;

/// How a [`RedisStore`] names its keys, and the watchdog that lets its
/// commands fail at once while Redis does not answer.
#[derive(Clone)]
pub struct Options {
    /// Prefix of every key. Default `navcast`.
    pub prefix: String,
    pub health: Option<Arc<crate::redis_conn::Health>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "navcast".into(),
            health: None,
        }
    }
}

pub struct RedisStore {
    /// Cheap to clone; each call clones it for the `&mut` the commands need.
    conn: Connection,
    options: Options,
    create_account: Script,
    rotate_token: Script,
    heartbeat: Script,
    /// Writes no replica confirmed, and when that was last logged (Unix s).
    unreplicated: AtomicU64,
    unreplicated_logged: AtomicU64,
    live: Script,
    save_progress: Script,
    remove_route: Script,
    hit: Script,
    login_failed: Script,
}

/// Creates the account hash only if there is none with this id.
const CREATE_ACCOUNT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";

/// Writes a node's heartbeat (ARGV: node id, TTL ms, JSON) with its expiry
/// by Redis's clock, and drops the entries of nodes that stopped beating.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp = tonumber(string.match(all[i + 1], '^(%d+) '))
  if not exp or exp < now then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[2])) .. ' ' .. ARGV[3])
return 1
";

/// The JSON heartbeats of the nodes whose entries have not expired.
const LIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local exp, json = string.match(all[i + 1], '^(%d+) (.*)$')
  if exp and tonumber(exp) >= now then out[#out + 1] = json end
end
return out
";

/// Spends the family's current token and makes the next one current; any
/// other token of the family is a replay and revokes it. One key, so one
/// Redis Cluster slot. ARGV: now, presented jti, next jti, next expiry.
const ROTATE_TOKEN: &str = r"
local f = redis.call('HMGET', KEYS[1], 'user_id', 'current', 'expires_at', 'revoked')
if not f[1] or not f[2] or not f[3] then return {'unknown'} end
if f[4] == '1' or tonumber(f[3]) < tonumber(ARGV[1]) then return {'unknown'} end
if f[2] ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'revoked', '1')
  return {'reused', f[1], f[2], f[3]}
end
redis.call('HSET', KEYS[1], 'current', ARGV[3], 'expires_at', ARGV[4])
redis.call('EXPIREAT', KEYS[1], ARGV[4])
return {'fresh', f[1], f[2], f[3]}
";

/// Writes progress only while `route_id` is still the active route.
const SAVE_PROGRESS: &str = r"
if redis.call('HGET', KEYS[1], 'route_id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'selected_rank', ARGV[2], 'track', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
";

/// Deletes the route only if it is the active one.
const REMOVE_ROUTE: &str = r"
if redis.call('HGET', KEYS[1], 'route_id') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// One request in a fixed window: the count and the milliseconds left.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}
";

/// One failed login. ARGV: free failures, base lockout ms, max lockout ms.
/// Both keys share a hash tag, so this runs on one Redis Cluster slot.
const LOGIN_FAILED: &str = r"
local n = redis.call('INCR', KEYS[1])
local free, base, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lock = 0
if n > free then
  lock = math.floor(math.min(base * 2 ^ math.min(n - free - 1, 40), max))
  redis.call('SET', KEYS[2], '1', 'PX', lock)
end
redis.call('PEXPIRE', KEYS[1], max + lock)
return lock
";

/// Connection errors, timeouts and server refusals (loading, read-only,
/// out of memory) mean "try again later"; a reply of the wrong shape means
/// a record or script disagrees with this code.
fn map_err(e: RedisError) -> StoreError {
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// How long an account or login waits for a replica of its shard.
const REPLICA_WAIT: Duration = Duration::from_millis(500);

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl RedisStore {
    /// A store on `client`'s server. Connects on first use.
    pub fn new(
        target: impl Into<crate::redis_conn::Target>,
        options: Options,
    ) -> Result<RedisStore, StoreError> {
        let conn = Connection::to(
            &target.into(),
            options.health.clone(),
            crate::redis_conn::ClusterRetry::COMMANDS,
        )
        .map_err(map_err)?;
        Ok(RedisStore {
            conn,
            options,
            create_account: Script::new(CREATE_ACCOUNT),
            rotate_token: Script::new(ROTATE_TOKEN),
            heartbeat: Script::new(HEARTBEAT),
            live: Script::new(LIVE),
            unreplicated: AtomicU64::new(0),
            unreplicated_logged: AtomicU64::new(0),
            save_progress: Script::new(SAVE_PROGRESS),
            remove_route: Script::new(REMOVE_ROUTE),
            hit: Script::new(HIT),
            login_failed: Script::new(LOGIN_FAILED),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{}:{}", self.options.prefix, kind, id)
    }

    fn conn(&self) -> Connection {
        self.conn.clone()
    }

    /// On a Redis Cluster, lets a write to `key`'s shard reach a replica
    /// before it is acknowledged, so a master killed right after does not
    /// take it along (see `Connection::replicated`). A write no replica
    /// confirmed in time is still kept by the master; that is logged.
    async fn replicated(&self, key: &str) {
        if let Some(0) = self.conn().replicated(key, REPLICA_WAIT).await {
            let unreplicated = self.unreplicated.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per minute at most: a cluster without replicas would
            // otherwise log every login.
            let now = crate::clock::unix_s() as u64;
            let last = self.unreplicated_logged.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .unreplicated_logged
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    event = "redis_write_unreplicated",
                    cause = "no replica confirmed the write in time (none attached, or lagging)",
                    unreplicated,
                    "an acknowledged write lives on its master only until a replica catches up (logged once a minute; unreplicated counts them all)"
                );
            }
        }
    }

    /// The one hash of the node registry: one key, so one slot, and no
    /// `SCAN` (which a cluster would need on every shard).
    fn nodes_key(&self) -> String {
        format!("{}:{{nodes}}", self.options.prefix)
    }

    /// The two keys of an account's failed logins, in one hash slot.
    fn login_keys(&self, account: &str) -> (String, String) {
        let base = format!("{}:login:{{{account}}}", self.options.prefix);
        (format!("{base}:fails"), format!("{base}:lock"))
    }
}

#[async_trait]
impl ThrottleStore for RedisStore {
    async fn hit(&self, key: &str, window: Duration) -> Result<(u64, Duration), StoreError> {
        let (count, left_ms): (u64, i64) = self
            .hit
            .key(self.key("hits", key))
            .arg(ttl_ms(window))
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok((count, Duration::from_millis(left_ms.max(1) as u64)))
    }

    async fn locked_for(&self, account: &str) -> Result<Option<Duration>, StoreError> {
        let (_, lock) = self.login_keys(account);
        let left_ms: i64 = redis::cmd("PTTL")
            .arg(lock)
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok((left_ms > 0).then(|| Duration::from_millis(left_ms as u64)))
    }

    async fn failed(
        &self,
        account: &str,
        policy: &LockoutPolicy,
    ) -> Result<Option<Duration>, StoreError> {
        let (fails, lock) = self.login_keys(account);
        let lock_ms: u64 = self
            .login_failed
            .key(fails)
            .key(lock)
            .arg(policy.free)
            .arg(ttl_ms(policy.base))
            .arg(ttl_ms(policy.max))
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok((lock_ms > 0).then(|| Duration::from_millis(lock_ms)))
    }

    async fn clear(&self, account: &str) -> Result<(), StoreError> {
        let (fails, lock) = self.login_keys(account);
        redis::cmd("DEL")
            .arg(fails)
            .arg(lock)
            .exec_async(&mut self.conn())
            .await
            .map_err(map_err)
    }
}

fn account_from_hash(mut h: HashMap<String, String>) -> Result<Option<Account>, StoreError> {
    if h.is_empty() {
        return Ok(None);
    }
    let mut take = |field: &str| h.remove(field);
    let user_id = take("user_id").ok_or_else(|| corrupt("account", "no user_id"))?;
    let email = take("email").ok_or_else(|| corrupt("account", "no email"))?;
    let password_hash = take("password_hash").ok_or_else(|| corrupt("account", "no hash"))?;
    let username = take("username");
    let disability_type = take("disability_type")
        .map(|t| serde_json::from_value(serde_json::Value::String(t)))
        .transpose()
        .map_err(|e| corrupt("account disability_type", e))?;
    Ok(Some(Account {
        user_id,
        email,
        username,
        disability_type,
        password_hash,
    }))
}

#[async_trait]
impl AccountStore for RedisStore {
    async fn create(&self, account: Account) -> Result<(), StoreError> {
        let account_key = self.key("account", &account.user_id);
        let mut invocation = self.create_account.prepare_invoke();
        invocation
            .key(&account_key)
            .arg("user_id")
            .arg(&account.user_id)
            .arg("email")
            .arg(&account.email)
            .arg("password_hash")
            .arg(&account.password_hash);
        if let Some(name) = &account.username {
            invocation.arg("username").arg(name);
        }
        if let Some(t) = account.disability_type {
            invocation.arg("disability_type").arg(t.as_str());
        }
        let created: i64 = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        if created != 1 {
            return Err(StoreError::Conflict);
        }
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.key("email", &account.email))
            .arg(&account.user_id)
            .arg("NX")
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        if claimed.is_some() {
            self.replicated(&account_key).await;
            return Ok(());
        }
        // The email is someone else's: take back the account just made. If
        // this fails, an account no email leads to is left behind.
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&account_key)
            .exec_async(&mut self.conn())
            .await;
        Err(StoreError::Conflict)
    }

    async fn by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let id: Option<String> = redis::cmd("GET")
            .arg(self.key("email", email))
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        match id {
            Some(id) => self.by_id(&id).await,
            None => Ok(None),
        }
    }

    async fn by_id(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("account", user_id))
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        account_from_hash(h)
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn issue(&self, record: RefreshRecord) -> Result<(), StoreError> {
        let key = self.key("family", &record.family);
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("user_id")
            .arg(&record.user_id)
            .arg("current")
            .arg(&record.jti)
            .arg("expires_at")
            .arg(record.expires_at)
            .arg("revoked")
            .arg("0")
            .ignore()
            .cmd("EXPIREAT")
            .arg(&key)
            .arg(record.expires_at)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        self.replicated(&key).await;
        Ok(())
    }

    async fn rotate(
        &self,
        family: &str,
        jti: &str,
        next: &RefreshRecord,
    ) -> Result<Consumed, StoreError> {
        let reply: Vec<String> = self
            .rotate_token
            .key(self.key("family", family))
            .arg(crate::clock::unix_s())
            .arg(jti)
            .arg(&next.jti)
            .arg(next.expires_at)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        let record = |r: &[String]| -> Result<RefreshRecord, StoreError> {
            match r {
                [_, user_id, current, expires_at] => Ok(RefreshRecord {
                    jti: current.clone(),
                    user_id: user_id.clone(),
                    family: family.to_string(),
                    expires_at: expires_at
                        .parse()
                        .map_err(|e| corrupt("refresh expires_at", e))?,
                }),
                _ => Err(corrupt("rotate reply", format!("{r:?}"))),
            }
        };
        match reply.first().map(String::as_str) {
            Some("fresh") => Ok(Consumed::Fresh(record(&reply)?)),
            Some("reused") => Ok(Consumed::Reused(record(&reply)?)),
            Some("unknown") => Ok(Consumed::Unknown),
            _ => Err(corrupt("rotate reply", format!("{reply:?}"))),
        }
    }

    async fn family_alive(&self, family: &str) -> Result<bool, StoreError> {
        let (revoked, expires_at): (Option<String>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.key("family", family))
            .arg("revoked")
            .arg("expires_at")
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(revoked.as_deref() == Some("0")
            && expires_at.is_some_and(|e| e >= crate::clock::unix_s()))
    }
}

#[async_trait]
impl RouteStore for RedisStore {
    async fn get(&self, user_id: &str) -> Result<Option<RouteRecord>, StoreError> {
        let mut h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("route", user_id))
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        if h.is_empty() {
            return Ok(None);
        }
        let record = h
            .remove("record")
            .ok_or_else(|| corrupt("route", "no record"))?;
        let mut record: RouteRecord =
            serde_json::from_str(&record).map_err(|e| corrupt("route record", e))?;
        if let Some(rank) = h.get("selected_rank") {
            record.selected_rank = rank.parse().map_err(|e| corrupt("route rank", e))?;
        }
        if let Some(track) = h.get("track") {
            record.track = serde_json::from_str(track).map_err(|e| corrupt("route track", e))?;
        }
        Ok(Some(record))
    }

    async fn put(
        &self,
        user_id: &str,
        record: RouteRecord,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.key("route", user_id);
        let json = serde_json::to_string(&record).map_err(|e| corrupt("route record", e))?;
        let track = serde_json::to_string(&record.track).map_err(|e| corrupt("route track", e))?;
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("route_id")
            .arg(&record.route_id)
            .arg("record")
            .arg(json)
            .arg("selected_rank")
            .arg(record.selected_rank)
            .arg("track")
            .arg(track)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms(ttl))
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn save_progress(
        &self,
        user_id: &str,
        route_id: &str,
        selected_rank: u8,
        track: &TrackState,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let track = serde_json::to_string(track).map_err(|e| corrupt("route track", e))?;
        let saved: i64 = self
            .save_progress
            .key(self.key("route", user_id))
            .arg(route_id)
            .arg(selected_rank)
            .arg(track)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(saved == 1)
    }

    async fn remove(&self, user_id: &str, route_id: &str) -> Result<bool, StoreError> {
        let removed: i64 = self
            .remove_route
            .key(self.key("route", user_id))
            .arg(route_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(removed == 1)
    }
}

#[async_trait]
impl ShareStore for RedisStore {
    async fn share(&self, rider: &str, guardian: &str) -> Result<(), StoreError> {
        redis::cmd("SADD")
            .arg(self.key("shares", rider))
            .arg(guardian)
            .exec_async(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn unshare(&self, rider: &str, guardian: &str) -> Result<bool, StoreError> {
        let removed: i64 = redis::cmd("SREM")
            .arg(self.key("shares", rider))
            .arg(guardian)
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(removed == 1)
    }

    async fn is_shared(&self, rider: &str, guardian: &str) -> Result<bool, StoreError> {
        redis::cmd("SISMEMBER")
            .arg(self.key("shares", rider))
            .arg(guardian)
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)
    }
}

#[async_trait]
impl NodeRegistry for RedisStore {
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let json = serde_json::to_string(node).map_err(|e| corrupt("node info", e))?;
        self.heartbeat
            .key(self.nodes_key())
            .arg(&node.node_id)
            .arg(ttl_ms(ttl))
            .arg(json)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn leave(&self, node_id: &str) -> Result<(), StoreError> {
        redis::cmd("HDEL")
            .arg(self.nodes_key())
            .arg(node_id)
            .exec_async(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn live(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let values: Vec<String> = self
            .live
            .key(self.nodes_key())
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        let mut nodes: Vec<NodeInfo> = values
            .iter()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }
}
