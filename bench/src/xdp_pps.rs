//! `cargo xtask bench xdp-pps`: forwarded packets per second on one CPU,
//! fulcrum's XDP program against the kernel's own forwarding with nftables
//! DNAT, on the same topology, in the same run, interleaved rounds.
//!
//! Topology (namespaces under a per-run prefix, removed on every exit):
//!
//! ```text
//!  {p}-gen: g0 198.18.8.10 (client), 198.18.8.11 (real) ── veth ── {p}-lb: l0 198.18.8.2
//! ```
//!
//! One-armed, as fulcrum is deployed: the generator sends UDP to the VIP
//! 198.18.6.1:53 from `g0` to the lb, the lb sends each datagram back out
//! of `l0` to the real's MAC, and on `g0` the sink program
//! (`xdp-ebpf/src/bin/sink.rs`) counts and drops it. The generator is
//! `xdp-ebpf/src/bin/trafficgen.rs` run by `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (as xdp-trafficgen does; the kernel has no
//! pktgen), pinned to one CPU: each `XDP_TX` goes out of `g0` into `l0`,
//! and the veth pairs process what they receive in softirq on the sending
//! CPU, so the generator, the forwarder under test and the sink all run on
//! that one CPU. A round runs, one after the other on `l0`:
//!
//! - **reflect**: the MAC-swap floor program, `XDP_TX`: the cost of the
//!   generator, the two veth hops and the sink alone;
//! - **fulcrum**: the datapath with a UDP VIP whose one real is
//!   198.18.8.11 (established flows: conn-table hits), `XDP_TX`;
//! - **nftables DNAT**: the kernel stack forwards (`ip_forward`, ICMP
//!   redirects off) with `dnat to 198.18.8.11` in a prerouting nat chain
//!   (conntrack: established flows after the first round). `l0` runs the
//!   pass program, because a veth accepts frames sent by XDP only into a
//!   peer that has an XDP program; it costs about what the floor does.
//!
//! The figure per arm is frames the sink counted / wall time of the
//! generator's call, median over rounds; the ratio fulcrum / nftables is
//! the one that carries across machines. Its inverse, ns per packet, less
//! the reflect arm's, is the forwarder's own cost without the generator,
//! veth and sink (which a NIC would not charge in the same way). `--flows` source ports cycle, so
//! both forwarders see a fixed set of established flows.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use etherparse::PacketBuilder;
use fulcrum_common::{Mac, VipKey, IPPROTO_UDP, MAGLEV_MAX_TABLE_SIZE};
use fulcrum_l4::{Datapath, NodeSettings, Plan, PlanVip};
use fulcrum_lab::{in_netns, netns_command, run_checked};

use crate::{machine, median, now, publish};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 6, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 8, 10);
const REAL: Ipv4Addr = Ipv4Addr::new(198, 18, 8, 11);
const PORT: u16 = 53;
/// Frames per live-frames batch (the kernel's default is 64).
const BATCH: u32 = 64;
/// Bytes the generator rewrites per frame (its `HEADER_BYTES`).
const TEMPLATE_BYTES: usize = 48;

/// The two namespaces; dropped, they are deleted by exact name.
struct Topology {
    prefix: String,
}

impl Topology {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn ip(&self, host: &str, args: &str) -> Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(self.ns(host)).args(args.split_whitespace()))
    }

    fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<String> {
        run_checked(netns_command(&self.ns(host), program).args(args))
    }

    fn mac(&self, host: &str, interface: &str) -> Result<Mac> {
        let text = self.exec(host, "cat", &[&format!("/sys/class/net/{interface}/address")])?;
        text.trim().parse().map_err(|_| anyhow::anyhow!("{interface}: not a MAC: {text:?}"))
    }

    fn up() -> Result<Topology> {
        let t = Topology { prefix: format!("fp{:x}", std::process::id() & 0xffff) };
        for host in ["gen", "lb"] {
            run_checked(Command::new("ip").args(["netns", "add", &t.ns(host)]))?;
            t.ip(host, "link set lo up")?;
        }
        t.ip("gen", &format!("link add g0 type veth peer name l0 netns {}", t.ns("lb")))?;
        t.ip("gen", &format!("addr add {CLIENT}/24 dev g0"))?;
        t.ip("gen", &format!("addr add {REAL}/24 dev g0"))?;
        t.ip("gen", "link set g0 up")?;
        t.ip("lb", "addr add 198.18.8.2/24 dev l0")?;
        t.ip("lb", "link set l0 up")?;
        // A router that sends back out of the interface it received on
        // would send an ICMP redirect per packet; a real forwarder is
        // configured not to.
        t.exec(
            "lb",
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.l0.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.l0.rp_filter=0",
            ],
        )?;
        // The real's neighbour entry, as the health checks would keep it.
        let real_mac = t.mac("gen", "g0")?;
        t.ip("lb", &format!("neigh replace {REAL} lladdr {real_mac} dev l0 nud permanent"))?;
        let rules = format!(
            "table ip fulcrum_bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             ip daddr {VIP} udp dport {PORT} dnat to {REAL}\n  }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}-dnat.nft", t.prefix));
        std::fs::write(&path, rules)?;
        let loaded = t.exec("lb", "nft", &["-f", &path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        loaded.context("loading the nftables DNAT rule (nftables is installed by cargo xtask setup)")?;
        Ok(t)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for host in ["gen", "lb"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(host)]).status();
        }
    }
}

