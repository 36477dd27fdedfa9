//! Receive checks: RFC 9568 section 7.1 (VRRPv3) and RFC 3768 section 7.1
//! (VRRPv2).
//!
//! [`check`] takes what the shell read off the socket (the IP header facts
//! in [`IpMeta`], the VRRP payload) and this router's [`Expected`]
//! configuration, and either discards the packet with a [`Discard`] (one
//! variant per reason, for a counter and a rate-limited log line) or
//! accepts it as an [`Accepted`], whose [`Heard`] is what
//! [`crate::Machine`] consumes.
//!
//! A discarded packet never reaches the state machine, so it can never move
//! a timer. (keepalived 2.2.7 restarted its Master's advert timer on every
//! invalid advert; the machine's tests include a Master fed invalid
//! adverts every 0.5 s that keeps its own schedule.)
//!
//! Order: TTL first (cheapest, and RFC 5082's point is that off-link
//! packets are dropped before anything else looks at them), then decoding,
//! then the VRID, *then* the version and checksum. The RFCs list the VRID
//! check after the checksum, but they do not order the checks (any failure
//! discards); checking the VRID first keeps the adverts of other virtual
//! routers sharing the segment out of the error counters and logs.

use std::net::IpAddr;

use crate::interval::Centiseconds;
use crate::packet::{
    verify_checksum, Addresses, Advertisement, Auth, ChecksumForm, DecodeError, Family, Version,
};

/// The facts about a received packet that live in its IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpMeta {
    /// IP source address: the sender's primary address, used for the
    /// tie-break and the pseudo-header checksum.
    pub src: IpAddr,
    /// IP destination address (224.0.0.18, ff02::12 or a unicast peer's):
    /// part of the pseudo-header checksum.
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 Hop Limit.
    pub ttl: u8,
}

/// What the receive checks compare against: one virtual router's
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The VRRP version this virtual router runs.
    pub version: Version,
    /// Our VRID.
    pub vrid: u8,
    /// Our virtual addresses (their family is the router's family).
    pub addresses: Addresses,
    /// Our configured Advertisement_Interval.
    pub advert_interval: Centiseconds,
    /// VRRPv2 authentication; must be [`Auth::None`] for VRRPv3.
    pub auth: Auth,
    /// Whether we are the address owner (configured priority 255).
    pub owner: bool,
}

/// An accepted advertisement, as the state machine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heard {
    /// The sender's priority (0: the Master is leaving).
    pub priority: u8,
    /// The sender's (Max) Advertise Interval; a Backup running VRRPv3
    /// learns it as Master_Adver_Interval (RFC 9568 section 6.4.2).
    pub interval: Centiseconds,
    /// The sender's primary address (the IP source), for the tie-break of
    /// RFC 9568 section 6.4.3.
    pub source: IpAddr,
}

/// A packet that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The decoded advertisement.
    pub advert: Advertisement,
    /// What the machine consumes: `Event::Advert(accepted.heard)`.
    pub heard: Heard,
    /// Which checksum form matched (the shell may count them: a peer using
    /// the other VRRPv3/IPv4 form is worth knowing about).
    pub checksum: ChecksumForm,
    /// Conditions the RFCs want logged (rate-limited) without discarding.
    pub warnings: Vec<Warning>,
}

/// Something worth logging about an accepted packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Warning {
    /// VRRPv3 interval differs from ours. RFC 9568 section 7.1: "A
    /// receiver SHOULD also verify that the Max Advertise Interval in the
    /// received VRRP packet matches the Advertisement_Interval configured
    /// for the VRID. ... If this check fails, the receiver SHOULD log the
    /// event (subject to rate-limiting)". Not a discard: the Backup learns
    /// the Master's interval (section 6.4.2).
    IntervalMismatch {
        /// Our Advertisement_Interval.
        ours: Centiseconds,
        /// The interval in the packet.
        theirs: Centiseconds,
    },
    /// The address count or list differs from ours. RFC 9568 section 7.1:
    /// "A receiver MAY also verify that "IPvX Addr Count" and the list of
    /// IPvX address(es) match the IPvX address(es) configured for the VRID.
    /// If this check fails, the receiver SHOULD log (subject to
    /// rate-limiting) the event". For VRRPv2 this is a warning only when
    /// the sender is the address owner (otherwise [`Discard::AddressList`]).
    AddressList,
    /// We are the address owner and hear another router's advertisement.
    /// RFC 9568 section 7.1 (erratum 8298): "It SHOULD verify that the
    /// local router is not the IPvX address owner (Priority = 255
    /// (decimal)) and log the event (subject to rate-limiting)".
    OwnerConflict,
}

