//! The connection table: a set-associative cache of flows in a BPF array
//! (`CONN_TABLE_V4` / `CONN_TABLE_V6`), one set of `CONN_WAYS` ways per
//! element, shared by all CPUs. A way is a key and a 16-byte `ConnEntry`:
//! 32 bytes for IPv4, so a set spans two cache lines (the arrays are
//! `BPF_F_MMAPABLE`, whose elements start on a page, so sets never
//! straddle a line more than their size needs), 56 for IPv6.
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
//! Replacement is least-recently-used within the set (`ConnEntry::seen`,
//! the jiffies of the write or of the last hit), with the kernel LRU's
//! bias: a flow looked up again since its write is `CONN_REFERENCED` and
//! outranks every flow that was not, so a flood of one-packet flows
//! evicts its own entries first. Ages are differences of jiffies modulo
//! 2^31 (`conn_age`; see `ConnEntry::seen` for the wrap).
//!
//! Shared, not per-CPU (Katran keeps one LRU map per CPU): a flow's
//! packets need not arrive on one CPU (a veth, and so the lab, runs XDP on
//! the sender's CPU; RSS moves flows when its indirection table changes),
//! and a per-CPU table would miss, and re-pick, wherever they do not, as
//! well as multiply the memory by the CPU count.
//!
//! Concurrency: writers (a SYN, a miss, a refresh of an entry's VIP
//! generation) take the set's lock, the `CONN_SET_LOCK` bit of way 0's
//! key protocol word, with a 64-bit compare-and-exchange on that key's
//! `ports`/`proto` word (the BPF target's only atomics are 64-bit), and
//! give up the write if another CPU holds it (a later packet of the flow
//! misses and writes again): two writers never mix their stores in one
//! way. Readers mask the bit out of every key comparison, so the lock
//! neither makes a key match nor hides a live flow, ever. A writer first
//! clears the way's protocol (no key matches protocol 0; way 0 keeps the
//! lock bit), then stores the entry, then the key with its protocol
//! last, so a lock-free reader either matches the whole new key after
//! the entry is complete or matches nothing. In way 0 that last store
//! also releases the lock; in another way, the protocol is stored, then
//! a last store restores way 0's word as it was before the lock. This
//! relies on stores and loads staying in program order (the x86-64
//! memory model, which the JIT keeps; volatile stores keep LLVM from
//! reordering), and the release is a plain store for that reason
//! (`unlock`). A reader that matched the old key just
//! before a writer replaced that way may read part of the new entry, so
//! after reading the fields it uses it reads the key again
//! (`still_holds`) and treats a changed key as a miss: a packet of a
//! flow evicted at that instant is never sent to the real of the flow
//! replacing it. The `seen` stores of hits are plain,
//! lock-free 4-byte stores: a lost one costs the LRU a tick of accuracy.
use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use aya_ebpf::maps::Array;
use fulcrum_common::{
    conn_age, conn_set_hash_v4, conn_set_hash_v6, ConnEntry, ConnSet, ConnWay, FlowKey, FlowKeyV4, VipMeta, CONN_REFERENCED,
    CONN_SEEN_JIFFIES, CONN_SET_LOCK, CONN_WAYS,
};

use crate::{maps::*, now_jiffies, Flow};

/// `CONN_SET_LOCK` in the 64-bit `ports`/`proto` word of a key (`proto`
/// is its high half on this little-endian target).
const LOCK_BIT: u64 = (CONN_SET_LOCK as u64) << 32;

/// The connection table of one address family.
pub trait ConnTable {
    type Key: Copy + 'static;
    /// The flow's key in this table.
    fn key(flow: &Flow) -> Self::Key;
    /// The table that holds `Self::Key`s.
    fn map() -> &'static Array<ConnSet<Self::Key>>;
    /// The set's hash (masked by the caller).
    fn hash(key: &Self::Key, seed: u64) -> u64;
    /// Whether a way whose key is `way` holds the flow `key` (the set
    /// lock's bit of `way` ignored).
    fn holds(way: &Self::Key, key: &Self::Key) -> bool;
    /// Whether a way's key holds a flow (protocol not 0, the lock's bit
    /// ignored).
    fn live(key: &Self::Key) -> bool;
    /// The key's `ports`/`proto` word: the set lock's word in way 0.
    fn lock_word(key: *mut Self::Key) -> *mut u64;
    /// The `ports`/`proto` word of `key`, as `lock_word` holds it.
    fn word(key: &Self::Key) -> u64;
    /// Sets the key's protocol word to `proto`: 0 (an empty way) or, in
    /// way 0, `CONN_SET_LOCK` (empty and still locked).
    ///
    /// # Safety
    /// `key` points into a set this CPU holds the lock of.
    unsafe fn set_proto(key: *mut Self::Key, proto: u32);
    /// Stores `new` but its protocol word.
    ///
    /// # Safety
    /// As `set_proto`.
    unsafe fn store_tuple(key: *mut Self::Key, new: &Self::Key);
    /// The protocol word of `key`.
    fn proto(key: &Self::Key) -> u32;
}

