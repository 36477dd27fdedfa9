//! Writing a [`Plan`] into the maps: ids for VIPs and reals, Maglev tables
//! into the idle slot of each changed VIP, then the flip.
//!
//! How a table gets into the kernel: `LOOKUP_TABLES` is a
//! `BPF_F_MMAPABLE` array mapped once into the daemon ([`TableMemory`]),
//! so a table of 65537 slots is one memory copy instead of 65537
//! `BPF_MAP_UPDATE_ELEM` syscalls. Each VIP owns two slots: the new table
//! goes into the one packets are not reading, and one `VIPS` update (a
//! syscall, hence a full barrier after the copy) flips the VIP to it. A
//! packet therefore sees the old table or the new one, never a mix.
//!
//! The slot just left may still be read by a packet that looked the VIP
//! up before the flip, for the length of one XDP run (microseconds, inside
//! an RCU read section). A slot is therefore never rewritten sooner than
//! [`SLOT_REUSE_DELAY`] after it was left.
//!
//! Only what changed is written: a VIP whose key, flags, size and member
//! set are the same as in the maps is skipped, and VIPs with the same
//! members and size share one Maglev build per apply.
//!
//! Ids are freed before they are taken: VIPs and reals leaving the plan
//! give their ids back before new ones are allocated, so a reload that
//! swaps VIPs or reals at the limit fits.
//!
//! The connection table is the datapath's, but which of its entries are
//! still good is written here: `VIP_REAL_OK` holds, per VIP, the reals
//! its established flows may stay on ([`PlanVip::established`]), and each
//! real id's `RealDef::generation` is bumped whenever the id is given to
//! an address, so an entry written for the id's previous owner re-picks.
//! A VIP's bits are widened to old and new before its table flips and
//! narrowed to the new set after, so no flow re-picks from a table that
//! is about to go.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{fence, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, Array};
use fulcrum_common::{
    VipCounters,
    addr_words, names, vip_filter_bit, VIP_F_STANDBY, vip_real_ok_bit, Counters, Mac, RealDef, VipFacts, VipKey, VipMeta, LOOKUP_TABLES_LEN,
    MAGLEV_MAX_TABLE_SIZE, MAX_REALS, MAX_VIPS, VIP_FILTER_WORDS, VIP_REAL_OK_WORDS,
};

use crate::{
    maglev,
    plan::{Plan, PlanVip},
    DatapathError,
};

/// How long a VIP's table slot stays untouched after the VIP flipped away
/// from it: far longer than any XDP run that may still read it.
pub const SLOT_REUSE_DELAY: Duration = Duration::from_millis(2);

/// The maps the writer owns, taken from the loaded object.
pub(crate) struct Maps {
    pub vips: BpfHashMap<MapData, VipKey, VipMeta>,
    pub lookup_tables: TableMemory,
    pub reals: Array<MapData, RealDef>,
    pub vip_filter: Array<MapData, u64>,
    pub vip_real_ok: Array<MapData, u64>,
    pub vip_addresses: BpfHashMap<MapData, [u32; 4], u32>,
    pub vip_stats: PerCpuArray<MapData, VipCounters>,
    /// Shared with every `CounterReader`: see [`Retired`].
    pub retired: Retired,
    /// `VIP_FACTS`: each VIP id's generation and established-path facts.
    pub vip_facts: Array<MapData, VipFacts>,
    pub real_stats: PerCpuArray<MapData, Counters>,
}

/// The `VIP_STATS` counters of VIP ids the writer has since given to new
/// VIPs, summed: `VIP_STATS` is per id and zeroed for a new VIP, so the
/// node-wide connection-table totals keep the old VIP's events and
/// evictions here.
pub(crate) type Retired = std::sync::Arc<std::sync::Mutex<VipCounters>>;

/// A VIP's table as the maps hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipTable {
    /// Index into the VIP-indexed maps.
    pub vip_id: u32,
    /// M, or 0 when the VIP has no member and drops.
    pub table_size: u32,
    /// Slots owned by each member, sorted by address.
    pub slots: Vec<(IpAddr, u32)>,
    /// [`maglev::digest`] of the table, 0 when empty: equal on every node
    /// that built it from the same members and size.
    pub digest: u64,
}

