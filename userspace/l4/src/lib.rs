//! fulcrum's L4 datapath from user space: loads the XDP program, attaches
//! it, writes its maps, and reads its counters.
//!
//! Owns the BPF object and every map; nothing else touches them. Map
//! layouts are defined in `fulcrum-common`. Data comes in one way: the
//! daemon's effective state becomes a [`Plan`] (adding what only L4
//! needs: VIP keys and, for L2 DSR, member MACs from [`neighbours`]), and
//! [`Writer`] applies plans on its own thread, off the control loop.
//!
//! - [`plan`]: effective state -> what the maps must hold (pure).
//! - [`maglev`]: the lookup table builder (pure).
//! - `tables`: writes a plan into the maps (mmap'd tables, atomic flips).
//! - `attach`: attaching by netlink, so the program outlives a crashed daemon.
//! - [`writer`]: the thread that applies plans, coalescing bursts.
//! - [`neighbours`]: the interface and its neighbour table, by subscription.
//! - [`ethtool`]: receive VLAN offload, off while the program is attached.
mod attach;
pub mod maglev;
pub mod neighbours;
pub mod plan;
mod tables;
pub mod writer;

use std::time::Duration;

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
pub use fulcrum_common::{ConnEntry, ConnEvent, FlowKey, FlowKeyV4, VipFacts};
use fulcrum_common::{
    conn_set_hash_v4, conn_set_hash_v6, conn_sets, names, ConnSet, ConnWay, Counters, DatapathConfig, Mac, Reason, VipCounters,
    CONN_WAYS, DEFAULT_CONN_TABLE_SIZE, MAX_VIPS,
};

mod decap;
pub mod ethtool;
pub use decap::{Decap, DecapCounters};
use thiserror::Error;

pub use neighbours::{Interface, LinkError, NeighbourChange, Neighbours};
pub use plan::{macs, Plan, PlanVip, VirtualMacs};
pub use tables::{Applied, VipTable, WriteCounts, SLOT_REUSE_DELAY};
pub use writer::{ApplyReport, Writer, WriterStatus};

/// The XDP object built by build.rs, embedded at build time; empty when
/// the eBPF toolchain was missing (see build.rs).
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FULCRUM_XDP_OBJECT"));

/// What went wrong loading, attaching or updating the datapath.
#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(
        "this fulcrum was built without its eBPF object (the eBPF toolchain was missing): \
         run `cargo xtask setup`, then build fulcrum again"
    )]
    NoObject,
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("attaching XDP to {0}: {1}")]
    Attach(String, std::io::Error),
    #[error("detaching XDP: {0}")]
    Detach(std::io::Error),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("mapping the lookup tables into memory: {0}")]
    Mmap(std::io::Error),
    #[error("{0}")]
    Limit(String),
    #[error("the datapath writer panicked: {0}")]
    Panic(String),
}

/// How the program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP, run by the driver before an skb exists.
    Driver,
    /// Generic XDP (skb mode): works on any device, at stack speed.
    Generic,
}

/// One `BPF_PROG_TEST_RUN` of the program on a frame.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// The XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, `XDP_DROP` = 1, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured time per run, averaged over `repeat` runs.
    pub duration: Duration,
}

/// The node-wide settings the datapath reads from `DATAPATH_CONFIG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSettings {
    /// The attached interface's MAC: the source of every frame sent.
    pub self_mac: Mac,
    /// The attached interface's MTU in bytes: an IPIP packet's outer IP
    /// packet must fit (inner + 20 bytes, IP6IP6 inner + 40), else the
    /// client gets ICMP "fragmentation needed" / "packet too big".
    pub mtu: u16,
    /// IPIP outer source prefix (`[datapath] ipip_source_v4`).
    pub ipip_source_v4: Option<(std::net::Ipv4Addr, u8)>,
    /// IP6IP6 outer source prefix, length >= 96 (`ipip_source_v6`).
    pub ipip_source_v6: Option<(std::net::Ipv6Addr, u8)>,
    /// The VRRP virtual router MACs frames may arrive on besides
    /// `self_mac` (instances with `virtual_mac = true` on this interface).
    pub virtual_macs: VirtualMacs,
}