/// Why a received packet was discarded. Each variant is its own counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Discard {
    /// RFC 9568 5.1.1.3 / 5.1.2.3: "A VRRP Router receiving a packet with
    /// the TTL not equal to 255 MUST discard the packet \[RFC5082\]" (and
    /// Hop Limit for IPv6); RFC 3768 7.1: "MUST verify that the IP TTL is
    /// 255".
    #[error("TTL/hop limit {0} is not 255")]
    Ttl(u8),
    /// Not a complete, well-formed advertisement (short, truncated, unknown
    /// version or type, VRRPv2 over IPv6, unsupported auth type).
    #[error("malformed: {0}")]
    Malformed(DecodeError),
    /// The IP header's family is not this virtual router's.
    #[error("address family differs from this virtual router's")]
    Family,
    /// Another virtual router's advertisement (RFC 9568 7.1: "MUST verify
    /// that the VRID is configured on the receiving interface"). Counted,
    /// never logged: see [`Discard::is_silent`].
    #[error("VRID {0} is not ours")]
    OtherVrid(u8),
    /// RFC 9568 7.1: "MUST verify that the VRRP version is 3"; RFC 3768
    /// 7.1: "MUST verify the VRRP version is 2".
    #[error("VRRP version {theirs:?} received, we run {ours:?}")]
    Version {
        /// Our version.
        ours: Version,
        /// The packet's.
        theirs: Version,
    },
    /// RFC 9568 / RFC 3768 7.1: "MUST verify the VRRP checksum".
    #[error("bad checksum")]
    Checksum,
    /// RFC 9568 5.2.5 (erratum 8299): "If the received count is 0, the VRRP
    /// advertisement MUST be ignored."
    #[error("address count is 0")]
    ZeroAddressCount,
    /// RFC 9568 7.1 (erratum 8301): "It MUST verify that the Max Advertise
    /// Interval is non zero." Applied to VRRPv2 too, whose interval check
    /// below would reject 0 anyway.
    #[error("advertisement interval is 0")]
    ZeroInterval,
    /// VRRPv2, RFC 3768 7.1: "MUST verify that the VRID is configured on
    /// the receiving interface and the local router is not the IP Address
    /// owner (Priority equals 255 (decimal))."
    #[error("we are the address owner (VRRPv2 discards adverts heard by the owner)")]
    LocalIsOwner,
    /// VRRPv2, RFC 3768 7.1: "MUST verify that the Auth Type matches the
    /// locally configured authentication method for the virtual router".
    #[error("auth type {theirs} received, we use {ours}")]
    AuthType {
        /// Our Auth Type.
        ours: u8,
        /// The packet's.
        theirs: u8,
    },
    /// VRRPv2 simple text password differs ("... and perform that
    /// authentication method").
    #[error("authentication password mismatch")]
    AuthPassword,
    /// VRRPv2, RFC 3768 7.1: "If the packet was not generated by the
    /// address owner (Priority does not equal 255 (decimal)), the receiver
    /// MUST drop the packet".
    #[error("address list differs from ours and the sender is not the owner")]
    AddressList,
    /// VRRPv2, RFC 3768 7.1: "MUST verify that the Adver Interval in the
    /// packet is the same as the locally configured for this virtual
    /// router. If the above check fails, the receiver MUST discard the
    /// packet".
    #[error("advertisement interval {theirs} differs from ours ({ours})")]
    Interval {
        /// Our Advertisement_Interval.
        ours: Centiseconds,
        /// The packet's.
        theirs: Centiseconds,
    },
}

