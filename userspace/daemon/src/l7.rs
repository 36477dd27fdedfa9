//! The L7 proxy as the daemon runs it: started with the configured
//! listeners, then fed a new routing snapshot whenever the effective state
//! changes; a reload that changes the listeners or `[l7]` starts a new
//! proxy beside it and drains the old one. The proxy runs on its own threads (compio, one io_uring each),
//! never on the control loop's tokio runtime; publishing a snapshot is one
//! atomic pointer swap.
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use fulcrum_config::{Config, LbMethod};
use fulcrum_l7::{members::PassiveConfig, HostMatch, ListenerRoutes, Member, MemberStats, Pool, Proxy, ProxyConfig, Route, SharedSnapshot, Snapshot, Sticky};
use fulcrum_state::{Effective, Exclusion};

/// The running proxy and what it needs to publish snapshots.
pub struct L7 {
    proxy: Proxy,
    snapshot: SharedSnapshot,
    listen: Vec<SocketAddr>,
    /// Each member's counters, kept across snapshots so they keep counting:
    /// keyed by pool name and member address.
    stats: HashMap<(String, SocketAddr), Arc<MemberStats>>,
}

impl L7 {
    /// Starts the proxy on the configured listeners with `config.l7.workers`
    /// threads, or returns `None` when no listener is configured.
    ///
    /// # Errors
    /// A listener address cannot be bound, or no I/O driver works.
    pub fn start(config: &Config, effective: &Effective) -> Result<Option<L7>> {
        L7::start_with(config, effective, HashMap::new())
    }

    /// A new proxy for a reload that changes the listeners or `[l7]`: it
    /// opens its sockets beside the running proxy's (every listener has
    /// `SO_REUSEPORT`, so the same address may be bound twice), and the
    /// members' counters carry over. The caller then shuts the running
    /// proxy down, which drains its requests in flight, as nginx's old
    /// workers do after a reload. `None` when the new configuration has no
    /// listener.
    ///
    /// # Errors
    /// As [`L7::start`]; the running proxy is untouched.
    pub fn restart(&self, config: &Config, effective: &Effective) -> Result<Option<L7>> {
        L7::start_with(config, effective, self.stats.clone())
    }

    fn start_with(config: &Config, effective: &Effective, mut stats: HashMap<(String, SocketAddr), Arc<MemberStats>>) -> Result<Option<L7>> {
        if config.listeners.is_empty() {
            return Ok(None);
        }
        let listen = listen_addresses(config);
        let snapshot = fulcrum_l7::shared(Snapshot::default());
        fulcrum_l7::members::publish(&snapshot, snapshot_of(config, effective, &mut stats));
        let mut proxy_config = ProxyConfig::new(listen.clone());
        proxy_config.workers = config.l7.workers;
        proxy_config.connect_timeout = config.l7.connect_timeout;
        proxy_config.response_timeout = config.l7.response_timeout;
        proxy_config.header_read_timeout = config.l7.header_read_timeout;
        proxy_config.keepalive_timeout = config.l7.keepalive_timeout;
        proxy_config.request_timeout = config.l7.request_timeout;
        proxy_config.drain_timeout = config.l7.drain_timeout;
        proxy_config.park_after = config.l7.park_after;
        proxy_config.websocket_idle_timeout = config.l7.websocket_idle_timeout;
        proxy_config.access_log = config.l7.access_log.clone().map(|path| fulcrum_l7::AccessLogConfig {
            path,
            format: if config.l7.access_log_json { fulcrum_l7::AccessLogFormat::Json } else { fulcrum_l7::AccessLogFormat::Combined },
        });
        proxy_config.max_header_size = config.l7.max_header_size;
        proxy_config.max_headers = config.l7.max_headers;
        proxy_config.max_uri_len = config.l7.max_uri_len;
        proxy_config.max_body_size = config.l7.max_body_size;
        proxy_config.forwarded = match config.l7.forwarded {
            fulcrum_config::ForwardedFields::XForwarded => fulcrum_l7::ForwardedFields::XForwarded,
            fulcrum_config::ForwardedFields::Rfc7239 => fulcrum_l7::ForwardedFields::Rfc7239,
            fulcrum_config::ForwardedFields::Both => fulcrum_l7::ForwardedFields::Both,
        };
        let proxy = Proxy::start(proxy_config, Arc::clone(&snapshot)).context("starting the L7 proxy")?;
        tracing::info!(listen = ?listen, workers = config.l7.workers, driver = ?proxy.driver(), "L7 proxy listening");
        Ok(Some(L7 { proxy, snapshot, listen, stats }))
    }

