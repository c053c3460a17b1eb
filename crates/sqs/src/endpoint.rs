//! Where the server may send signed requests: the endpoint allowlist.
//!
//! A drain signs its requests with the server's AWS credentials, so a role
//! allowed to drain must not be able to point it at an arbitrary host (the
//! instance metadata service, an internal admin port, a host that collects
//! signatures). The superuser-only setting `fetch_etl.allowed_endpoints` lists
//! the endpoints; its default, `aws`, is the AWS SQS endpoints over https:
//!
//! - `sqs.<region>.amazonaws.com`, `sqs.<region>.amazonaws.com.cn`,
//!   `sqs-fips.<region>.amazonaws.com`, `sqs.<region>.api.aws` (dual-stack),
//! - `<region>.queue.amazonaws.com` and `queue.amazonaws.com` (legacy),
//! - VPC endpoints `vpce-....sqs.<region>.vpce.amazonaws.com[.cn]`.
//!
//! Other entries are `scheme://host[:port]`, where `host` may be `*` (any
//! host) or start with `*.` (any subdomain), and `port` may be `*`. What the
//! host may resolve to depends on what matched it ([`Reach`]):
//! - a pattern (`*`, `*.example.com`): public (global unicast) addresses only;
//! - `aws`: public or private ones, since VPC endpoints and SQS names with
//!   private DNS resolve into the VPC (10/8, 172.16/12, 192.168/16,
//!   100.64/10, fc00::/7); never loopback, link-local (169.254.0.0/16, which
//!   holds the EC2 metadata service, and fe80::/10), the metadata service's
//!   IPv6 address range fd00:ec2::/32, or the other special ranges;
//! - a host named exactly (`http://localhost:4566`, `https://10.1.2.3`):
//!   anything it resolves to, since a superuser listed it on purpose.
//!
//! The check runs before any request is sent, on the name and on every
//! address the name resolves to; the HTTP client's resolver applies it again
//! at connect time, so a name that changes its answer in between gains
//! nothing. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use super::queue_url::is_region;
use fetch_etl_core::error::{Classified, ErrorKind};

/// What a matching entry allows the host to resolve to, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Global unicast addresses only (the host matched a pattern).
    Public,
    /// Global or private addresses (the host is an AWS SQS endpoint name).
    Vpc,
    /// Any address (the host is named exactly by an entry).
    Anything,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// The built-in AWS SQS host names.
    Aws,
    Any,
    /// `*.suffix`: any name ending in `.suffix`.
    Subdomain(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    scheme: &'static str,
    host: Host,
    /// None: any port.
    port: Option<u16>,
}

/// A parsed `fetch_etl.allowed_endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

/// Why a request may not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid fetch_etl.allowed_endpoints entry {entry:?}: {why}")]
    BadEntry { entry: String, why: &'static str },
    #[error(
        "fetch_etl may not send requests to {endpoint}: it is not in fetch_etl.allowed_endpoints"
    )]
    NotListed { endpoint: String },
    /// The address itself is not named: a caller who may pick host names
    /// under a pattern (`*.corp.example`) must not learn internal addresses.
    #[error("fetch_etl may not send requests to {endpoint}: {host} is or resolves to an internal address, and no fetch_etl.allowed_endpoints entry names it exactly")]
    Internal { endpoint: String, host: String },
    #[error("could not resolve {host}")]
    Unresolved { host: String },
}

