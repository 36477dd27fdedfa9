//! The contract between the XDP program and user space.
//!
//! Everything here is `#[repr(C)]` plain data laid out identically on both
//! sides, plus the flow hash, which must be bit-for-bit the same in the
//! kernel (to pick a backend) and in user space (to predict and test the
//! pick). This crate is `no_std`; the `user` feature adds `aya::Pod`.
//!
//! Byte order: addresses and ports are stored exactly as they appear on the
//! wire (network order), as raw `u32`/`u16` loaded from the packet. The
//! datapath never swaps bytes; user space converts once when it writes a map.
#![no_std]

pub mod failover;
pub mod hash;
mod mac;

pub use mac::{Mac, ParseMacError};

/// Most VIPs one datapath serves. Sizes the VIP-indexed maps.
pub const MAX_VIPS: u32 = 64;
/// Most backends ("reals") over all pools. Sizes the real-indexed maps.
pub const MAX_REALS: u32 = 4096;
/// Largest Maglev lookup table, in slots. 65537 is prime, the paper's
/// default size (Eisenbud et al., "Maglev", NSDI 2016, section 5.3).
pub const MAGLEV_MAX_TABLE_SIZE: u32 = 65537;
/// Each VIP owns two table slots of `MAGLEV_MAX_TABLE_SIZE` entries: user space
/// writes the inactive one, then flips [`VipMeta::table_slot`]. A packet
/// therefore always sees a complete table.
pub const TABLE_SLOTS_PER_VIP: u32 = 2;
/// Entries of the `LOOKUP_TABLES` array map.
pub const LOOKUP_TABLES_LEN: u32 = MAX_VIPS * TABLE_SLOTS_PER_VIP * MAGLEV_MAX_TABLE_SIZE;

/// Names of the maps and program in the object, for user space.
pub mod names {
    pub const PROGRAM: &str = "fulcrum_xdp";
    pub const VIPS: &str = "VIPS";
    pub const LOOKUP_TABLES: &str = "LOOKUP_TABLES";
    pub const REALS: &str = "REALS";
    pub const DATAPATH_CONFIG: &str = "DATAPATH_CONFIG";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// The connection table of IPv4 flows (`FlowKeyV4` keys).
    pub const CONN_TABLE_V4: &str = "CONN_TABLE_V4";
    /// The connection table of IPv6 flows (`FlowKey` keys).
    pub const CONN_TABLE_V6: &str = "CONN_TABLE_V6";
    /// The global holding the connection tables' hash seed (`u64`).
    pub const CONN_HASH_SEED: &str = "CONN_HASH_SEED";
    /// The global holding the connection tables' set count minus one (`u32`).
    pub const CONN_SET_MASK: &str = "CONN_SET_MASK";
    /// VIP id -> [`VipFacts`]: the generation and the facts an
    /// established flow's packet needs.
    pub const VIP_FACTS: &str = "VIP_FACTS";
    pub const VIP_REAL_OK: &str = "VIP_REAL_OK";
    pub const VIP_ADDRESSES: &str = "VIP_ADDRESSES";
    /// The decapsulation program (`fulcrum-xdp-decap`, its own object) and its maps.
    pub const DECAP_PROGRAM: &str = "fulcrum_decap";
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
}

/// Connection table entries per address family when the configuration
/// does not say (`[datapath] conn_table_size`): one million IPv4 flows and
/// one million IPv6 flows, rounded up to 1,048,576 each ([`conn_sets`]),
/// 32 + 56 MiB of kernel memory preallocated at load (32 bytes per IPv4
/// flow, 56 per IPv6 flow; see `docs/architecture.md`).
pub const DEFAULT_CONN_TABLE_SIZE: u32 = 1_000_000;

/// Words of the `VIP_REAL_OK` bitmap: one bit per (VIP id, real id).
pub const VIP_REAL_OK_WORDS: u32 = MAX_VIPS * MAX_REALS / 64;

/// The `VIP_REAL_OK` word and bit of (`vip_id`, `real_id`): bit set means
/// established flows of the VIP may stay on the real (it is a member of
/// the VIP's pool, and not down under `on_marked_down = "repick"`).
#[inline(always)]
pub const fn vip_real_ok_bit(vip_id: u32, real_id: u32) -> (u32, u32) {
    (vip_id * (MAX_REALS / 64) + real_id / 64, real_id % 64)
}

/// Words of the `VIP_FILTER` array: 64 x 64 = 4096 bits.
pub const VIP_FILTER_WORDS: u32 = 64;

/// The `VIP_FILTER` bit of a destination address, as stored in
/// `VipKey::addr`: word `bit / 64`, bit `bit % 64`.
///
/// The filter is a one-hash Bloom filter over the VIP addresses: a clear
/// bit proves an address is no VIP, so the datapath passes most non-VIP
/// traffic after one inlined array load instead of a hash-map lookup. A set
/// bit only means "look the VIP up". The fold and the multiplicative hash
/// (Knuth's 2^32 / golden ratio) spread the last word, which varies most
/// between addresses, over the bits.
#[inline(always)]
pub const fn vip_filter_bit(addr: &[u32; 4]) -> u32 {
    let folded = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    folded.wrapping_mul(0x9e37_79b1) >> 20
}

/// IP protocol numbers (IANA) the datapath balances.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of the `VIPS` hash map: a service is (address, port, protocol).
///
/// `addr` holds the IPv6 address, or for IPv4 the IPv4-mapped form
/// `::ffff:a.b.c.d` (RFC 4291 section 2.5.5.2), as four raw network-order
/// words. `port` is network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl VipKey {
    /// The key for `addr`:`port` (host order) over IP protocol `proto`.
    pub fn new(addr: core::net::IpAddr, port: u16, proto: u8) -> Self {
        VipKey { addr: addr_words(addr), port: port.to_be(), proto, _pad: 0 }
    }
}