/// What the maps hold, by name and address: user space's record of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub vips: HashMap<String, VipTable>,
    /// Real id and the MAC written for it (`None` before one was known).
    pub reals: HashMap<IpAddr, (u32, Option<Mac>)>,
}

/// Figures of one successful apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// VIP entries (and their tables) written.
    pub vips_written: u32,
    /// Maglev tables built.
    pub tables_built: u32,
}

struct WrittenVip {
    key: VipKey,
    meta: VipMeta,
    members: Vec<(IpAddr, u32)>,
    /// When the VIP last flipped, leaving its other slot.
    flipped: Option<Instant>,
    table: VipTable,
}

/// The writer's state: what each VIP entry and real id holds. The one
/// record of what is in the maps; [`Applied`] is a view of it.
pub(crate) struct Tables {
    vips: HashMap<String, WrittenVip>,
    reals: HashMap<IpAddr, (u32, Option<Mac>)>,
    /// The `VIP_FILTER` words as written.
    filter: [u64; VIP_FILTER_WORDS as usize],
    /// The `VIP_REAL_OK` words as written.
    ok: Vec<u64>,
    /// The `VIP_ADDRESSES` entries as written: address -> VLAN id.
    addresses: BTreeMap<[u32; 4], u32>,
    /// Each real id's `RealDef::generation` as written; kept when the id
    /// is freed, so the next owner gets a higher one.
    generations: Vec<u32>,
    /// Each VIP id's last `VipMeta::gen` given out, kept when the id is freed.
    vip_gens: Vec<u32>,
    /// `VIP_FACTS` as written.
    vip_facts_written: Vec<VipFacts>,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            vips: HashMap::new(),
            reals: HashMap::new(),
            filter: [0; VIP_FILTER_WORDS as usize],
            ok: vec![0; VIP_REAL_OK_WORDS as usize],
            addresses: BTreeMap::new(),
            generations: vec![0; MAX_REALS as usize],
            vip_gens: vec![0; MAX_VIPS as usize],
            vip_facts_written: vec![VipFacts::default(); MAX_VIPS as usize],
        }
    }
}

impl Tables {
    pub fn applied(&self) -> Applied {
        Applied {
            vips: self.vips.iter().map(|(name, written)| (name.clone(), written.table.clone())).collect(),
            reals: self.reals.clone(),
        }
    }

    pub fn apply(&mut self, maps: &mut Maps, plan: &Plan) -> Result<WriteCounts, DatapathError> {
        // The address filter admits every VIP old or new while entries
        // change, and only the new ones once the apply is complete.
        let both: Vec<VipKey> = self.vips.values().map(|w| w.key).chain(plan.vips.iter().map(|v| v.key)).collect();
        self.write_filter(maps, &both)?;
        self.remove_vips(maps, plan)?;
        self.free_reals(plan);
        // MAC changes of reals that keep their id first: a table written
        // below may send them traffic at once.
        for (&address, &mac) in &plan.reals {
            if self.reals.contains_key(&address) {
                self.write_real(maps, address, mac)?;
            }
        }
        let mut counts = WriteCounts::default();
        let mut built: HashMap<TableInput<'_>, BuiltTable> = HashMap::new();
        self.wait_for_idle_slots(plan);
        for vip in &plan.vips {
            // A table may only name reals whose id and MAC are written, and
            // a VIP_REAL_OK bit only reals with an id.
            // (`established` names pool members, all in `plan.reals`; one
            // that is not cannot get an id, so it gets no bit either.)
            let established: Vec<IpAddr> = vip.established.iter().copied().filter(|a| plan.reals.contains_key(a)).collect();
            for address in vip.members.iter().map(|&(a, _)| a).chain(established.iter().copied()) {
                if !self.reals.contains_key(&address) {
                    self.write_real(maps, address, plan.reals.get(&address).copied().flatten())?;
                }
            }
            if self.vip_unchanged(vip) {
                if let Some(vip_id) = self.vips.get(&vip.name).map(|w| w.meta.vip_id) {
                    self.write_ok_bits(maps, vip_id, &established, false)?;
                }
                continue;
            }
            let (table, digest) = built.entry((&vip.members, vip.table_size)).or_insert_with(|| {
                counts.tables_built += 1;
                build_table(&vip.members, vip.table_size)
            });
            // Flows of reals leaving keep them until the new table is live.
            if let Some(vip_id) = self.vips.get(&vip.name).map(|w| w.meta.vip_id) {
                self.write_ok_bits(maps, vip_id, &established, true)?;
            }
            self.write_vip(maps, vip, table, *digest)?;
            let vip_id = self.vips[&vip.name].meta.vip_id;
            self.write_ok_bits(maps, vip_id, &established, false)?;
            counts.vips_written += 1;
            // Reals this VIP's old table named may now be free for the next.
            self.free_reals(plan);
        }
        // Members out of every table still get an id, for their counters.
        for (&address, &mac) in &plan.reals {
            if !self.reals.contains_key(&address) {
                self.write_real(maps, address, mac)?;
            }
        }
        self.write_addresses(maps, plan)?;
        let keys: Vec<VipKey> = plan.vips.iter().map(|v| v.key).collect();
        self.write_filter(maps, &keys)?;
        Ok(counts)
    }

