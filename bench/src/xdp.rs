//! `cargo xtask bench xdp`: fulcrum's XDP program timed with
//! `BPF_PROG_TEST_RUN` `repeat`, against the datapath floor (a program that
//! swaps MACs and returns `XDP_TX`) measured in the same run.
//!
//! Method (DESIGN.md, "How we measure"): pinned to one CPU, rounds
//! interleave every row A B C ... A B C ..., each row one kernel call of
//! `repeat` runs; the figure is the median over rounds. Only ratios to the
//! floor carry across machines.
//!
//! `repeat` does not restore the frame between runs, so a path that
//! changes the headers would be timed on its own output (after IPIP
//! encapsulation: an IPIP packet, passed at a fraction of the cost), and a
//! SYN would repeat one 5-tuple. Those rows run behind the restoring
//! harness (`xdp-ebpf/src/bin/harness.rs`): it moves the frame's start
//! back, rewrites the input's first 80 bytes, stores a counter (into the
//! IPv4 source address, or the IPv6 one's last word, for the new-flow SYN
//! rows, so each run is a new flow; into a word the datapath does not
//! read for the others) and tail-calls the program under test. Its
//! cost, `harness -> noop` minus `noop` alone, is subtracted from every
//! harnessed row. Two checks that the subtraction is sound: the floor and
//! the L2 DSR hit, whose output is a valid input again, are timed both
//! directly and behind the harness, and both figures are printed.
//!
//! IPv6 rows (L2 DSR: an established TCP and UDP flow, a SYN of a new
//! 5-tuple) time the same paths through the IPv6 connection table (56-byte
//! ways) and the IPv6 parser; a VIP fd00:18:1::1 over three IPv6 reals.
//!
//! Connection-table rows: an established row sends an ACK (TCP) or a
//! datagram (UDP) whose entry its first run writes, so later runs are
//! hits. The SYN rows write a new entry per run into the daemon's default
//! table (1,000,000 flows, 4-way sets; `--conn-table-size` for another):
//! once it is full, every SYN also evicts the oldest entry of its set, the
//! steady state of a node under load, and an established row's entry may
//! be evicted between rounds (its first run then misses). After the run the connection counters are checked against
//! that, the IPIP rows' output against an IPIP packet, and every round's
//! return value against the row's action.
//!
//! Katran rows (`--katran-object PATH`, an object built out of tree; see
//! [`crate::katran`] and bench/RESULTS.md): the targets are "half of
//! Katran's cost net of the floor", so Katran runs in the same rounds,
//! behind the same harness, on the same frames: established TCP (LRU
//! hit), TCP SYN with a new 5-tuple per run into an LRU of our table's
//! flow count (full after the first round: every SYN then evicts), TCP
//! SYN with the same 5-tuple, established UDP, non-VIP. Katran always
//! encapsulates, so these rows add our own UDP IPIP row to compare with,
//! and a second table gives, per path, fulcrum net / Katran net (net =
//! path - floor; the target is <= 0.5). Katran's counters are checked
//! after the run: verdicts, every SYN a miss and a pick, established
//! runs LRU hits, the per-CPU LRU used (never its fallback LRU); and
//! after each round the last new flow is looked up in its LRU, which
//! fails if Katran skipped the write (its new-connection rate limit,
//! `MAX_CONN_RATE`, 125,000 per second and CPU by default, is far below
//! a test run's rate: the object must be built with it raised).
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::PacketBuilder;
use fulcrum_common::{ConnEvent, Mac, Reason, VipKey, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_MAX_TABLE_SIZE, VIP_F_IPIP};
use fulcrum_l4::{Datapath, LoadOptions, NodeSettings, Plan, PlanVip};

