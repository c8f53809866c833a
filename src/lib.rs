//! navcast: a horizontally scaled WebSocket navigation backend for accessible
//! transit navigation.
//!
//! # Layout
//!
//! Lower layers know nothing of higher ones (ARCHITECTURE.md has the map and
//! the invariants):
//!
//! - the wire and the world: [`protocol`] (every frame of
//!   `docs/PROTOCOL.md`), [`transit`] (the Seoul network, routing,
//!   tracking; no I/O), [`config`], [`clock`], [`files`] (the open-file
//!   limit every connection counts against), [`limits`] (counted places
//!   released on drop), [`metrics`];
//! - shared state and its backends: [`store`] (accounts, tokens, routes,
//!   shares, node registry; memory or Redis), [`bus`] (events between
//!   nodes; in-process or Redis pub/sub), `redis_conn` (the one Redis
//!   connection setup);
//! - per-node parts: [`auth`] (JWT, password hashing, accounts),
//!   `session` (this node's sessions and watchers), [`peer`] (who the
//!   client is, behind trusted proxies), `navigation` (a
//!   session's route requests);
//! - [`node`]: the node's state ([`AppState`]), how it is built, and
//!   fan-out ([`node::Fanout`]);
//! - the surfaces that serve it: `ws` (the WebSocket: upgrade, session
//!   tasks, request dispatch), [`auth::http`] (register, login, refresh),
//!   `ops` (health, readiness, stats, metrics, station search);
//! - `server`: the router of all surfaces, accepting and serving HTTP
//!   connections with their bounds, `run`/`serve`, the drain.

pub(crate) mod api_error;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod files;
pub mod limits;
pub mod metrics;
pub(crate) mod navigation;
pub mod node;
pub(crate) mod ops;
pub mod peer;
pub mod protocol;
pub mod redis_conn;
pub mod request_id;
mod server;
pub(crate) mod session;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod transit;
mod ws;

pub use config::Config;
pub use node::{AppState, Parts};
pub use server::{bind, run, serve};