/// An address as the datapath stores it: four raw network-order words,
/// IPv4 in its IPv4-mapped IPv6 form.
pub fn addr_words(addr: core::net::IpAddr) -> [u32; 4] {
    let octets = match addr {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    };
    let word = |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// The third word of an IPv4-mapped IPv6 address (`0000:ffff`), as stored raw.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Scheduler flag: hash the source address only (ip-hash), instead of the
/// whole 5-tuple (maglev). Both index the same kind of Maglev table.
pub const VIP_F_HASH_SRC_ONLY: u32 = 1 << 0;

/// The VIP belongs to a VRRP instance that is not MASTER on this node: its
/// packets are passed to the kernel (`Reason::PassNotMaster`), not
/// forwarded. The entry, its table and its flows stay, so taking over is
/// one flag flip.
pub const VIP_F_STANDBY: u32 = 1 << 1;

/// Forward the VIP's packets encapsulated to the real's address (IPIP,
/// RFC 2003, for an IPv4 VIP; IP6IP6, RFC 2473, for an IPv6 VIP) instead
/// of L2 DSR, so reals may sit on another L3 network. The outer source is
/// [`DatapathConfig::ipip_src_v4`] / `ipip_src_v6` with the prefix's host
/// bits taken from the flow hash; see `ipip_source`.
pub const VIP_F_IPIP: u32 = 1 << 2;

/// Value of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into the VIP-indexed maps, `< MAX_VIPS`.
    pub vip_id: u32,
    /// `VIP_F_*` bits.
    pub flags: u32,
    /// Size M of the live lookup table in slots: a prime
    /// `<= MAGLEV_MAX_TABLE_SIZE`, or 0 when no backend is healthy (drop).
    pub table_size: u32,
    /// Which of the VIP's two table slots (0 or 1) is live.
    pub table_slot: u32,
    /// UDP flows idle longer than this many jiffies (kernel timer ticks,
    /// 1/HZ s each: `fulcrum_l4::ms_to_jiffies` converts the configured
    /// `udp_idle_timeout`) lose their connection-table entry and take a
    /// fresh pick. TCP entries have no idle time: they live until their
    /// connection-table set evicts them.
    pub udp_idle_timeout_jiffies: u32,
    /// The IEEE 802.1Q VLAN id (1..=4094) the VIP is reached on, or 0:
    /// untagged (or priority-tagged, VID 0) frames only. A frame on
    /// another VLAN is `Reason::PassVlanMismatch`.
    pub vlan: u32,
    /// Bumped by user space each time the facts a connection-table hit
    /// relies on change (flags, VLAN, UDP idle timeout) or the id is given
    /// to another VIP; `VIP_FACTS[vip_id]` is set to it and those facts
    /// after this entry is written, and bumped again after the VIP is
    /// removed. A packet whose entry's [`ConnEntry::vip_gen`] equals
    /// `VIP_FACTS[vip_id].gen` may skip the `VIPS` lookup and use the
    /// facts of `VIP_FACTS` (see `docs/architecture.md`, "The
    /// established-flow path").
    pub gen: u32,
    pub _pad: u32,
}

impl VipMeta {
    /// Index of the first entry of this VIP's live table in `LOOKUP_TABLES`.
    #[inline(always)]
    pub fn table_base(&self) -> u32 {
        (self.vip_id * TABLE_SLOTS_PER_VIP + (self.table_slot & 1)) * MAGLEV_MAX_TABLE_SIZE
    }
}

/// Value of the `VIP_FACTS` array, indexed by VIP id: what a packet of an
/// established flow needs from its VIP's [`VipMeta`], so that it is
/// forwarded without the `VIPS` hash lookup (about 40 ns here). A copy of
/// the `VIPS` value's fields, in the array element the generation check
/// reads anyway: no cache line more than that check.
///
/// Written by user space (`fulcrum-l4`'s writer) after the `VIPS` entry,
/// in updates that each change the generation alone or the facts alone
/// under `gen` 0: the old facts under `gen` 0, the new facts, then the
/// new `gen`. The datapath reads `gen`, the facts, and `gen` again, and
/// uses the facts only if both reads equal the entry's
/// [`ConnEntry::vip_gen`] (never 0), so facts it uses are the ones
/// written under that generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipFacts {
    /// [`VipMeta::gen`] of the VIP holding the id, 0 while the facts
    /// below are being rewritten (or no VIP ever held the id).
    pub gen: u32,
    /// [`VipMeta::flags`] (`VIP_F_*` bits).
    pub flags: u32,
    /// [`VipMeta::udp_idle_timeout_jiffies`], in jiffies.
    pub udp_idle_timeout_jiffies: u32,
    /// [`VipMeta::vlan`]: the 802.1Q VLAN id, 0 for untagged.
    pub vlan: u32,
}

impl VipFacts {
    /// The facts of `meta`, under its generation.
    pub fn of(meta: &VipMeta) -> Self {
        VipFacts { gen: meta.gen, flags: meta.flags, udp_idle_timeout_jiffies: meta.udp_idle_timeout_jiffies, vlan: meta.vlan }
    }
}

