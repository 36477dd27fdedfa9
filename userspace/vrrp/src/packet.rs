//! VRRP advertisement encode and decode: VRRPv3 (RFC 9568 section 5.1,
//! IPv4 and IPv6) and VRRPv2 (RFC 3768 section 5, IPv4).
//!
//! Wire formats (network byte order):
//!
//! ```text
//! VRRPv3 (RFC 9568 5.1)                 VRRPv2 (RFC 3768 5.1)
//! |Ver=3|Type=1| VRID | Priority | Count |   |Ver=2|Type=1| VRID | Priority | Count |
//! |Rsvd(4)|Max Adver Int(12, cs)|Checksum|   | Auth Type | Adver Int(s) | Checksum |
//! | Count IPv4 (4 B) or IPv6 (16 B) addrs |   | Count IPv4 addresses (4 B each)     |
//!                                            | Authentication Data (8 B)            |
//! ```
//!
//! Decoding never panics and never allocates more than the input implies
//! (a proptest feeds it arbitrary bytes). Checksums are kept apart from
//! decoding because they need the IP addresses of the enclosing header:
//! [`verify_checksum`] reports which form matched ([`ChecksumForm`]).
//!
//! The VRRPv3-over-IPv4 checksum has two forms in the wild. RFC 9568
//! section 5.2.8: "For the IPv4 address family, the checksum calculation
//! only includes the VRRP message starting with the Version field and
//! ending after the last IPv4 address". RFC 5798 section 5.2.8 said "the
//! entire VRRP message starting with the version field and a
//! 'pseudo-header' as defined in Section 8.1 of \[RFC2460\]", which
//! keepalived (and tcpdump, Wireshark) read as including an IPv4
//! pseudo-header; keepalived still does so unless `v3_checksum_as_v2` is
//! set (keepalived/vrrp/vrrp.c, `VRRP_FLAG_V3_CHECKSUM_AS_V2`). We send
//! keepalived's form by default ([`Ipv4ChecksumMode`]) and accept both.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::interval::Centiseconds;

/// IP protocol number of VRRP (RFC 9568 section 5.1.1.4, RFC 3768 5.2.4).
pub const IPPROTO_VRRP: u8 = 112;
/// The only VRRP packet type: ADVERTISEMENT (RFC 9568 section 5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Length of the fixed VRRP header (both versions), bytes.
pub const HEADER_LEN: usize = 8;
/// Length of the VRRPv2 Authentication Data field, bytes (RFC 3768 5.3.10).
pub const V2_AUTH_LEN: usize = 8;

/// VRRP protocol version (the high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// VRRPv2, RFC 3768: IPv4 only, Adver Int in seconds, Auth fields.
    V2,
    /// VRRPv3, RFC 9568: IPv4 and IPv6, Max Adver Int in centiseconds.
    V3,
}

impl Version {
    /// The number on the wire: 2 or 3.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// Address family of the enclosing IP packet and of the virtual addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4: 4-byte addresses, TTL.
    V4,
    /// IPv6: 16-byte addresses, hop limit.
    V6,
}

impl Family {
    /// The family of `addr`.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }
}

/// The virtual addresses carried in an advertisement. One family only
/// (RFC 9568 section 5.2.9: "IPv4 or IPv6 but not both").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addresses {
    /// IPv4 virtual addresses.
    V4(Vec<Ipv4Addr>),
    /// IPv6 virtual addresses; RFC 9568 section 5.2.9 wants the first to
    /// be the link-local one.
    V6(Vec<Ipv6Addr>),
}

impl Addresses {
    /// Their family.
    pub fn family(&self) -> Family {
        match self {
            Addresses::V4(_) => Family::V4,
            Addresses::V6(_) => Family::V6,
        }
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        match self {
            Addresses::V4(a) => a.len(),
            Addresses::V6(a) => a.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The addresses as [`IpAddr`]s, in wire order.
    pub fn to_ip_addrs(&self) -> Vec<IpAddr> {
        match self {
            Addresses::V4(a) => a.iter().map(|a| IpAddr::V4(*a)).collect(),
            Addresses::V6(a) => a.iter().map(|a| IpAddr::V6(*a)).collect(),
        }
    }
}

/// VRRPv2 authentication (RFC 3768 section 5.3.6). VRRPv3 has none
/// (RFC 9568 removed it), so a v3 advertisement always carries
/// [`Auth::None`].
///
/// RFC 3768 keeps the field "for backwards compatibility with RFC 2338";
/// type 1, the RFC 2338 simple text password, is still used by keepalived
/// deployments (`auth_type PASS`). Type 2 (IP Authentication Header) is
/// deprecated and rejected when decoding ([`DecodeError::UnsupportedAuthType`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Auth {
    /// Auth Type 0. The Authentication Data is sent as zeros and ignored on
    /// reception (RFC 3768 section 5.3.10).
    None,
    /// Auth Type 1: an up to 8-byte password, NUL-padded, in clear text.
    Password([u8; 8]),
}

impl Auth {
    /// A simple text password from `s`: the first 8 bytes, NUL-padded (as
    /// keepalived truncates longer ones).
    pub fn password(s: &[u8]) -> Auth {
        let mut p = [0u8; 8];
        let n = s.len().min(8);
        p[..n].copy_from_slice(&s[..n]);
        Auth::Password(p)
    }

