//! `cargo xtask bench xdp`: fulcrum's XDP program timed with
//! `BPF_PROG_TEST_RUN` `repeat`, against the datapath floor (a program that
//! swaps MACs and returns `XDP_TX`) measured in the same run.
//!
//! Method (DESIGN.md, "How we measure"): pinned to one CPU, rounds
//! interleave the programs A B C A B C, each round one kernel call of
//! `repeat` runs; the figure is the median over rounds. Only ratios to the
//! floor carry across machines. Both timed paths leave the frame as a
//! valid input for the next repeat (a MAC rewrite, or nothing), and every
//! round's return value is checked, so `repeat` times the path it names.
//!
//! Connection-table paths: the established rows send an ACK (TCP) or a
//! datagram (UDP) whose entry the first iteration writes, so every later
//! one is a hit. The SYN row repeats one 5-tuple: each iteration takes a
//! fresh Maglev pick and rewrites the same entry (an LRU update takes a
//! new element and frees the old, as a new flow does, but never evicts,
//! since the table is far from full). The connection counters after the
//! run are checked to say so.
use std::{net::IpAddr, net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{ensure, Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::PacketBuilder;
use fulcrum_common::{ConnEvent, Mac, VipKey, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_MAX_TABLE_SIZE};
use fulcrum_l4::{Datapath, Plan, PlanVip};

use crate::{machine, median, now, publish};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// The datapath's own MAC, the destination of the bench frames.
const SELF_MAC: Mac = Mac([2, 0, 0, 0, 0, 2]);

/// A TCP segment to `dst`:`dport`: an ACK, or with `syn` a SYN alone.
fn frame(dst: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let ip = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], SELF_MAC.0).ipv4([198, 18, 0, 10], dst.octets(), 64);
    let tcp = ip.tcp(40000, dport, 1, 65535);
    let tcp = if syn { tcp.syn() } else { tcp.ack(1) };
    tcp.write(&mut out, &[0u8; 20]).expect("writing to a Vec");
    out
}

fn udp_frame(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], SELF_MAC.0)
        .ipv4([198, 18, 0, 10], dst.octets(), 64)
        .udp(40000, dport)
        .write(&mut out, &[0u8; 20])
        .expect("writing to a Vec");
    out
}

/// One timed path: a closure that runs `repeat` packets and returns the
/// kernel's per-packet time and the program's action.
struct Path<'a> {
    name: &'static str,
    want: u32,
    run: Box<dyn FnMut() -> Result<(Duration, u32)> + 'a>,
    samples: Vec<f64>,
}