impl NodeSettings {
    /// `mac`, the Ethernet MTU of 1500 bytes, no IPIP source prefixes.
    pub fn new(mac: Mac) -> Self {
        NodeSettings {
            self_mac: mac,
            mtu: 1500,
            ipip_source_v4: None,
            ipip_source_v6: None,
            virtual_macs: VirtualMacs::default(),
        }
    }

    /// The settings for the attached `interface` from `config`: its
    /// `[datapath]` section and its VRRP instances' virtual MACs.
    pub fn for_interface(interface: &Interface, config: &fulcrum_config::Config) -> Self {
        NodeSettings {
            self_mac: interface.mac,
            mtu: u16::try_from(interface.mtu).unwrap_or(u16::MAX),
            ipip_source_v4: config.datapath.ipip_source_v4,
            ipip_source_v6: config.datapath.ipip_source_v6,
            virtual_macs: VirtualMacs::of(config, &interface.name),
        }
    }

    /// The map value: prefixes as raw network-order words and host masks
    /// (see `DatapathConfig`).
    pub fn to_config(&self) -> DatapathConfig {
        let mask = |host_bits: u32| if host_bits >= 32 { 0 } else { u32::MAX << host_bits };
        let (v4, v4_host) = match self.ipip_source_v4 {
            Some((addr, len)) => {
                let m = mask(32 - u32::from(len.min(32)));
                ((u32::from(addr) & m).to_be(), (!m).to_be())
            }
            None => (0, 0),
        };
        let (v6, v6_host) = match self.ipip_source_v6 {
            Some((addr, len)) => {
                let m = mask(128 - u32::from(len.clamp(96, 128)));
                let mut words = fulcrum_common::addr_words(addr.into());
                words[3] = (u32::from_be(words[3]) & m).to_be();
                (words, (!m).to_be())
            }
            None => ([0; 4], 0),
        };
        DatapathConfig {
            self_mac: self.self_mac.0,
            mtu: self.mtu,
            ipip_src_v4: v4,
            ipip_src_v4_host: v4_host,
            ipip_src_v6: v6,
            ipip_src_v6_host: v6_host,
            _pad: 0,
            virtual_mac_v4: self.virtual_macs.v4,
            virtual_mac_v6: self.virtual_macs.v6,
        }
    }
}

/// What is fixed when the program loads: the sizes of its maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Connection table entries (flows) per address family: the IPv4 and
    /// the IPv6 table each hold at least this many, in
    /// [`fulcrum_common::conn_sets`] sets of `CONN_WAYS` (4) flows, so
    /// the size is rounded up to a power of two (1,000,000 ->
    /// 1,048,576). The kernel preallocates them all: 32 bytes per IPv4
    /// flow, 56 per IPv6 flow (32 + 56 MiB at the default).
    pub conn_table_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { conn_table_size: DEFAULT_CONN_TABLE_SIZE }
    }
}

/// The loaded program and its maps.
pub struct Datapath {
    ebpf: Ebpf,
    attachment: Option<attach::Attachment>,
    /// The interface whose receive VLAN offload `attach` turned off.
    rx_vlan_restore: Option<String>,
    config: aya::maps::Array<MapData, DatapathConfig>,
    /// `CONN_TABLE_V4` and `CONN_TABLE_V6`: arrays of sets.
    conn_table_v4: aya::maps::Array<MapData, ConnSet<FlowKeyV4>>,
    conn_table_v6: aya::maps::Array<MapData, ConnSet<FlowKey>>,
    /// The connection tables' hash seed and set count, as given to the
    /// program at load (`CONN_HASH_SEED`, `CONN_SET_MASK` + 1).
    conn_seed: u64,
    conn_sets: u32,
    maps: tables::Maps,
    tables: tables::Tables,
    counters: CounterReader,
}

