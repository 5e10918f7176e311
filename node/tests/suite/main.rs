//! The integration suite: one binary, every test against real services.
//! Most tests run twice through `both_modes!`: against api + three gateway
//! nodes on PostgreSQL and Redis, and against one node on SQLite and the
//! in-process broker.

mod accounts_admin;
mod admin;
mod append;
mod attachments;
mod audit;
mod auth;
mod auth_cache;
mod browser_sessions;
mod cors;
mod errors;
mod faults;
mod input;
mod mail;
mod message_changes;
mod messages;
mod metrics;
mod openapi;
mod presence;
mod profiles;
mod protocol_edges;
mod realtime;
mod receipts;
mod redis_cluster;
mod refresh;
mod resume;
mod room_management;
mod rooms;
mod schema;
mod search;
mod server_api;
mod single_node;
mod sse;
mod totp;
mod typing;