    /// Makes `VIP_FILTER` hold exactly the bits of `keys`, writing only
    /// the words that change.
    fn write_filter(&mut self, maps: &mut Maps, keys: &[VipKey]) -> Result<(), DatapathError> {
        let mut words = [0u64; VIP_FILTER_WORDS as usize];
        for key in keys {
            let bit = vip_filter_bit(&key.addr);
            words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        for (index, (&new, old)) in words.iter().zip(self.filter.iter_mut()).enumerate() {
            if new != *old {
                maps.vip_filter.set(index as u32, new, 0).map_err(map_err(names::VIP_FILTER))?;
                *old = new;
            }
        }
        Ok(())
    }

    /// Removes VIPs that left the plan, and the old entry of a VIP whose
    /// key changed, freeing their ids. A VIP renamed with the same key is
    /// the same service: it keeps its entry, id and counters.
    fn remove_vips(&mut self, maps: &mut Maps, plan: &Plan) -> Result<(), DatapathError> {
        let renamed: Vec<(String, String)> = self
            .vips
            .iter()
            .filter(|(name, _)| !plan.vips.iter().any(|v| &v.name == *name))
            .filter_map(|(name, written)| {
                let new = plan.vips.iter().find(|v| v.key == written.key && !self.vips.contains_key(&v.name))?;
                Some((name.clone(), new.name.clone()))
            })
            .collect();
        for (old, new) in renamed {
            let written = self.vips.remove(&old).expect("listed above");
            self.vips.insert(new, written);
        }
        let gone: Vec<String> = self
            .vips
            .iter()
            .filter(|(name, written)| !plan.vips.iter().any(|v| &v.name == *name && v.key == written.key))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let written = &self.vips[&name];
            match maps.vips.remove(&written.key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(DatapathError::Map { map: names::VIPS, source }),
            }
            // The id's next VIP starts with no real its flows may stay on.
            let vip_id = written.meta.vip_id;
            self.write_ok_bits(maps, vip_id, &[], false)?;
            // After the removal: entries copied from the removed value
            // never match again, and no value carries the new generation.
            let gen = self.bump_vip_gen(vip_id);
            let facts = VipFacts { gen, ..self.vip_facts_written[vip_id as usize] };
            self.write_vip_facts(maps, vip_id, facts)?;
            self.vips.remove(&name);
        }
        Ok(())
    }

    /// The next `VipMeta::gen` of VIP id `id`: never 0, never reused.
    fn bump_vip_gen(&mut self, id: u32) -> u32 {
        let gen = &mut self.vip_gens[id as usize];
        *gen = gen.wrapping_add(1).max(1);
        *gen
    }

    /// Sets `VIP_FACTS[id]` to `facts`, if it does not hold them already,
    /// in updates that each change either the generation alone or, under
    /// generation 0 (which no entry matches), the facts alone: the old
    /// facts under generation 0, the new facts, then the new generation.
    /// An update is one copy of the element in no set order within it, so
    /// one that changed both could be seen by a reader (which reads `gen`,
    /// the facts, then `gen` again; see `VipFacts`) as new facts under the
    /// old generation. When only the generation changes, one update.
    fn write_vip_facts(&mut self, maps: &mut Maps, id: u32, facts: VipFacts) -> Result<(), DatapathError> {
        let old = self.vip_facts_written[id as usize];
        if old == facts {
            return Ok(());
        }
        let err = || map_err(names::VIP_FACTS);
        if (VipFacts { gen: facts.gen, ..old }) != facts {
            if old.gen != 0 {
                maps.vip_facts.set(id, VipFacts { gen: 0, ..old }, 0).map_err(err())?;
            }
            maps.vip_facts.set(id, VipFacts { gen: 0, ..facts }, 0).map_err(err())?;
        }
        maps.vip_facts.set(id, facts, 0).map_err(err())?;
        self.vip_facts_written[id as usize] = facts;
        Ok(())
    }