impl Datapath {
    /// Loads the embedded XDP program into the kernel (not attached yet)
    /// and maps its lookup tables into memory.
    ///
    /// # Errors
    /// [`DatapathError::NoObject`] in a build without the eBPF object; the
    /// verifier's or the kernel's refusal (needs root or CAP_BPF).
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// [`Datapath::load`] with map sizes other than the defaults.
    ///
    /// # Errors
    /// As [`Datapath::load`]; also the kernel refusing the connection
    /// table's memory.
    pub fn load_with(options: LoadOptions) -> Result<Self, DatapathError> {
        Self::load_object(XDP_OBJECT, options)
    }

    /// Loads `object`: the embedded one, or in tests the stub a build
    /// without the eBPF toolchain embeds (empty).
    fn load_object(object: &[u8], options: LoadOptions) -> Result<Self, DatapathError> {
        if object.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let sets = conn_sets(options.conn_table_size);
        let seed = random_seed();
        let mask = sets - 1;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::CONN_TABLE_V4, sets)
            .map_max_entries(names::CONN_TABLE_V6, sets)
            .override_global(names::CONN_HASH_SEED, &seed, true)
            .override_global(names::CONN_SET_MASK, &mask, true)
            .load(object)?;
        let program: &mut Xdp =
            ebpf.program_mut(names::PROGRAM).ok_or(DatapathError::MissingMap(names::PROGRAM))?.try_into()?;
        program.load()?;
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let lookup_tables = match take(names::LOOKUP_TABLES)? {
            Map::Array(data) => data,
            _ => return Err(DatapathError::MissingMap(names::LOOKUP_TABLES)),
        };
        let vips = typed(take(names::VIPS)?, names::VIPS)?;
        let reals = typed(take(names::REALS)?, names::REALS)?;
        let vip_filter = typed(take(names::VIP_FILTER)?, names::VIP_FILTER)?;
        let vip_real_ok = typed(take(names::VIP_REAL_OK)?, names::VIP_REAL_OK)?;
        let vip_addresses = typed(take(names::VIP_ADDRESSES)?, names::VIP_ADDRESSES)?;
        let vip_facts = typed(take(names::VIP_FACTS)?, names::VIP_FACTS)?;
        let conn_table_v4 = typed(take(names::CONN_TABLE_V4)?, names::CONN_TABLE_V4)?;
        let conn_table_v6 = typed(take(names::CONN_TABLE_V6)?, names::CONN_TABLE_V6)?;
        let config = typed(take(names::DATAPATH_CONFIG)?, names::DATAPATH_CONFIG)?;
        let vip_stats: PerCpuArray<MapData, VipCounters> = typed(take(names::VIP_STATS)?, names::VIP_STATS)?;
        let real_stats: PerCpuArray<MapData, Counters> = typed(take(names::REAL_STATS)?, names::REAL_STATS)?;
        let reason_stats = typed(take(names::REASON_STATS)?, names::REASON_STATS)?;
        let retired = tables::Retired::default();
        let counters = CounterReader {
            vip_stats: reopen(&vip_stats, names::VIP_STATS)?,
            real_stats: reopen(&real_stats, names::REAL_STATS)?,
            reason_stats,
            retired: retired.clone(),
        };
        let maps = tables::Maps {
            lookup_tables: tables::TableMemory::map(&lookup_tables)?,
            vips,
            reals,
            vip_filter,
            vip_real_ok,
            vip_addresses,
            vip_stats,
            retired,
            vip_facts,
            real_stats,
        };
        Ok(Datapath {
            ebpf,
            attachment: None,
            rx_vlan_restore: None,
            config,
            conn_table_v4,
            conn_table_v6,
            conn_seed: seed,
            conn_sets: sets,
            maps,
            tables: tables::Tables::default(),
            counters,
        })
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(names::PROGRAM).expect("checked at load").try_into().expect("checked at load")
    }

    /// The loaded program, for what needs no `&mut`: test runs (from
    /// several threads at once) and its descriptor.
    fn xdp(&self) -> &Xdp {
        self.ebpf.program(names::PROGRAM).expect("checked at load").try_into().expect("checked at load")
    }

    /// Sets the source MAC of forwarded frames (the attached NIC's own),
    /// with the other node settings at their [`NodeSettings::new`] values.
    ///
    /// # Errors
    /// The map update failed.
    pub fn set_self_mac(&mut self, mac: Mac) -> Result<(), DatapathError> {
        self.set_node(&NodeSettings::new(mac))
    }

    /// Writes the node-wide settings (`DATAPATH_CONFIG`): own MAC, MTU and
    /// the IPIP source prefixes.
    ///
    /// # Errors
    /// The map update failed.
    pub fn set_node(&mut self, node: &NodeSettings) -> Result<(), DatapathError> {
        self.config.set(0, node.to_config(), 0).map_err(|source| DatapathError::Map { map: names::DATAPATH_CONFIG, source })
    }

    /// Attaches to `interface` in driver mode, else in generic mode (with a
    /// warning: generic XDP runs after the skb is built, far slower),
    /// replacing a program a crashed predecessor left there. The program
    /// stays attached if the process dies without [`Datapath::detach`]
    /// (or a drop) running: see the `attach` module for why.
    ///
    /// First turns the interface's receive VLAN offload off (logged, and
    /// turned back on at detach), so 802.1Q tags stay in the frame where
    /// the program reads them (see the `ethtool` module). If the driver
    /// keeps it on, an error is logged and the program attaches anyway:
    /// it then sees tagged frames as untagged.
    ///
    /// # Errors
    /// Neither mode could attach (no such interface, a program attached
    /// through a BPF link by another tool).
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode, DatapathError> {
        match ethtool::rx_vlan_offload(interface) {
            Ok(false) => {}
            Ok(true) => match ethtool::set_rx_vlan_offload(interface, false) {
                Ok(()) => {
                    tracing::info!(%interface, "receive VLAN offload turned off (ethtool -K {interface} rxvlan off) so XDP sees 802.1Q tags; turned back on at detach");
                    self.rx_vlan_restore = Some(interface.to_owned());
                }
                Err(err) => tracing::error!(%interface, error = %err, "cannot turn receive VLAN offload off: XDP sees tagged frames untagged, so VIP VLANs are not enforced"),
            },
            Err(err) => tracing::warn!(%interface, error = %err, "cannot read the receive VLAN offload setting"),
        }
        match attach_xdp(self.program(), interface) {
            Ok(attachment) => {
                let mode = attachment.mode();
                self.attachment = Some(attachment);
                Ok(mode)
            }
            Err(err) => {
                self.restore_rx_vlan();
                Err(err)
            }
        }
    }

    /// Detaches from the interface, if attached and still ours, and turns
    /// receive VLAN offload back on if `attach` turned it off. Also done
    /// on drop.
    ///
    /// # Errors
    /// The kernel refused to detach.
    pub fn detach(&mut self) -> Result<(), DatapathError> {
        if let Some(attachment) = self.attachment.take() {
            detach_xdp(self.program(), attachment)?;
        }
        self.restore_rx_vlan();
        Ok(())
    }

    fn restore_rx_vlan(&mut self) {
        if let Some(interface) = self.rx_vlan_restore.take() {
            if let Err(err) = ethtool::set_rx_vlan_offload(&interface, true) {
                tracing::warn!(%interface, error = %err, "turning receive VLAN offload back on");
            }
        }
    }

    /// Makes the maps hold what `plan` says, writing only what changed.
    /// Each changed VIP gets its new table in its idle slot before its
    /// entry flips to it, so no packet sees a partial table.
    ///
    /// # Errors
    /// A map update failed, or more VIPs/backends than the maps hold. The
    /// maps then hold a consistent state for each VIP (old or new), and
    /// [`Datapath::applied`] says which; applying again retries.
    pub fn apply(&mut self, plan: &Plan) -> Result<WriteCounts, DatapathError> {
        self.tables.apply(&mut self.maps, plan)
    }

    /// What the maps hold, as last written (a copy).
    pub fn applied(&self) -> Applied {
        self.tables.applied()
    }

    /// A reader of the program's counters with its own map handles, to
    /// read them while the datapath is busy on another thread.
    ///
    /// # Errors
    /// The kernel refused a new handle to a map.
    pub fn counter_reader(&self) -> Result<CounterReader, DatapathError> {
        Ok(CounterReader {
            vip_stats: reopen(&self.counters.vip_stats, names::VIP_STATS)?,
            real_stats: reopen(&self.counters.real_stats, names::REAL_STATS)?,
            reason_stats: reopen(&self.counters.reason_stats, names::REASON_STATS)?,
            retired: self.counters.retired.clone(),
        })
    }

    /// The connection table's entry for `key`, if any (for tests and
    /// diagnostics; the datapath alone writes entries in operation).
    /// An IPv4 flow's key (both addresses IPv4-mapped) names its entry in
    /// the IPv4 table, any other in the IPv6 table.
    pub fn conn_entry(&self, key: &FlowKey) -> Option<ConnEntry> {
        match key.v4() {
            Some(v4) => {
                let set = self.conn_table_v4.get(&self.set_index(conn_set_hash_v4(&v4, self.conn_seed)), 0).ok()?;
                set.ways.iter().find(|w| w.key.unlocked() == v4).map(|w| w.entry)
            }
            None => {
                let set = self.conn_table_v6.get(&self.set_index(conn_set_hash_v6(key, self.conn_seed)), 0).ok()?;
                set.ways.iter().find(|w| w.key.unlocked() == *key).map(|w| w.entry)
            }
        }
    }

    /// The set a flow of this hash lives in.
    fn set_index(&self, hash: u64) -> u32 {
        (hash as u32) & (self.conn_sets - 1)
    }

    /// The index of the set `key`'s flow lives in, in its family's table
    /// (for tests and diagnostics: which flows compete for ways).
    pub fn conn_set(&self, key: &FlowKey) -> u32 {
        match key.v4() {
            Some(v4) => self.set_index(conn_set_hash_v4(&v4, self.conn_seed)),
            None => self.set_index(conn_set_hash_v6(key, self.conn_seed)),
        }
    }

    /// `VIP_FACTS[vip_id]` as the datapath reads it (for tests and
    /// diagnostics): the generation and facts of the VIP holding the id.
    pub fn vip_facts(&self, vip_id: u32) -> Option<VipFacts> {
        self.maps.vip_facts.get(&vip_id, 0).ok()
    }

    /// Writes a connection-table entry, as the datapath would: for tests
    /// (an entry with an old `seen` time, a state another node left).
    ///
    /// # Errors
    /// The map update failed.
    ///
    /// The entry goes over the flow's own way, else over an empty way,
    /// else over the way with the smallest `seen` (a simpler choice than
    /// the datapath's, which needs the time), `seen` as given: for a UDP
    /// flow, the jiffies of its last packet (modulo 2^31; see
    /// [`ConnEntry::seen`]). Not safe against a datapath writing the same
    /// set meanwhile (the whole set is read and written back): for tests,
    /// on a quiet datapath.
    pub fn set_conn_entry(&mut self, key: &FlowKey, entry: ConnEntry) -> Result<(), DatapathError> {
        match key.v4() {
            Some(v4) => {
                let index = self.set_index(conn_set_hash_v4(&v4, self.conn_seed));
                let err = |source| DatapathError::Map { map: names::CONN_TABLE_V4, source };
                let mut set = self.conn_table_v4.get(&index, 0).map_err(err)?;
                place(&mut set, v4, entry, FlowKeyV4::unlocked);
                self.conn_table_v4.set(index, set, 0).map_err(err)
            }
            None => {
                let index = self.set_index(conn_set_hash_v6(key, self.conn_seed));
                let err = |source| DatapathError::Map { map: names::CONN_TABLE_V6, source };
                let mut set = self.conn_table_v6.get(&index, 0).map_err(err)?;
                place(&mut set, *key, entry, FlowKey::unlocked);
                self.conn_table_v6.set(index, set, 0).map_err(err)
            }
        }
    }

    /// Live connection-table entries of both families, by walking the
    /// sets: one syscall per set (about half a second per million flows),
    /// so not for `/stats`.
    pub fn conn_entries(&self) -> usize {
        let live_v4 = (0..self.conn_sets)
            .filter_map(|i| self.conn_table_v4.get(&i, 0).ok())
            .map(|set| set.ways.iter().filter(|w| w.key.unlocked().proto != 0).count())
            .sum::<usize>();
        let live_v6 = (0..self.conn_sets)
            .filter_map(|i| self.conn_table_v6.get(&i, 0).ok())
            .map(|set| set.ways.iter().filter(|w| w.key.unlocked().proto != 0).count())
            .sum::<usize>();
        live_v4 + live_v6
    }

    /// Flows each family's connection table holds: its sets times
    /// `CONN_WAYS`, at least the configured `conn_table_size`.
    pub fn conn_capacity(&self) -> u32 {
        self.conn_sets * CONN_WAYS as u32
    }

    /// The program's counters.
    pub fn counters(&self) -> &CounterReader {
        &self.counters
    }

    /// The loaded program's descriptor, for a program array that
    /// tail-calls it (the restoring harness of `cargo xtask bench xdp`).
    ///
    /// # Errors
    /// aya's, if the program were not loaded (it always is after `load`).
    pub fn program_fd(&self) -> Result<&aya::programs::ProgramFd, DatapathError> {
        Ok(self.xdp().fd()?)
    }

    /// Runs the program once (or `repeat` times) on `frame` through
    /// `BPF_PROG_TEST_RUN`, without attaching it anywhere.
    ///
    /// # Errors
    /// The kernel refused the run (frame too short, needs root).
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestOutcome, DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.xdp().test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestOutcome { action: result.return_value, frame: out, duration: result.duration })
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::error!(error = %err, "detaching XDP");
        }
    }
}