impl Classified for EndpointError {
    fn kind(&self) -> ErrorKind {
        match self {
            EndpointError::BadEntry { .. } => ErrorKind::InvalidParameter,
            EndpointError::NotListed { .. } | EndpointError::Internal { .. } => {
                ErrorKind::InsufficientPrivilege
            }
            EndpointError::Unresolved { .. } => ErrorKind::ConnectionFailure,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            EndpointError::NotListed { .. } | EndpointError::Internal { .. } => Some(
                "A superuser can list the endpoint in fetch_etl.allowed_endpoints, e.g. 'aws, http://localhost:4566'."
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The default: AWS SQS over https.
pub const DEFAULT: &str = "aws";

impl Allowlist {
    /// Parses a comma- or space-separated list of entries.
    pub fn parse(spec: &str) -> Result<Allowlist, EndpointError> {
        let mut entries = Vec::new();
        for raw in spec.split(|c: char| c == ',' || c.is_whitespace()) {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            entries.push(parse_entry(raw)?);
        }
        Ok(Allowlist { entries })
    }

    /// Whether requests may go to `endpoint`, and where its host may resolve.
    pub fn check(&self, endpoint: &Url) -> Result<Reach, EndpointError> {
        let not_listed = || EndpointError::NotListed {
            endpoint: endpoint_text(endpoint),
        };
        let scheme = endpoint.scheme();
        let host = host_of(endpoint).ok_or_else(not_listed)?;
        let port = endpoint.port_or_known_default();
        // The widest reach of the entries that match.
        let reach = self
            .entries
            .iter()
            .filter(|e| e.scheme == scheme && e.port.is_none_or(|p| Some(p) == port))
            .filter_map(|e| match &e.host {
                Host::Exact(h) if *h == host => Some(Reach::Anything),
                Host::Aws if is_aws_sqs_host(&host) => Some(Reach::Vpc),
                Host::Any => Some(Reach::Public),
                Host::Subdomain(s) if host.ends_with(&format!(".{s}")) => Some(Reach::Public),
                _ => None,
            })
            .max()
            .ok_or_else(not_listed)?;
        // An IP literal is not resolved: check it here.
        if let Ok(ip) = host.parse::<IpAddr>() {
            check_address(endpoint, &host, ip, reach)?;
        }
        Ok(reach)
    }
}

/// Whether `host` may be connected to at `addr`, given the entry's reach.
pub fn check_address(
    endpoint: &Url,
    host: &str,
    addr: IpAddr,
    reach: Reach,
) -> Result<(), EndpointError> {
    if !reachable(addr, reach) {
        return Err(EndpointError::Internal {
            endpoint: endpoint_text(endpoint),
            host: host.to_string(),
        });
    }
    Ok(())
}

/// Whether `addr` may be connected to under `reach`.
pub fn reachable(addr: IpAddr, reach: Reach) -> bool {
    match reach {
        Reach::Anything => true,
        Reach::Vpc => !is_internal(addr) || is_private(addr),
        Reach::Public => !is_internal(addr),
    }
}

/// The private ranges a VPC uses (RFC 1918, CGNAT, unique-local IPv6), less
/// the metadata service's fd00:ec2::/32.
fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let s = a.segments();
                (s[0] & 0xfe00) == 0xfc00 && !(s[0] == 0xfd00 && s[1] == 0x0ec2)
            }
        },
    }
}

/// `scheme://host[:port]/` of a URL, for messages.
pub fn endpoint_text(u: &Url) -> String {
    let mut u = u.clone();
    u.set_path("/");
    u.set_query(None);
    u.to_string()
}

/// The URL's host, lowercase, IPv6 without brackets.
pub fn host_of(u: &Url) -> Option<String> {
    match u.host()? {
        url::Host::Domain(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
        url::Host::Ipv4(a) => Some(a.to_string()),
        url::Host::Ipv6(a) => Some(a.to_string()),
    }
}

fn parse_entry(raw: &str) -> Result<Entry, EndpointError> {
    let bad = |why| EndpointError::BadEntry {
        entry: raw.to_string(),
        why,
    };
    if raw.eq_ignore_ascii_case("aws") {
        return Ok(Entry {
            scheme: "https",
            host: Host::Aws,
            port: Some(443),
        });
    }
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| bad("expected aws or scheme://host[:port]"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => "http",
        "https" => "https",
        _ => return Err(bad("the scheme must be http or https")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(bad("only scheme://host[:port], no path, user or query"));
    }
    let (host, port) = split_host_port(rest).ok_or_else(|| bad("bad host or port"))?;
    let port = match port {
        None => Some(if scheme == "https" { 443 } else { 80 }),
        Some("*") => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| bad("bad port"))?),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = if host == "*" {
        Host::Any
    } else if let Some(s) = host.strip_prefix("*.") {
        if s.is_empty() || s.contains('*') {
            return Err(bad("a wildcard is only * or *.domain"));
        }
        Host::Subdomain(s.to_string())
    } else if host.is_empty() || host.contains('*') {
        return Err(bad("a wildcard is only * or *.domain"));
    } else {
        // Normalise IP literals the way URLs print them.
        match host.parse::<IpAddr>() {
            Ok(ip) => Host::Exact(ip.to_string()),
            Err(_) => Host::Exact(host),
        }
    };
    Ok(Entry { scheme, host, port })
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        return match rest {
            "" => Some((h, None)),
            r => Some((h, Some(r.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p))),
        Some(_) => None, // a bare IPv6 address needs brackets
        None => Some((s, None)),
    }
}

/// The AWS SQS endpoint names (see the module documentation).
pub fn is_aws_sqs_host(host: &str) -> bool {
    let l: Vec<&str> = host.split('.').collect();
    let tail = |t: &[&str]| l.len() >= t.len() && l[l.len() - t.len()..] == *t;
    let region_at = |i: usize| l.get(i).is_some_and(|r| is_region(r));
    match l.as_slice() {
        ["sqs" | "sqs-fips", _, "amazonaws", "com"] => region_at(1),
        ["sqs", _, "amazonaws", "com", "cn"] => region_at(1),
        ["sqs", _, "api", "aws"] => region_at(1),
        [_, "queue", "amazonaws", "com"] => region_at(0),
        ["queue", "amazonaws", "com"] => true,
        _ => {
            // vpce-<id>[-<az>].sqs.<region>.vpce.amazonaws.com[.cn]
            let suffix_len = if tail(&["vpce", "amazonaws", "com"]) {
                3
            } else if tail(&["vpce", "amazonaws", "com", "cn"]) {
                4
            } else {
                return false;
            };
            let n = l.len();
            n == suffix_len + 3
                && l[0].starts_with("vpce-")
                && l[0].len() > 5
                && l[0][5..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && l[1] == "sqs"
                && region_at(2)
        }
    }
}

/// Loopback, private, link-local, unique-local, CGNAT, unspecified,
/// multicast, broadcast, documentation and other non-public addresses.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => is_internal_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(a),
        },
    }
}

