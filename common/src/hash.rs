//! The flow hash that indexes a VIP's lookup table.
//!
//! MurmurHash3's 32-bit block mix and finalizer (Austin Appleby, public
//! domain), fed fixed-size words so it unrolls into straight-line code the
//! eBPF verifier accepts. Inputs are the raw network-order words loaded
//! from the packet; user space must build them the same way
//! (`u32::from_ne_bytes(addr_octets)`) to predict the kernel's pick.
//!
//! The destination address is left out on purpose: each VIP has its own
//! table, so it could not change the pick, only cost cycles.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
/// Fixed seed: every node of a cluster must pick the same backend for the
/// same flow (the Maglev property that lets flows survive a failover).
const SEED: u32 = 0x6675_6c63; // "fulc"

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(h: u32, len_bytes: u32) -> u32 {
    let mut h = h ^ len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Maglev scheduler, IPv4: hash of (source address, source port, destination
/// port). `ports` is the raw 32-bit word at the start of the TCP/UDP header.
#[inline(always)]
pub fn flow_hash_v4(saddr: u32, ports: u32) -> u32 {
    finish(mix(mix(SEED, saddr), ports), 8)
}

/// Maglev scheduler, IPv6: hash of (source address, ports); see [`flow_hash_v4`].
#[inline(always)]
pub fn flow_hash_v6(saddr: &[u32; 4], ports: u32) -> u32 {
    let h = mix(mix(mix(mix(SEED, saddr[0]), saddr[1]), saddr[2]), saddr[3]);
    finish(mix(h, ports), 20)
}

/// ip-hash scheduler, IPv4: hash of the source address alone.
#[inline(always)]
pub fn src_hash_v4(saddr: u32) -> u32 {
    finish(mix(SEED, saddr), 4)
}

/// ip-hash scheduler, IPv6: hash of the source address alone.
#[inline(always)]
pub fn src_hash_v6(saddr: &[u32; 4]) -> u32 {
    let h = mix(mix(mix(mix(SEED, saddr[0]), saddr[1]), saddr[2]), saddr[3]);
    finish(h, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_addresses_change_the_hash() {
        let a = flow_hash_v4(0x0a00_0001, 0x0050_1f90);
        assert_ne!(a, flow_hash_v4(0x0a00_0002, 0x0050_1f90));
        assert_ne!(a, flow_hash_v4(0x0a00_0001, 0x0051_1f90));
        assert_eq!(a, flow_hash_v4(0x0a00_0001, 0x0050_1f90));
        assert_ne!(src_hash_v6(&[1, 2, 3, 4]), src_hash_v6(&[1, 2, 3, 5]));
    }

    #[test]
    fn spreads_sequential_ports_evenly() {
        // 64k flows from one client over 7 buckets: each within 5% of fair.
        let mut buckets = [0u32; 7];
        for port in 0..65536u32 {
            buckets[(flow_hash_v4(0x0100_12c6, port << 16 | 80) % 7) as usize] += 1;
        }
        let fair = 65536 / 7;
        for b in buckets {
            assert!(b.abs_diff(fair) < fair / 20, "{buckets:?}");
        }
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// The cross-node contract: every node must pick the same backend for a
    /// flow, across versions, or flows move on failover. These values were
    /// taken from this implementation; changing them breaks mixed-version
    /// clusters and must be announced as such.
    #[test]
    fn hashes_are_pinned() {
        let saddr = u32::from_ne_bytes([198, 18, 0, 1]);
        let ports = crate::ports_word(40000u16.to_be(), 80u16.to_be());
        let saddr6 = crate::addr_words(core::net::IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]));
        let got = [flow_hash_v4(saddr, ports), flow_hash_v6(&saddr6, ports), src_hash_v4(saddr), src_hash_v6(&saddr6)];
        assert_eq!(got, PINNED);
    }

    const PINNED: [u32; 4] = [0x9d7c_97d5, 0xaf2c_e914, 0x90be_0b2d, 0x6643_5015];
}
