//! Queue URLs: validation, the endpoint to send requests to, and the region.

use url::Url;

use super::SqsError;

/// A parsed queue URL and where to send its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRef {
    /// The queue URL exactly as given (sent as `QueueUrl`).
    pub queue_url: String,
    /// Where requests go: `scheme://host[:port]/` (or an override).
    pub endpoint: Url,
    /// `/<account>/<name>`, rebuilt from the validated parts: the Query
    /// protocol's request path. Never the URL's own spelling, whose doubled
    /// slashes (`//<number>/q`) a URL join reads as another host.
    pub path: String,
    /// Region found in an AWS-style host name, if any.
    pub host_region: Option<String>,
    /// The queue whatever the URL's spelling: `sqs:<region>:<account>:<name>`
    /// for AWS-style hosts (any of the region's endpoint names), else
    /// `<scheme>://<host>:<port>/<account>/<name>` with the host lowercased
    /// and the port explicit. Drains of one key never run at once.
    pub lock_key: String,
}

impl QueueRef {
    /// A FIFO queue: its name ends in `.fifo`.
    pub fn is_fifo(&self) -> bool {
        self.queue_url
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .trim_end_matches('/')
            .ends_with(".fifo")
    }

    /// Parses `queue_url`; `endpoint_override` (e.g. from `fetch_etl.sqs_endpoint_url`)
    /// replaces the URL's own scheme, host and port when set.
    pub fn parse(queue_url: &str, endpoint_override: Option<&str>) -> Result<Self, SqsError> {
        let bad = |reason: &str| SqsError::InvalidQueueUrl {
            url: for_message(queue_url),
            reason: reason.to_string(),
        };
        // Split by hand: emulators hand out queue URLs whose host is not a valid
        // URL host (fauxqs: sqs.us-east-1.127.0.0.1); that host only has to be
        // connectable when no endpoint override is given.
        let (scheme, rest) = queue_url
            .split_once("://")
            .ok_or_else(|| bad("expected http(s)://host/<account-id>/<queue-name>"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("credentials do not belong in the URL"));
        }
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        // The host is read here and by the URL parser (for the endpoint): they
        // must agree. The parser also ends a host at `\`, `?` or `#`, so
        // `http://localhost\sqs.us-east-1.amazonaws.com/1/q` would go to
        // localhost under the lock key and region of an AWS queue.
        if !authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '[' | ']'))
        {
            return Err(bad(
                "the host may hold only letters, digits, '-', '.', '_', a port and IPv6 brackets",
            ));
        }
        if path.contains('?') || path.contains('#') {
            return Err(bad("a queue URL has no query string or fragment"));
        }
        let segments: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (account, name) = match segments.as_slice() {
            [account, name] if account.chars().all(|c| c.is_ascii_alphanumeric()) => {
                (*account, *name)
            }
            _ => {
                return Err(bad(
                    "expected a path of the form /<account-id>/<queue-name>",
                ))
            }
        };
        if name.len() > 80
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad("invalid queue name"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, rest) = v6.split_once(']').unwrap_or((v6, ""));
                (h, rest.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let port: u16 = match port {
            None | Some("") => {
                if scheme == "https" {
                    443
                } else {
                    80
                }
            }
            Some(p) => p.parse().map_err(|_| bad("invalid port"))?,
        };
        let host_region = region_from_host(&host);
        // The URL parser's spelling of the host where it has one (it writes
        // 0x7f.1 and 127.1 as 127.0.0.1, IPv6 compressed).
        let host_key = Url::parse(&format!("{scheme}://{authority}/"))
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_end_matches('.').to_string()))
            .unwrap_or_else(|| host.clone());
        let lock_key = match &host_region {
            Some(region) => format!("sqs:{region}:{account}:{name}"),
            None => format!("{scheme}://{host_key}:{port}/{account}/{name}"),
        };
        let endpoint = match endpoint_override.map(str::trim).filter(|s| !s.is_empty()) {
            Some(e) => {
                let mut u = Url::parse(e).map_err(|err| {
                    SqsError::InvalidConfig(format!("endpoint URL {:?}: {err}", for_message(e)))
                })?;
                if !u.username().is_empty() || u.password().is_some() {
                    return Err(SqsError::InvalidConfig(
                        "the endpoint URL must not carry credentials".into(),
                    ));
                }
                if u.scheme() != "http" && u.scheme() != "https" {
                    return Err(SqsError::InvalidConfig(format!(
                        "endpoint URL {e:?}: the scheme must be http or https"
                    )));
                }
                u.set_path("/");
                u.set_query(None);
                u
            }
            None => {
                Url::parse(&format!("{scheme}://{authority}/")).map_err(|e| bad(&e.to_string()))?
            }
        };
        Ok(QueueRef {
            queue_url: queue_url.to_string(),
            endpoint,
            path: format!("/{account}/{name}"),
            host_region,
            lock_key,
        })
    }
}

