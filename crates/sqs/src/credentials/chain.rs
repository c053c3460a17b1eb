//! The standard AWS credential chain, in the SDKs' order, with aws-config's
//! providers: settings, environment, web identity, profile, container, IMDS
//! (v2 only: aws-config's IMDS client never falls back to v1). An AssumeRole
//! on top when `fetch_etl.aws_role_arn` is set.
//!
//! Each provider is asked in turn; one that has nothing configured says so
//! and the next is asked, one that is configured but fails stops the chain
//! (as in the SDKs: a broken IRSA setup must not silently fall through to
//! the instance role). The whole walk has one deadline.
//!
//! Messages: aws-config's own texts for "not configured" and "invalid
//! configuration" are local (variable names, file paths, parse positions);
//! everything else is described by a fixed phrase and, for STS, the error
//! code, because those texts can quote a remote reply or a
//! credential_process's output.

use std::error::Error as StdError;

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::imds::client::error::ImdsError;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError as AwsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;
use tokio::time::{timeout_at, Instant};

use super::{
    key_hint, AssumeRole, ChainConfig, CredentialsError, Provenance, Resolved, Source, Tried,
};
use crate::Credentials;

/// Longest provider message kept.
const MAX_WHY: usize = 240;

/// The chain for one [`ChainConfig`]. Providers are built once and reused:
/// each re-reads its variables and files when asked.
pub struct Chain {
    config: ChainConfig,
    providers: Vec<(Source, SharedCredentialsProvider)>,
}

/// A variable of the server's environment, trimmed; None when unset or blank.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn timeouts(config: &ChainConfig) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(config.timeout)
        .read_timeout(config.timeout)
        .operation_timeout(config.timeout)
        .build()
}

impl Chain {
    /// Builds the providers. Call inside the tokio runtime (aws-config
    /// takes its sleep and HTTP client from it).
    pub fn new(config: ChainConfig) -> Chain {
        let conf = ProviderConfig::without_region()
            .with_region(Some(Region::new(config.region.clone())))
            .with_timeout_config(timeouts(&config));
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let providers = vec![
            (
                Source::Environment,
                SharedCredentialsProvider::new(EnvironmentVariableCredentialsProvider::new()),
            ),
            (
                Source::WebIdentity,
                SharedCredentialsProvider::new(
                    WebIdentityTokenCredentialsProvider::builder()
                        .configure(&conf)
                        .build(),
                ),
            ),
            (
                Source::Profile(profile),
                SharedCredentialsProvider::new(
                    ProfileFileCredentialsProvider::builder()
                        .configure(&conf)
                        .build(),
                ),
            ),
            (
                Source::Container,
                SharedCredentialsProvider::new(
                    EcsCredentialsProvider::builder().configure(&conf).build(),
                ),
            ),
            (
                Source::Imds,
                SharedCredentialsProvider::new(
                    ImdsCredentialsProvider::builder().configure(&conf).build(),
                ),
            ),
        ];
        Chain { config, providers }
    }

    /// Walks the chain (and assumes the role, if set), all within
    /// `config.timeout`.
    pub async fn resolve(&self) -> Result<Resolved, CredentialsError> {
        let deadline = Instant::now() + self.config.timeout;
        let (base, source) = self.base(deadline).await?;
        match &self.config.assume_role {
            None => {
                let identity = match source {
                    Source::WebIdentity => env("AWS_ROLE_ARN"),
                    _ => None,
                }
                .unwrap_or_else(|| key_hint(base.access_key_id()));
                Ok(resolved(
                    &base,
                    Provenance {
                        source,
                        assumed_role: None,
                        identity,
                    },
                ))
            }
            Some(role) => self.assume(base, source, role, deadline).await,
        }
    }

    async fn base(
        &self,
        deadline: Instant,
    ) -> Result<(aws_credential_types::Credentials, Source), CredentialsError> {
        if let Some(c) = &self.config.settings {
            return Ok((to_aws(c), Source::Settings));
        }
        let mut tried = vec![Tried {
            source: Source::Settings,
            why: "fetch_etl.aws_access_key_id is not set".into(),
        }];
        for (source, provider) in &self.providers {
            match timeout_at(deadline, provider.provide_credentials()).await {
                Err(_) => {
                    tried.push(Tried {
                        source: source.clone(),
                        why: "timed out".into(),
                    });
                    return Err(CredentialsError::TimedOut {
                        seconds: self.config.timeout.as_secs(),
                        tried,
                    });
                }
                Ok(Ok(c)) => return Ok((c, source.clone())),
                Ok(Err(e @ AwsError::CredentialsNotLoaded(_))) => tried.push(Tried {
                    source: source.clone(),
                    why: local_text(&e),
                }),
                // Off EC2 (or with IMDS disabled, or a hop limit of 1 in a
                // container) the token PUT fails or times out: that is IMDS
                // not being there, the end of the chain, not a broken setup.
                Ok(Err(e)) if *source == Source::Imds && imds_token_failed(&e) => tried.push(Tried {
                    source: source.clone(),
                    why: "no IMDSv2 session token (not on EC2, IMDS disabled, or the hop limit is too low for a container)".into(),
                }),
                Ok(Err(e)) => {
                    return Err(CredentialsError::Failed {
                        provider: source.clone(),
                        why: describe(&e),
                    })
                }
            }
        }
        Err(CredentialsError::NoneFound(tried))
    }

