//! The answer to `GET /stats`: the effective state, what the maps hold
//! (from the writer's status) and the datapath's counters, in the admin
//! API's types. Reads only; derives nothing the effective state or the L4
//! plan does not already say.
use std::time::Duration;

use fulcrum_api::{AdminStats, ApplyStats, BackendStats, ControlStats, PoolStats, StatsReport, VipBackendSlots, VipStats};
use fulcrum_config::Config;
use fulcrum_health::Health;
use fulcrum_l4::{CounterReader, WriterStatus};
use fulcrum_state::Observed;

/// The control plane's own figures at the moment of the report.
pub struct Control {
    pub writer: WriterStatus,
    /// Longest control-loop heartbeat lateness since start.
    pub max_stall: Duration,
    pub admin: AdminStats,
}

/// The report for the running `config` and `observed` state.
pub fn stats(config: &Config, observed: &Observed, control: &Control, counters: &CounterReader) -> StatsReport {
    let writer = &control.writer;
    let effective = fulcrum_state::effective(config, observed);
    let macs = fulcrum_l4::macs(config, &observed.neighbours);
    let applied = &writer.applied;
    let vips = config
        .vips
        .iter()
        .map(|vip| {
            let table = applied.vips.get(&vip.name);
            let counts = table.map(|t| counters.vip(t.vip_id)).unwrap_or_default();
            VipStats {
                name: vip.name.clone(),
                address: vip.address.to_string(),
                port: vip.port,
                protocol: vip.protocol.to_string(),
                scheduler: vip.scheduler.to_string(),
                pool: vip.pool.clone(),
                table_size: table.map_or(0, |t| t.table_size),
                backends_in_table: table.map_or(0, |t| t.slots.iter().filter(|&&(_, n)| n > 0).count()),
                packets: counts.packets,
                bytes: counts.bytes,
                backends: table
                    .map(|t| t.slots.iter().map(|&(a, slots)| VipBackendSlots { address: a.to_string(), slots }).collect())
                    .unwrap_or_default(),
                table_digest: table.filter(|t| t.table_size > 0).map(|t| format!("{:016x}", t.digest)),
            }
        })
        .collect();
    let pools = effective
        .pools
        .iter()
        .map(|pool| PoolStats {
            name: pool.name.clone(),
            backends: pool
                .members
                .iter()
                .map(|m| {
                    let mac = macs.get(&m.address).copied();
                    let counts = applied.reals.get(&m.address).map(|&(id, _)| counters.real(id)).unwrap_or_default();
                    BackendStats {
                        address: m.address.to_string(),
                        weight: m.weight,
                        health: match m.health {
                            None => "unknown",
                            Some(Health::Up) => "up",
                            Some(Health::Down) => "down",
                        }
                        .to_string(),
                        check: m.check.clone(),
                        excluded: m
                            .excluded
                            .map(|e| e.as_str())
                            .or(mac.is_none().then_some("no_mac"))
                            .map(str::to_string),
                        mac: mac.map(|m| m.to_string()),
                        packets: counts.packets,
                        bytes: counts.bytes,
                    }
                })
                .collect(),
        })
        .collect();
    let reasons = counters.reasons().into_iter().map(|(reason, c)| (reason.name().to_string(), c.packets)).collect();
    let control = ControlStats {
        generation: writer.generation,
        applied_generation: writer.applied_generation,
        applies: writer.applies,
        last_apply: writer.last.map(|r| ApplyStats {
            generation: r.generation,
            latency_us: r.latency.as_micros() as u64,
            wall_us: r.wall.as_micros() as u64,
            cpu_us: r.cpu.as_micros() as u64,
            vips_written: r.vips_written,
            tables_built: r.tables_built,
        }),
        last_error: writer.last_error.clone(),
        max_loop_stall_us: control.max_stall.as_micros() as u64,
        admin: control.admin,
    };
    StatsReport { vips, pools, reasons, control }
}
