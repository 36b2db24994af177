//! The control socket's one dispatcher: a request line becomes an
//! [`api::Request`] (or a clear error), [`dispatch`] carries it out, and
//! the reply goes back as JSON. The stream of [`api::Event`]s that
//! `subscribe` gives is published through [`Shared::publish`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use keyline_net::control;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::api::{self, ForwardInfo, LockedFrom, Request, Response, UserInfo};
use crate::shared::{query_typed, Event, Query, QueryReply, Shared};
use crate::store;

/// Serve one control-socket request line (already JSON).
pub async fn handle_control(shared: &Arc<Shared>, req: Value) -> Value {
    match api::parse_request(req) {
        Ok(r) => match dispatch(shared, r).await {
            Ok(resp) => resp.to_json(),
            Err(e) => control::error(e),
        },
        Err(e) => control::error(e),
    }
}

/// Carry out one request.
pub async fn dispatch(shared: &Arc<Shared>, req: Request) -> Result<Response, String> {
    match req {
        Request::Status => match query_typed(shared, Query::Status).await? {
            QueryReply::Status(mut s) => {
                if let Ok(mail) = store::blocking(&shared.store, |s| s.all_mail()).await {
                    s.mail_waiting = Some(mail.len());
                }
                s.disk = crate::metrics::disk_free_off_runtime(&shared.state_dir)
                    .await
                    .map(api::DiskState::of);
                Ok(Response::Status(s))
            }
            other => Err(format!("unexpected answer {other:?}")),
        },
        Request::Bindings => match query_typed(shared, Query::Bindings).await? {
            QueryReply::Bindings(bindings) => Ok(Response::Bindings { bindings }),
            other => Err(format!("unexpected answer {other:?}")),
        },
        Request::Calls => match query_typed(shared, Query::Calls).await? {
            QueryReply::Calls(calls) => Ok(Response::Calls { calls }),
            other => Err(format!("unexpected answer {other:?}")),
        },
        Request::Users => {
            let online = match query_typed(shared, Query::Online).await? {
                QueryReply::Online(o) => o,
                other => return Err(format!("unexpected answer {other:?}")),
            };
            let accounts = store::blocking(&shared.store, |s| s.accounts())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Response::Users {
                users: users(shared, accounts, &online),
            })
        }
        Request::Forwards => {
            let rows = store::blocking(&shared.store, |s| s.numbers())
                .await
                .map_err(|e| e.to_string())?;
            let forwards = rows
                .into_iter()
                .flat_map(|r| {
                    let (number, account) = (r.number, r.account);
                    r.forwards
                        .into_iter()
                        .map(move |f| ForwardInfo {
                            number: number.clone(),
                            account: account.clone(),
                            when: f.when.as_str().to_string(),
                            to: f.to,
                            on: f.on,
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            Ok(Response::Forwards { forwards })
        }
        Request::Mail => {
            let mail = store::blocking(&shared.store, |s| s.all_mail())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Response::Mail { mail })
        }
        Request::Reload { logout } => {
            let (tx, rx) = oneshot::channel();
            shared
                .hub
                .send(Event::Reload {
                    logout,
                    keep: None,
                    done: Some(tx),
                })
                .await
                .map_err(|_| "the directory is stopping".to_string())?;
            let _ = rx.await;
            Ok(Response::Reloaded {})
        }
        Request::Cluster => {
            let Some(link) = shared.cluster.get() else {
                return Err(
                    "this directory is a single node (no [cluster] nats in its config)".into(),
                );
            };
            let started = Instant::now();
            let postgres = match store::blocking(&shared.store, |s| s.account("")).await {
                Ok(_) => format!("ok ({} ms)", started.elapsed().as_millis()),
                Err(e) => e.to_string(),
            };
            let st = link.status().await.map_err(|e| format!("{e:#}"))?;
            Ok(Response::Cluster(Box::new(api::ClusterStatus {
                node: st.node,
                nats: st.nats,
                nats_server: st.nats_server,
                nodes: st.nodes,
                bindings: st.bindings,
                postgres,
            })))
        }
    }
}

/// Every account with its registered numbers and login locks.
fn users(
    shared: &Shared,
    accounts: Vec<store::Account>,
    online: &HashMap<String, Vec<String>>,
) -> Vec<UserInfo> {
    let now = Instant::now();
    accounts
        .into_iter()
        .map(|a| {
            let (everywhere, from) = shared
                .limiter
                .lock()
                .map(|l| l.account_locks(now, &a.id))
                .unwrap_or_default();
            let secs = |u: Instant| u.saturating_duration_since(now).as_secs();
            UserInfo {
                registered: online.get(&a.id).cloned().unwrap_or_default(),
                locked_for_s: everywhere.map(secs),
                locked_from: from
                    .into_iter()
                    .map(|(ip, u)| LockedFrom {
                        address: ip.to_string(),
                        for_s: secs(u),
                    })
                    .collect(),
                created_ms: a.created_ms,
                numbers: a.numbers,
                id: a.id,
            }
        })
        .collect()
}
