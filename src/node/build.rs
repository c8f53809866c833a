//! Building a node's state from its configuration.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AppState, Fanout, Inner, registry};
use crate::auth::{AuthService, JwtKeys};
use crate::bus::Bus;
use crate::bus::local::LocalBus;
use crate::bus::redis::{BusCounters, RedisBus};
use crate::config::{Config, JwtAlgorithm};
use crate::limits::ConnectionLimit;
use crate::metrics::Metrics;
use crate::navigation::NavDeps;
use crate::redis_conn::Health;
use crate::session::Sessions;
use crate::store::Stores;
use crate::transit::{Network, Profiles, RouteEngine, Tracker, TrackerConfig};

/// Optional parts a caller may supply instead of the defaults.
#[derive(Default)]
pub struct Parts {
    /// Defaults to a Redis bus when `redis_url` is set, else a bus of this
    /// node alone.
    pub bus: Option<Arc<dyn Bus>>,
    /// Defaults to Redis stores when `redis_url` is set, else in-memory
    /// stores.
    pub stores: Option<Stores>,
}

/// The route engine and tracker over the configured (or embedded) data.
fn engine(config: &Config) -> anyhow::Result<(Arc<RouteEngine>, Tracker)> {
    let network = match &config.data_dir {
        Some(dir) => Arc::new(Network::load_dir(dir)?),
        None => Network::embedded(),
    };
    let profiles = match &config.profiles_file {
        Some(file) => Profiles::load(file)?,
        None => Profiles::embedded(),
    };
    let engine = Arc::new(RouteEngine::new(
        network,
        profiles,
        config.navigation.route_cache_capacity,
    ));
    let tracker = Tracker::new(TrackerConfig {
        arrival_radius_m: config.navigation.arrival_radius_m,
        deviation_threshold_m: config.navigation.deviation_threshold_m,
        max_accuracy_credit_m: config.navigation.max_accuracy_credit_m,
    });
    Ok((engine, tracker))
}

/// The signing keys; in dev without a secret, a random one (logged).
fn keys(config: &Config) -> anyhow::Result<JwtKeys> {
    let dev_secret;
    let secret = match (&config.jwt.secret, config.jwt.algorithm) {
        (Some(s), _) => Some(s.as_bytes()),
        (None, JwtAlgorithm::HS256) => {
            dev_secret = uuid::Uuid::new_v4().to_string() + &uuid::Uuid::new_v4().to_string();
            tracing::warn!(
                event = "dev_jwt_secret",
                "no JWT secret configured: generated a random dev secret; tokens die with this \
                 process and no other node accepts them (set NAVCAST_JWT_SECRET)"
            );
            Some(dev_secret.as_bytes())
        }
        (None, _) => None,
    };
    Ok(JwtKeys::new(&config.jwt, secret)?)
}