/// Value of the `REALS` array (indexed by real id): where to send a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealDef {
    /// The backend's Ethernet address (L2 DSR rewrites the destination to it).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Bumped by user space each time the id is given to an address, so a
    /// connection-table entry written for the id's previous owner
    /// ([`ConnEntry::real_gen`]) no longer matches and the flow re-picks.
    pub generation: u32,
    pub _pad2: u32,
    /// The real's address (raw network-order words, IPv4 in IPv4-mapped
    /// form as in [`VipKey::addr`]): the outer destination of IPIP/IP6IP6
    /// VIPs. Unused by L2 DSR.
    pub addr: [u32; 4],
}

/// A flow's 5-tuple as the packet carries it, addresses in the
/// IPv4-mapped form of [`VipKey::addr`]: the key of `CONN_TABLE_V6` (40
/// bytes). IPv4 flows are kept in `CONN_TABLE_V4` under the 16-byte
/// [`FlowKeyV4`] ([`FlowKey::v4`]); user space may name either kind of
/// flow with a `FlowKey`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Source and destination port, see [`ports_word`].
    pub ports: u32,
    /// The IP protocol number, widened to a word: a key without padding
    /// bytes is built with four word stores, where `[u8; 3]` of padding
    /// costs a call of a byte-wise `memset` subprogram in the datapath.
    /// In way 0 of a connection-table set, its top bit is the set's
    /// writer lock ([`CONN_SET_LOCK`]), not part of the key.
    pub proto: u32,
}

impl FlowKey {
    /// The key without the set lock's bit ([`CONN_SET_LOCK`]), which way
    /// 0 of a set holds while a writer has the set: the key as the flow's.
    pub fn unlocked(mut self) -> Self {
        self.proto &= !CONN_SET_LOCK;
        self
    }

    /// The `CONN_TABLE_V4` key of the flow, if both addresses are
    /// IPv4-mapped (an IPv4 flow).
    pub fn v4(&self) -> Option<FlowKeyV4> {
        let mapped = |a: &[u32; 4]| a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_WORD;
        (mapped(&self.src) && mapped(&self.dst)).then_some(FlowKeyV4 {
            src: self.src[3],
            dst: self.dst[3],
            ports: self.ports,
            proto: self.proto,
        })
    }
}

/// Key of `CONN_TABLE_V4`: an IPv4 flow's 5-tuple, raw
/// network-order words as loaded from the packet. 16 bytes instead of
/// [`FlowKey`]'s 40: fewer words to hash and compare on every lookup, and
/// an IPv4 way ([`ConnWay`]) of 32 bytes, half a cache line. (With the
/// kernel's LRU hash, which hashed and compared every key byte in a
/// helper, the short key made an IPv4 hit about 8 ns cheaper here,
/// `bench/RESULTS.md`, xdp2.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src: u32,
    pub dst: u32,
    /// Source and destination port, see [`ports_word`].
    pub ports: u32,
    /// The IP protocol number, widened to a word (see [`FlowKey::proto`]).
    pub proto: u32,
}

impl FlowKeyV4 {
    /// The key without the set lock's bit; see [`FlowKey::unlocked`].
    pub fn unlocked(mut self) -> Self {
        self.proto &= !CONN_SET_LOCK;
        self
    }
}

/// A connection-table entry (in its flow's [`ConnWay`]): the real a
/// flow was sent to, the VIP it belongs to, and when it was last seen. 16
/// bytes, so an IPv4 way (key and entry) is 32 and a set of four two
/// cache lines. The VIP's facts an established packet needs (flags, VLAN,
/// UDP idle timeout) are not copied here but read from `VIP_FACTS[vip_id]`
/// ([`VipFacts`]), the element whose generation the packet checks anyway.
///
/// Everything encapsulation needs is reached through `real_id` (the
/// real's address lives in `REALS`), and IPIP's per-flow outer source
/// is derived from the packet's 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    /// Index into `REALS` (< [`MAX_REALS`], 4096).
    pub real_id: u16,
    /// [`VipMeta::vip_id`] (< [`MAX_VIPS`]).
    pub vip_id: u16,
    /// `RealDef::generation` of `real_id` when the entry was written.
    pub real_gen: u32,
    /// The VIP's [`VipMeta::gen`] when the entry was written (or its
    /// VIP id last refreshed). While `VIP_FACTS[vip_id].gen` equals it, a
    /// packet of the flow is forwarded without the `VIPS` lookup, with the
    /// facts of `VIP_FACTS`; otherwise (0 never matches) it takes the full
    /// path, which updates `vip_id` and this.
    pub vip_gen: u32,
    /// When the flow was last seen, and whether it was seen again after
    /// its write: the low 31 bits ([`CONN_SEEN_JIFFIES`]) are
    /// `bpf_jiffies64()` (the kernel's `jiffies_64`: timer ticks, 1/HZ s
    /// each) modulo 2^31 at the write (a SYN, a miss) or at the last hit,
    /// rewritten at most once a tick; the top bit is [`CONN_REFERENCED`],
    /// set by every hit. Serves both the set's replacement (least recently
    /// seen, unreferenced first) and UDP idle expiry. Only differences
    /// mean anything, taken modulo 2^31 ([`conn_age`]); user space has no
    /// syscall reading `jiffies_64`, so it turns them into time with
    /// `fulcrum_l4::tick_ns`.
    ///
    /// Wrap: 2^31 ticks are 24.8 days at HZ=1000 (99 days at HZ=250). An
    /// entry untouched for that long looks as young as its age modulo
    /// 2^31: its set may then evict a younger flow before it (harmless: it
    /// only reorders victims among the four ways), and a UDP flow idle for
    /// a whole multiple of that period, give or take its timeout, would be
    /// followed instead of expired, to the real it had, and only if that
    /// real still serves the VIP under the same id and generation (every
    /// other check of an established packet still applies). A set that
    /// keeps a flow unevicted for weeks is one no new flow hashed to, so
    /// this costs nothing real; no sweep is worth its memory traffic.
    pub seen: u32,
}

