//! Which addresses are the gateway's LAN side, where the admin site
//! listens unless `[admin] listen` says otherwise.
//!
//! The LAN side of an appliance is decided from its interfaces and its
//! routes ([`lan_addresses`], pure; [`read`] reads them from the kernel,
//! and a failure to read them leaves the site on loopback alone):
//!
//! - only interfaces that are up *and* running (carrier present) count:
//!   an idle `docker0` or `virbr0` (up, no carrier) never does;
//! - an interface that carries the way out — a default route, or the
//!   route towards the configured directory — is the WAN side, unless
//!   its default route goes through a gateway that is itself a private
//!   address: then the appliance sits behind the office's router
//!   (one-armed) and that interface is the LAN too;
//! - the LAN side is the private addresses (10/8, 172.16/12, 192.168/16,
//!   169.254/16, fc00::/7) of the other running interfaces, and of the
//!   one-armed interface above; an interface without a private address
//!   (a VPN's `tailscale0` on 100.64/10) adds nothing;
//! - on a box whose every running interface carries the way out through
//!   a public or unknown gateway (one network card), the private
//!   addresses of that interface;
//! - and always loopback.
//!
//! A two-armed router whose WAN sits behind another router on a private
//! network (an ISP's box at 192.168.0.1) therefore also counts its WAN's
//! private address; set `[admin] listen` to name the LAN address alone
//! there.
//!
//! Public addresses are never part of it, whichever interface they are on
//! (the default `[admin] allow` refuses them anyway), nor are IPv6
//! link-local addresses (they need an interface to be named). An address
//! not in the set is not listened on, so a connection to it is refused by
//! the kernel before any TLS or page.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub up: bool,
    /// IFF_RUNNING: the link has a carrier (an idle bridge has none).
    pub running: bool,
    pub loopback: bool,
    pub addrs: Vec<IpAddr>,
}

/// One route of the main routing table: `dest/prefix` through `iface`,
/// by way of `gateway` when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub dest: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
}

/// Private, in the sense of the default LAN: RFC 1918, IPv4 link-local,
/// unique-local IPv6. Not loopback (handled on its own).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn prefix_contains(dest: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (dest, ip) {
        (IpAddr::V4(d), IpAddr::V4(i)) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            (u32::from(d) & mask) == (u32::from(i) & mask)
        }
        (IpAddr::V6(d), IpAddr::V6(i)) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            (u128::from(d) & mask) == (u128::from(i) & mask)
        }
        _ => false,
    }
}

/// The interface the kernel would send to `ip` through (longest prefix
/// of the main table).
pub fn route_to(routes: &[Route], ip: IpAddr) -> Option<&str> {
    routes
        .iter()
        .filter(|r| prefix_contains(r.dest, r.prefix, ip))
        .max_by_key(|r| r.prefix)
        .map(|r| r.iface.as_str())
}

/// The WAN side: interfaces of the default routes and of the routes
/// towards `toward` (the directory's addresses). Loopback never is.
pub fn wan_interfaces(routes: &[Route], toward: &[IpAddr]) -> BTreeSet<String> {
    let mut wan: BTreeSet<String> = routes
        .iter()
        .filter(|r| r.prefix == 0)
        .map(|r| r.iface.clone())
        .collect();
    for ip in toward {
        if let Some(i) = route_to(routes, *ip) {
            wan.insert(i.to_string());
        }
    }
    wan.remove("lo");
    wan
}

/// Interfaces whose default route goes through a private gateway: the
/// appliance sits behind the office's router, and that network is the
/// LAN even though the way out runs through it.
pub fn one_armed_interfaces(routes: &[Route]) -> BTreeSet<String> {
    routes
        .iter()
        .filter(|r| r.prefix == 0 && r.gateway.is_some_and(is_private))
        .map(|r| r.iface.clone())
        .filter(|i| i != "lo")
        .collect()
}

