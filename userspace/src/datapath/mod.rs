//! The L4 datapath from user space: loads fulcrum's XDP program, attaches
//! it, writes its maps from an [`Effective`](crate::state::Effective)
//! state, and reads its counters.
//!
//! Owns the BPF object and every map; nothing else in the daemon touches
//! them. Map layouts are defined in `fulcrum-common`.
mod tables;

use std::{net::IpAddr, time::Duration};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{xdp::XdpLinkId, TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use fulcrum_common::{names, Counters, DatapathConfig, Reason, RealDef, VipKey, VipMeta};
use thiserror::Error;

use crate::state::{Effective, Mac};
pub use tables::VipTableInfo;

/// The XDP object built by `cargo xtask build-ebpf`, embedded at build time.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FULCRUM_XDP_OBJECT"));

/// What went wrong loading, attaching or updating the datapath.
#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("{0}")]
    Limit(String),
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
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

/// The loaded program and its maps.
pub struct Datapath {
    ebpf: Ebpf,
    // Keeps the kernel log ring buffer open (dropping it would close the map).
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    link: Option<XdpLinkId>,
    vips: BpfHashMap<MapData, VipKey, VipMeta>,
    lookup_tables: Array<MapData, u32>,
    reals: Array<MapData, RealDef>,
    config: Array<MapData, DatapathConfig>,
    vip_stats: PerCpuArray<MapData, Counters>,
    real_stats: PerCpuArray<MapData, Counters>,
    reason_stats: PerCpuArray<MapData, Counters>,
    tables: tables::Tables,
}

impl Datapath {
    /// Loads the embedded XDP program into the kernel (not attached yet).
    ///
    /// `kernel_log_level` filters the program's own aya-log lines at load
    /// time (the verifier removes the disabled ones): `aya_log::Level` as u8,
    /// e.g. `Level::Info as u8`; per-packet lines are at debug level.
    ///
    /// # Errors
    /// The verifier's or the kernel's refusal (needs root or CAP_BPF).
    pub fn load(kernel_log_level: u8) -> Result<Self, DatapathError> {
        let mut ebpf = EbpfLoader::new().override_global(aya_log::LEVEL, &kernel_log_level, false).load(XDP_OBJECT)?;
        // The log map exists only if the program logs at all; no logger is fine.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        let program: &mut Xdp = ebpf
            .program_mut(names::PROGRAM)
            .ok_or(DatapathError::MissingMap(names::PROGRAM))?
            .try_into()?;
        program.load()?;
        macro_rules! take {
            ($name:expr) => {
                ebpf.take_map($name)
                    .ok_or(DatapathError::MissingMap($name))?
                    .try_into()
                    .map_err(map_err($name))?
            };
        }
        Ok(Datapath {
            vips: take!(names::VIPS),
            lookup_tables: take!(names::LOOKUP_TABLES),
            reals: take!(names::REALS),
            config: take!(names::DATAPATH_CONFIG),
            vip_stats: take!(names::VIP_STATS),
            real_stats: take!(names::REAL_STATS),
            reason_stats: take!(names::REASON_STATS),
            tables: tables::Tables::default(),
            ebpf,
            logger,
            link: None,
        })
    }

    /// The kernel log ring buffer, to poll and [`Datapath::flush_kernel_log`].
    pub fn kernel_log_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.logger.as_ref().map(|l| l.as_fd())
    }

    /// Moves the program's pending aya-log records to the `log`/`tracing` logger.
    pub fn flush_kernel_log(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(names::PROGRAM)
            .expect("checked at load")
            .try_into()
            .expect("checked at load")
    }

    /// Sets the source MAC of forwarded frames (the attached NIC's own).
    pub fn set_self_mac(&mut self, mac: Mac) -> Result<(), DatapathError> {
        let value = DatapathConfig { self_mac: mac, _pad: [0; 2] };
        self.config.set(0, value, 0).map_err(map_err(names::DATAPATH_CONFIG))
    }

    /// Attaches to `interface` in driver mode, else in generic mode (with a
    /// warning: generic XDP runs after the skb is built, far slower).
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode, DatapathError> {
        let (link, mode) = match self.program().attach(interface, XdpMode::Driver) {
            Ok(link) => (link, AttachMode::Driver),
            Err(err) => {
                tracing::warn!(%interface, error = %err, "driver-mode XDP refused; falling back to generic (skb) mode, expect stack-speed forwarding");
                (self.program().attach(interface, XdpMode::Skb)?, AttachMode::Generic)
            }
        };
        self.link = Some(link);
        Ok(mode)
    }

    /// Detaches from the interface, if attached. Also done on drop.
    pub fn detach(&mut self) -> Result<(), DatapathError> {
        if let Some(link) = self.link.take() {
            self.program().detach(link)?;
        }
        Ok(())
    }

    /// Makes the maps say what `effective` says. Each VIP whose backends
    /// changed gets a new table, written completely into its inactive slot
    /// before the VIP entry flips to it, so no packet sees a partial table.
    ///
    /// # Errors
    /// A map update failed, or more VIPs/backends than the maps hold; the
    /// maps then still hold a consistent (older) state for each VIP.
    pub fn apply(&mut self, effective: &Effective) -> Result<(), DatapathError> {
        let maps = tables::Maps {
            vips: &mut self.vips,
            lookup_tables: &mut self.lookup_tables,
            reals: &mut self.reals,
            vip_stats: &mut self.vip_stats,
            real_stats: &mut self.real_stats,
        };
        self.tables.apply(maps, effective)
    }

    /// The live table of the VIP `name`, as last applied.
    pub fn vip_table(&self, name: &str) -> Option<VipTableInfo> {
        self.tables.vip(name)
    }

    /// Packets and bytes the VIP `name` received, summed over CPUs.
    pub fn vip_counters(&self, name: &str) -> Counters {
        self.tables
            .vip_id(name)
            .map(|id| sum(&self.vip_stats, id))
            .unwrap_or_default()
    }

    /// Packets and bytes forwarded to the backend at `address`.
    pub fn real_counters(&self, address: IpAddr) -> Counters {
        self.tables
            .real_id(address)
            .map(|id| sum(&self.real_stats, id))
            .unwrap_or_default()
    }

    /// Frames per [`Reason`], summed over CPUs, in `Reason::ALL` order.
    pub fn reason_counters(&self) -> Vec<(Reason, Counters)> {
        Reason::ALL.iter().map(|&r| (r, sum(&self.reason_stats, r as u32))).collect()
    }

    /// Runs the program once (or `repeat` times) on `frame` through
    /// `BPF_PROG_TEST_RUN`, without attaching it anywhere.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<TestOutcome, DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.program().test_run(TestRunOptions {
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

fn sum(map: &PerCpuArray<MapData, Counters>, index: u32) -> Counters {
    map.get(&index, 0)
        .map(|values| {
            values.iter().fold(Counters::default(), |acc, c| Counters {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            })
        })
        .unwrap_or_default()
}

/// Zeroes entry `index` of a per-CPU counter map (a reused id starts at 0).
fn zero(map: &mut PerCpuArray<MapData, Counters>, index: u32, name: &'static str) -> Result<(), DatapathError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Limit(format!("counting CPUs: {e}")))?;
    let values = PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|e| DatapathError::Limit(format!("{name}: {e}")))?;
    map.set(index, values, 0).map_err(map_err(name))
}