/// Read-only handles to the per-CPU counter maps; sums over CPUs.
pub struct CounterReader {
    vip_stats: PerCpuArray<MapData, VipCounters>,
    real_stats: PerCpuArray<MapData, Counters>,
    reason_stats: PerCpuArray<MapData, Counters>,
    /// Counters of VIP ids since given to new VIPs, shared with the
    /// writer, which adds an id's counters here when it zeroes them.
    retired: tables::Retired,
}

impl CounterReader {
    /// Frames (and their bytes) that reached VIP id `vip_id`.
    pub fn vip(&self, vip_id: u32) -> Counters {
        self.vip_counters(vip_id).vip
    }

    /// `VIP_STATS[vip_id]` summed over CPUs.
    fn vip_counters(&self, vip_id: u32) -> VipCounters {
        sum_vip(&self.vip_stats, vip_id)
    }

    /// Frames forwarded to real id `real_id`.
    pub fn real(&self, real_id: u32) -> Counters {
        sum(&self.real_stats, real_id)
    }

    /// Frames per [`Reason`], in `Reason::ALL` order.
    pub fn reasons(&self) -> Vec<(Reason, Counters)> {
        Reason::ALL.iter().map(|&r| (r, sum(&self.reason_stats, r as u32))).collect()
    }

    /// Forwarded VIP packets per connection-table [`ConnEvent`], in
    /// `ConnEvent::ALL` order, since the program was loaded: the sum of
    /// every VIP id's events and of those the writer carried over from
    /// ids it reused (the datapath keeps no node-wide copy; see
    /// `VipCounters`). One map read per VIP id.
    pub fn conn_events(&self) -> Vec<(ConnEvent, Counters)> {
        let total = self.node_totals();
        ConnEvent::ALL.iter().map(|&e| (e, total.conn[e as usize])).collect()
    }

