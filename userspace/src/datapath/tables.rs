//! Writing an `Effective` state into the maps: id allocation for VIPs and
//! reals, Maglev tables into the inactive slot, then the flip.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use fulcrum_common::{
    names, Counters, RealDef, VipKey, VipMeta, MAX_REALS, MAX_VIPS, VIP_F_HASH_SRC_ONLY,
};

use super::{map_err, zero, DatapathError};
use crate::{
    config::Scheduler,
    maglev,
    state::{ActiveBackend, Effective, EffectiveVip, Mac},
};

/// The maps `Tables::apply` writes, borrowed from the `Datapath`.
pub(super) struct Maps<'a> {
    pub vips: &'a mut BpfHashMap<MapData, VipKey, VipMeta>,
    pub lookup_tables: &'a mut Array<MapData, u32>,
    pub reals: &'a mut Array<MapData, RealDef>,
    pub vip_stats: &'a mut PerCpuArray<MapData, Counters>,
    pub real_stats: &'a mut PerCpuArray<MapData, Counters>,
}

/// A VIP's live lookup table, as last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipTableInfo {
    /// M, or 0 when the VIP has no backend and drops.
    pub table_size: u32,
    /// Slots owned by each backend in the table, by address.
    pub slots: Vec<(IpAddr, u32)>,
}

struct AppliedVip {
    key: VipKey,
    meta: VipMeta,
    backends: Vec<ActiveBackend>,
    slots: Vec<(IpAddr, u32)>,
}

/// What has been written to the maps so far: user space's mirror of them.
#[derive(Default)]
pub(super) struct Tables {
    vips: HashMap<String, AppliedVip>,
    reals: HashMap<IpAddr, (u32, Option<Mac>)>,
}

impl Tables {
    pub fn vip(&self, name: &str) -> Option<VipTableInfo> {
        self.vips.get(name).map(|v| VipTableInfo { table_size: v.meta.table_size, slots: v.slots.clone() })
    }

    pub fn vip_id(&self, name: &str) -> Option<u32> {
        self.vips.get(name).map(|v| v.meta.vip_id)
    }

    pub fn real_id(&self, address: IpAddr) -> Option<u32> {
        self.reals.get(&address).map(|&(id, _)| id)
    }

    pub fn apply(&mut self, mut maps: Maps<'_>, effective: &Effective) -> Result<(), DatapathError> {
        // Reals first: a new table may only name reals whose MAC is written.
        for (&address, &mac) in &effective.reals {
            self.write_real(&mut maps, address, mac)?;
        }
        for vip in &effective.vips {
            self.write_vip(&mut maps, vip)?;
        }
        let gone: Vec<String> = self
            .vips
            .keys()
            .filter(|name| !effective.vips.iter().any(|v| &v.name == *name))
            .cloned()
            .collect();
        for name in gone {
            let old = self.vips.remove(&name).expect("listed above");
            maps.vips.remove(&old.key).map_err(map_err(names::VIPS))?;
        }
        // No table names a removed real any more: their ids may be reused.
        self.reals.retain(|address, _| effective.reals.contains_key(address));
        Ok(())
    }

    fn write_real(&mut self, maps: &mut Maps<'_>, address: IpAddr, mac: Option<Mac>) -> Result<(), DatapathError> {
        let id = match self.reals.get(&address) {
            // An unknown MAC keeps the last one written: the real is out of
            // every table anyway (see state::Exclusion::NoMac).
            Some(&(_, written)) if written == mac || mac.is_none() => return Ok(()),
            Some(&(id, _)) => id,
            None => {
                let used: BTreeSet<u32> = self.reals.values().map(|&(id, _)| id).collect();
                let id = lowest_free(&used, MAX_REALS)
                    .ok_or_else(|| DatapathError::Limit(format!("more than {MAX_REALS} backends")))?;
                zero(maps.real_stats, id, names::REAL_STATS)?;
                id
            }
        };
        if let Some(mac) = mac {
            maps.reals.set(id, RealDef { mac, _pad: [0; 2] }, 0).map_err(map_err(names::REALS))?;
        }
        self.reals.insert(address, (id, mac));
        Ok(())
    }

    fn write_vip(&mut self, maps: &mut Maps<'_>, vip: &EffectiveVip) -> Result<(), DatapathError> {
        let key = VipKey::new(vip.address, vip.port, vip.protocol.ip_proto());
        let flags = match vip.scheduler {
            Scheduler::Maglev => 0,
            Scheduler::IpHash => VIP_F_HASH_SRC_ONLY,
        };
        let mut meta = match self.vips.get(&vip.name) {
            Some(old) if old.key == key => {
                let same_table = old.backends == vip.backends
                    && old.meta.flags == flags
                    && (old.meta.table_size == vip.table_size || old.meta.table_size == 0);
                if same_table {
                    return Ok(());
                }
                old.meta
            }
            Some(old) => {
                // Same name, new (address, port, protocol): a different service.
                maps.vips.remove(&old.key).map_err(map_err(names::VIPS))?;
                VipMeta { vip_id: old.meta.vip_id, ..VipMeta::default() }
            }
            None => {
                let used: BTreeSet<u32> = self.vips.values().map(|v| v.meta.vip_id).collect();
                let id = lowest_free(&used, MAX_VIPS)
                    .ok_or_else(|| DatapathError::Limit(format!("more than {MAX_VIPS} VIPs")))?;
                zero(maps.vip_stats, id, names::VIP_STATS)?;
                VipMeta { vip_id: id, ..VipMeta::default() }
            }
        };
        meta.flags = flags;

        let names: Vec<String> = vip.backends.iter().map(|b| b.address.to_string()).collect();
        let members: Vec<maglev::Member> = names
            .iter()
            .zip(&vip.backends)
            .map(|(name, b)| maglev::Member { name, weight: b.weight })
            .collect();
        let table = maglev::build(&members, vip.table_size);
        let mut slots = vec![0u32; vip.backends.len()];
        if table.is_empty() {
            meta.table_size = 0;
        } else {
            let real_ids: Vec<u32> = vip
                .backends
                .iter()
                .map(|b| self.real_id(b.address).expect("every active backend is a configured real"))
                .collect();
            // Write the slot packets are not reading, then flip to it.
            meta.table_slot ^= 1;
            let base = meta.table_base();
            for (i, &member) in table.iter().enumerate() {
                slots[member as usize] += 1;
                maps.lookup_tables
                    .set(base + i as u32, real_ids[member as usize], 0)
                    .map_err(map_err(names::LOOKUP_TABLES))?;
            }
            meta.table_size = vip.table_size;
        }
        maps.vips.insert(key, meta, 0).map_err(map_err(names::VIPS))?;
        let slots = vip.backends.iter().map(|b| b.address).zip(slots).collect();
        self.vips.insert(vip.name.clone(), AppliedVip { key, meta, backends: vip.backends.clone(), slots });
        Ok(())
    }
}

fn lowest_free(used: &BTreeSet<u32>, limit: u32) -> Option<u32> {
    (0..limit).find(|id| !used.contains(id))
}
