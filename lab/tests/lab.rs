//! The lab on its own, without the balancer: the topology is wired as
//! documented, backends answer with their names and flip their health,
//! and the VIP is unreachable (nothing forwards it until fulcrum's XDP
//! program runs on the lb). Needs root, like the lab.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use fulcrum_lab::{host4, host6, in_netns, Lab, REALS, VIP4};

fn prefix(n: u32) -> String {
    format!("flab{}{n}", std::process::id() % 10000)
}

/// One HTTP/1.1 request on a new connection; returns (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn lab(n: u32) -> Lab {
    Lab::up_with_backend(&prefix(n), Path::new(env!("CARGO_BIN_EXE_fulcrum-backend")))
        .expect("lab up")
}

#[test]
fn client_reaches_every_real_directly_over_v4_and_v6() {
    let lab = lab(1);
    let client = lab.ns("client");
    for real in REALS {
        for ip in [IpAddr::from(host4(real).unwrap()), IpAddr::from(host6(real).unwrap())] {
            let (status, body) = in_netns(&client, || get(SocketAddr::new(ip, 80), "/"))
                .unwrap()
                .unwrap_or_else(|e| panic!("GET http://{ip}/: {e}"));
            assert_eq!((status, body.as_str()), (200, format!("{real}\n").as_str()), "from {ip}");
        }
    }
    lab.down().unwrap();
}

#[test]
fn health_flips_and_vip_is_not_forwarded_without_fulcrum() {
    let lab = lab(2);
    let client = lab.ns("client");
    let real2 = SocketAddr::from((host4("real2").unwrap(), 80));
    let health = || in_netns(&client, || get(real2, "/health")).unwrap().unwrap().0;
    assert_eq!(health(), 200);
    lab.set_backend_health("real2", false).unwrap();
    assert_eq!(health(), 503);
    lab.set_backend_health("real2", true).unwrap();
    assert_eq!(health(), 200);

    let vip = SocketAddr::from((VIP4, 80));
    let res = in_netns(&client, || TcpStream::connect_timeout(&vip, Duration::from_millis(500))).unwrap();
    assert!(res.is_err(), "the VIP answered without a balancer: {res:?}");

    // The reals hold the VIP but must not announce it (L2 DSR).
    let out = lab.exec("real1", &["sysctl", "-n", "net.ipv4.conf.eth0.arp_ignore"]).unwrap();
    assert_eq!(out.trim(), "1");
    lab.down().unwrap();
}

#[test]
fn down_by_prefix_removes_a_kept_lab() {
    let lab = lab(3);
    let prefix = lab.prefix().to_string();
    let pids = std::fs::read_to_string(lab.run_dir().join("pids")).unwrap();
    lab.keep();
    assert!(Path::new("/run/netns").join(format!("{prefix}-lb")).exists());
    Lab::down_by_prefix(&prefix).unwrap();
    for suffix in ["sw", "client", "lb", "real1", "real2", "real3"] {
        assert!(!Path::new("/run/netns").join(format!("{prefix}-{suffix}")).exists(), "{suffix} left");
    }
    for pid in pids.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        // The pids were our children: gone, or zombies until this test exits.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(state.is_empty() || state.contains(") Z"), "backend {pid} still runs: {state}");
    }
    // Removing it again is not an error.
    Lab::down_by_prefix(&prefix).unwrap();
}
