//! The maps shared with user space; their types live in `fulcrum-common`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use fulcrum_common::{
    Counters, DatapathConfig, RealDef, Reason, VipKey, VipMeta, LOOKUP_TABLES_LEN, MAX_REALS,
    MAX_VIPS,
};

/// (address, port, protocol) -> VIP metadata. Empty means "pass everything".
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Every VIP's two lookup tables back to back: entry = real id.
#[map]
pub static LOOKUP_TABLES: Array<u32> = Array::with_max_entries(LOOKUP_TABLES_LEN, 0);

/// Real id -> where to send.
#[map]
pub static REALS: Array<RealDef> = Array::with_max_entries(MAX_REALS, 0);

/// Entry 0: node-wide settings.
#[map]
pub static DATAPATH_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

#[map]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

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
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
