//! JSON calls to the control plane (Wake, Query, Kill, CA): POST, SigV4 when the endpoint is
//! on AWS, retried with backoff when the failure is transient (network, 5xx), and the Go
//! functions' proxy-wrapped answers unwrapped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fluidity_core::control::{SignRequest, SignResponse, unwrap_proxy_response};
use fluidity_core::{Backoff, CertIssuer, IssuedCertificate};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sign::RequestSigner;
use crate::{CallError, Error};

/// Attempts per call (transient failures only).
const ATTEMPTS: u32 = 3;
/// The pause before the first retry (then doubled, jittered).
const FIRST_RETRY: Duration = Duration::from_millis(300);
/// Deadline of one attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a CA answer with its chain is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// An HTTP client for control-plane calls: HTTPS verified against the Mozilla roots, with
/// aws-lc-rs (reqwest is built without a crypto provider of its own).
pub fn http_client() -> Result<reqwest::Client, Error> {
    http_client_builder()?
        .build()
        .map_err(|e| Error::HttpClient(e.into()))
}

/// The builder behind [`http_client`], for callers that add settings (timeouts, test
/// resolvers).
pub fn http_client_builder() -> Result<reqwest::ClientBuilder, Error> {
    let tls = rustls::ClientConfig::builder_with_provider(fluidity_core::pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::HttpClient(e.into()))?
        .with_root_certificates(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
        .with_no_client_auth();
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls))
}

/// Calls control-plane endpoints.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    http: reqwest::Client,
    signer: Arc<RequestSigner>,
}

impl ControlPlaneClient {
    /// A client over `http` (which should verify TLS: Function URLs are HTTPS) that signs
    /// with `signer`.
    pub fn new(http: reqwest::Client, signer: Arc<RequestSigner>) -> Self {
        ControlPlaneClient { http, signer }
    }

    /// POSTs `request` to `url` and decodes the answer; `what` names the call in errors.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        request: &Q,
    ) -> Result<R, Error> {
        let failed = |source: CallError| Error::Call {
            what: what.to_owned(),
            url: url.to_owned(),
            source,
        };
        let body = serde_json::to_vec(request).map_err(|e| failed(CallError::Encode(e)))?;
        let mut backoff = Backoff::new(FIRST_RETRY, FIRST_RETRY * 4);
        let mut attempt = 1;
        loop {
            match self.call_once(url, &body).await {
                Ok(answer) => {
                    return serde_json::from_value(answer)
                        .map_err(|e| failed(CallError::UnexpectedAnswer(e)));
                }
                Err(Failure::Transient(e)) if attempt < ATTEMPTS => {
                    tracing::debug!(what, attempt, error = %e, "control-plane call failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    attempt += 1;
                }
                Err(Failure::Transient(e) | Failure::Final(e)) => return Err(failed(e)),
                Err(Failure::Signing(e)) => return Err(e),
            }
        }
    }

    async fn call_once(&self, url: &str, body: &[u8]) -> Result<serde_json::Value, Failure> {
        const CONTENT_TYPE: &str = "application/json";
        let signed = self
            .signer
            .sign(url, &[("content-type", CONTENT_TYPE)], body)
            .await
            .map_err(Failure::Signing)?;
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.to_vec())
            .timeout(CALL_TIMEOUT);
        for (name, value) in &signed {
            request = request.header(name.as_str(), value.as_str());
        }
        let unreachable = |e| Failure::Transient(CallError::Unreachable(e));
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(Failure::Final(CallError::TooLarge {
                    status: status.as_u16(),
                    limit: MAX_ANSWER,
                }));
            }
            answer.extend_from_slice(&chunk);
        }
        let answered = |message: String| {
            let error = CallError::Answered {
                status: status.as_u16(),
                message,
            };
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                Failure::Transient(error)
            } else {
                Failure::Final(error)
            }
        };
        let value: serde_json::Value = serde_json::from_slice(&answer).map_err(|_| {
            answered(String::from_utf8_lossy(&answer[..answer.len().min(512)]).into_owned())
        })?;
        let value = unwrap_proxy_response(value).map_err(|message| {
            Failure::Final(CallError::Answered {
                status: status.as_u16(),
                message,
            })
        })?;
        // Lambda's own errors say `message` (e.g. a Function URL refusing a bad signature).
        let error = value
            .get("error")
            .or_else(|| value.get("Message").or_else(|| value.get("message")))
            .filter(|e| !e.is_null());
        if !status.is_success() {
            let message = error
                .and_then(|e| e.as_str())
                .map_or_else(|| value.to_string(), str::to_owned);
            return Err(answered(message));
        }
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            let message = error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(Failure::Final(CallError::Answered {
                status: status.as_u16(),
                message,
            }));
        }
        Ok(value)
    }
}

/// How one attempt failed.
enum Failure {
    /// Worth retrying.
    Transient(CallError),
    /// Not worth retrying.
    Final(CallError),
    /// The request could not be signed (no credentials): not worth retrying.
    Signing(Error),
}

