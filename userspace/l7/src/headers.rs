//! Header rewriting between client and member: hop-by-hop removal and the
//! X-Forwarded-* fields. Pure functions on `http::HeaderMap`.

use std::net::IpAddr;

use http::{
    header::{self, HeaderName},
    HeaderMap, HeaderValue,
};

/// Fields that are hop-by-hop by definition (RFC 9110 section 7.6.1:
/// Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding,
/// Upgrade), plus Proxy-Authenticate and Proxy-Authorization, which RFC
/// 2616 section 13.5.1 listed and which address this proxy, never the
/// member. Trailer is end-to-end in RFC 9110 and is kept. Framing is
/// redone by hyper on each side, so dropping Transfer-Encoding is safe.
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes the hop-by-hop fields: those listed in [`HOP_BY_HOP`] and every
/// field named in a Connection header (RFC 9110 section 7.6.1), except
/// Host and Content-Length. Connection may appear several times and each
/// value is a comma-separated list of field names (case-insensitive);
/// tokens that are not valid field names are ignored.
///
/// Runs twice per proxied request, so it looks up only what is there: one
/// pass over the message's (few) field names finds the listed fields
/// present, and the names in Connection are looked up as they are written
/// (no allocation; they rarely name a field the message has).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // HOP_BY_HOP[0] is Connection.
    if present & 1 != 0 {
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        if values.next().is_none() {
            headers.remove(header::CONNECTION);
            if let Some(v) = first {
                remove_named(headers, &v);
            }
        } else {
            let all: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
            headers.remove(header::CONNECTION);
            for v in &all {
                remove_named(headers, v);
            }
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
}

/// Removes the fields a Connection value names, except the protected ones.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(v) = connection.to_str() else { return };
    for t in v.split(',').map(str::trim) {
        if t.is_empty() || t.eq_ignore_ascii_case("host") || t.eq_ignore_ascii_case("content-length") {
            continue;
        }
        // An invalid name finds nothing.
        headers.remove(t);
    }
}

/// Whether a backend response's Connection field asks to close the
/// connection (token `close`, case-insensitive), read before
/// [`remove_hop_by_hop`].
pub fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// X-Forwarded-For: `client` is appended to the list the request already
/// carries (all X-Forwarded-For fields are folded into one, comma
/// separated), as nginx's `$proxy_add_x_forwarded_for` and Apache do, so a
/// chain of proxies stays visible.
///
/// X-Forwarded-Proto and X-Forwarded-Host are set, replacing what the
/// client sent: this proxy is where the client's scheme and Host were
/// seen, and a client-supplied value could claim `https` on plain HTTP.
/// X-Forwarded-Host is removed when the request has no Host.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let client =
        HeaderValue::from_str(&client.to_string()).expect("an IP address is a valid header value");
    add_forwarded_value(headers, &client, proto, host);
}

/// [`add_forwarded`] with the client address already rendered as a header
/// value (the proxy renders it once per client connection, so a request
/// without an X-Forwarded-For of its own costs no allocation here).
pub fn add_forwarded_value(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    if headers.contains_key(&xff) {
        let mut chain = String::new();
        for v in headers.get_all(&xff) {
            if let Ok(s) = v.to_str() {
                let s = s.trim();
                if !s.is_empty() {
                    chain.push_str(s);
                    chain.push_str(", ");
                }
            }
        }
        // `client` is an address: ASCII.
        chain.push_str(client.to_str().unwrap_or(""));
        // `chain` is built from visible ASCII values and an address.
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(xff, v);
        }
    } else {
        headers.insert(xff, client.clone());
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(proto),
    );
    let xfh = HeaderName::from_static("x-forwarded-host");
    match host {
        Some(h) => {
            headers.insert(xfh, h.clone());
        }
        None => {
            headers.remove(xfh);
        }
    }
}

/// Which forwarding fields the proxy adds to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedFields {
    /// X-Forwarded-For, -Proto and -Host ([`add_forwarded`]), as Apache
    /// and nginx send them.
    #[default]
    XForwarded,
    /// The standard `Forwarded` field ([`add_rfc7239`]) only. The
    /// client's own X-Forwarded-Proto and -Host are removed (nothing
    /// vouches for them); its X-Forwarded-For is passed on unchanged.
    Rfc7239,
    /// Both.
    Both,
}

/// Appends this hop's element to the `Forwarded` field (RFC 7239 section
/// 4): `for=` the client's address (an IPv6 address quoted and in
/// brackets, section 6), `proto=`, and `host=` the Host the client sent
/// (quoted when it is not a token, as a host with a port is). Earlier
/// elements are kept, all `Forwarded` fields folded into one list, so the
/// member sees the whole chain in order (section 5.2).
pub fn add_rfc7239(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let mut element = match client {
        IpAddr::V4(a) => format!("for={a}"),
        IpAddr::V6(a) => format!("for=\"[{a}]\""),
    };
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(h) = host.and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty()) {
        element.push_str(";host=");
        let token = h.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        if token {
            element.push_str(h);
        } else {
            element.push('"');
            for c in h.chars() {
                if c == '"' || c == '\\' {
                    element.push('\\');
                }
                element.push(c);
            }
            element.push('"');
        }
    }
    let mut list = String::new();
    for v in headers.get_all(header::FORWARDED) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                list.push_str(s);
                list.push_str(", ");
            }
        }
    }
    list.push_str(&element);
    // Built from visible ASCII only.
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(header::FORWARDED, v);
    }
}

/// The response fields [`reverse_location`] rewrites: Location,
/// Content-Location and URI, as Apache's `ProxyPassReverse`.
pub fn reverse_fields() -> [HeaderName; 3] {
    [
        header::LOCATION,
        header::CONTENT_LOCATION,
        HeaderName::from_static("uri"),
    ]
}

