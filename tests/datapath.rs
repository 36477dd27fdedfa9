//! The XDP program on crafted frames, through `BPF_PROG_TEST_RUN`.
//!
//! Each test loads the real embedded program, writes its maps through the
//! same `Datapath::apply` the daemon uses, runs frames through it, and
//! checks the action, the exact output frame and the counters. The
//! expected backend is computed independently: the Maglev table from
//! `fulcrum_l4::maglev` and the flow hash from `fulcrum-common`.
//!
//! Needs root (or CAP_BPF + CAP_NET_ADMIN) to load the program.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use etherparse::PacketBuilder;
use fulcrum_common::{
    addr_words, conn_age, hash, ports_word, DecapReason, Mac, Reason, VipKey, CONN_REFERENCED, CONN_SEEN_JIFFIES, IPPROTO_TCP,
    IPPROTO_UDP, MAX_REALS, MAX_VIPS,
    VIP_F_HASH_SRC_ONLY, VIP_F_IPIP,
};
use fulcrum_l4::{
    maglev, ConnEntry, ConnEvent, Datapath, DatapathError, Decap, FlowKey, LoadOptions, NodeSettings, Plan, PlanVip, VirtualMacs,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SELF_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const TABLE: u32 = 251;
/// The UDP idle timeout of the test VIPs, in milliseconds.
const UDP_IDLE_MS: u32 = 30_000;
/// Connection table entries in tests: small, since every test loads its
/// own program (the default million preallocates about 130 MiB).
const CONN_TABLE: u32 = 65536;

const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 1, 0, 0, 0, 0, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x10);

#[derive(Clone, Copy)]
enum Protocol {
    Tcp,
    Udp,
}

fn real(i: u8) -> (IpAddr, Mac) {
    (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10 + i)), Mac([0x02, 0, 0, 0, 0, 0x10 + i]))
}

fn vip(name: &str, address: IpAddr, port: u16, protocol: Protocol, flags: u32, backends: &[u8]) -> PlanVip {
    let proto = match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    };
    let mut members: Vec<(IpAddr, u32)> = backends.iter().map(|&i| (real(i).0, 1)).collect();
    members.sort_unstable();
    let established = members.iter().map(|&(a, _)| a).collect();
    PlanVip {
        name: name.into(),
        key: VipKey::new(address, port, proto),
        flags,
        table_size: TABLE,
        members,
        established,
        udp_idle_timeout_ms: UDP_IDLE_MS,
        vlan: 0,
    }
}

/// Four VIPs (v4/v6 x tcp/udp) over reals 1..=3, an ip-hash VIP, and a VIP
/// whose only backend is gone.
fn lab_state() -> Plan {
    Plan {
        vips: vec![
            vip("v4tcp", VIP4.into(), 80, Protocol::Tcp, 0, &[1, 2, 3]),
            vip("v4udp", VIP4.into(), 53, Protocol::Udp, 0, &[1, 2, 3]),
            vip("v6tcp", VIP6.into(), 80, Protocol::Tcp, 0, &[1, 2, 3]),
            vip("v6udp", VIP6.into(), 53, Protocol::Udp, 0, &[1, 2, 3]),
            vip("sticky", VIP4.into(), 443, Protocol::Tcp, VIP_F_HASH_SRC_ONLY, &[1, 2, 3]),
            vip("empty", VIP4.into(), 8080, Protocol::Tcp, 0, &[]),
        ],
        reals: (1..=3).map(|i| (real(i).0, Some(real(i).1))).collect(),
    }
}

fn loaded(plan: &Plan) -> Datapath {
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: CONN_TABLE }).expect("loading the XDP program (run as root)");
    dp.set_self_mac(SELF_MAC).unwrap();
    dp.apply(plan).unwrap();
    dp
}

fn vip_packets(dp: &Datapath, name: &str) -> u64 {
    dp.counters().vip(dp.applied().vips[name].vip_id).packets
}

fn real_packets(dp: &Datapath, address: IpAddr) -> u64 {
    dp.counters().real(dp.applied().reals[&address].0).packets
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
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC.0);
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
    want[0..6].copy_from_slice(&dst.0);
    want[6..12].copy_from_slice(&SELF_MAC.0);
    want
}

fn reason(dp: &Datapath, r: Reason) -> u64 {
    dp.counters().reasons().into_iter().find(|(x, _)| *x == r).unwrap().1.packets
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
    assert_eq!(vip_packets(&dp, "v4tcp"), 300);
    let per_real: u64 = (1..=3).map(|i| real_packets(&dp, real(i).0)).sum();
    assert_eq!(per_real, 300);
    assert!((1..=3).all(|i| real_packets(&dp, real(i).0) > 50));
    let len = tcp4(CLIENT4, VIP4, 1, 80).len() as u64;
    assert_eq!(dp.counters().vip(dp.applied().vips["v4tcp"].vip_id).bytes, 300 * len);
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

/// `frame` with a tag (TPID, TCI) inserted after the Ethernet addresses.
fn tagged(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// `lab_state` with every IPv4 VIP (all of VIP4's ports) on VLAN 42; the
/// IPv6 VIPs stay untagged.
fn vlan42_state() -> Plan {
    let mut plan = lab_state();
    for v in plan.vips.iter_mut().filter(|v| v.key.addr == addr_words(VIP4.into())) {
        v.vlan = 42;
    }
    plan
}

#[test]
fn a_vip_on_a_vlan_takes_frames_of_that_vlan_only_and_they_keep_their_tag() {
    let mut dp = loaded(&vlan42_state());
    // VID 42 (with priority bits 5, which are no part of the id): forwarded, tag untouched.
    let f = tagged(&tcp4(CLIENT4, VIP4, 5555, 80), 0x8100, 5 << 13 | 42);
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 5555, 80)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
    assert_eq!(want[12..16], [0x81, 0x00, 0xa0, 42]);
    // Another VLAN, untagged, or priority-tagged (VID 0): not this VIP's.
    for f in [
        tagged(&tcp4(CLIENT4, VIP4, 5555, 80), 0x8100, 43),
        tcp4(CLIENT4, VIP4, 5555, 80),
        tagged(&udp4(CLIENT4, VIP4, 5555, 53), 0x8100, 3 << 13),
    ] {
        assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassVlanMismatch), f);
    }
    // An untagged VIP takes untagged and priority-tagged frames, no VLAN's.
    let f = tagged(&udp6(CLIENT6, VIP6, 5555, 53), 0x8100, 3 << 13);
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, 5555, 53)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
    let f = tagged(&udp6(CLIENT6, VIP6, 5555, 53), 0x8100, 42);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassVlanMismatch), f);
    assert_eq!(vip_packets(&dp, "v4tcp") + vip_packets(&dp, "v4udp") + vip_packets(&dp, "v6udp"), 2);
    // Echo requests to a VIP address: answered on its VLAN, tag kept.
    let out = run(&mut dp, &tagged(&echo4(VIP4), 0x8100, 42), XDP_TX, Reason::IcmpEchoReply);
    assert_eq!(out[12..16], [0x81, 0x00, 0, 42]);
    assert_eq!(out[18 + 20], 0, "echo reply");
    let f = echo4(VIP4);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassVlanMismatch), f);
    let f = tagged(&echo6(VIP6), 0x8100, 42);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassVlanMismatch), f);
}

#[test]
fn stacked_vlan_tags_are_passed() {
    let mut dp = loaded(&vlan42_state());
    let inner = tagged(&tcp4(CLIENT4, VIP4, 5555, 80), 0x8100, 42);
    for f in [
        tagged(&inner, 0x88a8, 42), // 802.1ad S-tag over the C-tag
        tagged(&inner, 0x8100, 42), // two 802.1Q tags
        tagged(&tagged(&tcp4(CLIENT4, VIP4, 5555, 80), 0x88a8, 42), 0x8100, 42), // C-tag over S-tag
        tagged(&tcp4(CLIENT4, VIP4, 5555, 80), 0x88a8, 42), // a lone S-tag
    ] {
        assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassQinQ), f);
    }
    assert_eq!(reason(&dp, Reason::Tx), 0);
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
    // (A hop-by-hop header, walked, followed by an unknown protocol: the
    // TCP header's first byte, 0x9c.)
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
    assert_eq!(vip_packets(&dp, "empty"), 1);
}

#[test]
fn with_no_vip_everything_passes() {
    let mut dp = loaded(&Plan::default());
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
    state.vips[0].members.retain(|&(a, _)| a != real(2).0);
    dp.apply(&state).unwrap();
    for sport in 20000..20200u16 {
        let f = tcp4(CLIENT4, VIP4, sport, 80);
        let want = rewritten(&f, expected_mac(&[1, 3], v4_hash(CLIENT4, sport, 80)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
    }
    let info = dp.applied().vips["v4tcp"].clone();
    assert_eq!(info.table_size, TABLE);
    assert_eq!(info.slots.iter().map(|s| s.1).sum::<u32>(), TABLE);
    // And the default-sized table, 65537 slots, works the same way.
    state.vips[0].table_size = fulcrum_common::MAGLEV_MAX_TABLE_SIZE;
    dp.apply(&state).unwrap();
    assert_eq!(dp.applied().vips["v4tcp"].table_size, 65537);
    let f = tcp4(CLIENT4, VIP4, 1234, 80);
    let out = run(&mut dp, &f, XDP_TX, Reason::Tx);
    assert!(out[0..6] == real(1).1 .0 || out[0..6] == real(3).1 .0);
}

/// A plan of `n` VIPs on VIP4, ports 1000.., each over reals 1..=3.
fn many_vips(n: u32) -> Plan {
    Plan {
        vips: (0..n).map(|i| vip(&format!("vip{i}"), VIP4.into(), 1000 + i as u16, Protocol::Tcp, 0, &[1, 2, 3])).collect(),
        reals: (1..=3).map(|i| (real(i).0, Some(real(i).1))).collect(),
    }
}

#[test]
fn a_removed_vip_passes_and_its_id_is_reused_with_zeroed_counters() {
    let mut state = lab_state();
    let mut dp = loaded(&state);
    let f = tcp4(CLIENT4, VIP4, 3333, 80);
    run(&mut dp, &f, XDP_TX, Reason::Tx);
    let id = dp.applied().vips["v4tcp"].vip_id;
    assert_eq!(vip_packets(&dp, "v4tcp"), 1);
    assert_eq!(conn(&dp, ConnEvent::Miss), 1);

    state.vips.remove(0);
    dp.apply(&state).unwrap();
    assert!(!dp.applied().vips.contains_key("v4tcp"));
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotVip), f);

    // A new VIP takes the lowest free id, the removed one's, from zero.
    state.vips.push(vip("new", VIP4.into(), 8443, Protocol::Tcp, 0, &[1, 2, 3]));
    dp.apply(&state).unwrap();
    assert_eq!(dp.applied().vips["new"].vip_id, id);
    assert_eq!(vip_packets(&dp, "new"), 0);
    assert_eq!(vip_conn(&dp, "new", ConnEvent::Miss), 0, "the old VIP's miss is not the new one's");
    assert_eq!(conn(&dp, ConnEvent::Miss), 1, "but the node-wide total keeps it");
    run(&mut dp, &tcp4(CLIENT4, VIP4, 3333, 8443), XDP_TX, Reason::Tx);
    assert_eq!(vip_packets(&dp, "new"), 1);
    assert_eq!(vip_conn(&dp, "new", ConnEvent::Miss), 1);
    assert_eq!(conn(&dp, ConnEvent::Miss), 2);
    assert_eq!(dp.counter_reader().unwrap().conn_events(), dp.counters().conn_events(), "a second reader sees the carried-over events too");
}

#[test]
fn a_renamed_vip_keeps_its_entry_id_and_counters() {
    let mut state = lab_state();
    let mut dp = loaded(&state);
    let f = tcp4(CLIENT4, VIP4, 4444, 80);
    run(&mut dp, &f, XDP_TX, Reason::Tx);
    let id = dp.applied().vips["v4tcp"].vip_id;
    state.vips[0].name = "renamed".into();
    assert_eq!(dp.apply(&state).unwrap().vips_written, 0);
    assert_eq!(dp.applied().vips["renamed"].vip_id, id);
    assert!(!dp.applied().vips.contains_key("v4tcp"));
    assert_eq!(vip_packets(&dp, "renamed"), 1);
    run(&mut dp, &f, XDP_TX, Reason::Tx);
}

#[test]
fn a_vip_changing_address_under_the_same_name_moves_whole() {
    let mut state = lab_state();
    let mut dp = loaded(&state);
    let old = tcp4(CLIENT4, VIP4, 4444, 80);
    run(&mut dp, &old, XDP_TX, Reason::Tx);
    let moved = Ipv4Addr::new(198, 18, 1, 2);
    state.vips[0].key = VipKey::new(moved.into(), 80, IPPROTO_TCP);
    dp.apply(&state).unwrap();
    assert_eq!(run(&mut dp, &old, XDP_PASS, Reason::PassNotVip), old);
    let new = tcp4(CLIENT4, moved, 4444, 80);
    let want = rewritten(&new, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 4444, 80)));
    assert_eq!(run(&mut dp, &new, XDP_TX, Reason::Tx), want);
    // A different service: its counters start again.
    assert_eq!(vip_packets(&dp, "v4tcp"), 1);
}

