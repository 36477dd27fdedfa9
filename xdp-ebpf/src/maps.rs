//! The maps shared with user space; their types live in `fulcrum-common`.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use fulcrum_common::{
    conn_sets, ConnEvent, ConnSet, Counters, DatapathConfig, VipCounters, FlowKey, FlowKeyV4, RealDef, Reason, VipFacts, VipKey, VipMeta,
    DEFAULT_CONN_TABLE_SIZE, LOOKUP_TABLES_LEN, MAX_REALS, MAX_VIPS, VIP_FILTER_WORDS,
    VIP_REAL_OK_WORDS,
};

/// One bit per `vip_filter_bit` of every VIP address (a Bloom filter with
/// one hash): a clear bit means "no VIP has this destination", decided by
/// an array load the verifier inlines, before any hash-map lookup. User
/// space sets a VIP's bit before adding the VIP and clears it only after
/// removing it, so a VIP's packets never miss the filter.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// (address, port, protocol) -> VIP metadata. Empty means "pass everything".
/// Not preallocated: an update links a new element and frees the old one
/// only after an RCU grace period, so a reader's element never changes
/// under it. (A preallocated hash map recycles elements at once, so a
/// reader could copy a value half-overwritten by an unrelated update.)
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

/// Every VIP's two lookup tables back to back: entry = real id.
/// Mmapable so user space writes a whole table as one memory copy instead
/// of one syscall per entry (see `fulcrum-l4`'s `tables` module).
#[map]
pub static LOOKUP_TABLES: Array<u32> = Array::with_max_entries(LOOKUP_TABLES_LEN, BPF_F_MMAPABLE);

/// Every address of a VIP this node forwards (raw words, IPv4-mapped form
/// as in `VipKey::addr`) -> its VIPs' VLAN id (`VipMeta::vlan`, 0 for
/// untagged): whom ICMP echo requests are answered for, and on which VLAN.
/// Written by user space with `VIPS`; behind the same `VIP_FILTER` bit.
#[map]
pub static VIP_ADDRESSES: HashMap<[u32; 4], u32> = HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

/// Real id -> where to send.
#[map]
pub static REALS: Array<RealDef> = Array::with_max_entries(MAX_REALS, 0);

/// The connection table, one array per address family: element = one
/// set of `CONN_WAYS` flows (5-tuple -> the real the flow was sent to and
/// the VIP facts it needs), see the `conn` module and
/// `docs/architecture.md`, "The connection table". IPv4 flows have the
/// 16-byte `FlowKeyV4` (128-byte sets), IPv6 flows the 40-byte `FlowKey`
/// (224-byte sets). Each array has `conn_sets([datapath]
/// conn_table_size)` sets (set at load): a flood of one family cannot
/// evict the other's flows. `BPF_F_MMAPABLE` for its layout, not for
/// user space to map it: the kernel then starts the elements on a page
/// (a plain array's start 312 bytes into `struct bpf_array`, 56 bytes
/// into a cache line on 6.18, so a 128-byte set would span three lines,
/// not two). The verifier inlines lookups in either kind.
#[map]
pub static CONN_TABLE_V4: Array<ConnSet<FlowKeyV4>> = Array::with_max_entries(conn_sets(DEFAULT_CONN_TABLE_SIZE), BPF_F_MMAPABLE);

/// IPv6 flows; see `CONN_TABLE_V4`.
#[map]
pub static CONN_TABLE_V6: Array<ConnSet<FlowKey>> = Array::with_max_entries(conn_sets(DEFAULT_CONN_TABLE_SIZE), BPF_F_MMAPABLE);

/// The connection tables' hash seed (`conn_set_hash_v4`): random, chosen
/// by user space at load (`EbpfLoader::set_global`), like the kernel's
/// per-map `hashrnd`.
#[no_mangle]
pub static CONN_HASH_SEED: u64 = 0;

/// Sets per connection table minus one (a power of two minus one): the
/// set index is `hash & CONN_SET_MASK`. Set at load with the arrays' size.
#[no_mangle]
pub static CONN_SET_MASK: u32 = conn_sets(DEFAULT_CONN_TABLE_SIZE) - 1;

/// One bit per (VIP id, real id), see `fulcrum_common::vip_real_ok_bit`:
/// set when an established flow of the VIP may stay on the real. User
/// space clears a real's bit when it leaves the VIP's pool, or goes down
/// under `on_marked_down = "repick"`.
#[map]
pub static VIP_REAL_OK: Array<u64> = Array::with_max_entries(VIP_REAL_OK_WORDS, 0);

/// VIP id -> the `VipMeta::gen` of the VIP that holds the id now (0: none
/// yet, or being rewritten) and its facts an established packet needs
/// (`VipFacts`). A connection-table entry written under this generation
/// may use them instead of the `VIPS` lookup. User space writes it after
/// the `VIPS` entry, and bumps the generation after removing one, so an
/// entry written for a value that is gone never matches (see
/// `VipMeta::gen`). 16-byte elements, mmapable so that they start on a
/// page and each sits in one cache line.
#[map]
pub static VIP_FACTS: Array<VipFacts> = Array::with_max_entries(MAX_VIPS, BPF_F_MMAPABLE);

/// Entry 0: node-wide settings.
#[map]
pub static DATAPATH_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// VIP id -> the VIP's packets and connection-table events (see
/// `VipCounters`). Zeroed by user space when it gives the id to a new VIP.
#[map]
pub static VIP_STATS: PerCpuArray<VipCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_REALS, 0);

#[map]
pub static REASON_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Adds one frame of `bytes` to entry `index` of a per-CPU counter map.
#[inline(always)]
pub fn count(map: &PerCpuArray<Counters>, index: u32, bytes: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU storage; XDP runs with preemption disabled, so this
        // CPU's slot has no concurrent writer.
        unsafe { add(c, bytes) }
    }
}

/// Counts one frame of `bytes` that reached VIP id `vip_id` in
/// `VIP_STATS`, and the connection table's `(event, evicted)` for it if
/// the table was consulted: the event's counter, and an eviction if its
/// write replaced another flow. Called once per packet: one lookup of
/// this CPU's slot.
#[inline(always)]
pub fn count_vip(vip_id: u32, table: Option<(ConnEvent, bool)>, bytes: u64) {
    if let Some(v) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: as in `count`.
        unsafe {
            add(&mut (*v).vip, bytes);
            if let Some((event, evicted)) = table {
                if let Some(c) = (*v).conn.get_mut(event as usize) {
                    add(c, bytes);
                }
                if evicted {
                    (*v).evictions += 1;
                }
            }
        }
    }
}

/// One frame of `bytes` more in `c`, this CPU's slot.
#[inline(always)]
unsafe fn add(c: *mut Counters, bytes: u64) {
    (*c).packets += 1;
    (*c).bytes += bytes;
}
