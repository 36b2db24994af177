//! Registers many endpoints with a running directory and reports its
//! resident memory, for capacity planning. Loopback only.
//!
//! ```text
//! for a in $(seq 0 499); do
//!   keyline-directory --state /tmp/d user add load$a $(for k in $(seq 0 19); do echo --number n${a}_$k; done) <<< 'password'
//! done
//! keyline-directory --state /tmp/d serve --listen 127.0.0.1:7480 &
//! cargo run --release -p keyline-directory --example load -- 127.0.0.1:7480 500 20 password PID
//! ```
//!
//! Accounts `load<a>` own numbers `n<a>_<k>`. Each number gets its own
//! QUIC connection (as separate endpoints would), which resumes its
//! account's session and registers that one number.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use keyline_directory::client::{parse_number, DirClient};
use keyline_net::Identity;

fn rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .context("VmRSS");
        }
    }
    bail!("no VmRSS for {pid}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, accounts, per_account, password, pid] = args.as_slice() else {
        bail!("usage: load DIRECTORY_ADDR ACCOUNTS NUMBERS_PER_ACCOUNT PASSWORD DIRECTORY_PID");
    };
    let addr: SocketAddr = addr.parse().context("directory address")?;
    if !addr.ip().is_loopback() {
        bail!("load tests run against loopback only");
    }
    let accounts: usize = accounts.parse().context("accounts")?;
    let per_account: usize = per_account.parse().context("numbers per account")?;
    let n = accounts * per_account;
    let before = rss_kib(pid)?;
    let id = std::sync::Arc::new(Identity::generate("load")?);
    let ep = keyline_net::make_endpoint("127.0.0.1:0".parse()?, &id)?;
    let (first, _ev) = DirClient::connect(&ep, &id, addr, None).await?;
    let mut tokens = Vec::with_capacity(accounts);
    for a in 0..accounts {
        tokens.push(first.login(&format!("load{a}"), password).await?.token);
    }
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    for (a, token) in tokens.iter().enumerate() {
        for k in 0..per_account {
            let (ep, token, id) = (ep.clone(), token.clone(), id.clone());
            set.spawn(async move {
                let (c, ev) = DirClient::connect(&ep, &id, addr, None).await?;
                c.resume(&token).await?;
                let number = format!("n{a}_{k}");
                c.register(&[parse_number(&number)?], vec![]).await?;
                Ok::<_, anyhow::Error>((c, ev))
            });
            // Keep at most 32 handshakes in flight.
            while set.len() >= 32 {
                if let Some(r) = set.join_next().await {
                    clients.push(r??);
                }
            }
        }
    }
    while let Some(r) = set.join_next().await {
        clients.push(r??);
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid)?;
    println!(
        "{n} bindings registered in {took:?}; directory RSS {before} KiB before, {after} KiB after ({:.1} KiB per binding)",
        (after.saturating_sub(before)) as f64 / n.max(1) as f64
    );
    drop(clients);
    Ok(())
}