/// Gets certificates signed by the control plane's CA endpoint.
#[derive(Debug, Clone)]
pub struct CaClient {
    client: ControlPlaneClient,
    url: String,
}

impl CaClient {
    /// An issuer that calls the CA at `url`.
    pub fn new(client: ControlPlaneClient, url: String) -> Self {
        CaClient { client, url }
    }
}

#[async_trait]
impl CertIssuer for CaClient {
    async fn issue(&self, csr_pem: &str) -> fluidity_core::Result<IssuedCertificate> {
        let request = SignRequest {
            csr: csr_pem.to_owned(),
        };
        let answer: SignResponse = self
            .client
            .call("CA", &self.url, &request)
            .await
            .map_err(fluidity_core::Error::issuer)?;
        Ok(IssuedCertificate {
            certificate_pem: answer.certificate,
            chain_pem: answer.chain,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use aws_credential_types::Credentials;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::sign::{SigningScope, sign_at};

    const HOST: &str = "abc123.lambda-url.eu-west-1.on.aws";

    /// A one-request-per-connection HTTP server answering `answers` in turn; returns its
    /// address and the requests it saw (head lines lowercased, then the body).
    async fn endpoint(answers: Vec<(u16, String)>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Head, then Content-Length bytes of body.
                loop {
                    let n = stream.read(&mut buffer).await.unwrap();
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if rest.len() >= length || n == 0 {
                            break;
                        }
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request).to_string());
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        (address, seen)
    }

    fn client_for(address: SocketAddr, credentials: Credentials) -> ControlPlaneClient {
        let http = http_client_builder()
            .unwrap()
            .resolve(HOST, address)
            .no_proxy()
            .build()
            .unwrap();
        ControlPlaneClient::new(http, Arc::new(RequestSigner::with_credentials(credentials)))
    }

    fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
        request.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    #[tokio::test]
    async fn calls_to_function_urls_carry_a_valid_signature() {
        let (address, seen) = endpoint(vec![(200, r#"{"status":"ready"}"#.into())]).await;
        let credentials =
            Credentials::new("AKIDTEST", "secret", Some("token".into()), None, "test");
        let client = client_for(address, credentials.clone());
        let url = format!("http://{HOST}:{}/", address.port());
        let answer: serde_json::Value = client
            .call("Query", &url, &serde_json::json!({"instance_id": "x"}))
            .await
            .unwrap();
        assert_eq!(answer["status"], "ready");

        let request = seen.lock().unwrap()[0].clone();
        let authorization = header(&request, "authorization").unwrap();
        assert!(
            authorization.contains("/eu-west-1/lambda/aws4_request"),
            "{authorization}"
        );
        assert_eq!(header(&request, "x-amz-security-token"), Some("token"));
        // Re-sign what the server received at the time it says: the same signature.
        let date = header(&request, "x-amz-date").unwrap();
        let time = time::PrimitiveDateTime::parse(
            date,
            time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
        )
        .unwrap()
        .assume_utc();
        let body = request.split_once("\r\n\r\n").unwrap().1;
        let expected = sign_at(
            &credentials,
            &SigningScope::for_url(&url).unwrap(),
            &url,
            &[("content-type", "application/json")],
            body.as_bytes(),
            time.into(),
        )
        .unwrap();
        let expected = expected
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str());
        assert_eq!(Some(authorization), expected);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_refusals_are_not() {
        let (address, seen) = endpoint(vec![
            (503, r#"{"message":"Service Unavailable"}"#.into()),
            (
                200,
                r#"{"statusCode":200,"body":"{\"status\":\"ready\"}"}"#.into(),
            ),
            (403, r#"{"Message":"Forbidden"}"#.into()),
            (200, r#"{"error":"CSR not provided"}"#.into()),
        ])
        .await;
        let client = client_for(address, Credentials::new("A", "s", None, None, "test"));
        let url = format!("http://{HOST}:{}/", address.port());
        // 503 then a proxy-wrapped answer: retried, unwrapped.
        let answer: serde_json::Value = client
            .call("Wake", &url, &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(answer["status"], "ready");
        // 403 (a refused signature): not retried, and the reason is shown.
        let err = client
            .call::<_, serde_json::Value>("Kill", &url, &serde_json::json!({}))
            .await
            .unwrap_err();
        let Error::Call { what, source, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(what, "Kill");
        assert!(
            matches!(source, CallError::Answered { status: 403, message } if message == "Forbidden"),
            "{source:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("Kill ({url}): HTTP 403: Forbidden")
        );
        // An error in a 200 answer (the Go functions' habit) is an error.
        let err = client
            .call::<_, serde_json::Value>("CA", &url, &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Call { source: CallError::Answered { status: 200, message }, .. }
                if message == "CSR not provided"),
            "{err:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 4);
    }
}
