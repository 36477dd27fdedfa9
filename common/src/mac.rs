//! An Ethernet (EUI-48) address: the one type every crate parses and
//! prints MACs with.
use core::{fmt, str::FromStr};

/// An Ethernet address, in wire order. Prints and parses as six
/// colon-separated hex pairs, `02:00:5e:00:00:01` (IEEE 802 canonical form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The group (I/G) bit: set for multicast and broadcast addresses,
    /// which reach many stations and so can never name one backend.
    pub const fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The VRRP virtual router MAC of `vrid` (RFC 9568 section 7.3):
    /// `00:00:5e:00:01:VRID` for IPv4, `00:00:5e:00:02:VRID` for IPv6.
    pub const fn vrrp(vrid: u8, ipv6: bool) -> Mac {
        Mac([0, 0, 0x5e, 0, if ipv6 { 2 } else { 1 }, vrid])
    }
}

/// Why a text is not a MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseMacError;

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected six hex pairs separated by ':', such as 02:00:00:00:00:11")
    }
}

impl FromStr for Mac {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or(ParseMacError)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ParseMacError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
        }
        match parts.next() {
            Some(_) => Err(ParseMacError),
            None => Ok(Mac(mac)),
        }
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::Mac;

    #[test]
    fn parses_and_prints_the_canonical_form() {
        let mac: Mac = "02:00:5e:0A:ff:01".parse().unwrap();
        assert_eq!(mac, Mac([2, 0, 0x5e, 0x0a, 0xff, 1]));
        assert_eq!(mac.to_string(), "02:00:5e:0a:ff:01");
        assert!(!mac.is_group());
        assert!("ff:ff:ff:ff:ff:ff".parse::<Mac>().unwrap().is_group());
        assert_eq!(Mac::vrrp(51, false).to_string(), "00:00:5e:00:01:33");
        assert_eq!(Mac::vrrp(255, true).to_string(), "00:00:5e:00:02:ff");
        for bad in ["02:00:5e:0a:ff", "02:00:5e:0a:ff:01:02", "zz:00:5e:0a:ff:01", "2:00:5e:0a:ff:01", ""] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
