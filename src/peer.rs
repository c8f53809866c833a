//! Who the client is: the peer address of the connection, or the address a
//! trusted proxy says it forwarded for.
//!
//! Per-address limits are only as good as the address. Behind nginx every
//! connection comes from nginx, so the client is in `X-Real-IP` (or
//! `X-Forwarded-For`); but anyone can send those headers, so they are read
//! only when the peer itself is in `http.trusted_proxies`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::config::Network;

/// The client address of a request: from the forwarding headers when the
/// peer is a trusted proxy, the peer's own address otherwise.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return canonical(peer);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ip) = header("x-real-ip").and_then(|v| v.trim().parse::<IpAddr>().ok()) {
        return canonical(ip);
    }
    if let Some(list) = header("x-forwarded-for") {
        // Each proxy appends the address it saw; the rightmost address
        // that is not one of our proxies is the client.
        let hops: Vec<IpAddr> = list
            .split(',')
            .map_while(|h| h.trim().parse::<IpAddr>().ok())
            .collect();
        if let Some(ip) = hops
            .iter()
            .rev()
            .find(|ip| !is_trusted(**ip))
            .or(hops.first())
        {
            return canonical(*ip);
        }
    }
    canonical(peer)
}

/// The client address of a request served by this node's listener (which
/// records the peer of every connection).
pub fn of_request(parts: &Parts, trusted: &[Network]) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    client_ip(peer, &parts.headers, trusted)
}

/// IPv4-mapped IPv6 addresses as IPv4, so one client has one key.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_count_only_from_a_trusted_proxy() {
        let trusted: Vec<Network> = vec!["127.0.0.1".parse().unwrap()];
        let h = headers(&[("x-real-ip", "203.0.113.9")]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        assert_eq!(
            client_ip(ip("198.51.100.7"), &h, &trusted),
            ip("198.51.100.7"),
            "anyone else's header is ignored"
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_for_is_read_from_the_right() {
        let trusted: Vec<Network> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client forged the first hop; our proxies added the others.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        let garbage = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.1")
        );
        let mapped = headers(&[("x-real-ip", "::ffff:203.0.113.9")]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &mapped, &trusted),
            ip("203.0.113.9")
        );
    }
}
