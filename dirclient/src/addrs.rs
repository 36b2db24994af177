//! Where a directory is: one or more addresses (`HOST:PORT`, comma-
//! separated), each name resolved to all of its addresses, tried in turn.
//! The nodes of a directory cluster are equivalent, so an endpoint that
//! lost one tries the others first.

use std::net::SocketAddr;

/// Every address `list` names, in order, without repeats: each entry is
/// `HOST:PORT` (a name with several A/AAAA records gives them all).
/// Fails only when no entry resolves; what did not resolve is said.
pub async fn resolve(list: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut errors = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match tokio::net::lookup_host(entry).await {
            Ok(addrs) => {
                let before = out.len();
                for a in addrs {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
                if out.len() == before {
                    errors.push(format!("{entry} resolves to no address"));
                }
            }
            Err(e) => errors.push(format!("cannot resolve the directory address {entry}: {e}")),
        }
    }
    if out.is_empty() {
        if errors.is_empty() {
            errors.push("no directory address given".into());
        }
        return Err(errors.join("; "));
    }
    for e in &errors {
        tracing::warn!("{e}");
    }
    Ok(out)
}

/// `addrs` in the order to try them after losing the connection to
/// `lost`: the ones after it first, it last.
pub fn after(mut addrs: Vec<SocketAddr>, lost: Option<SocketAddr>) -> Vec<SocketAddr> {
    if let Some(i) = lost.and_then(|l| addrs.iter().position(|a| *a == l)) {
        addrs.rotate_left(i + 1);
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[tokio::test]
    async fn several_entries_in_order_without_repeats() {
        let got = resolve("127.0.0.1:7480, 127.0.0.2:7480,127.0.0.1:7480")
            .await
            .expect("resolve");
        assert_eq!(got, vec![a("127.0.0.1:7480"), a("127.0.0.2:7480")]);
        assert!(resolve("").await.is_err());
        let e = resolve("no-such-host.invalid:1").await.expect_err("none");
        assert!(e.contains("no-such-host.invalid"), "{e}");
        // One bad entry among good ones costs only itself.
        let got = resolve("no-such-host.invalid:1,127.0.0.3:9")
            .await
            .expect("one");
        assert_eq!(got, vec![a("127.0.0.3:9")]);
    }

    #[test]
    fn the_lost_address_goes_last() {
        let v = vec![a("10.0.0.1:1"), a("10.0.0.2:1"), a("10.0.0.3:1")];
        assert_eq!(
            after(v.clone(), Some(a("10.0.0.1:1"))),
            vec![a("10.0.0.2:1"), a("10.0.0.3:1"), a("10.0.0.1:1")]
        );
        assert_eq!(
            after(v.clone(), Some(a("10.0.0.3:1"))),
            v,
            "after the last, from the first"
        );
        assert_eq!(after(v.clone(), None), v);
        assert_eq!(after(v.clone(), Some(a("10.9.9.9:1"))), v);
    }
}
