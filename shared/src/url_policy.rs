//! Which destinations a webhook may be sent to (the SSRF guard).
//!
//! Private, loopback, link-local, multicast, CGNAT, benchmark, documentation, reserved,
//! unique-local, site-local and unspecified addresses are refused, in every IPv6 spelling of an
//! IPv4 address (mapped, compatible, NAT64, 6to4, Teredo), unless the operator allows private
//! destinations or names CIDRs.
//!
//! The platform ranges (link-local, where every cloud keeps its metadata and credential
//! services, and the few metadata, DNS and wire-server addresses clouds keep elsewhere) are
//! refused whatever `IH_ALLOW_PRIVATE_DESTINATIONS` says: only an allowed CIDR that lies
//! inside one of them, named on purpose, opens it.
//!
//! The API checks a subscription URL's literal host when it is created or changed; the worker
//! checks every resolved address before it connects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Ranges never dialled unless an allowed CIDR inside them names them: `(network, prefix)`.
const PLATFORM_V4: [([u8; 4], u8); 4] = [
    // link-local: AWS/GCP/Azure/OCI/DigitalOcean metadata (169.254.169.254), ECS task
    // credentials (169.254.170.2), AWS DNS and NTP (169.254.169.253, .123), Tencent (.0.23)
    ([169, 254, 0, 0], 16),
    ([100, 100, 100, 200], 32), // Alibaba Cloud metadata
    ([192, 0, 0, 192], 32),     // Oracle Cloud metadata
    ([168, 63, 129, 16], 32),   // Azure wire server (platform DNS, health, agent)
];
const PLATFORM_V6: [(Ipv6Addr, u8); 3] = [
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0), 32), // AWS metadata, DNS and NTP
    (Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0), 32), // Google Cloud metadata
];

fn platform_networks() -> impl Iterator<Item = IpNet> {
    let v4 = PLATFORM_V4.iter().filter_map(|(network, prefix)| {
        Ipv4Net::new(Ipv4Addr::from(*network), *prefix)
            .ok()
            .map(IpNet::V4)
    });
    let v6 = PLATFORM_V6
        .iter()
        .filter_map(|(network, prefix)| Ipv6Net::new(*network, *prefix).ok().map(IpNet::V6));
    v4.chain(v6)
}

/// Host names that always mean this machine or the metadata service.
const LOCAL_HOST_NAMES: [&str; 3] = ["localhost", "metadata.google.internal", "metadata"];

/// The operator's choice of allowed destinations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allow_private: bool,
    allowed: Vec<IpNet>,
}

/// Why an address was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockedAddress {
    /// A link-local, cloud metadata or platform address.
    #[error("{0} is a link-local or cloud platform address")]
    Metadata(IpAddr),
    /// A private, loopback or otherwise non-public address.
    #[error("{0} is not a public address")]
    NotPublic(IpAddr),
}

impl DestinationPolicy {
    /// A policy that allows private destinations (`allow_private`) or these CIDRs.
    pub fn new(allow_private: bool, allowed: Vec<IpNet>) -> Self {
        Self {
            allow_private,
            allowed,
        }
    }

