//! `tollgate control-plane`: owns keys, tenants, teams and budgets behind an admin REST API
//! (HTTP/JSON, bearer tokens), and answers sidecars over HMAC-signed HTTP: `resolve-key`
//! (HS256 JWS bundles) and a long-poll change feed. Storage is SQLite or PostgreSQL.
//! The contract with the sidecars is `docs/CONTROL-PLANE.md`.

pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod server;
pub mod sign;
pub mod store;

pub use config::Config;
pub use server::{start, Running};