    /// Makes `VIP_ADDRESSES` hold the address of every VIP this node
    /// forwards (not standby) with its VLAN id: where ICMP echo is
    /// answered (the configuration puts all VIPs of an address on one
    /// VLAN). Runs while the filter admits old and new VIPs.
    fn write_addresses(&mut self, maps: &mut Maps, plan: &Plan) -> Result<(), DatapathError> {
        let want: BTreeMap<[u32; 4], u32> = plan
            .vips
            .iter()
            .filter(|v| v.flags & VIP_F_STANDBY == 0)
            .map(|v| (v.key.addr, u32::from(v.vlan)))
            .collect();
        for gone in self.addresses.keys().filter(|a| !want.contains_key(*a)) {
            match maps.vip_addresses.remove(gone) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(DatapathError::Map { map: names::VIP_ADDRESSES, source }),
            }
        }
        for (address, &vlan) in &want {
            if self.addresses.get(address) != Some(&vlan) {
                maps.vip_addresses.insert(address, vlan, 0).map_err(map_err(names::VIP_ADDRESSES))?;
            }
        }
        self.addresses = want;
        Ok(())
    }

    /// Frees the ids of reals that left the plan and that no table in the
    /// maps names any more.
    fn free_reals(&mut self, plan: &Plan) {
        if self.reals.keys().all(|address| plan.reals.contains_key(address)) {
            return;
        }
        let named: BTreeSet<IpAddr> = self.vips.values().flat_map(|v| v.members.iter().map(|&(a, _)| a)).collect();
        self.reals.retain(|address, _| plan.reals.contains_key(address) || named.contains(address));
    }

    fn write_real(&mut self, maps: &mut Maps, address: IpAddr, mac: Option<Mac>) -> Result<(), DatapathError> {
        let (id, new) = match self.reals.get(&address) {
            // An unknown MAC keeps the last one written: the real is out of
            // every table anyway (the plan leaves members without a MAC out).
            Some(&(_, written)) if written == mac || mac.is_none() => return Ok(()),
            Some(&(id, _)) => (id, false),
            None => {
                let used: BTreeSet<u32> = self.reals.values().map(|&(id, _)| id).collect();
                let id = lowest_free(&used, MAX_REALS)
                    .ok_or_else(|| DatapathError::Limit(format!("more than {MAX_REALS} backends")))?;
                zero(&mut maps.real_stats, id, names::REAL_STATS)?;
                (id, true)
            }
        };
        // A new owner of the id gets the next generation, written even
        // without a MAC: connection-table entries of the previous owner
        // must stop matching before anything can name the id again.
        let generation = self.generations[id as usize].wrapping_add(u32::from(new));
        if mac.is_some() || new {
            let mac = mac.map_or([0; 6], |m| m.0);
            let def = RealDef { mac, _pad: [0; 2], generation, _pad2: 0, addr: addr_words(address) };
            maps.reals.set(id, def, 0).map_err(map_err(names::REALS))?;
            self.generations[id as usize] = generation;
        }
        self.reals.insert(address, (id, mac));
        Ok(())
    }

    /// Makes `vip_id`'s `VIP_REAL_OK` bits name exactly the reals of
    /// `established` (every one has an id), or with `widen` those and the
    /// ones set now. Writes only the words that change.
    fn write_ok_bits(&mut self, maps: &mut Maps, vip_id: u32, established: &[IpAddr], widen: bool) -> Result<(), DatapathError> {
        const PER_VIP: usize = (MAX_REALS / 64) as usize;
        let first = vip_real_ok_bit(vip_id, 0).0 as usize;
        let mut words = [0u64; PER_VIP];
        for address in established {
            let &(real_id, _) = self.reals.get(address).expect("established members have ids");
            let (word, bit) = vip_real_ok_bit(vip_id, real_id);
            words[word as usize - first] |= 1 << bit;
        }
        for (i, new) in words.iter_mut().enumerate() {
            let old = &mut self.ok[first + i];
            if widen {
                *new |= *old;
            }
            if *new != *old {
                maps.vip_real_ok.set((first + i) as u32, *new, 0).map_err(map_err(names::VIP_REAL_OK))?;
                *old = *new;
            }
        }
        Ok(())
    }

    fn vip_unchanged(&self, vip: &PlanVip) -> bool {
        self.vips.get(&vip.name).is_some_and(|w| {
            w.key == vip.key
                && w.meta.flags == vip.flags
                && w.members == vip.members
                && w.meta.udp_idle_timeout_jiffies == crate::ms_to_jiffies(vip.udp_idle_timeout_ms)
                && w.meta.vlan == u32::from(vip.vlan)
                && (w.meta.table_size == vip.table_size || w.meta.table_size == 0)
        })
    }

    /// Sleeps until every slot about to be written was left at least
    /// [`SLOT_REUSE_DELAY`] ago. One sleep per apply, rarely any.
    fn wait_for_idle_slots(&self, plan: &Plan) {
        let now = Instant::now();
        let wait = plan
            .vips
            .iter()
            .filter(|v| !self.vip_unchanged(v))
            .filter_map(|v| self.vips.get(&v.name)?.flipped)
            .map(|flipped| SLOT_REUSE_DELAY.saturating_sub(now - flipped))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn write_vip(&mut self, maps: &mut Maps, vip: &PlanVip, table: &[u32], digest: u64) -> Result<(), DatapathError> {
        let mut meta = match self.vips.get(&vip.name) {
            Some(written) => written.meta,
            None => {
                let used: BTreeSet<u32> = self.vips.values().map(|v| v.meta.vip_id).collect();
                let id = lowest_free(&used, MAX_VIPS)
                    .ok_or_else(|| DatapathError::Limit(format!("more than {MAX_VIPS} VIPs")))?;
                retire_vip_counters(maps, id)?;
                VipMeta { vip_id: id, ..VipMeta::default() }
            }
        };
        let facts = (meta.flags, meta.udp_idle_timeout_jiffies, meta.vlan);
        meta.flags = vip.flags;
        meta.udp_idle_timeout_jiffies = crate::ms_to_jiffies(vip.udp_idle_timeout_ms);
        meta.vlan = u32::from(vip.vlan);
        // Connection-table entries copy these facts: a change, or a new
        // VIP on the id, gets a new generation (see `VipMeta::gen`).
        if meta.gen == 0 || facts != (meta.flags, meta.udp_idle_timeout_jiffies, meta.vlan) {
            meta.gen = self.bump_vip_gen(meta.vip_id);
        }
        let mut slots: Vec<(IpAddr, u32)> = vip.members.iter().map(|&(a, _)| (a, 0)).collect();
        if table.is_empty() {
            // Loud only when a VIP loses its last backend; a new VIP starts
            // empty until its first health verdicts.
            if meta.table_size != 0 {
                tracing::warn!(vip = %vip.name, "no backend can take traffic: the VIP drops its packets");
            }
            meta.table_size = 0;
        } else {
            let real_ids: Vec<u64> = vip
                .members
                .iter()
                .map(|(address, _)| self.reals.get(address).map(|&(id, _)| u64::from(id)).expect("plan members are plan reals"))
                .collect();
            meta.table_slot ^= 1;
            let idle = maps.lookup_tables.slot_mut(meta.table_base(), vip.table_size);
            for (entry, &member) in idle.iter_mut().zip(table) {
                *entry = real_ids[member as usize];
                slots[member as usize].1 += 1;
            }
            meta.table_size = vip.table_size;
            tracing::debug!(vip = %vip.name, members = vip.members.len(), "lookup table rebuilt");
            // The copy must be visible before the entry naming it; the
            // syscall below orders it too, this says so.
            fence(Ordering::SeqCst);
        }
        maps.vips.insert(vip.key, meta, 0).map_err(map_err(names::VIPS))?;
        // After the entry: no value of an older generation can be read
        // once this says the new one is current.
        self.write_vip_facts(maps, meta.vip_id, VipFacts::of(&meta))?;
        let flipped = (meta.table_size != 0).then(Instant::now);
        let table = VipTable {
            vip_id: meta.vip_id,
            table_size: meta.table_size,
            slots,
            digest: if table.is_empty() { 0 } else { digest },
        };
        self.vips.insert(vip.name.clone(), WrittenVip { key: vip.key, meta, members: vip.members.clone(), flipped, table });
        Ok(())
    }
}