    /// Flows evicted from the connection tables since the program was
    /// loaded (summed as [`CounterReader::conn_events`]).
    pub fn evictions(&self) -> u64 {
        self.node_totals().evictions
    }

    /// Flows evicted to make room for VIP id `vip_id`'s flows, since the
    /// id was given to its VIP.
    pub fn vip_evictions(&self, vip_id: u32) -> u64 {
        self.vip_counters(vip_id).evictions
    }

    /// Every VIP id's `VIP_STATS` and the retired ids', summed.
    fn node_totals(&self) -> VipCounters {
        // Held while reading, so an id the writer retires meanwhile is
        // counted once: before its zeroing here, or after it in `retired`.
        let retired = self.retired.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (0..MAX_VIPS).fold(*retired, |total, vip_id| add_vip(total, self.vip_counters(vip_id)))
    }

    /// [`CounterReader::conn_events`] of VIP id `vip_id` alone, since the
    /// id was given to its VIP.
    pub fn vip_conn_events(&self, vip_id: u32) -> Vec<(ConnEvent, Counters)> {
        let conn = self.vip_counters(vip_id).conn;
        ConnEvent::ALL.iter().map(|&e| (e, conn[e as usize])).collect()
    }
}

/// Writes `entry` for `key` into `set` (see `Datapath::set_conn_entry`):
/// over the way that holds `key`, else an empty way, else the way with
/// the smallest `seen`. `unlocked` strips the set lock's bit from a key
/// (set only while a datapath writer holds the set: never on the quiet
/// datapath this is for).
fn place<K: PartialEq + Copy + Default>(set: &mut ConnSet<K>, key: K, entry: ConnEntry, unlocked: fn(K) -> K) {
    let empty = K::default();
    let index = set
        .ways
        .iter()
        .position(|w| unlocked(w.key) == key)
        .or_else(|| set.ways.iter().position(|w| unlocked(w.key) == empty))
        .or_else(|| set.ways.iter().enumerate().min_by_key(|(_, w)| w.entry.seen).map(|(i, _)| i))
        .unwrap_or(0);
    set.ways[index] = ConnWay { key, entry };
}

