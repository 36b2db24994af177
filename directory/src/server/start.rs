//! What a run starts from: the command line's options and the overrides
//! re-applied after a reload, and the store, opened (the SQLite file or
//! PostgreSQL) and its numbers read into the router's table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use crate::config::Config;
use crate::routing::NumberInfo;
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};

/// Name of the database inside the state directory.
pub const DB_FILE: &str = "directory.sqlite";

/// Options given on the command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state: Option<PathBuf>,
    pub config: Config,
    /// The file `config` came from, re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    /// Flags that override the file, re-applied after a reload.
    pub overrides: Overrides,
}

/// Command-line settings that win over the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub direct_connect: Option<keyline_proto::dir::DirectPolicy>,
    pub binding_ttl: Option<u32>,
    pub ring_timeout: Option<u64>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(p) = self.direct_connect {
            cfg.direct_connect = p;
        }
        if let Some(t) = self.binding_ttl {
            cfg.binding_ttl_secs = t;
        }
        if let Some(t) = self.ring_timeout {
            cfg.ring_timeout_secs = t;
        }
    }
}

/// Open (creating if need be) the directory's SQLite database in `state_dir`.
pub fn open_store(state_dir: &std::path::Path) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqliteStore::open(&state_dir.join(DB_FILE))?))
}

/// Open the store `[store]` names: PostgreSQL when `postgres` is set (its
/// schema brought up to date), else the SQLite file in `state_dir`.
/// Blocking: call it off the async runtime.
pub fn open_configured_store(
    state_dir: &std::path::Path,
    cfg: &crate::config::StoreConfig,
) -> Result<Arc<dyn Store>> {
    match &cfg.postgres {
        Some(url) => Ok(Arc::new(PostgresStore::open(url, cfg.pool_size)?)),
        None => open_store(state_dir),
    }
}

pub(super) fn number_table(store: &dyn Store) -> Result<HashMap<String, NumberInfo>, StoreError> {
    Ok(store
        .numbers()?
        .into_iter()
        .map(|r| {
            (
                r.number,
                NumberInfo {
                    account: r.account,
                    forwards: r.forwards,
                    dnd: r.dnd,
                },
            )
        })
        .collect())
}
