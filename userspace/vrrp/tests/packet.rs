//! Encode/decode and checksum test vectors.
//!
//! The vectors were produced by Scapy 2.8.0 (`scapy.layers.vrrp`: `VRRP`
//! for v2, `VRRPv3` whose `post_build` adds the IPv4 pseudo-header via
//! `in4_chksum` and the IPv6 one via `in6_chksum`; the message-only form by
//! `scapy.utils.checksum` over the message with a zeroed checksum field),
//! an implementation independent of this crate, and the two IPv4 VRRPv3
//! checksums were also summed by hand (RFC 1071):
//!
//! message words 3133+6402+0064+0000+c000+0264+c000+0265 = 0x21a62,
//! folded 0x1a64, complemented 0xe59b (message-only); plus pseudo-header
//! c000+0201 (192.0.2.1) + e000+0012 (224.0.0.18) + 0070 (protocol 112)
//! + 0010 (length 16) = 0x3bcf5, folded 0xbcf8, complemented 0x4307.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fulcrum_vrrp::packet::verify_checksum;
use fulcrum_vrrp::{
    Addresses, Advertisement, Auth, Centiseconds, ChecksumForm, DecodeError, EncodeError, Family,
    Ipv4ChecksumMode, Version,
};
use proptest::prelude::*;

const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const MCAST4: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));
const SRC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
const MCAST6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12));

/// VRRPv2, VRID 51, priority 100, 1 s, auth type 1 password "secret",
/// 192.0.2.100 (RFC 3768 5.1 layout; checksum over the message including
/// the authentication data, RFC 3768 5.3.8).
const V2_PASSWORD: [u8; 20] = [
    0x21, 0x33, 0x64, 0x01, 0x01, 0x01, 0x7b, 0x19, 0xc0, 0x00, 0x02, 0x64, 0x73, 0x65, 0x63, 0x72,
    0x65, 0x74, 0x00, 0x00,
];
/// VRRPv3 over IPv4, VRID 51, priority 100, 100 cs, 192.0.2.100 and
/// 192.0.2.101, 192.0.2.1 -> 224.0.0.18, checksum with the IPv4
/// pseudo-header (keepalived's default).
const V3_V4_PSEUDO: [u8; 16] = [
    0x31, 0x33, 0x64, 0x02, 0x00, 0x64, 0x43, 0x07, 0xc0, 0x00, 0x02, 0x64, 0xc0, 0x00, 0x02, 0x65,
];
/// The same, checksum over the message only (RFC 9568 5.2.8).
const V3_V4_MESSAGE_ONLY: [u8; 16] = [
    0x31, 0x33, 0x64, 0x02, 0x00, 0x64, 0xe5, 0x9b, 0xc0, 0x00, 0x02, 0x64, 0xc0, 0x00, 0x02, 0x65,
];
/// VRRPv3 over IPv6, VRID 51, priority 200, 100 cs, fe80::100 and
/// 2001:db8::100, fe80::1 -> ff02::12, checksum with the IPv6
/// pseudo-header (RFC 9568 5.2.8, RFC 8200 8.1).
const V3_V6: [u8; 40] = [
    0x31, 0x33, 0xc8, 0x02, 0x00, 0x64, 0xd9, 0xfc, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
];

fn v2_password() -> Advertisement {
    Advertisement {
        version: Version::V2,
        vrid: 51,
        priority: 100,
        interval: Centiseconds::from_secs(1),
        addresses: Addresses::V4(vec![Ipv4Addr::new(192, 0, 2, 100)]),
        auth: Auth::password(b"secret"),
    }
}

fn v3_v4() -> Advertisement {
    Advertisement {
        version: Version::V3,
        vrid: 51,
        priority: 100,
        interval: Centiseconds(100),
        addresses: Addresses::V4(vec![
            Ipv4Addr::new(192, 0, 2, 100),
            Ipv4Addr::new(192, 0, 2, 101),
        ]),
        auth: Auth::None,
    }
}

fn v3_v6() -> Advertisement {
    Advertisement {
        version: Version::V3,
        vrid: 51,
        priority: 200,
        interval: Centiseconds(100),
        addresses: Addresses::V6(vec![
            "fe80::100".parse().unwrap(),
            "2001:db8::100".parse().unwrap(),
        ]),
        auth: Auth::None,
    }
}