/// A random 64-bit seed for the connection tables' hash, from the
/// kernel's `getrandom`.
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most `seed.len()` bytes into our buffer.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    assert_eq!(got, 8, "getrandom: {}", std::io::Error::last_os_error());
    u64::from_ne_bytes(seed)
}

/// The kernel's timer tick in nanoseconds: one jiffy, the unit of
/// [`ConnEntry::seen`] and `VipMeta::udp_idle_timeout_jiffies`.
/// No syscall reports HZ itself (`sysconf(_SC_CLK_TCK)` is USER_HZ, a
/// fixed 100), but CLOCK_MONOTONIC_COARSE advances once a tick, and
/// `clock_getres` reports its resolution as TICK_NSEC, (10^9 + HZ/2) / HZ
/// (kernel/time/posix-timers.c, `posix_get_coarse_res`): 4,000,000 ns for
/// CONFIG_HZ=250. Read once and kept.
pub fn tick_ns() -> u64 {
    static TICK_NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICK_NS.get_or_init(|| {
        // SAFETY: clock_getres writes one timespec into the value we own.
        let res = unsafe {
            let mut res: libc::timespec = std::mem::zeroed();
            libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res);
            res
        };
        let ns = res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64;
        // The kernel's HZ choices are 100..=1000: a tick of 1 to 10 ms.
        ns.clamp(1_000_000, 10_000_000)
    })
}