impl Discard {
    /// Whether to count without logging: adverts of other virtual routers
    /// on the same segment are normal traffic, not errors.
    pub fn is_silent(&self) -> bool {
        matches!(self, Discard::OtherVrid(_))
    }

    /// A stable name for the counter of this reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Discard::Ttl(_) => "ttl",
            Discard::Malformed(_) => "malformed",
            Discard::Family => "family",
            Discard::OtherVrid(_) => "other_vrid",
            Discard::Version { .. } => "version",
            Discard::Checksum => "checksum",
            Discard::ZeroAddressCount => "zero_address_count",
            Discard::ZeroInterval => "zero_interval",
            Discard::LocalIsOwner => "local_is_owner",
            Discard::AuthType { .. } => "auth_type",
            Discard::AuthPassword => "auth_password",
            Discard::AddressList => "address_list",
            Discard::Interval { .. } => "interval",
        }
    }
}

/// Runs the receive checks on one packet: `payload` is the IP payload (the
/// VRRP message), `ip` the facts from its IP header.
pub fn check(expected: &Expected, ip: &IpMeta, payload: &[u8]) -> Result<Accepted, Discard> {
    if ip.ttl != 255 {
        return Err(Discard::Ttl(ip.ttl));
    }
    let family = Family::of(&ip.src);
    if family != expected.addresses.family() || Family::of(&ip.dst) != family {
        return Err(Discard::Family);
    }
    let advert = Advertisement::decode(payload, family).map_err(Discard::Malformed)?;
    if advert.vrid != expected.vrid {
        return Err(Discard::OtherVrid(advert.vrid));
    }
    if advert.version != expected.version {
        return Err(Discard::Version {
            ours: expected.version,
            theirs: advert.version,
        });
    }
    let checksum =
        verify_checksum(payload, advert.version, ip.src, ip.dst).ok_or(Discard::Checksum)?;
    if advert.addresses.is_empty() {
        return Err(Discard::ZeroAddressCount);
    }
    if advert.interval.0 == 0 {
        return Err(Discard::ZeroInterval);
    }
    let addresses_match = same_addresses(&advert.addresses, &expected.addresses);
    let mut warnings = Vec::new();
    match advert.version {
        Version::V2 => {
            if expected.owner {
                return Err(Discard::LocalIsOwner);
            }
            check_auth(&expected.auth, &advert.auth)?;
            if !addresses_match {
                // "If the above check fails, the receiver SHOULD log the event
                // ... If the packet was not generated by the address owner
                // ... the receiver MUST drop the packet, otherwise continue
                // processing."
                if advert.priority != 255 {
                    return Err(Discard::AddressList);
                }
                warnings.push(Warning::AddressList);
            }
            if advert.interval != expected.advert_interval {
                return Err(Discard::Interval {
                    ours: expected.advert_interval,
                    theirs: advert.interval,
                });
            }
        }
        Version::V3 => {
            if expected.owner {
                warnings.push(Warning::OwnerConflict);
            }
            if advert.interval != expected.advert_interval {
                warnings.push(Warning::IntervalMismatch {
                    ours: expected.advert_interval,
                    theirs: advert.interval,
                });
            }
            if !addresses_match {
                warnings.push(Warning::AddressList);
            }
        }
    }
    let heard = Heard {
        priority: advert.priority,
        interval: advert.interval,
        source: ip.src,
    };
    Ok(Accepted {
        advert,
        heard,
        checksum,
        warnings,
    })
}

fn check_auth(ours: &Auth, theirs: &Auth) -> Result<(), Discard> {
    if ours.type_number() != theirs.type_number() {
        return Err(Discard::AuthType {
            ours: ours.type_number(),
            theirs: theirs.type_number(),
        });
    }
    match (ours, theirs) {
        (Auth::Password(a), Auth::Password(b)) if a != b => Err(Discard::AuthPassword),
        _ => Ok(()),
    }
}

/// Same addresses, order ignored: the RFCs say "match", and keepalived
/// compares membership, so a peer listing the same VIPs in another order is
/// not misconfigured.
fn same_addresses(a: &Addresses, b: &Addresses) -> bool {
    let mut a = a.to_ip_addrs();
    let mut b = b.to_ip_addrs();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}