/// RFC 3768 5.3.8: "The checksum is the 16-bit one's complement of the
/// one's complement sum of the entire VRRP message starting with the
/// version field."
#[test]
fn v2_vector() {
    let bytes = v2_password()
        .encode(SRC4, MCAST4, Ipv4ChecksumMode::PseudoHeader)
        .unwrap();
    assert_eq!(bytes, V2_PASSWORD);
    assert_eq!(
        Advertisement::decode(&V2_PASSWORD, Family::V4).unwrap(),
        v2_password()
    );
    assert_eq!(
        verify_checksum(&V2_PASSWORD, Version::V2, SRC4, MCAST4),
        Some(ChecksumForm::MessageOnly)
    );
}

/// RFC 5798 5.2.8 as keepalived reads it: "the entire VRRP message
/// starting with the version field and a "pseudo-header"", for IPv4 too.
#[test]
fn v3_ipv4_pseudo_header_vector() {
    let bytes = v3_v4()
        .encode(SRC4, MCAST4, Ipv4ChecksumMode::PseudoHeader)
        .unwrap();
    assert_eq!(bytes, V3_V4_PSEUDO);
    assert_eq!(
        Advertisement::decode(&V3_V4_PSEUDO, Family::V4).unwrap(),
        v3_v4()
    );
    assert_eq!(
        verify_checksum(&V3_V4_PSEUDO, Version::V3, SRC4, MCAST4),
        Some(ChecksumForm::Ipv4PseudoHeader)
    );
}

/// RFC 9568 5.2.8: "For the IPv4 address family, the checksum calculation
/// only includes the VRRP message starting with the Version field and
/// ending after the last IPv4 address".
#[test]
fn v3_ipv4_message_only_vector() {
    let bytes = v3_v4()
        .encode(SRC4, MCAST4, Ipv4ChecksumMode::MessageOnly)
        .unwrap();
    assert_eq!(bytes, V3_V4_MESSAGE_ONLY);
    assert_eq!(
        verify_checksum(&V3_V4_MESSAGE_ONLY, Version::V3, SRC4, MCAST4),
        Some(ChecksumForm::MessageOnly)
    );
}

/// RFC 9568 5.2.8: "For the IPv6 address family, the checksum calculation
/// also includes a prepended "pseudo-header", as defined in Section 8.1 of
/// [RFC8200]."
#[test]
fn v3_ipv6_vector() {
    let bytes = v3_v6()
        .encode(SRC6, MCAST6, Ipv4ChecksumMode::PseudoHeader)
        .unwrap();
    assert_eq!(bytes, V3_V6);
    assert_eq!(Advertisement::decode(&V3_V6, Family::V6).unwrap(), v3_v6());
    assert_eq!(
        verify_checksum(&V3_V6, Version::V3, SRC6, MCAST6),
        Some(ChecksumForm::Ipv6PseudoHeader)
    );
    // The pseudo-header binds the addresses: another source fails.
    let other: IpAddr = "fe80::2".parse().unwrap();
    assert_eq!(verify_checksum(&V3_V6, Version::V3, other, MCAST6), None);
}

#[test]
fn corrupted_checksums_fail() {
    for (bytes, version, src, dst) in [
        (&V2_PASSWORD[..], Version::V2, SRC4, MCAST4),
        (&V3_V4_PSEUDO[..], Version::V3, SRC4, MCAST4),
        (&V3_V4_MESSAGE_ONLY[..], Version::V3, SRC4, MCAST4),
        (&V3_V6[..], Version::V3, SRC6, MCAST6),
    ] {
        let mut b = bytes.to_vec();
        b[2] ^= 0x01; // priority
        assert_eq!(verify_checksum(&b, version, src, dst), None);
    }
}

/// RFC 9568 5.2.6: "This field MUST be set to zero on transmission and
/// ignored on reception."
#[test]
fn v3_reserved_bits_ignored() {
    let mut b = V3_V4_MESSAGE_ONLY;
    b[4] |= 0xf0;
    assert_eq!(
        Advertisement::decode(&b, Family::V4).unwrap().interval,
        Centiseconds(100)
    );
}