// `ConnEntry`'s ids are u16s.
const _: () = assert!(MAX_REALS <= 1 << 16 && MAX_VIPS <= 1 << 16);

/// Ways (flows) per set of the connection table: a flow may live in any
/// of the `CONN_WAYS` ways of the one set its hash names
/// ([`conn_set_hash_v4`] / [`conn_set_hash_v6`]), as in a set-associative
/// CPU cache. Four: a lookup compares at most four keys, in two cache
/// lines for IPv4 (a 128-byte set of 32-byte ways) and four for IPv6 (a
/// 224-byte set of 56-byte ways; a set starts 32 bytes into a line every
/// other time), the tables being cache-line aligned (`BPF_F_MMAPABLE`
/// arrays start on a page), and a flow is evicted only by flows of its
/// own set.
pub const CONN_WAYS: usize = 4;

/// [`ConnEntry::seen`]'s mark of a flow that has been looked up since it
/// was written (a second packet, or more). The bit outranks any age, so
/// the set's victim is an entry never looked up again (a one-packet flow:
/// a SYN flood's), the oldest first, before the least recently used of
/// the flows that did see traffic: the kernel LRU's inactive and active
/// lists (kernel/bpf/bpf_lru_list.c) within a set.
pub const CONN_REFERENCED: u32 = 1 << 31;

/// [`ConnEntry::seen`]'s jiffies bits: `bpf_jiffies64()` modulo 2^31.
pub const CONN_SEEN_JIFFIES: u32 = !CONN_REFERENCED;

/// Ticks (jiffies) from `seen` ([`ConnEntry::seen`], its mark ignored)
/// to `now` (the low 32 bits of `bpf_jiffies64()`), modulo 2^31.
#[inline(always)]
pub const fn conn_age(now: u32, seen: u32) -> u32 {
    now.wrapping_sub(seen) & CONN_SEEN_JIFFIES
}

/// The set's writer lock: a bit of way 0's key protocol word
/// ([`FlowKeyV4::proto`] / [`FlowKey::proto`], whose low 8 bits hold the
/// protocol number). A writer sets it with a 64-bit compare-and-exchange
/// on that key's `ports`/`proto` word and clears it with an exchange;
/// every key comparison masks it out (`proto & !CONN_SET_LOCK`), so it
/// neither makes nor breaks a match. User space, which compares keys
/// too, masks it the same way ([`FlowKeyV4::unlocked`]).
pub const CONN_SET_LOCK: u32 = 1 << 31;

/// One way of a connection-table set: a flow's key and its entry.
///
/// `K` is [`FlowKeyV4`] (32-byte ways) or [`FlowKey`] (56 bytes). A way
/// whose key has protocol 0 (ignoring [`CONN_SET_LOCK`]) is empty: no
/// flow has protocol 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnWay<K> {
    pub key: K,
    pub entry: ConnEntry,
}

/// Value of `CONN_TABLE_V4` / `CONN_TABLE_V6`: one set of [`CONN_WAYS`]
/// flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSet<K> {
    pub ways: [ConnWay<K>; CONN_WAYS],
}

/// Sets of a connection table holding at least `flows` flows: `flows /
/// CONN_WAYS` rounded up to a power of two (the set index is a mask of
/// the hash), at least 1. So a table holds between `flows` and twice as
/// many: 1,000,000 -> 262,144 sets, 1,048,576 flows.
pub const fn conn_sets(flows: u32) -> u32 {
    let sets = flows.div_ceil(CONN_WAYS as u32);
    if sets <= 1 {
        1
    } else {
        sets.next_power_of_two()
    }
}

/// The set of an IPv4 flow: `conn_set_hash_v4(key, seed) & (sets - 1)`.
/// The key's address half, keyed by a random `seed` chosen at load and
/// multiplied by the 64-bit golden ratio, XORed with its ports half, then
/// MurmurHash3's 64-bit finalizer `fmix64` (Appleby, public domain), a
/// bijection whose every output bit depends on every input bit: three
/// multiplications in all, a few instructions in BPF, where the kernel's
/// hash map runs `jhash2` over the key in a helper call. The finalizer
/// matters: one client's consecutive source ports differ in a few low
/// bits, and a plain multiply-and-fold left some seeds' sets so uneven
/// that a full table had several times the expected empty ways
/// (`the_set_hash_spreads_one_clients_consecutive_ports`). The seed
/// plays the part of the kernel's per-map `hashrnd`: senders cannot aim
/// their flows at one set without knowing it.
#[inline(always)]
pub const fn conn_set_hash_v4(key: &FlowKeyV4, seed: u64) -> u64 {
    fmix64((w(key.src, key.dst) ^ seed).wrapping_mul(CONN_K1) ^ w(key.ports, key.proto))
}

/// The set of an IPv6 flow; see [`conn_set_hash_v4`]. The address words
/// are chained through multiply-and-fold steps, then the ports half goes
/// through `fmix64` as for IPv4.
#[inline(always)]
pub const fn conn_set_hash_v6(key: &FlowKey, seed: u64) -> u64 {
    let mut h = fold((w(key.src[0], key.src[1]) ^ seed).wrapping_mul(CONN_K1));
    h = fold((h ^ w(key.src[2], key.src[3])).wrapping_mul(FMIX_K1));
    h = fold((h ^ w(key.dst[0], key.dst[1])).wrapping_mul(CONN_K1));
    h = (h ^ w(key.dst[2], key.dst[3])).wrapping_mul(FMIX_K1);
    fmix64(h ^ w(key.ports, key.proto))
}

