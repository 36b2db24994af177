//! Who may reach the admin site: networks from `[admin] allow`, or by
//! default the LAN (private, loopback, link-local and unique-local
//! addresses). Anyone else is refused before any page is served.

use std::net::IpAddr;

/// One allowed network, `ADDR/PREFIX` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    pub fn parse(s: &str) -> Result<Net, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix {p:?} must be 0 to {max}"))?,
            None => max,
        };
        Ok(Net { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address mapped into IPv6 as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

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