/// What a Maglev table is built from: members and size.
type TableInput<'a> = (&'a [(IpAddr, u32)], u32);
/// A Maglev table (member indexes) and its digest.
type BuiltTable = (Vec<u32>, u64);

/// The Maglev table over `members` (as indexes into `members`) and its
/// digest. Members are named by their address's text, the same on every node.
fn build_table(members: &[(IpAddr, u32)], size: u32) -> BuiltTable {
    let names: Vec<String> = members.iter().map(|(a, _)| a.to_string()).collect();
    let members: Vec<maglev::Member> =
        names.iter().zip(members).map(|(name, &(_, weight))| maglev::Member { name, weight }).collect();
    let table = maglev::build(&members, size);
    let digest = maglev::digest(&members, &table);
    (table, digest)
}

fn lowest_free(used: &BTreeSet<u32>, limit: u32) -> Option<u32> {
    (0..limit).find(|id| !used.contains(id))
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// Zeroes entry `index` of a per-CPU counter map (a reused id starts at 0).
fn zero(map: &mut PerCpuArray<MapData, Counters>, index: u32, name: &'static str) -> Result<(), DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Limit(format!("counting CPUs: {e}")))?;
    let values =
        PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|e| DatapathError::Limit(format!("{name}: {e}")))?;
    map.set(index, values, 0).map_err(map_err(name))
}