#[test]
fn a_real_id_is_reused_with_its_counters_reset() {
    let mut state = lab_state();
    let mut dp = loaded(&state);
    for sport in 30000..30100u16 {
        run(&mut dp, &tcp4(CLIENT4, VIP4, sport, 80), XDP_TX, Reason::Tx);
    }
    let (gone, gone_id) = (real(3).0, dp.applied().reals[&real(3).0].0);
    assert!(real_packets(&dp, gone) > 0);

    // Real 3 leaves the configuration; then real 4 arrives and takes its id.
    for v in &mut state.vips {
        v.members.retain(|&(a, _)| a != gone);
        v.established.retain(|&a| a != gone);
    }
    state.reals.remove(&gone);
    dp.apply(&state).unwrap();
    for v in &mut state.vips {
        if !v.members.is_empty() {
            v.members.push((real(4).0, 1));
            v.members.sort_unstable();
            v.established.push(real(4).0);
            v.established.sort_unstable();
        }
    }
    state.reals.insert(real(4).0, Some(real(4).1));
    dp.apply(&state).unwrap();
    assert!(!dp.applied().reals.contains_key(&gone));
    assert_eq!(dp.applied().reals[&real(4).0].0, gone_id);
    assert_eq!(real_packets(&dp, real(4).0), 0);
    // New flows (established ones keep their reals, and real 3's re-pick).
    let mut to_4 = 0;
    for sport in 31000..31100u16 {
        let f = tcp4(CLIENT4, VIP4, sport, 80);
        let want = expected_mac(&[1, 2, 4], v4_hash(CLIENT4, sport, 80));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), rewritten(&f, want));
        to_4 += u64::from(want == real(4).1);
    }
    assert_eq!(real_packets(&dp, real(4).0), to_4);
    assert!(to_4 > 0);
}

#[test]
fn a_real_whose_mac_changes_gets_the_new_mac() {
    let mut state = lab_state();
    let mut dp = loaded(&state);
    let target = real(1);
    let sport = (1000..u16::MAX).find(|&p| expected_mac(&[1, 2, 3], v4_hash(CLIENT4, p, 80)) == target.1).unwrap();
    let f = tcp4(CLIENT4, VIP4, sport, 80);
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), rewritten(&f, target.1));
    let new_mac = Mac([0x02, 0, 0, 0, 0, 0x99]);
    state.reals.insert(target.0, Some(new_mac));
    let counts = dp.apply(&state).unwrap();
    // Only the real changed: no table is rewritten.
    assert_eq!(counts.vips_written, 0);
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), rewritten(&f, new_mac));
}

#[test]
fn only_changed_vips_are_written_and_equal_tables_are_built_once() {
    let mut state = many_vips(16);
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: CONN_TABLE }).unwrap();
    let first = dp.apply(&state).unwrap();
    assert_eq!((first.vips_written, first.tables_built), (16, 1));
    assert_eq!(dp.apply(&state).unwrap().vips_written, 0);
    state.vips[5].members.retain(|&(a, _)| a != real(2).0);
    let one = dp.apply(&state).unwrap();
    assert_eq!((one.vips_written, one.tables_built), (1, 1));
    // Every VIP over the same members reports the same table digest.
    let digests: std::collections::BTreeSet<u64> =
        (0..16).filter(|&i| i != 5).map(|i| dp.applied().vips[&format!("vip{i}")].digest).collect();
    assert_eq!(digests.len(), 1);
    assert_ne!(dp.applied().vips["vip5"].digest, *digests.iter().next().unwrap());
}

#[test]
fn max_vips_fit_a_reload_renaming_one_at_the_limit_fits_and_one_more_is_refused() {
    let mut state = many_vips(MAX_VIPS);
    let mut dp = loaded(&state);
    assert_eq!(dp.applied().vips.len(), MAX_VIPS as usize);
    // Renaming a VIP at the limit: its id is freed before a new one is taken.
    state.vips[10].name = "renamed".into();
    dp.apply(&state).unwrap();
    assert!(dp.applied().vips.contains_key("renamed"));
    let f = tcp4(CLIENT4, VIP4, 5555, 1010);
    run(&mut dp, &f, XDP_TX, Reason::Tx);
    assert_eq!(vip_packets(&dp, "renamed"), 1);

    // One VIP too many is refused; every VIP written keeps working, and
    // the next valid plan applies.
    let mut over = state.clone();
    over.vips.push(vip("one-too-many", VIP4.into(), 9999, Protocol::Tcp, 0, &[1, 2, 3]));
    assert!(matches!(dp.apply(&over), Err(DatapathError::Limit(_))));
    run(&mut dp, &tcp4(CLIENT4, VIP4, 5555, 1063), XDP_TX, Reason::Tx);
    assert_eq!(run(&mut dp, &tcp4(CLIENT4, VIP4, 5555, 9999), XDP_PASS, Reason::PassNotVip).len(), f.len());
    state.vips[0].members.retain(|&(a, _)| a != real(1).0);
    dp.apply(&state).unwrap();
    assert_eq!(dp.applied().vips["vip0"].slots.len(), 2);
}

#[test]
fn max_reals_fit_a_reload_swapping_them_fits_and_one_more_is_refused() {
    let address = |i: u32| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i));
    let reals = |range: std::ops::Range<u32>| -> BTreeMap<IpAddr, Option<Mac>> {
        range.map(|i| (address(i), Some(Mac([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8])))).collect()
    };
    let mut state = Plan { vips: vec![vip("v", VIP4.into(), 80, Protocol::Tcp, 0, &[])], reals: reals(0..MAX_REALS) };
    state.vips[0].members = vec![(address(0), 1), (address(MAX_REALS - 1), 1)];
    let mut dp = loaded(&state);
    assert_eq!(dp.applied().reals.len(), MAX_REALS as usize);
    // Replace 100 reals by 100 others at the limit: the leaving ones that no
    // table names free their ids first.
    let mut swapped = state.clone();
    swapped.reals = reals(100..MAX_REALS + 100);
    swapped.vips[0].members = vec![(address(MAX_REALS - 1), 1), (address(MAX_REALS + 99), 1)];
    dp.apply(&swapped).unwrap();
    assert!(dp.applied().reals.contains_key(&address(MAX_REALS + 99)));
    run(&mut dp, &tcp4(CLIENT4, VIP4, 1, 80), XDP_TX, Reason::Tx);
    let mut over = swapped.clone();
    over.reals.insert(address(MAX_REALS + 100), None);
    assert!(matches!(dp.apply(&over), Err(DatapathError::Limit(_))));
    run(&mut dp, &tcp4(CLIENT4, VIP4, 1, 80), XDP_TX, Reason::Tx);
}

#[test]
fn reloads_add_and_remove_vips() {
    let mut dp = loaded(&many_vips(4));
    let f = |port| tcp4(CLIENT4, VIP4, 6000, port);
    for port in 1000..1004 {
        run(&mut dp, &f(port), XDP_TX, Reason::Tx);
    }
    // Remove vip1 and vip2, add two new ones.
    let mut next = many_vips(4);
    next.vips.retain(|v| v.name != "vip1" && v.name != "vip2");
    next.vips.push(vip("a", VIP4.into(), 2000, Protocol::Tcp, 0, &[1]));
    next.vips.push(vip("b", VIP6.into(), 2001, Protocol::Udp, 0, &[2, 3]));
    dp.apply(&next).unwrap();
    let applied = dp.applied();
    let mut names: Vec<&String> = applied.vips.keys().collect();
    names.sort();
    assert_eq!(names, ["a", "b", "vip0", "vip3"]);
    run(&mut dp, &f(1000), XDP_TX, Reason::Tx);
    run(&mut dp, &f(1001), XDP_PASS, Reason::PassNotVip);
    run(&mut dp, &f(1002), XDP_PASS, Reason::PassNotVip);
    let a = tcp4(CLIENT4, VIP4, 6000, 2000);
    assert_eq!(run(&mut dp, &a, XDP_TX, Reason::Tx), rewritten(&a, real(1).1));
    let b = udp6(CLIENT6, VIP6, 6000, 2001);
    let want = expected_mac(&[2, 3], v6_hash(CLIENT6, 6000, 2001));
    assert_eq!(run(&mut dp, &b, XDP_TX, Reason::Tx), rewritten(&b, want));
}

#[test]
fn the_writer_reports_a_failed_apply_retries_and_recovers() {
    use std::time::{Duration, Instant};
    let mut writer = fulcrum_l4::Writer::spawn(Datapath::load_with(LoadOptions { conn_table_size: CONN_TABLE }).unwrap()).unwrap();
    let wait = |writer: &fulcrum_l4::Writer, done: &dyn Fn(&fulcrum_l4::WriterStatus) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = writer.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{status:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let good = writer.submit(many_vips(2), Instant::now());
    wait(&writer, &|s| s.applied_generation == good);
    let bad = writer.submit(many_vips(MAX_VIPS + 1), Instant::now());
    let status = wait(&writer, &|s| s.last_error.is_some());
    assert!(status.last_error.as_deref().unwrap().contains("VIPs"), "{status:?}");
    assert_eq!(status.applied_generation, good);
    assert_eq!(status.generation, bad);
    // Retried with backoff; still failing, still reported.
    std::thread::sleep(Duration::from_millis(250));
    assert!(writer.status().last_error.is_some());
    let fixed = writer.submit(many_vips(3), Instant::now());
    let status = wait(&writer, &|s| s.applied_generation == fixed);
    assert_eq!(status.last_error, None);
    assert_eq!(status.applied.vips.len(), 3);
    let report = status.last.unwrap();
    assert_eq!(report.generation, fixed);
    drop(writer.shutdown());
}

// ---- hostile and unusual frames (issue 12 item 5) ---------------------------

/// `f` with its destination MAC replaced.
fn to_mac(f: &[u8], dst: [u8; 6]) -> Vec<u8> {
    let mut f = f.to_vec();
    f[0..6].copy_from_slice(&dst);
    f
}

#[test]
fn vip_frames_not_to_our_unicast_mac_are_passed_never_balanced() {
    let mut dp = loaded(&lab_state());
    let others: [[u8; 6]; 5] = [
        [0xff; 6],                          // broadcast
        [0x01, 0x00, 0x5e, 0x12, 0x01, 0x01], // IPv4 multicast
        [0x33, 0x33, 0x00, 0x00, 0x00, 0x01], // IPv6 multicast
        [0x02, 0, 0, 0, 0, 0x99],           // another station
        [0x03, 0, 0, 0, 0, 0x02],           // our MAC with the group bit set
    ];
    for dst in others {
        for f in [tcp4(CLIENT4, VIP4, 40000, 80), udp6(CLIENT6, VIP6, 40000, 53), tcp4(CLIENT4, VIP4, 40000, 8080)] {
            let f = to_mac(&f, dst);
            assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotForUs), f, "to {dst:02x?}");
        }
    }
    // Nothing reached a VIP or a real; the VIP without backends did not drop.
    for name in ["v4tcp", "v6udp", "empty"] {
        assert_eq!(vip_packets(&dp, name), 0, "{name}");
    }
    assert_eq!((1..=3).map(|i| real_packets(&dp, real(i).0)).sum::<u64>(), 0);
    assert_eq!(reason(&dp, Reason::Tx) + reason(&dp, Reason::DropNoBackend), 0);
    // Non-VIP traffic keeps the reason of what it is, whoever it is for.
    let f = to_mac(&tcp4(CLIENT4, CLIENT4, 40000, 80), [0xff; 6]);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotVip), f);
    // The same VIP frame to our own MAC is balanced.
    let f = tcp4(CLIENT4, VIP4, 40000, 80);
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 40000, 80)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
}

/// VRRP instances 51 (IPv4) and 52 (IPv6) with `virtual_mac = true`.
fn virtual_macs() -> VirtualMacs {
    let mut macs = VirtualMacs::default();
    macs.insert(51, false);
    macs.insert(52, true);
    macs
}

fn loaded_with_node(plan: &Plan, node: &NodeSettings) -> Datapath {
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: CONN_TABLE }).expect("loading the XDP program (run as root)");
    dp.set_node(node).unwrap();
    dp.apply(plan).unwrap();
    dp
}

