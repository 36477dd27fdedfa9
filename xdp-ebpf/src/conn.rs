//! The connection table: a set-associative cache of flows in a BPF array
//! (`CONN_TABLE_V4` / `CONN_TABLE_V6`), one set of `CONN_WAYS` ways per
//! element, shared by all CPUs.
//!
//! Why not the kernel's LRU hash map: each lookup there is a call into
//! `__htab_map_lookup_elem` (`jhash2` over the key, `memcmp` along the
//! bucket), and each write a call into `htab_lru_map_update_elem`, which
//! takes the bucket lock and the LRU list locks and copies the key:
//! about 140 ns for a repeated 5-tuple, about 580 ns for a new one into a
//! full million-flow table (`bench/RESULTS.md`, xdp2). Here a lookup is an
//! array lookup the verifier inlines, a few multiplications for the hash
//! (`conn_set_hash_v4`) and at most four key compares; a write is a
//! compare-and-exchange on the set's lock and a few stores, in the same
//! cache lines.
//!
//! Replacement is least-recently-used within the set (`ConnWay::used`),
//! with the kernel LRU's bias: a flow looked up again since its write is
//! `CONN_REFERENCED` and outranks every flow that was not, so a flood of
//! one-packet flows evicts its own entries first.
//!
//! Shared, not per-CPU (Katran keeps one LRU map per CPU): a flow's
//! packets need not arrive on one CPU (a veth, and so the lab, runs XDP on
//! the sender's CPU; RSS moves flows when its indirection table changes),
//! and a per-CPU table would miss, and re-pick, wherever they do not, as
//! well as multiply the memory by the CPU count.
//!
//! Concurrency: writers (a SYN, a miss, a refresh of an entry's VIP facts)
//! take the set's lock (`ConnWay::lock` of way 0) with a compare-and-
//! exchange, and give up the write if another CPU holds it (a later
//! packet of the flow misses and writes again): two writers never mix
//! their stores in one way. A writer first clears the way's protocol word
//! (no key matches protocol 0), then stores the entry, then the key with
//! its protocol last, so a lock-free reader either matches the whole new
//! key after the entry is complete or matches nothing. This relies on
//! stores and loads staying in program order (the x86-64 memory model,
//! which the JIT keeps; volatile stores keep LLVM from reordering). A
//! reader that matched the old key just before a writer replaced that
//! way may read part of the new entry: that flow is being evicted at that
//! very moment, so its next packet would miss and re-pick anyway.
use core::intrinsics::{atomic_cxchg, atomic_xchg, AtomicOrdering};

use aya_ebpf::maps::Array;
use fulcrum_common::{
    conn_set_hash_v4, conn_set_hash_v6, ConnEntry, ConnSet, ConnWay, FlowKey, FlowKeyV4, VipMeta, CONN_REFERENCED,
    CONN_WAYS,
};

use crate::{maps::*, now_jiffies, Flow};

/// The connection table of one address family.
pub trait ConnTable {
    type Key: Copy + 'static;
    /// The flow's key in this table.
    fn key(flow: &Flow) -> Self::Key;
    /// The table that holds `Self::Key`s.
    fn map() -> &'static Array<ConnSet<Self::Key>>;
    /// The set's hash (masked by the caller).
    fn hash(key: &Self::Key, seed: u64) -> u64;
    /// Whether two keys are equal.
    fn same(a: &Self::Key, b: &Self::Key) -> bool;
    /// Whether a way's key holds a flow (protocol word not 0).
    fn live(key: &Self::Key) -> bool;
    /// Clears the key's protocol word (an empty way).
    ///
    /// # Safety
    /// `key` points into a set this CPU holds the lock of.
    unsafe fn clear(key: *mut Self::Key);
    /// Stores `key`, its protocol word last.
    ///
    /// # Safety
    /// As `clear`.
    unsafe fn store(key: *mut Self::Key, new: &Self::Key);
}

/// IPv4 flows: the 16-byte `FlowKeyV4`, 64-byte ways.
pub struct V4;

