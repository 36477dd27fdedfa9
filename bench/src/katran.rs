//! Katran's XDP program as a peer row set of `cargo xtask bench xdp`
//! (`--katran-object PATH`, an object built out of tree: bench/RESULTS.md
//! gives the commands). Nothing of Katran is in this tree; this module
//! knows only its interface: map names, key and value layouts (declared
//! here in our own types), the statistics indices it reads back.
//!
//! Setup, the one a Katran node runs with one forwarding core (the bench
//! CPU): one VIP per frame kind of the bench (TCP and UDP, both
//! IPIP-encapsulated: Katran always encapsulates), three reals, each VIP's
//! consistent-hash ring filled by fulcrum's own Maglev builder over the
//! reals (Katran's rings are Maglev tables of the same size; which real a
//! slot holds does not change the cost), the default router's MAC in the
//! control array, and a connection LRU of the given flow count installed
//! as the bench CPU's per-core LRU (`lru_mapping`), as Katran's user space
//! does for each forwarding core. The LRU installed there is the object's
//! own `fallback_cache` map, resized: one map, so no second 1M-flow table,
//! and the `FALLBACK_LRU` counter stays at 0, which the bench checks.
use std::{net::Ipv4Addr, os::fd::AsFd, path::Path};

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray},
    programs::{ProgramFd, Xdp},
    Ebpf, EbpfLoader,
};
use fulcrum_common::{Mac, IPPROTO_TCP};
use fulcrum_l4::maglev::{self, Member};

/// Slots of one VIP's ring in `ch_rings` (Katran's `RING_SIZE`).
const RING_SIZE: u32 = 65537;
/// Katran's `MAX_VIPS`: its global counters sit at `MAX_VIPS + index` in `stats`.
const MAX_VIPS: u32 = 512;

/// Indices of Katran's global counters in `stats` (after `MAX_VIPS`).
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// v1: packets to a VIP; v2: of those, connection-table misses.
    Lru = 0,
    /// v1: misses of TCP SYNs (every SYN); v2: misses of other TCP packets.
    LruMiss = 1,
    /// v1: packets that found no per-core LRU and used `fallback_cache`.
    FallbackLru = 3,
    /// v1: packets returned XDP_TX.
    Tx = 17,
    /// v1: packets returned XDP_DROP.
    Drop = 18,
    /// v1: packets returned XDP_PASS.
    Pass = 19,
}

/// Katran's `vip_definition`: address (IPv4 in the first word), port
/// (network order), protocol; padding zeroed.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct VipDef {
    addr: [u32; 4],
    port: u16,
    proto: u8,
    pad: u8,
}

/// Katran's `vip_meta`: flags (0: hash on the 5-tuple, use the LRU) and
/// the VIP's index (its ring, its counters).
#[derive(Clone, Copy)]
#[repr(C)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// Katran's `real_definition`: address (IPv4 in the first word), flags (0: IPv4).
#[derive(Clone, Copy)]
#[repr(C)]
struct RealDef {
    addr: [u32; 4],
    flags: u8,
    pad: [u8; 3],
}

/// Katran's `ctl_value`: a union; entry 0 holds the default router's MAC.
#[derive(Clone, Copy)]
#[repr(C)]
struct CtlValue {
    value: [u8; 8],
}

/// Katran's `lb_stats` counter pair.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct Stats {
    /// First counter (usually packets).
    pub v1: u64,
    /// Second counter (bytes, or a second kind of packet: see [`Counter`]).
    pub v2: u64,
}

/// Katran's `flow_key`: addresses (IPv4 in the first word), both ports
/// as on the wire, protocol; padding zeroed.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct FlowKey {
    src: [u32; 4],
    dst: [u32; 4],
    ports: [u16; 2],
    proto: u8,
    pad: [u8; 3],
}

/// Katran's `real_pos_lru`: the real's index, last-seen time (UDP).
#[derive(Clone, Copy)]
#[repr(C)]
struct RealPos {
    pos: u32,
    atime: u64,
}

// SAFETY: plain `repr(C)` integers, every padding byte an explicit field.
unsafe impl aya::Pod for VipDef {}
unsafe impl aya::Pod for VipMeta {}
unsafe impl aya::Pod for RealDef {}
unsafe impl aya::Pod for CtlValue {}
unsafe impl aya::Pod for Stats {}
unsafe impl aya::Pod for FlowKey {}
// SAFETY: `u32` then `u64`: 4 padding bytes, never read as data (the
// kernel and Katran's program write whole values).
unsafe impl aya::Pod for RealPos {}

/// One VIP Katran balances.
pub struct KatranVip {
    /// The VIP's address.
    pub addr: Ipv4Addr,
    /// Destination port (host order).
    pub port: u16,
    /// IP protocol number (TCP or UDP).
    pub proto: u8,
}

/// Katran's program, loaded and configured.
pub struct Katran {
    obj: Ebpf,
    cpu: u32,
}

