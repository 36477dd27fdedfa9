//! The answer to `GET /stats`: the effective state, what the maps hold
//! (from the writer's status) and the datapath's counters, in the admin
//! API's types. Reads only; derives nothing the effective state or the L4
//! plan does not already say.
use std::{net::SocketAddr, time::Duration};

use fulcrum_api::{VrrpStats, VipConnStats, ConnTableStats, L7MemberStats, L7ProxyStats, ListenerStats, RouteStats, AdminStats, ApplyStats, BackendStats, ControlStats, PoolStats, StatsReport, VipBackendSlots, VipStats};
use fulcrum_common::ConnEvent;
use fulcrum_config::Config;
use fulcrum_health::Health;
use fulcrum_l4::{CounterReader, WriterStatus};
use fulcrum_l7::MemberStats;
use fulcrum_state::Observed;

use crate::l7::L7;

/// The control plane's own figures at the moment of the report.
pub struct Control {
    pub writer: WriterStatus,
    /// Longest control-loop heartbeat lateness since start.
    pub max_stall: Duration,
    pub admin: AdminStats,
}

/// The report for the running `config` and `observed` state.
pub fn stats(
    config: &Config,
    observed: &Observed,
    control: &Control,
    counters: &CounterReader,
    l7: Option<&L7>,
    vrrp: Vec<VrrpStats>,
) -> StatsReport {
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
            let events = table.map(|t| counters.vip_conn_events(t.vip_id)).unwrap_or_default();
            let event = |e: ConnEvent| events.iter().find(|(x, _)| *x == e).map_or(0, |(_, c)| c.packets);
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
                conn_table: VipConnStats {
                    hits: event(ConnEvent::Hit),
                    misses: event(ConnEvent::Miss),
                    syn_picks: event(ConnEvent::Syn),
                    stale_repicks: event(ConnEvent::Stale),
                    expired: event(ConnEvent::Expired),
                    write_failures: event(ConnEvent::WriteFailed),
                    evictions: table.map_or(0, |t| counters.vip_evictions(t.vip_id)),
                },
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
                        port: m.port,
                        l7: l7.and_then(|l7| l7.member_stats(&pool.name, SocketAddr::new(m.address, m.port))).map(l7_member),
                        status: m.status.letters(),
                        lbset: m.lbset,
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
    let listeners = config
        .listeners
        .iter()
        .map(|l| ListenerStats {
            name: l.name.clone(),
            address: l.address.to_string(),
            routes: l.routes.iter().map(|r| RouteStats { host: r.host.clone(), path: r.path.clone(), pool: r.pool.clone() }).collect(),
        })
        .collect();
    let events = counters.conn_events();
    let event = |e: ConnEvent| events.iter().find(|(x, _)| *x == e).map_or(0, |(_, c)| c.packets);
    let conn_table = ConnTableStats {
        size: config.datapath.conn_table_size,
        hits: event(ConnEvent::Hit),
        misses: event(ConnEvent::Miss),
        syn_picks: event(ConnEvent::Syn),
        stale_repicks: event(ConnEvent::Stale),
        expired: event(ConnEvent::Expired),
        write_failures: event(ConnEvent::WriteFailed),
        evictions: counters.evictions(),
    };
    let l7 = l7.map(|l| l7_proxy(&l.proxy_stats())).unwrap_or_default();
    StatsReport { vips, pools, reasons, control, listeners, vrrp, conn_table, l7 }
}

fn l7_proxy(stats: &fulcrum_l7::ProxyStats) -> L7ProxyStats {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    L7ProxyStats {
        connections: get(&stats.connections),
        idle_closed: get(&stats.idle_closed),
        access_log_dropped: get(&stats.access_log_dropped),
        refused: fulcrum_l7::Violation::ALL.iter().map(|v| (v.as_str().to_owned(), stats.violations(*v))).collect(),
    }
}

fn l7_member(stats: &MemberStats) -> L7MemberStats {
    let get = MemberStats::get;
    L7MemberStats {
        requests: get(&stats.requests),
        outstanding: get(&stats.outstanding),
        failures: get(&stats.failures),
        bytes_sent: get(&stats.bytes_sent),
        bytes_received: get(&stats.bytes_received),
        responses: std::array::from_fn(|i| get(&stats.responses[i])),
        in_error: stats.passive.in_error_now(),
        error_remaining_ms: stats.passive.error_remaining_ms(fulcrum_l7::snapshot::clock_ms64()),
        times_in_error: stats.passive.times_in_error(),
    }
}
