//! The XDP program on crafted frames, through `BPF_PROG_TEST_RUN`.
//!
//! Each test loads the real embedded program, writes its maps through the
//! same `Datapath::apply` the daemon uses, runs frames through it, and
//! checks the action, the exact output frame and the counters. The
//! expected backend is computed independently: the Maglev table from
//! `fulcrum::maglev` and the flow hash from `fulcrum-common`.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN) to load the program.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use fulcrum::{
    config::{Protocol, Scheduler},
    datapath::Datapath,
    maglev,
    state::{ActiveBackend, Effective, EffectiveVip, Mac},
};
use fulcrum_common::{addr_words, hash, ports_word, Reason};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SELF_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
const TABLE: u32 = 251;

const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x10);

fn real(i: u8) -> (IpAddr, Mac) {
    (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + i)), [0x02, 0, 0, 0, 0, 0x10 + i])
}

fn vip(name: &str, address: IpAddr, port: u16, protocol: Protocol, scheduler: Scheduler, backends: &[u8]) -> EffectiveVip {
    EffectiveVip {
        name: name.into(),
        address,
        port,
        protocol,
        scheduler,
        table_size: TABLE,
        backends: backends.iter().map(|&i| ActiveBackend { address: real(i).0, weight: 1 }).collect(),
    }
}

/// Four VIPs (v4/v6 x tcp/udp) over reals 1..=3, an ip-hash VIP, and a VIP
/// whose only backend is gone.
fn lab_state() -> Effective {
    Effective {
        vips: vec![
            vip("v4tcp", VIP4.into(), 80, Protocol::Tcp, Scheduler::Maglev, &[1, 2, 3]),
            vip("v4udp", VIP4.into(), 53, Protocol::Udp, Scheduler::Maglev, &[1, 2, 3]),
            vip("v6tcp", VIP6.into(), 80, Protocol::Tcp, Scheduler::Maglev, &[1, 2, 3]),
            vip("v6udp", VIP6.into(), 53, Protocol::Udp, Scheduler::Maglev, &[1, 2, 3]),
            vip("sticky", VIP4.into(), 443, Protocol::Tcp, Scheduler::IpHash, &[1, 2, 3]),
            vip("empty", VIP4.into(), 8080, Protocol::Tcp, Scheduler::Maglev, &[]),
        ],
        reals: (1..=3).map(|i| (real(i).0, Some(real(i).1))).collect(),
    }
}

fn loaded(effective: &Effective) -> Datapath {
    let mut dp = Datapath::load(aya_log::Level::Info as u8).expect("loading the XDP program (run as root)");
    dp.set_self_mac(SELF_MAC).unwrap();
    dp.apply(effective).unwrap();
    dp
}

/// The MAC the program must pick, computed without the kernel.
fn expected_mac(backends: &[u8], hash: u32) -> Mac {
    let names: Vec<String> = backends.iter().map(|&i| real(i).0.to_string()).collect();
    let members: Vec<maglev::Member> = names.iter().map(|n| maglev::Member { name: n, weight: 1 }).collect();
    let table = maglev::build(&members, TABLE);
    real(backends[table[(hash % TABLE) as usize] as usize]).1
}

fn v4_hash(src: Ipv4Addr, sport: u16, dport: u16) -> u32 {
    hash::flow_hash_v4(addr_words(src.into())[3], ports_word(sport.to_be(), dport.to_be()))
}

fn v6_hash(src: Ipv6Addr, sport: u16, dport: u16) -> u32 {
    hash::flow_hash_v6(&addr_words(src.into()), ports_word(sport.to_be(), dport.to_be()))
}

/// An Ethernet frame from the client to `dst`, with a small payload.
fn frame(src: IpAddr, dst: IpAddr, protocol: Protocol, sport: u16, dport: u16) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    };
    let mut out = Vec::new();
    match protocol {
        Protocol::Tcp => ip.tcp(sport, dport, 1, 65535).write(&mut out, b"GET / HTTP/1.1\r\n\r\n"),
        Protocol::Udp => ip.udp(sport, dport).write(&mut out, b"query"),
    }
    .unwrap();
    out
}

fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    frame(src.into(), dst.into(), Protocol::Tcp, sport, dport)
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    frame(src.into(), dst.into(), Protocol::Udp, sport, dport)
}

fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    frame(src.into(), dst.into(), Protocol::Tcp, sport, dport)
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    frame(src.into(), dst.into(), Protocol::Udp, sport, dport)
}

