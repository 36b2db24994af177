//! `keyline-directory`, the internet directory (DESIGN §1, claims 1–4, 7, 8).
//!
//! The crate owns: accounts with argon2id passwords, session tokens and
//! rate-limited logins ([`auth`], [`ratelimit`]); the directory's durable
//! data behind the [`store::Store`] trait (an SQLite file by default, or
//! PostgreSQL with `[store] postgres`), and the copy from one to the other
//! (`migrate --from-sqlite`); the sans-IO routing
//! core — numbers, bindings with a TTL, server-side forwarding with cycle
//! detection, calls from CALL to CONNECT ([`routing`]); the tokio server
//! around it with its control socket and systemd lifecycle ([`server`]);
//! the directory's opaque UDP relay for the direct-connect rules (through
//! [`keyline_net::relay`]); and the web site (module `web`: sign-up, set-up,
//! account pages, operator pages) served over HTTPS by the same process
//! from the same store and hub; and, with `[cluster] nats`, the link that
//! makes several such nodes one directory through NATS ([`cluster`]). Media never touches the directory unless the
//! relay rule says so, and then only as bytes it cannot decrypt.

pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod hashing;
pub mod metrics;
pub mod ratelimit;
pub mod routing;
pub mod server;
mod shared;
pub mod store;
mod web;

/// The client library and the stream framing live in `keyline-dirclient`
/// (a terminal links them without the server); re-exported here so the
/// server and its tests name them as before.
pub use keyline_dirclient::{client, wire};
