//! The decapsulation program for reals behind IPIP / IP6IP6 VIPs
//! (`fulcrum decap`): its own small object (`fulcrum-xdp-decap`), with
//! one map of VIP addresses and its counters. See
//! `xdp-ebpf/src/bin/decap.rs` for what it does to a frame.
use std::net::IpAddr;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use fulcrum_common::{addr_words, names, Counters, DecapReason};

use crate::{typed, AttachMode, DatapathError, TestOutcome};

/// The decap object built by build.rs (empty without the eBPF toolchain).
static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FULCRUM_XDP_DECAP_OBJECT"));

/// The loaded decap program and its maps.
pub struct Decap {
    ebpf: Ebpf,
    attachment: Option<crate::attach::Attachment>,
    vips: BpfHashMap<MapData, [u32; 4], u32>,
    stats: PerCpuArray<MapData, Counters>,
}

/// Frames per [`DecapReason`], summed over CPUs, in `DecapReason::ALL` order.
pub type DecapCounters = Vec<(DecapReason, Counters)>;

impl Decap {
    /// Loads the program (not attached yet).
    ///
    /// # Errors
    /// No object in this build, or the kernel refused it (needs root).
    pub fn load() -> Result<Self, DatapathError> {
        if DECAP_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let mut ebpf = Ebpf::load(DECAP_OBJECT)?;
        let program: &mut Xdp =
            ebpf.program_mut(names::DECAP_PROGRAM).ok_or(DatapathError::MissingMap(names::DECAP_PROGRAM))?.try_into()?;
        program.load()?;
        let vips = typed(ebpf.take_map(names::DECAP_VIPS).ok_or(DatapathError::MissingMap(names::DECAP_VIPS))?, names::DECAP_VIPS)?;
        let stats =
            typed(ebpf.take_map(names::DECAP_STATS).ok_or(DatapathError::MissingMap(names::DECAP_STATS))?, names::DECAP_STATS)?;
        Ok(Decap { ebpf, attachment: None, vips, stats })
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf.program_mut(names::DECAP_PROGRAM).expect("checked at load").try_into().expect("checked at load")
    }

    /// Accepts tunnelled packets whose inner destination is `vip`.
    ///
    /// # Errors
    /// The map update failed (more than 64 VIPs).
    pub fn add_vip(&mut self, vip: IpAddr) -> Result<(), DatapathError> {
        self.vips.insert(addr_words(vip.to_canonical()), 0, 0).map_err(|source| DatapathError::Map { map: names::DECAP_VIPS, source })
    }

    /// Attaches to `interface` in driver mode, else generic mode.
    ///
    /// # Errors
    /// Neither mode could attach.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode, DatapathError> {
        let attachment = crate::attach_xdp(self.program(), interface)?;
        let mode = attachment.mode();
        self.attachment = Some(attachment);
        Ok(mode)
    }

    /// Detaches, if attached. Also done on drop.
    ///
    /// # Errors
    /// The kernel refused to detach.
    pub fn detach(&mut self) -> Result<(), DatapathError> {
        if let Some(attachment) = self.attachment.take() {
            crate::detach_xdp(self.program(), attachment)?;
        }
        Ok(())
    }

    /// The counters, per reason.
    pub fn counters(&self) -> DecapCounters {
        DecapReason::ALL
            .iter()
            .map(|&r| {
                let sum = self.stats.get(&(r as u32), 0).map(|values| {
                    values.iter().fold(Counters::default(), |a, c| Counters { packets: a.packets + c.packets, bytes: a.bytes + c.bytes })
                });
                (r, sum.unwrap_or_default())
            })
            .collect()
    }

    /// One `BPF_PROG_TEST_RUN` of the program on `frame`.
    ///
    /// # Errors
    /// The kernel refused the run.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<TestOutcome, DatapathError> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.program().test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestOutcome { action: result.return_value, frame: out, duration: result.duration })
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::error!(error = %err, "detaching the decap program");
        }
    }
}