    /// Builds the policy from `IH_ALLOW_PRIVATE_DESTINATIONS` and
    /// `IH_ALLOWED_DESTINATION_CIDRS` (comma separated).
    ///
    /// # Errors
    /// Returns a message naming the first CIDR that does not parse.
    pub fn from_settings(allow_private: bool, cidrs: Option<&str>) -> Result<Self, String> {
        let mut allowed = Vec::new();
        for raw in cidrs.unwrap_or_default().split(',').map(str::trim) {
            if raw.is_empty() {
                continue;
            }
            let network = raw
                .parse::<IpNet>()
                .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{raw}` is not a CIDR like 10.1.0.0/16 or fd00::/8"))?;
            allowed.push(network);
        }
        Ok(Self::new(allow_private, allowed))
    }

    /// Checks one address that is about to be dialled.
    ///
    /// # Errors
    /// Returns why the address is refused.
    pub fn check(&self, address: IpAddr) -> Result<(), BlockedAddress> {
        let address = address.to_canonical();
        let mut candidates = vec![address];
        if let IpAddr::V6(v6) = address {
            candidates.extend(embedded_ipv4(v6).map(IpAddr::V4));
        }
        if candidates
            .iter()
            .any(|candidate| self.is_closed_platform(*candidate))
        {
            return Err(BlockedAddress::Metadata(address));
        }
        if self.allow_private {
            return Ok(());
        }
        let allowed = |ip: &IpAddr| self.allowed.iter().any(|network| network.contains(ip));
        if candidates.iter().all(allowed) {
            return Ok(());
        }
        if candidates
            .iter()
            .any(|ip| is_forbidden(*ip) && !allowed(ip))
        {
            return Err(BlockedAddress::NotPublic(address));
        }
        Ok(())
    }

    /// Whether `address` is in a platform range and no allowed CIDR inside that range opens
    /// it (a wide CIDR such as `0.0.0.0/0` opens private space, never a platform range).
    fn is_closed_platform(&self, address: IpAddr) -> bool {
        platform_networks()
            .filter(|platform| platform.contains(&address))
            .any(|platform| {
                !self
                    .allowed
                    .iter()
                    .any(|network| platform.contains(network) && network.contains(&address))
            })
    }

    /// Checks a URL host written as a name: names that always mean this machine or the
    /// metadata service are checked as the address they stand for.
    ///
    /// # Errors
    /// Returns why the name is refused.
    pub fn check_host_name(&self, host: &str) -> Result<(), BlockedAddress> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == "metadata.google.internal" || host == "metadata" {
            return Err(BlockedAddress::Metadata(IpAddr::V4(Ipv4Addr::new(
                169, 254, 169, 254,
            ))));
        }
        if LOCAL_HOST_NAMES.contains(&host.as_str()) || host.ends_with(".localhost") {
            return self.check(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Ok(())
    }
}

/// Whether an address is outside the public unicast space.
pub fn is_forbidden(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn in_v4(address: Ipv4Addr, network: [u8; 4], prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    (u32::from(address) & mask) == (u32::from(Ipv4Addr::from(network)) & mask)
}

fn is_forbidden_v4(address: Ipv4Addr) -> bool {
    const RANGES: [([u8; 4], u8); 17] = [
        ([0, 0, 0, 0], 8),          // "this network"
        ([10, 0, 0, 0], 8),         // private
        ([100, 64, 0, 0], 10),      // carrier-grade NAT
        ([127, 0, 0, 0], 8),        // loopback
        ([169, 254, 0, 0], 16),     // link-local, cloud metadata
        ([172, 16, 0, 0], 12),      // private
        ([192, 0, 0, 0], 24),       // IETF protocol assignments
        ([192, 0, 2, 0], 24),       // documentation
        ([192, 88, 99, 0], 24),     // 6to4 relay anycast
        ([192, 168, 0, 0], 16),     // private
        ([198, 18, 0, 0], 15),      // benchmarking
        ([198, 51, 100, 0], 24),    // documentation
        ([203, 0, 113, 0], 24),     // documentation
        ([224, 0, 0, 0], 4),        // multicast
        ([240, 0, 0, 0], 4),        // reserved
        ([255, 255, 255, 255], 32), // broadcast
        ([192, 31, 196, 0], 24),    // AS112
    ];
    RANGES
        .iter()
        .any(|(network, prefix)| in_v4(address, *network, *prefix))
}

fn in_v6(address: Ipv6Addr, network: Ipv6Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    };
    (u128::from(address) & mask) == (u128::from(network) & mask)
}

fn is_forbidden_v6(address: Ipv6Addr) -> bool {
    if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
        return true;
    }
    const RANGES: [(Ipv6Addr, u8); 9] = [
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96), // IPv4-compatible (deprecated)
        (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64
        (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
        (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
        (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16), // SRv6 SIDs
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    ];
    if RANGES
        .iter()
        .any(|(network, prefix)| in_v6(address, *network, *prefix))
    {
        return true;
    }
    embedded_ipv4(address).is_some_and(is_forbidden_v4)
}

/// The IPv4 address an IPv6 address carries by the compatible form (::/96), NAT64
/// (64:ff9b::/96), 6to4 (2002::/16) or Teredo (2001::/32, client address inverted); a route
/// to these reaches that IPv4 host. (The mapped form, ::ffff:0:0/96, is made canonical first.)
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(address);
    let octets = address.octets();
    // IPv4-compatible (::a.b.c.d, deprecated, but still routed to a.b.c.d by some stacks);
    // :: and ::1 are themselves, not IPv4 addresses
    if in_v6(address, Ipv6Addr::UNSPECIFIED, 96) && bits > 1 {
        return Some(Ipv4Addr::from((bits & 0xffff_ffff) as u32));
    }
    if in_v6(address, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(Ipv4Addr::from((bits & 0xffff_ffff) as u32));
    }
    if in_v6(address, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    if in_v6(address, Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32) {
        return Some(Ipv4Addr::from(!((bits & 0xffff_ffff) as u32)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused_in_every_spelling() {
        let policy = DestinationPolicy::default();
        for blocked in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "198.18.0.1",
            "0.0.0.0",
            "240.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:db8::1",
            "fd00:ec2::254",
        ] {
            assert!(
                policy.check(ip(blocked)).is_err(),
                "{blocked} should be refused"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        let policy = DestinationPolicy::default();
        for allowed in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(policy.check(ip(allowed)), Ok(()), "{allowed} should pass");
        }
    }

    #[test]
    fn metadata_addresses_stay_refused_when_private_destinations_are_allowed() {
        let policy = DestinationPolicy::new(true, vec![]);
        assert_eq!(policy.check(ip("10.0.0.1")), Ok(()));
        assert!(matches!(
            policy.check(ip("169.254.169.254")),
            Err(BlockedAddress::Metadata(_))
        ));
        assert!(matches!(
            policy.check(ip("::ffff:169.254.169.254")),
            Err(BlockedAddress::Metadata(_))
        ));
        assert!(matches!(
            policy.check(ip("fd00:ec2::254")),
            Err(BlockedAddress::Metadata(_))
        ));
        assert!(policy.check_host_name("metadata.google.internal").is_err());
    }

    #[test]
    fn platform_addresses_are_refused_in_every_form_whatever_private_destinations_allow() {
        let wide_open = [
            DestinationPolicy::default(),
            DestinationPolicy::new(true, vec![]),
            DestinationPolicy::from_settings(true, Some("0.0.0.0/0, ::/0, 169.0.0.0/8")).unwrap(),
        ];
        for (blocked, what) in [
            (
                "169.254.169.254",
                "instance metadata (AWS, GCP, Azure, OCI, DigitalOcean)",
            ),
            ("169.254.170.2", "ECS task credentials"),
            ("169.254.169.253", "AWS DNS resolver"),
            ("169.254.169.123", "AWS time sync"),
            ("169.254.0.23", "Tencent Cloud metadata"),
            ("169.254.1.1", "any link-local address"),
            ("100.100.100.200", "Alibaba Cloud metadata"),
            ("192.0.0.192", "Oracle Cloud metadata"),
            ("168.63.129.16", "Azure wire server"),
            ("fd00:ec2::254", "AWS IPv6 metadata"),
            ("fd00:ec2::23", "AWS IPv6 platform address"),
            ("fd00:ec2::253", "AWS IPv6 DNS"),
            ("fd20:ce::254", "Google Cloud IPv6 metadata"),
            ("fe80::1", "IPv6 link-local"),
            ("febf:ffff::1", "the end of IPv6 link-local"),
            ("::ffff:169.254.169.254", "IPv4-mapped metadata"),
            ("::ffff:a9fe:aa02", "IPv4-mapped ECS credentials, in hex"),
            ("::a9fe:a9fe", "IPv4-compatible metadata"),
            ("::169.254.170.2", "IPv4-compatible ECS credentials"),
            ("::ffff:100.100.100.200", "IPv4-mapped Alibaba metadata"),
            ("::c000:c0", "IPv4-compatible Oracle metadata"),
            ("::ffff:168.63.129.16", "IPv4-mapped Azure wire server"),
            ("64:ff9b::a9fe:a9fe", "NAT64 metadata"),
            ("2002:a9fe:a9fe::1", "6to4 metadata"),
            ("2001:0:4136:e378:8000:63bf:5601:5601", "Teredo metadata"),
        ] {
            for policy in &wide_open {
                assert!(
                    matches!(policy.check(ip(blocked)), Err(BlockedAddress::Metadata(_))),
                    "{blocked} ({what}) must be refused under {policy:?}"
                );
            }
        }
        // named on purpose, a platform range opens, and only what was named
        let named =
            DestinationPolicy::from_settings(false, Some("169.254.170.2/32, fd00:ec2::/32"))
                .unwrap();
        assert_eq!(named.check(ip("169.254.170.2")), Ok(()));
        assert_eq!(named.check(ip("fd00:ec2::23")), Ok(()));
        assert!(named.check(ip("169.254.169.254")).is_err());
        assert!(named.check(ip("100.100.100.200")).is_err());
    }

    #[test]
    fn allowed_cidrs_open_only_their_range() {
        let policy =
            DestinationPolicy::from_settings(false, Some("127.0.0.1/32, 10.1.0.0/16")).unwrap();
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("10.1.2.3")), Ok(()));
        assert!(policy.check(ip("127.0.0.2")).is_err());
        assert!(policy.check(ip("10.2.0.1")).is_err());
        assert!(policy.check(ip("169.254.169.254")).is_err());
        assert_eq!(policy.check_host_name("localhost"), Ok(()));
        assert!(
            DestinationPolicy::default()
                .check_host_name("api.localhost")
                .is_err()
        );
        assert!(DestinationPolicy::from_settings(false, Some("10.0.0.0/33")).is_err());
    }
}
