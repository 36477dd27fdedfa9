//! HMAC-SHA256 authentication between fulcrum nodes: a NON-STANDARD
//! trailer after the VRRP message, off by default.
//!
//! Why: VRRPv3 has no authentication at all (RFC 9568 section 9 leaves it
//! to the network), and VRRPv2's simple text password (RFC 3768 section
//! 5.3.6) travels in clear. RFC 2338's IP Authentication Header (Auth Type
//! 2) was deprecated by RFC 3768. keepalived still implements it as
//! `auth_type AH` (HMAC-MD5-96 over an IPsec AH header in front of the
//! VRRPv2 message, with an AH sequence number, only when built with
//! `--enable-vrrp-auth`), for VRRPv2 only; it has no HMAC-SHA256 and no
//! authentication for VRRPv3. This trailer is fulcrum's own: only fulcrum
//! nodes sharing the key understand it.
//!
//! **Interoperability**: a keepalived (or any RFC) peer sees an advert
//! longer than its address count implies and discards it (RFC 9568 section
//! 7.1: "MUST verify that the received packet contains the complete VRRP
//! packet" — keepalived checks the exact length), and a fulcrum node with
//! a key discards adverts without a trailer. Mixed groups (fulcrum and
//! keepalived) must leave it off.
//!
//! Wire format, appended after the standard message (after the addresses
//! for VRRPv3, after the Authentication Data for VRRPv2). The VRRP checksum
//! still covers the standard message only, exactly as without a trailer:
//!
//! ```text
//! | 'F' (0x46) | 'H' (0x48) | version = 1 | reserved = 0 |   4 bytes
//! | counter: u64, network byte order                     |   8 bytes
//! | HMAC-SHA256(key, input), first 16 bytes              |  16 bytes
//! input = IP source || IP destination (4 or 16 bytes each, network order)
//!         || VRRP message || the trailer's first 12 bytes
//! ```
//!
//! The MAC is truncated to 128 bits as RFC 4868 section 2.3 does for
//! HMAC-SHA-256-128 in IPsec (RFC 2104 section 5: truncation to no less
//! than half the hash length). Covering the IP addresses binds the advert
//! to its sender: the source is the tie-break address of RFC 9568 section
//! 6.4.3, and a replayed advert re-sent from another address fails.
//!
//! The counter, monotonic per sender: `epoch << 32 | sequence`, where
//! `epoch` is the sender's wall-clock Unix time in seconds when the
//! instance started ([`Signer::new`]) and `sequence` counts adverts. A
//! receiver accepts a counter only if it is above the last one it accepted
//! from that source address ([`Verifier`]). Nothing is persisted:
//!
//! - a restarted *sender* picks a later epoch, so its counters exceed
//!   everything it sent before — provided its clock did not step back
//!   across the restart and restarts are at least a second apart (else its
//!   adverts count as `replay` until receivers restart too);
//! - a restarted *receiver* remembers nothing, so it accepts the first
//!   authentic counter from each source, even an old recorded one; from the
//!   first current advert on, every older recording is refused. The
//!   residual risk is a recorded sequence replayed to a freshly started
//!   receiver while the real sender is silent, which delays a takeover by
//!   at most the recording's length. Keys should be rotated if that matters.
//!
//! Replay state is kept only for sources whose MAC verified, so an
//! attacker without the key cannot grow it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::packet::{Family, HEADER_LEN, V2_AUTH_LEN};

/// Length of the trailer, bytes: 4 header + 8 counter + 16 MAC.
pub const TRAILER_LEN: usize = 28;
/// Length of the truncated MAC, bytes (RFC 4868 section 2.3: 128 bits).
pub const MAC_LEN: usize = 16;
/// Shortest key accepted, bytes: the hash output length L of SHA-256
/// (RFC 2104 section 3: "less than L bytes is strongly discouraged";
/// RFC 4868 section 2.1.1 uses 256-bit keys for HMAC-SHA-256-128).
pub const MIN_KEY_LEN: usize = 32;
/// The trailer's first bytes: "FH" (Fulcrum HMAC) and version 1.
const MAGIC: [u8; 3] = [b'F', b'H', 1];

/// A shared HMAC key. Its bytes never appear in `Debug` output.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key from its bytes: at least [`MIN_KEY_LEN`].
    pub fn new(bytes: Vec<u8>) -> Result<Key, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(Key(bytes))
    }

    /// A key from a key file's contents: trailing ASCII whitespace (the
    /// newline an editor or `openssl rand -base64 32 > file` leaves) is
    /// not part of the key.
    pub fn from_file_contents(mut bytes: Vec<u8>) -> Result<Key, KeyError> {
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        Key::new(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length (RFC 2104 section 2).
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Shorter than [`MIN_KEY_LEN`].
    #[error("HMAC key is {0} bytes; at least {MIN_KEY_LEN} are needed (e.g. `openssl rand -base64 32`)")]
    TooShort(usize),
}

/// Why an advert failed authentication. Each is its own counter
/// ([`AuthError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AuthError {
    /// No trailer, a trailer of another version, or a MAC that does not
    /// verify (wrong key, tampered packet, other source/destination).
    #[error("missing or bad HMAC trailer")]
    Mac,
    /// The MAC verified but the counter is not above the last one accepted
    /// from this source: a replayed (or reordered) advert.
    #[error("replayed advert: counter {counter:#x} is not above {last:#x}")]
    Replay {
        /// The packet's counter.
        counter: u64,
        /// The last counter accepted from this source.
        last: u64,
    },
}

impl AuthError {
    /// A stable name for the counter of this reason, alongside
    /// [`crate::Discard::kind`]'s.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Mac => "hmac",
            AuthError::Replay { .. } => "replay",
        }
    }
}