/// `url` fit for an error message: any `user:password@` part removed, length capped.
pub fn for_message(url: &str) -> String {
    let shown = match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    };
    if shown.chars().count() > 200 {
        format!("{}...", shown.chars().take(200).collect::<String>())
    } else {
        shown
    }
}

/// The region in SQS host names: `sqs.<region>.amazonaws.com[.cn]`,
/// `sqs-fips.<region>.amazonaws.com`, legacy `<region>.queue.amazonaws.com`
/// and `queue.amazonaws.com` (us-east-1),
/// VPC endpoints `vpce-....sqs.<region>.vpce.amazonaws.com`, and emulators that
/// copy the pattern (`sqs.<region>.localhost.localstack.cloud`).
pub fn region_from_host(host: &str) -> Option<String> {
    // The legacy global endpoint is us-east-1's: its queues are that region's
    // (and share their lock key with every other spelling of them).
    if host == "queue.amazonaws.com" {
        return Some("us-east-1".to_string());
    }
    let labels: Vec<&str> = host.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if (*label == "sqs" || *label == "sqs-fips")
            && i + 1 < labels.len()
            && is_region(labels[i + 1])
        {
            return Some(labels[i + 1].to_string());
        }
        if *label == "queue" && i > 0 && is_region(labels[i - 1]) {
            return Some(labels[i - 1].to_string());
        }
    }
    None
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`, `ap-southeast-4`...
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_queues_are_told_by_their_name() {
        let fifo = |u: &str| QueueRef::parse(u, None).unwrap().is_fifo();
        assert!(fifo(
            "https://sqs.us-east-1.amazonaws.com/123456789012/logins.fifo"
        ));
        assert!(fifo("http://localhost:4566/000000000000/logins.fifo/"));
        assert!(!fifo("http://localhost:4566/000000000000/logins"));
        assert!(!fifo("http://localhost:4566/000000000000/fifo"));
        assert!(!fifo("http://logins.fifo:4566/000000000000/logins"));
    }

    #[test]
    fn localstack_style_url() {
        let q = QueueRef::parse("http://localhost:4566/000000000000/login-queue", None).unwrap();
        assert_eq!(q.endpoint.as_str(), "http://localhost:4566/");
        assert_eq!(q.host_region, None);
        assert_eq!(
            q.queue_url,
            "http://localhost:4566/000000000000/login-queue"
        );
    }

    #[test]
    fn aws_urls_carry_their_region() {
        for (url, region) in [
            (
                "https://sqs.us-east-1.amazonaws.com/123456789012/q",
                "us-east-1",
            ),
            (
                "https://sqs.eu-central-2.amazonaws.com/123456789012/q.fifo",
                "eu-central-2",
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q",
                "cn-north-1",
            ),
            (
                "https://sqs-fips.us-gov-west-1.amazonaws.com/123456789012/q",
                "us-gov-west-1",
            ),
            (
                "https://ap-southeast-2.queue.amazonaws.com/123456789012/q",
                "ap-southeast-2",
            ),
            (
                "https://vpce-0abc-12.sqs.us-west-2.vpce.amazonaws.com/123456789012/q",
                "us-west-2",
            ),
            (
                "http://sqs.eu-west-1.localhost.localstack.cloud:4566/000000000000/q",
                "eu-west-1",
            ),
        ] {
            let q = QueueRef::parse(url, None).unwrap();
            assert_eq!(q.host_region.as_deref(), Some(region), "{url}");
        }
        assert_eq!(
            QueueRef::parse("https://sqs.us-east-1.amazonaws.com/1/q", None)
                .unwrap()
                .endpoint
                .as_str(),
            "https://sqs.us-east-1.amazonaws.com/"
        );
    }

    #[test]
    fn endpoint_override_keeps_queue_url() {
        let q = QueueRef::parse(
            "http://sqs.us-east-1.127.0.0.1:4576/000000000000/login-queue",
            Some("http://127.0.0.1:4576"),
        )
        .unwrap();
        assert_eq!(q.endpoint.as_str(), "http://127.0.0.1:4576/");
        assert_eq!(
            q.queue_url,
            "http://sqs.us-east-1.127.0.0.1:4576/000000000000/login-queue"
        );
        assert_eq!(q.host_region.as_deref(), Some("us-east-1"));
        assert!(matches!(
            QueueRef::parse("http://h/1/q", Some("ftp://x")),
            Err(SqsError::InvalidConfig(_))
        ));
        let e = QueueRef::parse("http://h/1/q", Some("http://admin:hunter2@127.0.0.1:4566"))
            .unwrap_err();
        assert!(matches!(e, SqsError::InvalidConfig(_)));
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn lock_a_host_the_url_parser_reads_differently_cannot_borrow_another_queues_lock() {
        for url in [
            "http://localhost\\sqs.us-east-1.amazonaws.com/123456789012/q",
            "https://sqs.us-east-1.amazonaws.com\\@evil/123456789012/q",
            "http://localhost%2f.sqs.us-east-1.amazonaws.com/123456789012/q",
            "http://local host/1/q",
        ] {
            assert!(
                matches!(
                    QueueRef::parse(url, None),
                    Err(SqsError::InvalidQueueUrl { .. })
                ),
                "{url}"
            );
        }
        // what real and emulator queue URLs use still parses
        for url in [
            "https://sqs.us-east-1.amazonaws.com/123456789012/q",
            "http://[::1]:4566/000000000000/q",
            "http://my_host:4566/000000000000/q",
        ] {
            assert!(QueueRef::parse(url, None).is_ok(), "{url}");
        }
        let fauxqs = "http://sqs.us-east-1.127.0.0.1:4599/000000000000/q";
        assert!(QueueRef::parse(fauxqs, Some("http://127.0.0.1:4599")).is_ok());
    }

    #[test]
    fn lock_spellings_of_one_queue_share_a_key() {
        let key = |u: &str| QueueRef::parse(u, None).unwrap().lock_key;
        let q = key("http://localhost:4566/000000000000/login-queue");
        assert_eq!(q, "http://localhost:4566/000000000000/login-queue");
        for same in [
            "HTTP://LOCALHOST:4566/000000000000/login-queue",
            "http://localhost:4566//000000000000/login-queue/",
            "http://localhost.:4566/000000000000/login-queue",
        ] {
            assert_eq!(key(same), q, "{same}");
        }
        assert_eq!(key("http://h/1/q"), key("http://h:80/1/q"));
        assert_eq!(key("http://127.1:9/1/q"), key("http://127.0.0.1:9/1/q"));
        assert_eq!(key("http://[0:0::1]:9/1/q"), key("http://[::1]:9/1/q"));
        assert_eq!(key("https://h/1/q"), key("https://h:443/1/q"));
        // every endpoint name of an AWS region is one queue
        let aws = key("https://sqs.us-east-1.amazonaws.com/123456789012/q");
        assert_eq!(aws, "sqs:us-east-1:123456789012:q");
        assert_eq!(
            key("https://us-east-1.queue.amazonaws.com/123456789012/q"),
            aws
        );
        assert_eq!(
            key("https://vpce-0a-1.sqs.us-east-1.vpce.amazonaws.com/123456789012/q"),
            aws
        );
        // the legacy global endpoint is us-east-1's (0.4.0 locked it apart,
        // so two drains of one queue could run at once)
        assert_eq!(key("https://queue.amazonaws.com/123456789012/q"), aws);
        assert_eq!(key("https://QUEUE.amazonaws.com./123456789012/q"), aws);
        // and different queues are different
        assert_ne!(
            key("http://localhost:4566/000000000000/login-Queue"),
            q,
            "names are case-sensitive"
        );
        assert_ne!(key("http://localhost:4567/000000000000/login-queue"), q);
        assert_ne!(
            key("https://sqs.us-east-2.amazonaws.com/123456789012/q"),
            aws
        );
        assert!(QueueRef::parse("http://h:x/1/q", None).is_err());
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "",
            "login-queue",
            "ftp://localhost/000000000000/q",
            "http://localhost:4566/",
            "http://localhost:4566/q",
            "http://localhost:4566/1/2/q",
            "http://user:pw@localhost:4566/1/q",
            "http://localhost:4566/1/q?Action=DeleteQueue",
            "http://localhost:4566/1/bad%20name",
            "http://localhost:4566/1/q;DROP",
        ] {
            let e = QueueRef::parse(url, None).unwrap_err();
            assert!(
                matches!(e, SqsError::InvalidQueueUrl { .. }),
                "{url}: {e:?}"
            );
        }
        // the message names the problem but never echoes a password
        let e = QueueRef::parse("http://user:hunter2@localhost/1/q", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("credentials do not belong in the URL"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("user"), "{e}");
        assert_eq!(for_message(&"x".repeat(500)).len(), 203);
    }

    #[test]
    fn region_shapes() {
        assert!(
            is_region("us-east-1") && is_region("us-gov-west-1") && is_region("ap-southeast-4")
        );
        assert!(
            !is_region("localhost")
                && !is_region("us-east")
                && !is_region("127")
                && !is_region("sqs")
        );
        assert_eq!(region_from_host("localhost"), None);
        assert_eq!(region_from_host("127.0.0.1"), None);
    }
}