    /// Whether `config` listens where the running proxy does (else a
    /// reload needs a new proxy: [`L7::restart`]).
    pub fn listens_as(&self, config: &Config) -> bool {
        listen_addresses(config) == self.listen
    }

    /// Opens the access log's file again (SIGHUP, for log rotation).
    pub fn reopen_access_log(&self) {
        self.proxy.reopen_access_log();
    }

    /// Publishes the routes and members `config` and `effective` give; new
    /// requests use them at once, requests in flight finish on the old ones.
    pub fn publish(&mut self, config: &Config, effective: &Effective) {
        fulcrum_l7::members::publish(&self.snapshot, snapshot_of(config, effective, &mut self.stats));
    }

    /// The counters of `address` in pool `pool`, if the proxy knows it.
    pub fn member_stats(&self, pool: &str, address: SocketAddr) -> Option<&MemberStats> {
        self.stats.get(&(pool.to_owned(), address)).map(Arc::as_ref)
    }

    /// The proxy's own counters (refused requests by kind, connections).
    pub fn proxy_stats(&self) -> Arc<fulcrum_l7::ProxyStats> {
        self.proxy.stats()
    }

    /// Graceful stop: stops accepting, lets requests in flight finish
    /// (at most `[l7] drain_timeout`), then joins the worker threads.
    pub fn shutdown(self) {
        self.proxy.shutdown();
    }
}

/// The proxy's method for the configured one (the same names).
fn lbmethod(m: LbMethod) -> fulcrum_l7::LbMethod {
    match m {
        LbMethod::ByRequests => fulcrum_l7::LbMethod::ByRequests,
        LbMethod::ByBusyness => fulcrum_l7::LbMethod::ByBusyness,
        LbMethod::ByTraffic => fulcrum_l7::LbMethod::ByTraffic,
        LbMethod::ByIp => fulcrum_l7::LbMethod::ByIp,
        LbMethod::P2c => fulcrum_l7::LbMethod::P2c,
    }
}

fn listen_addresses(config: &Config) -> Vec<SocketAddr> {
    config.listeners.iter().map(|l| l.address).collect()
}

/// The proxy's view of `config`'s listeners and `effective`'s pools.
/// `stats` keeps each member's counters (and passive health state) across
/// snapshots and forgets members that left the configuration.
///
/// A member is usable for the proxy when the effective state lets it take
/// sessions (healthy, not disabled or stopped); a drained one (weight 0 or
/// `N`) is marked draining, and spares, standbys and higher lbsets come
/// with their roles: the proxy applies the failover rule itself per
/// request, with its own passive errors and retries (see
/// `fulcrum_l7::members`).
fn snapshot_of(config: &Config, effective: &Effective, stats: &mut HashMap<(String, SocketAddr), Arc<MemberStats>>) -> Snapshot {
    let mut seen = Vec::new();
    let pools: Vec<Pool> = effective
        .pools
        .iter()
        .map(|pool| Pool {
            passive: config.pool(&pool.name).and_then(|p| p.passive.as_ref()).map(|p| PassiveConfig {
                failonstatus: p.failonstatus.clone(),
                failontimeout: p.failontimeout,
                error_limit: p.error_limit,
                error_window_ms: p.error_window.as_millis() as u64,
                retry_ms: p.retry.as_millis() as u64,
            }),
            name: pool.name.clone(),
            lbmethod: config.pool(&pool.name).map_or(fulcrum_l7::LbMethod::ByRequests, |p| lbmethod(p.lbmethod)),
            sticky: config.pool(&pool.name).and_then(|p| p.sticky.as_ref()).map(|s| Sticky {
                cookie: s.cookie.clone(),
                param: s.param.clone(),
                nofailover: s.nofailover,
                secure: s.secure,
            }),
            members: pool
                .members
                .iter()
                .map(|m| {
                    let address = SocketAddr::new(m.address, m.port);
                    let key = (pool.name.clone(), address);
                    seen.push(key.clone());
                    Member {
                        address,
                        weight: m.weight,
                        usable: m.takes_sessions(),
                        draining: m.excluded == Some(Exclusion::Drained),
                        lbset: m.lbset,
                        role: m.role(),
                        slow_start_ms: config
                            .pool(&pool.name)
                            .and_then(|p| p.slow_start)
                            .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                        route: m.route.clone().unwrap_or_default(),
                        stats: Arc::clone(stats.entry(key).or_default()),
                    }
                })
                .collect(),
        })
        .collect();
    stats.retain(|key, _| seen.contains(key));
    let listeners = config
        .listeners
        .iter()
        .map(|l| ListenerRoutes {
            address: l.address,
            routes: l
                .routes
                .iter()
                .map(|r| Route {
                    host: r.host.as_deref().map_or(HostMatch::Any, HostMatch::parse),
                    path_prefix: r.path.clone(),
                    pool: pools.iter().position(|p| p.name == r.pool).expect("validated config: route pools exist"),
                    preserve_host: r.preserve_host,
                    proxy_pass_reverse: r.proxy_pass_reverse,
                })
                .collect(),
        })
        .collect();
    Snapshot { listeners, pools }
}

