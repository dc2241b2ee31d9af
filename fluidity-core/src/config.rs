//! Layered configuration for the binaries and embedders: defaults < YAML file (with `${VAR}`
//! expansion) < `FLUIDITY_<KEY>` environment variables < command-line flags.
//!
//! A config type lists its keys and aliases ([`ConfigKeys`]) and derives `Deserialize` with
//! `#[serde(default)]`. Unknown file keys are reported as warnings, not errors (Go configs carry
//! keys Fluidity does not need). Errors name the key and where its value came from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "FLUIDITY_";

/// The keys a config type accepts.
pub trait ConfigKeys {
    /// Canonical keys (the serde field names).
    const KEYS: &'static [&'static str];
    /// `(alias, canonical key)` pairs: other names accepted for a key.
    const ALIASES: &'static [(&'static str, &'static str)];
    /// Keys of flattened parts (e.g. [`CertificateSettings::KEYS`]); their aliases go in
    /// [`ConfigKeys::ALIASES`] like any other.
    const BASE: &'static [&'static str] = &[];
}

/// A loaded config and what the loader noticed.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The config.
    pub config: T,
    /// Things worth a warning in the log (unknown keys, ...).
    pub warnings: Vec<String>,
}

fn config_error(origin: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        origin: origin.into(),
        reason: reason.to_string(),
    }
}

/// Loads `T` from the optional YAML `file`, then the environment (through `env`, so tests do
/// not touch the process environment), then `flags` (`(key, value)`, values parsed as YAML
/// scalars, e.g. `"8080"`, `"true"`, `"[]"`).
pub fn load<T: DeserializeOwned + ConfigKeys>(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
    flags: &[(&str, String)],
) -> Result<Loaded<T>> {
    let mut values = Map::new();
    let mut origins: HashMap<String, String> = HashMap::new();
    let mut warnings = Vec::new();
    let canonical = |key: &str| -> Option<&'static str> {
        T::KEYS
            .iter()
            .chain(T::BASE)
            .find(|k| **k == key)
            .copied()
            .or_else(|| T::ALIASES.iter().find(|(a, _)| *a == key).map(|(_, k)| *k))
    };

    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config file {}", path.display()), e))?;
        let document: Value =
            yaml_serde::from_str(&text).map_err(|e| config_error(path.display().to_string(), e))?;
        let entries = match document {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            _ => {
                return Err(config_error(
                    path.display().to_string(),
                    "must be a YAML mapping of keys to values",
                ));
            }
        };
        for (key, value) in entries {
            let origin = format!("key `{key}` in {}", path.display());
            let Some(name) = canonical(&key) else {
                warnings.push(format!(
                    "unknown config key `{key}` in {} (ignored)",
                    path.display()
                ));
                continue;
            };
            let mut missing = Vec::new();
            let value = expand_placeholders(value, &env, &mut missing)
                .map_err(|e| config_error(&origin, e))?;
            for name in missing {
                warnings.push(format!(
                    "{origin}: environment variable {name} is not set (read as empty)"
                ));
            }
            values.insert(name.to_owned(), value);
            origins.insert(name.to_owned(), origin);
        }
    }

    let env_names = T::KEYS
        .iter()
        .chain(T::BASE)
        .map(|k| (*k, *k))
        .chain(T::ALIASES.iter().map(|(alias, key)| (*alias, *key)));
    for (name, key) in env_names {
        let variable = format!("{ENV_PREFIX}{}", name.to_ascii_uppercase());
        if let Some(raw) = env(&variable) {
            values.insert(key.to_owned(), scalar(&raw));
            origins.insert(key.to_owned(), format!("environment variable {variable}"));
        }
    }

    for (name, raw) in flags {
        let key =
            canonical(name).ok_or_else(|| config_error(format!("flag {name}"), "unknown key"))?;
        values.insert(key.to_owned(), scalar(raw));
        origins.insert(key.to_owned(), format!("command-line flag for `{key}`"));
    }

    match serde_json::from_value::<T>(Value::Object(values.clone())) {
        Ok(config) => Ok(Loaded { config, warnings }),
        Err(whole) => {
            // Find the culprit: every field has a default, so each key can be tried alone.
            for (key, value) in &values {
                let mut single = Map::new();
                single.insert(key.clone(), value.clone());
                if let Err(e) = serde_json::from_value::<T>(Value::Object(single)) {
                    let origin = origins
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| format!("key `{key}`"));
                    return Err(config_error(origin, e));
                }
            }
            Err(config_error("configuration", whole))
        }
    }
}

