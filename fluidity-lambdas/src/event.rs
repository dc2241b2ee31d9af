//! The shapes a Lambda receives and returns: Function URL (payload v2) and API Gateway proxy
//! events carry the request as a JSON string in `body` (possibly base64) and the caller's IP
//! in `requestContext`; a direct invocation passes the request object itself. Answers go
//! back as the proxy wrapper `{statusCode, headers, body}`, as the Go functions did.

use std::net::IpAddr;

use base64::Engine;
use serde_json::{Value, json};

/// A request taken out of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The request object (`{}` when the event had no body).
    pub body: Value,
    /// The caller's source IP, when the event carries one.
    pub source_ip: Option<IpAddr>,
}

/// Extracts the request and the caller's IP from any of the three event forms.
pub fn parse(event: Value) -> Result<Incoming, String> {
    let source_ip = event
        .pointer("/requestContext/http/sourceIp")
        .or_else(|| event.pointer("/requestContext/identity/sourceIp"))
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse().ok());
    // Go's rule: a string `body` is the request; a proxy event without one has an empty
    // request; anything else is a direct invocation whose payload is the request.
    let body = match event.get("body") {
        Some(Value::String(text)) => {
            let base64 = event
                .get("isBase64Encoded")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let bytes = if base64 {
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|_| "body is not valid base64".to_owned())?
            } else {
                text.clone().into_bytes()
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|_| "Invalid JSON in request body".to_owned())?
            }
        }
        _ if event.get("requestContext").is_some() => json!({}),
        _ => event.clone(),
    };
    Ok(Incoming { body, source_ip })
}

/// The proxy-wrapper answer.
pub fn respond(status: u16, body: &Value) -> Value {
    json!({
        "statusCode": status,
        "headers": { "Content-Type": "application/json" },
        "body": body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn all_three_event_forms() {
        let url = json!({"requestContext": {"http": {"sourceIp": "198.51.100.7"}}, "body": "{\"instance_id\":\"x\"}", "isBase64Encoded": false});
        let parsed = parse(url).unwrap();
        assert_eq!(parsed.body, json!({"instance_id": "x"}));
        assert_eq!(parsed.source_ip, Some("198.51.100.7".parse().unwrap()));

        let api = json!({"requestContext": {"identity": {"sourceIp": "203.0.113.1"}}, "body": "eyJjc3IiOiJhIn0=", "isBase64Encoded": true});
        let parsed = parse(api).unwrap();
        assert_eq!(parsed.body, json!({"csr": "a"}));
        assert_eq!(parsed.source_ip, Some("203.0.113.1".parse().unwrap()));

        let direct = json!({"instance_id": "y"});
        assert_eq!(
            parse(direct).unwrap(),
            Incoming {
                body: json!({"instance_id": "y"}),
                source_ip: None
            }
        );

        let empty = json!({"requestContext": {"http": {"sourceIp": "198.51.100.7"}}});
        assert_eq!(parse(empty).unwrap().body, json!({}));

        let broken = json!({"requestContext": {}, "body": "{not json"});
        assert_eq!(parse(broken).unwrap_err(), "Invalid JSON in request body");

        let answer = respond(200, &json!({"status": "ready"}));
        assert_eq!(answer["statusCode"], 200);
        assert_eq!(answer["body"], "{\"status\":\"ready\"}");
    }
}
