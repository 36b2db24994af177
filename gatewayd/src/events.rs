//! Publishing the gateway's [`Event`]s: to control-socket subscribers
//! (each with its own bounded queue, [`keyline_net::control::Events`]) and
//! to the admin site's server-sent event streams (a bounded broadcast
//! channel of serialised lines; a lagging page is dropped).

use keyline_net::control;
use tokio::sync::broadcast;

use crate::api::Event;

/// Lines a web page's stream may fall behind before it is dropped.
pub const WEB_QUEUE: usize = 256;

/// Where the gateway's events go.
#[derive(Debug, Clone)]
pub struct Publisher {
    control: control::Events,
    web: broadcast::Sender<String>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new()
    }
}

impl Publisher {
    pub fn new() -> Publisher {
        let (web, _) = broadcast::channel(WEB_QUEUE);
        Publisher {
            control: control::Events::new(),
            web,
        }
    }

    /// What the control socket streams to `subscribe`rs.
    pub fn control(&self) -> control::Events {
        self.control.clone()
    }

    /// A stream of serialised events for one web page.
    pub fn web(&self) -> broadcast::Receiver<String> {
        self.web.subscribe()
    }

    /// Send `ev` to every subscriber; never waits.
    pub fn publish(&self, ev: &Event) {
        let Ok(v) = serde_json::to_value(ev) else {
            return;
        };
        if self.web.receiver_count() > 0 {
            let _ = self.web.send(v.to_string());
        }
        self.control.publish(v);
    }
}
