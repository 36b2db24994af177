//! Who may reach the admin site: networks from `[admin] allow`, or by
//! default the LAN (private, loopback, link-local and unique-local
//! addresses). Anyone else is refused before any page is served.

use std::net::IpAddr;

use keyline_net::ipnet::canonical;
pub use keyline_net::ipnet::Net;

/// The LAN side by default: loopback, private, link-local, unique-local.
pub fn is_lan(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => a.is_loopback() || a.is_private() || a.is_link_local(),
        IpAddr::V6(a) => {
            a.is_loopback()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Who may use the site.
#[derive(Debug, Clone, Default)]
pub struct Access {
    allow: Vec<Net>,
}

impl Access {
    /// From `[admin] allow` (already validated; a bad entry is skipped).
    pub fn new(allow: &[String]) -> Access {
        Access {
            allow: allow.iter().filter_map(|s| Net::parse(s).ok()).collect(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.allow.is_empty() {
            is_lan(ip)
        } else {
            self.allow.iter().any(|n| n.contains(ip))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_the_default_lan() {
        let n = Net::parse("10.1.0.0/16").unwrap();
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")));
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("example").is_err());
        assert!(Net::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let d = Access::default();
        assert!(d.allows(ip("192.168.1.20")));
        assert!(d.allows(ip("127.0.0.1")));
        assert!(d.allows(ip("fd00::1")));
        assert!(!d.allows(ip("203.0.113.9")));
        assert!(!d.allows(ip("2001:db8::1")));
        let only = Access::new(&["192.168.7.0/24".into()]);
        assert!(only.allows(ip("192.168.7.1")));
        assert!(!only.allows(ip("192.168.8.1")));
    }
}