impl Katran {
    /// Loads the object at `path` with a connection LRU of `flows` entries
    /// for CPU `cpu`, and configures `vips` over `reals` with
    /// `router` as the default router's MAC.
    pub fn load(path: &Path, flows: u32, cpu: u32, vips: &[KatranVip], reals: &[Ipv4Addr], router: Mac) -> Result<Self> {
        let mut obj = EbpfLoader::new()
            .map_max_entries("fallback_cache", flows)
            .load_file(path)
            .with_context(|| format!("loading Katran's object {}", path.display()))?;
        let prog: &mut Xdp = obj.program_mut("balancer_ingress").context("no balancer_ingress in Katran's object")?.try_into()?;
        prog.load().context("loading balancer_ingress")?;

        let words = |a: Ipv4Addr| [u32::from_ne_bytes(a.octets()), 0, 0, 0];
        let mut real_map: Array<_, RealDef> = Array::try_from(obj.map_mut("reals").context("no map reals")?)?;
        // Real ids start at 1: a ring slot of 0 is "uninitialized".
        for (i, &r) in reals.iter().enumerate() {
            real_map.set(i as u32 + 1, RealDef { addr: words(r), flags: 0, pad: [0; 3] }, 0)?;
        }
        let names: Vec<String> = reals.iter().map(|r| r.to_string()).collect();
        let members: Vec<Member<'_>> = names.iter().map(|n| Member { name: n, weight: 1 }).collect();
        let ring = maglev::build(&members, RING_SIZE);
        let mut rings: Array<_, u32> = Array::try_from(obj.map_mut("ch_rings").context("no map ch_rings")?)?;
        for vip_num in 0..vips.len() as u32 {
            for (slot, &member) in ring.iter().enumerate() {
                rings.set(vip_num * RING_SIZE + slot as u32, member + 1, 0)?;
            }
        }
        let mut vip_map: HashMap<_, VipDef, VipMeta> = HashMap::try_from(obj.map_mut("vip_map").context("no map vip_map")?)?;
        for (vip_num, v) in vips.iter().enumerate() {
            let key = VipDef { addr: words(v.addr), port: v.port.to_be(), proto: v.proto, pad: 0 };
            vip_map.insert(key, VipMeta { flags: 0, vip_num: vip_num as u32 }, 0)?;
        }
        let mut ctl: Array<_, CtlValue> = Array::try_from(obj.map_mut("ctl_array").context("no map ctl_array")?)?;
        let mut value = [0u8; 8];
        value[..6].copy_from_slice(&router.0);
        ctl.set(0, CtlValue { value }, 0)?;

        let lru = match obj.map("fallback_cache").context("no map fallback_cache")? {
            Map::LruHashMap(data) => MapData::from_fd(data.fd().as_fd().try_clone_to_owned()?)?,
            _ => anyhow::bail!("Katran's fallback_cache is not an LRU hash"),
        };
        let mut per_cpu: ArrayOfMaps<_, MapData> = ArrayOfMaps::try_from(obj.map_mut("lru_mapping").context("no map lru_mapping")?)?;
        per_cpu.set(cpu, &lru, 0).context("installing the per-CPU LRU")?;
        Ok(Katran { obj, cpu })
    }

    /// The loaded program (for the harness's `TARGET`).
    pub fn program_fd(&self) -> Result<ProgramFd> {
        let prog: &Xdp = self.obj.program("balancer_ingress").context("no balancer_ingress")?.try_into()?;
        Ok(prog.fd()?.try_clone()?)
    }

    /// Global counter `c` on the bench CPU.
    pub fn counter(&self, c: Counter) -> Result<Stats> {
        let stats: PerCpuArray<_, Stats> = PerCpuArray::try_from(self.obj.map("stats").context("no map stats")?)?;
        let values = stats.get(&(MAX_VIPS + c as u32), 0)?;
        Ok(values[self.cpu as usize])
    }

    /// Whether the LRU holds the TCP flow `src`:`sport` -> `dst`:`dport`.
    pub fn has_tcp_flow(&self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Result<bool> {
        let lru: HashMap<_, FlowKey, RealPos> = HashMap::try_from(self.obj.map("fallback_cache").context("no map fallback_cache")?)?;
        let key = FlowKey {
            src: [u32::from_ne_bytes(src.octets()), 0, 0, 0],
            dst: [u32::from_ne_bytes(dst.octets()), 0, 0, 0],
            ports: [sport.to_be(), dport.to_be()],
            proto: IPPROTO_TCP,
            pad: [0; 3],
        };
        match lru.get(&key, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Entries of the LRU (one system call per entry: call once).
    pub fn lru_len(&self) -> Result<usize> {
        let lru: HashMap<_, FlowKey, RealPos> = HashMap::try_from(self.obj.map("fallback_cache").context("no map fallback_cache")?)?;
        let n = lru.keys().count();
        ensure!(n > 0, "Katran's LRU is empty");
        Ok(n)
    }
}

