//! Parley's WebSocket gateway.
//!
//! A node terminates WebSockets (fastwebsockets), authenticates each
//! connection with an access token, checks every join against room
//! membership in the store, and delivers room events that arrive through the
//! broker: each node subscribes only to rooms its own connections are in.
//!
//! Layers, outside in: [`server`] (HTTP listener and the `/ws` upgrade),
//! [`connection`] (one client's frames), [`hub`] (the node's connections,
//! rooms and subscriptions), [`sequencer`] (per-room ordering and gap
//! recovery), [`outbox`] and [`frames`] (the way out to one socket),
//! [`drain`] (closing a stopping node's connections, spread over time),
//! [`sse`] (the same frames as a Server-Sent Events stream);
//! [`exported_metrics`] registers what the node exports.

pub mod backlog;
pub mod config;
pub(crate) mod connection;
pub mod drain;
pub mod exported_metrics;
pub mod frames;
pub mod hub;
pub mod outbox;
pub mod presence;
pub(crate) mod receipts;
pub mod sequencer;
pub mod server;
pub mod sse;

pub use config::{GatewayConfig, WsSettings};
pub use server::{Application, Gateway};

use broker::DynBroker;
use hub::Hub;
use shared::auth::TokenVerifier;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use store::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A gateway node's shared state.
pub(crate) struct Inner {
    pub(crate) hub: Arc<Hub>,
    pub(crate) store: Store,
    pub(crate) broker: DynBroker,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) settings: WsSettings,
    /// One permit per WebSocket connection (`max_connections`).
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) next_conn_id: AtomicU64,
    /// Connection tasks, awaited on shutdown.
    pub(crate) connections: TaskTracker,
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Hub tasks (shards, router, subscriptions).
    pub(crate) background: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Coalesces this node's read and delivery markers into batched writes.
    pub(crate) markers: store::MarkerWriter,
    /// Reports what this node's connections hold to presence.
    pub(crate) presence: presence::PresenceHandle,
}