/// A flag or environment value as YAML would read it (`8080` a number, `[]` a list, `x` a
/// string); what YAML cannot read stays a string, and so does multi-line text (a PEM
/// certificate in `FLUIDITY_CA_CERT`: YAML would fold its lines into one).
fn scalar(raw: &str) -> Value {
    if raw.contains('\n') {
        return Value::String(raw.to_owned());
    }
    yaml_serde::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// Replaces `${VAR}` in string values with the variable's value (the Go version took them
/// literally). An unset variable reads as empty, as in a shell, and is listed in `missing`.
fn expand_placeholders(
    value: Value,
    env: &impl Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> std::result::Result<Value, String> {
    match value {
        Value::String(s) => expand_string(&s, env, missing).map(Value::String),
        Value::Array(items) => items
            .into_iter()
            .map(|v| expand_placeholders(v, env, missing))
            .collect::<std::result::Result<_, _>>()
            .map(Value::Array),
        other => Ok(other),
    }
}

fn expand_string(
    s: &str,
    env: &impl Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
        let name = &after[..end];
        match env(name) {
            Some(value) => out.push_str(&value),
            None => missing.push(name.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((text, "s"), |at| (&text[..at], text[at..].trim()));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 5m, 1h)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// The certificate keys both binaries read, the same in `agent.yaml` and `server.yaml`
/// (flattened into each binary's configuration). `crate::pki::CredentialSource` turns them
/// into one validated model.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct CertificateSettings {
    /// Static mode: this side's certificate chain (PEM).
    #[serde(deserialize_with = "optional::deserialize")]
    pub cert_file: Option<PathBuf>,
    /// Static mode: this side's private key (PEM: PKCS#1, PKCS#8 or SEC1).
    #[serde(deserialize_with = "optional::deserialize")]
    pub key_file: Option<PathBuf>,
    /// The CA certificate the peer's certificate must chain to (PEM). With `ca_dir` it
    /// defaults to that CA's certificate.
    #[serde(deserialize_with = "optional::deserialize")]
    pub ca_cert_file: Option<PathBuf>,
    /// The same as PEM text (for containers: `FLUIDITY_CA_CERT`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub ca_cert: Option<String>,
    /// ARN mode, self-hosted: a local CA in this directory (created if missing).
    #[serde(deserialize_with = "optional::deserialize")]
    pub ca_dir: Option<PathBuf>,
    /// ARN mode on AWS: the CA service URL (alias `ca_lambda_url`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub ca_service_url: Option<String>,
    /// Where this side's certificate and key are cached (alias `cert_cache_dir`).
    #[serde(deserialize_with = "optional::deserialize")]
    pub cache_dir: Option<PathBuf>,
}

impl CertificateSettings {
    /// Its keys, for [`ConfigKeys::BASE`].
    pub const KEYS: &'static [&'static str] = &[
        "cert_file",
        "key_file",
        "ca_cert_file",
        "ca_cert",
        "ca_dir",
        "ca_service_url",
        "cache_dir",
    ];
}

/// A configuration value that must never be printed (a password, credentials in a URL): its
/// `Debug` says `[redacted]`, so a logged or debug-printed config leaks nothing.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Secret(value.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// Serde helper for optional fields: absent, `null` and `""` (what Go configs write for "not
/// set") are `None`; anything else is parsed with `FromStr` (numbers too, via their text).
pub mod optional {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    /// Deserializes an optional value.
    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let text = match Value::deserialize(deserializer)? {
            Value::Null => return Ok(None),
            Value::String(s) if s.trim().is_empty() => return Ok(None),
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a single value, found {other}"
                )));
            }
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Serde helper for `Duration` fields: a number of seconds or a string like `"10s"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }

    fn from_raw<E: serde::de::Error>(raw: Raw) -> Result<Duration, E> {
        match raw {
            Raw::Seconds(s) => Duration::try_from_secs_f64(s).map_err(E::custom),
            Raw::Text(t) => super::parse_duration(&t).map_err(E::custom),
        }
    }

    /// Deserializes a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        from_raw(Raw::deserialize(deserializer)?)
    }

    /// Deserializes an optional duration: absent, `null` and `""` are `None`.
    pub fn deserialize_optional<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(deserializer)? {
            None => Ok(None),
            Some(Raw::Text(t)) if t.trim().is_empty() => Ok(None),
            Some(raw) => from_raw(raw).map(Some),
        }
    }

    /// Serializes a duration as a string like `"10s"`.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", value.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(default)]
    struct Example {
        port: u16,
        name: String,
        list: Option<Vec<String>>,
        #[serde(with = "duration")]
        wait: Duration,
        #[serde(deserialize_with = "duration::deserialize_optional")]
        every: Option<Duration>,
    }

    impl Default for Example {
        fn default() -> Self {
            Example {
                port: 8080,
                name: "default".into(),
                list: None,
                wait: Duration::from_secs(30),
                every: None,
            }
        }
    }

    impl ConfigKeys for Example {
        const KEYS: &'static [&'static str] = &["port", "name", "list", "wait", "every"];
        const ALIASES: &'static [(&'static str, &'static str)] = &[("listen_port", "port")];
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn layers_apply_in_order_and_aliases_and_placeholders_work() {
        let file = write("listen_port: 9000\nname: ${WHO}-x\nextra: 1\nwait: 2m\n");
        let loaded: Loaded<Example> = load(
            Some(file.path()),
            env(&[("WHO", "me"), ("FLUIDITY_LIST", "[]")]),
            &[],
        )
        .unwrap();
        assert_eq!(
            loaded.config,
            Example {
                port: 9000,
                name: "me-x".into(),
                list: Some(vec![]),
                wait: Duration::from_secs(120),
                every: None,
            }
        );
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("extra"));

        let loaded: Loaded<Example> = load(
            Some(file.path()),
            env(&[("WHO", "me"), ("FLUIDITY_PORT", "9001")]),
            &[("port", "9002".into())],
        )
        .unwrap();
        assert_eq!(loaded.config.port, 9002, "flags beat the environment");
        let loaded: Loaded<Example> = load(None, env(&[]), &[]).unwrap();
        assert_eq!(loaded.config, Example::default());
    }

    #[test]
    fn multi_line_environment_values_stay_verbatim() {
        const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n";
        let loaded: Loaded<Example> = load(None, env(&[("FLUIDITY_NAME", PEM)]), &[]).unwrap();
        assert_eq!(loaded.config.name, PEM);
    }

    #[test]
    fn errors_name_the_key_and_its_origin() {
        let file = write("port: lots\n");
        let err = load::<Example>(Some(file.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`port`") && err.contains(&file.path().display().to_string()),
            "{err}"
        );

        let err = load::<Example>(None, env(&[("FLUIDITY_WAIT", "soon")]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("FLUIDITY_WAIT"), "{err}");

        let file = write("name: ${MISSING}\n");
        let loaded = load::<Example>(Some(file.path()), env(&[]), &[]).unwrap();
        assert_eq!(loaded.config.name, "");
        assert!(
            loaded.warnings[0].contains("MISSING"),
            "{:?}",
            loaded.warnings
        );

        let file = write("- a\n- b\n");
        let err = load::<Example>(Some(file.path()), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mapping"), "{err}");

        let file = write("port: [\n");
        assert!(load::<Example>(Some(file.path()), env(&[]), &[]).is_err());
        let err = load::<Example>(Some(Path::new("/nonexistent/fluidity.yaml")), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/fluidity.yaml"), "{err}");
    }

    #[test]
    fn optional_durations_treat_empty_as_unset() {
        for (raw, expected) in [
            ("\"\"", None),
            ("null", None),
            ("\"2s\"", Some(2)),
            ("5", Some(5)),
        ] {
            let file = write(&format!("every: {raw}\n"));
            let loaded: Loaded<Example> = load(Some(file.path()), env(&[]), &[]).unwrap();
            assert_eq!(
                loaded.config.every,
                expected.map(Duration::from_secs),
                "{raw}"
            );
        }
        let file = write("every: soon\n");
        assert!(load::<Example>(Some(file.path()), env(&[]), &[]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