/// Apache's `ProxyPassReverse` for one field value: an absolute
/// `http`/`https` URI whose authority is a member's address (`is_member`
/// gets the IP and the port, the scheme's default port when none is
/// written) becomes `http://<public_host><path>`; anything else (relative
/// references, other hosts) is left alone and `None` returned. The path
/// is kept: fulcrum forwards the path unchanged, so a member's path is
/// already the public one.
pub fn reverse_location(
    value: &HeaderValue,
    is_member: impl Fn(IpAddr, u16) -> bool,
    public_host: &HeaderValue,
    proto: &'static str,
) -> Option<HeaderValue> {
    let uri: http::Uri = value.to_str().ok()?.parse().ok()?;
    let default_port = match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = authority.host();
    let ip: IpAddr = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()?;
    if !is_member(ip, authority.port_u16().unwrap_or(default_port)) {
        return None;
    }
    let rest = uri.path_and_query().map_or("/", |pq| pq.as_str());
    HeaderValue::from_str(&format!("{proto}://{}{rest}", public_host.to_str().ok()?)).ok()
}

/// The host part of a Host value or authority, lowercase, without port:
/// `Example.COM:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
/// `None` if the value is empty or not text.
pub fn host_without_port(v: &str) -> Option<String> {
    host_part(v).map(str::to_ascii_lowercase)
}

/// [`host_without_port`] as written (not lowercased): compare it with
/// `eq_ignore_ascii_case`. No allocation, for the per-request Host check.
pub(crate) fn host_part(v: &str) -> Option<&str> {
    let v = v.trim();
    let host = if v.starts_with('[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        &v[..=v.find(']')?]
    } else {
        v.rsplit_once(':').map_or(v, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_standard_and_connection_named_fields() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.append(
            header::CONNECTION,
            "x-other , Content-Length,host".parse().unwrap(),
        );
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic x".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert(header::TRAILER, "x-checksum".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["content-length", "host", "trailer", "x-kept"]);
        // One Connection value; names in any case; an invalid token and
        // an empty one are ignored; nothing listed: nothing removed.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "X-Secret, bad token,, HOST".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["host"]);
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert(header::HOST, "a".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn forwarded_fields() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        let host: HeaderValue = "example.com".parse().unwrap();
        add_forwarded(&mut h, "10.0.0.1".parse().unwrap(), "http", Some(&host));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", "evil".parse().unwrap());
        add_forwarded(&mut h, "::1".parse().unwrap(), "http", None);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn rfc7239_elements() {
        let mut h = HeaderMap::new();
        let host: HeaderValue = "example.com".parse().unwrap();
        add_rfc7239(&mut h, "192.0.2.60".parse().unwrap(), "http", Some(&host));
        assert_eq!(h["forwarded"], "for=192.0.2.60;proto=http;host=example.com");
        let port: HeaderValue = "example.com:8080".parse().unwrap();
        add_rfc7239(&mut h, "2001:db8::1".parse().unwrap(), "http", Some(&port));
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.60;proto=http;host=example.com, for=\"[2001:db8::1]\";proto=http;host=\"example.com:8080\""
        );
        let mut h = HeaderMap::new();
        h.append(header::FORWARDED, "for=a".parse().unwrap());
        h.append(header::FORWARDED, "for=b".parse().unwrap());
        add_rfc7239(&mut h, "10.0.0.1".parse().unwrap(), "http", None);
        assert_eq!(h.get_all(header::FORWARDED).iter().count(), 1);
        assert_eq!(h["forwarded"], "for=a, for=b, for=10.0.0.1;proto=http");
    }

    #[test]
    fn proxy_pass_reverse() {
        let member = |ip: IpAddr, port: u16| ip == "10.0.0.1".parse::<IpAddr>().unwrap() && port == 8080;
        let m80 = |ip: IpAddr, port: u16| ip == "fd00::1".parse::<IpAddr>().unwrap() && port == 80;
        let public: HeaderValue = "www.example.com".parse().unwrap();
        let rev = |v: &str, f: &dyn Fn(IpAddr, u16) -> bool| {
            reverse_location(&v.parse().unwrap(), f, &public, "http").map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(rev("http://10.0.0.1:8080/a/b?c=1", &member).as_deref(), Some("http://www.example.com/a/b?c=1"));
        assert_eq!(rev("http://10.0.0.1:8080", &member).as_deref(), Some("http://www.example.com/"));
        assert_eq!(rev("http://10.0.0.1/a", &member), None);
        assert_eq!(rev("http://10.0.0.2:8080/a", &member), None);
        assert_eq!(rev("/relative", &member), None);
        assert_eq!(rev("ftp://10.0.0.1:8080/a", &member), None);
        assert_eq!(rev("http://other.example/a", &member), None);
        assert_eq!(rev("http://[fd00::1]/x", &m80).as_deref(), Some("http://www.example.com/x"));
        assert_eq!(rev("http://[fd00::1]:80/x", &m80).as_deref(), Some("http://www.example.com/x"));
    }

    #[test]
    fn host_parsing() {
        assert_eq!(
            host_without_port("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            host_without_port("example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(host_without_port("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host_without_port("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(host_without_port("").as_deref(), None);
        assert_eq!(host_without_port("[::1").as_deref(), None);
        assert_eq!(host_part(" Example.COM:8080"), Some("Example.COM"));
        assert_eq!(host_part(":80"), None);
    }

    #[test]
    fn close_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Keep-Alive, Close".parse().unwrap());
        assert!(wants_close(&h));
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        assert!(!wants_close(&h));
    }
}
