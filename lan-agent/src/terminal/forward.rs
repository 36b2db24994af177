//! Server-side forwarding from the command line (`keyline-agent forward
//! set|off|list`, claim 8): the control commands become the directory's
//! `SetForward` (one per condition named), `ForwardOff` and
//! `ListForwards`; every reply carries the rules as they now stand, the
//! same the web site shows and the next call follows.

use std::sync::Arc;

use keyline_dirclient::client::parse_number;
use keyline_net::control;
use keyline_proto::dir::{ForwardRule, ForwardWhen};
use serde_json::{json, Value};

use super::Terminal;
use crate::api::Request;

/// A condition as the command line names it (`offline` is the protocol's
/// `unregistered`).
fn condition(s: &str) -> Option<ForwardWhen> {
    ForwardWhen::parse(s)
}

/// What a `forward-set` or `forward-off` request asks for, checked before
/// anything is sent: the conditions (with targets for `forward-set`).
fn parse(req: &Request) -> Result<Vec<(ForwardWhen, Option<String>)>, String> {
    match req {
        Request::ForwardSet { rules, .. } => {
            if rules.is_empty() {
                return Err("forward set needs at least one condition and its target".into());
            }
            rules
                .iter()
                .map(|r| {
                    let when =
                        condition(&r.when).ok_or(format!("unknown condition {:?}", r.when))?;
                    if r.to.trim().is_empty() {
                        return Err(format!("no target for {}", when.as_str()));
                    }
                    Ok((when, Some(r.to.clone())))
                })
                .collect()
        }
        Request::ForwardOff { conditions, .. } => conditions
            .iter()
            .map(|c| {
                condition(c)
                    .map(|w| (w, None))
                    .ok_or(format!("unknown condition {c:?}"))
            })
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// The forwarding commands of the control socket.
pub(super) async fn control(t: &Arc<Terminal>, req: &Request) -> Value {
    let (client, first) = {
        let st = t.lock();
        (st.client.clone(), st.link.numbers.first().cloned())
    };
    let Some(client) = client else {
        return control::error("not connected to the directory");
    };
    if let Request::ForwardSet { number, .. } | Request::ForwardOff { number, .. } = req {
        let asked = match parse(req) {
            Ok(a) => a,
            Err(e) => return control::error(e),
        };
        let Some(number) = number.clone().or(first) else {
            return control::error("no number registered yet; name one with --number");
        };
        let number = match parse_number(&number) {
            Ok(n) => n,
            Err(e) => return control::error(e.to_string()),
        };
        let done = if asked.is_empty() {
            client.forward_off(&number, None).await
        } else {
            let mut done = Ok(());
            for (when, to) in asked {
                done = match to {
                    Some(to) => {
                        client
                            .set_forward(&number, Some(ForwardRule::new(when, to)))
                            .await
                    }
                    None => client.forward_off(&number, Some(when)).await,
                };
                if done.is_err() {
                    break;
                }
            }
            done
        };
        if let Err(e) = done {
            return control::error(format!("forwarding of {number}: {e}"));
        }
    }
    match client.forwards().await {
        Ok(numbers) => json!({"ok": true, "numbers": numbers}),
        Err(e) => control::error(format!("listing the forwarding rules: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_request;

    #[test]
    fn requests_are_checked_before_anything_is_sent() {
        let req = |v: Value| parse_request(v).expect("a forwarding request");
        let set = req(json!({"cmd": "forward-set", "rules": [
            {"when": "busy", "to": "3003"}, {"when": "offline", "to": "2002"}]}));
        assert_eq!(
            parse(&set),
            Ok(vec![
                (ForwardWhen::Busy, Some("3003".into())),
                (ForwardWhen::Unregistered, Some("2002".into()))
            ])
        );
        let off = req(json!({"cmd": "forward-off", "conditions": ["no-answer", "always"]}));
        assert_eq!(
            parse(&off),
            Ok(vec![
                (ForwardWhen::NoAnswer, None),
                (ForwardWhen::Always, None)
            ])
        );
        assert_eq!(parse(&req(json!({"cmd": "forward-off"}))), Ok(vec![]));
        assert!(parse(&req(json!({"cmd": "forward-set", "rules": []}))).is_err());
        assert!(parse(&req(
            json!({"cmd": "forward-set", "rules": [{"when": "sometimes", "to": "1"}]})
        ))
        .is_err());
        assert!(parse(&req(
            json!({"cmd": "forward-set", "rules": [{"when": "busy", "to": " "}]})
        ))
        .is_err());
        assert!(parse(&req(json!({"cmd": "forward-off", "conditions": ["later"]}))).is_err());
    }
}