#[cfg(test)]
mod tests {
    use fulcrum_health::Health;
    use fulcrum_state::{effective, probe_of, Observed, Verdict};

    use super::*;

    const CONFIG: &str = r#"
interface = "eth0"
[[listener]]
name = "www"
address = "127.0.0.1:8080"
[[listener.route]]
host = "api.example.com"
pool = "api"
[[listener.route]]
path = "/static/"
pool = "web"
preserve_host = true
[[pool]]
name = "web"
lbmethod = "p2c"
stickysession = "JSESSIONID|jsessionid"
nofailover = true
[[pool.backend]]
address = "198.18.0.11"
port = 80
route = "r1"
[[pool.backend]]
address = "198.18.0.12"
port = 80
weight = 3
[[pool]]
name = "api"
[pool.health_check]
type = "tcp"
port = 9000
[[pool.backend]]
address = "198.18.0.13"
"#;

    #[test]
    fn routes_and_members_follow_config_and_health() {
        let config = fulcrum_config::parse(CONFIG, "test.toml").unwrap();
        let mut observed = Observed::default();
        let web = &config.pools[0];
        observed.health.insert(probe_of(web, &web.backends[0]), Verdict { health: Health::Up, detail: String::new() });
        observed.health.insert(probe_of(web, &web.backends[1]), Verdict { health: Health::Down, detail: String::new() });
        let mut stats = HashMap::new();
        let snap = snapshot_of(&config, &effective(&config, &observed), &mut stats);
        snap.validate().unwrap();
        let routes = &snap.listeners[0].routes;
        assert_eq!(routes[0].host, HostMatch::Exact("api.example.com".into()));
        assert_eq!(snap.pools[routes[0].pool].name, "api");
        assert_eq!((routes[1].path_prefix.as_str(), routes[1].preserve_host), ("/static/", true));
        assert_eq!(snap.pools[0].lbmethod, fulcrum_l7::LbMethod::P2c);
        assert_eq!(
            snap.pools[0].sticky,
            Some(Sticky { cookie: "JSESSIONID".into(), param: "jsessionid".into(), nofailover: true, secure: false })
        );
        assert_eq!((snap.pools[1].lbmethod, snap.pools[1].sticky.as_ref()), (fulcrum_l7::LbMethod::ByRequests, None));
        for (name, m) in LbMethod::ALL {
            assert_eq!(lbmethod(m).as_str(), name);
        }
        let members = &snap.pools[0].members;
        assert_eq!(members[0].address, "198.18.0.11:80".parse().unwrap());
        assert_eq!((members[0].usable, members[0].route.as_str()), (true, "r1"));
        assert_eq!((members[1].usable, members[1].weight), (false, 3));
        // The API pool's member takes the check port; its health is unknown.
        assert_eq!(snap.pools[1].members[0].address, "198.18.0.13:9000".parse().unwrap());
        assert!(!snap.pools[1].members[0].usable);

        // Counters survive a new snapshot; a member that left is forgotten.
        MemberStats::get(&members[0].stats.requests);
        members[0].stats.requests.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        let again = snapshot_of(&config, &effective(&config, &observed), &mut stats);
        assert_eq!(MemberStats::get(&again.pools[0].members[0].stats.requests), 5);
        let fewer = fulcrum_config::parse(&CONFIG.replace("[[pool.backend]]\naddress = \"198.18.0.12\"\nport = 80\nweight = 3\n", ""), "t").unwrap();
        snapshot_of(&fewer, &effective(&fewer, &observed), &mut stats);
        assert_eq!(stats.len(), 2);
    }
}