/// IPv4 flows: the 16-byte `FlowKeyV4`, 32-byte ways.
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
    fn holds(way: &FlowKeyV4, key: &FlowKeyV4) -> bool {
        way.src == key.src && way.dst == key.dst && way.ports == key.ports && way.proto & !CONN_SET_LOCK == key.proto
    }
    #[inline(always)]
    fn live(key: &FlowKeyV4) -> bool {
        key.proto & !CONN_SET_LOCK != 0
    }
    #[inline(always)]
    fn lock_word(key: *mut FlowKeyV4) -> *mut u64 {
        // SAFETY: only the address is taken; `ports` is at offset 8 of
        // the key, and the key 8-byte aligned in its way.
        unsafe { core::ptr::addr_of_mut!((*key).ports).cast() }
    }
    #[inline(always)]
    fn word(key: &FlowKeyV4) -> u64 {
        u64::from(key.ports) | u64::from(key.proto) << 32
    }
    #[inline(always)]
    unsafe fn set_proto(key: *mut FlowKeyV4, proto: u32) {
        core::ptr::write_volatile(&mut (*key).proto, proto);
    }
    #[inline(always)]
    unsafe fn store_tuple(key: *mut FlowKeyV4, new: &FlowKeyV4) {
        core::ptr::write_volatile(&mut (*key).src, new.src);
        core::ptr::write_volatile(&mut (*key).dst, new.dst);
        core::ptr::write_volatile(&mut (*key).ports, new.ports);
    }
    #[inline(always)]
    fn proto(key: &FlowKeyV4) -> u32 {
        key.proto
    }
}

/// IPv6 flows: the 40-byte `FlowKey`, 56-byte ways.
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
    fn holds(way: &FlowKey, key: &FlowKey) -> bool {
        way.ports == key.ports
            && way.proto & !CONN_SET_LOCK == key.proto
            && way.src[3] == key.src[3]
            && way.src[2] == key.src[2]
            && way.src[1] == key.src[1]
            && way.src[0] == key.src[0]
            && way.dst[3] == key.dst[3]
            && way.dst[2] == key.dst[2]
            && way.dst[1] == key.dst[1]
            && way.dst[0] == key.dst[0]
    }
    #[inline(always)]
    fn live(key: &FlowKey) -> bool {
        key.proto & !CONN_SET_LOCK != 0
    }
    #[inline(always)]
    fn lock_word(key: *mut FlowKey) -> *mut u64 {
        // SAFETY: only the address is taken; `ports` is at offset 32.
        unsafe { core::ptr::addr_of_mut!((*key).ports).cast() }
    }
    #[inline(always)]
    fn word(key: &FlowKey) -> u64 {
        u64::from(key.ports) | u64::from(key.proto) << 32
    }
    #[inline(always)]
    unsafe fn set_proto(key: *mut FlowKey, proto: u32) {
        core::ptr::write_volatile(&mut (*key).proto, proto);
    }
    #[inline(always)]
    unsafe fn store_tuple(key: *mut FlowKey, new: &FlowKey) {
        for i in 0..4 {
            core::ptr::write_volatile(&mut (*key).src[i], new.src[i]);
            core::ptr::write_volatile(&mut (*key).dst[i], new.dst[i]);
        }
        core::ptr::write_volatile(&mut (*key).ports, new.ports);
    }
    #[inline(always)]
    fn proto(key: &FlowKey) -> u32 {
        key.proto
    }
}