/// The kernel's HZ: timer ticks (jiffies) per second, from [`tick_ns`].
pub fn hz() -> u64 {
    (1_000_000_000 + tick_ns() / 2) / tick_ns()
}

/// `ms` milliseconds in jiffies, rounded up as the kernel's
/// `msecs_to_jiffies` does (so a timeout is never shorter than asked).
/// Any `u32` of milliseconds fits at HZ <= 1000.
pub fn ms_to_jiffies(ms: u32) -> u32 {
    u32::try_from((u64::from(ms) * hz()).div_ceil(1000)).expect("HZ <= 1000")
}

/// Attaches `program` to `interface` by netlink (see [`attach`]).
pub(crate) fn attach_xdp(program: &mut Xdp, interface: &str) -> Result<attach::Attachment, DatapathError> {
    use std::os::fd::{AsFd, AsRawFd};
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .map_err(|e| DatapathError::Attach(interface.to_string(), std::io::Error::from(e)))?;
    let fd = program.fd()?.as_fd().as_raw_fd();
    attach::Attachment::attach(fd, ifindex, interface).map_err(|e| DatapathError::Attach(interface.to_string(), e))
}

/// Detaches `program`, if it is still the one `attachment` put there.
pub(crate) fn detach_xdp(program: &mut Xdp, attachment: attach::Attachment) -> Result<(), DatapathError> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = program.fd()?.as_fd().as_raw_fd();
    attachment.detach(fd).map_err(DatapathError::Detach)
}

