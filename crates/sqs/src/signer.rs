//! SigV4 request signing with the aws-sigv4 crate.

use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::{Credentials, SqsError};

/// The headers (`authorization`, `x-amz-date`, and `x-amz-security-token`
/// with temporary credentials) that sign a request with `headers` and `body`.
#[allow(clippy::too_many_arguments)]
pub fn sign_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, SqsError> {
    let identity: Identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
        None,
        "fetch_etl",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SqsError::Signing(creds.redact(&e.to_string())))?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SqsError::Signing(creds.redact(&e.to_string())))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| SqsError::Signing(creds.redact(&e.to_string())))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_string),
        }
    }

    fn signed(body: &[u8], token: Option<&str>) -> Vec<(String, String)> {
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        sign_headers(
            "POST",
            "http://localhost:4566/",
            &[
                ("content-type", "application/x-amz-json-1.0"),
                ("x-amz-target", "AmazonSQS.ReceiveMessage"),
            ],
            body,
            &creds(token),
            "us-east-1",
            "sqs",
            t,
        )
        .unwrap()
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn signs_with_scope_and_signed_headers() {
        let h = signed(b"{}", None);
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        let auth = header(&h, "authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sqs/aws4_request"
            ),
            "{auth}"
        );
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-target"),
            "{auth}"
        );
        assert!(!auth.contains("wJalr"));
        assert!(header(&h, "x-amz-security-token").is_none());
    }

    #[test]
    fn signature_covers_the_body_and_token() {
        let a = signed(b"{}", None);
        let b = signed(b"{\"x\":1}", None);
        assert_ne!(header(&a, "authorization"), header(&b, "authorization"));
        let t = signed(b"{}", Some("SESSIONTOKEN"));
        assert_eq!(header(&t, "x-amz-security-token"), Some("SESSIONTOKEN"));
        // deterministic for fixed inputs
        assert_eq!(
            header(&a, "authorization"),
            header(&signed(b"{}", None), "authorization")
        );
    }
}
