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

/// Fields a Connection option must not remove. A client could otherwise
/// strip the framing or the Host the proxy routed on
/// (`Connection: Content-Length` is a known request-smuggling trick), so
/// these are kept whatever Connection names.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Removes the hop-by-hop fields: those listed in [`HOP_BY_HOP`] and every
/// field named in a Connection header (RFC 9110 section 7.6.1), except
/// Host and Content-Length. Connection may appear several times and each
/// value is a comma-separated list of field names (case-insensitive);
/// tokens that are not valid field names are ignored.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !protected(n))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
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

/// The host part of a Host value or authority, lowercase, without port:
/// `Example.COM:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
/// `None` if the value is empty or not text.
pub fn host_without_port(v: &str) -> Option<String> {
    let v = v.trim();
    let host = if v.starts_with('[') {
        // IPv6 literal: keep the brackets, drop what follows `]`.
        &v[..=v.find(']')?]
    } else {
        v.rsplit_once(':').map_or(v, |(h, _)| h)
    };
    if host.is_empty() {
        None
    } else {
        Some(host.to_ascii_lowercase())
    }
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