#[test]
fn frames_to_a_configured_vrrp_virtual_mac_are_balanced_from_our_own_mac() {
    let node = NodeSettings { virtual_macs: virtual_macs(), ..NodeSettings::new(SELF_MAC) };
    let mut dp = loaded_with_node(&lab_state(), &node);
    let vmac4 = Mac::vrrp(51, false).0;
    let vmac6 = Mac::vrrp(52, true).0;
    // L2 DSR: to the real, from the interface's own MAC (`rewritten`).
    let f = to_mac(&tcp4(CLIENT4, VIP4, 40000, 80), vmac4);
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 40000, 80)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
    let f = to_mac(&udp6(CLIENT6, VIP6, 40000, 53), vmac6);
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, 40000, 53)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
    assert_eq!(vip_packets(&dp, "v4tcp") + vip_packets(&dp, "v6udp"), 2);
    // Echo replies come from the virtual MAC the client resolved the VIP to.
    let out = run(&mut dp, &to_mac(&echo4(VIP4), vmac4), XDP_TX, Reason::IcmpEchoReply);
    assert_eq!((out[0..6].to_vec(), out[6..12].to_vec()), (CLIENT_MAC.to_vec(), vmac4.to_vec()));
    let out = run(&mut dp, &to_mac(&echo6(VIP6), vmac6), XDP_TX, Reason::IcmpEchoReply);
    assert_eq!(out[6..12], vmac6);

    // IPIP: the outer frame leaves from our own MAC too.
    let node = NodeSettings { virtual_macs: virtual_macs(), ..ipip_node() };
    let mut dp = loaded_with_node(&ipip_state(), &node);
    let out = run(&mut dp, &to_mac(&tcp4(CLIENT4, VIP4, 40000, 80), vmac4), XDP_TX, Reason::Tx);
    assert_eq!((out[0..6].to_vec(), out[6..12].to_vec()), (ROUTER_MAC.0.to_vec(), SELF_MAC.0.to_vec()));
    assert_eq!(out[14 + 9], 4, "IPIP");
    let out = run(&mut dp, &to_mac(&tcp6(CLIENT6, VIP6, 40000, 80), vmac6), XDP_TX, Reason::Tx);
    assert_eq!(out[6..12], SELF_MAC.0);
    assert_eq!(out[14 + 6], 41, "IP6IP6");
}

#[test]
fn frames_to_other_vrrp_virtual_macs_are_passed() {
    let node = NodeSettings { virtual_macs: virtual_macs(), ..NodeSettings::new(SELF_MAC) };
    let mut dp = loaded_with_node(&lab_state(), &node);
    let v4 = |dst: [u8; 6]| to_mac(&tcp4(CLIENT4, VIP4, 40000, 80), dst);
    let v6 = |dst: [u8; 6]| to_mac(&udp6(CLIENT6, VIP6, 40000, 53), dst);
    let refused = [
        // Unconfigured VRIDs.
        v4(Mac::vrrp(50, false).0),
        v4(Mac::vrrp(52, false).0),
        v6(Mac::vrrp(51, true).0),
        // A configured VRID under the other family's prefix: no node
        // announces an IPv4 VIP on 00:00:5e:00:02:VRID, nor the reverse.
        v4(Mac::vrrp(51, true).0),
        v4(Mac::vrrp(52, true).0),
        v6(Mac::vrrp(52, false).0),
        v6(Mac::vrrp(51, false).0),
        // The virtual MAC with the group bit set.
        v4([0x01, 0, 0x5e, 0, 1, 51]),
    ];
    for f in refused {
        assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotForUs), f, "to {:02x?}", &f[0..6]);
    }
    let echo = to_mac(&echo4(VIP4), Mac::vrrp(50, false).0);
    assert_eq!(run(&mut dp, &echo, XDP_PASS, Reason::PassNotForUs), echo);
    assert_eq!(reason(&dp, Reason::Tx), 0);
    // Without virtual MACs configured, even VRID 51 is another station's.
    let mut dp = loaded(&lab_state());
    let f = v4(Mac::vrrp(51, false).0);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotForUs), f);
}

#[test]
fn ipv6_to_an_ipv4_mapped_address_never_reaches_the_ipv4_vip() {
    let mut dp = loaded(&lab_state());
    let mapped = VIP4.to_ipv6_mapped();
    // Same (address, port, protocol) key as the IPv4 VIPs v4tcp and v4udp.
    assert_eq!(VipKey::new(mapped.into(), 80, IPPROTO_TCP), VipKey::new(VIP4.into(), 80, IPPROTO_TCP));
    for f in [tcp6(CLIENT6, mapped, 40000, 80), udp6(CLIENT6, mapped, 40000, 53), tcp6(CLIENT6, mapped, 40000, 8080)] {
        assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassV4Mapped), f);
    }
    assert_eq!(vip_packets(&dp, "v4tcp") + vip_packets(&dp, "v4udp") + vip_packets(&dp, "empty"), 0);
    // An IPv4-mapped source is just a source: the IPv6 VIP balances it.
    let f = tcp6(Ipv4Addr::new(198, 18, 0, 10).to_ipv6_mapped(), VIP6, 40000, 80);
    let src = Ipv4Addr::new(198, 18, 0, 10).to_ipv6_mapped();
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(src, 40000, 80)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
}

/// Sets the IPv4 total length (frame offset 16) or IPv6 payload length
/// (offset 18) of an untagged frame.
fn set_u16(f: &mut [u8], at: usize, value: u16) {
    f[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn ip_lengths_and_versions_that_disagree_are_passed() {
    let mut dp = loaded(&lab_state());
    let v4 = tcp4(CLIENT4, VIP4, 40000, 80); // 14 + 20 + 20 + 18: total length 58
    let v6 = tcp6(CLIENT6, VIP6, 40000, 80); // 14 + 40 + 20 + 18: payload length 38

    // IPv4 total length past the frame end (the kernel's InTruncatedPkts).
    let mut f = v4.clone();
    set_u16(&mut f, 16, 59);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);
    // ... shorter than the header (InHdrErrors), also with options.
    let mut f = v4.clone();
    set_u16(&mut f, 16, 19);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassMalformed), f);
    let mut f = v4.clone();
    f[14] = 0x46;
    set_u16(&mut f, 16, 23);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassMalformed), f);
    // ... too short for the TCP header it carries: the ports would come
    // from Ethernet padding.
    let mut f = v4.clone();
    set_u16(&mut f, 16, 20 + 10);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);
    // IHL 15 (40 bytes of options) in a frame that ends inside them: the
    // total length either overruns the frame or undercuts the header.
    let mut f = v4[..14 + 24].to_vec();
    f[14] = 0x4f;
    set_u16(&mut f, 16, 60);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);
    set_u16(&mut f, 16, 24);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassMalformed), f);

    // IPv6 payload length past the frame end, or cutting the TCP header.
    let mut f = v6.clone();
    set_u16(&mut f, 18, 39);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);
    let mut f = v6.clone();
    set_u16(&mut f, 18, 12);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);

    // A version field that disagrees with the EtherType, both ways.
    let mut f = v6.clone();
    f[14] = 0x40 | (f[14] & 0x0f);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassMalformed), f);
    let mut f = v4.clone();
    f[12..14].copy_from_slice(&[0x86, 0xdd]); // IPv4 header under the IPv6 EtherType
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassMalformed), f);
    let mut f = v4.clone();
    f[14] = 0x65;
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassMalformed), f);

    assert_eq!(reason(&dp, Reason::Tx), 0);
    assert_eq!(vip_packets(&dp, "v4tcp") + vip_packets(&dp, "v6tcp"), 0);

    // Ethernet padding after the IP packet is allowed: a small UDP frame
    // padded to the 60-byte minimum is forwarded whole.
    for mut f in [udp4(CLIENT4, VIP4, 40000, 53), udp6(CLIENT6, VIP6, 40000, 53)] {
        let ip_len = f.len() - 14;
        f.extend_from_slice(&[0; 16]);
        let v6 = f[12] == 0x86;
        set_u16(&mut f, if v6 { 18 } else { 16 }, (ip_len - if v6 { 40 } else { 0 }) as u16);
        let hash = if v6 { v6_hash(CLIENT6, 40000, 53) } else { v4_hash(CLIENT4, 40000, 53) };
        let want = rewritten(&f, expected_mac(&[1, 2, 3], hash));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
    }
}

const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;

/// An IPv6 frame from the client to VIP6 with extension headers between
/// the IPv6 and the L4 header: each `(kind, eight-octet units after the
/// first, segments left)`; payload length and next-header chain fixed.
fn v6_with_extensions(protocol: Protocol, dport: u16, exts: &[(u8, u8, u8)]) -> Vec<u8> {
    let plain = frame(CLIENT6.into(), VIP6.into(), protocol, 40000, dport);
    let mut f = plain[..54].to_vec();
    let next = plain[20];
    f[20] = exts.first().map_or(next, |e| e.0);
    for (i, &(kind, units, segments_left)) in exts.iter().enumerate() {
        let len = (usize::from(units) + 1) * 8;
        let after = exts.get(i + 1).map_or(next, |e| e.0);
        let mut h = vec![0u8; len];
        h[0] = after;
        h[1] = units;
        if kind == ROUTING {
            h[2] = 4; // segment routing header (RFC 8754)
            h[3] = segments_left;
        } else if kind == FRAGMENT {
            h[3] = segments_left; // the low byte of offset and M: 1 = more fragments
        } else {
            h[2] = 1; // PadN over the rest of the header
            h[3] = (len - 4) as u8;
        }
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(&plain[54..]);
    let payload = (f.len() - 54) as u16;
    set_u16(&mut f, 18, payload);
    f
}

/// A table change: its name, the members as (real, weight), and the
/// reals the configuration still lists.
type TableChange = (&'static str, Vec<(u8, u32)>, Vec<u8>);

/// An IPv6 extension header to build: (next-header kind, length in 8-byte
/// units beyond the first, segments left for a routing header or the low
/// byte of the offset and M flag for a fragment header).
type ExtHeader = (u8, u8, u8);

#[test]
fn ipv6_extension_headers_are_walked_to_the_tcp_or_udp_header() {
    let mut dp = loaded(&lab_state());
    let forwarded: [(Protocol, u16, &[ExtHeader]); 4] = [
        (Protocol::Tcp, 80, &[(HOPOPTS, 0, 0)]),
        (Protocol::Udp, 53, &[(DSTOPTS, 1, 0)]),
        (Protocol::Tcp, 80, &[(HOPOPTS, 0, 0), (ROUTING, 2, 0), (DSTOPTS, 0, 0)]),
        (Protocol::Udp, 53, &[(HOPOPTS, 3, 0), (DSTOPTS, 0, 0), (ROUTING, 2, 0), (DSTOPTS, 1, 0)]),
    ];
    for (protocol, dport, exts) in forwarded {
        let f = v6_with_extensions(protocol, dport, exts);
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, 40000, dport)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "{exts:?}");
    }
    assert_eq!(vip_packets(&dp, "v6tcp"), 2);
    assert_eq!(vip_packets(&dp, "v6udp"), 2);

    let passed: [(&[ExtHeader], Reason); 5] = [
        // A fragment header behind a walked one is still a fragment.
        (&[(HOPOPTS, 0, 0), (FRAGMENT, 0, 1)], Reason::PassFragment),
        (&[(DSTOPTS, 0, 0), (ROUTING, 0, 0), (FRAGMENT, 0, 1)], Reason::PassFragment),
        // Segments left: the VIP is an intermediate hop, not the destination.
        (&[(ROUTING, 2, 1)], Reason::PassNotL4),
        (&[(HOPOPTS, 0, 0), (ROUTING, 2, 1)], Reason::PassNotL4),
        // Longer than the bound of four.
        (&[(HOPOPTS, 0, 0), (DSTOPTS, 0, 0), (ROUTING, 0, 0), (DSTOPTS, 0, 0), (DSTOPTS, 0, 0)], Reason::PassNotL4),
    ];
    for (exts, why) in passed {
        let f = v6_with_extensions(Protocol::Tcp, 80, exts);
        assert_eq!(run(&mut dp, &f, XDP_PASS, why), f, "{exts:?}");
    }

    // Extension headers past the payload: a header whose length runs over
    // the TCP header, and one cut off by the payload length.
    let mut f = v6_with_extensions(Protocol::Tcp, 80, &[(HOPOPTS, 0, 0)]);
    f[55] = 5; // 48 bytes, longer than the rest of the packet
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);
    let mut f = v6_with_extensions(Protocol::Tcp, 80, &[(HOPOPTS, 0, 0), (DSTOPTS, 0, 0)]);
    f.truncate(54 + 8 + 4);
    set_u16(&mut f, 18, 8 + 4);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);
    assert_eq!(vip_packets(&dp, "v6tcp"), 2);
}

/// Fragments are passed to the kernel, Katran's policy (see the README):
/// a later fragment has no ports, so neither its VIP (address, port,
/// protocol) nor its flow's real can be known without reassembly.
#[test]
fn fragments_of_vip_packets_are_passed_and_atomic_fragments_forwarded() {
    let mut dp = loaded(&lab_state());
    // IPv4: first fragment (MF, offset 0; ports present), a middle one
    // (MF, offset 185 x 8 bytes), the last (offset only); TCP and UDP.
    for f in [tcp4(CLIENT4, VIP4, 40000, 80), udp4(CLIENT4, VIP4, 40000, 53)] {
        for flags_offset in [0x2000u16, 0x2000 | 185, 185] {
            let mut frag = f.clone();
            set_u16(&mut frag, 20, flags_offset);
            assert_eq!(run(&mut dp, &frag, XDP_PASS, Reason::PassFragment), frag, "{flags_offset:#x}");
        }
    }
    // IPv6 Fragment header (RFC 8200 section 4.5): first (offset 0, M),
    // middle (offset 185, M), last (offset 185); 185 << 3 = 0x5c8.
    for (protocol, dport) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
        for offset_m in [0x0001u16, 0x05c9, 0x05c8] {
            let mut f = v6_with_extensions(protocol, dport, &[(FRAGMENT, 0, 0)]);
            set_u16(&mut f, 54 + 2, offset_m);
            assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassFragment), f, "{offset_m:#x}");
        }
    }
    assert_eq!(["v4tcp", "v4udp", "v6tcp", "v6udp"].iter().map(|v| vip_packets(&dp, v)).sum::<u64>(), 0);
    assert_eq!(conn(&dp, ConnEvent::Miss) + conn(&dp, ConnEvent::Syn), 0, "no connection-table entry");
    // An atomic fragment (offset 0, M clear; RFC 6946) is a whole packet:
    // balanced by its 5-tuple, its bytes untouched.
    for (protocol, dport, exts) in
        [(Protocol::Tcp, 80, &[(FRAGMENT, 0, 0)][..]), (Protocol::Udp, 53, &[(DSTOPTS, 0, 0), (FRAGMENT, 0, 0)][..])]
    {
        let f = v6_with_extensions(protocol, dport, exts);
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, 40000, dport)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "{exts:?}");
    }
    // A fragment header cut off by the payload length.
    let mut f = v6_with_extensions(Protocol::Tcp, 80, &[(FRAGMENT, 0, 0)]);
    f.truncate(54 + 4);
    set_u16(&mut f, 18, 4);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassTruncated), f);
}