/// Zeroes VIP id `id`'s `VIP_STATS` entry, so a new VIP on the id starts
/// at 0, after adding its connection-table events to `maps.retired`: the
/// node-wide totals lose nothing. Under the lock the readers hold while
/// they sum, so no reader counts the events twice or not at all.
fn retire_vip_counters(maps: &mut Maps, id: u32) -> Result<(), DatapathError> {
    let mut retired = maps.retired.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let old = crate::sum_vip(&maps.vip_stats, id);
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Limit(format!("counting CPUs: {e}")))?;
    let values = PerCpuValues::try_from(vec![VipCounters::default(); cpus])
        .map_err(|e| DatapathError::Limit(format!("{}: {e}", names::VIP_STATS)))?;
    maps.vip_stats.set(id, values, 0).map_err(map_err(names::VIP_STATS))?;
    *retired = crate::add_vip(*retired, old);
    Ok(())
}

/// `LOOKUP_TABLES` mapped into the daemon's memory.
///
/// The kernel lays an array map's values out back to back with a stride of
/// `round_up(value_size, 8)` bytes (`array_map_alloc` in
/// kernel/bpf/arraymap.c), and maps them from offset 0. A `u32` real id
/// therefore sits in the low half of an 8-byte little-endian element, and
/// writing the element as a `u64` writes the id and zeroes the padding.
pub(crate) struct TableMemory {
    entries: NonNull<u64>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it to the
// writer thread moves that ownership.
unsafe impl Send for TableMemory {}

impl TableMemory {
    /// Maps all of `LOOKUP_TABLES` (`map` must be that map) read-write.
    pub fn map(map: &MapData) -> Result<Self, DatapathError> {
        let len = LOOKUP_TABLES_LEN as usize;
        let bytes = len * std::mem::size_of::<u64>();
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // the length against the map and refuses a non-mmapable map.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(bytes).expect("the table map is not empty"),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .map_err(|e| DatapathError::Mmap(std::io::Error::from(e)))?;
        Ok(TableMemory { entries: ptr.cast(), len })
    }

    /// The `size` entries of the table slot starting at entry `base`.
    fn slot_mut(&mut self, base: u32, size: u32) -> &mut [u64] {
        let (base, size) = (base as usize, size as usize);
        assert!(size <= MAGLEV_MAX_TABLE_SIZE as usize && base + size <= self.len, "table slot out of the map");
        // SAFETY: in bounds (checked above) of a mapping this value owns;
        // `&mut self` makes the slice the only user-space reference.
        unsafe { std::slice::from_raw_parts_mut(self.entries.as_ptr().add(base), size) }
    }
}

impl Drop for TableMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no slice outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.entries.cast(), self.len * std::mem::size_of::<u64>()) };
    }
}
