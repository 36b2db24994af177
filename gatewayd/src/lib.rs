//! `keyline-gatewayd`, the office gateway: it gives LAN workstations
//! (agents) extensions after an admin approves their pairing code, switches
//! internal calls with the sans-IO [`keyline_proto::call::Switchboard`],
//! hands the two ends of an answered call each other's address and a
//! per-call credential so media runs end to end, and — when policy says
//! relay — forwards that media as opaque UDP ([`keyline_net::relay`]). It keeps agents
//! and call records in SQLite ([`db`]) and answers its CLI on a control
//! socket ([`control::dispatch`], typed in [`api`]), publishing what happens
//! to subscribers ([`events`]).
//!
//! The tokio shell is in layers with no import circle: [`shared`] (what the
//! tasks share and the switch task's inputs) at the bottom; above it
//! [`station`] (one station's connection and enrolment), [`switch`] (the
//! switch task around the switchboard, with `switch::trunk` for outside
//! calls), [`uplink`] (the directory connection), [`voicemail`] and
//! [`disk`]; [`server`] on top starts and stops them, and only the binary
//! uses it.

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod db;
pub mod disk;
pub mod events;
pub mod metrics;
pub mod rates;
pub mod server;
pub mod shared;
pub mod station;
pub mod switch;
pub mod uplink;
pub mod voicemail;
