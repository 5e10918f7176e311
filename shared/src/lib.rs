//! What every Parley process and client agrees on: identifiers, the domain
//! values on the wire, the REST bodies, the WebSocket protocol, access-token
//! claims, and the configuration and telemetry plumbing shared by binaries.

pub mod auth;
pub mod config;
pub mod health;
pub mod ids;
pub mod model;
pub mod protocol;
pub mod rest;
pub mod shutdown;
pub mod system;
pub mod telemetry;
pub mod trace_context;

pub use ids::{ApiKeyId, RoomId, SessionId, UserId};