fn typed<T>(map: Map, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(|source| DatapathError::Map { map: name, source })
}

/// A second handle to the same kernel map, by its id.
fn reopen<T: aya::Pod>(map: &PerCpuArray<MapData, T>, name: &'static str) -> Result<PerCpuArray<MapData, T>, DatapathError> {
    use aya::maps::IterableMap;
    let err = |source| DatapathError::Map { map: name, source };
    let id = map.map().info().map_err(err)?.id();
    typed(Map::PerCpuArray(MapData::from_id(id).map_err(err)?), name)
}

fn sum(map: &PerCpuArray<MapData, Counters>, index: u32) -> Counters {
    map.get(&index, 0).map(|values| values.iter().fold(Counters::default(), |acc, &c| add(acc, c))).unwrap_or_default()
}

/// `VIP_STATS[vip_id]` summed over CPUs (zero if unreadable).
pub(crate) fn sum_vip(map: &PerCpuArray<MapData, VipCounters>, vip_id: u32) -> VipCounters {
    map.get(&vip_id, 0).map(|values| values.iter().fold(VipCounters::default(), |acc, &v| add_vip(acc, v))).unwrap_or_default()
}

/// Two `VipCounters`, field by field.
pub(crate) fn add_vip(a: VipCounters, b: VipCounters) -> VipCounters {
    let mut sum = VipCounters { vip: add(a.vip, b.vip), evictions: a.evictions + b.evictions, ..a };
    for (s, &c) in sum.conn.iter_mut().zip(&b.conn) {
        *s = add(*s, c);
    }
    sum
}

pub(crate) fn add(a: Counters, b: Counters) -> Counters {
    Counters { packets: a.packets + b.packets, bytes: a.bytes + b.bytes }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    /// The tick is one of the kernel's HZ choices (Kconfig.hz: 100, 250,
    /// 300, 1000), and milliseconds round up to whole ticks.
    #[test]
    fn the_tick_is_a_kernel_hz_and_milliseconds_round_up_to_ticks() {
        let hz = hz();
        assert!([100, 250, 300, 1000].contains(&hz), "HZ {hz}, tick {} ns", tick_ns());
        assert_eq!(u64::from(ms_to_jiffies(1000)), hz);
        assert_eq!(u64::from(ms_to_jiffies(30_000)), 30 * hz);
        assert_eq!(ms_to_jiffies(1), 1, "never shorter than asked");
        assert_eq!(ms_to_jiffies(0), 0);
    }
}

#[cfg(test)]
mod stub_tests {
    use super::*;

    /// A build without the eBPF toolchain embeds an empty object: loading
    /// it says so and what to do, instead of an ELF parse error.
    #[test]
    fn the_empty_stub_is_refused_with_a_clear_error() {
        let err = Datapath::load_object(&[], LoadOptions::default()).err().expect("an empty object must be refused");
        assert!(matches!(err, DatapathError::NoObject));
        assert!(err.to_string().contains("cargo xtask setup"), "{err}");
    }
}

