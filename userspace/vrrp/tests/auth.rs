//! The HMAC-SHA256 trailer (src/auth.rs): a fixed vector computed
//! independently (Python's hmac module), round trips, tampering, replay,
//! key handling.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fulcrum_vrrp::auth::{self, AuthError, Key, KeyError, Signer, Verifier, MIN_KEY_LEN, TRAILER_LEN};
use fulcrum_vrrp::{Addresses, Advertisement, Auth, Centiseconds, Family, Ipv4ChecksumMode, Version};

const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 1, 1));
const DST: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));

fn key(b: u8) -> Key {
    Key::new(vec![b; 32]).unwrap()
}

fn advert() -> Vec<u8> {
    Advertisement {
        version: Version::V3,
        vrid: 51,
        priority: 200,
        interval: Centiseconds(100),
        addresses: Addresses::V4(vec![Ipv4Addr::new(198, 19, 1, 200)]),
        auth: Auth::None,
    }
    .encode(SRC, DST, Ipv4ChecksumMode::default())
    .unwrap()
}

/// python3: hmac.new(bytes(range(32)), src + dst + msg + head,
/// hashlib.sha256).hexdigest()[:32], head = b"FH\x01\x00" + counter.
#[test]
fn trailer_matches_an_independent_computation() {
    let key = Key::new((0..32).collect()).unwrap();
    let msg = [0x31, 0x33, 0xc8, 0x01, 0x00, 0x64, 0x1f, 0x2b, 0xc6, 0x13, 0xc8, 0xc8];
    let t = auth::trailer(&key, SRC, DST, &msg, 0x6500_0000_0000_0001);
    let hex: String = t.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "464801006500000000000001".to_owned() + "77956e06ec6b14dae3977afc6c4a54bd");
}

#[test]
fn signed_adverts_verify_and_counters_rise() {
    let mut s = Signer::new(key(7), 1_700_000_000);
    let mut v = Verifier::new(key(7));
    let mut last = 0;
    for _ in 0..3 {
        let packet = s.sign(SRC, DST, advert());
        assert_eq!(packet.len(), advert().len() + TRAILER_LEN);
        let (msg, trailer) = auth::split(&packet, Family::V4);
        assert_eq!(msg, &advert()[..], "the standard message, checksum untouched");
        let c = v.check(SRC, DST, msg, trailer).unwrap();
        assert!(c > last);
        assert_eq!(c >> 32, 1_700_000_000, "epoch in the high half");
        last = c;
    }
}

#[test]
fn tampering_wrong_key_and_missing_trailer_fail_as_hmac() {
    let mut s = Signer::new(key(7), 1);
    let packet = s.sign(SRC, DST, advert());
    let check = |p: &[u8], src: IpAddr, dst: IpAddr, k: Key| {
        let (m, t) = auth::split(p, Family::V4);
        Verifier::new(k).check(src, dst, m, t)
    };
    assert!(check(&packet, SRC, DST, key(7)).is_ok());
    // Every single bit flipped anywhere in the packet is caught.
    for i in 0..packet.len() {
        let mut p = packet.clone();
        p[i] ^= 0x01;
        assert_eq!(check(&p, SRC, DST, key(7)), Err(AuthError::Mac), "byte {i}");
    }
    assert_eq!(check(&packet, SRC, DST, key(8)), Err(AuthError::Mac), "wrong key");
    let other = IpAddr::V4(Ipv4Addr::new(198, 19, 1, 9));
    assert_eq!(check(&packet, other, DST, key(7)), Err(AuthError::Mac), "other source");
    assert_eq!(check(&packet, SRC, other, key(7)), Err(AuthError::Mac), "other destination");
    assert_eq!(check(&advert(), SRC, DST, key(7)), Err(AuthError::Mac), "no trailer");
    assert_eq!(check(&packet[..packet.len() - 1], SRC, DST, key(7)), Err(AuthError::Mac), "truncated");
    assert_eq!(AuthError::Mac.kind(), "hmac");
}