impl AppState {
    /// Builds a node's state: network, engine, auth, stores, bus, fan-out;
    /// starts the bus and the registry heartbeat.
    pub async fn build(config: Config, parts: Parts) -> anyhow::Result<AppState> {
        let (engine, tracker) = engine(&config)?;
        let keys = keys(&config)?;
        // Opening a client parses the URL and connects nothing: a node whose
        // Redis is down starts, reports not ready, and catches up.
        let redis = match &config.redis_url {
            Some(url) if parts.bus.is_none() || parts.stores.is_none() => Some(
                crate::redis_conn::Target::open(config.redis_mode, url)
                    .map_err(|e| anyhow::anyhow!("redis_url {url:?} is not usable: {e}"))?,
            ),
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        let redis_health = match &redis {
            Some(target) => Some(Arc::new(Health::new(
                target,
                &crate::store::redis::Options::default().prefix,
                config.redis_health_timeout,
                metrics.redis.clone(),
            )?)),
            None => None,
        };
        let stores = match (parts.stores, &redis) {
            (Some(stores), _) => stores,
            (None, Some(client)) => Stores::redis(
                client.clone(),
                crate::store::redis::Options {
                    health: redis_health.clone(),
                    ..Default::default()
                },
            )?,
            (None, None) => match &config.state_dir {
                Some(dir) => {
                    let stores = Stores::embedded(dir).map_err(|e| {
                        anyhow::anyhow!(
                            "state_dir {}: {e} (set NAVCAST_STATE_DIR to a writable directory, \
                             or to \"\" to keep accounts in memory)",
                            dir.display()
                        )
                    })?;
                    tracing::info!(event = "state_store", dir = %dir.display(), "accounts and refresh tokens kept on disk");
                    stores
                }
                None => Stores::memory(),
            },
        };
        let auth = Arc::new(AuthService::new(
            keys,
            &config.auth,
            stores.accounts.clone(),
            stores.tokens.clone(),
            stores.throttle.clone(),
        )?);
        if let Some(seed) = &config.auth.seed_file {
            match auth.seed(seed).await {
                Ok(created) => {
                    tracing::info!(event = "accounts_seeded", file = %seed.display(), created, "seed accounts loaded");
                }
                // A store that is down or still loading (Redis right after
                // a restart) must not keep the node from starting: seed
                // once it answers.
                Err(e)
                    if e.downcast_ref::<crate::store::StoreError>()
                        .is_some_and(|e| matches!(e, crate::store::StoreError::Unavailable(_))) =>
                {
                    tracing::warn!(event = "accounts_seed_deferred", cause = %e, "seeding when the store answers");
                    let (auth, seed) = (auth.clone(), seed.clone());
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            match auth.seed(&seed).await {
                                Ok(created) => {
                                    tracing::info!(event = "accounts_seeded", file = %seed.display(), created, "seed accounts loaded");
                                    return;
                                }
                                Err(e) => {
                                    tracing::debug!(event = "accounts_seed_deferred", cause = %e, "store still unavailable");
                                }
                            }
                        }
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let bus: Arc<dyn Bus> = match (parts.bus, redis) {
            (Some(bus), _) => bus,
            (None, Some(client)) => Arc::new(RedisBus::new(
                client,
                config.bus.topology,
                &config.bus.channel,
                &config.history,
                BusCounters {
                    publish_failures: metrics.bus_publish_failures.clone(),
                    reconnects: metrics.bus_reconnects.clone(),
                    connected: metrics.bus_connected.clone(),
                },
            )),
            (None, None) => Arc::new(LocalBus::with_history(config.history.clone())),
        };
        let node_id: Arc<str> = config.node_id.clone().into();
        let sessions = Arc::new(Sessions::default());
        let fanout = Arc::new(Fanout::new(
            node_id.clone(),
            config.bus.topology,
            sessions.clone(),
            bus.clone(),
            metrics.clone(),
        ));
        let navigation = Arc::new(NavDeps {
            engine,
            tracker,
            routes: stores.routes.clone(),
            route_ttl: config.navigation.route_ttl,
            health: redis_health.clone(),
        });
        let state = AppState(Arc::new(Inner {
            node_id: node_id.clone(),
            connections: Arc::new(ConnectionLimit::new(crate::files::session_limit(
                config.ws.max_connections,
                config.http.max_pending,
                crate::files::soft_limit(),
            ))),
            pending: Arc::new(ConnectionLimit::new(config.http.max_pending)),
            redis_health: redis_health.clone(),
            trusted_proxies: config.http.trusted_proxies.clone().into(),
            config,
            auth,
            stores,
            navigation,
            sessions: sessions.clone(),
            bus: bus.clone(),
            fanout: fanout.clone(),
            metrics,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            started_at: crate::clock::unix_s(),
            stopped: CancellationToken::new(),
            registry_left: tokio::sync::Mutex::new(false),
        }));
        if bus.is_connected() {
            state.metrics.bus_connected.set(1);
        }
        let weak = Arc::downgrade(&sessions);
        bus.set_interest_check(Arc::new(move |user| {
            weak.upgrade().is_some_and(|s| s.has_interest(user))
        }));
        tokio::spawn(registry::heartbeat(Arc::downgrade(&state.0)));
        if let Some(health) = &redis_health {
            tokio::spawn(
                health
                    .clone()
                    .run(state.config.redis_health_interval, state.stopped.clone()),
            );
        }
        let weak = Arc::downgrade(&fanout);
        bus.start(
            &node_id,
            Arc::new(move |envelope| {
                if let Some(fanout) = weak.upgrade() {
                    fanout.deliver(&envelope);
                }
            }),
        );
        Ok(state)
    }
}