impl ConnTable for V4 {
    type Key = FlowKeyV4;
    #[inline(always)]
    fn key(flow: &Flow) -> FlowKeyV4 {
        FlowKeyV4 { src: flow.saddr[3], dst: flow.vip.addr[3], ports: flow.ports, proto: u32::from(flow.vip.proto) }
    }
    #[inline(always)]
    fn map() -> &'static Array<ConnSet<FlowKeyV4>> {
        &CONN_TABLE_V4
    }
    #[inline(always)]
    fn hash(key: &FlowKeyV4, seed: u64) -> u64 {
        conn_set_hash_v4(key, seed)
    }
    #[inline(always)]
    fn same(a: &FlowKeyV4, b: &FlowKeyV4) -> bool {
        a.src == b.src && a.dst == b.dst && a.ports == b.ports && a.proto == b.proto
    }
    #[inline(always)]
    fn live(key: &FlowKeyV4) -> bool {
        key.proto != 0
    }
    #[inline(always)]
    unsafe fn clear(key: *mut FlowKeyV4) {
        core::ptr::write_volatile(&mut (*key).proto, 0);
    }
    #[inline(always)]
    unsafe fn store(key: *mut FlowKeyV4, new: &FlowKeyV4) {
        core::ptr::write_volatile(&mut (*key).src, new.src);
        core::ptr::write_volatile(&mut (*key).dst, new.dst);
        core::ptr::write_volatile(&mut (*key).ports, new.ports);
        core::ptr::write_volatile(&mut (*key).proto, new.proto);
    }
}

/// IPv6 flows: the 40-byte `FlowKey`, 88-byte ways.
pub struct V6;

impl ConnTable for V6 {
    type Key = FlowKey;
    #[inline(always)]
    fn key(flow: &Flow) -> FlowKey {
        FlowKey { src: flow.saddr, dst: flow.vip.addr, ports: flow.ports, proto: u32::from(flow.vip.proto) }
    }
    #[inline(always)]
    fn map() -> &'static Array<ConnSet<FlowKey>> {
        &CONN_TABLE_V6
    }
    #[inline(always)]
    fn hash(key: &FlowKey, seed: u64) -> u64 {
        conn_set_hash_v6(key, seed)
    }
    #[inline(always)]
    fn same(a: &FlowKey, b: &FlowKey) -> bool {
        a.ports == b.ports
            && a.proto == b.proto
            && a.src[3] == b.src[3]
            && a.src[2] == b.src[2]
            && a.src[1] == b.src[1]
            && a.src[0] == b.src[0]
            && a.dst[3] == b.dst[3]
            && a.dst[2] == b.dst[2]
            && a.dst[1] == b.dst[1]
            && a.dst[0] == b.dst[0]
    }
    #[inline(always)]
    fn live(key: &FlowKey) -> bool {
        key.proto != 0
    }
    #[inline(always)]
    unsafe fn clear(key: *mut FlowKey) {
        core::ptr::write_volatile(&mut (*key).proto, 0);
    }
    #[inline(always)]
    unsafe fn store(key: *mut FlowKey, new: &FlowKey) {
        for i in 0..4 {
            core::ptr::write_volatile(&mut (*key).src[i], new.src[i]);
            core::ptr::write_volatile(&mut (*key).dst[i], new.dst[i]);
        }
        core::ptr::write_volatile(&mut (*key).ports, new.ports);
        core::ptr::write_volatile(&mut (*key).proto, new.proto);
    }
}

/// Takes a set's writer lock if it is free (a `BPF_CMPXCHG`).
///
/// # Safety
/// `lock` points to an aligned 64-bit word of a map value (the BPF
/// target built for the `generic` CPU has only 64-bit atomics).
#[inline(always)]
unsafe fn try_lock(lock: *mut u64) -> bool {
    atomic_cxchg::<u64, { AtomicOrdering::Acquire }, { AtomicOrdering::Relaxed }>(lock, 0, 1).1
}

/// Releases a lock `try_lock` took: a `BPF_XCHG`, fully ordered, so the
/// set's stores are visible before the lock is free on any CPU (LLVM has
/// no release store for this BPF CPU version).
///
/// # Safety
/// As `try_lock`, and this CPU holds the lock.
#[inline(always)]
unsafe fn unlock(lock: *mut u64) {
    atomic_xchg::<u64, { AtomicOrdering::Release }>(lock, 0);
}

/// The set `key` belongs in.
#[inline(always)]
fn set_of<T: ConnTable>(key: &T::Key) -> Option<*mut ConnSet<T::Key>> {
    // SAFETY: read-only globals in the program's `.rodata` map, set by
    // user space before load; volatile, so LLVM does not fold in the
    // object's placeholder values (two loads in the xlated program).
    let (seed, mask) = unsafe { (core::ptr::read_volatile(&CONN_HASH_SEED), core::ptr::read_volatile(&CONN_SET_MASK)) };
    T::map().get_ptr_mut((T::hash(key, seed) as u32) & mask)
}