    /// The Auth Type on the wire.
    pub fn type_number(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Password(_) => 1,
        }
    }
}

// Never print a password into a log.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Password(_) => f.write_str("Password(..)"),
        }
    }
}

/// One VRRP ADVERTISEMENT, either version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Advertisement {
    /// VRRP version.
    pub version: Version,
    /// Virtual Router Identifier, 1..=255 (0 is decoded but never valid).
    pub vrid: u8,
    /// Sender's priority: 255 = address owner, 1..=254 backups, 0 = the
    /// Master is leaving (RFC 9568 section 5.2.4).
    pub priority: u8,
    /// The (Max) Advertise Interval. V3: centiseconds, 12 bits on the wire
    /// (RFC 9568 5.2.7). V2: whole seconds on the wire (RFC 3768 5.3.7),
    /// held here as a multiple of 100 cs.
    pub interval: Centiseconds,
    /// The virtual addresses.
    pub addresses: Addresses,
    /// V2 authentication; always [`Auth::None`] for V3.
    pub auth: Auth,
}

/// How to compute the VRRPv3 checksum over IPv4 when sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ipv4ChecksumMode {
    /// Include the IPv4 pseudo-header (source, destination, zero, protocol
    /// 112, VRRP length): RFC 5798 as keepalived, tcpdump and Wireshark
    /// read it, keepalived's default. The default here, so a fulcrum pair
    /// and a keepalived pair interoperate out of the box.
    #[default]
    PseudoHeader,
    /// The VRRP message only: RFC 9568 section 5.2.8, keepalived's
    /// `v3_checksum_as_v2`, Cisco and Juniper.
    MessageOnly,
}

/// Which checksum computation a received packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumForm {
    /// Over the VRRP message alone: VRRPv2 (RFC 3768 5.3.8), or VRRPv3 over
    /// IPv4 per RFC 9568 5.2.8.
    MessageOnly,
    /// VRRPv3 over IPv4 with the IPv4 pseudo-header (RFC 5798 as read by
    /// keepalived).
    Ipv4PseudoHeader,
    /// VRRPv3 over IPv6 with the IPv6 pseudo-header of RFC 8200 section 8.1
    /// (RFC 9568 5.2.8).
    Ipv6PseudoHeader,
}

/// Why bytes are not a well-formed advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than the 8 bytes of the fixed header.
    #[error("packet of {0} bytes is shorter than the 8-byte VRRP header")]
    TooShort(usize),
    /// Version nibble other than 2 or 3.
    #[error("VRRP version {0} is not supported")]
    UnsupportedVersion(u8),
    /// Type nibble other than 1 (RFC 9568 5.2.2: "A packet with unknown
    /// type MUST be discarded").
    #[error("VRRP packet type {0} is not ADVERTISEMENT (1)")]
    UnknownType(u8),
    /// The length does not match what Count IPvX Addrs implies (RFC 9568
    /// 7.1: "MUST verify that the received packet contains the complete
    /// VRRP packet").
    #[error("VRRP packet is {actual} bytes, its header implies {expected}")]
    Length {
        /// Bytes implied by the header.
        expected: usize,
        /// Bytes received.
        actual: usize,
    },
    /// VRRPv2 is IPv4-only (RFC 3768).
    #[error("VRRPv2 packet received over IPv6")]
    V2OverIpv6,
    /// VRRPv2 Auth Type other than 0 or 1 (2, IP AH, is deprecated).
    #[error("VRRPv2 auth type {0} is not supported")]
    UnsupportedAuthType(u8),
}