pub fn run(repeat: u32, rounds: usize, cpu: usize, record: Option<PathBuf>) -> Result<()> {
    let machine = machine(); // before pinning, which hides the other CPUs
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU index")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("pinning to a CPU")?;

    let vip = Ipv4Addr::new(198, 18, 1, 1);
    let reals: Vec<IpAddr> = (11..=13).map(|i| Ipv4Addr::new(198, 18, 0, i).into()).collect();
    let bench_vip = |name: &str, port: u16, proto: u8| PlanVip {
        name: name.into(),
        key: VipKey::new(vip.into(), port, proto),
        flags: 0,
        // The daemon's default Maglev table size.
        table_size: MAGLEV_MAX_TABLE_SIZE,
        members: reals.iter().map(|&a| (a, 1)).collect(),
        established: reals.clone(),
        udp_idle_timeout_ms: 30_000,
        vlan: 0,
    };
    let plan = Plan {
        vips: vec![bench_vip("bench", 80, IPPROTO_TCP), bench_vip("bench-udp", 53, IPPROTO_UDP)],
        // Every real gets our own MAC: `repeat` feeds the program its own
        // output, and the datapath balances only frames addressed to its
        // own MAC, so a rewritten frame must stay addressed to us for each
        // repeat to take the full VIP path (the work done is the same).
        reals: (11..=13).map(|i| (Ipv4Addr::new(198, 18, 0, i).into(), Some(SELF_MAC))).collect(),
    };
    let mut datapath = Datapath::load().context("loading fulcrum's XDP program (run as root)")?;
    datapath.set_self_mac(SELF_MAC)?;
    datapath.apply(&plan)?;

    let dir = PathBuf::from(std::env::var_os("FULCRUM_EBPF_DIR").context("FULCRUM_EBPF_DIR is not set (run through cargo xtask bench)")?);
    let mut floor_obj = Ebpf::load_file(dir.join("fulcrum-xdp-floor")).context("loading the floor program")?;
    let floor: &mut Xdp = floor_obj.program_mut("fulcrum_floor").context("no fulcrum_floor")?.try_into()?;
    floor.load()?;
    let floor = &*floor;

    let vip_frame = frame(vip, 80, false);
    let syn_frame = frame(vip, 80, true);
    let udp_vip_frame = udp_frame(vip, 53);
    let other_frame = frame(Ipv4Addr::new(198, 18, 0, 77), 80, false);
    let datapath = std::cell::RefCell::new(datapath);
    let mut paths = [
        Path {
            name: "floor: MAC swap, XDP_TX",
            want: XDP_TX,
            run: Box::new(|| {
                let mut out = vec![0u8; vip_frame.len()];
                let r = floor.test_run(TestRunOptions { data_in: Some(&vip_frame), data_out: Some(&mut out), repeat, ..Default::default() })?;
                Ok((r.duration, r.return_value))
            }),
            samples: Vec::new(),
        },
        Path {
            name: "fulcrum: established TCP (conn-table hit), XDP_TX",
            want: XDP_TX,
            run: Box::new(|| {
                let o = datapath.borrow_mut().test_run(&vip_frame, repeat)?;
                Ok((o.duration, o.action))
            }),
            samples: Vec::new(),
        },
        Path {
            name: "fulcrum: TCP SYN (pick + conn-table write, same 5-tuple), XDP_TX",
            want: XDP_TX,
            run: Box::new(|| {
                let o = datapath.borrow_mut().test_run(&syn_frame, repeat)?;
                Ok((o.duration, o.action))
            }),
            samples: Vec::new(),
        },
        Path {
            name: "fulcrum: established UDP (conn-table hit), XDP_TX",
            want: XDP_TX,
            run: Box::new(|| {
                let o = datapath.borrow_mut().test_run(&udp_vip_frame, repeat)?;
                Ok((o.duration, o.action))
            }),
            samples: Vec::new(),
        },
        Path {
            name: "fulcrum: non-VIP packet, XDP_PASS",
            want: XDP_PASS,
            run: Box::new(|| {
                let o = datapath.borrow_mut().test_run(&other_frame, repeat)?;
                Ok((o.duration, o.action))
            }),
            samples: Vec::new(),
        },
    ];
    for _ in 0..rounds {
        for path in paths.iter_mut() {
            let (per_packet, action) = (path.run)()?;
            ensure!(action == path.want, "{}: returned {action}, expected {}", path.name, path.want);
            path.samples.push(per_packet.as_secs_f64() * 1e9);
        }
    }
    let medians: Vec<f64> = paths.iter_mut().map(|p| median(&mut p.samples)).collect();
    drop(paths);
    // Every established-row packet but each row's first was a hit, and
    // every SYN a pick: the rows timed the paths they name.
    let events = datapath.borrow().counters().conn_events();
    let event = |e: ConnEvent| events.iter().find(|(x, _)| *x == e).map_or(0, |(_, c)| c.packets);
    let per_path = u64::from(repeat) * rounds as u64;
    ensure!(event(ConnEvent::Syn) == per_path, "SYN picks {} != {per_path}", event(ConnEvent::Syn));
    ensure!(event(ConnEvent::Hit) >= 2 * per_path - 2, "hits {} < {}", event(ConnEvent::Hit), 2 * per_path - 2);
    let paths = [
        "floor: MAC swap, XDP_TX",
        "fulcrum: established TCP (conn-table hit), XDP_TX",
        "fulcrum: TCP SYN (pick + conn-table write, same 5-tuple), XDP_TX",
        "fulcrum: established UDP (conn-table hit), XDP_TX",
        "fulcrum: non-VIP packet, XDP_PASS",
    ];
    let floor_ns = medians[0];
    let mut report = format!(
        "\n## xdp — {}\n\n`cargo xtask bench xdp` (repeat {repeat}, {rounds} interleaved rounds, median, pinned to CPU {cpu}; {})\n\n| path | ns/packet | × floor |\n|---|---:|---:|\n",
        now(),
        machine
    );
    for (p, ns) in paths.iter().zip(&medians) {
        report += &format!("| {} | {ns:.1} | {:.2} |\n", p, ns / floor_ns);
    }
    publish(&report, record.as_deref())
}
