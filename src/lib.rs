//! navcast: a horizontally scaled WebSocket navigation backend for accessible
//! transit navigation. See ARCHITECTURE.md for the code map.

pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod http;
pub mod metrics;
pub mod navigation;
pub mod network;
pub mod protocol;
pub mod session;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;
mod ws;

pub use app::{AppState, Parts, run, serve};
pub use config::Config;