#[test]
fn ttl_hop_limit_and_checksums_are_left_to_the_backend() {
    // L2 DSR is not an IP hop: nothing in the IP packet is checked or
    // changed beyond its lengths, so the backend sees what the client sent.
    let mut dp = loaded(&lab_state());
    for ttl in [0u8, 1] {
        let mut f = tcp4(CLIENT4, VIP4, 40000, 80);
        f[22] = ttl;
        f[24] ^= 0xff; // IPv4 header checksum now wrong
        f[14 + 20 + 16] ^= 0xff; // and the TCP checksum
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 40000, 80)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "TTL {ttl}");
        let mut f = udp6(CLIENT6, VIP6, 40000, 53);
        f[21] = ttl;
        f[54 + 6] ^= 0xff; // UDP checksum
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, 40000, 53)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want, "hop limit {ttl}");
    }
}

// ---- connection table ---------------------------------------------------------

/// A TCP SYN (no ACK) from the client to VIP4:80.
fn syn4(sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC.0)
        .ipv4(CLIENT4.octets(), VIP4.octets(), 64)
        .tcp(sport, 80, 1, 65535)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

/// The connection-table key of a client flow to VIP4.
fn key4(sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: addr_words(CLIENT4.into()),
        dst: addr_words(VIP4.into()),
        ports: ports_word(sport.to_be(), dport.to_be()),
        proto: u32::from(proto),
    }
}

fn conn(dp: &Datapath, e: ConnEvent) -> u64 {
    dp.counters().conn_events().into_iter().find(|(x, _)| *x == e).unwrap().1.packets
}

/// The connection-table event counter of one VIP.
fn vip_conn(dp: &Datapath, name: &str, e: ConnEvent) -> u64 {
    let id = dp.applied().vips[name].vip_id;
    dp.counters().vip_conn_events(id).into_iter().find(|(x, _)| *x == e).unwrap().1.packets
}

#[test]
fn connection_table_events_are_counted_per_vip_beside_the_totals() {
    let mut dp = loaded(&lab_state());
    // v4tcp: 3 SYNs, 3 misses (other flows), 2 hits on the SYNs' entries.
    for sport in 100..103 {
        run(&mut dp, &syn4(sport), XDP_TX, Reason::Tx);
        run(&mut dp, &tcp4(CLIENT4, VIP4, sport + 1000, 80), XDP_TX, Reason::Tx);
    }
    for sport in 100..102 {
        run(&mut dp, &tcp4(CLIENT4, VIP4, sport, 80), XDP_TX, Reason::Tx);
    }
    // v6udp: 1 miss, then 4 hits.
    for _ in 0..5 {
        run(&mut dp, &udp6(CLIENT6, VIP6, 5353, 53), XDP_TX, Reason::Tx);
    }
    let want = [
        ("v4tcp", [(ConnEvent::Syn, 3), (ConnEvent::Miss, 3), (ConnEvent::Hit, 2)]),
        ("v6udp", [(ConnEvent::Syn, 0), (ConnEvent::Miss, 1), (ConnEvent::Hit, 4)]),
    ];
    for (name, events) in want {
        for (e, n) in events {
            assert_eq!(vip_conn(&dp, name, e), n, "{name} {e:?}");
        }
        assert_eq!(vip_conn(&dp, name, ConnEvent::Stale) + vip_conn(&dp, name, ConnEvent::Expired), 0);
    }
    for name in ["v4udp", "v6tcp", "sticky", "empty"] {
        assert!(ConnEvent::ALL.iter().all(|&e| vip_conn(&dp, name, e) == 0), "{name}");
    }
    for e in ConnEvent::ALL {
        assert_eq!(conn(&dp, e), vip_conn(&dp, "v4tcp", e) + vip_conn(&dp, "v6udp", e), "{e:?}: the totals are the sum");
    }
}

/// Which of reals 1..=9 a forwarded frame went to, by its destination MAC.
fn sent_to(out: &[u8]) -> u8 {
    (1..=9).find(|&i| out[0..6] == real(i).1 .0).unwrap_or_else(|| panic!("unknown MAC {:02x?}", &out[0..6]))
}

/// The Maglev pick (a real's index) among weighted `members` for `hash`.
fn maglev_pick(members: &[(u8, u32)], hash: u32) -> u8 {
    let names: Vec<String> = members.iter().map(|&(i, _)| real(i).0.to_string()).collect();
    let ms: Vec<maglev::Member> = names.iter().zip(members).map(|(n, &(_, weight))| maglev::Member { name: n, weight }).collect();
    let table = maglev::build(&ms, TABLE);
    members[table[(hash % TABLE) as usize] as usize].0
}

/// The v4tcp VIP over weighted members, established flows staying on
/// `established`, and reals `reals` known (with MACs).
fn v4tcp(members: &[(u8, u32)], established: &[u8], reals: &[u8]) -> Plan {
    let mut vip = vip("v4tcp", VIP4.into(), 80, Protocol::Tcp, 0, &[]);
    vip.members = members.iter().map(|&(i, w)| (real(i).0, w)).collect();
    vip.members.sort_unstable();
    vip.established = established.iter().map(|&i| real(i).0).collect();
    vip.established.sort_unstable();
    Plan { vips: vec![vip], reals: reals.iter().map(|&i| (real(i).0, Some(real(i).1))).collect() }
}

/// Sends one non-SYN segment of each flow (by source port) and returns
/// the real each went to.
fn send_all(dp: &mut Datapath, sports: impl IntoIterator<Item = u16>) -> BTreeMap<u16, u8> {
    sports.into_iter().map(|sport| (sport, sent_to(&run(dp, &tcp4(CLIENT4, VIP4, sport, 80), XDP_TX, Reason::Tx)))).collect()
}

/// A packet without an entry takes the Maglev pick and writes it; later
/// packets follow the entry even where the table would pick otherwise; a
/// SYN always takes a fresh pick and rewrites the entry.
#[test]
fn a_miss_writes_the_maglev_pick_entries_are_followed_and_a_syn_repicks() {
    let mut dp = loaded(&v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3]));
    let sport = 4242;
    let pick = maglev_pick(&[(1, 1), (2, 1), (3, 1)], v4_hash(CLIENT4, sport, 80));
    let misses = conn(&dp, ConnEvent::Miss);
    assert_eq!(send_all(&mut dp, [sport])[&sport], pick);
    assert_eq!(conn(&dp, ConnEvent::Miss), misses + 1);
    let entry = dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).expect("the miss wrote an entry");
    assert_eq!(u32::from(entry.real_id), dp.applied().reals[&real(pick).0].0);
    assert_eq!(entry.seen & CONN_REFERENCED, 0, "written, not yet looked up");

    // Another node's choice, or an older table's: the entry wins.
    let other = if pick == 1 { 2 } else { 1 };
    let other_gen = {
        // Any flow to `other` tells its generation.
        let s = (5000..6000).find(|&s| maglev_pick(&[(1, 1), (2, 1), (3, 1)], v4_hash(CLIENT4, s, 80)) == other).unwrap();
        send_all(&mut dp, [s]);
        dp.conn_entry(&key4(s, 80, IPPROTO_TCP)).unwrap().real_gen
    };
    let other_id = dp.applied().reals[&real(other).0].0 as u16;
    dp.set_conn_entry(&key4(sport, 80, IPPROTO_TCP), ConnEntry { real_id: other_id, real_gen: other_gen, ..ConnEntry::default() }).unwrap();
    let hits = conn(&dp, ConnEvent::Hit);
    assert_eq!(send_all(&mut dp, [sport])[&sport], other);
    assert_eq!(conn(&dp, ConnEvent::Hit), hits + 1);

    // A SYN on the same 5-tuple is a new connection: the table's pick.
    let syns = conn(&dp, ConnEvent::Syn);
    assert_eq!(sent_to(&run(&mut dp, &syn4(sport), XDP_TX, Reason::Tx)), pick);
    assert_eq!(conn(&dp, ConnEvent::Syn), syns + 1);
    assert_eq!(u32::from(dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).unwrap().real_id), dp.applied().reals[&real(pick).0].0);
}

/// 300 established flows keep their real while a real is added, one is
/// re-weighted and one drained, while new connections (SYNs) follow the
/// new table and reach the new real. A real removed from the pool loses
/// its flows (they re-pick); the other flows stay.
#[test]
fn established_flows_keep_their_real_when_the_table_changes() {
    let all = [1, 2, 3, 4];
    let mut dp = loaded(&v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3]));
    let flows = 30000..30300u16;
    let first = send_all(&mut dp, flows.clone());
    assert_eq!(first.values().collect::<std::collections::BTreeSet<_>>().len(), 3);
    // (what changed, members as (real, weight), reals in the config)
    let changes: [TableChange; 3] = [
        ("real 4 added", vec![(1, 1), (2, 1), (3, 1), (4, 1)], vec![1, 2, 3, 4]),
        ("real 1 re-weighted to 4", vec![(1, 4), (2, 1), (3, 1), (4, 1)], vec![1, 2, 3, 4]),
        ("real 2 drained", vec![(1, 4), (3, 1), (4, 1)], vec![1, 2, 3, 4]),
    ];
    for (what, members, established) in &changes {
        dp.apply(&v4tcp(members, established, &all)).unwrap();
        assert_eq!(send_all(&mut dp, flows.clone()), first, "after {what}");
        // New connections follow the new table.
        for sport in 40000..40100u16 {
            let want = maglev_pick(members, v4_hash(CLIENT4, sport, 80));
            assert_eq!(sent_to(&run(&mut dp, &syn4(sport), XDP_TX, Reason::Tx)), want, "{what}");
        }
    }
    let new_flows: Vec<u8> = (40000..40100u16).map(|s| maglev_pick(&changes[2].1, v4_hash(CLIENT4, s, 80))).collect();
    assert!(new_flows.contains(&4), "new connections reach the new real");
    assert_eq!(conn(&dp, ConnEvent::Stale), 0);

    // Real 3 leaves the configuration: its flows re-pick, the rest stay.
    let members = [(1, 4), (4, 1)];
    dp.apply(&v4tcp(&members, &[1, 2, 4], &[1, 2, 4])).unwrap();
    let after = send_all(&mut dp, flows.clone());
    let moved = first.values().filter(|&&r| r == 3).count() as u64;
    for (sport, &was) in &first {
        if was == 3 {
            assert_eq!(after[sport], maglev_pick(&members, v4_hash(CLIENT4, *sport, 80)), "flow {sport} of removed real 3");
        } else {
            assert_eq!(after[sport], was, "flow {sport} of real {was} moved when real 3 left");
        }
    }
    assert!(moved > 0);
    assert_eq!(conn(&dp, ConnEvent::Stale), moved);
}

/// A real marked down leaves the table. Under `on_marked_down = "keep"`
/// (it stays in `established`) its flows stay on it, even when the VIP
/// has no healthy real left (new flows drop); under `repick` they move.
#[test]
fn a_down_real_keeps_its_flows_under_keep_and_loses_them_under_repick() {
    let mut dp = loaded(&v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3]));
    let flows = 31000..31100u16;
    let first = send_all(&mut dp, flows.clone());
    // keep: real 1 down, out of the table, flows stay.
    dp.apply(&v4tcp(&[(2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3])).unwrap();
    assert_eq!(send_all(&mut dp, flows.clone()), first);
    // keep, and every real down: established flows still flow, new ones drop.
    dp.apply(&v4tcp(&[], &[1, 2, 3], &[1, 2, 3])).unwrap();
    assert_eq!(send_all(&mut dp, flows.clone()), first);
    run(&mut dp, &syn4(31500), XDP_DROP, Reason::DropNoBackend);
    // repick: real 1 down and out of `established`: its flows move.
    dp.apply(&v4tcp(&[(2, 1), (3, 1)], &[2, 3], &[1, 2, 3])).unwrap();
    let after = send_all(&mut dp, flows.clone());
    for (sport, &was) in &first {
        let want = if was == 1 { maglev_pick(&[(2, 1), (3, 1)], v4_hash(CLIENT4, *sport, 80)) } else { was };
        assert_eq!(after[sport], want, "flow {sport} (was on real {was})");
    }
    assert_eq!(conn(&dp, ConnEvent::Stale), first.values().filter(|&&r| r == 1).count() as u64);
    // Real 1 comes back: flows already moved stay where they went.
    dp.apply(&v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3])).unwrap();
    assert_eq!(send_all(&mut dp, flows), after);
}