fn load(dir: &Path, object: &str, program: &str) -> Result<Ebpf> {
    let mut obj = Ebpf::load_file(dir.join(object)).with_context(|| format!("loading {object}"))?;
    let p: &mut Xdp = obj.program_mut(program).with_context(|| format!("no {program} in {object}"))?.try_into()?;
    p.load().with_context(|| format!("loading {program}"))?;
    Ok(obj)
}

fn xdp<'a>(obj: &'a mut Ebpf, program: &str) -> &'a mut Xdp {
    obj.program_mut(program).expect("loaded").try_into().expect("an XDP program")
}

/// Attaches `program` to `interface` in `ns`, in driver mode.
fn attach(ns: &str, program: &mut Xdp, interface: &str) -> Result<XdpLinkId> {
    Ok(in_netns(ns, || program.attach(interface, XdpMode::Driver))??)
}

/// One arm of the comparison: what runs on `l0`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    Reflect,
    Fulcrum,
    NftDnat,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::Reflect, Arm::Fulcrum, Arm::NftDnat];

    fn name(self) -> &'static str {
        match self {
            Arm::Reflect => "reflect: MAC swap, XDP_TX (generator + veth + sink alone)",
            Arm::Fulcrum => "fulcrum XDP (UDP VIP, conn-table hit), XDP_TX",
            Arm::NftDnat => "kernel forwarding, nftables DNAT (conntrack)",
        }
    }
}