    async fn assume(
        &self,
        base: aws_credential_types::Credentials,
        source: Source,
        role: &AssumeRole,
        deadline: Instant,
    ) -> Result<Resolved, CredentialsError> {
        let failed = |why: String| CredentialsError::AssumeRoleFailed {
            base: source.clone(),
            role_arn: role.role_arn.clone(),
            why,
        };
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.config.region.clone()))
            .timeout_config(timeouts(&self.config))
            .credentials_provider(base)
            .load();
        let sdk = timeout_at(deadline, sdk)
            .await
            .map_err(|_| failed("timed out".into()))?;
        let mut builder = AssumeRoleProvider::builder(role.role_arn.clone())
            .session_name(role.session_name.clone())
            .configure(&sdk);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id.clone());
        }
        let provider = timeout_at(deadline, builder.build())
            .await
            .map_err(|_| failed("timed out".into()))?;
        let creds = timeout_at(deadline, provider.provide_credentials())
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| failed(describe(&e)))?;
        Ok(resolved(
            &creds,
            Provenance {
                source,
                assumed_role: Some(role.role_arn.clone()),
                identity: role.role_arn.clone(),
            },
        ))
    }
}

fn to_aws(c: &Credentials) -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new(
        c.access_key_id.clone(),
        c.secret_access_key.clone(),
        c.session_token.clone(),
        None,
        "fetch_etl.aws_settings",
    )
}

fn resolved(c: &aws_credential_types::Credentials, provenance: Provenance) -> Resolved {
    Resolved {
        creds: Credentials {
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: c.session_token().map(str::to_string),
        },
        expiry: c.expiry(),
        provenance,
    }
}

/// An error's text with its causes, for errors aws-config writes from local
/// configuration only; capped.
fn local_text(e: &AwsError) -> String {
    let mut text = e.to_string();
    for c in causes(e) {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
    }
    cap(text)
}

fn cap(mut text: String) -> String {
    if text.len() > MAX_WHY {
        let mut end = MAX_WHY;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A provider failure, without remote text: a fixed phrase per kind, the STS
/// error code when STS answered.
pub(crate) fn describe(e: &AwsError) -> String {
    match e {
        AwsError::CredentialsNotLoaded(_) => "not configured".into(),
        AwsError::ProviderTimedOut(t) => {
            format!("timed out after {} s", t.timeout_duration().as_secs())
        }
        AwsError::InvalidConfiguration(_) => format!("invalid configuration: {}", local_text(e)),
        _ => match remote_failure(e) {
            Some(why) => why,
            None => "the provider failed (its reply is not shown)".into(),
        },
    }
}

/// Whether `e` comes from failing to get an IMDSv2 session token.
fn imds_token_failed(e: &AwsError) -> bool {
    causes(e).any(|c| {
        matches!(
            c.downcast_ref::<ImdsError>(),
            Some(ImdsError::FailedToLoadToken(_))
        )
    })
}

/// `e`'s causes, outermost first.
fn causes<'a>(e: &'a AwsError) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(e.source(), |&c| c.source())
}

/// What STS or IMDS said (a code or a status, never their text), when one
/// of `e`'s causes is their failure.
fn remote_failure(e: &AwsError) -> Option<String> {
    causes(e).find_map(|c| {
        if let Some(s) = c.downcast_ref::<SdkError<AssumeRoleWithWebIdentityError>>() {
            return Some(sdk_failure(s));
        }
        if let Some(s) = c.downcast_ref::<SdkError<AssumeRoleError>>() {
            return Some(sdk_failure(s));
        }
        if let Some(ImdsError::ErrorResponse(r)) = c.downcast_ref::<ImdsError>() {
            return Some(format!(
                "IMDS answered HTTP {}",
                r.response().status().as_u16()
            ));
        }
        None
    })
}

fn sdk_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => match s.err().code() {
            Some(code) => format!("STS refused ({})", safe_code(code)),
            None => "STS refused".into(),
        },
        SdkError::TimeoutError(_) => "STS timed out".into(),
        SdkError::DispatchFailure(_) => "could not reach STS".into(),
        SdkError::ResponseError(_) => "unreadable reply from STS".into(),
        _ => "the STS call failed".into(),
    }
}

/// An error code, kept only if it looks like one.
fn safe_code(code: &str) -> &str {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
    if ok {
        code
    } else {
        "unrecognised code"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_that_are_not_codes_are_not_repeated() {
        assert_eq!(safe_code("AccessDenied"), "AccessDenied");
        assert_eq!(safe_code("InvalidIdentityToken"), "InvalidIdentityToken");
        assert_eq!(
            safe_code("<html>secret AKIA...</html>"),
            "unrecognised code"
        );
        assert_eq!(safe_code(&"A".repeat(65)), "unrecognised code");
    }

    #[test]
    fn provider_errors_are_described_without_their_text() {
        let e = AwsError::provider_error(
            "invalid JSON in response: {\"SecretAccessKey\":\"s3cr3t-from-process\"}",
        );
        let why = describe(&e);
        assert!(!why.contains("s3cr3t"), "{why}");
        let e = AwsError::unhandled("reply body: s3cr3t");
        assert!(!describe(&e).contains("s3cr3t"));
        let e = AwsError::not_loaded("env var AWS_ROLE_ARN not set");
        assert!(
            local_text(&e).contains("AWS_ROLE_ARN"),
            "{}",
            local_text(&e)
        );
    }

    #[test]
    fn long_texts_are_capped() {
        let t = cap("é".repeat(500));
        assert!(t.len() <= MAX_WHY + '…'.len_utf8());
    }

    #[tokio::test]
    async fn settings_win_and_are_named() {
        let cfg = ChainConfig {
            settings: Some(Credentials {
                access_key_id: "AKIDSETTINGS0001".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            }),
            region: "us-east-1".into(),
            timeout: std::time::Duration::from_secs(1),
            assume_role: None,
        };
        let r = Chain::new(cfg).resolve().await.unwrap();
        assert_eq!(r.provenance.source, Source::Settings);
        assert_eq!(r.provenance.identity, "key …0001");
        assert_eq!(r.expiry, None);
    }
}
