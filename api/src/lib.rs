//! Parley's REST api: accounts, sessions, rooms, membership, messages, and
//! the server publish api for backends (API keys).
//!
//! Stateless: every node can serve every request. State lives in the store
//! (PostgreSQL, or SQLite on a single node); every committed room event is
//! published on the broker for the gateways to deliver live.
//!
//! [`router`] builds the whole api for any host (the `parley-api` binary, or
//! the single-node `parley` binary next to the gateway); [`Application`]
//! is the standalone service.

pub mod accounts;
pub mod admin;
pub mod attachments;
pub mod audit;
pub mod auth;
pub mod config;
pub mod cors;
pub mod domain;
pub mod error;
pub mod events;
pub mod exported_metrics;
pub mod extract;
pub mod health;
pub mod limits;
pub mod mail;
pub mod messages;
pub mod openapi;
pub mod presence;
pub mod profiles;
pub mod rooms;
pub mod search;
pub mod server;
pub mod sse;
pub mod startup;
pub mod state;
pub mod text;
pub mod users;

pub use config::{ApiConfig, AttachmentArgs, MailArgs, PolicyArgs};
pub use startup::{Application, maintenance, router};
pub use state::{AppState, Tokens};
