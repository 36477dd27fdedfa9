//! The file exactly as written: what serde reads before validation.
//!
//! Every value that validation may complain about is `Spanned`, so the
//! complaint can point at it. Integers are read as `i64` (TOML's own integer
//! type) so that an out-of-range number gets our message rather than a type
//! error, and addresses and durations as strings for the same reason.

use serde::Deserialize;
use toml::Spanned;

use super::{Forwarding, OnMarkedDown, Protocol, Scheduler};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub interface: Spanned<String>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub vip: Vec<RawVip>,
    #[serde(default)]
    pub pool: Vec<RawPool>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub vrrp: Vec<RawVrrp>,
    #[serde(default)]
    pub vrrp_sync_group: Vec<RawVrrpSyncGroup>,
    pub l7: Option<RawL7>,
    pub datapath: Option<RawDatapath>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatapath {
    pub conn_table_size: Option<Spanned<i64>>,
    pub ipip_source_v4: Option<Spanned<String>>,
    pub ipip_source_v6: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawL7 {
    pub workers: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub keepalive_timeout: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub websocket_idle_timeout: Option<Spanned<String>>,
    pub park_after: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub access_log_format: Option<Spanned<String>>,
    pub max_header_size: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_uri_len: Option<Spanned<i64>>,
    pub max_body_size: Option<Spanned<i64>>,
    pub forwarded: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub pool: Spanned<String>,
    pub preserve_host: Option<bool>,
    pub proxy_pass_reverse: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub port: Spanned<i64>,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub pool: Spanned<String>,
    pub maglev_table_size: Option<Spanned<i64>>,
    pub udp_idle_timeout: Option<Spanned<String>>,
    pub on_marked_down: Option<OnMarkedDown>,
    pub forwarding: Option<Spanned<Forwarding>>,
    pub vlan: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub name: Spanned<String>,
    pub lbmethod: Option<Spanned<String>>,
    pub stickysession: Option<Spanned<String>>,
    pub nofailover: Option<Spanned<bool>>,
    pub sticky_secure: Option<Spanned<bool>>,
    pub failonstatus: Option<Spanned<Vec<Spanned<i64>>>>,
    pub failontimeout: Option<Spanned<bool>>,
    pub error_limit: Option<Spanned<i64>>,
    pub error_window: Option<Spanned<String>>,
    pub retry: Option<Spanned<String>>,
    pub slow_start: Option<Spanned<String>>,
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum CheckType {
    Tcp,
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: Spanned<CheckType>,
    pub method: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<i64>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    pub mac: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub route: Option<Spanned<String>>,
    pub status: Option<Spanned<String>>,
    pub lbset: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVrrp {
    pub name: Spanned<String>,
    pub interface: Option<Spanned<String>>,
    pub vrid: Spanned<i64>,
    pub version: Option<Spanned<i64>>,
    pub priority: Spanned<i64>,
    pub advert_interval: Option<Spanned<String>>,
    pub preempt: Option<bool>,
    pub preempt_delay: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub addresses: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub unicast_peers: Vec<Spanned<String>>,
    pub notify_master: Option<Spanned<Vec<String>>>,
    pub notify_backup: Option<Spanned<Vec<String>>>,
    pub notify_fault: Option<Spanned<Vec<String>>>,
    pub notify_stop: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub track: Vec<RawTrack>,
    pub auth_key_file: Option<Spanned<String>>,
    pub auth_key: Option<Spanned<String>>,
    pub virtual_mac: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVrrpSyncGroup {
    pub name: Spanned<String>,
    pub instances: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrack {
    pub kind: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    pub pool: Option<Spanned<String>>,
    pub min_up: Option<Spanned<i64>>,
    pub interface: Option<Spanned<String>>,
    pub command: Option<Spanned<Vec<String>>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}