use crate::{
    katran::{self, Counter, KatranVip},
    machine, median, now, publish,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// The datapath's own MAC, the destination of the bench frames.
const SELF_MAC: Mac = Mac([2, 0, 0, 0, 0, 2]);
/// Bytes the harness restores (its `HEADER_BYTES`): every bench frame is
/// at least this long, and its headers end before it.
const HARNESS_BYTES: usize = 80;
/// The harness's `NEW_FLOW` parameter: its counter goes into the IPv4
/// source address or the IPv6 one's last word (a new flow per run), or
/// into a word the datapath does not read (the same work, the same flow).
const NEW_FLOW: u32 = 1;
const NEW_FLOW_V6: u32 = 2;
const SAME_FLOW: u32 = 0;
/// The harness's `PARAMS` index of its run counter.
const COUNTER: u32 = 2;
/// The default router's MAC, Katran's encapsulated frames' destination.
const ROUTER_MAC: Mac = Mac([2, 0, 0, 0, 0, 1]);
/// IPIP outer header bytes and protocol number (RFC 2003).
const IPIP_OVERHEAD: usize = 20;
const IPPROTO_IPIP: u8 = 4;

/// An IPv4 frame of 80 bytes to `dst`:`dport`: a TCP ACK (or with `syn` a
/// SYN alone) with 26 bytes of payload, or a UDP datagram with 38.
fn frame(dst: Ipv4Addr, dport: u16, proto: u8, syn: bool) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], SELF_MAC.0).ipv4([198, 18, 0, 10], dst.octets(), 64);
    l4(ip, dport, proto, syn, 26)
}

/// An IPv6 frame of 94 bytes to `dst`:`dport`, as `frame` (20 bytes of
/// TCP payload, 32 of UDP).
fn frame6(dst: Ipv6Addr, dport: u16, proto: u8, syn: bool) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], SELF_MAC.0).ipv6(CLIENT6.octets(), dst.octets(), 64);
    l4(ip, dport, proto, syn, 20)
}

/// The TCP (`tcp_payload` bytes) or UDP (12 more) part of a bench frame
/// from port 40000.
fn l4(ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>, dport: u16, proto: u8, syn: bool, tcp_payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if proto == IPPROTO_UDP {
        ip.udp(40000, dport).write(&mut out, &vec![0u8; tcp_payload + 12]).expect("writing to a Vec");
    } else {
        let tcp = ip.tcp(40000, dport, 1, 65535);
        let tcp = if syn { tcp.syn() } else { tcp.ack(1) };
        tcp.write(&mut out, &vec![0u8; tcp_payload]).expect("writing to a Vec");
    }
    out
}

/// The bench's IPv6 client; its address's last word carries the
/// harness's counter in the IPv6 new-flow row.
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x10);

/// What a row runs.
enum Target {
    /// The harness object's do-nothing program, directly.
    Noop,
    /// The floor program, directly.
    Floor,
    /// fulcrum's program, directly (only where its output is a valid input).
    Datapath,
    /// Katran's program (only behind the harness: it always encapsulates).
    Katran,
    /// The harness, tail-calling one of the above, with its `NEW_FLOW`.
    Harnessed(Box<Target>, u32),
}

/// One timed row: a frame, what runs it, what it must return.
struct Row {
    name: &'static str,
    frame: Vec<u8>,
    target: Target,
    want: u32,
    /// The output must be an IPIP packet (the encapsulating rows).
    ipip_out: bool,
    /// Printed in the table (the noop rows are only for the subtraction).
    report: bool,
    samples: Vec<f64>,
}

fn row(name: &'static str, frame: &[u8], target: Target, want: u32) -> Row {
    Row { name, frame: frame.to_vec(), target, want, ipip_out: false, report: true, samples: Vec::new() }
}

fn harnessed(target: Target, new_flow: u32) -> Target {
    Target::Harnessed(Box::new(target), new_flow)
}

/// The harness object, loaded, with its maps.
struct Harness {
    obj: Ebpf,
    template: Array<MapData, [u64; HARNESS_BYTES / 8]>,
    params: Array<MapData, u32>,
    target: ProgramArray<MapData>,
}