/// 2^64 / the golden ratio.
const CONN_K1: u64 = 0x9e37_79b9_7f4a_7c15;
/// MurmurHash3 `fmix64`'s multipliers.
const FMIX_K1: u64 = 0xff51_afd7_ed55_8ccd;
const FMIX_K2: u64 = 0xc4ce_b9fe_1a85_ec53;

/// Two key words as one 64-bit word.
#[inline(always)]
const fn w(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// A product's high half folded into its low half: a multiplication
/// carries information only upwards, and the set index is the low bits.
#[inline(always)]
const fn fold(h: u64) -> u64 {
    h ^ (h >> 32)
}

/// MurmurHash3's 64-bit finalizer.
#[inline(always)]
const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(FMIX_K1);
    k ^= k >> 33;
    k = k.wrapping_mul(FMIX_K2);
    k ^ (k >> 33)
}


/// What the connection table did for a VIP packet: the index of
/// [`VipCounters::conn`]. Indices and names are stable; new events are appended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// An entry was found and used.
    Hit = 0,
    /// No entry for a packet that is not a TCP SYN: a Maglev pick, written
    /// as a new entry (a flow evicted from its set, started before this
    /// node took over, or a UDP flow's first packet).
    Miss = 1,
    /// A TCP SYN (without ACK): always a fresh Maglev pick, written.
    Syn = 2,
    /// An entry naming a real that is no longer usable for the VIP (removed
    /// from its pool, down under `repick`, or its id reused): re-picked.
    Stale = 3,
    /// A UDP entry idle past the VIP's `udp_idle_timeout`: re-picked.
    Expired = 4,
    /// Writing an entry failed (the flow was still forwarded).
    WriteFailed = 5,
}

impl ConnEvent {
    /// Number of events: the length of [`VipCounters::conn`].
    pub const COUNT: u32 = 6;

    /// Every event, in index order.
    pub const ALL: [ConnEvent; Self::COUNT as usize] =
        [ConnEvent::Hit, ConnEvent::Miss, ConnEvent::Syn, ConnEvent::Stale, ConnEvent::Expired, ConnEvent::WriteFailed];

    /// Short stable name, used in stats output.
    pub const fn name(self) -> &'static str {
        match self {
            ConnEvent::Hit => "hit",
            ConnEvent::Miss => "miss",
            ConnEvent::Syn => "syn",
            ConnEvent::Stale => "stale",
            ConnEvent::Expired => "expired",
            ConnEvent::WriteFailed => "write_failed",
        }
    }
}

/// Value of the single-entry `DATAPATH_CONFIG` array.
///
/// The IPIP source scheme: the outer source address of an encapsulated
/// packet is `prefix | (flow_hash & host_mask)`, both raw network-order
/// words, so each flow gets a fixed source inside a configured prefix
/// (`[datapath] ipip_source_v4 = "a.b.c.0/24"`, `ipip_source_v6 =
/// "...::/112"`) and the real's NIC, whose RSS hashes the outer addresses
/// only, spreads flows over its queues (Katran does the same with a fixed
/// prefix and the client's source port). For IPv6 only the last word
/// varies (prefix length 96..=128).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Our own Ethernet address, written as the source of forwarded frames.
    pub self_mac: [u8; 6],
    /// The egress interface's MTU in bytes (the largest IP packet it
    /// sends). An IPIP/IP6IP6 packet whose outer IP packet would exceed
    /// it is answered with ICMP "fragmentation needed" / "packet too big"
    /// instead. 0: no encapsulated packet fits (user space has not said).
    pub mtu: u16,
    /// IPv4 outer source prefix, raw network order, host bits zero.
    pub ipip_src_v4: u32,
    /// IPv4 host bits of that prefix, raw network order: taken from the flow hash.
    pub ipip_src_v4_host: u32,
    /// IPv6 outer source prefix, raw network-order words, host bits zero.
    pub ipip_src_v6: [u32; 4],
    /// Host bits of the IPv6 prefix's last word, raw network order.
    pub ipip_src_v6_host: u32,
    pub _pad: u32,
    /// VRRP instances whose frames arrive on their RFC 9568 (section 7.3)
    /// virtual router MAC, IPv4 form `00:00:5e:00:01:VRID`: bit `VRID % 64`
    /// of word `VRID / 64` set (see [`virtual_mac_bit`]). A frame to such a
    /// MAC is balanced like one to [`Self::self_mac`] if it carries IPv4.
    pub virtual_mac_v4: [u64; 4],
    /// The same for the IPv6 form `00:00:5e:00:02:VRID`, IPv6 frames only.
    pub virtual_mac_v6: [u64; 4],
}

/// Word and bit of `vrid` in [`DatapathConfig::virtual_mac_v4`] / `_v6`.
#[inline(always)]
pub const fn virtual_mac_bit(vrid: u8) -> (usize, u32) {
    ((vrid >> 6) as usize, (vrid & 63) as u32)
}

/// Bytes IPIP adds to a packet (one IPv4 header, RFC 2003).
pub const IPIP_OVERHEAD: u16 = 20;
/// Bytes IP6IP6 adds to a packet (one IPv6 header, RFC 2473).
pub const IP6IP6_OVERHEAD: u16 = 40;

/// A per-CPU counter pair; user space sums it over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    /// Frame bytes as seen by XDP (Ethernet header included).
    pub bytes: u64,
}