#[cfg(test)]
mod member_tests {
    use fulcrum_health::Health;
    use fulcrum_l7::members::Role;
    use fulcrum_state::{effective, probe_of, Observed, Verdict};

    use super::*;

    #[test]
    fn flags_roles_passive_and_slow_start_reach_the_proxy() {
        let text = r#"
interface = "eth0"
[[listener]]
name = "www"
address = "127.0.0.1:8080"
[[listener.route]]
pool = "web"
[[pool]]
name = "web"
failonstatus = [503]
error_limit = 3
error_window = "5s"
retry = "30s"
slow_start = "20s"
[[pool.backend]]
address = "198.18.0.11"
port = 80
[[pool.backend]]
address = "198.18.0.12"
port = 80
status = "+N"
[[pool.backend]]
address = "198.18.0.13"
port = 80
status = "+R"
[[pool.backend]]
address = "198.18.0.14"
port = 80
status = "+D"
[[pool.backend]]
address = "198.18.0.15"
port = 80
status = "+H"
lbset = 1
"#;
        let config = fulcrum_config::parse(text, "t").unwrap();
        let mut observed = Observed::default();
        let web = &config.pools[0];
        for b in &web.backends {
            observed.health.insert(probe_of(web, b), Verdict { health: Health::Up, detail: String::new() });
        }
        let snap = snapshot_of(&config, &effective(&config, &observed), &mut HashMap::new());
        let pool = &snap.pools[0];
        assert_eq!(
            pool.passive,
            Some(PassiveConfig { failonstatus: vec![503], failontimeout: false, error_limit: 3, error_window_ms: 5_000, retry_ms: 30_000 })
        );
        let m = &pool.members;
        // usable (sessions), draining, role, lbset, slow start.
        let got: Vec<(bool, bool, Role, u8, u32)> = m.iter().map(|m| (m.usable, m.draining, m.role, m.lbset, m.slow_start_ms)).collect();
        assert_eq!(
            got,
            [
                (true, false, Role::Active, 0, 20_000),
                (true, true, Role::Active, 0, 20_000),
                // The spare and the standby are usable: the proxy decides
                // per request whether they serve.
                (true, false, Role::HotSpare, 0, 20_000),
                (false, false, Role::Active, 0, 20_000),
                (true, false, Role::HotStandby, 1, 20_000),
            ]
        );
    }

    #[test]
    fn passive_errors_and_comebacks_survive_snapshots() {
        let text = "interface = \"eth0\"\n[[listener]]\nname = \"www\"\naddress = \"127.0.0.1:8080\"\n[[listener.route]]\npool = \"web\"\n[[pool]]\nname = \"web\"\nretry = \"60s\"\nslow_start = \"20s\"\n[[pool.backend]]\naddress = \"198.18.0.11\"\nport = 80\n";
        let config = fulcrum_config::parse(text, "t").unwrap();
        let web = &config.pools[0];
        let verdict = |health| {
            let mut o = Observed::default();
            o.health.insert(probe_of(web, &web.backends[0]), Verdict { health, detail: String::new() });
            o
        };
        let mut stats = HashMap::new();
        let shared = fulcrum_l7::shared(Snapshot::default());
        let publish = |stats: &mut HashMap<_, _>, health| {
            fulcrum_l7::members::publish(&shared, snapshot_of(&config, &effective(&config, &verdict(health)), stats));
            shared.load().pools[0].clone()
        };
        // Up from the start: no slow start.
        let pool = publish(&mut stats, Health::Up);
        let now = fulcrum_l7::snapshot::clock_ms64();
        assert_eq!(fulcrum_l7::members::effective_weight(&pool.members[0], now), fulcrum_l7::members::WEIGHT_SCALE);
        // The proxy puts it In error; a new snapshot (any change) keeps that.
        assert!(pool.observe(0, fulcrum_l7::members::Outcome::ConnectFailed));
        let pool = publish(&mut stats, Health::Up);
        assert!(pool.members[0].stats.passive.in_error_now());
        // Down by its checks, then up again: it ramps from its first step.
        publish(&mut stats, Health::Down);
        let pool = publish(&mut stats, Health::Up);
        let now = fulcrum_l7::snapshot::clock_ms64();
        assert!(fulcrum_l7::members::effective_weight(&pool.members[0], now) < fulcrum_l7::members::WEIGHT_SCALE);
    }
}