#[test]
fn replays_and_reordering_are_refused_per_source() {
    let mut s = Signer::new(key(7), 100);
    let mut v = Verifier::new(key(7));
    let first = s.sign(SRC, DST, advert());
    let second = s.sign(SRC, DST, advert());
    let (m2, t2) = auth::split(&second, Family::V4);
    let c2 = v.check(SRC, DST, m2, t2).unwrap();
    // The same packet again, and an older one after a newer: replays.
    assert_eq!(v.check(SRC, DST, m2, t2), Err(AuthError::Replay { counter: c2, last: c2 }));
    let (m1, t1) = auth::split(&first, Family::V4);
    let e = v.check(SRC, DST, m1, t1).unwrap_err();
    assert!(matches!(e, AuthError::Replay { .. }) && e.kind() == "replay");
    // A forged packet does not move the last counter.
    let mut forged = s.sign(SRC, DST, advert());
    let n = forged.len();
    forged[n - 1] ^= 1;
    let (mf, tf) = auth::split(&forged, Family::V4);
    assert_eq!(v.check(SRC, DST, mf, tf), Err(AuthError::Mac));
    let third = s.sign(SRC, DST, advert());
    let (m3, t3) = auth::split(&third, Family::V4);
    assert!(v.check(SRC, DST, m3, t3).is_ok());
    // A restarted sender (a later epoch) is above all of its former counters.
    let mut restarted = Signer::new(key(7), 101);
    let p = restarted.sign(SRC, DST, advert());
    let (m, t) = auth::split(&p, Family::V4);
    assert!(v.check(SRC, DST, m, t).is_ok());
    // ... but one whose clock went back is refused until receivers forget.
    let mut stepped_back = Signer::new(key(7), 99);
    let p = stepped_back.sign(SRC, DST, advert());
    let (m, t) = auth::split(&p, Family::V4);
    assert!(matches!(v.check(SRC, DST, m, t), Err(AuthError::Replay { .. })));
}

#[test]
fn ipv6_and_v2_messages_split_at_their_length() {
    let s6: IpAddr = IpAddr::V6("fe80::1".parse().unwrap());
    let d6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12));
    let msg = Advertisement {
        version: Version::V3,
        vrid: 1,
        priority: 100,
        interval: Centiseconds(100),
        addresses: Addresses::V6(vec!["fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()]),
        auth: Auth::None,
    }
    .encode(s6, d6, Ipv4ChecksumMode::default())
    .unwrap();
    let mut s = Signer::new(key(1), 5);
    let p = s.sign(s6, d6, msg.clone());
    let (m, t) = auth::split(&p, Family::V6);
    assert_eq!(m, &msg[..]);
    assert!(Verifier::new(key(1)).check(s6, d6, m, t).is_ok());
    let v2 = Advertisement {
        version: Version::V2,
        vrid: 1,
        priority: 100,
        interval: Centiseconds(100),
        addresses: Addresses::V4(vec![Ipv4Addr::new(10, 0, 0, 1)]),
        auth: Auth::password(b"pw"),
    }
    .encode(SRC, DST, Ipv4ChecksumMode::default())
    .unwrap();
    let p = s.sign(SRC, DST, v2.clone());
    assert_eq!(auth::split(&p, Family::V4).0, &v2[..]);
    // Short or odd lengths come back whole for the receive checks.
    assert_eq!(auth::split(&p[..5], Family::V4), (&p[..5], None));
    assert_eq!(auth::split(&p[..p.len() - 3], Family::V4).1, None);
}

#[test]
fn keys_are_long_enough_and_never_printed() {
    assert_eq!(Key::new(vec![1; MIN_KEY_LEN - 1]), Err(KeyError::TooShort(31)));
    let k = Key::from_file_contents(b"0123456789abcdef0123456789abcdef\n".to_vec()).unwrap();
    assert_eq!(format!("{k:?}"), "Key(32 bytes)");
    assert_eq!(k, Key::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap(), "newline trimmed");
}
