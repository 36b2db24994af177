//! Server-side forwarding from the command line (`keyline-agent forward
//! set|off|list`, claim 8): the control commands become the directory's
//! `SetForward` (one per condition named), `ForwardOff` and
//! `ListForwards`; every reply carries the rules as they now stand, the
//! same the web site shows and the next call follows.

use std::sync::Arc;

use keyline_net::control;
use keyline_proto::dir::{ForwardRule, ForwardWhen};
use serde_json::{json, Value};

use super::Terminal;

/// A condition as the command line names it (`offline` is the protocol's
/// `unregistered`).
fn condition(s: &str) -> Option<ForwardWhen> {
    ForwardWhen::parse(s)
}

/// What a `forward-set` or `forward-off` request asks for, checked before
/// anything is sent: the conditions (with targets for `forward-set`).
fn parse(req: &Value) -> Result<Vec<(ForwardWhen, Option<String>)>, String> {
    let list = |key: &str| req.get(key).and_then(Value::as_array).cloned();
    match req.get("cmd").and_then(Value::as_str).unwrap_or("") {
        "forward-set" => {
            let rules = list("rules").unwrap_or_default();
            if rules.is_empty() {
                return Err("forward set needs at least one condition and its target".into());
            }
            rules
                .iter()
                .map(|r| {
                    let when = r.get("when").and_then(Value::as_str).unwrap_or("");
                    let when = condition(when).ok_or(format!("unknown condition {when:?}"))?;
                    let to = r
                        .get("to")
                        .and_then(Value::as_str)
                        .filter(|t| !t.trim().is_empty())
                        .ok_or(format!("no target for {}", when.as_str()))?;
                    Ok((when, Some(to.to_string())))
                })
                .collect()
        }
        _ => list("conditions")
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let c = c.as_str().unwrap_or("");
                condition(c)
                    .map(|w| (w, None))
                    .ok_or(format!("unknown condition {c:?}"))
            })
            .collect(),
    }
}

/// The forwarding commands of the control socket.
pub(super) async fn control(t: &Arc<Terminal>, req: &Value) -> Value {
    let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
    let (client, first) = {
        let st = t.lock();
        (st.client.clone(), st.link.numbers.first().cloned())
    };
    let Some(client) = client else {
        return control::error("not connected to the directory");
    };
    if cmd != "forward-list" {
        let asked = match parse(req) {
            Ok(a) => a,
            Err(e) => return control::error(e),
        };
        let Some(number) = req
            .get("number")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or(first)
        else {
            return control::error("no number registered yet; name one with --number");
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

    #[test]
    fn requests_are_checked_before_anything_is_sent() {
        let set = json!({"cmd": "forward-set", "rules": [
            {"when": "busy", "to": "3003"}, {"when": "offline", "to": "2002"}]});
        assert_eq!(
            parse(&set),
            Ok(vec![
                (ForwardWhen::Busy, Some("3003".into())),
                (ForwardWhen::Unregistered, Some("2002".into()))
            ])
        );
        let off = json!({"cmd": "forward-off", "conditions": ["no-answer", "always"]});
        assert_eq!(
            parse(&off),
            Ok(vec![
                (ForwardWhen::NoAnswer, None),
                (ForwardWhen::Always, None)
            ])
        );
        assert_eq!(parse(&json!({"cmd": "forward-off"})), Ok(vec![]));
        assert!(parse(&json!({"cmd": "forward-set", "rules": []})).is_err());
        assert!(
            parse(&json!({"cmd": "forward-set", "rules": [{"when": "sometimes", "to": "1"}]}))
                .is_err()
        );
        assert!(
            parse(&json!({"cmd": "forward-set", "rules": [{"when": "busy", "to": " "}]})).is_err()
        );
        assert!(parse(&json!({"cmd": "forward-off", "conditions": ["later"]})).is_err());
    }
}