fn is_internal_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || a.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF 192.0.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240 // reserved
}

/// Everything outside global unicast 2000::/3 (loopback, unique-local
/// fc00::/7, link-local, multicast, IPv4-compatible and NAT64 forms...), and
/// within it the ranges that carry IPv4 addresses or are not routed.
fn is_internal_v6(a: Ipv6Addr) -> bool {
    let s = a.segments();
    (s[0] & 0xe000) != 0x2000
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0x0000) // Teredo, maps v4
        || (s[0] == 0x2002) // 6to4, maps v4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn check(list: &str, endpoint: &str) -> Result<Reach, EndpointError> {
        Allowlist::parse(list).unwrap().check(&url(endpoint))
    }

    #[test]
    fn the_default_allows_aws_sqs_over_https_only() {
        for ok in [
            "https://sqs.us-east-1.amazonaws.com/",
            "https://sqs.eu-central-2.amazonaws.com",
            "https://sqs.cn-north-1.amazonaws.com.cn/",
            "https://sqs-fips.us-gov-west-1.amazonaws.com/",
            "https://sqs.us-west-2.api.aws/",
            "https://ap-southeast-2.queue.amazonaws.com/",
            "https://queue.amazonaws.com/",
            "https://vpce-0abc123-12ab.sqs.us-west-2.vpce.amazonaws.com/",
            "https://vpce-0abc123.sqs.cn-north-1.vpce.amazonaws.com.cn/",
            "https://SQS.US-EAST-1.AMAZONAWS.COM:443/",
        ] {
            assert_eq!(check(DEFAULT, ok), Ok(Reach::Vpc), "{ok}");
        }
        for refused in [
            "http://sqs.us-east-1.amazonaws.com/",       // not https
            "https://sqs.us-east-1.amazonaws.com:8443/", // not 443
            "https://sqs.localhost.amazonaws.com/",      // not a region
            "https://s3.us-east-1.amazonaws.com/",
            "https://sqs.us-east-1.amazonaws.com.evil.example/",
            "https://evil.example/sqs.us-east-1.amazonaws.com",
            "https://x.sqs.us-east-1.vpce.amazonaws.com/",
            "https://vpce-1.s3.us-east-1.vpce.amazonaws.com/",
            "http://localhost:4566/",
            "http://127.0.0.1:4566/",
            "http://169.254.169.254/",
            "http://[fd00:ec2::254]/",
        ] {
            assert!(
                matches!(
                    check(DEFAULT, refused),
                    Err(EndpointError::NotListed { .. })
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn exact_entries_allow_any_address_patterns_public_ones() {
        let list =
            "aws, http://localhost:4566, http://127.0.0.1:*, https://*.corp.example, http://*:8080";
        assert_eq!(check(list, "http://localhost:4566/"), Ok(Reach::Anything));
        assert!(check(list, "http://localhost:4567/").is_err());
        assert_eq!(check(list, "http://127.0.0.1:9/"), Ok(Reach::Anything));
        assert_eq!(check(list, "https://sqs.corp.example/"), Ok(Reach::Public));
        assert!(
            check(list, "https://corp.example/").is_err(),
            "*.x is subdomains only"
        );
        assert_eq!(
            check(list, "http://anything.example:8080/"),
            Ok(Reach::Public)
        );
        // an IP literal matched only by a pattern must be public
        assert!(matches!(
            check(list, "http://169.254.169.254:8080/"),
            Err(EndpointError::Internal { .. })
        ));
        assert_eq!(check(list, "http://93.184.216.34:8080/"), Ok(Reach::Public));
        assert!(matches!(
            check("http://*:*", "http://[::1]:9/"),
            Err(EndpointError::Internal { .. })
        ));
        assert_eq!(
            check("http://[::1]:9", "http://[::1]:9/"),
            Ok(Reach::Anything)
        );
    }

    #[test]
    fn errors_are_classified_and_never_echo_more_than_the_endpoint() {
        let e = check(DEFAULT, "http://169.254.169.254/latest/meta-data/?x=1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InsufficientPrivilege);
        assert_eq!(
            e.to_string(),
            "fetch_etl may not send requests to http://169.254.169.254/: it is not in fetch_etl.allowed_endpoints"
        );
        assert!(e.hint().unwrap().contains("fetch_etl.allowed_endpoints"));
    }

    /// An internal-address oracle: with a pattern entry, a drainer picks the
    /// names; the refusal must not tell it where they point.
    #[test]
    fn a_refused_name_does_not_reveal_the_internal_address_it_resolves_to() {
        let endpoint = url("https://db.corp.example/");
        let addr: IpAddr = "10.11.12.13".parse().unwrap();
        let e = check_address(&endpoint, "db.corp.example", addr, Reach::Public).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InsufficientPrivilege);
        let text = e.to_string();
        assert!(text.contains("db.corp.example"), "{text}");
        assert!(!text.contains("10.11.12.13"), "{text}");
    }

    #[test]
    fn the_aws_entry_reaches_into_a_vpc_but_never_the_host_itself() {
        // VPC endpoints and private DNS resolve to the VPC's private addresses
        for a in [
            "10.0.1.23",
            "172.31.0.5",
            "192.168.4.4",
            "100.64.1.1",
            "fd12:3456::1",
            "52.94.0.1",
            "2600:1f18::1",
        ] {
            assert!(reachable(a.parse().unwrap(), Reach::Vpc), "{a}");
        }
        for a in [
            "127.0.0.1",
            "169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "::1",
            "0.0.0.0",
            "::ffff:169.254.169.254",
        ] {
            assert!(!reachable(a.parse().unwrap(), Reach::Vpc), "{a}");
        }
        assert!(!reachable("10.0.1.23".parse().unwrap(), Reach::Public));
        assert!(reachable("127.0.0.1".parse().unwrap(), Reach::Anything));
        // the widest matching entry wins
        assert_eq!(
            check(
                "aws, https://sqs.us-east-1.amazonaws.com",
                "https://sqs.us-east-1.amazonaws.com/"
            ),
            Ok(Reach::Anything)
        );
        assert_eq!(
            check("https://*:*, aws", "https://sqs.us-east-1.amazonaws.com/"),
            Ok(Reach::Vpc)
        );
    }

    #[test]
    fn bad_entries() {
        for bad in [
            "ftp://x",
            "localhost:4566",
            "http://",
            "http://a/b",
            "http://u@h",
            "http://h:99999",
            "http://**.x",
            "http://a*.x",
            "http://::1",
        ] {
            let e = Allowlist::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{bad}");
        }
        assert_eq!(
            Allowlist::parse(" , ").unwrap(),
            Allowlist { entries: vec![] }
        );
        assert!(
            check("", "https://sqs.us-east-1.amazonaws.com/").is_err(),
            "empty allows nothing"
        );
    }

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "ff02::1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "93.184.216.34",
            "52.94.0.1",
            "172.32.0.1",
            "100.128.0.1",
            "2600:1f18::1",
            "::ffff:52.94.0.1",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }
}
