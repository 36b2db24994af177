//! The directory suite's load clients: each speaks the directory protocol
//! directly on its control stream, with the codec and the stream batching
//! the client library uses (`keyline_dirclient::wire`), `depth` requests
//! in flight, the next ones written together once every answer that
//! arrived together is read.
//!
//! `DirClient` answers each request through a task, a oneshot, a pending
//! table and a timer, which is right for a gateway and costs a load
//! generator as much CPU per look-up as the directory spends; on a 2-core
//! machine shared with the directory that cost is taken from the
//! directory. The directory sees the same thing from both: connections
//! with identities of their own, logins, registrations and look-ups.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use keyline_dirclient::wire::{self, Incoming, MsgReader, MsgWriter};
use keyline_net::{endpoint, Identity};
use keyline_proto::dir::{DirMsg, ReqId};
use keyline_proto::msg::Role;
use keyline_proto::PROTOCOL_VERSION;

/// One logged-in, registered client.
pub(crate) struct RawClient {
    conn: quinn::Connection,
    out: MsgWriter,
    inp: MsgReader,
    next_req: ReqId,
    pub number: String,
    candidates: Vec<String>,
}

/// What a load run asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Register,
    Lookup,
}

/// One client's completions in a load run: (seconds since the base,
/// latency µs), and errors with the first message.
pub(crate) struct Done {
    pub at: Vec<(f64, f32)>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl RawClient {
    /// Connect on `ep` with an identity of its own, log in (`password`) or
    /// resume (`token`), and bind `number` to `ep`'s address. Returns the
    /// client and its session token.
    pub async fn online(
        ep: &quinn::Endpoint,
        dir: SocketAddr,
        account: &str,
        login: Login<'_>,
        number: &str,
    ) -> Result<(RawClient, String)> {
        let id = Identity::generate(account)?;
        let cfg = endpoint::client_config_with(&id, None, Some(wire::ACK_EVERY))?;
        let conn = ep
            .connect_with(cfg, dir, endpoint::SERVER_NAME)?
            .await
            .context("connecting to the directory")?;
        let (send, recv) = conn.open_bi().await?;
        let own = ep.local_addr()?.to_string();
        let mut c = RawClient {
            conn,
            out: MsgWriter::new(send),
            inp: MsgReader::new(recv),
            next_req: 1,
            number: number.to_string(),
            candidates: vec![own],
        };
        c.out
            .push(&DirMsg::Hello {
                version: PROTOCOL_VERSION,
                role: Role::Terminal,
                name: Some(account.to_string()),
                client: None,
            })
            .await?;
        c.out.flush().await?;
        match c.next().await? {
            DirMsg::Welcome { .. } => {}
            other => bail!("expected welcome, got {other:?}"),
        }
        let req = c.take_req();
        let ask = match login {
            Login::Password(password) => DirMsg::Login {
                req,
                account: account.to_string(),
                password: password.to_string(),
            },
            Login::Token(token) => DirMsg::Resume {
                req,
                token: token.to_string(),
            },
        };
        let token = match c.ask(ask).await? {
            DirMsg::LoggedIn { token, .. } => token,
            other => bail!("logging in as {account}: {other:?}"),
        };
        let req = c.take_req();
        match c.ask(c.request(Op::Register, req, "")).await? {
            DirMsg::Registered { .. } => {}
            other => bail!("registering {number}: {other:?}"),
        }
        Ok((c, token))
    }

    fn take_req(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    fn request(&self, op: Op, req: ReqId, target: &str) -> DirMsg {
        match op {
            Op::Register => DirMsg::Register {
                req,
                numbers: vec![self.number.clone()],
                candidates: self.candidates.clone(),
            },
            Op::Lookup => DirMsg::Lookup {
                req,
                number: target.to_string(),
            },
        }
    }

    /// The next message; anything but a message is an error.
    async fn next(&mut self) -> Result<DirMsg> {
        match self.inp.next().await? {
            Incoming::Msg(m) => Ok(m),
            Incoming::Unknown(k) => bail!("unknown message kind {k:?}"),
            Incoming::Closed => bail!("the directory closed the stream"),
        }
    }

    /// Send one request and wait for its answer (what the directory
    /// pushes meanwhile is skipped).
    async fn ask(&mut self, msg: DirMsg) -> Result<DirMsg> {
        let req = match &msg {
            DirMsg::Login { req, .. }
            | DirMsg::Resume { req, .. }
            | DirMsg::Register { req, .. }
            | DirMsg::Lookup { req, .. } => *req,
            other => bail!("not a request: {other:?}"),
        };
        self.out.push(&msg).await?;
        self.out.flush().await?;
        loop {
            let m = self.next().await?;
            if m.reply_to() == Some(req) {
                return Ok(m);
            }
        }
    }

    /// Keep `depth` requests of `op` in flight until `stop`, then read
    /// the answers still owed. Look-ups go to `targets`, starting at
    /// `seed`. Answers come in the order asked (one stream, one hub).
    pub async fn load(
        &mut self,
        op: Op,
        depth: usize,
        targets: &[String],
        mut seed: usize,
        stop: &AtomicBool,
        base: Instant,
    ) -> Result<Done> {
        let mut d = Done {
            at: Vec::with_capacity(1 << 16),
            errors: 0,
            first_error: None,
        };
        let mut asked: VecDeque<(ReqId, Instant)> = VecDeque::with_capacity(depth);
        let mut stopping = false;
        loop {
            if !stopping {
                while asked.len() < depth.max(1) {
                    let req = self.take_req();
                    seed = seed.wrapping_add(1);
                    let target = targets.get(seed % targets.len().max(1));
                    let msg = self.request(op, req, target.map_or("", String::as_str));
                    self.out.push(&msg).await?;
                    asked.push_back((req, Instant::now()));
                }
                self.out.flush().await?;
            }
            if asked.is_empty() {
                return Ok(d);
            }
            // Everything that arrived together, then write again.
            loop {
                let m = self.next().await?;
                if let Some(req) = m.reply_to() {
                    let Some((want, t)) = asked.pop_front() else {
                        bail!("an answer to {req} nobody asked for");
                    };
                    if req != want {
                        bail!("answer to {req} where {want} was next");
                    }
                    let end = Instant::now();
                    match m {
                        DirMsg::Found { .. } | DirMsg::Registered { .. } => d.at.push((
                            (end - base).as_secs_f64(),
                            (end - t).as_secs_f64() as f32 * 1e6,
                        )),
                        other => {
                            d.errors += 1;
                            d.first_error.get_or_insert_with(|| format!("{other:?}"));
                        }
                    }
                }
                if !self.inp.ready() {
                    break;
                }
            }
            stopping = stopping || stop.load(Ordering::Relaxed);
        }
    }

    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
    }
}

/// How a client logs in.
#[derive(Clone, Copy)]
pub(crate) enum Login<'a> {
    Password(&'a str),
    Token(&'a str),
}

/// Start `load` on every client at once; each task gives its client back
/// with its figures.
pub(crate) fn load_all(
    clients: Vec<RawClient>,
    op: Op,
    depth: usize,
    targets: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    base: Instant,
) -> Vec<tokio::task::JoinHandle<(RawClient, Result<Done>)>> {
    clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let (targets, stop) = (targets.clone(), stop.clone());
            tokio::spawn(async move {
                let r = c.load(op, depth, &targets, i * 7919, &stop, base).await;
                (c, r)
            })
        })
        .collect()
}