/// A removed real's id, given to a new real, does not carry the old
/// real's flows to the new one: the id's generation changed, so those
/// entries re-pick from the table.
#[test]
fn a_reused_real_id_does_not_resurrect_old_flows() {
    let mut dp = loaded(&v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3]));
    let id3 = dp.applied().reals[&real(3).0].0;
    // A flow on real 3 whose pick after the change is not real 4: were the
    // old entry followed, it would reach real 4, the id's new owner.
    let sport = (32000..33000u16)
        .find(|&s| {
            let h = v4_hash(CLIENT4, s, 80);
            maglev_pick(&[(1, 1), (2, 1), (3, 1)], h) == 3 && maglev_pick(&[(1, 1), (2, 1), (4, 1)], h) != 4
        })
        .unwrap();
    send_all(&mut dp, [sport]);
    let old = dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).unwrap();
    assert_eq!(u32::from(old.real_id), id3);
    // Real 3 leaves; real 4 arrives and takes its id.
    dp.apply(&v4tcp(&[(1, 1), (2, 1)], &[1, 2], &[1, 2])).unwrap();
    dp.apply(&v4tcp(&[(1, 1), (2, 1), (4, 1)], &[1, 2, 4], &[1, 2, 4])).unwrap();
    assert_eq!(dp.applied().reals[&real(4).0].0, id3, "the id is reused");
    // The old entry is still in the table (nothing sent since), naming id3.
    assert_eq!(dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)), Some(old));
    let stale = conn(&dp, ConnEvent::Stale);
    let want = maglev_pick(&[(1, 1), (2, 1), (4, 1)], v4_hash(CLIENT4, sport, 80));
    assert_eq!(send_all(&mut dp, [sport])[&sport], want, "not real 4");
    assert_eq!(conn(&dp, ConnEvent::Stale), stale + 1, "the old entry was refused, not followed");
    let new = dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).unwrap();
    assert_eq!(u32::from(new.real_id), dp.applied().reals[&real(want).0].0);
}

/// A UDP entry idle past the VIP's timeout re-picks; a younger one is
/// followed and its hit marked (`ConnEntry::seen`: the tick of the hit,
/// referenced), stored at most once a tick. Times are jiffies modulo
/// 2^31 (the datapath's `bpf_jiffies64`), converted with the kernel's
/// tick (`fulcrum_l4::hz`).
#[test]
fn udp_entries_expire_after_the_idle_timeout() {
    let mut plan = v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3]);
    let mut udp = vip("v4udp", VIP4.into(), 53, Protocol::Udp, 0, &[1, 2, 3]);
    udp.udp_idle_timeout_ms = 30_000;
    plan.vips.push(udp);
    let mut dp = loaded(&plan);
    let sport = 5353;
    let f = udp4(CLIENT4, VIP4, sport, 53);
    let pick = sent_to(&run(&mut dp, &f, XDP_TX, Reason::Tx));
    assert_eq!(pick, maglev_pick(&[(1, 1), (2, 1), (3, 1)], v4_hash(CLIENT4, sport, 53)));
    let key = key4(sport, 53, IPPROTO_UDP);
    let written = dp.conn_entry(&key).unwrap();
    assert_eq!(written.seen & CONN_REFERENCED, 0, "written, not yet looked up");
    // User space cannot read `jiffies_64`: a new flow's first packet
    // makes the datapath write it into that flow's entry.
    let mut probe_port = 9000;
    let mut jiffies_now = |dp: &mut Datapath| {
        probe_port += 1;
        run(dp, &udp4(CLIENT4, VIP4, probe_port, 53), XDP_TX, Reason::Tx);
        dp.conn_entry(&key4(probe_port, 53, IPPROTO_UDP)).unwrap().seen
    };
    // Point the flow at another real, as an older table would have.
    let other = if pick == 1 { 2 } else { 1 };
    let other_id = dp.applied().reals[&real(other).0].0 as u16;
    let gen = {
        let s = (6000..7000).find(|&s| maglev_pick(&[(1, 1), (2, 1), (3, 1)], v4_hash(CLIENT4, s, 53)) == other).unwrap();
        run(&mut dp, &udp4(CLIENT4, VIP4, s, 53), XDP_TX, Reason::Tx);
        dp.conn_entry(&key4(s, 53, IPPROTO_UDP)).unwrap().real_gen
    };
    let now = jiffies_now(&mut dp);
    let secs = |s: u64| (s * fulcrum_l4::hz()) as u32;
    let ago = |t: u32| now.wrapping_sub(t) & CONN_SEEN_JIFFIES;
    // Within a few seconds after `now` (the test's own run time).
    let since_now = |seen: u32| conn_age(seen, now) < secs(5);

    // Idle 5 s of 30: followed, and the hit marked: seen now, referenced.
    dp.set_conn_entry(&key, ConnEntry { real_id: other_id, real_gen: gen, seen: ago(secs(5)), ..ConnEntry::default() }).unwrap();
    assert_eq!(sent_to(&run(&mut dp, &f, XDP_TX, Reason::Tx)), other);
    let hit = dp.conn_entry(&key).unwrap().seen;
    assert!(hit & CONN_REFERENCED != 0 && since_now(hit), "refreshed: {hit:#x}, now {now:#x}");
    // Seen this tick and referenced: followed; stored again only if the
    // tick moved on meanwhile.
    let fresh = jiffies_now(&mut dp) | CONN_REFERENCED;
    dp.set_conn_entry(&key, ConnEntry { real_id: other_id, real_gen: gen, seen: fresh, ..ConnEntry::default() }).unwrap();
    assert_eq!(sent_to(&run(&mut dp, &f, XDP_TX, Reason::Tx)), other);
    let after = dp.conn_entry(&key).unwrap().seen;
    assert!(after == fresh || (after & CONN_REFERENCED != 0 && conn_age(after, fresh) < secs(1)), "{after:#x} after {fresh:#x}");
    // Idle 31 s: expired, the table's pick, a new entry.
    let expired = conn(&dp, ConnEvent::Expired);
    dp.set_conn_entry(&key, ConnEntry { real_id: other_id, real_gen: gen, seen: ago(secs(31)), ..ConnEntry::default() }).unwrap();
    assert_eq!(sent_to(&run(&mut dp, &f, XDP_TX, Reason::Tx)), pick);
    assert_eq!(conn(&dp, ConnEvent::Expired), expired + 1);
    let renewed = dp.conn_entry(&key).unwrap();
    assert_eq!(u32::from(renewed.real_id), dp.applied().reals[&real(pick).0].0);
    assert!(renewed.seen & CONN_REFERENCED == 0 && since_now(renewed.seen), "{:#x}", renewed.seen);
}

/// The table holds what it is sized for, rounded up to a power of two
/// of 4-flow sets, and evicts beyond it: flows past the size still
/// forward (a miss is a Maglev pick). Filling it also checks the set hash
/// spreads one client's consecutive ports: a set left short of four
/// flows is one that fewer than four of them hashed to.
#[test]
fn the_connection_table_is_sized_at_load_and_evicts_beyond_it() {
    // 5000 flows: 1250 sets, rounded up to 2048.
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: 5000 }).unwrap();
    assert_eq!(dp.conn_capacity(), 8192);
    dp.set_self_mac(SELF_MAC).unwrap();
    dp.apply(&v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3])).unwrap();
    for sport in 1..=20000u16 {
        let out = dp.test_run(&syn4(sport), 1).unwrap();
        assert_eq!(out.action, XDP_TX);
    }
    // About 9.8 flows a set: a uniform hash leaves ~33 of 8192 ways empty.
    let live = dp.conn_entries();
    assert!(live <= 8192 && live > 8192 - 200, "{live} entries");
    assert_eq!(conn(&dp, ConnEvent::Syn), 20000);
    assert_eq!(conn(&dp, ConnEvent::WriteFailed), 0);
}

/// Eviction within a set prefers flows never looked up since their write
/// (one-packet flows, a SYN flood's) to flows that saw a second packet:
/// twenty SYNs aimed at the set of three live connections leave the three
/// alone and evict each other, and the live flows' next packets are hits.
#[test]
fn a_flood_of_one_packet_flows_evicts_its_own_entries() {
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: 1024 }).unwrap();
    dp.set_self_mac(SELF_MAC).unwrap();
    dp.apply(&v4tcp(&[(1, 1), (2, 1), (3, 1)], &[1, 2, 3], &[1, 2, 3])).unwrap();
    let set = dp.conn_set(&key4(1000, 80, IPPROTO_TCP));
    let in_set: Vec<u16> = (1000..60000u16).filter(|&s| dp.conn_set(&key4(s, 80, IPPROTO_TCP)) == set).take(23).collect();
    assert_eq!(in_set.len(), 23, "256 sets: about 230 of these ports hash to each");
    let (live, flood) = in_set.split_at(3);
    for &sport in live {
        run(&mut dp, &syn4(sport), XDP_TX, Reason::Tx);
        run(&mut dp, &tcp4(CLIENT4, VIP4, sport, 80), XDP_TX, Reason::Tx);
    }
    assert_eq!(dp.counters().evictions(), 0, "three flows in an empty set");
    for &sport in flood {
        run(&mut dp, &syn4(sport), XDP_TX, Reason::Tx);
    }
    // The first flood SYN took the free way, each later one evicted.
    assert_eq!(dp.counters().evictions(), 19);
    assert_eq!(dp.counters().vip_evictions(dp.applied().vips["v4tcp"].vip_id), 19);
    for &sport in live {
        assert!(dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).is_some(), "live flow {sport} evicted by the flood");
    }
    // The flood shared the fourth way: only its newest flow is left.
    let kept: Vec<u16> = flood.iter().copied().filter(|&s| dp.conn_entry(&key4(s, 80, IPPROTO_TCP)).is_some()).collect();
    assert_eq!(kept, [flood[19]]);
    let (hits, misses) = (conn(&dp, ConnEvent::Hit), conn(&dp, ConnEvent::Miss));
    for &sport in live {
        run(&mut dp, &tcp4(CLIENT4, VIP4, sport, 80), XDP_TX, Reason::Tx);
    }
    assert_eq!((conn(&dp, ConnEvent::Hit), conn(&dp, ConnEvent::Miss)), (hits + 3, misses));
    // A fourth live flow takes the flood's way; a fifth, with every way
    // referenced, evicts one live flow (the least recently used, to the
    // tick: `ConnEntry::seen`).
    for &sport in &flood[..2] {
        run(&mut dp, &syn4(sport), XDP_TX, Reason::Tx);
        run(&mut dp, &tcp4(CLIENT4, VIP4, sport, 80), XDP_TX, Reason::Tx);
    }
    let gone: Vec<u16> = live.iter().chain(&flood[..2]).copied().filter(|&s| dp.conn_entry(&key4(s, 80, IPPROTO_TCP)).is_none()).collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(dp.counters().evictions(), 21, "the flood's last flow, then a live one");
    // A SYN of a flow already in the set rewrites its way: no eviction.
    run(&mut dp, &syn4(flood[1]), XDP_TX, Reason::Tx);
    assert_eq!(dp.counters().evictions(), 21);
}

/// Each address family has its own table of `conn_table_size` flows
/// (`CONN_TABLE_V4` with 16-byte keys, `CONN_TABLE_V6`): IPv6 flows past
/// the size evict IPv6 flows, never IPv4 ones, and `conn_entry` finds each
/// family's entries under the same `FlowKey` form.
#[test]
fn each_family_has_its_own_connection_table_of_the_configured_size() {
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: 4096 }).unwrap();
    dp.set_self_mac(SELF_MAC).unwrap();
    dp.apply(&lab_state()).unwrap();
    for sport in 1..=100u16 {
        run(&mut dp, &syn4(sport), XDP_TX, Reason::Tx);
    }
    for sport in 1..=10000u16 {
        run(&mut dp, &tcp6(CLIENT6, VIP6, sport, 80), XDP_TX, Reason::Tx);
    }
    let live = dp.conn_entries();
    assert!(live <= 100 + 4096 && live > 100 + 1000, "{live} entries");
    for sport in 1..=100u16 {
        assert!(dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).is_some(), "IPv4 flow {sport} evicted by IPv6 flows");
    }
    let key6 = |sport: u16| FlowKey {
        src: addr_words(CLIENT6.into()),
        dst: addr_words(VIP6.into()),
        ports: ports_word(sport.to_be(), 80u16.to_be()),
        proto: u32::from(IPPROTO_TCP),
    };
    assert!(dp.conn_entry(&key6(10000)).is_some());
    // The most recent IPv6 flows are kept, the oldest evicted: an old
    // flow stays only in a set that fewer than four later flows hashed to
    // (about 1% of them at ~9.8 flows a set).
    let oldest_kept = (1..=100u16).filter(|&s| dp.conn_entry(&key6(s)).is_some()).count();
    assert!(oldest_kept <= 10, "{oldest_kept} of the 100 oldest IPv6 flows kept");
    assert_eq!(conn(&dp, ConnEvent::Syn), 100);
    assert_eq!(conn(&dp, ConnEvent::Miss), 10000);
    assert_eq!(conn(&dp, ConnEvent::WriteFailed), 0);
}