/// Value of the per-CPU `VIP_STATS` array, indexed by VIP id: everything
/// a VIP packet counts for its VIP, in one value, so that a packet makes
/// one map lookup and touches two adjacent counter pairs (one cache line
/// for the `Hit` of an established flow) instead of two maps. There is no
/// node-wide connection-table counter in the datapath: user space sums
/// `conn` over the VIP ids, plus what it carried over from ids it gave to
/// new VIPs (`fulcrum_l4::CounterReader::conn_events`), which saves every
/// VIP packet a lookup and an update (about 1.5 ns each here,
/// `bench/RESULTS.md`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCounters {
    /// Frames (and their bytes) that reached the VIP: forwarded, dropped
    /// for want of a backend, ICMP errors.
    pub vip: Counters,
    /// The VIP's forwarded packets per [`ConnEvent`], indexed by
    /// `ConnEvent as usize`.
    pub conn: [Counters; ConnEvent::COUNT as usize],
    /// Flows evicted from the connection table to make room for this
    /// VIP's flows: a write (`Syn`, `Miss`, `Stale`, `Expired`) whose
    /// set's victim way held another flow, of any VIP.
    pub evictions: u64,
}

/// Why the datapath took its action on a frame: the index of `REASON_STATS`.
///
/// Indices are stable (new reasons are appended), and so are the names.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded to a backend with `XDP_TX`.
    Tx = 0,
    /// `XDP_PASS`: not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 1,
    /// `XDP_PASS`: frame too short for the headers it announces: a header
    /// cut short, an IPv4 total length or IPv6 payload length past the end
    /// of the frame, or an L4 header past the end of the IP packet (the
    /// kernel counts such frames as `InTruncatedPkts` and drops them).
    PassTruncated = 2,
    /// `XDP_PASS`: an IP fragment, first or later: a later one carries no
    /// ports, so neither its VIP nor its flow's real can be known without
    /// reassembly (Katran passes them too). An IPv6 atomic fragment
    /// (offset 0, M clear; RFC 6946) is a whole packet, and balanced.
    PassFragment = 3,
    /// `XDP_PASS`: no TCP or UDP header to read: another protocol (ICMP,
    /// ...), more IPv6 extension headers than the datapath walks, or a
    /// routing header with segments left (the VIP is not the final
    /// destination yet).
    PassNotL4 = 4,
    /// `XDP_PASS`: (address, port, protocol) is not a VIP.
    PassNotVip = 5,
    /// `XDP_PASS`: an IP header that contradicts itself: a version that
    /// disagrees with the EtherType, an IPv4 header length below 20 bytes,
    /// or an IPv4 total length shorter than the header (the kernel counts
    /// such frames as `InHdrErrors` and drops them).
    PassMalformed = 6,
    /// `XDP_DROP`: the VIP has no healthy backend.
    DropNoBackend = 7,
    /// `XDP_PASS`: to a VIP, but not to this interface's own unicast MAC
    /// (broadcast, multicast, or another station's frame seen by a
    /// promiscuous or bridged port): never turned into unicast to a real.
    PassNotForUs = 8,
    /// `XDP_PASS`: IPv6 to an IPv4-mapped address (`::ffff:a.b.c.d`),
    /// which must not reach the IPv4 VIP stored under that key.
    PassV4Mapped = 9,
    /// `XDP_PASS`: to a VIP whose VRRP instance is not MASTER on this node
    /// (`VIP_F_STANDBY`); the MASTER forwards it.
    PassNotMaster = 10,
    /// `XDP_TX`: an ICMP or ICMPv6 echo request to a VIP address, answered
    /// from XDP with an echo reply.
    IcmpEchoReply = 11,
    /// `XDP_TX`: a packet for an IPIP/IP6IP6 VIP that would exceed the
    /// MTU once encapsulated, answered with ICMP "fragmentation needed"
    /// (IPv4, DF set) or ICMPv6 "packet too big" (Katran's
    /// `ICMP_TOOBIG_GENERATION`).
    IcmpTooBig = 12,
    /// `XDP_DROP`: too big to encapsulate, and no ICMP can be sent for it:
    /// IPv4 without DF (XDP cannot fragment), or shorter than the quote an
    /// ICMP error carries (only with an MTU below 1280).
    DropTooBig = 13,
    /// `XDP_DROP`: the driver gave no headroom for the outer header
    /// (`bpf_xdp_adjust_head` failed).
    DropNoHeadroom = 14,
    /// `XDP_PASS`: stacked VLAN tags (IEEE 802.1ad QinQ: an outer
    /// EtherType 0x88a8, or an 802.1Q tag followed by another tag). Not
    /// balanced: no VIP is configured on a stacked VLAN.
    PassQinQ = 15,
    /// `XDP_PASS`: to a VIP, but on another VLAN than the VIP's `vlan`
    /// (or tagged, for an untagged VIP; or untagged, for a tagged one).
    PassVlanMismatch = 16,
    /// `XDP_TX`: an ICMP "fragmentation needed" (type 3 code 4) or ICMPv6
    /// "packet too big" to a VIP address, quoting a packet the VIP sent
    /// to a client (a router on the real's path to the client could not
    /// forward the real's answer), forwarded to the real that owns that
    /// flow, so the real's stack lowers its path MTU (Katran does this).
    IcmpTooBigForwarded = 17,
}

