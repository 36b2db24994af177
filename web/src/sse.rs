//! Server-sent events from a daemon's event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};

/// A page's event stream: each message (already JSON) becomes one `data:`
/// event. A client that falls behind the channel's capacity gets one
/// `event: dropped` and the stream ends (the page reloads its state and
/// subscribes again); nobody else waits for it.
pub fn from_broadcast(
    rx: broadcast::Receiver<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(json) => Some((Ok(Event::default().data(json)), Some(rx))),
            Err(RecvError::Lagged(n)) => Some((
                Ok(Event::default()
                    .event("dropped")
                    .data(format!("{{\"missed\":{n}}}"))),
                None,
            )),
            Err(RecvError::Closed) => None,
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
