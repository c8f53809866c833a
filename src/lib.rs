//! navcast: a horizontally scaled WebSocket navigation backend.
pub mod network;