pub fn run(rounds: usize, frames: u32, flows: u32, cpu: usize, record: Option<PathBuf>) -> Result<()> {
    ensure!(frames > 0 && flows > 0 && flows < 60_000, "frames > 0, 0 < flows < 60000");
    let machine = machine();
    let dir = PathBuf::from(std::env::var_os("FULCRUM_EBPF_DIR").context("FULCRUM_EBPF_DIR is not set (run through cargo xtask bench)")?);
    let t = Topology::up()?;
    let (gen_ns, lb_ns) = (t.ns("gen"), t.ns("lb"));
    let g0 = t.mac("gen", "g0")?;
    let l0 = t.mac("lb", "l0")?;

    let mut sink = load(&dir, "fulcrum-xdp-sink", "fulcrum_sink")?;
    let count: PerCpuArray<MapData, u64> = PerCpuArray::try_from(sink.take_map("SINK_COUNT").context("no SINK_COUNT")?)?;
    let sunk = || -> Result<u64> { Ok(count.get(&0, 0)?.iter().sum()) };
    let _sink_link = attach(&gen_ns, xdp(&mut sink, "fulcrum_sink"), "g0")?;

    let mut floor = load(&dir, "fulcrum-xdp-floor", "fulcrum_floor")?;
    let mut pass = load(&dir, "fulcrum-xdp-pass", "fulcrum_pass")?;
    let mut datapath = Datapath::load().context("loading fulcrum's XDP program")?;
    datapath.set_node(&NodeSettings::new(l0))?;
    datapath.apply(&Plan {
        vips: vec![PlanVip {
            name: "bench-udp".into(),
            key: VipKey::new(VIP.into(), PORT, IPPROTO_UDP),
            flags: 0,
            table_size: MAGLEV_MAX_TABLE_SIZE,
            members: vec![(REAL.into(), 1)],
            established: vec![REAL.into()],
            udp_idle_timeout_ms: 30_000,
            vlan: 0,
        }],
        reals: [(REAL.into(), Some(g0))].into(),
    })?;

    let mut gen = load(&dir, "fulcrum-xdp-trafficgen", "fulcrum_trafficgen")?;
    let mut template: Array<MapData, [u64; TEMPLATE_BYTES / 8]> = Array::try_from(gen.take_map("TEMPLATE").context("no TEMPLATE")?)?;
    let mut params: Array<MapData, u32> = Array::try_from(gen.take_map("PARAMS").context("no PARAMS")?)?;
    let frame = udp_frame(g0, l0);
    let mut words = [0u64; TEMPLATE_BYTES / 8];
    for (w, chunk) in words.iter_mut().zip(frame.chunks_exact(8)) {
        *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
    }
    template.set(0, words, 0)?;
    params.set(0, flows, 0)?;
    params.set(1, 10_000, 0)?;
    let generator = xdp(&mut gen, "fulcrum_trafficgen");
    let g0_index = in_netns(&gen_ns, || nix::net::if_::if_nametoindex("g0"))??;

    // One run of the generator in the gen namespace, pinned: frames the
    // sink counted, and the call's wall time.
    let send = |frames: u32| -> Result<(u64, Duration)> {
        let before = sunk()?;
        let elapsed = in_netns(&gen_ns, || -> Result<Duration> {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
            // struct xdp_md: data (0), data_end (the frame's length, as
            // the kernel requires), data_meta (0), ingress_ifindex,
            // rx_queue_index, egress_ifindex (0).
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&g0_index.to_ne_bytes());
            let start = Instant::now();
            generator.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })?;
            Ok(start.elapsed())
        })??;
        // Frames still in a veth ring when the call returned: wait until
        // the count settles (bounded).
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = sunk()?;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let now = sunk()?;
            if now == last || Instant::now() > deadline {
                return Ok((now - before, elapsed));
            }
            last = now;
        }
    };

    // Warm-up: ARP, conntrack entries, conn-table entries for every flow.
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Arm::ALL.len()];
    let mut delivered: Vec<(u64, u64)> = vec![(0, 0); Arm::ALL.len()];
    for round in 0..=rounds {
        for (i, arm) in Arm::ALL.into_iter().enumerate() {
            let frames = if round == 0 { (flows * 4).max(10_000) } else { frames };
            let link = match arm {
                Arm::Reflect => Some(attach(&lb_ns, xdp(&mut floor, "fulcrum_floor"), "l0")?),
                Arm::NftDnat => Some(attach(&lb_ns, xdp(&mut pass, "fulcrum_pass"), "l0")?),
                Arm::Fulcrum => {
                    in_netns(&lb_ns, || datapath.attach("l0"))??;
                    None
                }
            };
            let (counted, elapsed) = send(frames)?;
            match (arm, link) {
                (Arm::Reflect, Some(link)) => in_netns(&lb_ns, || xdp(&mut floor, "fulcrum_floor").detach(link))??,
                (Arm::NftDnat, Some(link)) => in_netns(&lb_ns, || xdp(&mut pass, "fulcrum_pass").detach(link))??,
                _ => in_netns(&lb_ns, || datapath.detach())??,
            }
            if round == 0 {
                continue;
            }
            samples[i].push(counted as f64 / elapsed.as_secs_f64());
            delivered[i].0 += counted;
            delivered[i].1 += u64::from(frames);
        }
    }
    for (i, arm) in Arm::ALL.into_iter().enumerate() {
        ensure!(delivered[i].0 > 0, "{}: nothing reached the sink", arm.name());
    }

    // Per-round ratios: the arms of one round ran seconds apart, so the
    // load of a shared machine cancels better in them than across rounds.
    let mut fulcrum_vs_nft: Vec<f64> = samples[1].iter().zip(&samples[2]).map(|(f, n)| f / n).collect();
    let per_round = Arm::ALL
        .iter()
        .zip(&samples)
        .map(|(a, s)| {
            let name = a.name().split([':', ',', '(']).next().unwrap_or_default().trim();
            format!("{name}: {}", s.iter().map(|x| format!("{:.2}", x / 1e6)).collect::<Vec<_>>().join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let nft = medians[2];
    let mut report = format!(
        "\n## xdp-pps — {}\n\n`cargo xtask bench xdp-pps --rounds {rounds} --frames {frames} --flows {flows} --cpu {cpu}` \
         ({machine}; UDP 64-byte frames, {flows} flows, generator, forwarder and sink on CPU {cpu}, \
         {rounds} interleaved rounds, median)\n\n| forwarder | Mpps | × nftables | ns/packet | ns net of reflect | delivered |\n|---|---:|---:|---:|---:|---:|\n",
        now()
    );
    let reflect_ns = 1e9 / medians[0];
    for (i, arm) in Arm::ALL.into_iter().enumerate() {
        let (got, sent) = delivered[i];
        let ns = 1e9 / medians[i];
        report += &format!(
            "| {} | {:.2} | {:.2} | {ns:.0} | {:.0} | {:.1}% |\n",
            arm.name(),
            medians[i] / 1e6,
            medians[i] / nft,
            ns - reflect_ns,
            100.0 * got as f64 / sent as f64
        );
    }
    report += &format!(
        "\nfulcrum / nftables, median of per-round ratios: {:.2}. Per round, in order (Mpps): {per_round}.\n",
        median(&mut fulcrum_vs_nft)
    );
    drop(t);
    publish(&report, record.as_deref())
}

/// A 64-byte UDP frame from the client to the VIP, UDP checksum 0 (none).
fn udp_frame(src: Mac, dst: Mac) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(CLIENT.octets(), VIP.octets(), 64)
        .udp(10_000, PORT)
        .write(&mut out, &[0u8; 22])
        .expect("writing to a Vec");
    out[40] = 0;
    out[41] = 0;
    out
}