/// The flow's entry, if its set holds it: a pointer into the array
/// element, valid for this run. Marks the way referenced (once a tick),
/// as the kernel's LRU marks an element on every lookup.
#[inline(always)]
pub fn lookup<T: ConnTable>(flow: &Flow) -> Option<*mut ConnEntry> {
    let key = T::key(flow);
    let set = set_of::<T>(&key)?;
    for i in 0..CONN_WAYS {
        // SAFETY: `set` is a valid element; `i` < CONN_WAYS.
        unsafe {
            let way: *mut ConnWay<T::Key> = &mut (*set).ways[i];
            if T::same(&(*way).key, &key) {
                let used = now_jiffies() | CONN_REFERENCED;
                if (*way).used != used {
                    (*way).used = used;
                }
                return Some(&mut (*way).entry);
            }
        }
    }
    None
}

/// Writes the flow's entry: into the way that holds the flow, else into
/// the set's victim (an empty way, else the oldest unreferenced one,
/// else the least recently used). `Ok(true)` if that evicted another
/// flow; `Err` if another CPU is writing the set (the packet is still
/// forwarded; `ConnEvent::WriteFailed`).
#[inline(always)]
pub fn insert<T: ConnTable>(flow: &Flow, entry: &ConnEntry) -> Result<bool, ()> {
    let key = T::key(flow);
    let set = set_of::<T>(&key).ok_or(())?;
    // SAFETY: `set` is a valid element for this run; its lock word is
    // aligned. Under the lock no other CPU stores into the set.
    unsafe {
        let lock: *mut u64 = &mut (*set).ways[0].lock;
        if !try_lock(lock) {
            return Err(());
        }
        let mut victim = 0;
        let mut oldest = u64::MAX;
        let mut rewrite = false;
        for i in 0..CONN_WAYS {
            let way = &(*set).ways[i];
            if T::same(&way.key, &key) {
                victim = i;
                rewrite = true;
                break;
            }
            if way.used < oldest {
                oldest = way.used;
                victim = i;
            }
        }
        let way: *mut ConnWay<T::Key> = &mut (*set).ways[victim % CONN_WAYS];
        let evicted = !rewrite && T::live(&(*way).key);
        // Volatile stores stay in program order (LLVM's BPF backend has no
        // fences to ask for it otherwise).
        T::clear(&mut (*way).key);
        core::ptr::write_volatile(&mut (*way).entry, *entry);
        core::ptr::write_volatile(&mut (*way).used, now_jiffies());
        T::store(&mut (*way).key, &key);
        unlock(lock);
        Ok(evicted)
    }
}

/// Copies the VIP's current facts into the flow's entry if it holds an
/// older generation's (the VIP changed, or the entry came from a test or
/// a node that wrote none), so the flow's next packets take
/// `established_flow`. The generation is stored last: a reader that sees
/// it sees the facts. In place: the entry's real and time stay. Under the
/// set's lock, after finding the flow again (another CPU may have
/// replaced its way since it was looked up); skipped if the lock is busy
/// (the next packet refreshes).
#[inline(always)]
pub fn refresh_vip_facts<T: ConnTable>(flow: &Flow, vip: &VipMeta) {
    let key = T::key(flow);
    let Some(set) = set_of::<T>(&key) else {
        return;
    };
    // SAFETY: as in `insert`.
    unsafe {
        let lock: *mut u64 = &mut (*set).ways[0].lock;
        if !try_lock(lock) {
            return;
        }
        for i in 0..CONN_WAYS {
            let way: *mut ConnWay<T::Key> = &mut (*set).ways[i];
            let entry = &mut (*way).entry;
            if T::same(&(*way).key, &key) && entry.vip_gen != vip.gen {
                core::ptr::write_volatile(&mut entry.vip_id, vip.vip_id as u16);
                core::ptr::write_volatile(&mut entry.vip_vlan, vip.vlan as u16);
                core::ptr::write_volatile(&mut entry.vip_flags, vip.flags);
                core::ptr::write_volatile(&mut entry.udp_idle_timeout_jiffies, vip.udp_idle_timeout_jiffies);
                core::ptr::write_volatile(&mut entry.vip_gen, vip.gen);
                break;
            }
        }
        unlock(lock);
    }
}