/// Why an advertisement cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EncodeError {
    /// Count IPvX Addrs is one byte; 0 is invalid (RFC 9568 5.2.5 erratum:
    /// a count of 0 MUST be ignored by receivers).
    #[error("an advertisement carries 1..=255 addresses, not {0}")]
    AddressCount(usize),
    /// V3: 1..=4095 cs. V2: 1..=255 whole seconds.
    #[error("advertisement interval {0} is out of range for this VRRP version")]
    Interval(Centiseconds),
    /// VRRPv2 is IPv4-only, and VRRPv3 has no authentication.
    #[error("this combination of version, address family and authentication does not exist")]
    VersionMismatch,
    /// Source, destination and virtual addresses must share a family.
    #[error("IP source, destination and virtual addresses differ in address family")]
    FamilyMismatch,
}

impl Advertisement {
    /// Length of this advertisement on the wire, bytes.
    pub fn wire_len(&self) -> usize {
        let a = self.addresses.len() * self.addresses.family().addr_len();
        match self.version {
            Version::V2 => HEADER_LEN + a + V2_AUTH_LEN,
            Version::V3 => HEADER_LEN + a,
        }
    }

    /// Encodes with the checksum filled in. `src`/`dst` are the IP header's
    /// addresses (needed for the pseudo-header forms); `v4_mode` selects the
    /// VRRPv3-over-IPv4 checksum and is ignored otherwise.
    pub fn encode(
        &self,
        src: IpAddr,
        dst: IpAddr,
        v4_mode: Ipv4ChecksumMode,
    ) -> Result<Vec<u8>, EncodeError> {
        let family = self.addresses.family();
        if Family::of(&src) != family || Family::of(&dst) != family {
            return Err(EncodeError::FamilyMismatch);
        }
        let count = self.addresses.len();
        if count == 0 || count > 255 {
            return Err(EncodeError::AddressCount(count));
        }
        let mut buf = Vec::with_capacity(self.wire_len());
        buf.push((self.version.number() << 4) | TYPE_ADVERTISEMENT);
        buf.push(self.vrid);
        buf.push(self.priority);
        buf.push(count as u8);
        match self.version {
            Version::V3 => {
                if self.auth != Auth::None {
                    return Err(EncodeError::VersionMismatch);
                }
                if self.interval.0 == 0 || self.interval > Centiseconds::MAX_V3 {
                    return Err(EncodeError::Interval(self.interval));
                }
                // The 4 reserved bits "MUST be set to zero on transmission"
                // (RFC 9568 5.2.6): MAX_V3 keeps them clear.
                buf.extend_from_slice(&self.interval.0.to_be_bytes());
            }
            Version::V2 => {
                if family != Family::V4 {
                    return Err(EncodeError::VersionMismatch);
                }
                let secs = self.interval.0 / 100;
                if self.interval.0 % 100 != 0 || secs == 0 || secs > 255 {
                    return Err(EncodeError::Interval(self.interval));
                }
                buf.push(self.auth.type_number());
                buf.push(secs as u8);
            }
        }
        buf.extend_from_slice(&[0, 0]); // checksum, filled below
        match &self.addresses {
            Addresses::V4(a) => a.iter().for_each(|a| buf.extend_from_slice(&a.octets())),
            Addresses::V6(a) => a.iter().for_each(|a| buf.extend_from_slice(&a.octets())),
        }
        if self.version == Version::V2 {
            match &self.auth {
                Auth::None => buf.extend_from_slice(&[0; V2_AUTH_LEN]),
                Auth::Password(p) => buf.extend_from_slice(p),
            }
        }
        let form = match (self.version, family, v4_mode) {
            (Version::V2, _, _) => ChecksumForm::MessageOnly,
            (Version::V3, Family::V6, _) => ChecksumForm::Ipv6PseudoHeader,
            (Version::V3, Family::V4, Ipv4ChecksumMode::PseudoHeader) => {
                ChecksumForm::Ipv4PseudoHeader
            }
            (Version::V3, Family::V4, Ipv4ChecksumMode::MessageOnly) => ChecksumForm::MessageOnly,
        };
        let sum = !fold(sum_with(form, &buf, src, dst));
        buf[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(buf)
    }

    /// Decodes the VRRP payload of an IP packet of `family` (the IP header
    /// already stripped; `buf` is exactly the IP payload). Does not check
    /// the checksum ([`verify_checksum`]) nor anything that needs local
    /// configuration ([`crate::checks`]).
    pub fn decode(buf: &[u8], family: Family) -> Result<Advertisement, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::TooShort(buf.len()));
        }
        let version = match buf[0] >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            v => return Err(DecodeError::UnsupportedVersion(v)),
        };
        let kind = buf[0] & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(DecodeError::UnknownType(kind));
        }
        if version == Version::V2 && family == Family::V6 {
            return Err(DecodeError::V2OverIpv6);
        }
        let vrid = buf[1];
        let priority = buf[2];
        let count = usize::from(buf[3]);
        let addrs_len = count * family.addr_len();
        let expected = HEADER_LEN
            + addrs_len
            + match version {
                Version::V2 => V2_AUTH_LEN,
                Version::V3 => 0,
            };
        if buf.len() != expected {
            return Err(DecodeError::Length {
                expected,
                actual: buf.len(),
            });
        }
        let addr_bytes = &buf[HEADER_LEN..HEADER_LEN + addrs_len];
        let addresses = match family {
            Family::V4 => Addresses::V4(
                addr_bytes
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect(),
            ),
            Family::V6 => Addresses::V6(
                addr_bytes
                    .chunks_exact(16)
                    .map(|c| {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(c);
                        Ipv6Addr::from(o)
                    })
                    .collect(),
            ),
        };
        let (interval, auth) = match version {
            Version::V3 => {
                // The 4 reserved bits are "ignored on reception" (RFC 9568 5.2.6).
                let raw = u16::from_be_bytes([buf[4], buf[5]]) & 0x0fff;
                (Centiseconds(raw), Auth::None)
            }
            Version::V2 => {
                let auth = match buf[4] {
                    // Auth data "SHOULD be ... ignored on reception"
                    // (RFC 3768 5.3.10) when no authentication is used.
                    0 => Auth::None,
                    1 => {
                        let mut p = [0u8; 8];
                        p.copy_from_slice(&buf[expected - V2_AUTH_LEN..]);
                        Auth::Password(p)
                    }
                    t => return Err(DecodeError::UnsupportedAuthType(t)),
                };
                (Centiseconds::from_secs(u16::from(buf[5])), auth)
            }
        };
        Ok(Advertisement {
            version,
            vrid,
            priority,
            interval,
            addresses,
            auth,
        })
    }
}