/// A VIP whose VRRP instance is BACKUP here is passed to the kernel, not
/// forwarded; becoming MASTER is a flag flip, and its flows resume.
#[test]
fn a_standby_vip_is_passed_until_this_node_is_master() {
    let mut state = lab_state();
    state.vips[0].flags |= fulcrum_common::VIP_F_STANDBY;
    let mut dp = loaded(&state);
    let f = tcp4(CLIENT4, VIP4, 2222, 80);
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotMaster), f);
    assert_eq!(vip_packets(&dp, "v4tcp"), 0);
    state.vips[0].flags &= !fulcrum_common::VIP_F_STANDBY;
    assert_eq!(dp.apply(&state).unwrap().vips_written, 1);
    let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 2222, 80)));
    assert_eq!(run(&mut dp, &f, XDP_TX, Reason::Tx), want);
}

// ---- IPIP / IP6IP6, ICMP, decap ---------------------------------------------

/// The outer source prefixes of the IPIP tests.
const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 0);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 7, 0, 0, 0, 0, 0);
const MTU: u16 = 1500;

/// Routed reals: IPv4 198.18.5.1i, IPv6 fd00:18:5::1i, all reached via
/// the router's MAC.
const ROUTER_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);

fn routed4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 5, 10 + i))
}

fn routed6(i: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 5, 0, 0, 0, 0, 0x10 + u16::from(i)))
}

fn ipip_vip(name: &str, address: IpAddr, reals: &[IpAddr]) -> PlanVip {
    let mut members: Vec<(IpAddr, u32)> = reals.iter().map(|&a| (a, 1)).collect();
    members.sort_unstable();
    PlanVip {
        name: name.into(),
        key: VipKey::new(address, 80, IPPROTO_TCP),
        flags: VIP_F_IPIP,
        table_size: TABLE,
        established: members.iter().map(|&(a, _)| a).collect(),
        members,
        udp_idle_timeout_ms: UDP_IDLE_MS,
        vlan: 0,
    }
}

fn ipip_state() -> Plan {
    let v4: Vec<IpAddr> = (1..=3).map(routed4).collect();
    let v6: Vec<IpAddr> = (1..=3).map(routed6).collect();
    Plan {
        vips: vec![ipip_vip("ipip4", VIP4.into(), &v4), ipip_vip("ipip6", VIP6.into(), &v6)],
        reals: v4.iter().chain(&v6).map(|&a| (a, Some(ROUTER_MAC))).collect(),
    }
}

fn loaded_ipip() -> Datapath {
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: CONN_TABLE }).expect("loading the XDP program (run as root)");
    dp.set_node(&ipip_node()).unwrap();
    dp.apply(&ipip_state()).unwrap();
    dp
}

fn ipip_node() -> NodeSettings {
    NodeSettings { mtu: MTU, ipip_source_v4: Some((SRC4, 24)), ipip_source_v6: Some((SRC6, 112)), ..NodeSettings::new(SELF_MAC) }
}

/// The real Maglev picks among `reals` for `hash`.
fn maglev_real(reals: &[IpAddr], hash: u32) -> IpAddr {
    let mut sorted = reals.to_vec();
    sorted.sort_unstable();
    let names: Vec<String> = sorted.iter().map(ToString::to_string).collect();
    let members: Vec<maglev::Member> = names.iter().map(|n| maglev::Member { name: n, weight: 1 }).collect();
    sorted[maglev::build(&members, TABLE)[(hash % TABLE) as usize] as usize]
}

/// The Internet checksum (RFC 1071) of `bytes`: 0 over data that
/// includes a correct checksum.
fn inet_checksum(bytes: &[u8], mut sum: u32) -> u16 {
    for chunk in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMPv6 pseudo-header's sum (RFC 8200 section 8.1).
fn pseudo6(src: &[u8], dst: &[u8], len: usize) -> u32 {
    let mut sum = 0u32;
    for w in src.chunks(2).chain(dst.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    sum + len as u32 + 58
}

fn tcp4_sized(sport: u16, ip_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; ip_len - 40];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC.0)
        .ipv4(CLIENT4.octets(), VIP4.octets(), 64)
        .tcp(sport, 80, 1, 65535)
        .ack(1)
        .write(&mut out, &payload)
        .unwrap();
    out
}

fn tcp6_sized(sport: u16, ip_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; ip_len - 60];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC.0)
        .ipv6(CLIENT6.octets(), VIP6.octets(), 64)
        .tcp(sport, 80, 1, 65535)
        .ack(1)
        .write(&mut out, &payload)
        .unwrap();
    out
}

#[test]
fn ipv4_vip_packets_are_encapsulated_in_ipip_to_the_maglev_real() {
    let mut dp = loaded_ipip();
    let reals: Vec<IpAddr> = (1..=3).map(routed4).collect();
    let mut sources = std::collections::BTreeSet::new();
    for sport in [1024u16, 40000, 51515, 65535] {
        let input = tcp4(CLIENT4, VIP4, sport, 80);
        let out = run(&mut dp, &input, XDP_TX, Reason::Tx);
        let hash = v4_hash(CLIENT4, sport, 80);
        assert_eq!(out.len(), input.len() + 20);
        assert_eq!(out[0..6], ROUTER_MAC.0, "to the next hop");
        assert_eq!(out[6..12], SELF_MAC.0);
        assert_eq!(out[12..14], [0x08, 0x00]);
        let outer = &out[14..34];
        assert_eq!(outer[0], 0x45);
        assert_eq!(outer[1], input[15], "TOS copied");
        assert_eq!(u16::from_be_bytes([outer[2], outer[3]]) as usize, input.len() - 14 + 20);
        assert_eq!(outer[4..6], input[18..20], "identification copied");
        assert_eq!(outer[6..8], [0x40, 0], "DF copied from the inner packet, no fragment");
        assert_eq!(outer[8], 64, "TTL");
        assert_eq!(outer[9], 4, "protocol IPIP");
        assert_eq!(inet_checksum(outer, 0), 0, "header checksum");
        // Source: 198.18.7.0/24, host byte = the flow hash's top byte
        // (prefix | (hash & host mask) on raw network-order words).
        assert_eq!(outer[12..16], [198, 18, 7, (hash >> 24) as u8]);
        sources.insert(outer[15]);
        let IpAddr::V4(real) = maglev_real(&reals, hash) else { unreachable!() };
        assert_eq!(outer[16..20], real.octets());
        assert_eq!(out[34..], input[14..], "inner packet untouched");
        // The flow's next packet takes the short established path (its
        // entry now holds the VIP's facts): the same bytes.
        let hits = conn(&dp, ConnEvent::Hit);
        assert_eq!(run(&mut dp, &input, XDP_TX, Reason::Tx), out, "established, sport {sport}");
        assert_eq!(conn(&dp, ConnEvent::Hit), hits + 1);
    }
    assert!(sources.len() > 1, "flows get different outer sources: {sources:?}");
}

#[test]
fn ipv6_vip_packets_are_encapsulated_in_ip6ip6_to_the_maglev_real() {
    let mut dp = loaded_ipip();
    let reals: Vec<IpAddr> = (1..=3).map(routed6).collect();
    for sport in [1024u16, 40000, 51515] {
        let mut input = tcp6(CLIENT6, VIP6, sport, 80);
        input[14] = 0x6b; // traffic class 0xb0
        input[15] = 0x01; // and a flow label the outer header must not copy
        let out = run(&mut dp, &input, XDP_TX, Reason::Tx);
        let hash = v6_hash(CLIENT6, sport, 80);
        assert_eq!(out.len(), input.len() + 40);
        assert_eq!(out[0..6], ROUTER_MAC.0);
        assert_eq!(out[12..14], [0x86, 0xdd]);
        let outer = &out[14..54];
        let vtc = u32::from_be_bytes(outer[0..4].try_into().unwrap());
        assert_eq!(vtc, 6 << 28 | 0xb0 << 20 | (hash & 0xfffff), "version, traffic class copied, flow label from the hash");
        assert_eq!(u16::from_be_bytes([outer[4], outer[5]]) as usize, input.len() - 14);
        assert_eq!(outer[6], 41, "next header IPv6");
        assert_eq!(outer[7], 64, "hop limit");
        let mut src = SRC6.octets();
        src[14] = (hash >> 16) as u8;
        src[15] = (hash >> 24) as u8;
        assert_eq!(outer[8..24], src, "fd00:18:7::/112 with the hash's upper half in the host bits");
        let IpAddr::V6(real) = maglev_real(&reals, hash) else { unreachable!() };
        assert_eq!(outer[24..40], real.octets());
        assert_eq!(out[54..], input[14..], "inner packet untouched");
    }
}

/// `loaded_ipip` with the IPv4 VIP on VLAN 200 (0xc8).
fn loaded_ipip_vlan200() -> Datapath {
    let mut plan = ipip_state();
    for v in plan.vips.iter_mut().filter(|v| v.key.addr == addr_words(VIP4.into())) {
        v.vlan = 200;
    }
    loaded_with_node(&plan, &ipip_node())
}

/// IPIP is the VIP's own delivery to its real, not a router hop (RFC 2003
/// section 3.1 decrements the inner TTL only when encapsulating "as part
/// of forwarding"): the outer header gets a fresh TTL / hop limit of 64
/// and a correct checksum; the inner packet, TTL 0 or 1 and bad checksums
/// included, is carried unchanged for the real to judge.
#[test]
fn ipip_carries_inner_ttl_0_or_1_and_bad_checksums_unchanged_under_a_fresh_outer_header() {
    let mut dp = loaded_ipip();
    for ttl in [0u8, 1] {
        let mut input = tcp4(CLIENT4, VIP4, 40000, 80);
        input[22] = ttl;
        input[24] ^= 0xff; // the inner IPv4 header checksum now wrong
        input[14 + 20 + 16] ^= 0xff; // and the TCP checksum
        let out = run(&mut dp, &input, XDP_TX, Reason::Tx);
        assert_eq!(out[14 + 8], 64, "outer TTL");
        assert_eq!(inet_checksum(&out[14..34], 0), 0, "outer header checksum");
        assert_eq!(out[34..], input[14..], "inner packet as sent, TTL {ttl}");

        let mut input = tcp6(CLIENT6, VIP6, 40000, 80);
        input[21] = ttl;
        input[54 + 16] ^= 0xff; // TCP checksum
        let out = run(&mut dp, &input, XDP_TX, Reason::Tx);
        assert_eq!(out[14 + 7], 64, "outer hop limit");
        assert_eq!(out[54..], input[14..], "inner packet as sent, hop limit {ttl}");
    }
}

#[test]
fn a_vlan_tag_is_kept_outside_the_outer_header() {
    let mut dp = loaded_ipip_vlan200();
    let plain = tcp4(CLIENT4, VIP4, 40000, 80);
    let mut input = plain[..12].to_vec();
    input.extend_from_slice(&[0x81, 0x00, 0x00, 0xc8]);
    input.extend_from_slice(&plain[12..]);
    let out = run(&mut dp, &input, XDP_TX, Reason::Tx);
    assert_eq!(out[12..18], [0x81, 0x00, 0x00, 0xc8, 0x08, 0x00]);
    assert_eq!(out[18], 0x45);
    assert_eq!(out[27], 4);
    assert_eq!(out[38..], input[18..]);
}

#[test]
fn a_packet_that_fits_the_mtu_only_unencapsulated_gets_icmp_fragmentation_needed() {
    let mut dp = loaded_ipip();
    // 1480 + 20 = the MTU: still fits.
    let fits = tcp4_sized(40000, 1480);
    let out = run(&mut dp, &fits, XDP_TX, Reason::Tx);
    assert_eq!(out.len() - 14, usize::from(MTU));
    // One byte more: ICMP type 3 code 4 back to the client, from the VIP.
    let input = tcp4_sized(40000, 1481);
    let out = run(&mut dp, &input, XDP_TX, Reason::IcmpTooBig);
    assert_eq!(out.len(), 14 + 576);
    assert_eq!(out[0..6], CLIENT_MAC, "back to the sender");
    assert_eq!(out[6..12], SELF_MAC.0);
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 576);
    assert_eq!((ip[8], ip[9]), (64, 1));
    assert_eq!(inet_checksum(ip, 0), 0);
    assert_eq!(ip[12..16], VIP4.octets());
    assert_eq!(ip[16..20], CLIENT4.octets());
    let icmp = &out[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "fragmentation needed and DF set");
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), MTU - 20, "next-hop MTU: room for the inner packet");
    assert_eq!(inet_checksum(icmp, 0), 0, "ICMP checksum over the 556-byte message");
    assert_eq!(icmp[8..], input[14..14 + 548], "quotes the first 548 bytes");

    // Without DF, no error may be sent and XDP cannot fragment: dropped.
    let mut no_df = input.clone();
    no_df[20] &= !0x40;
    run(&mut dp, &no_df, XDP_DROP, Reason::DropTooBig);
}