impl Reason {
    /// Number of reasons: the length of `REASON_STATS`.
    pub const COUNT: u32 = 18;
    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Tx,
        Reason::PassNotIp,
        Reason::PassTruncated,
        Reason::PassFragment,
        Reason::PassNotL4,
        Reason::PassNotVip,
        Reason::PassMalformed,
        Reason::DropNoBackend,
        Reason::PassNotForUs,
        Reason::PassV4Mapped,
        Reason::PassNotMaster,
        Reason::IcmpEchoReply,
        Reason::IcmpTooBig,
        Reason::DropTooBig,
        Reason::DropNoHeadroom,
        Reason::PassQinQ,
        Reason::PassVlanMismatch,
        Reason::IcmpTooBigForwarded,
    ];

    /// Short stable name, used in stats output.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Tx => "tx",
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassTruncated => "pass_truncated",
            Reason::PassFragment => "pass_fragment",
            Reason::PassNotL4 => "pass_not_l4",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassMalformed => "pass_malformed",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::PassNotForUs => "pass_not_for_us",
            Reason::PassV4Mapped => "pass_v4_mapped",
            Reason::PassNotMaster => "pass_not_master",
            Reason::IcmpEchoReply => "tx_icmp_echo_reply",
            Reason::IcmpTooBig => "tx_icmp_too_big",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropNoHeadroom => "drop_no_headroom",
            Reason::PassQinQ => "pass_qinq",
            Reason::PassVlanMismatch => "pass_vlan_mismatch",
            Reason::IcmpTooBigForwarded => "tx_icmp_too_big_forwarded",
        }
    }
}

/// What the decapsulation program (`fulcrum decap`, on a real) did with a
/// frame: the index of `DECAP_STATS`. Indices and names are stable.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapReason {
    /// IPIP or IP6IP6 to a configured VIP: outer header removed, `XDP_PASS`.
    Decapsulated = 0,
    /// `XDP_PASS` untouched: not IPIP/IP6IP6 (most traffic).
    PassNotTunnel = 1,
    /// `XDP_PASS` untouched: a tunnel packet whose inner destination is
    /// not a configured VIP.
    PassNotVip = 2,
    /// `XDP_PASS` untouched: the outer or inner header is cut short.
    PassTruncated = 3,
    /// `XDP_PASS` untouched: outer IPv4 with options or fragmented, or an
    /// inner header that contradicts the outer one.
    PassMalformed = 4,
}

impl DecapReason {
    pub const COUNT: u32 = 5;
    pub const ALL: [DecapReason; Self::COUNT as usize] = [
        DecapReason::Decapsulated,
        DecapReason::PassNotTunnel,
        DecapReason::PassNotVip,
        DecapReason::PassTruncated,
        DecapReason::PassMalformed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DecapReason::Decapsulated => "decapsulated",
            DecapReason::PassNotTunnel => "pass_not_tunnel",
            DecapReason::PassNotVip => "pass_not_vip",
            DecapReason::PassTruncated => "pass_truncated",
            DecapReason::PassMalformed => "pass_malformed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::VipFacts {}
    unsafe impl aya::Pod for super::RealDef {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::VipCounters {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    unsafe impl aya::Pod for super::ConnEntry {}
    unsafe impl aya::Pod for super::ConnSet<super::FlowKeyV4> {}
    unsafe impl aya::Pod for super::ConnSet<super::FlowKey> {}
}

/// The raw 32-bit word made of a TCP/UDP source and destination port, each
/// raw (network order) as loaded from the packet. Defined by value rather
/// than by a memory load so it means the same on every host.
#[inline(always)]
pub const fn ports_word(src_raw: u16, dst_raw: u16) -> u32 {
    src_raw as u32 | (dst_raw as u32) << 16
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn reasons_are_in_index_order_with_unique_snake_case_names() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
            assert!(r.name().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{r:?}");
        }
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert!(Reason::ALL[i + 1..].iter().all(|b| a.name() != b.name()), "{a:?}");
        }
    }
}

#[cfg(test)]
mod conn_tests {
    use super::*;

    #[test]
    fn conn_events_are_in_index_order_with_unique_names() {
        for (i, e) in ConnEvent::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{e:?}");
            assert!(ConnEvent::ALL[i + 1..].iter().all(|b| e.name() != b.name()), "{e:?}");
        }
    }