/// Checks the checksum of the VRRP payload `buf` (as received, checksum
/// field included) sent from `src` to `dst`. Returns the form that
/// matched, or `None`.
///
/// VRRPv2 and VRRPv3-over-IPv6 each have one form. VRRPv3 over IPv4 is
/// tried with keepalived's pseudo-header form first, then RFC 9568's
/// message-only form (a packet matching both, a 1 in 65535 coincidence,
/// reports the pseudo-header form).
pub fn verify_checksum(
    buf: &[u8],
    version: Version,
    src: IpAddr,
    dst: IpAddr,
) -> Option<ChecksumForm> {
    let candidates: &[ChecksumForm] = match (version, Family::of(&src)) {
        (Version::V2, _) => &[ChecksumForm::MessageOnly],
        (Version::V3, Family::V6) => &[ChecksumForm::Ipv6PseudoHeader],
        (Version::V3, Family::V4) => &[ChecksumForm::Ipv4PseudoHeader, ChecksumForm::MessageOnly],
    };
    candidates
        .iter()
        .copied()
        .find(|form| fold(sum_with(*form, buf, src, dst)) == 0xffff)
}

/// The one's complement sum (RFC 1071), unfolded, of `data` plus the
/// pseudo-header `form` asks for.
fn sum_with(form: ChecksumForm, data: &[u8], src: IpAddr, dst: IpAddr) -> u64 {
    let mut sum = ones_sum(0, data);
    match (form, src, dst) {
        (ChecksumForm::MessageOnly, _, _) => {}
        (ChecksumForm::Ipv4PseudoHeader, IpAddr::V4(s), IpAddr::V4(d)) => {
            // src, dst, zero, protocol, 16-bit length (RFC 768-style).
            sum = ones_sum(sum, &s.octets());
            sum = ones_sum(sum, &d.octets());
            sum += u64::from(IPPROTO_VRRP);
            sum += data.len() as u64;
        }
        (ChecksumForm::Ipv6PseudoHeader, IpAddr::V6(s), IpAddr::V6(d)) => {
            // src, dst, 32-bit upper-layer length, 3 zero bytes, next
            // header (RFC 8200 section 8.1).
            sum = ones_sum(sum, &s.octets());
            sum = ones_sum(sum, &d.octets());
            sum = ones_sum(sum, &(data.len() as u32).to_be_bytes());
            sum += u64::from(IPPROTO_VRRP);
        }
        // A pseudo-header of the other family cannot match; make sure the
        // result is not 0xffff by construction of the callers (they pick
        // forms by the family of `src`). Mixed src/dst families: no match.
        _ => return 0,
    }
    sum
}

/// Adds `data` as big-endian 16-bit words (odd tail padded with zero).
/// A u64 accumulator cannot overflow for any IP payload.
fn ones_sum(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds the carries back in: the 16-bit one's complement sum.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