/// `frame` with its Ethernet addresses replaced: what L2 DSR must send.
fn rewritten(frame: &[u8], dst: Mac) -> Vec<u8> {
    let mut want = frame.to_vec();
    want[0..6].copy_from_slice(&dst);
    want[6..12].copy_from_slice(&SELF_MAC);
    want
}

fn reason(dp: &Datapath, r: Reason) -> u64 {
    dp.reason_counters().into_iter().find(|(x, _)| *x == r).unwrap().1.packets
}

/// Runs `frame` and checks the action; returns the output frame.
fn run(dp: &mut Datapath, frame: &[u8], action: u32, why: Reason) -> Vec<u8> {
    let before = reason(dp, why);
    let out = dp.test_run(frame, 1).unwrap();
    assert_eq!(out.action, action, "action for {why:?}");
    assert_eq!(reason(dp, why), before + 1, "counter {why:?}");
    out.frame
}

#[test]
fn vip_packets_are_rewritten_to_the_maglev_backend() {
    let mut dp = loaded(&lab_state());
    for sport in [1024u16, 40000, 51515, 65535] {
        let f = tcp4(CLIENT4, VIP4, sport, 80);
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, sport, 80)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "IPv4 TCP sport {sport}");

        let f = udp4(CLIENT4, VIP4, sport, 53);
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, sport, 53)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "IPv4 UDP sport {sport}");

        let f = tcp6(CLIENT6, VIP6, sport, 80);
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, sport, 80)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "IPv6 TCP sport {sport}");

        let f = udp6(CLIENT6, VIP6, sport, 53);
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, sport, 53)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "IPv6 UDP sport {sport}");
    }
}

#[test]
fn flows_spread_over_every_backend_and_are_counted() {
    let mut dp = loaded(&lab_state());
    let mut seen = std::collections::HashSet::new();
    for sport in 10000..10300u16 {
        let f = tcp4(CLIENT4, VIP4, sport, 80);
        let out = run(&mut dp, &f, XDP_TX, Reason::Tx);
        seen.insert(<[u8; 6]>::try_from(&out[0..6]).unwrap());
    }
    assert_eq!(seen.len(), 3, "300 flows must reach all 3 backends");
    assert_eq!(dp.vip_counters("v4tcp").packets, 300);
    let per_real: u64 = (1..=3).map(|i| dp.real_counters(real(i).0).packets).sum();
    assert_eq!(per_real, 300);
    assert!((1..=3).all(|i| dp.real_counters(real(i).0).packets > 50));
    let len = tcp4(CLIENT4, VIP4, 1, 80).len() as u64;
    assert_eq!(dp.vip_counters("v4tcp").bytes, 300 * len);
}

#[test]
fn ip_hash_keeps_a_client_on_one_backend() {
    let mut dp = loaded(&lab_state());
    for client in [CLIENT4, Ipv4Addr::new(198, 18, 7, 7), Ipv4Addr::new(198, 19, 0, 200)] {
        let want = expected_mac(&[1, 2, 3], hash::src_hash_v4(addr_words(client.into())[3]));
        for sport in [1000u16, 2000, 3000, 4000] {
            let f = tcp4(client, VIP4, sport, 443);
            assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), rewritten(&f, want));
        }
    }
}

#[test]
fn vlan_tagged_vip_packets_keep_their_tag() {
    let mut dp = loaded(&lab_state());
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv4(CLIENT4.octets(), VIP4.octets(), 64)
        .tcp(5555, 80, 1, 65535)
        .write(&mut f, b"x")
        .unwrap();
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 5555, 80)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
}

#[test]
fn ipv4_options_are_skipped_and_the_packet_forwarded() {
    let mut dp = loaded(&lab_state());
    let plain = tcp4(CLIENT4, VIP4, 7777, 80);
    // Insert 4 bytes of options (NOP NOP NOP EOL) after the 20-byte header.
    let mut f = plain[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&plain[34..]);
    f[14] = 0x46; // version 4, IHL 6 words
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 7777, 80)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
}