impl Harness {
    fn load(dir: &std::path::Path) -> Result<Self> {
        let mut obj = Ebpf::load_file(dir.join("fulcrum-xdp-harness")).context("loading the harness program")?;
        for name in ["fulcrum_harness", "fulcrum_harness_noop"] {
            let p: &mut Xdp = obj.program_mut(name).with_context(|| format!("no {name}"))?.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let mut take = |name: &str| obj.take_map(name).with_context(|| format!("no map {name}"));
        let template = Array::try_from(take("TEMPLATE")?)?;
        let params = Array::try_from(take("PARAMS")?)?;
        let target = ProgramArray::try_from(take("TARGET")?)?;
        Ok(Harness { obj, template, params, target })
    }

    fn program(&self, name: &str) -> &Xdp {
        self.obj.program(name).expect("loaded above").try_into().expect("an XDP program")
    }

    /// Sets the frame the harness restores and whether each run is a new flow.
    fn prepare(&mut self, frame: &[u8], new_flow: u32) -> Result<()> {
        ensure!(frame.len() >= HARNESS_BYTES, "bench frames are at least {HARNESS_BYTES} bytes");
        let mut words = [0u64; HARNESS_BYTES / 8];
        for (w, chunk) in words.iter_mut().zip(frame.chunks_exact(8)) {
            *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        self.template.set(0, words, 0)?;
        self.params.set(0, frame.len() as u32, 0)?;
        self.params.set(1, new_flow, 0)?;
        Ok(())
    }
}

/// One kernel call of `repeat` runs of `program` on `frame`: per-packet
/// time, action, output frame.
fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(Duration, u32, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = program.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..Default::default() })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.duration, r.return_value, out))
}

/// Row names of the paths both programs time: fulcrum's, then Katran's.
const PAIRS: [(&str, &str, &str); 5] = [
    ("established TCP", "established TCP (conn-table hit), IPIP", "Katran: established TCP (LRU hit), IPIP"),
    (
        "TCP SYN, new 5-tuple",
        "TCP SYN, new 5-tuple (pick + conn-table write), IPIP",
        "Katran: TCP SYN, new 5-tuple (pick + LRU write), IPIP",
    ),
    (
        "TCP SYN, same 5-tuple",
        "TCP SYN, same 5-tuple every run (pick + conn-table rewrite), IPIP",
        "Katran: TCP SYN, same 5-tuple every run (pick + LRU rewrite), IPIP",
    ),
    ("established UDP", "established UDP (conn-table hit), IPIP", "Katran: established UDP (LRU hit), IPIP"),
    ("non-VIP", "non-VIP, XDP_PASS", "Katran: non-VIP, XDP_PASS"),
];