    #[test]
    fn only_ipv4_flows_have_a_v4_key() {
        let v4 = |a: [u8; 4]| addr_words(core::net::IpAddr::from(a));
        let v6 = addr_words(core::net::IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 1]));
        let key = FlowKey { src: v4([198, 18, 0, 1]), dst: v4([198, 18, 1, 1]), ports: 7, proto: 6 };
        assert_eq!(
            key.v4(),
            Some(FlowKeyV4 { src: key.src[3], dst: key.dst[3], ports: 7, proto: 6 })
        );
        assert_eq!(FlowKey { src: v6, ..key }.v4(), None);
        assert_eq!(FlowKey { dst: v6, ..key }.v4(), None);
        // An IPv4-compatible (not -mapped) address is IPv6.
        assert_eq!(FlowKey { src: [0, 0, 0, key.src[3]], ..key }.v4(), None);
    }

    #[test]
    fn conn_sets_round_up_to_a_power_of_two_of_four_flow_sets() {
        assert_eq!(conn_sets(1_000_000), 262_144);
        assert_eq!(conn_sets(65_536), 16_384);
        assert_eq!(conn_sets(5000), 2048);
        assert_eq!(conn_sets(1024), 256);
        assert_eq!(conn_sets(1 << 26), 1 << 24);
        assert_eq!(conn_sets(1), 1);
    }

    #[test]
    fn the_set_hash_depends_on_every_key_word_and_on_the_seed() {
        let v4 = FlowKeyV4 { src: 0x0100_12c6, dst: 0x0101_12c6, ports: 0x5000_3930, proto: 6 };
        let seed = 0x1234_5678_9abc_def0;
        let h = conn_set_hash_v4(&v4, seed);
        let low = |h: u64| h & 0xffff;
        for other in [
            FlowKeyV4 { src: v4.src ^ 1 << 24, ..v4 },
            FlowKeyV4 { dst: v4.dst ^ 1 << 24, ..v4 },
            FlowKeyV4 { ports: v4.ports ^ 1, ..v4 },
            FlowKeyV4 { proto: 17, ..v4 },
        ] {
            assert_ne!(low(conn_set_hash_v4(&other, seed)), low(h), "{other:?}");
        }
        assert_ne!(low(conn_set_hash_v4(&v4, seed ^ 1)), low(h));
        let v6 = FlowKey { src: [1, 2, 3, 4], dst: [5, 6, 7, 8], ports: 9, proto: 6 };
        let h6 = conn_set_hash_v6(&v6, seed);
        for i in 0..4 {
            let mut src = v6.src;
            src[i] ^= 1;
            let mut dst = v6.dst;
            dst[i] ^= 1;
            assert_ne!(low(conn_set_hash_v6(&FlowKey { src, ..v6 }, seed)), low(h6));
            assert_ne!(low(conn_set_hash_v6(&FlowKey { dst, ..v6 }, seed)), low(h6));
        }
        assert_ne!(low(conn_set_hash_v6(&FlowKey { ports: 10, ..v6 }, seed)), low(h6));
        assert_ne!(low(conn_set_hash_v6(&v6, seed ^ 1)), low(h6));
    }

    /// 20,000 flows of one client, consecutive source ports, into 2048
    /// sets of 4: a uniform hash leaves about 33 ways empty (sets that
    /// fewer than four flows hashed to). The multiply-and-fold hash this
    /// replaced left 65-361 depending on the seed.
    #[test]
    fn the_set_hash_spreads_one_clients_consecutive_ports() {
        let v4 = |a: [u8; 4]| u32::from_ne_bytes(a);
        for seed in [0, 1, 0x5eed_5eed_5eed_5eed, 0x0123_4567_89ab_cdef, u64::MAX] {
            let mut sets = [0u32; 2048];
            for sport in 1..=20_000u16 {
                let key = FlowKeyV4 { src: v4([198, 18, 0, 1]), dst: v4([198, 18, 1, 1]), ports: ports_word(sport.to_be(), 80u16.to_be()), proto: 6 };
                sets[(conn_set_hash_v4(&key, seed) & 2047) as usize] += 1;
            }
            let empty_ways: u32 = sets.iter().map(|&n| 4u32.saturating_sub(n)).sum();
            assert!(empty_ways <= 70, "seed {seed:#x}: {empty_ways} empty ways");
            let v6 = |i: u16| addr_words(core::net::IpAddr::from([0xfd00, 0x18, 0, 0, 0, 0, 0, i]));
            let mut sets = [0u32; 2048];
            for sport in 1..=20_000u16 {
                let key = FlowKey { src: v6(1), dst: v6(2), ports: ports_word(sport.to_be(), 80u16.to_be()), proto: 6 };
                sets[(conn_set_hash_v6(&key, seed) & 2047) as usize] += 1;
            }
            let empty_ways: u32 = sets.iter().map(|&n| 4u32.saturating_sub(n)).sum();
            assert!(empty_ways <= 70, "IPv6, seed {seed:#x}: {empty_ways} empty ways");
        }
    }

    #[test]
    fn layouts_are_what_the_kernel_side_expects() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<FlowKeyV4>(), 16);
        assert_eq!(core::mem::size_of::<ConnEntry>(), 16);
        assert_eq!(core::mem::size_of::<VipFacts>(), 16);
        assert_eq!(core::mem::size_of::<RealDef>(), 32);
        assert_eq!(core::mem::size_of::<DatapathConfig>(), 104);
        assert_eq!(core::mem::size_of::<VipMeta>(), 32);
        assert_eq!(core::mem::size_of::<VipCounters>(), 120);
        assert_eq!(core::mem::size_of::<ConnWay<FlowKeyV4>>(), 32);
        assert_eq!(core::mem::size_of::<ConnWay<FlowKey>>(), 56);
        assert_eq!(core::mem::size_of::<ConnSet<FlowKeyV4>>(), 128);
        assert_eq!(core::mem::size_of::<ConnSet<FlowKey>>(), 224);
        // The set lock's word (`ports` and `proto`) is 8-byte aligned.
        assert_eq!(core::mem::offset_of!(FlowKeyV4, ports) % 8, 0);
        assert_eq!(core::mem::offset_of!(FlowKey, ports) % 8, 0);
        assert_eq!(vip_real_ok_bit(MAX_VIPS - 1, MAX_REALS - 1).0, VIP_REAL_OK_WORDS - 1);
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn nearby_addresses_spread_over_the_filter() {
        let bits: [u32; 256] = core::array::from_fn(|i| {
            vip_filter_bit(&addr_words(core::net::IpAddr::from([198, 18, 1, i as u8])))
        });
        let mut seen = [false; (VIP_FILTER_WORDS * 64) as usize];
        let mut distinct = 0;
        for bit in bits {
            assert!(bit < VIP_FILTER_WORDS * 64);
            distinct += usize::from(!core::mem::replace(&mut seen[bit as usize], true));
        }
        // 256 addresses into 4096 bits: a uniform hash collides ~8 times.
        assert!(distinct >= 240, "{distinct}");
        let v6 = addr_words(core::net::IpAddr::from([0xfd00, 0x18, 1, 0, 0, 0, 0, 1]));
        assert!(vip_filter_bit(&v6) < VIP_FILTER_WORDS * 64);
    }
}