/// The LAN side's addresses (see the module's description), sorted,
/// loopback first. `wan` comes from [`wan_interfaces`], `one_armed` from
/// [`one_armed_interfaces`].
pub fn lan_addresses(
    ifaces: &[Iface],
    wan: &BTreeSet<String>,
    one_armed: &BTreeSet<String>,
) -> Vec<IpAddr> {
    let mut out: BTreeSet<(bool, IpAddr)> = BTreeSet::new();
    for i in ifaces.iter().filter(|i| i.up && i.loopback) {
        for a in i.addrs.iter().filter(|a| a.is_loopback()) {
            out.insert((false, *a));
        }
    }
    if out.is_empty() {
        out.insert((false, IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    let has_private = |i: &&Iface| i.addrs.iter().any(|a| is_private(*a));
    let others: Vec<&Iface> = ifaces
        .iter()
        .filter(|i| i.up && i.running && !i.loopback)
        .filter(has_private)
        .collect();
    let lan: Vec<&Iface> = others
        .iter()
        .copied()
        .filter(|i| !wan.contains(&i.name) || one_armed.contains(&i.name))
        .collect();
    let chosen: Vec<&Iface> = if lan.is_empty() { others } else { lan };
    for i in chosen {
        for a in i.addrs.iter().filter(|a| is_private(**a)) {
            out.insert((true, *a));
        }
    }
    out.into_iter().map(|(_, a)| a).collect()
}

/// Routes of `/proc/net/route` (IPv4, main table).
pub fn parse_route_v4(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (iface, dest, gw, flags, mask) =
                (f.first()?, f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
            // RTF_UP
            if u32::from_str_radix(flags, 16).ok()? & 1 == 0 {
                return None;
            }
            // Little-endian hex, as the kernel prints an in-memory u32.
            let dest = Ipv4Addr::from(u32::from_str_radix(dest, 16).ok()?.swap_bytes());
            let mask = u32::from_str_radix(mask, 16).ok()?.swap_bytes();
            if mask.leading_ones() + mask.trailing_zeros() != 32 {
                return None;
            }
            // RTF_GATEWAY (0x2) with a non-zero gateway field.
            let gw = Ipv4Addr::from(u32::from_str_radix(gw, 16).ok()?.swap_bytes());
            let gateway = (u32::from_str_radix(flags, 16).ok()? & 2 != 0 && !gw.is_unspecified())
                .then_some(IpAddr::V4(gw));
            Some(Route {
                iface: (*iface).to_string(),
                dest: IpAddr::V4(dest),
                prefix: mask.leading_ones() as u8,
                gateway,
            })
        })
        .collect()
}

/// Routes of `/proc/net/ipv6_route` (main table; unreachable and loopback
/// routes left out).
pub fn parse_route_v6(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let dest = Ipv6Addr::from(u128::from_str_radix(f[0], 16).ok()?);
            let prefix = u8::from_str_radix(f[1], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            // RTF_UP, and not RTF_REJECT (0x0200).
            if flags & 1 == 0 || flags & 0x0200 != 0 || f[9] == "lo" {
                return None;
            }
            // Field 4 is the next hop; RTF_GATEWAY (0x2) says it is one.
            let hop = Ipv6Addr::from(u128::from_str_radix(f[4], 16).ok()?);
            let gateway = (flags & 2 != 0 && !hop.is_unspecified()).then_some(IpAddr::V6(hop));
            Some(Route {
                iface: f[9].to_string(),
                dest: IpAddr::V6(dest),
                prefix: prefix.min(128),
                gateway,
            })
        })
        .collect()
}

/// The interfaces and routes the kernel has now (getifaddrs, and the
/// route tables of this process's network namespace,
/// `/proc/self/net/route` and `/proc/self/net/ipv6_route`: the packaged
/// service runs with `ProcSubset=pid`, which hides `/proc/net` but not
/// `/proc/self`).
pub fn read() -> std::io::Result<(Vec<Iface>, Vec<Route>)> {
    use nix::net::if_::InterfaceFlags;
    let mut ifaces: Vec<Iface> = Vec::new();
    for a in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let ip = a.address.as_ref().and_then(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        });
        let i = match ifaces.iter_mut().position(|i| i.name == a.interface_name) {
            Some(n) => &mut ifaces[n],
            None => {
                ifaces.push(Iface {
                    name: a.interface_name.clone(),
                    up: a.flags.contains(InterfaceFlags::IFF_UP),
                    running: a.flags.contains(InterfaceFlags::IFF_RUNNING),
                    loopback: a.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                    addrs: Vec::new(),
                });
                let n = ifaces.len() - 1;
                &mut ifaces[n]
            }
        };
        if let Some(ip) = ip {
            i.addrs.push(ip);
        }
    }
    let mut routes = Vec::new();
    // IPv4's table is always there; IPv6's only with IPv6 on.
    let v4 = std::fs::read_to_string("/proc/self/net/route")?;
    routes.extend(parse_route_v4(&v4));
    if let Ok(t) = std::fs::read_to_string("/proc/self/net/ipv6_route") {
        routes.extend(parse_route_v6(&t));
    }
    Ok((ifaces, routes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn iface(name: &str, addrs: &[&str]) -> Iface {
        Iface {
            name: name.into(),
            up: true,
            running: true,
            loopback: name == "lo",
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        }
    }

    fn route(iface: &str, net: &str) -> Route {
        let (d, p) = net.split_once('/').unwrap();
        Route {
            iface: iface.into(),
            dest: ip(d),
            prefix: p.parse().unwrap(),
            gateway: None,
        }
    }

    fn via(iface: &str, net: &str, gw: &str) -> Route {
        Route {
            gateway: Some(ip(gw)),
            ..route(iface, net)
        }
    }

    /// The addresses as the service computes them from these parts.
    fn lan(ifaces: &[Iface], routes: &[Route]) -> Vec<IpAddr> {
        let wan = wan_interfaces(routes, &[]);
        lan_addresses(ifaces, &wan, &one_armed_interfaces(routes))
    }

    fn lo() -> Iface {
        iface("lo", &["127.0.0.1", "::1"])
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|a| ip(a)).collect()
    }

    #[test]
    fn the_interface_with_the_default_route_is_the_wan() {
        let ifaces = [
            lo(),
            iface("lan0", &["192.168.1.1", "fd00::1", "fe80::1"]),
            iface("wan0", &["198.51.100.7", "10.0.0.2"]),
        ];
        let routes = [
            route("lan0", "192.168.1.0/24"),
            route("wan0", "198.51.100.0/24"),
            route("wan0", "0.0.0.0/0"),
        ];
        let wan = wan_interfaces(&routes, &[]);
        assert_eq!(wan, BTreeSet::from(["wan0".to_string()]));
        // The WAN's private address (an ISP router's network) is not LAN.
        assert_eq!(
            lan_addresses(&ifaces, &wan, &BTreeSet::new()),
            ips(&["127.0.0.1", "::1", "192.168.1.1", "fd00::1"])
        );
    }

    #[test]
    fn the_route_towards_the_directory_marks_the_wan_too() {
        let ifaces = [
            lo(),
            iface("eth0", &["10.1.0.1"]),
            iface("eth1", &["10.9.0.5"]),
        ];
        // No default route; the directory is reached through eth1.
        let routes = [
            route("eth0", "10.1.0.0/16"),
            route("eth1", "10.9.0.0/24"),
            route("eth1", "203.0.113.0/24"),
        ];
        let wan = wan_interfaces(&routes, &[ip("203.0.113.10")]);
        assert_eq!(wan, BTreeSet::from(["eth1".to_string()]));
        assert_eq!(
            lan_addresses(&ifaces, &wan, &BTreeSet::new()),
            ips(&["127.0.0.1", "::1", "10.1.0.1"])
        );
        // The longest prefix wins.
        let routes = [route("eth0", "0.0.0.0/0"), route("eth1", "203.0.113.0/24")];
        assert_eq!(route_to(&routes, ip("203.0.113.10")), Some("eth1"));
        assert_eq!(route_to(&routes, ip("8.8.8.8")), Some("eth0"));
        assert_eq!(route_to(&routes, ip("::1")), None);
    }

    #[test]
    fn one_interface_gives_its_private_addresses() {
        let ifaces = [lo(), iface("eth0", &["192.168.5.20", "2001:db8::20"])];
        let wan = wan_interfaces(&[route("eth0", "0.0.0.0/0"), route("eth0", "::/0")], &[]);
        assert_eq!(
            lan_addresses(&ifaces, &wan, &BTreeSet::new()),
            ips(&["127.0.0.1", "::1", "192.168.5.20"])
        );
    }

    #[test]
    fn without_any_route_out_public_addresses_still_are_not_lan() {
        let ifaces = [
            lo(),
            iface("lan0", &["10.78.0.1"]),
            iface("wan0", &["203.0.113.1"]),
        ];
        let wan = wan_interfaces(&[], &[]);
        assert!(wan.is_empty());
        assert_eq!(
            lan_addresses(&ifaces, &wan, &BTreeSet::new()),
            ips(&["127.0.0.1", "::1", "10.78.0.1"])
        );
    }

    #[test]
    fn interfaces_that_are_down_and_a_missing_loopback() {
        let mut down = iface("lan1", &["10.2.0.1"]);
        down.up = false;
        let ifaces = [iface("lan0", &["172.16.0.1", "172.32.0.1"]), down];
        assert_eq!(
            lan_addresses(&ifaces, &BTreeSet::new(), &BTreeSet::new()),
            ips(&["127.0.0.1", "172.16.0.1"])
        );
        // Loopback never counts as the WAN.
        assert!(wan_interfaces(&[route("lo", "0.0.0.0/0")], &[]).is_empty());
    }

    #[test]
    fn the_kernels_route_tables_are_read() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  wan0\t00000000\t010071CB\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  lan0\t00004E0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  down0\t0000010A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  bad0\tzz\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_route_v4(v4),
            vec![
                via("wan0", "0.0.0.0/0", "203.113.0.1"),
                route("lan0", "10.78.0.0/24")
            ]
        );
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     lan0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000001 00000000 00000003     wan0\n\
                  00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(
            parse_route_v6(v6),
            vec![
                route("lan0", "fd00::/64"),
                via("wan0", "::/0", "2001:db8::1")
            ]
        );
    }

    #[test]
    fn one_armed_behind_the_office_router_and_an_idle_docker_bridge() {
        let mut docker = iface("docker0", &["172.17.0.1"]);
        docker.running = false; // up, NO-CARRIER: no container runs
        let ifaces = [lo(), iface("eth0", &["192.168.1.10"]), docker];
        let routes = [
            via("eth0", "0.0.0.0/0", "192.168.1.1"),
            route("eth0", "192.168.1.0/24"),
            route("docker0", "172.17.0.0/16"),
        ];
        assert_eq!(
            one_armed_interfaces(&routes),
            BTreeSet::from(["eth0".to_string()])
        );
        assert_eq!(
            lan(&ifaces, &routes),
            ips(&["127.0.0.1", "::1", "192.168.1.10"])
        );
        // With a container running, docker0 counts too, and eth0 still does.
        let mut ifaces = ifaces;
        ifaces[2].running = true;
        assert_eq!(
            lan(&ifaces, &routes),
            ips(&["127.0.0.1", "::1", "172.17.0.1", "192.168.1.10"])
        );
    }

    #[test]
    fn two_nics_the_wan_with_a_public_gateway_is_left_out() {
        let ifaces = [
            lo(),
            iface("wan0", &["198.51.100.7"]),
            iface("lan0", &["10.78.0.1"]),
        ];
        let routes = [
            via("wan0", "0.0.0.0/0", "198.51.100.1"),
            route("wan0", "198.51.100.0/24"),
            route("lan0", "10.78.0.0/24"),
        ];
        assert!(one_armed_interfaces(&routes).is_empty());
        assert_eq!(
            lan(&ifaces, &routes),
            ips(&["127.0.0.1", "::1", "10.78.0.1"])
        );
    }

    #[test]
    fn a_vpn_without_a_private_address_is_ignored() {
        // Before: tailscale0 (up, running, 100.64/10 only) won over eth0,
        // and the site listened on loopback alone.
        let ifaces = [
            lo(),
            iface("eth0", &["192.168.1.10"]),
            iface("tailscale0", &["100.100.1.2", "fd7a:115c:a1e0::2"]),
        ];
        let routes = [via("eth0", "0.0.0.0/0", "192.168.1.1")];
        // Its ULA address is private, so it counts; its CGNAT one never.
        assert_eq!(
            lan(&ifaces, &routes),
            ips(&["127.0.0.1", "::1", "192.168.1.10", "fd7a:115c:a1e0::2"])
        );
        let ifaces = [
            lo(),
            iface("eth0", &["192.168.1.10"]),
            iface("wg0", &["100.100.1.2"]),
        ];
        // The one-NIC fallback stays: a public gateway, no other LAN.
        let routes = [via("eth0", "0.0.0.0/0", "203.0.113.1")];
        assert_eq!(
            lan(&ifaces, &routes),
            ips(&["127.0.0.1", "::1", "192.168.1.10"])
        );
    }
}
