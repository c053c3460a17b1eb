//! Where the credentials that sign SQS requests come from: the standard AWS
//! chain, in the SDKs' order, with an optional AssumeRole on top, cached per
//! backend and refreshed ahead of expiry.
//!
//! - [`chain`]: the providers (aws-config's), tried in order, each failure
//!   described without secrets or remote text.
//! - [`cache`]: one resolved set per backend, refreshed before it expires.
//!
//! Nothing here imports pgrx: the glue (src/postgres/aws.rs) reads the
//! settings into a [`ChainConfig`] and raises the [`CredentialsError`]s.

pub mod cache;
pub mod chain;

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::Credentials;
use fetch_etl_core::error::{Classified, ErrorKind};

/// Where a set of credentials came from: a public contract, recorded in
/// `drain_runs.credential_source` (with `+assume_role` when a role was
/// assumed on top).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The superuser-only `fetch_etl.aws_*` settings.
    Settings,
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` [/ `AWS_SESSION_TOKEN`].
    Environment,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (EKS IRSA).
    WebIdentity,
    /// A profile of the shared config and credentials files.
    Profile(String),
    /// The ECS / EKS Pod Identity container endpoint.
    Container,
    /// EC2 instance metadata (IMDSv2).
    Imds,
}

impl Source {
    /// The providers of the chain, in the order they are tried (the profile
    /// named by `AWS_PROFILE`, else `default`).
    pub fn chain_order(profile: &str) -> [Source; 6] {
        [
            Source::Settings,
            Source::Environment,
            Source::WebIdentity,
            Source::Profile(profile.to_string()),
            Source::Container,
            Source::Imds,
        ]
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Settings => f.write_str("settings"),
            Source::Environment => f.write_str("environment"),
            Source::WebIdentity => f.write_str("web_identity"),
            Source::Profile(name) => write!(f, "profile:{name}"),
            Source::Container => f.write_str("container"),
            Source::Imds => f.write_str("imds"),
        }
    }
}

/// The role to assume with whatever the chain found (cross-account queues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub role_arn: String,
    pub external_id: Option<String>,
    pub session_name: String,
}

/// Which credentials a backend resolves, and how long it may wait for them.
/// (`Debug` is safe: [`Credentials`]' own hides the secrets.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    /// Keys from the settings: when set, the chain stops there.
    pub settings: Option<Credentials>,
    /// The region of the queue: STS is called at its regional endpoint.
    pub region: String,
    /// The whole resolution (every provider, and the AssumeRole) is bounded by this.
    pub timeout: Duration,
    pub assume_role: Option<AssumeRole>,
}

/// Where resolved credentials came from and whose they are, for
/// `drain_runs`: never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub source: Source,
    /// The role assumed on top of `source`, if any.
    pub assumed_role: Option<String>,
    /// The role ARN when known (web identity, AssumeRole), else the access
    /// key id's last 4 characters as `key …ABCD`.
    pub identity: String,
}

impl Provenance {
    /// `drain_runs.credential_source`: `imds`, `profile:ops+assume_role`, ...
    pub fn source_text(&self) -> String {
        match self.assumed_role {
            Some(_) => format!("{}+assume_role", self.source),
            None => self.source.to_string(),
        }
    }
}

/// `key …ABCD`: the last 4 characters of an access key id, enough to tell
/// keys apart in a log, too few to be one.
pub fn key_hint(access_key_id: &str) -> String {
    let chars: Vec<char> = access_key_id.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("key …{tail}")
}

/// Credentials resolved by the chain.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub creds: Credentials,
    pub expiry: Option<SystemTime>,
    pub provenance: Provenance,
}

/// Why one provider of the chain yielded nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub source: Source,
    pub why: String,
}

/// Errors of the credential chain. Messages name providers and causes,
/// never a secret or text from a remote reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("no AWS credentials found; tried {}", tried_list(.0))]
    NoneFound(Vec<Tried>),
    #[error("AWS credentials from {provider} failed: {why}")]
    Failed { provider: Source, why: String },
    #[error("assuming role {role_arn} with credentials from {base} failed: {why}")]
    AssumeRoleFailed {
        base: Source,
        role_arn: String,
        why: String,
    },
    #[error(
        "the AWS credentials from {provider} expired {ago_s} s ago and could not be refreshed"
    )]
    Expired { provider: Source, ago_s: u64 },
    #[error("resolving AWS credentials took longer than {seconds} s (fetch_etl.http_timeout); tried {}", tried_list(.tried))]
    TimedOut { seconds: u64, tried: Vec<Tried> },
}

fn tried_list(tried: &[Tried]) -> String {
    tried
        .iter()
        .map(|t| format!("{}: {}", t.source, t.why))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Classified for CredentialsError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidAuthorization
    }
}

/// The hint for an error: where to look.
pub const HINT: &str = "fetch_etl takes credentials from the superuser-only fetch_etl.aws_* settings, else the server's environment, web identity (IRSA), the shared config files, the container endpoint or EC2 instance metadata, in that order: see docs/operations.md, Credentials on AWS.";

/// When credentials fetched at `fetched`, expiring at `expiry`, should be
/// replaced: 5 minutes before they expire, or halfway through their life
/// when they live less than 10 minutes. Credentials without an expiry
/// (keys) are never kept past the call that read them.
pub fn refresh_at(fetched: SystemTime, expiry: Option<SystemTime>) -> Option<SystemTime> {
    const AHEAD: Duration = Duration::from_secs(300);
    let expiry = expiry?;
    let life = expiry.duration_since(fetched).unwrap_or_default();
    Some(expiry - AHEAD.min(life / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_named_as_drain_runs_records_them() {
        let names: Vec<String> = Source::chain_order("ops")
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "settings",
                "environment",
                "web_identity",
                "profile:ops",
                "container",
                "imds"
            ]
        );
        let p = Provenance {
            source: Source::Imds,
            assumed_role: Some("arn:aws:iam::1:role/x".into()),
            identity: "arn:aws:iam::1:role/x".into(),
        };
        assert_eq!(p.source_text(), "imds+assume_role");
    }

    #[test]
    fn key_hint_shows_only_the_last_four() {
        assert_eq!(key_hint("AKIAIOSFODNN7EXAMPLE"), "key …MPLE");
        assert_eq!(key_hint("AB"), "key …AB");
    }

    #[test]
    fn refresh_five_minutes_ahead_or_halfway_for_short_lives() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = t0 + Duration::from_secs(3600);
        assert_eq!(
            refresh_at(t0, Some(hour)),
            Some(hour - Duration::from_secs(300))
        );
        let short = t0 + Duration::from_secs(70);
        assert_eq!(
            refresh_at(t0, Some(short)),
            Some(t0 + Duration::from_secs(35))
        );
        assert_eq!(refresh_at(t0, None), None);
        // already expired when fetched: refresh at once
        assert_eq!(
            refresh_at(t0, Some(t0 - Duration::from_secs(1))),
            Some(t0 - Duration::from_secs(1))
        );
    }

    #[test]
    fn the_no_credentials_error_lists_every_provider() {
        let tried = Source::chain_order("default")
            .into_iter()
            .map(|source| Tried {
                source,
                why: "not set".into(),
            })
            .collect();
        let e = CredentialsError::NoneFound(tried).to_string();
        for name in [
            "settings",
            "environment",
            "web_identity",
            "profile:default",
            "container",
            "imds",
        ] {
            assert!(e.contains(&format!("{name}: not set")), "{e}");
        }
        assert_eq!(
            CredentialsError::NoneFound(vec![]).kind(),
            ErrorKind::InvalidAuthorization
        );
    }
}