#[test]
fn everything_else_gets_its_documented_action() {
    let mut dp = loaded(&lab_state());
    let vip_frame = tcp4(CLIENT4, VIP4, 40000, 80);

    // Not a VIP: other port, other address, other protocol on a VIP port.
    for f in [tcp4(CLIENT4, VIP4, 40000, 81), tcp4(CLIENT4, CLIENT4, 40000, 80), udp4(CLIENT4, VIP4, 40000, 80)] {
        assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotVip), f);
    }
    // ARP request.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    run(&mut dp, &arp, XDP_PASS, Reason::PassNotIp);
    // Truncated: IPv4 header cut short, TCP header cut short, VLAN tag cut short.
    run(&mut dp, &vip_frame[..14 + 12], XDP_PASS, Reason::PassTruncated);
    run(&mut dp, &vip_frame[..14 + 20 + 10], XDP_PASS, Reason::PassTruncated);
    let mut vlan_cut = vip_frame[..14].to_vec();
    vlan_cut[12..14].copy_from_slice(&[0x81, 0x00]);
    vlan_cut.extend_from_slice(&[0, 42]);
    run(&mut dp, &vlan_cut, XDP_PASS, Reason::PassTruncated);
    // Fragments: first (MF set), later (offset), IPv6 fragment header.
    let mut first = vip_frame.clone();
    first[20] |= 0x20;
    run(&mut dp, &first, XDP_PASS, Reason::PassFragment);
    let mut later = vip_frame.clone();
    later[21] = 0x10;
    run(&mut dp, &later, XDP_PASS, Reason::PassFragment);
    let mut frag6 = tcp6(CLIENT6, VIP6, 40000, 80);
    frag6[20] = 44;
    run(&mut dp, &frag6, XDP_PASS, Reason::PassFragment);
    // Not TCP/UDP: ICMP echo to the VIP; IPv6 hop-by-hop header.
    let mut icmp = vip_frame.clone();
    icmp[23] = 1;
    run(&mut dp, &icmp, XDP_PASS, Reason::PassNotL4);
    let mut hbh = tcp6(CLIENT6, VIP6, 40000, 80);
    hbh[20] = 0;
    run(&mut dp, &hbh, XDP_PASS, Reason::PassNotL4);
    // Malformed: IHL below 5, and a version field that is not 4.
    let mut short_ihl = vip_frame.clone();
    short_ihl[14] = 0x44;
    run(&mut dp, &short_ihl, XDP_PASS, Reason::PassMalformed);
    let mut bad_version = vip_frame.clone();
    bad_version[14] = 0x65;
    run(&mut dp, &bad_version, XDP_PASS, Reason::PassMalformed);
    // A VIP with no backend drops, and counts the packet for the VIP.
    let f = tcp4(CLIENT4, VIP4, 40000, 8080);
    run(&mut dp, &f, XDP_DROP, Reason::DropNoBackend);
    assert_eq!(dp.vip_counters("empty").packets, 1);
}

#[test]
fn with_no_vip_everything_passes() {
    let mut dp = loaded(&Effective::default());
    for f in [tcp4(CLIENT4, VIP4, 1, 80), udp4(CLIENT4, VIP4, 1, 53), tcp6(CLIENT6, VIP6, 1, 80), udp6(CLIENT6, VIP6, 1, 53)] {
        assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotVip), f);
    }
}

#[test]
fn a_new_table_replaces_the_old_one_whole() {
    let mut state = lab_state();
    let mut dp = loaded(&state);
    // Backend 2 leaves: flows must now map by the 2-backend table, and none
    // may reach backend 2.
    state.vips[0].backends.retain(|b| b.address != real(2).0);
    dp.apply(&state).unwrap();
    for sport in 20000..20200u16 {
        let f = tcp4(CLIENT4, VIP4, sport, 80);
        let want = rewritten(&f, expected_mac(&[1, 3], v4_hash(CLIENT4, sport, 80)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
    }
    let info = dp.vip_table("v4tcp").unwrap();
    assert_eq!(info.table_size, TABLE);
    assert_eq!(info.slots.iter().map(|s| s.1).sum::<u32>(), TABLE);
    // And the default-sized table, 65537 slots, works the same way.
    state.vips[0].table_size = fulcrum_common::MAGLEV_MAX_TABLE_SIZE;
    dp.apply(&state).unwrap();
    assert_eq!(dp.vip_table("v4tcp").unwrap().table_size, 65537);
    let f = tcp4(CLIENT4, VIP4, 1234, 80);
    let out = run(&mut dp, &f, XDP_TX, Reason::Tx);
    assert!(out[0..6] == real(1).1 || out[0..6] == real(3).1);
}