#[test]
fn an_ipv6_packet_too_big_to_encapsulate_gets_packet_too_big() {
    let mut dp = loaded_ipip();
    run(&mut dp, &tcp6_sized(40000, 1460), XDP_TX, Reason::Tx);
    let input = tcp6_sized(40000, 1461);
    let out = run(&mut dp, &input, XDP_TX, Reason::IcmpTooBig);
    assert_eq!(out.len(), 14 + 1280, "the minimum MTU, RFC 4443 section 2.4(c)");
    assert_eq!(out[0..6], CLIENT_MAC);
    let ip = &out[14..54];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 1240);
    assert_eq!((ip[6], ip[7]), (58, 64));
    assert_eq!(ip[8..24], VIP6.octets());
    assert_eq!(ip[24..40], CLIENT6.octets());
    let icmp = &out[54..];
    assert_eq!((icmp[0], icmp[1]), (2, 0));
    assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), u32::from(MTU) - 40);
    assert_eq!(inet_checksum(icmp, pseudo6(&ip[8..24], &ip[24..40], icmp.len())), 0, "checksum with the pseudo-header");
    assert_eq!(icmp[8..], input[14..14 + 1232]);
}

fn echo4(dst: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC.0)
        .ipv4(CLIENT4.octets(), dst.octets(), 3)
        .icmpv4_echo_request(0x1234, 7)
        .write(&mut out, b"ping payload")
        .unwrap();
    out
}

fn echo6(dst: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SELF_MAC.0)
        .ipv6(CLIENT6.octets(), dst.octets(), 3)
        .icmpv6_echo_request(0x1234, 7)
        .write(&mut out, b"ping payload")
        .unwrap();
    out
}

#[test]
fn echo_requests_to_a_vip_address_are_answered_from_xdp() {
    // DSR and IPIP VIPs alike: the address is what counts.
    for mut dp in [loaded(&lab_state()), loaded_ipip()] {
        let input = echo4(VIP4);
        let out = run(&mut dp, &input, XDP_TX, Reason::IcmpEchoReply);
        assert_eq!(out.len(), input.len());
        assert_eq!(out[0..6], CLIENT_MAC);
        assert_eq!(out[6..12], SELF_MAC.0);
        let ip = &out[14..34];
        assert_eq!(ip[8], 64, "a fresh TTL");
        assert_eq!(ip[12..16], VIP4.octets());
        assert_eq!(ip[16..20], CLIENT4.octets());
        assert_eq!(inet_checksum(ip, 0), 0);
        let icmp = &out[34..];
        assert_eq!(icmp[0], 0, "echo reply");
        assert_eq!(inet_checksum(icmp, 0), 0, "checksum updated");
        assert_eq!(icmp[4..], input[38..], "identifier, sequence and data echoed");

        let input = echo6(VIP6);
        let out = run(&mut dp, &input, XDP_TX, Reason::IcmpEchoReply);
        let ip = &out[14..54];
        assert_eq!(ip[7], 64);
        assert_eq!(ip[8..24], VIP6.octets());
        assert_eq!(ip[24..40], CLIENT6.octets());
        let icmp = &out[54..];
        assert_eq!(icmp[0], 129);
        assert_eq!(inet_checksum(icmp, pseudo6(&ip[8..24], &ip[24..40], icmp.len())), 0);
        assert_eq!(icmp[4..], input[58..]);

        // Not a VIP address, or not to our MAC: the kernel's business.
        let other = echo4(Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(run(&mut dp, &other, XDP_PASS, Reason::PassNotVip), other);
        let broadcast = to_mac(&echo4(VIP4), [0xff; 6]);
        assert_eq!(run(&mut dp, &broadcast, XDP_PASS, Reason::PassNotForUs), broadcast);
        let other6 = echo6(CLIENT6);
        assert_eq!(run(&mut dp, &other6, XDP_PASS, Reason::PassNotVip), other6);
    }
}

#[test]
fn a_standby_vip_address_does_not_answer_echo() {
    let mut plan = lab_state();
    for v in &mut plan.vips {
        v.flags |= fulcrum_common::VIP_F_STANDBY;
    }
    let mut dp = loaded(&plan);
    let input = echo4(VIP4);
    assert_eq!(run(&mut dp, &input, XDP_PASS, Reason::PassNotVip), input);
}

fn decap_counter(decap: &Decap, r: DecapReason) -> u64 {
    decap.counters().into_iter().find(|(x, _)| *x == r).unwrap().1.packets
}

fn decap_run(decap: &mut Decap, frame: &[u8], why: DecapReason) -> Vec<u8> {
    let before = decap_counter(decap, why);
    let out = decap.test_run(frame).unwrap();
    assert_eq!(out.action, XDP_PASS);
    assert_eq!(decap_counter(decap, why), before + 1, "{why:?}");
    out.frame
}

#[test]
fn decap_strips_the_outer_header_of_vip_packets_only() {
    let mut dp = loaded_ipip();
    let mut decap = Decap::load().expect("loading the decap program (run as root)");
    decap.add_vip(VIP4.into()).unwrap();
    decap.add_vip(VIP6.into()).unwrap();
    for input in [tcp4(CLIENT4, VIP4, 40000, 80), tcp6(CLIENT6, VIP6, 40000, 80)] {
        let tunnelled = run(&mut dp, &input, XDP_TX, Reason::Tx);
        let out = decap_run(&mut decap, &tunnelled, DecapReason::Decapsulated);
        assert_eq!(out[..12], tunnelled[..12], "Ethernet addresses as received");
        assert_eq!(out[12..], input[12..], "the inner packet, exactly as the client sent it");
    }
    // VLAN-tagged: the tag stays.
    let plain = tcp4(CLIENT4, VIP4, 40001, 80);
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0xc8]);
    tagged.extend_from_slice(&plain[12..]);
    let tunnelled = run(&mut loaded_ipip_vlan200(), &tagged, XDP_TX, Reason::Tx);
    let out = decap_run(&mut decap, &tunnelled, DecapReason::Decapsulated);
    assert_eq!(out[12..], tagged[12..]);

    // Not tunnelled, or not for a VIP, or cut short: untouched.
    let plain = tcp4(CLIENT4, VIP4, 40000, 80);
    assert_eq!(decap_run(&mut decap, &plain, DecapReason::PassNotTunnel), plain);
    let mut decap_other = Decap::load().unwrap();
    decap_other.add_vip(IpAddr::from([198, 18, 9, 9])).unwrap();
    let tunnelled = run(&mut dp, &plain, XDP_TX, Reason::Tx);
    assert_eq!(decap_run(&mut decap_other, &tunnelled, DecapReason::PassNotVip), tunnelled);
    let short = &tunnelled[..14 + 20 + 10];
    assert_eq!(decap_run(&mut decap, short, DecapReason::PassTruncated), short);
    // The outer total length claims more than the frame holds.
    let cut = &tunnelled[..tunnelled.len() - 4];
    assert_eq!(decap_run(&mut decap, cut, DecapReason::PassTruncated), cut);
    // Outer options: fulcrum never sends them.
    let mut options = tunnelled.clone();
    options[14] = 0x46;
    assert_eq!(decap_run(&mut decap, &options, DecapReason::PassMalformed), options);
}

/// A burst of plans becomes few applies: plans submitted while an apply
/// runs replace each other, and the last one is what the maps hold.
#[test]
fn the_writer_coalesces_a_burst_into_few_applies() {
    use std::time::{Duration, Instant};
    let mut writer = fulcrum_l4::Writer::spawn(Datapath::load().unwrap()).unwrap();
    const BURST: u64 = 50;
    let mut last = 0;
    for i in 0..BURST {
        // Alternate the member sets so every apply really rebuilds 16
        // tables of 251 slots: each takes far longer than one submit.
        let mut plan = many_vips(16);
        if i % 2 == 1 {
            for v in &mut plan.vips {
                v.members.retain(|&(a, _)| a != real(2).0);
            }
        }
        last = writer.submit(plan, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = writer.status();
        if status.applied_generation == last {
            break status;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.applies < BURST / 2, "{} applies for {BURST} plans", status.applies);
    // The last plan (odd index: real 2 left out) is what the maps hold.
    assert!(status.applied.vips["vip0"].slots.iter().all(|&(a, _)| a != real(2).0));
    drop(writer.shutdown());
}

/// Removes the namespace it names when dropped, on every exit path.
struct TempNetns(String);

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Attaching turns the interface's receive VLAN offload off, so tags
/// reach the program in the frame; detaching turns it back on.
#[test]
fn attach_turns_receive_vlan_offload_off_and_detach_restores_it() {
    let ns = TempNetns(format!("fdp-vlan-{}", std::process::id()));
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "add", "bal0", "type", "veth", "peer", "name", "bal1"]);
    ip(&["-n", &ns.0, "link", "set", "bal0", "up"]);
    ip(&["-n", &ns.0, "link", "set", "bal1", "up"]);
    fulcrum_lab::in_netns(&ns.0, || {
        use fulcrum_l4::ethtool::rx_vlan_offload;
        assert!(rx_vlan_offload("bal0").unwrap(), "veth starts with receive VLAN offload on");
        let mut dp = loaded(&lab_state());
        dp.attach("bal0").unwrap();
        assert!(!rx_vlan_offload("bal0").unwrap(), "off while attached");
        dp.detach().unwrap();
        assert!(rx_vlan_offload("bal0").unwrap(), "restored at detach");
        // Already off: left off, and not turned on at detach.
        fulcrum_l4::ethtool::set_rx_vlan_offload("bal0", false).unwrap();
        dp.attach("bal0").unwrap();
        drop(dp);
        assert!(!rx_vlan_offload("bal0").unwrap());
        assert!(rx_vlan_offload("nonexistent0").is_err());
    })
    .unwrap();
}

// ---- ICMP too-big about a VIP flow ------------------------------------------

/// A router on the path between a real and the client.
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 9, 0, 0, 0, 0, 1);

/// An ICMP "fragmentation needed" (type 3 code 4, next-hop MTU 1400) from
/// the router to `dst`, quoting `quoted` (IP header and following bytes).
fn frag_needed4(dst: Ipv4Addr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend_from_slice(quoted);
    let check = inet_checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&ROUTER4.octets());
    ip.extend_from_slice(&dst.octets());
    let total = (ip.len() + icmp.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let check = inet_checksum(&ip, 0);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let mut f = SELF_MAC.0.to_vec();
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// An ICMPv6 "packet too big" (type 2, MTU 1400) from the router to `dst`.
fn too_big6(dst: Ipv6Addr, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x78];
    icmp.extend_from_slice(quoted);
    let check = inet_checksum(&icmp, pseudo6(&ROUTER6.octets(), &dst.octets(), icmp.len()));
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut f = SELF_MAC.0.to_vec();
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 64]);
    f.extend_from_slice(&ROUTER6.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The quote of a packet the VIP sent to the client: its IP header and
/// the first 8 bytes after it (RFC 792's minimum).
fn quote(answer: &[u8], ip_header: usize) -> Vec<u8> {
    answer[14..14 + ip_header + 8].to_vec()
}

#[test]
fn icmp_too_big_about_a_vip_flow_goes_to_the_real_of_that_flow() {
    let mut dp = loaded(&lab_state());
    // No connection-table entry: the Maglev pick the flow would get.
    for sport in [40000u16, 40001, 40002] {
        let f = frag_needed4(VIP4, 3, 4, &quote(&tcp4(VIP4, CLIENT4, 80, sport), 20));
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, sport, 80)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::IcmpTooBigForwarded), want, "sport {sport}");
        assert!(dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).is_none(), "nothing written");
        let f = frag_needed4(VIP4, 3, 4, &quote(&udp4(VIP4, CLIENT4, 53, sport), 20));
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v4_hash(CLIENT4, sport, 53)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::IcmpTooBigForwarded), want);
        let f = too_big6(VIP6, &quote(&tcp6(VIP6, CLIENT6, 80, sport), 40));
        let want = rewritten(&f, expected_mac(&[1, 2, 3], v6_hash(CLIENT6, sport, 80)));
        assert_eq!(run(&mut dp, &f, XDP_TX, Reason::IcmpTooBigForwarded), want);
    }
    assert_eq!(vip_packets(&dp, "v4tcp"), 3);
    assert_eq!(vip_packets(&dp, "v6tcp"), 3);

    // With an entry naming another real than the pick: that real.
    let mut gens = BTreeMap::new();
    for (sport, to) in send_all(&mut dp, 20000..20100) {
        gens.insert(to, dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)).unwrap().real_gen);
    }
    let sport = 40000;
    let pick = maglev_pick(&[(1, 1), (2, 1), (3, 1)], v4_hash(CLIENT4, sport, 80));
    let other = if pick == 1 { 2 } else { 1 };
    let other_id = dp.applied().reals[&real(other).0].0 as u16;
    let entry = ConnEntry { real_id: other_id, real_gen: gens[&other], ..ConnEntry::default() };
    dp.set_conn_entry(&key4(sport, 80, IPPROTO_TCP), entry).unwrap();
    let hits = conn(&dp, ConnEvent::Hit);
    let f = frag_needed4(VIP4, 3, 4, &quote(&tcp4(VIP4, CLIENT4, 80, sport), 20));
    assert_eq!(sent_to(&run(&mut dp, &f, XDP_TX, Reason::IcmpTooBigForwarded)), other);
    assert_eq!(conn(&dp, ConnEvent::Hit), hits, "ICMP errors are not flow packets");
    assert_eq!(dp.conn_entry(&key4(sport, 80, IPPROTO_TCP)), Some(entry), "the entry is left as it was");
}

