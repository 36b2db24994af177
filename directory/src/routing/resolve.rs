//! Server-side forwarding: where a dialled number ends up.

use super::NumberInfo;
use keyline_proto::dir::{ErrorCode, ForwardWhen};

/// Where a dialled number ends up after server-side forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The number that rings.
    pub number: String,
    /// The numbers forwarded from, in order (the dialled one first).
    pub via: Vec<String>,
}

/// Why a number could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{} is not a known number", .number)]
    Unknown { number: String, via: Vec<String> },
    #[error("forwarding loop: {}", chain.join(" -> "))]
    Loop { chain: Vec<String> },
    #[error("too many forwards (more than {max}): {}", chain.join(" -> "))]
    TooManyHops { chain: Vec<String>, max: usize },
}

impl RouteError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RouteError::Unknown { .. } => ErrorCode::UnknownNumber,
            RouteError::Loop { .. } => ErrorCode::ForwardLoop,
            RouteError::TooManyHops { .. } => ErrorCode::TooManyHops,
        }
    }
}

/// Apply server-side forwarding to `start`: follow `always` rules (before
/// any other), `unregistered` rules of numbers that `bound` says have no
/// binding and `busy` rules of numbers set to do-not-disturb, at most
/// `max_hops` times, refusing cycles. Only rules that are on count. (`busy` rules otherwise, and `no-answer`
/// rules, apply once the number has rung: see [`Router::handle_decline`]
/// and [`Router::handle_timeout`].)
pub fn resolve<'a>(
    start: &str,
    max_hops: usize,
    info: impl Fn(&str) -> Option<&'a NumberInfo>,
    bound: impl Fn(&str) -> bool,
) -> Result<Resolved, RouteError> {
    let mut via: Vec<String> = Vec::new();
    let mut cur = start.to_string();
    loop {
        let Some(ni) = info(&cur) else {
            return Err(RouteError::Unknown { number: cur, via });
        };
        let next = ni
            .forward(ForwardWhen::Always)
            .or_else(|| {
                ni.forward(ForwardWhen::Unregistered)
                    .filter(|_| !bound(&cur))
            })
            .or_else(|| ni.forward(ForwardWhen::Busy).filter(|_| ni.dnd))
            .map(str::to_string);
        let Some(next) = next else {
            return Ok(Resolved { number: cur, via });
        };
        via.push(cur);
        if next == start || via.contains(&next) {
            let mut chain = via;
            chain.push(next);
            return Err(RouteError::Loop { chain });
        }
        if via.len() > max_hops {
            let mut chain = via;
            chain.push(next);
            return Err(RouteError::TooManyHops {
                chain,
                max: max_hops,
            });
        }
        cur = next;
    }
}