/// RFC 9568 5.2.2: "A packet with unknown type MUST be discarded."; RFC
/// 9568 7.1: "It MUST verify that the received packet contains the
/// complete VRRP packet (including fixed fields and the IPvX address)."
#[test]
fn decode_errors() {
    assert_eq!(
        Advertisement::decode(&[0x31, 1, 2], Family::V4),
        Err(DecodeError::TooShort(3))
    );
    let mut b = V3_V4_PSEUDO;
    b[0] = 0x41;
    assert_eq!(
        Advertisement::decode(&b, Family::V4),
        Err(DecodeError::UnsupportedVersion(4))
    );
    b[0] = 0x32;
    assert_eq!(
        Advertisement::decode(&b, Family::V4),
        Err(DecodeError::UnknownType(2))
    );
    assert_eq!(
        Advertisement::decode(&V3_V4_PSEUDO[..12], Family::V4),
        Err(DecodeError::Length {
            expected: 16,
            actual: 12
        })
    );
    // The same bytes read as IPv6 imply 8 + 2 * 16 bytes.
    assert_eq!(
        Advertisement::decode(&V3_V4_PSEUDO, Family::V6),
        Err(DecodeError::Length {
            expected: 40,
            actual: 16
        })
    );
    assert_eq!(
        Advertisement::decode(&V2_PASSWORD, Family::V6),
        Err(DecodeError::V2OverIpv6)
    );
    let mut ah = V2_PASSWORD;
    ah[4] = 2; // IP Authentication Header: deprecated, rejected
    assert_eq!(
        Advertisement::decode(&ah, Family::V4),
        Err(DecodeError::UnsupportedAuthType(2))
    );
}

#[test]
fn encode_errors() {
    let mut a = v3_v4();
    a.interval = Centiseconds(4096);
    assert_eq!(
        a.encode(SRC4, MCAST4, Default::default()),
        Err(EncodeError::Interval(Centiseconds(4096)))
    );
    let mut a = v2_password();
    a.interval = Centiseconds(150);
    assert!(matches!(
        a.encode(SRC4, MCAST4, Default::default()),
        Err(EncodeError::Interval(_))
    ));
    let mut a = v3_v4();
    a.addresses = Addresses::V4(vec![]);
    assert_eq!(
        a.encode(SRC4, MCAST4, Default::default()),
        Err(EncodeError::AddressCount(0))
    );
    assert_eq!(
        v3_v4().encode(SRC6, MCAST6, Default::default()),
        Err(EncodeError::FamilyMismatch)
    );
    let mut a = v3_v4();
    a.auth = Auth::password(b"x");
    assert_eq!(
        a.encode(SRC4, MCAST4, Default::default()),
        Err(EncodeError::VersionMismatch)
    );
}

fn arb_advert() -> impl Strategy<Value = Advertisement> {
    let v4 = proptest::collection::vec(any::<u32>().prop_map(Ipv4Addr::from), 1..=255)
        .prop_map(Addresses::V4);
    let v6 = proptest::collection::vec(any::<u128>().prop_map(Ipv6Addr::from), 1..=255)
        .prop_map(Addresses::V6);
    let v3 = (
        any::<u8>(),
        any::<u8>(),
        1u16..=4095,
        prop_oneof![v4.clone(), v6],
    )
        .prop_map(|(vrid, priority, cs, addresses)| Advertisement {
            version: Version::V3,
            vrid,
            priority,
            interval: Centiseconds(cs),
            addresses,
            auth: Auth::None,
        });
    let auth = prop_oneof![Just(Auth::None), any::<[u8; 8]>().prop_map(Auth::Password)];
    let v2 = (any::<u8>(), any::<u8>(), 1u16..=255, v4, auth).prop_map(
        |(vrid, priority, secs, addresses, auth)| Advertisement {
            version: Version::V2,
            vrid,
            priority,
            interval: Centiseconds::from_secs(secs),
            addresses,
            auth,
        },
    );
    prop_oneof![v3, v2]
}

proptest! {
    /// Parsing never panics on any input, in either family, and neither
    /// does checksum verification.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        for family in [Family::V4, Family::V6] {
            let _ = Advertisement::decode(&bytes, family);
        }
        let _ = verify_checksum(&bytes, Version::V3, SRC4, MCAST4);
        let _ = verify_checksum(&bytes, Version::V3, SRC6, MCAST6);
        let _ = verify_checksum(&bytes, Version::V2, SRC4, MCAST4);
    }

    /// encode -> decode returns the advertisement, and its checksum
    /// verifies in the form it was sent with.
    #[test]
    fn round_trip(a in arb_advert(), message_only in any::<bool>()) {
        let (src, dst) = match a.addresses.family() {
            Family::V4 => (SRC4, MCAST4),
            Family::V6 => (SRC6, MCAST6),
        };
        let mode = if message_only { Ipv4ChecksumMode::MessageOnly } else { Ipv4ChecksumMode::PseudoHeader };
        let bytes = a.encode(src, dst, mode).unwrap();
        prop_assert_eq!(bytes.len(), a.wire_len());
        prop_assert_eq!(&Advertisement::decode(&bytes, a.addresses.family()).unwrap(), &a);
        let form = verify_checksum(&bytes, a.version, src, dst);
        prop_assert!(form.is_some());
    }
}
