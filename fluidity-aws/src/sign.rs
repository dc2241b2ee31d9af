//! SigV4 for control-plane calls.
//!
//! Function URLs (`<id>.lambda-url.<region>.on.aws`) are signed for the `lambda` service and
//! API Gateway (`<id>.execute-api.<region>.amazonaws.com`) for `execute-api`, with the
//! region taken from the host name. Any other host (a local `fluidity-lambdas serve`, a
//! test) is called unsigned. Credentials come from the default AWS chain (environment,
//! profile, SSO, container or instance role), loaded at the first signed call and cached
//! until five minutes before they expire.

use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use tokio::sync::{Mutex, OnceCell};

use crate::{BoxError, Error};

/// Which AWS service and region an endpoint belongs to, when it is one that wants SigV4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningScope {
    /// `lambda` or `execute-api`.
    pub service: &'static str,
    /// The region in the host name.
    pub region: String,
}

impl SigningScope {
    /// The scope for `url`, or `None` when calls to it go unsigned.
    pub fn for_url(url: &str) -> Option<SigningScope> {
        let host = reqwest::Url::parse(url)
            .ok()?
            .host_str()?
            .to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        match labels.as_slice() {
            [_, "lambda-url", region, "on", "aws"] => Some(SigningScope {
                service: "lambda",
                region: (*region).to_owned(),
            }),
            [_, "execute-api", region, "amazonaws", "com" | "com.cn"]
            | [_, "execute-api", region, "amazonaws", "com", "cn"] => Some(SigningScope {
                service: "execute-api",
                region: (*region).to_owned(),
            }),
            _ => None,
        }
    }
}

/// Signs requests with the default credential chain.
#[derive(Debug, Default)]
pub struct RequestSigner {
    provider: OnceCell<aws_credential_types::provider::SharedCredentialsProvider>,
    cached: Mutex<Option<Credentials>>,
}

impl RequestSigner {
    /// A signer that loads credentials at its first use.
    pub fn new() -> Self {
        RequestSigner::default()
    }

    /// A signer with fixed credentials (tests, embedders with their own).
    pub fn with_credentials(credentials: Credentials) -> Self {
        RequestSigner {
            provider: OnceCell::new(),
            cached: Mutex::new(Some(credentials)),
        }
    }

    /// The headers to add to a `POST url` with `body` (with `content-type` already among
    /// `headers`), or none when `url` is not an AWS endpoint.
    pub async fn sign(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, Error> {
        let Some(scope) = SigningScope::for_url(url) else {
            return Ok(Vec::new());
        };
        let credentials = self.credentials(url).await?;
        sign_at(&credentials, &scope, url, headers, body, SystemTime::now())
    }

    async fn credentials(&self, url: &str) -> Result<Credentials, Error> {
        let mut cached = self.cached.lock().await;
        let fresh_enough = |c: &Credentials| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + Duration::from_secs(300))
        };
        if let Some(credentials) = cached.as_ref().filter(|c| fresh_enough(c)) {
            return Ok(credentials.clone());
        }
        let provider = self
            .provider
            .get_or_try_init(|| async {
                let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
                config
                    .credentials_provider()
                    .ok_or_else(|| Error::NoCredentials {
                        url: url.to_owned(),
                        source: "the AWS configuration has no credential provider".into(),
                    })
            })
            .await?;
        let credentials =
            provider
                .provide_credentials()
                .await
                .map_err(|e| Error::NoCredentials {
                    url: url.to_owned(),
                    source: e.into(),
                })?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }
}

/// SigV4 headers for a request at `time`.
pub fn sign_at(
    credentials: &Credentials,
    scope: &SigningScope,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, Error> {
    let failed = |source: BoxError| Error::Signing {
        url: url.to_owned(),
        source,
    };
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&scope.region)
        .name(scope.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(e.into()))?
        .into();
    let request = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| failed(e.into()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| failed(e.into()))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_aws_endpoints_are_signed() {
        assert_eq!(
            SigningScope::for_url("https://abc123.lambda-url.eu-west-1.on.aws/"),
            Some(SigningScope {
                service: "lambda",
                region: "eu-west-1".into()
            })
        );
        assert_eq!(
            SigningScope::for_url("https://a1b2.execute-api.us-east-2.amazonaws.com/prod/sign"),
            Some(SigningScope {
                service: "execute-api",
                region: "us-east-2".into()
            })
        );
        assert_eq!(SigningScope::for_url("http://127.0.0.1:9000/wake"), None);
        assert_eq!(SigningScope::for_url("https://example.com/wake"), None);
        assert_eq!(
            SigningScope::for_url("https://lambda-url.eu-west-1.on.aws.evil.com/"),
            None
        );
        assert_eq!(SigningScope::for_url("not a url"), None);
    }

    /// The AWS SigV4 test suite's `post-vanilla` case: the same request, key and time must
    /// give the published signature, so the headers we send are the ones AWS computes.
    #[test]
    fn matches_the_aws_test_suite() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let scope = SigningScope {
            service: "service",
            region: "us-east-1".into(),
        };
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 20150830T123600Z
        let headers = sign_at(
            &credentials,
            &scope,
            "https://example.amazonaws.com/",
            &[("host", "example.amazonaws.com")],
            b"",
            time,
        )
        .unwrap();
        let authorization = headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str())
            .unwrap();
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
        assert!(headers.iter().any(|(name, _)| name == "x-amz-date"));
    }

    #[tokio::test]
    async fn session_tokens_are_sent() {
        let signer = RequestSigner::with_credentials(Credentials::new(
            "AKID",
            "secret",
            Some("token".into()),
            None,
            "test",
        ));
        let headers = signer
            .sign(
                "https://abc.lambda-url.eu-west-1.on.aws/",
                &[("content-type", "application/json")],
                b"{}",
            )
            .await
            .unwrap();
        assert!(
            headers
                .iter()
                .any(|(name, value)| name == "x-amz-security-token" && value == "token")
        );
        assert!(
            signer
                .sign("http://127.0.0.1:1/wake", &[], b"{}")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
