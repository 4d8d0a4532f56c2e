//! Which destinations a webhook may be sent to (the SSRF guard).
//!
//! Private, loopback, link-local, multicast, CGNAT, benchmark, documentation, reserved,
//! unique-local, site-local and unspecified addresses are refused, in every IPv6 spelling of an
//! IPv4 address (mapped, compatible, NAT64, 6to4, Teredo), unless the operator allows private
//! destinations or names CIDRs. Cloud metadata addresses stay refused whatever is allowed.
//!
//! The API checks a subscription URL's literal host when it is created or changed; the worker
//! checks every resolved address before it connects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The metadata endpoints of the big clouds: never dialled.
const METADATA_ADDRESSES: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS's IPv6 instance metadata service
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
];

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
    /// A cloud metadata address.
    #[error("{0} is a cloud metadata address")]
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
        for candidate in &candidates {
            if METADATA_ADDRESSES.contains(candidate) {
                return Err(BlockedAddress::Metadata(address));
            }
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

    /// Checks a URL host written as a name: names that always mean this machine or the
    /// metadata service are checked as the address they stand for.
    ///
    /// # Errors
    /// Returns why the name is refused.
    pub fn check_host_name(&self, host: &str) -> Result<(), BlockedAddress> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == "metadata.google.internal" || host == "metadata" {
            return Err(BlockedAddress::Metadata(METADATA_ADDRESSES[0]));
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

/// The IPv4 address an IPv6 address carries by NAT64 (64:ff9b::/96), 6to4 (2002::/16) or
/// Teredo (2001::/32, client address inverted); a route to these reaches that IPv4 host.
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(address);
    let octets = address.octets();
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
