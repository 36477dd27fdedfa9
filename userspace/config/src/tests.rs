use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use super::*;

const FULL: &str = r#"
interface = "eth0"

[admin]
listen = "127.0.0.1:9999"

[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
maglev_table_size = 251

[[vip]]
name = "dns6"
address = "fd00::53"
port = 53
protocol = "udp"
scheduler = "ip-hash"
pool = "dns"

[[pool]]
name = "web"
[pool.health_check]
type = "http"
method = "HEAD"
path = "/health?full=1"
expect_status = 204
host = "example.org"
port = 8080
interval = "1s"
timeout = "500ms"
rise = 1
fall = 5
[[pool.backend]]
address = "198.18.0.11"
weight = 3
mac = "02:00:00:00:00:11"
[[pool.backend]]
address = "198.18.0.12"
weight = 0

[[pool]]
name = "dns"
[pool.health_check]
type = "tcp"
[[pool.backend]]
address = "fd00::11"
"#;

fn errors(text: &str) -> Vec<Diagnostic> {
    parse(text, "test.toml")
        .expect_err("the config must be rejected")
        .diagnostics()
        .to_vec()
}

/// The (line, column) of the single diagnostic whose message contains
/// `needle`.
fn position_of(diagnostics: &[Diagnostic], needle: &str) -> (usize, usize) {
    let found: Vec<_> = diagnostics
        .iter()
        .filter(|d| d.message.contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one diagnostic containing {needle:?} in {diagnostics:#?}"
    );
    (found[0].line, found[0].column)
}

/// A minimal valid config with `vip` and `pool` sections appended.
fn with(extra: &str) -> String {
    format!("interface = \"eth0\"\n{extra}")
}

const WEB_VIP: &str = r#"
[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
"#;

#[test]
fn full_config_resolves() {
    let config = parse(FULL, "full.toml").unwrap();
    let expected = Config {
        interface: "eth0".into(),
        admin: AdminConfig {
            listen: "127.0.0.1:9999".parse().unwrap(),
        },
        vips: vec![
            VipConfig {
                name: "web".into(),
                address: IpAddr::from([198, 18, 1, 1]),
                port: 80,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Maglev,
                pool: "web".into(),
                maglev_table_size: 251,
                on_marked_down: OnMarkedDown::Keep,
                udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
                forwarding: Forwarding::Dsr,
                vlan: None,
            },
            VipConfig {
                name: "dns6".into(),
                address: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x53)),
                port: 53,
                protocol: Protocol::Udp,
                scheduler: Scheduler::IpHash,
                pool: "dns".into(),
                maglev_table_size: 65537,
                on_marked_down: OnMarkedDown::Keep,
                udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
                forwarding: Forwarding::Dsr,
                vlan: None,
            },
        ],
        pools: vec![
            PoolConfig {
                name: "web".into(),
                health_check: HealthCheckConfig {
                    check: CheckKind::Http {
                        method: "HEAD".into(),
                        path: "/health?full=1".into(),
                        expect_status: 204,
                        host: Some("example.org".into()),
                    },
                    port: 8080,
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_millis(500),
                    rise: 1,
                    fall: 5,
                },
                lbmethod: LbMethod::ByRequests,
                sticky: None,
                passive: None,
                slow_start: None,
                backends: vec![
                    BackendConfig {
                        address: IpAddr::from([198, 18, 0, 11]),
                        weight: 3,
                        mac: Some(Mac([2, 0, 0, 0, 0, 0x11])),
                        port: 8080,
                        route: None,
                        status: MemberStatus::default(),
                        lbset: 0,
                    },
                    BackendConfig {
                        address: IpAddr::from([198, 18, 0, 12]),
                        weight: 0,
                        mac: None,
                        port: 8080,
                        route: None,
                        status: MemberStatus::default(),
                        lbset: 0,
                    },
                ],
            },
            PoolConfig {
                name: "dns".into(),
                health_check: HealthCheckConfig {
                    check: CheckKind::Tcp,
                    port: 53,
                    interval: DEFAULT_INTERVAL,
                    timeout: DEFAULT_TIMEOUT,
                    rise: 2,
                    fall: 3,
                },
                lbmethod: LbMethod::ByRequests,
                sticky: None,
                passive: None,
                slow_start: None,
                backends: vec![BackendConfig {
                    address: "fd00::11".parse().unwrap(),
                    weight: 1,
                    mac: None,
                    port: 53,
                    route: None,
                    status: MemberStatus::default(),
                    lbset: 0,
                }],
            },
        ],
        listeners: Vec::new(),
        l7: config.l7.clone(),
        vrrp: Vec::new(),
        datapath: DatapathSettings::default(),
    };
    assert_eq!(config, expected);
    assert_eq!(config.pool("dns"), Some(&expected.pools[1]));
    assert_eq!(Protocol::Udp.ip_proto(), 17);
    assert_eq!(Scheduler::IpHash.to_string(), "ip-hash");
}

#[test]
fn defaults_applied() {
    let text = with(&format!(
        "{WEB_VIP}
[[pool]]
name = \"web\"
[pool.health_check]
type = \"http\"
[[pool.backend]]
address = \"198.18.0.11\"
"
    ));
    let config = parse(&text, "t").unwrap();
    assert_eq!(config.admin.listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
    assert_eq!(config.vips[0].maglev_table_size, 65537);
    let pool = &config.pools[0];
    assert_eq!(
        pool.health_check,
        HealthCheckConfig {
            check: CheckKind::Http {
                method: "GET".into(),
                path: "/".into(),
                expect_status: 200,
                host: None
            },
            port: 80,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    );
    assert_eq!(pool.backends[0].weight, 1);
    assert_eq!(pool.backends[0].mac, None);
}

#[test]
fn absent_health_check_is_tcp_connect_on_the_vip_port() {
    let text = with(&format!(
        "{WEB_VIP}\n[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.11\"\n"
    ));
    let hc = &parse(&text, "t").unwrap().pools[0].health_check;
    assert_eq!((hc.check.clone(), hc.port), (CheckKind::Tcp, 80));
}

#[test]
fn syntax_error_is_positioned() {
    for (text, line, column) in [
        (
            "interface = \"eth0\"\n[admin]\nlisten = \"127.0.0.1:80\n",
            3,
            23,
        ),
        ("interface = \"eth0\"\n[admin\n", 2, 7),
        ("interface = \"eth0\"\n[[vip]]\nport = \"80\"\n", 3, 8),
    ] {
        let e = parse(text, "bad.toml").unwrap_err();
        assert_eq!(e.diagnostics().len(), 1);
        let d = &e.diagnostics()[0];
        assert_eq!((d.line, d.column), (line, column), "{d:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("bad.toml:{line}:{column}: ")),
            "{e}"
        );
    }
}

#[test]
fn unknown_field_is_positioned() {
    let text = with(&format!("{WEB_VIP}schedular = \"maglev\"\n"));
    let d = errors(&text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].line, d[0].column), (10, 1), "{d:?}");
    assert!(d[0].message.contains("schedular"), "{d:?}");
}

#[test]
fn missing_field_points_at_its_table() {
    let text = with(&WEB_VIP.replace("pool = \"web\"\n", ""));
    let d = errors(&text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("missing field `pool`"), "{d:?}");
    assert_eq!(
        (d[0].line, d[0].column),
        (3, 1),
        "the [[vip]] header: {d:?}"
    );
}

#[test]
fn unknown_enum_value_is_positioned() {
    let text = with(&WEB_VIP.replace("\"maglev\"", "\"round-robin\""));
    let d = errors(&text);
    assert_eq!((d[0].line, d[0].column), (8, 13), "{d:?}");
}

#[test]
fn every_error_is_reported_with_its_position() {
    let text = r#"interface = "eth0"

[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "nope"
maglev_table_size = 65536

[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
maglev_table_size = 70001

[[pool]]
name = "web"
[pool.health_check]
type = "http"
method = "GE T"
path = "health"
expect_status = 600
interval = "1s"
timeout = "2s"
rise = 0
fall = 0
[[pool.backend]]
address = "198.18.0.11"
weight = 257
mac = "02:00:00:00:00"
[[pool.backend]]
address = "198.18.0.11"
mac = "01:00:5e:00:00:01"

[[pool]]
name = "web"
[[pool.backend]]
address = "198.18.0.1x"

[[pool]]
name = "empty"
"#;
    let d = errors(text);
    let expect = [
        ("unknown pool \"nope\"", (9, 8)),
        ("65536 is not a prime", (10, 21)),
        (
            "duplicate VIP name \"web\" (first defined at line 4)",
            (13, 8),
        ),
        (
            "duplicate VIP 198.18.1.1 port 80/tcp: already defined at line 5",
            (14, 11),
        ),
        (
            "maglev_table_size 70001 is out of range 3..=65537",
            (19, 21),
        ),
        ("invalid HTTP method \"GE T\"", (25, 10)),
        ("invalid path \"health\"", (26, 8)),
        ("expect_status 600 is out of range 100..=599", (27, 17)),
        ("timeout 2s is longer than the interval 1s", (29, 11)),
        ("rise 0 is out of range", (30, 8)),
        ("fall 0 is out of range", (31, 8)),
        ("weight 257 is out of range 0..=256", (34, 10)),
        ("invalid MAC address \"02:00:00:00:00\"", (35, 7)),
        (
            "duplicate backend 198.18.0.11 in this pool (first defined at line 33)",
            (37, 11),
        ),
        ("multicast", (38, 7)),
        (
            "duplicate pool name \"web\" (first defined at line 22)",
            (41, 8),
        ),
        ("invalid backend address \"198.18.0.1x\"", (43, 11)),
        ("pool \"empty\" has no backends", (46, 8)),
        ("pool \"empty\" is used by no VIP", (46, 8)),
    ];
    for (needle, pos) in expect {
        assert_eq!(position_of(&d, needle), pos, "{needle}");
    }
    assert_eq!(d.len(), expect.len(), "{d:#?}");
    let mut sorted = d.clone();
    sorted.sort_by_key(|d| (d.line, d.column));
    assert_eq!(d, sorted, "diagnostics are ordered by position");
    let shown = parse(text, "lb.toml").unwrap_err().to_string();
    assert_eq!(shown.lines().count(), expect.len());
    assert!(shown.lines().all(|l| l.starts_with("lb.toml:")), "{shown}");
}

#[test]
fn check_port_must_be_given_when_vips_disagree() {
    let second = WEB_VIP
        .replace("\"web\"\naddress", "\"web-tls\"\naddress")
        .replace("80", "443");
    let text = with(&format!(
        "{WEB_VIP}{second}
[[pool]]
name = \"web\"
[pool.health_check]
type = \"tcp\"
[[pool.backend]]
address = \"198.18.0.11\"
"
    ));
    let d = errors(&text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].line, d[0].column), (22, 8));
    assert!(d[0].message.contains("80 (web), 443 (web-tls)"), "{d:?}");

    let fixed = text.replace("type = \"tcp\"", "type = \"tcp\"\nport = 8443");
    assert_eq!(parse(&fixed, "t").unwrap().pools[0].health_check.port, 8443);
}

#[test]
fn http_only_fields_are_rejected_on_tcp_checks() {
    let text = with(&format!(
        "{WEB_VIP}
[[pool]]
name = \"web\"
[pool.health_check]
type = \"tcp\"
path = \"/\"
[[pool.backend]]
address = \"198.18.0.11\"
"
    ));
    let d = errors(&text);
    assert_eq!(
        position_of(&d, "`path` applies only to type = \"http\""),
        (15, 8)
    );
}

#[test]
fn interval_shorter_than_default_timeout() {
    let text = with(&format!(
        "{WEB_VIP}
[[pool]]
name = \"web\"
[pool.health_check]
type = \"tcp\"
interval = \"200ms\"
[[pool.backend]]
address = \"198.18.0.11\"
"
    ));
    let d = errors(&text);
    assert_eq!(
        position_of(&d, "shorter than the default timeout 1s"),
        (15, 12)
    );
}

#[test]
fn bad_durations() {
    let text = with(&format!(
        "{WEB_VIP}
[[pool]]
name = \"web\"
[pool.health_check]
type = \"tcp\"
interval = \"0s\"
timeout = \"soon\"
[[pool.backend]]
address = \"198.18.0.11\"
"
    ));
    let d = errors(&text);
    assert_eq!(
        position_of(&d, "interval must be longer than zero"),
        (15, 12)
    );
    assert_eq!(position_of(&d, "invalid timeout \"soon\""), (16, 11));
}

#[test]
fn limits_of_the_datapath() {
    let mut text = String::from("interface = \"eth0\"\n");
    for i in 0..=MAX_VIPS_USIZE {
        text.push_str(&format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"198.18.1.1\"\nport = {}\nprotocol = \"tcp\"\nscheduler = \"maglev\"\npool = \"p\"\n",
            i + 1
        ));
    }
    text.push_str("[[pool]]\nname = \"p\"\n[pool.health_check]\ntype = \"tcp\"\nport = 80\n");
    for i in 0..=fulcrum_common::MAX_REALS {
        text.push_str(&format!(
            "[[pool.backend]]\naddress = \"10.{}.{}.{}\"\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let d = errors(&text);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0].message.contains("too many VIPs"), "{d:?}");
    assert_eq!(d[0].line, 2 + 7 * MAX_VIPS_USIZE + 1);
    assert!(d[1].message.contains("too many backends"), "{d:?}");
}

const MAX_VIPS_USIZE: usize = fulcrum_common::MAX_VIPS as usize;

#[test]
fn bad_interface_and_listen() {
    let text = "interface = \"a-very-long-interface-name\"\n[admin]\nlisten = \"localhost\"\n";
    let d = errors(text);
    assert_eq!(position_of(&d, "invalid interface name"), (1, 13));
    assert_eq!(position_of(&d, "invalid admin listen address"), (3, 10));
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "interface = \"eth0\" # é\n[[vip]]\nname = \"é\" \nnope = 1\n";
    let d = errors(text);
    assert_eq!((d[0].line, d[0].column), (4, 1), "{d:?}");
    let text = "interface = \"éééééééééééééééé\"";
    assert_eq!(errors(text)[0].column, 13);
}

#[test]
fn unreadable_file() {
    let e = load(Path::new("/nonexistent/fulcrum.toml")).unwrap_err();
    assert_eq!(e.diagnostics()[0].line, 0);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/fulcrum.toml: cannot read the file: "),
        "{e}"
    );
}

#[test]
fn load_reads_a_file() {
    let path =
        std::env::temp_dir().join(format!("fulcrum-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, FULL).unwrap();
    let loaded = load(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap(), parse(FULL, "x").unwrap());
}

/// Asserts that `text` is rejected with exactly `expected`, as (line,
/// column, message), in order.
fn assert_rejected(text: &str, expected: &[(usize, usize, &str)]) {
    let d = errors(text);
    let got: Vec<(usize, usize, &str)> = d
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(got, expected);
}

/// A config with one VIP per address, each on port 80/tcp, all using pool
/// "web". VIP `i`'s address is on line 4 + 7 * i, column 11.
fn vips_at(addresses: &[&str]) -> String {
    let mut text = String::from("interface = \"eth0\"\n");
    for (i, address) in addresses.iter().enumerate() {
        text.push_str(&format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"{address}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\npool = \"web\"\n"
        ));
    }
    text + "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.11\"\n"
}

/// A config with [`WEB_VIP`] and pool "web" of one backend per address.
/// Backend `i`'s address is on line 13 + 2 * i, column 11.
fn backends_at(addresses: &[&str]) -> String {
    let mut text = with(&format!("{WEB_VIP}[[pool]]\nname = \"web\"\n"));
    for address in addresses {
        text.push_str(&format!("[[pool.backend]]\naddress = \"{address}\"\n"));
    }
    text
}

/// A config whose pool "web" has a TCP check with `settings`, which start
/// on line 15.
fn with_check(settings: &str) -> String {
    with(&format!(
        "{WEB_VIP}\n[[pool]]\nname = \"web\"\n[pool.health_check]\ntype = \"tcp\"\n{settings}[[pool.backend]]\naddress = \"198.18.0.11\"\n"
    ))
}

#[test]
fn vip_in_ipv4_mapped_form_is_rejected() {
    assert_rejected(
        &vips_at(&["::ffff:198.18.1.1"]),
        &[(
            4,
            11,
            "VIP address \"::ffff:198.18.1.1\" is IPv4-mapped IPv6, which the datapath stores \
             exactly as 198.18.1.1: write the IPv4 form \"198.18.1.1\"",
        )],
    );
    // Hex and upper case are the same address.
    assert_rejected(
        &vips_at(&["::FFFF:C612:101"]),
        &[(
            4,
            11,
            "VIP address \"::FFFF:C612:101\" is IPv4-mapped IPv6, which the datapath stores \
             exactly as 198.18.1.1: write the IPv4 form \"198.18.1.1\"",
        )],
    );
}

#[test]
fn vip_in_ipv4_mapped_form_is_a_duplicate_of_its_ipv4_form() {
    let mapped = "VIP address \"::ffff:198.18.1.1\" is IPv4-mapped IPv6, which the datapath \
                  stores exactly as 198.18.1.1: write the IPv4 form \"198.18.1.1\"";
    assert_rejected(
        &vips_at(&["198.18.1.1", "::ffff:198.18.1.1"]),
        &[
            (11, 11, mapped),
            (
                11,
                11,
                "duplicate VIP 198.18.1.1 port 80/tcp: already defined at line 4",
            ),
        ],
    );
    // Fixing only the mapped spelling still leaves the duplicate: it is
    // reported in the same round.
    assert_rejected(
        &vips_at(&["::ffff:198.18.1.1", "198.18.1.1"]),
        &[
            (4, 11, mapped),
            (
                11,
                11,
                "duplicate VIP 198.18.1.1 port 80/tcp: already defined at line 4",
            ),
        ],
    );
}

#[test]
fn vip_unspecified_address_is_rejected() {
    assert_rejected(
        &vips_at(&["0.0.0.0", "::"]),
        &[
            (
                4,
                11,
                "VIP address \"0.0.0.0\" is the unspecified address: it cannot name one host",
            ),
            (
                11,
                11,
                "VIP address \"::\" is the unspecified address: it cannot name one host",
            ),
        ],
    );
}

#[test]
fn vip_multicast_address_is_rejected() {
    assert_rejected(
        &vips_at(&["224.0.0.1", "ff02::1", "::ffff:239.1.2.3"]),
        &[
            (
                4,
                11,
                "VIP address \"224.0.0.1\" is a multicast address: it cannot name one host",
            ),
            (
                11,
                11,
                "VIP address \"ff02::1\" is a multicast address: it cannot name one host",
            ),
            (
                18,
                11,
                "VIP address \"::ffff:239.1.2.3\" is a multicast address 239.1.2.3 in \
                 IPv4-mapped form: it cannot name one host",
            ),
        ],
    );
}

#[test]
fn vip_broadcast_address_is_rejected() {
    assert_rejected(
        &vips_at(&["255.255.255.255"]),
        &[(
            4,
            11,
            "VIP address \"255.255.255.255\" is the IPv4 broadcast address: it cannot name one host",
        )],
    );
}

#[test]
fn backend_unspecified_address_is_rejected() {
    assert_rejected(
        &backends_at(&["0.0.0.0", "::", "::ffff:0.0.0.0"]),
        &[
            (
                13,
                11,
                "backend address \"0.0.0.0\" is the unspecified address: it cannot name one host",
            ),
            (
                15,
                11,
                "backend address \"::\" is the unspecified address: it cannot name one host",
            ),
            (
                17,
                11,
                "backend address \"::ffff:0.0.0.0\" is the unspecified address 0.0.0.0 in \
                 IPv4-mapped form: it cannot name one host",
            ),
            (
                17,
                11,
                "duplicate backend 0.0.0.0 in this pool (first defined at line 13)",
            ),
        ],
    );
}

#[test]
fn backend_multicast_address_is_rejected() {
    assert_rejected(
        &backends_at(&["198.18.0.11", "239.255.255.250", "ff05::1:3"]),
        &[
            (
                15,
                11,
                "backend address \"239.255.255.250\" is a multicast address: it cannot name one host",
            ),
            (
                17,
                11,
                "backend address \"ff05::1:3\" is a multicast address: it cannot name one host",
            ),
        ],
    );
}

#[test]
fn backend_broadcast_address_is_rejected() {
    assert_rejected(
        &backends_at(&["255.255.255.255"]),
        &[(
            13,
            11,
            "backend address \"255.255.255.255\" is the IPv4 broadcast address: it cannot name one host",
        )],
    );
}

#[test]
fn backend_in_ipv4_mapped_form_is_rejected() {
    assert_rejected(
        &backends_at(&["198.18.0.11", "::ffff:198.18.0.11"]),
        &[
            (
                15,
                11,
                "backend address \"::ffff:198.18.0.11\" is IPv4-mapped IPv6, which the datapath \
                 stores exactly as 198.18.0.11: write the IPv4 form \"198.18.0.11\"",
            ),
            (
                15,
                11,
                "duplicate backend 198.18.0.11 in this pool (first defined at line 13)",
            ),
        ],
    );
}

const TWO_POOLS: &str = r#"interface = "eth0"
[[vip]]
name = "web"
address = "198.18.1.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
[[vip]]
name = "api"
address = "198.18.1.2"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "api"
[[pool]]
name = "web"
[[pool.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:1a"
[[pool]]
name = "api"
[[pool.backend]]
address = "198.18.0.11"
mac = "02:00:00:00:00:1b"
"#;

#[test]
fn backend_with_two_macs_in_two_pools_is_rejected() {
    assert_rejected(
        TWO_POOLS,
        &[(
            25,
            7,
            "backend 198.18.0.11 has MAC 02:00:00:00:00:1b here but 02:00:00:00:00:1a in pool \
             \"web\" (line 20): an address has one MAC over all pools",
        )],
    );
    // The same MAC twice, in any spelling, or a MAC in only one pool agree.
    let mac = Some(Mac([2, 0, 0, 0, 0, 0x1a]));
    let same = TWO_POOLS.replace("02:00:00:00:00:1b", "02:00:00:00:00:1a");
    let config = parse(&same, "t").unwrap();
    assert_eq!(
        (
            config.pools[0].backends[0].mac,
            config.pools[1].backends[0].mac
        ),
        (mac, mac)
    );
    let upper = TWO_POOLS.replace("02:00:00:00:00:1b", "02:00:00:00:00:1A");
    assert!(parse(&upper, "t").is_ok());
    let one = TWO_POOLS.replace("mac = \"02:00:00:00:00:1b\"\n", "");
    let config = parse(&one, "t").unwrap();
    assert_eq!(
        (
            config.pools[0].backends[0].mac,
            config.pools[1].backends[0].mac
        ),
        (mac, None)
    );
}

#[test]
fn health_check_interval_below_the_minimum_is_rejected() {
    assert_rejected(
        &with_check("interval = \"1ns\"\ntimeout = \"1ns\"\n"),
        &[
            (15, 12, "interval 1ns is shorter than the minimum 100ms"),
            (16, 11, "timeout 1ns is shorter than the minimum 10ms"),
        ],
    );
    assert_rejected(
        &with_check("interval = \"99ms\"\ntimeout = \"10ms\"\n"),
        &[(15, 12, "interval 99ms is shorter than the minimum 100ms")],
    );
}

#[test]
fn health_check_interval_above_the_maximum_is_rejected() {
    assert_rejected(
        &with_check("interval = \"500000000000years\"\n"),
        &[(
            15,
            12,
            "interval 500000000000years is longer than the maximum 1h",
        )],
    );
    assert_rejected(
        &with_check("interval = \"1h 1s\"\n"),
        &[(15, 12, "interval 1h 1s is longer than the maximum 1h")],
    );
}

#[test]
fn health_check_timeout_below_the_minimum_is_rejected() {
    assert_rejected(
        &with_check("timeout = \"9ms\"\n"),
        &[(15, 11, "timeout 9ms is shorter than the minimum 10ms")],
    );
}

#[test]
fn rise_and_fall_above_the_maximum_are_rejected() {
    assert_rejected(
        &with_check("rise = 101\nfall = 4294967295\n"),
        &[
            (15, 8, "rise 101 is out of range 1..=100"),
            (16, 8, "fall 4294967295 is out of range 1..=100"),
        ],
    );
}

#[test]
fn health_check_bounds_are_inclusive() {
    for (settings, interval, timeout, rise_fall) in [
        (
            "interval = \"100ms\"\ntimeout = \"10ms\"\nrise = 1\nfall = 1\n",
            MIN_INTERVAL,
            MIN_TIMEOUT,
            1,
        ),
        (
            "interval = \"1h\"\ntimeout = \"1h\"\nrise = 100\nfall = 100\n",
            MAX_INTERVAL,
            MAX_INTERVAL,
            MAX_RISE_FALL,
        ),
    ] {
        let config = parse(&with_check(settings), "t").unwrap();
        let hc = &config.pools[0].health_check;
        assert_eq!(
            (hc.interval, hc.timeout, hc.rise, hc.fall),
            (interval, timeout, rise_fall, rise_fall)
        );
    }
    assert_eq!(
        (MIN_INTERVAL, MAX_INTERVAL, MIN_TIMEOUT, MAX_RISE_FALL),
        (
            Duration::from_millis(100),
            Duration::from_secs(3600),
            Duration::from_millis(10),
            100
        )
    );
}

const L7: &str = r#"
[l7]
workers = 2

[[listener]]
name = "www"
address = "198.18.0.2:8080"
[[listener.route]]
host = "*.Example.com"
path = "/app/"
pool = "app"
preserve_host = true
[[listener.route]]
pool = "app"
proxy_pass_reverse = true

[[pool]]
name = "app"
lbmethod = "byrequests"
[[pool.backend]]
address = "198.18.0.11"
port = 8081
route = "real1"
[[pool.backend]]
address = "198.18.0.12"
port = 8081
"#;

#[test]
fn listeners_routes_and_l7_members_resolve() {
    let config = parse(&with(L7), "test.toml").unwrap();
    assert_eq!(config.l7.workers, 2);
    let listener = &config.listeners[0];
    assert_eq!((listener.name.as_str(), listener.address), ("www", "198.18.0.2:8080".parse().unwrap()));
    assert_eq!(
        listener.routes,
        vec![
            RouteConfig { host: Some("*.example.com".into()), path: "/app/".into(), pool: "app".into(), preserve_host: true, proxy_pass_reverse: false },
            RouteConfig { host: None, path: "/".into(), pool: "app".into(), preserve_host: false, proxy_pass_reverse: true },
        ]
    );
    let pool = config.pool("app").unwrap();
    assert_eq!(pool.lbmethod, LbMethod::ByRequests);
    // An L7-only pool checks the port its backends share.
    assert_eq!(pool.health_check.port, 8081);
    assert_eq!((pool.backends[0].port, pool.backends[0].route.as_deref()), (8081, Some("real1")));
    assert_eq!(pool.backends[1].route, None);
}

#[test]
fn l7_timeouts_and_limits_resolve_with_defaults() {
    let config = parse(&with(L7), "test.toml").unwrap();
    let l7 = &config.l7;
    assert_eq!(
        (l7.connect_timeout, l7.response_timeout, l7.header_read_timeout, l7.keepalive_timeout, l7.request_timeout),
        (Duration::from_secs(5), Duration::from_secs(60), Duration::from_secs(10), Duration::from_secs(15), Duration::from_secs(60))
    );
    assert_eq!((l7.max_header_size, l7.max_headers, l7.max_uri_len, l7.max_body_size), (32 * 1024, 100, 8190, 1 << 30));
    assert_eq!(l7.forwarded, ForwardedFields::XForwarded);

    let set = L7.replace(
        "workers = 2",
        "workers = 2\nconnect_timeout = \"2s\"\nresponse_timeout = \"30s\"\nheader_read_timeout = \"5s\"\n\
         keepalive_timeout = \"1m\"\nrequest_timeout = \"2m\"\ndrain_timeout = \"3s\"\nwebsocket_idle_timeout = \"5m\"\npark_after = \"1s\"\nmax_header_size = 16384\nmax_headers = 50\n\
         max_uri_len = 4096\nmax_body_size = 0\nforwarded = \"both\"\n\
         access_log = \"/var/log/fulcrum/access.log\"\naccess_log_format = \"json\"",
    );
    let config = parse(&with(&set), "test.toml").unwrap();
    let l7 = &config.l7;
    assert_eq!(
        (l7.connect_timeout, l7.response_timeout, l7.header_read_timeout, l7.keepalive_timeout, l7.request_timeout),
        (Duration::from_secs(2), Duration::from_secs(30), Duration::from_secs(5), Duration::from_secs(60), Duration::from_secs(120))
    );
    assert_eq!((l7.max_header_size, l7.max_headers, l7.max_uri_len, l7.max_body_size), (16384, 50, 4096, 0));
    assert_eq!((l7.drain_timeout, l7.websocket_idle_timeout), (Duration::from_secs(3), Duration::from_secs(300)));
    assert_eq!(l7.park_after, Duration::from_secs(1));
    assert_eq!((l7.access_log.as_deref(), l7.access_log_json), (Some(std::path::Path::new("/var/log/fulcrum/access.log")), true));
    assert_eq!(l7.forwarded, ForwardedFields::Both);

    let bad = L7.replace(
        "workers = 2",
        "workers = 2\nheader_read_timeout = \"soon\"\nkeepalive_timeout = \"0s\"\nmax_header_size = 10\n\
         max_headers = 0\nmax_uri_len = 100000\nmax_body_size = -1\nforwarded = \"x-real-ip\"\n\
         access_log = \"access.log\"\naccess_log_format = \"common\"",
    );
    let text = with(&bad);
    let d = errors(&text);
    let at = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(position_of(&d, "invalid header_read_timeout").0, at("\"soon\""));
    assert_eq!(position_of(&d, "keepalive_timeout must be longer than zero").0, at("keepalive_timeout"));
    assert_eq!(position_of(&d, "max_header_size 10 is out of range").0, at("max_header_size"));
    assert_eq!(position_of(&d, "max_headers 0 is out of range").0, at("max_headers"));
    assert_eq!(position_of(&d, "max_uri_len 100000 is out of range").0, at("max_uri_len"));
    assert_eq!(position_of(&d, "max_body_size -1 is out of range").0, at("max_body_size"));
    assert_eq!(position_of(&d, "unknown forwarded").0, at("x-real-ip"));
    assert_eq!(position_of(&d, "must be an absolute path").0, at("\"access.log\""));
    assert_eq!(position_of(&d, "unknown access_log_format").0, at("\"common\""));
    assert_eq!(d.len(), 9, "{d:#?}");
}

#[test]
fn l7_sections_are_checked_with_positions() {
    let bad = L7
        .replace("workers = 2", "workers = 0")
        .replace("198.18.0.2:8080", "198.18.0.2")
        .replace("*.Example.com", "exa mple.com")
        .replace("path = \"/app/\"", "path = \"app\"")
        .replacen("pool = \"app\"\n", "pool = \"nope\"\n", 1)
        .replace("lbmethod = \"byrequests\"", "lbmethod = \"roundrobin\"")
        .replace("route = \"real1\"", "route = \"real 1\"")
        .replacen("port = 8081", "port = 8082", 1);
    let text = with(&bad);
    let d = errors(&text);
    let at = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(position_of(&d, "workers").0, at("workers = 0"));
    assert_eq!(position_of(&d, "invalid listener address").0, at("address = \"198.18.0.2\""));
    assert_eq!(position_of(&d, "invalid host").0, at("exa mple.com"));
    assert_eq!(position_of(&d, "invalid path").0, at("path = \"app\""));
    assert_eq!(position_of(&d, "not defined").0, at("pool = \"nope\""));
    assert_eq!(position_of(&d, "unknown lbmethod").0, at("roundrobin"));
    assert_eq!(position_of(&d, "invalid route").0, at("real 1"));
    assert_eq!(position_of(&d, "do not share one port").0, at("name = \"app\""));
    assert_eq!(d.len(), 8, "{d:#?}");

    let twice = with(&format!("{L7}\n[[listener]]\nname = \"www\"\naddress = \"198.18.0.2:8080\"\n[[listener.route]]\npool = \"app\"\n"));
    let d = errors(&twice);
    assert!(position_of(&d, "duplicate listener name").0 > 20);
    assert!(position_of(&d, "duplicate listener address").0 > 20);
    let no_routes = with(&format!("{L7}\n[[listener]]\nname = \"bare\"\naddress = \"198.18.0.2:8081\"\n"));
    let d = errors(&no_routes);
    assert_eq!(position_of(&d, "has no routes").0, no_routes.lines().position(|l| l.contains("\"bare\"")).unwrap() + 1);
}

#[test]
fn every_lbmethod_resolves_by_its_apache_name() {
    for (name, method) in LbMethod::ALL {
        let config = parse(&with(&L7.replace("\"byrequests\"", &format!("{name:?}"))), "t").unwrap();
        assert_eq!(config.pool("app").unwrap().lbmethod, method, "{name}");
    }
    let text = with(&L7.replace("\"byrequests\"", "\"leastconn\""));
    let d = errors(&text);
    let line = text.lines().position(|l| l.contains("leastconn")).unwrap() + 1;
    // line:col of the value, and the message lists what is supported.
    assert_eq!(position_of(&d, "unknown lbmethod \"leastconn\"").0, line);
    assert_eq!(position_of(&d, "unknown lbmethod").1, "lbmethod = ".len() + 1);
    assert!(d[0].message.contains("\"bybusyness\", \"bytraffic\", \"byip\", \"p2c\""), "{d:#?}");
}

#[test]
fn sticky_sessions_resolve() {
    let config = parse(&with(L7), "t").unwrap();
    assert_eq!(config.pool("app").unwrap().sticky, None);
    let sticky = |settings: &str| {
        let text = with(&L7.replace("lbmethod = \"byrequests\"\n", &format!("lbmethod = \"byrequests\"\n{settings}")));
        parse(&text, "t").unwrap().pool("app").unwrap().sticky.clone().unwrap()
    };
    assert_eq!(
        sticky("stickysession = \"ROUTEID\"\n"),
        StickyConfig { cookie: "ROUTEID".into(), param: "ROUTEID".into(), nofailover: false, secure: false }
    );
    assert_eq!(
        sticky("stickysession = \"JSESSIONID|jsessionid\"\nnofailover = true\nsticky_secure = true\n"),
        StickyConfig { cookie: "JSESSIONID".into(), param: "jsessionid".into(), nofailover: true, secure: true }
    );
}

#[test]
fn sticky_sessions_are_checked_with_positions() {
    let at = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let settings = |s: &str| with(&L7.replace("lbmethod = \"byrequests\"\n", &format!("lbmethod = \"byrequests\"\n{s}")));
    for bad in ["", "|x", "x|", "a b", "a|b|c", "a;b", "a=b"] {
        let text = settings(&format!("stickysession = {bad:?}\n"));
        let d = errors(&text);
        assert_eq!(position_of(&d, "invalid stickysession").0, at(&text, "stickysession"), "{bad:?}");
        assert_eq!(position_of(&d, "invalid stickysession").1, "stickysession = ".len() + 1);
    }
    // The flags need stickysession.
    let text = settings("nofailover = true\nsticky_secure = false\n");
    let d = errors(&text);
    assert_eq!(position_of(&d, "nofailover needs stickysession").0, at(&text, "nofailover"));
    assert_eq!(position_of(&d, "sticky_secure needs stickysession").0, at(&text, "sticky_secure"));
    assert_eq!(d.len(), 2);
    // Routes: at least one, and unique within the pool.
    let text = settings("stickysession = \"ROUTEID\"\n").replace("route = \"real1\"\n", "");
    let d = errors(&text);
    assert_eq!(position_of(&d, "needs at least one backend with a route").0, at(&text, "stickysession"));
    let text = settings("stickysession = \"ROUTEID\"\n").replacen("port = 8081\n", "port = 8081\nroute = \"real1\"\n", 2);
    let text = text.replacen("route = \"real1\"\nroute = \"real1\"", "route = \"real1\"", 1);
    let d = errors(&text);
    let second = text.lines().enumerate().filter(|(_, l)| l.contains("route = \"real1\"")).nth(1).unwrap().0 + 1;
    assert_eq!(position_of(&d, "duplicate route \"real1\"").0, second);
    // Non-sticky pools may repeat routes (nothing reads them there).
    parse(&text.replace("stickysession = \"ROUTEID\"\n", ""), "t").unwrap();
}

const UDP_POOL: &str = "
[[pool]]
name = \"dns\"
[pool.health_check]
type = \"tcp\"
[[pool.backend]]
address = \"198.18.0.11\"
";

#[test]
fn connection_table_settings_default_and_resolve() {
    let config = parse(&with(&format!("{WEB_VIP}{UDP_POOL}").replace("pool = \"web\"", "pool = \"dns\"")), "t").unwrap();
    assert_eq!(config.datapath.conn_table_size, DEFAULT_CONN_TABLE_SIZE);
    assert_eq!(config.vips[0].on_marked_down, OnMarkedDown::Keep);
    assert_eq!(config.vips[0].udp_idle_timeout, Duration::from_secs(30));

    let text = with(
        "[datapath]\nconn_table_size = 65536\n\
         [[vip]]\nname = \"dns\"\naddress = \"198.18.1.1\"\nport = 53\nprotocol = \"udp\"\nscheduler = \"maglev\"\n\
         pool = \"dns\"\non_marked_down = \"repick\"\nudp_idle_timeout = \"2m\"\n",
    ) + UDP_POOL;
    let config = parse(&text, "t").unwrap();
    assert_eq!(config.datapath.conn_table_size, 65536);
    assert_eq!(config.vips[0].on_marked_down, OnMarkedDown::Repick);
    assert_eq!(config.vips[0].udp_idle_timeout, Duration::from_secs(120));
}

#[test]
fn connection_table_settings_out_of_bounds_are_positioned() {
    let text = with(
        "[datapath]\nconn_table_size = 100\n\
         [[vip]]\nname = \"dns\"\naddress = \"198.18.1.1\"\nport = 53\nprotocol = \"udp\"\nscheduler = \"maglev\"\n\
         pool = \"dns\"\nudp_idle_timeout = \"500ms\"\n\
         [[vip]]\nname = \"web\"\naddress = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\n\
         pool = \"dns\"\nudp_idle_timeout = \"10s\"\n",
    ) + UDP_POOL;
    let d = errors(&text);
    assert_eq!(position_of(&d, "conn_table_size 100 is out of range 1024..=67108864"), (3, 19));
    assert_eq!(position_of(&d, "udp_idle_timeout 500ms is shorter than the minimum 1s"), (11, 20));
    assert_eq!(position_of(&d, "applies only to protocol = \"udp\""), (19, 20));
    let d = errors(&with(&format!("{WEB_VIP}on_marked_down = \"drop\"\n{UDP_POOL}").replace("pool = \"web\"", "pool = \"dns\"")));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].message.contains("unknown variant `drop`"), "{d:#?}");
}

const VRRP: &str = r#"
[[vrrp]]
name = "vi4"
vrid = 51
priority = 150
advert_interval = "100ms"
addresses = ["198.18.1.1", "198.18.1.2/24"]
unicast_peers = ["198.18.0.3"]

[[vrrp]]
name = "v2"
interface = "eth1"
vrid = 52
version = 2
priority = 100
preempt = false
preempt_delay = "5s"
password = "secret"
addresses = ["198.18.1.3"]
"#;

#[test]
fn vrrp_instances_resolve() {
    let config = parse(&with(VRRP), "test.toml").unwrap();
    let v = &config.vrrp[0];
    assert_eq!((v.name.as_str(), v.interface.as_str(), v.vrid, v.version, v.priority), ("vi4", "eth0", 51, 3, 150));
    assert_eq!((v.advert_interval, v.preempt, v.preempt_delay), (Duration::from_millis(100), true, Duration::ZERO));
    assert_eq!(v.addresses, vec![(IpAddr::from([198, 18, 1, 1]), 32), (IpAddr::from([198, 18, 1, 2]), 24)]);
    assert_eq!(v.unicast_peers, vec![IpAddr::from([198, 18, 0, 3])]);
    let v2 = &config.vrrp[1];
    assert_eq!((v2.interface.as_str(), v2.version, v2.preempt, v2.password.as_deref()), ("eth1", 2, false, Some("secret")));
    assert_eq!(v2.preempt_delay, Duration::from_secs(5));
    assert_eq!(config.vrrp_owning(IpAddr::from([198, 18, 1, 3])).map(|v| v.name.as_str()), Some("v2"));
    assert_eq!(config.vrrp_owning(IpAddr::from([198, 18, 1, 9])), None);
}

/// `virtual_mac` is off unless asked for (keepalived's default), and must
/// be a boolean.
#[test]
fn vrrp_virtual_mac_defaults_off() {
    let config = parse(&with(VRRP), "test.toml").unwrap();
    assert!(!config.vrrp[0].virtual_mac && !config.vrrp[1].virtual_mac);
    let on = VRRP.replace("addresses = [\"198.18.1.3\"]", "addresses = [\"198.18.1.3\"]\nvirtual_mac = true");
    let config = parse(&with(&on), "test.toml").unwrap();
    assert!(!config.vrrp[0].virtual_mac && config.vrrp[1].virtual_mac);
    let bad = VRRP.replace("addresses = [\"198.18.1.3\"]", "addresses = [\"198.18.1.3\"]\nvirtual_mac = \"yes\"");
    assert!(!errors(&with(&bad)).is_empty());
    // Also for the address of an L4 VIP: the XDP datapath balances frames
    // to the instance's virtual router MAC too.
    let with_vip = format!(
        "{WEB_VIP}\n[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.11\"\n{}",
        VRRP.replace("addresses = [\"198.18.1.1\", \"198.18.1.2/24\"]", "addresses = [\"198.18.1.1\", \"198.18.1.2/24\"]\nvirtual_mac = true")
    );
    let config = parse(&with(&with_vip), "test.toml").unwrap();
    assert!(config.vrrp[0].virtual_mac);
    assert_eq!(config.vrrp_owning(config.vips[0].address).map(|v| v.name.as_str()), Some("vi4"));
}

#[test]
fn vrrp_sections_are_checked_with_positions() {
    let bad = VRRP
        .replace("vrid = 51", "vrid = 0")
        .replace("advert_interval = \"100ms\"", "advert_interval = \"105ms\"")
        .replace("\"198.18.1.2/24\"", "\"fd00::1\"")
        .replace("password = \"secret\"", "password = \"far too long\"")
        .replace("addresses = [\"198.18.1.3\"]", "addresses = [\"198.18.1.1\"]");
    let text = with(&bad);
    let d = errors(&text);
    let at = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(position_of(&d, "vrid").0, at("vrid = 0"));
    assert_eq!(position_of(&d, "whole centiseconds").0, at("105ms"));
    assert_eq!(position_of(&d, "one family").0, at("fd00::1"));
    assert_eq!(position_of(&d, "1 to 8 bytes").0, at("far too long"));
    assert_eq!(position_of(&d, "already belongs").0, at("addresses = [\"198.18.1.1\"]"));
    assert_eq!(d.len(), 5, "{d:#?}");

    let v6_v2 = with("[[vrrp]]\nname = \"x\"\nvrid = 1\nversion = 2\npriority = 1\naddresses = [\"fd00::1\"]\npassword = \"a\"\n");
    assert_eq!(position_of(&errors(&v6_v2), "IPv4 only").0, 7);
    let v3_password = with("[[vrrp]]\nname = \"x\"\nvrid = 1\npriority = 1\naddresses = [\"198.18.1.1\"]\npassword = \"a\"\n");
    assert_eq!(position_of(&errors(&v3_password), "VRRPv3 has none").0, 7);
    let same_vrid = with("[[vrrp]]\nname = \"x\"\nvrid = 1\npriority = 1\naddresses = [\"198.18.1.1\"]\n[[vrrp]]\nname = \"y\"\nvrid = 1\npriority = 1\naddresses = [\"198.18.1.2\"]\n");
    assert_eq!(position_of(&errors(&same_vrid), "already used").0, 9);
}

#[test]
fn vrrp_notify_and_tracks_resolve_and_are_checked() {
    let text = with(&format!(
        "{WEB_VIP}\n[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.11\"\n{}",
        r#"
[[vrrp]]
name = "vi4"
vrid = 51
priority = 150
addresses = ["198.18.1.1"]
notify_master = ["/usr/local/bin/notify", "master"]
[[vrrp.track]]
kind = "pool"
pool = "web"
min_up = 1
weight = -60
[[vrrp.track]]
kind = "interface"
interface = "eth0"
[[vrrp.track]]
kind = "script"
command = ["/usr/local/bin/check"]
interval = "3s"
"#
    ));
    let config = parse(&text, "test.toml").unwrap();
    let v = &config.vrrp[0];
    assert_eq!(v.notify.master.as_deref(), Some(&["/usr/local/bin/notify".to_owned(), "master".to_owned()][..]));
    assert_eq!(v.notify.backup, None);
    assert_eq!(v.track[0], TrackConfig { kind: TrackKind::Pool { pool: "web".into(), min_up: 1 }, weight: -60 });
    assert_eq!(v.track[1], TrackConfig { kind: TrackKind::Interface { name: "eth0".into() }, weight: 0 });
    assert_eq!(
        v.track[2].kind,
        TrackKind::Script { command: vec!["/usr/local/bin/check".into()], interval: Duration::from_secs(3), timeout: Duration::from_secs(1) }
    );

    let bad = text
        .replace("pool = \"web\"\nmin_up", "pool = \"nope\"\nmin_up")
        .replace("weight = -60", "weight = -300")
        .replace("[\"/usr/local/bin/notify\", \"master\"]", "[]")
        .replace("kind = \"interface\"", "kind = \"ping\"");
    let d = errors(&bad);
    let at = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(position_of(&d, "not defined").0, at("pool = \"nope\""));
    assert_eq!(position_of(&d, "weight").0, at("weight = -300"));
    assert_eq!(position_of(&d, "argument list").0, at("notify_master = []"));
    assert_eq!(position_of(&d, "unknown track kind").0, at("kind = \"ping\""));
}

/// Issue 11 item 3: "XDP program attached" and "L7 listeners up" as
/// tracked conditions.
#[test]
fn vrrp_xdp_and_l7_tracks_resolve() {
    let vrrp = r#"
[[vrrp]]
name = "vi4"
vrid = 51
priority = 150
addresses = ["198.18.1.1"]
[[vrrp.track]]
kind = "xdp"
weight = -100
[[vrrp.track]]
kind = "l7"
"#;
    let listener = "\n[[listener]]\nname = \"www\"\naddress = \"198.18.0.2:8080\"\n[[listener.route]]\npath = \"/\"\npool = \"web\"\n";
    let pool = "\n[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.11\"\n";
    let text = with(&format!("{WEB_VIP}{pool}{listener}{vrrp}"));
    let config = parse(&text, "test.toml").unwrap();
    let v = &config.vrrp[0];
    // The XDP program is where the daemon attaches it: the top-level interface.
    assert_eq!(v.track[0], TrackConfig { kind: TrackKind::Xdp { interface: "eth0".into() }, weight: -100 });
    assert_eq!(v.track[1], TrackConfig { kind: TrackKind::L7, weight: 0 });

    // No listener to check: refused where the track says "l7".
    let bad = with(&format!("{WEB_VIP}{pool}{vrrp}"));
    let d = errors(&bad);
    let at = bad.lines().position(|l| l.contains("kind = \"l7\"")).unwrap() + 1;
    assert_eq!(position_of(&d, "needs at least one [[listener]]").0, at);
}

const IPIP: &str = r#"interface = "eth0"
[datapath]
ipip_source_v4 = "198.18.7.0/24"
ipip_source_v6 = "fd00:18:7::/112"
[[vip]]
name = "web"
address = "198.18.6.1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web"
forwarding = "ipip"
[[vip]]
name = "web6"
address = "fd00:18:6::1"
port = 80
protocol = "tcp"
scheduler = "maglev"
pool = "web6"
forwarding = "ipip"
[[pool]]
name = "web"
[[pool.backend]]
address = "198.18.5.11"
mac = "02:00:00:00:00:01"
[[pool]]
name = "web6"
[[pool.backend]]
address = "fd00:18:5::11"
"#;

#[test]
fn ipip_vips_and_source_prefixes_resolve() {
    let config = parse(IPIP, "test.toml").unwrap();
    assert_eq!(config.vips[0].forwarding, Forwarding::Ipip);
    assert_eq!(config.vips[1].forwarding, Forwarding::Ipip);
    assert_eq!(config.datapath.ipip_source_v4, Some(("198.18.7.0".parse().unwrap(), 24)));
    assert_eq!(config.datapath.ipip_source_v6, Some(("fd00:18:7::".parse().unwrap(), 112)));
    let dsr = parse(&IPIP.replace("forwarding = \"ipip\"", "forwarding = \"dsr\""), "test.toml").unwrap();
    assert_eq!(dsr.vips[0].forwarding, Forwarding::Dsr);
    let default = parse(&IPIP.replace("forwarding = \"ipip\"", ""), "test.toml").unwrap();
    assert_eq!(default.vips[1].forwarding, Forwarding::Dsr);
}

#[test]
fn ipip_needs_a_source_prefix_of_the_vips_family() {
    let text = IPIP.replace("ipip_source_v4 = \"198.18.7.0/24\"\n", "");
    let d = errors(&text);
    // Line 10 is the v4 VIP's `forwarding = "ipip"`, column of its value.
    assert_eq!(position_of(&d, "needs `[datapath] ipip_source_v4`"), (11, 14));
    assert_eq!(d.len(), 1, "{d:#?}");
}

#[test]
fn ipip_backends_must_have_the_vips_family() {
    let text = IPIP.replace("address = \"fd00:18:5::11\"", "address = \"198.18.5.12\"");
    let d = errors(&text);
    assert_eq!(position_of(&d, "encapsulates IPv6 in IPv6, but backend 198.18.5.12"), (20, 14));
}

#[test]
fn ipip_source_prefixes_are_checked() {
    for (bad, needle) in [
        ("\"198.18.7.1/24\"", "host bits set"),
        ("\"198.18.7.0/4\"", "prefix length 4 is out of range 8..=32"),
        ("\"fd00::/112\"", "is not an IPv4 prefix"),
        ("\"198.18.7.0\"", "is not a prefix like"),
    ] {
        let d = errors(&IPIP.replace("\"198.18.7.0/24\"", bad));
        assert_eq!(position_of(&d, needle), (3, 18), "{bad}");
    }
    let d = errors(&IPIP.replace("\"fd00:18:7::/112\"", "\"fd00:18:7::/64\""));
    assert_eq!(position_of(&d, "prefix length 64 is out of range 96..=128"), (4, 18));
}

const SYNC: &str = r#"
[[vrrp]]
name = "vi4"
vrid = 51
priority = 150
addresses = ["198.18.1.1"]
auth_key_file = "/etc/fulcrum/vrrp.key"
[[vrrp]]
name = "vi6"
vrid = 52
priority = 150
addresses = ["fd00::1"]
auth_key = "0123456789abcdef0123456789abcdef"
[[vrrp]]
name = "other"
vrid = 53
priority = 150
addresses = ["198.18.1.3"]
[[vrrp_sync_group]]
name = "g"
instances = ["vi4", "vi6"]
"#;

#[test]
fn vrrp_sync_groups_and_hmac_keys_resolve() {
    let config = parse(&with(SYNC), "test.toml").unwrap();
    assert_eq!(config.vrrp[0].sync_group.as_deref(), Some("g"));
    assert_eq!(config.vrrp[1].sync_group.as_deref(), Some("g"));
    assert_eq!(config.vrrp[2].sync_group, None);
    assert_eq!(
        config.vrrp_sync_groups(),
        vec![crate::VrrpSyncGroup { name: "g".into(), instances: vec!["vi4".into(), "vi6".into()] }]
    );
    assert_eq!(config.vrrp[0].auth_key, Some(crate::VrrpAuthKey::File("/etc/fulcrum/vrrp.key".into())));
    assert_eq!(config.vrrp[2].auth_key, None);
    // An inline key never shows in Debug output.
    let shown = format!("{:?}", config.vrrp[1]);
    assert!(shown.contains("Inline(..)") && !shown.contains("0123456789abcdef"), "{shown}");
}

#[test]
fn vrrp_sync_groups_and_hmac_keys_are_checked() {
    let bad = with(
        &SYNC
            .replace("instances = [\"vi4\", \"vi6\"]", "instances = [\"vi4\", \"nope\"]\n[[vrrp_sync_group]]\nname = \"h\"\ninstances = [\"vi4\", \"other\"]\n[[vrrp_sync_group]]\nname = \"h\"\ninstances = [\"vi6\"]")
            .replace("0123456789abcdef0123456789abcdef", "short")
            .replace("/etc/fulcrum/vrrp.key", "vrrp.key"),
    );
    let d = errors(&bad);
    let at = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(position_of(&d, "\"nope\" is not defined"), (at("\"nope\""), 21));
    assert_eq!(position_of(&d, "already in a sync group").0, at("[\"vi4\", \"other\"]"));
    assert_eq!(position_of(&d, "duplicate vrrp sync group").0, bad.lines().collect::<Vec<_>>().iter().rposition(|l| *l == "name = \"h\"").unwrap() + 1);
    assert_eq!(position_of(&d, "at least two").0, at("instances = [\"vi6\"]"));
    assert_eq!(position_of(&d, "auth_key is 5 bytes").0, at("auth_key = \"short\""));
    assert_eq!(position_of(&d, "absolute path").0, at("auth_key_file"));
    assert!(d.iter().all(|x| !x.message.contains("short\"")), "the key is never quoted: {d:#?}");
    assert_eq!(d.len(), 6, "{d:#?}");

    let both = with(&SYNC.replace("auth_key_file = \"/etc/fulcrum/vrrp.key\"", "auth_key_file = \"/k\"\nauth_key = \"0123456789abcdef0123456789abcdef\""));
    assert_eq!(position_of(&errors(&both), "exclusive").0, at("vrid = 51") + 4);
}

/// `L7` with `pool` lines after `lbmethod` and `backend` lines after the
/// first backend's route.
fn l7_with(pool: &str, backend: &str) -> String {
    with(
        &L7.replace("lbmethod = \"byrequests\"\n", &format!("lbmethod = \"byrequests\"\n{pool}"))
            .replace("route = \"real1\"\n", &format!("route = \"real1\"\n{backend}")),
    )
}

#[test]
fn member_status_and_lbset_resolve_with_apache_syntax() {
    let status = |s: &str| parse(&l7_with("", &format!("status = {s:?}\n")), "t").unwrap().pool("app").unwrap().backends[0].status;
    let config = parse(&l7_with("", ""), "t").unwrap();
    let b = &config.pool("app").unwrap().backends;
    assert_eq!((b[0].status, b[0].lbset, b[1].lbset), (MemberStatus::default(), 0, 0));
    assert_eq!(status("+H").role, Role::HotStandby);
    assert_eq!(status("r").role, Role::HotSpare);
    let s = status("+D+N");
    assert!(s.disabled && s.draining && !s.stopped && s.role == Role::Active);
    // Apache: a sign applies to the letters after it until the next sign.
    let s = status("+DS-D");
    assert!(!s.disabled && s.stopped);
    assert_eq!(status("+SNH").letters(), "SNH");
    let lbset = parse(&l7_with("", "lbset = 99\n"), "t").unwrap();
    assert_eq!(lbset.pool("app").unwrap().backends[0].lbset, 99);
}

#[test]
fn member_status_and_lbset_are_checked_with_positions() {
    let col = "status = ".len() + 1;
    for (bad, needle) in [
        ("+E", "E (in error) is set by passive health"),
        ("+X", "'X' is not a flag"),
        ("+", "no flag"),
        ("", "no flag"),
        ("+HR", "not both"),
        ("+D H", "' ' is not a flag"),
    ] {
        let text = l7_with("", &format!("status = {bad:?}\n"));
        let d = errors(&text);
        let line = text.lines().position(|l| l.starts_with("status")).unwrap() + 1;
        assert_eq!(position_of(&d, needle), (line, col), "{bad:?}");
        assert_eq!(d.len(), 1, "{d:#?}");
    }
    let text = l7_with("", "lbset = 100\n");
    let d = errors(&text);
    let line = text.lines().position(|l| l.starts_with("lbset")).unwrap() + 1;
    assert_eq!(position_of(&d, "lbset 100 is out of range 0..=99"), (line, "lbset = ".len() + 1));
}

#[test]
fn passive_health_and_slow_start_resolve() {
    let config = parse(&l7_with("", ""), "t").unwrap();
    let pool = config.pool("app").unwrap();
    assert_eq!((&pool.passive, pool.slow_start), (&None, None));
    // Any one key turns passive checks on, with Apache's defaults.
    let config = parse(&l7_with("failonstatus = [503, 500]\n", ""), "t").unwrap();
    assert_eq!(
        config.pool("app").unwrap().passive,
        Some(PassiveConfig {
            failonstatus: vec![503, 500],
            failontimeout: false,
            error_limit: 1,
            error_window: DEFAULT_ERROR_WINDOW,
            retry: DEFAULT_RETRY,
        })
    );
    let config = parse(
        &l7_with("failontimeout = true\nerror_limit = 5\nerror_window = \"2s\"\nretry = \"30s\"\nslow_start = \"20s\"\n", ""),
        "t",
    )
    .unwrap();
    let pool = config.pool("app").unwrap();
    assert_eq!(
        pool.passive,
        Some(PassiveConfig {
            failonstatus: vec![],
            failontimeout: true,
            error_limit: 5,
            error_window: Duration::from_secs(2),
            retry: Duration::from_secs(30),
        })
    );
    assert_eq!(pool.slow_start, Some(Duration::from_secs(20)));
}

#[test]
fn passive_health_and_slow_start_are_checked_with_positions() {
    for (setting, needle) in [
        ("failonstatus = [503, 99]", "failonstatus 99 is out of range 100..=599"),
        ("failonstatus = [503, 503]", "failonstatus lists 503 twice"),
        ("error_limit = 0", "error_limit 0 is out of range 1..=32"),
        ("error_window = \"10\"", "invalid error_window"),
        ("retry = \"2h\"", "retry 2h is longer than the maximum 1h"),
        ("slow_start = \"0s\"", "slow_start must be longer than zero"),
        ("slow_start = \"1ms\"", "slow_start 1ms is shorter than the minimum 100ms"),
    ] {
        let text = l7_with(&format!("{setting}\n"), "");
        let d = errors(&text);
        let key = setting.split(' ').next().unwrap();
        let line = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
        assert_eq!(position_of(&d, needle).0, line, "{setting}");
        let value_col = position_of(&d, needle).1;
        assert!(value_col > key.len(), "{setting}: column {value_col}");
        assert_eq!(d.len(), 1, "{d:#?}");
    }
    // failonstatus of the wrong type is a TOML type error with a position.
    let text = l7_with("failonstatus = 503\n", "");
    let d = errors(&text);
    assert_eq!(d[0].line, text.lines().position(|l| l.starts_with("failonstatus")).unwrap() + 1);
}

/// `vlan` is an 802.1Q VLAN id, 1..=4094, absent by default (untagged),
/// and the same for every VIP of one address.
#[test]
fn vip_vlan_is_checked_and_shared_by_an_address() {
    let pool = "\n[[pool]]\nname = \"web\"\n[[pool.backend]]\naddress = \"198.18.0.11\"\n";
    let config = parse(&with(&format!("{WEB_VIP}{pool}")), "test.toml").unwrap();
    assert_eq!(config.vips[0].vlan, None);
    let tagged = WEB_VIP.replace("port = 80", "port = 80\nvlan = 200");
    let config = parse(&with(&format!("{tagged}{pool}")), "test.toml").unwrap();
    assert_eq!(config.vips[0].vlan, Some(200));
    for bad in ["0", "4095", "-1"] {
        let text = with(&format!("{}{pool}", WEB_VIP.replace("port = 80", &format!("port = 80\nvlan = {bad}"))));
        let at = text.lines().position(|l| l.starts_with("vlan")).unwrap() + 1;
        assert_eq!(position_of(&errors(&text), "vlan").0, at, "{bad}");
    }
    // A second VIP on the same address, another protocol, another VLAN.
    let second = tagged.replace("name = \"web\"", "name = \"web2\"").replace("\"tcp\"", "\"udp\"").replace("vlan = 200", "vlan = 201");
    let text = with(&format!("{tagged}{second}{pool}"));
    let d = errors(&text);
    let at = text.lines().position(|l| l == "vlan = 201").unwrap() + 1;
    assert_eq!(position_of(&d, "must be on one VLAN").0, at);
    // Untagged beside tagged is the same mistake; the same VLAN is fine.
    let untagged = WEB_VIP.replace("name = \"web\"", "name = \"web2\"").replace("\"tcp\"", "\"udp\"");
    position_of(&errors(&with(&format!("{tagged}{untagged}{pool}"))), "is untagged here but vlan 200");
    let same = second.replace("vlan = 201", "vlan = 200");
    parse(&with(&format!("{tagged}{same}{pool}")), "test.toml").unwrap();
}