/// Takes the writer lock of the set whose way-0 key has the lock word
/// `lock`, if it is free: a `BPF_CMPXCHG` of the word as read (without
/// the lock's bit) for the same word with it. Returns that word, to
/// restore at `unlock`; `None` if another CPU holds the lock or changed
/// the word meanwhile.
///
/// # Safety
/// `lock` is `ConnTable::lock_word` of way 0 of a set: an aligned 64-bit
/// word of a map value (the BPF target built for the `generic` CPU has
/// only 64-bit atomics).
#[inline(always)]
unsafe fn try_lock(lock: *mut u64) -> Option<u64> {
    let free = core::ptr::read_volatile(lock);
    if free & LOCK_BIT != 0 {
        return None;
    }
    atomic_cxchg::<u64, { AtomicOrdering::Acquire }, { AtomicOrdering::Relaxed }>(lock, free, free | LOCK_BIT).1.then_some(free)
}

/// Releases a lock `try_lock` took, storing `word` (without the lock's
/// bit) as way 0's `ports`/`proto`. When way 0 was rewritten, this is the
/// store of its new key's protocol, the last of the write.
///
/// A plain (volatile) store, last of the write's volatile stores: on
/// x86-64 (TSO) a store becomes visible after every earlier one, so it
/// is a release store, the instruction the kernel's x86 JIT emits for
/// BPF's own store-release too. It was a `BPF_XCHG`, whose implied full
/// fence cost about 5 ns a write (`bench/RESULTS.md`, "xdp4").
///
/// # Safety
/// As `try_lock`, and this CPU holds the lock.
#[inline(always)]
unsafe fn unlock(lock: *mut u64, word: u64) {
    core::ptr::write_volatile(lock, word);
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
/// element, valid for this run. Writes nothing: the caller marks a hit
/// with `touch` once it has decided the entry is used (after a UDP
/// flow's idle check, which needs the time of the previous packet).
#[inline(always)]
pub fn lookup<T: ConnTable>(flow: &Flow) -> Option<*mut ConnEntry> {
    let key = T::key(flow);
    let set = set_of::<T>(&key)?;
    for i in 0..CONN_WAYS {
        // SAFETY: `set` is a valid element; `i` < CONN_WAYS.
        unsafe {
            let way: *mut ConnWay<T::Key> = &mut (*set).ways[i];
            if T::holds(&(*way).key, &key) {
                return Some(&mut (*way).entry);
            }
        }
    }
    None
}

/// Whether the way of `entry` (a `lookup::<T>` result) still holds the
/// flow, read again after the caller read the entry's fields: `false` if
/// another CPU has begun replacing the flow since `lookup` matched it,
/// whose entry fields the caller may then have read. A writer clears the
/// key's protocol before it stores the entry and stores the new key
/// after it (see the module doc); x86-64 keeps loads in order and the
/// caller's reads of the entry are volatile, as is this one of the key,
/// so a reader that saw any store of the new entry sees the cleared or
/// the new key here. Without it, a packet of a flow evicted at that
/// moment went to the real of the flow replacing it (a reset for TCP):
/// `two_cpus_writing_one_set_keep_every_entry_whole_and_release_the_lock`
/// in tests/datapath.rs.
///
/// # Safety
/// `entry` is a pointer `lookup::<T>` returned in this run.
#[inline(always)]
pub unsafe fn still_holds<T: ConnTable>(flow: &Flow, entry: *mut ConnEntry) -> bool {
    let way = entry.cast::<u8>().sub(core::mem::offset_of!(ConnWay<T::Key>, entry)).cast::<ConnWay<T::Key>>();
    let now = core::ptr::read_volatile(&(*way).key);
    T::holds(&now, &T::key(flow))
}

/// Marks a hit on `entry`: seen now, and referenced, as the kernel's
/// LRU marks an element on every lookup. Stored only when that changes
/// it (once a tick at most), so a busy flow does not dirty its shared
/// cache line on every packet. `now` is `now_jiffies()`.
///
/// # Safety
/// `entry` is a pointer `lookup` returned in this run.
#[inline(always)]
pub unsafe fn touch(entry: *mut ConnEntry, now: u64) {
    let seen = (now as u32 & CONN_SEEN_JIFFIES) | CONN_REFERENCED;
    if (*entry).seen != seen {
        (*entry).seen = seen;
    }
}

/// How strongly a way asks to be the set's victim at time `now`: an
/// empty way most, then an unreferenced one, the oldest first, then the
/// least recently seen.
#[inline(always)]
fn victim_rank<T: ConnTable>(way: &ConnWay<T::Key>, now: u32) -> u64 {
    if !T::live(&way.key) {
        return u64::MAX;
    }
    let seen = way.entry.seen;
    u64::from(conn_age(now, seen) | (!seen & CONN_REFERENCED))
}

/// Writes the flow's entry (its `seen` set to now, unreferenced): into
/// the way that holds the flow, else into the set's victim (an empty
/// way, else the oldest unreferenced one, else the least recently seen;
/// the first of equals). `Ok(true)` if that evicted another flow; `Err`
/// if another CPU is writing the set (the packet is still forwarded;
/// `ConnEvent::WriteFailed`).
#[inline(always)]
pub fn insert<T: ConnTable>(flow: &Flow, entry: &ConnEntry) -> Result<bool, ()> {
    let key = T::key(flow);
    let set = set_of::<T>(&key).ok_or(())?;
    // SAFETY: `set` is a valid element for this run; its lock word is
    // aligned. Under the lock no other CPU stores into the set's keys or
    // entries (hits store `seen` alone).
    unsafe {
        // A new flow's set is usually cold (a million-flow table is far
        // larger than the caches). A word of every way is loaded first,
        // so that all of the set's cache lines are on their way before
        // the locked compare-and-exchange, which may hold back younger
        // loads until it completes: the misses then overlap instead of
        // following one another. Here (AMD EPYC) it measured 0-6 ns
        // less a new flow, within the noise (`bench/RESULTS.md`, dense);
        // issuing the loads earlier, before the Maglev pick, measured
        // worse.
        for i in 0..CONN_WAYS {
            core::ptr::read_volatile(&(*set).ways[i].entry.seen);
        }
        let lock = T::lock_word(&mut (*set).ways[0].key);
        let free = try_lock(lock).ok_or(())?;
        let now = now_jiffies() as u32;
        let mut victim = 0;
        let mut best = 0;
        let mut rewrite = false;
        for i in 0..CONN_WAYS {
            let way = &(*set).ways[i];
            if T::holds(&way.key, &key) {
                victim = i;
                rewrite = true;
                break;
            }
            let rank = victim_rank::<T>(way, now);
            if rank > best {
                best = rank;
                victim = i;
            }
        }
        let victim = victim % CONN_WAYS;
        let way: *mut ConnWay<T::Key> = &mut (*set).ways[victim];
        let evicted = !rewrite && T::live(&(*way).key);
        // Volatile stores stay in program order (LLVM's BPF backend has no
        // fences to ask for it otherwise).
        let first = victim == 0;
        T::set_proto(&mut (*way).key, if first { CONN_SET_LOCK } else { 0 });
        core::ptr::write_volatile(&mut (*way).entry, ConnEntry { seen: now & CONN_SEEN_JIFFIES, ..*entry });
        T::store_tuple(&mut (*way).key, &key);
        if first {
            unlock(lock, T::word(&key));
        } else {
            T::set_proto(&mut (*way).key, T::proto(&key));
            unlock(lock, free);
        }
        Ok(evicted)
    }
}

/// Points the flow's entry at the VIP's current generation (and id) if
/// it holds an older one (the VIP changed, or the entry came from a test
/// or a node that wrote none), so the flow's next packets take
/// `established_flow`. The generation is stored last: a reader that sees
/// it sees the id. In place: the entry's real and time stay. Under the
/// set's lock, after finding the flow again (another CPU may have
/// replaced its way since it was looked up); skipped if the lock is busy
/// (the next packet refreshes).
#[inline(always)]
pub fn refresh_vip_gen<T: ConnTable>(flow: &Flow, vip: &VipMeta) {
    let key = T::key(flow);
    let Some(set) = set_of::<T>(&key) else {
        return;
    };
    // SAFETY: as in `insert`.
    unsafe {
        let lock = T::lock_word(&mut (*set).ways[0].key);
        let Some(free) = try_lock(lock) else {
            return;
        };
        for i in 0..CONN_WAYS {
            let way: *mut ConnWay<T::Key> = &mut (*set).ways[i];
            let entry = &mut (*way).entry;
            if T::holds(&(*way).key, &key) && entry.vip_gen != vip.gen {
                core::ptr::write_volatile(&mut entry.vip_id, vip.vip_id as u16);
                core::ptr::write_volatile(&mut entry.vip_gen, vip.gen);
                break;
            }
        }
        unlock(lock, free);
    }
}