#[test]
fn other_icmp_errors_are_left_to_the_kernel() {
    let mut dp = loaded(&lab_state());
    let answer = tcp4(VIP4, CLIENT4, 80, 40000);
    let mut wrong_proto = quote(&answer, 20);
    wrong_proto[9] = 1;
    let passed = [
        // Host unreachable, not "fragmentation needed".
        (frag_needed4(VIP4, 3, 1, &quote(&answer, 20)), Reason::PassNotL4),
        // The quote is no packet the VIP sent: from the client, or ICMP.
        (frag_needed4(VIP4, 3, 4, &quote(&tcp4(CLIENT4, VIP4, 40000, 80), 20)), Reason::PassNotL4),
        (frag_needed4(VIP4, 3, 4, &wrong_proto), Reason::PassNotL4),
        // Cut before the ports.
        (frag_needed4(VIP4, 3, 4, &answer[14..14 + 20 + 2]), Reason::PassNotL4),
        // From the VIP's address but another port: no VIP.
        (frag_needed4(VIP4, 3, 4, &quote(&tcp4(VIP4, CLIENT4, 81, 40000), 20)), Reason::PassNotVip),
        // To an address that is no VIP.
        (frag_needed4(CLIENT4, 3, 4, &quote(&tcp4(CLIENT4, ROUTER4, 80, 40000), 20)), Reason::PassNotVip),
        (too_big6(VIP6, &quote(&tcp6(CLIENT6, VIP6, 40000, 80), 40)), Reason::PassNotL4),
    ];
    for (f, why) in passed {
        assert_eq!(run(&mut dp, &f, XDP_PASS, why), f, "{why:?}");
    }
    // On a VIP with no backend: dropped like its flow's packets.
    let f = frag_needed4(VIP4, 3, 4, &quote(&tcp4(VIP4, CLIENT4, 8080, 40000), 20));
    run(&mut dp, &f, XDP_DROP, Reason::DropNoBackend);
    assert_eq!(reason(&dp, Reason::IcmpTooBigForwarded), 0);
}

#[test]
fn icmp_too_big_about_an_ipip_vip_flow_is_encapsulated_like_the_flow() {
    let mut dp = loaded_ipip();
    let sport = 40000;
    let flow = run(&mut dp, &tcp4(CLIENT4, VIP4, sport, 80), XDP_TX, Reason::Tx);
    let input = frag_needed4(VIP4, 3, 4, &quote(&tcp4(VIP4, CLIENT4, 80, sport), 20));
    let out = run(&mut dp, &input, XDP_TX, Reason::IcmpTooBigForwarded);
    assert_eq!(out[0..14], flow[0..14], "to the flow's next hop, from our MAC");
    assert_eq!(out[14 + 9], 4, "IPIP");
    assert_eq!(out[14 + 12..14 + 20], flow[14 + 12..14 + 20], "the flow's outer source and real");
    assert_eq!(inet_checksum(&out[14..34], 0), 0);
    assert_eq!(out[34..], input[14..], "the ICMP packet whole inside");

    let flow = run(&mut dp, &tcp6(CLIENT6, VIP6, sport, 80), XDP_TX, Reason::Tx);
    let input = too_big6(VIP6, &quote(&tcp6(VIP6, CLIENT6, 80, sport), 40));
    let out = run(&mut dp, &input, XDP_TX, Reason::IcmpTooBigForwarded);
    assert_eq!(out[14 + 6], 41, "IP6IP6");
    assert_eq!(out[14 + 8..14 + 40], flow[14 + 8..14 + 40], "the flow's outer source and real");
    assert_eq!(out[54..], input[14..]);
}

/// An established flow's packets skip the `VIPS` lookup while the entry's
/// VIP generation is current (the facts then come from `VIP_FACTS`), and
/// follow every change of the VIP: standby, VLAN, UDP idle timeout,
/// removal and return.
#[test]
fn established_flows_follow_every_vip_change_on_the_short_path() {
    let mut state = lab_state();
    let mut dp = loaded(&state);
    let f = tcp4(CLIENT4, VIP4, 7001, 80);
    let pick = sent_to(&run(&mut dp, &f, XDP_TX, Reason::Tx));
    let key = key4(7001, 80, IPPROTO_TCP);
    let entry = dp.conn_entry(&key).unwrap();
    let id = dp.applied().vips["v4tcp"].vip_id;
    assert_eq!(u32::from(entry.vip_id), id);
    assert_ne!(entry.vip_gen, 0);
    let facts = dp.vip_facts(id).unwrap();
    assert_eq!((facts.gen, facts.vlan, facts.flags), (entry.vip_gen, 0, 0));
    for _ in 0..3 {
        assert_eq!(sent_to(&run(&mut dp, &f, XDP_TX, Reason::Tx)), pick);
    }
    let after = dp.conn_entry(&key).unwrap();
    assert_eq!(ConnEntry { seen: entry.seen, ..after }, entry, "hits on current facts write nothing but their time");

    // Standby, then MASTER again: passed, then forwarded with new facts.
    state.vips[0].flags |= fulcrum_common::VIP_F_STANDBY;
    dp.apply(&state).unwrap();
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassNotMaster), f);
    state.vips[0].flags &= !fulcrum_common::VIP_F_STANDBY;
    dp.apply(&state).unwrap();
    assert_eq!(sent_to(&run(&mut dp, &f, XDP_TX, Reason::Tx)), pick);
    let refreshed = dp.conn_entry(&key).unwrap();
    assert!(refreshed.vip_gen > entry.vip_gen, "the full path refreshed the facts");
    assert_eq!(refreshed.real_id, entry.real_id, "and kept the real");

    // Onto VLAN 42 (every VIP of the address): untagged frames no longer match.
    for v in state.vips.iter_mut().filter(|v| v.key.addr == addr_words(VIP4.into())) {
        v.vlan = 42;
    }
    dp.apply(&state).unwrap();
    assert_eq!(run(&mut dp, &f, XDP_PASS, Reason::PassVlanMismatch), f);
    let tagged42 = tagged(&f, 0x8100, 42);
    assert_eq!(sent_to(&run(&mut dp, &tagged42, XDP_TX, Reason::Tx)), pick);
    assert_eq!(dp.vip_facts(id).unwrap().vlan, 42);
    assert_eq!(dp.conn_entry(&key).unwrap().vip_gen, dp.vip_facts(id).unwrap().gen, "the entry follows the new generation");
    assert_eq!(sent_to(&run(&mut dp, &tagged42, XDP_TX, Reason::Tx)), pick);

    // A UDP flow: a shorter idle timeout reaches its entry.
    let u = udp4(CLIENT4, VIP4, 7002, 53);
    let tagged_u = tagged(&u, 0x8100, 42);
    run(&mut dp, &tagged_u, XDP_TX, Reason::Tx);
    let ukey = key4(7002, 53, IPPROTO_UDP);
    let uid = u32::from(dp.conn_entry(&ukey).unwrap().vip_id);
    assert_eq!(dp.vip_facts(uid).unwrap().udp_idle_timeout_jiffies, fulcrum_l4::ms_to_jiffies(UDP_IDLE_MS));
    state.vips[1].udp_idle_timeout_ms = 2_000;
    dp.apply(&state).unwrap();
    run(&mut dp, &tagged_u, XDP_TX, Reason::Tx);
    assert_eq!(dp.vip_facts(uid).unwrap().udp_idle_timeout_jiffies, fulcrum_l4::ms_to_jiffies(2_000));
    assert_eq!(dp.conn_entry(&ukey).unwrap().vip_gen, dp.vip_facts(uid).unwrap().gen);

    // Removed: passed, though its entries stay in the table.
    let removed = state.vips.remove(0);
    dp.apply(&state).unwrap();
    assert_eq!(run(&mut dp, &tagged42, XDP_PASS, Reason::PassNotVip), tagged42);
    assert!(dp.conn_entry(&key).is_some());
    // Another VIP takes the id: the old entry's facts do not apply to it.
    state.vips.push(vip("other", VIP4.into(), 8443, Protocol::Tcp, 0, &[1, 2, 3]));
    state.vips.last_mut().unwrap().vlan = 42;
    dp.apply(&state).unwrap();
    assert_eq!(dp.applied().vips["other"].vip_id, id);
    assert_eq!(run(&mut dp, &tagged42, XDP_PASS, Reason::PassNotVip), tagged42);
    // Back (on a new id): the flow keeps its real.
    state.vips.push(removed);
    dp.apply(&state).unwrap();
    assert_eq!(sent_to(&run(&mut dp, &tagged42, XDP_TX, Reason::Tx)), pick);
}

/// `BPF_PROG_TEST_RUN` (`bpf(2)` command 10) of the program `fd` on
/// `frame`, once, from the calling thread: the verdict and the output
/// frame. `Datapath::test_run` needs the `Datapath`, which is not `Sync`
/// (it holds raw pointers into mapped table memory); this lets two
/// threads run the one loaded program at once. The attribute is
/// the command's part of `union bpf_attr` (include/uapi/linux/bpf.h).
fn test_run_fd(fd: i32, frame: &[u8]) -> (u32, Vec<u8>) {
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        /// Explicit, so it is zero: the kernel refuses a non-zero byte
        /// after the command's last field (`CHECK_ATTR`).
        _pad: u32,
    }
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid BPF_PROG_TEST_RUN attribute of its size,
    // whose buffers outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 10, &mut attr as *mut TestRunAttr, std::mem::size_of::<TestRunAttr>()) };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    out.truncate(attr.data_size_out as usize);
    (attr.retval, out)
}

/// Pins the calling thread to `cpu` (modulo the CPUs there are).
fn pin_to(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Two CPUs write one set of the connection table at once (a table of a
/// single 4-way set, 128 flows in turn): the set's lock (a bit of way 0's
/// key, `conn.rs`) must keep every entry whole and be released every time.
/// Each thread sends, per flow, a SYN (a pick and a write, or a counted
/// write failure when the other CPU holds the set) and then an ACK, which
/// takes the flow's entry if the set still holds it and the Maglev pick
/// otherwise: both are the same real, so any other real means an entry
/// that mixes two flows' writes. Afterwards the lock must be free (a new
/// SYN is written, not a write failure) and every SYN accounted for.
#[test]
fn two_cpus_writing_one_set_keep_every_entry_whole_and_release_the_lock() {
    let mut dp = Datapath::load_with(LoadOptions { conn_table_size: 4 }).expect("loading the XDP program (run as root)");
    assert_eq!(dp.conn_capacity(), 4, "one set");
    dp.set_self_mac(SELF_MAC).unwrap();
    dp.apply(&lab_state()).unwrap();
    let fd = {
        use std::os::fd::{AsFd, AsRawFd};
        dp.program_fd().unwrap().as_fd().as_raw_fd()
    };
    const ROUNDS: u16 = 300;
    const FLOWS: u16 = 64;
    let wrong: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u16)
            .map(|t| {
                s.spawn(move || {
                    pin_to(usize::from(t));
                    // Built before the loop, so the two CPUs spend their
                    // time in the program, on the one set.
                    let flows: Vec<(u16, Mac, [Vec<u8>; 2])> = (0..FLOWS)
                        .map(|i| {
                            let sport = 20_000 + t * 1000 + i;
                            let want = expected_mac(&[1, 2, 3], v4_hash(CLIENT4, sport, 80));
                            (sport, want, [syn4(sport), tcp4(CLIENT4, VIP4, sport, 80)])
                        })
                        .collect();
                    let mut wrong = Vec::new();
                    for _ in 0..ROUNDS {
                        for (sport, want, packets) in &flows {
                            for packet in packets {
                                let (action, out) = test_run_fd(fd, packet);
                                if action != XDP_TX || out[0..6] != want.0 {
                                    wrong.push(*sport);
                                }
                            }
                        }
                    }
                    wrong
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert!(wrong.is_empty(), "{} packets went elsewhere than their flow's real (flows by source port: {wrong:?})", wrong.len());

    // Each packet counts one event; a write that found the set locked
    // counts `WriteFailed` instead of its SYN or miss.
    let sent = 2 * u64::from(ROUNDS) * u64::from(FLOWS);
    let (syn, failed) = (conn(&dp, ConnEvent::Syn), conn(&dp, ConnEvent::WriteFailed));
    println!("{sent} SYNs and {sent} ACKs from two CPUs into one set: {syn} SYNs written, {failed} writes found the set locked");
    assert_eq!(ConnEvent::ALL.iter().map(|&e| conn(&dp, e)).sum::<u64>(), 2 * sent, "one event per packet");
    assert!(syn <= sent && syn + failed >= sent, "every SYN written or counted as a write failure");
    assert_eq!(reason(&dp, Reason::Tx), 2 * sent, "every packet forwarded");

    // The lock is free: a new flow's SYN is written.
    run(&mut dp, &syn4(30_000), XDP_TX, Reason::Tx);
    assert_eq!(conn(&dp, ConnEvent::Syn), syn + 1);
    assert_eq!(conn(&dp, ConnEvent::WriteFailed), failed);
    let entry = dp.conn_entry(&key4(30_000, 80, IPPROTO_TCP)).expect("the new flow's entry");
    let want = expected_mac(&[1, 2, 3], v4_hash(CLIENT4, 30_000, 80));
    let real_id = (1..=3).map(real).find(|r| r.1 == want).map(|r| dp.applied().reals[&r.0].0).unwrap();
    assert_eq!(u32::from(entry.real_id), real_id);
}