/// Splits a received VRRP payload into the standard message and a trailer
/// of [`TRAILER_LEN`] bytes, if the lengths say there is exactly one. The
/// message length comes from the header (version nibble, address count)
/// as [`crate::Advertisement::decode`] computes it. Anything else comes
/// back whole, for the receive checks to judge.
pub fn split(payload: &[u8], family: Family) -> (&[u8], Option<&[u8]>) {
    if payload.len() < HEADER_LEN {
        return (payload, None);
    }
    let addr_len = match family {
        Family::V4 => 4,
        Family::V6 => 16,
    };
    let auth = if payload[0] >> 4 == 2 { V2_AUTH_LEN } else { 0 };
    let message = HEADER_LEN + usize::from(payload[3]) * addr_len + auth;
    if payload.len() == message + TRAILER_LEN {
        let (m, t) = payload.split_at(message);
        (m, Some(t))
    } else {
        (payload, None)
    }
}

fn mac_input(mac: &mut Hmac<Sha256>, src: IpAddr, dst: IpAddr, message: &[u8], head: &[u8]) {
    for a in [src, dst] {
        match a {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
    }
    mac.update(message);
    mac.update(head);
}

/// The trailer for `message` (an encoded advert) sent from `src` to `dst`
/// with `counter`.
pub fn trailer(key: &Key, src: IpAddr, dst: IpAddr, message: &[u8], counter: u64) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..3].copy_from_slice(&MAGIC);
    t[4..12].copy_from_slice(&counter.to_be_bytes());
    let mut mac = key.mac();
    mac_input(&mut mac, src, dst, message, &t[..12]);
    let tag = mac.finalize().into_bytes();
    t[12..].copy_from_slice(&tag[..MAC_LEN]);
    t
}

/// Checks `trailer` against `message` from `src` to `dst`, in constant
/// time for the MAC comparison. Returns the counter; replay is the
/// [`Verifier`]'s job.
pub fn verify(key: &Key, src: IpAddr, dst: IpAddr, message: &[u8], trailer: Option<&[u8]>) -> Result<u64, AuthError> {
    let t = trailer.ok_or(AuthError::Mac)?;
    if t.len() != TRAILER_LEN || t[..3] != MAGIC || t[3] != 0 {
        return Err(AuthError::Mac);
    }
    let mut mac = key.mac();
    mac_input(&mut mac, src, dst, message, &t[..12]);
    // `verify_truncated_left` compares the leftmost bytes in constant time
    // (subtle), so timing reveals nothing about the expected tag.
    mac.verify_truncated_left(&t[12..]).map_err(|_| AuthError::Mac)?;
    let mut c = [0u8; 8];
    c.copy_from_slice(&t[4..12]);
    Ok(u64::from_be_bytes(c))
}

/// The sending side's counter: `epoch << 32 | sequence` (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct Signer {
    key: Key,
    epoch: u32,
    sequence: u32,
}

impl Signer {
    /// `start_unix_secs`: the wall clock (Unix time, seconds) now. The
    /// shell reads it; this type stays clock-free for tests. Times past
    /// 2106 saturate (the counter then only grows through `sequence`).
    pub fn new(key: Key, start_unix_secs: u64) -> Signer {
        Signer {
            key,
            epoch: u32::try_from(start_unix_secs).unwrap_or(u32::MAX),
            sequence: 0,
        }
    }

    /// The next counter: strictly above every earlier one of this signer.
    pub fn next_counter(&mut self) -> u64 {
        if self.sequence == u32::MAX {
            // 2^32 adverts (497 days at 100 per second): move to the next
            // epoch rather than wrap below earlier counters.
            self.epoch = self.epoch.saturating_add(1);
            self.sequence = 0;
        }
        self.sequence += 1;
        (u64::from(self.epoch) << 32) | u64::from(self.sequence)
    }

    /// `message` with its trailer appended, sent from `src` to `dst`.
    pub fn sign(&mut self, src: IpAddr, dst: IpAddr, mut message: Vec<u8>) -> Vec<u8> {
        let counter = self.next_counter();
        let t = trailer(&self.key, src, dst, &message, counter);
        message.extend_from_slice(&t);
        message
    }
}

/// The receiving side: MAC check and the last counter accepted per source.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: Key,
    last: HashMap<IpAddr, u64>,
}

impl Verifier {
    /// A verifier that has accepted nothing yet.
    pub fn new(key: Key) -> Verifier {
        Verifier {
            key,
            last: HashMap::new(),
        }
    }

    /// Authenticates one received payload (`message`, `trailer` as from
    /// [`split`]). On success the counter becomes the source's last
    /// accepted one. Only call this for packets that passed
    /// [`crate::checks::check`], so that adverts of other virtual routers
    /// never count as authentication failures.
    pub fn check(&mut self, src: IpAddr, dst: IpAddr, message: &[u8], trailer: Option<&[u8]>) -> Result<u64, AuthError> {
        let counter = verify(&self.key, src, dst, message, trailer)?;
        match self.last.get(&src) {
            Some(&last) if counter <= last => Err(AuthError::Replay { counter, last }),
            _ => {
                self.last.insert(src, counter);
                Ok(counter)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// RFC 4231 section 4.3, Test Case 2 ("Jefe"): the crates are wired as
    /// HMAC-SHA256 (the 4-byte key is below our minimum, so straight
    /// through the crate).
    #[test]
    fn rfc4231_test_case_2() {
        let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// RFC 4231 section 4.7, Test Case 6: a 131-byte key (longer than the
    /// 64-byte block: hashed first), through our [`Key`].
    #[test]
    fn rfc4231_test_case_6_through_key() {
        let key = Key::new(vec![0xaa; 131]).unwrap();
        let mut m = key.mac();
        m.update(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