/// Runs the bench: `rounds` interleaved rounds of `repeat` runs per row,
/// pinned to `cpu`, with Katran's rows if `katran_object` is given; prints
/// the report and appends it to `record`.
pub fn run(
    repeat: u32,
    rounds: usize,
    cpu: usize,
    conn_table_size: Option<u32>,
    katran_object: Option<PathBuf>,
    record: Option<PathBuf>,
) -> Result<()> {
    let machine = machine(); // before pinning, which hides the other CPUs
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU index")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("pinning to a CPU")?;

    let vip = Ipv4Addr::new(198, 18, 1, 1);
    let reals_v4: Vec<Ipv4Addr> = (11..=13).map(|i| Ipv4Addr::new(198, 18, 0, i)).collect();
    let reals: Vec<IpAddr> = reals_v4.iter().map(|&a| a.into()).collect();
    let vip6 = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 1);
    let reals6: Vec<IpAddr> = (0x11..=0x13).map(|i| Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, i).into()).collect();
    let vip_of = |addr: IpAddr, reals: &[IpAddr], name: &str, port: u16, proto: u8, flags: u32| PlanVip {
        name: name.into(),
        key: VipKey::new(addr, port, proto),
        flags,
        // The daemon's default Maglev table size.
        table_size: MAGLEV_MAX_TABLE_SIZE,
        members: reals.iter().map(|&a| (a, 1)).collect(),
        established: reals.to_vec(),
        udp_idle_timeout_ms: 30_000,
        vlan: 0,
    };
    let bench_vip = |name: &str, port: u16, proto: u8, flags: u32| vip_of(vip.into(), &reals, name, port, proto, flags);
    let mut plan = Plan {
        vips: vec![
            bench_vip("bench", 80, IPPROTO_TCP, 0),
            bench_vip("bench-udp", 53, IPPROTO_UDP, 0),
            bench_vip("bench-ipip", 81, IPPROTO_TCP, VIP_F_IPIP),
            vip_of(vip6.into(), &reals6, "bench6", 80, IPPROTO_TCP, 0),
            vip_of(vip6.into(), &reals6, "bench6-udp", 53, IPPROTO_UDP, 0),
        ],
        // Every real gets our own MAC: the rows run without the harness
        // feed the program its own output, and the datapath balances only
        // frames addressed to its own MAC, so a rewritten frame must stay
        // addressed to us for each run to take the full VIP path.
        reals: reals.iter().chain(&reals6).map(|&a| (a, Some(SELF_MAC))).collect(),
    };
    if katran_object.is_some() {
        // Katran encapsulates UDP too: the same path on our side.
        plan.vips.push(bench_vip("bench-udp-ipip", 54, IPPROTO_UDP, VIP_F_IPIP));
    }
    let options = LoadOptions { conn_table_size: conn_table_size.unwrap_or(LoadOptions::default().conn_table_size) };
    let mut datapath = Datapath::load_with(options).context("loading fulcrum's XDP program (run as root)")?;
    datapath.set_node(&NodeSettings {
        ipip_source_v4: Some((Ipv4Addr::new(198, 18, 7, 0), 24)),
        ..NodeSettings::new(SELF_MAC)
    })?;
    datapath.apply(&plan)?;

    let dir = PathBuf::from(std::env::var_os("FULCRUM_EBPF_DIR").context("FULCRUM_EBPF_DIR is not set (run through cargo xtask bench)")?);
    let mut floor_obj = Ebpf::load_file(dir.join("fulcrum-xdp-floor")).context("loading the floor program")?;
    let floor: &mut Xdp = floor_obj.program_mut("fulcrum_floor").context("no fulcrum_floor")?.try_into()?;
    floor.load()?;
    let floor = &*floor;
    let mut harness = Harness::load(&dir)?;

    let ack = frame(vip, 80, IPPROTO_TCP, false);
    let syn = frame(vip, 80, IPPROTO_TCP, true);
    let ipip_ack = frame(vip, 81, IPPROTO_TCP, false);
    let ipip_syn = frame(vip, 81, IPPROTO_TCP, true);
    let udp = frame(vip, 53, IPPROTO_UDP, false);
    let ipip_udp = frame(vip, 54, IPPROTO_UDP, false);
    let other = frame(Ipv4Addr::new(198, 18, 0, 77), 80, IPPROTO_TCP, false);
    let ack6 = frame6(vip6, 80, IPPROTO_TCP, false);
    let syn6 = frame6(vip6, 80, IPPROTO_TCP, true);
    let udp6 = frame6(vip6, 53, IPPROTO_UDP, false);
    let h = |t| harnessed(t, SAME_FLOW);
    let mut rows = vec![
        Row { report: false, ..row("noop, XDP_TX", &ack, Target::Noop, XDP_TX) },
        Row { report: false, ..row("harness -> noop", &ack, h(Target::Noop), XDP_TX) },
        row("floor: MAC swap, XDP_TX", &ack, Target::Floor, XDP_TX),
        row("floor, behind the harness (check)", &ack, h(Target::Floor), XDP_TX),
        row("established TCP (conn-table hit), L2 DSR", &ack, Target::Datapath, XDP_TX),
        row("established TCP (conn-table hit), L2 DSR, behind the harness (check)", &ack, h(Target::Datapath), XDP_TX),
        Row { ipip_out: true, ..row("established TCP (conn-table hit), IPIP", &ipip_ack, h(Target::Datapath), XDP_TX) },
        row("TCP SYN, new 5-tuple (pick + conn-table write), L2 DSR", &syn, harnessed(Target::Datapath, NEW_FLOW), XDP_TX),
        Row {
            ipip_out: true,
            ..row("TCP SYN, new 5-tuple (pick + conn-table write), IPIP", &ipip_syn, harnessed(Target::Datapath, NEW_FLOW), XDP_TX)
        },
        // The same 5-tuple every run, as `repeat` alone gives: its hash
        // bucket and element stay hot in the cache. Beside the new-flow
        // rows, it shows what a new flow's cold memory costs.
        Row {
            ipip_out: true,
            ..row("TCP SYN, same 5-tuple every run (pick + conn-table rewrite), IPIP", &ipip_syn, h(Target::Datapath), XDP_TX)
        },
        row("established UDP (conn-table hit), L2 DSR", &udp, h(Target::Datapath), XDP_TX),
        row("non-VIP, XDP_PASS", &other, h(Target::Datapath), XDP_PASS),
        row("IPv6: established TCP (conn-table hit), L2 DSR", &ack6, h(Target::Datapath), XDP_TX),
        row("IPv6: TCP SYN, new 5-tuple (pick + conn-table write), L2 DSR", &syn6, harnessed(Target::Datapath, NEW_FLOW_V6), XDP_TX),
        row("IPv6: established UDP (conn-table hit), L2 DSR", &udp6, h(Target::Datapath), XDP_TX),
    ];
    // Katran: the same frames, to a VIP of the same address and port; the
    // LRU has the flow count of our connection table.
    let katran = match &katran_object {
        None => None,
        Some(path) => {
            let vips = [KatranVip { addr: vip, port: 80, proto: IPPROTO_TCP }, KatranVip { addr: vip, port: 53, proto: IPPROTO_UDP }];
            let k = katran::Katran::load(path, datapath.conn_capacity(), cpu as u32, &vips, &reals_v4, ROUTER_MAC)?;
            let kh = |new_flow| harnessed(Target::Katran, new_flow);
            let ipip = |r: Row| Row { ipip_out: true, ..r };
            rows.extend([
                ipip(row(PAIRS[3].1, &ipip_udp, h(Target::Datapath), XDP_TX)),
                ipip(row(PAIRS[0].2, &ack, kh(SAME_FLOW), XDP_TX)),
                ipip(row(PAIRS[1].2, &syn, kh(NEW_FLOW), XDP_TX)),
                ipip(row(PAIRS[2].2, &syn, kh(SAME_FLOW), XDP_TX)),
                ipip(row(PAIRS[3].2, &udp, kh(SAME_FLOW), XDP_TX)),
                row(PAIRS[4].2, &other, kh(SAME_FLOW), XDP_PASS),
            ]);
            Some(k)
        }
    };

    let datapath_fd = datapath.program_fd()?.try_clone()?;
    let floor_fd = floor.fd()?.try_clone()?;
    let noop_fd = harness.program("fulcrum_harness_noop").fd()?.try_clone()?;
    let katran_fd = katran.as_ref().map(|k| k.program_fd()).transpose()?;
    // Katran's new flows each round, all still in its LRU (checked on the
    // last one: a SYN over Katran's new-connection rate limit would skip
    // the write).
    let mut katran_written = 0;
    for _ in 0..rounds {
        for row in rows.iter_mut() {
            let (per_packet, action, out) = match &row.target {
                Target::Noop => test_run(harness.program("fulcrum_harness_noop"), &row.frame, repeat)?,
                Target::Floor => test_run(floor, &row.frame, repeat)?,
                Target::Datapath => {
                    let o = datapath.test_run(&row.frame, repeat)?;
                    (o.duration, o.action, o.frame)
                }
                Target::Katran => unreachable!("Katran runs behind the harness"),
                Target::Harnessed(inner, new_flow) => {
                    let fd = match **inner {
                        Target::Noop => &noop_fd,
                        Target::Floor => &floor_fd,
                        Target::Datapath => &datapath_fd,
                        Target::Katran => katran_fd.as_ref().expect("Katran rows only with its program"),
                        Target::Harnessed(..) => unreachable!("one harness deep"),
                    };
                    harness.target.set(0, fd, 0)?;
                    harness.prepare(&row.frame, *new_flow)?;
                    let r = test_run(harness.program("fulcrum_harness"), &row.frame, repeat)?;
                    if let (Target::Katran, Some(k)) = (&**inner, &katran) {
                        if *new_flow == NEW_FLOW {
                            let last = Ipv4Addr::from(harness.params.get(&COUNTER, 0)?.to_ne_bytes());
                            ensure!(
                                k.has_tcp_flow(last, 40000, vip, 80)?,
                                "{}: the last SYN's flow is not in Katran's LRU (over its MAX_CONN_RATE? see bench/RESULTS.md)",
                                row.name
                            );
                            katran_written += 1;
                        }
                    }
                    r
                }
            };
            ensure!(action == row.want, "{}: returned {action}, expected {}", row.name, row.want);
            if row.ipip_out {
                ensure!(
                    out.len() == row.frame.len() + IPIP_OVERHEAD && out[23] == IPPROTO_IPIP,
                    "{}: the output is not an IPIP packet ({} bytes)",
                    row.name,
                    out.len()
                );
            }
            row.samples.push(per_packet.as_secs_f64() * 1e9);
        }
    }
    let medians: Vec<f64> = rows.iter_mut().map(|r| median(&mut r.samples)).collect();

    // The counters say the rows timed the paths they name: every SYN run
    // a pick (three rows), every established run but (at most) each
    // round's first a hit.
    let events = datapath.counters().conn_events();
    let event = |e: ConnEvent| events.iter().find(|(x, _)| *x == e).map_or(0, |(_, c)| c.packets);
    let per_row = u64::from(repeat) * rounds as u64;
    let table = u64::from(datapath.conn_capacity());
    let evictions = datapath.counters().evictions();
    // Three IPv4 SYN rows and one IPv6 (its own table).
    let syn_rows = 4;
    let evicting = format!(
        "4-way sets; {evictions} of the {} SYNs evicted a flow: the same-5-tuple row rewrites its own way, the others evict once their set is full",
        syn_rows * per_row
    );
    // IPv4: TCP L2 DSR (directly and behind the harness), TCP IPIP, UDP
    // (and with Katran UDP IPIP); IPv6: TCP, UDP.
    let established_rows = 6 + u64::from(katran.is_some());
    let first_runs = established_rows * rounds as u64;
    ensure!(event(ConnEvent::Syn) == syn_rows * per_row, "SYN picks {} != {}", event(ConnEvent::Syn), syn_rows * per_row);
    ensure!(event(ConnEvent::Miss) <= first_runs, "misses {} > {first_runs}", event(ConnEvent::Miss));
    ensure!(
        event(ConnEvent::Hit) + event(ConnEvent::Miss) == established_rows * per_row,
        "hits {} + misses {} != {}",
        event(ConnEvent::Hit),
        event(ConnEvent::Miss),
        established_rows * per_row
    );
    let reasons = datapath.counters().reasons();
    let reason = |want: Reason| reasons.iter().find(|(r, _)| *r == want).map_or(0, |(_, c)| c.packets);
    // Every run of a datapath row was counted once, as its row's verdict:
    // a frame left unrestored would show up as another reason.
    let datapath_rows = rows.iter().filter(|r| matches!(&r.target, Target::Datapath) || matches!(&r.target, Target::Harnessed(t, _) if matches!(**t, Target::Datapath)));
    let tx_rows = datapath_rows.clone().filter(|r| r.want == XDP_TX).count() as u64;
    let pass_rows = datapath_rows.filter(|r| r.want == XDP_PASS).count() as u64;
    let total: u64 = reasons.iter().map(|(_, c)| c.packets).sum();
    ensure!(reason(Reason::Tx) == tx_rows * per_row, "XDP_TX verdicts {} != {}", reason(Reason::Tx), tx_rows * per_row);
    ensure!(reason(Reason::PassNotVip) == pass_rows * per_row, "non-VIP passes {} != {}", reason(Reason::PassNotVip), pass_rows * per_row);
    ensure!(total == (tx_rows + pass_rows) * per_row, "{total} verdicts for {} runs: {reasons:?}", (tx_rows + pass_rows) * per_row);

    // Katran's counters: every row took the path it names.
    let katran_note = match &katran {
        None => String::new(),
        Some(k) => {
            let c = |x| k.counter(x);
            let (tx, pass, drop) = (c(Counter::Tx)?.v1, c(Counter::Pass)?.v1, c(Counter::Drop)?.v1);
            ensure!(tx == 4 * per_row && pass == per_row && drop == 0, "Katran: {tx} XDP_TX, {pass} XDP_PASS, {drop} XDP_DROP");
            ensure!(c(Counter::FallbackLru)?.v1 == 0, "Katran used its fallback LRU, not the per-CPU one");
            let (lru, miss) = (c(Counter::Lru)?, c(Counter::LruMiss)?);
            // SYNs never look the LRU up: every one is a miss, a pick and
            // a write. The established rows miss at most on each round's
            // first run.
            ensure!(miss.v1 == 2 * per_row, "Katran: SYN misses {} != {}", miss.v1, 2 * per_row);
            ensure!(miss.v2 <= rounds as u64, "Katran: established TCP misses {} > {rounds}", miss.v2);
            ensure!(lru.v1 == 4 * per_row, "Katran: VIP packets {} != {}", lru.v1, 4 * per_row);
            let hits = lru.v1 - lru.v2;
            ensure!(hits + 2 * rounds as u64 >= 2 * per_row, "Katran: {hits} LRU hits for {} established runs", 2 * per_row);
            format!(
                " Katran (`{}`, built out of tree): behind the same harness, its per-CPU LRU for CPU {cpu} of {} flows \
                 ({} entries after the run); its counters: {} SYN misses (pick + LRU write), {hits} LRU hits, {} non-SYN TCP misses, \
                 no fallback-LRU use; each round's last new flow found in the LRU ({katran_written} rounds).",
                katran_object.as_deref().map_or(String::new(), |p| p.display().to_string()),
                table,
                k.lru_len()?,
                miss.v1,
                miss.v2,
            )
        }
    };

    let noop_ns = medians[0];
    let harness_ns = medians[1] - noop_ns;
    let floor_ns = medians[2];
    let mut report = format!(
        "\n## xdp, restoring harness — {}\n\n`cargo xtask bench xdp` (repeat {repeat}, {rounds} interleaved rounds, median, pinned to CPU {cpu}; {machine})\n\n\
         Harnessed rows net of the harness: (harness -> path) - (harness -> noop - noop); \
         harness cost {harness_ns:.1} ns, noop {noop_ns:.1} ns. SYN rows: {per_row} new flows each into a connection table of {table} flows \
         ({evicting}).{katran_note}\n\n| path | ns/packet | × floor |\n|---|---:|---:|\n",
        now(),
    );
    let net: Vec<f64> = rows.iter().zip(&medians).map(|(row, raw)| if matches!(row.target, Target::Harnessed(..)) { raw - harness_ns } else { *raw }).collect();
    for (row, ns) in rows.iter().zip(&net) {
        if row.report {
            report += &format!("| {} | {ns:.1} | {:.2} |\n", row.name, ns / floor_ns);
        }
    }
    if katran.is_some() {
        let ns = |name: &str| rows.iter().position(|r| r.name == name).map(|i| net[i]).expect("a row of PAIRS");
        report += "\nfulcrum net / Katran net (net = path - floor; the target is <= 0.5):\n\n\
                   | path | fulcrum net ns | Katran net ns | fulcrum / Katran |\n|---|---:|---:|---:|\n";
        for (path, ours, theirs) in PAIRS {
            let (f, k) = (ns(ours) - floor_ns, ns(theirs) - floor_ns);
            report += &format!("| {path} | {f:.1} | {k:.1} | {:.2} |\n", f / k);
        }
    }
    publish(&report, record.as_deref())
}
