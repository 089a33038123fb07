//! Kafka settings shared by the `kafka` receiver and exporter (see the crate's README).

use std::collections::BTreeMap;

use oxeye_api::ConfigErrors;
use serde::Deserialize;

mod check;
mod context;
pub use check::check;
pub use context::{Context, QUIET};
pub use rdkafka;

/// `localhost:9092`, as the Collector's Kafka components default.
pub fn default_brokers() -> Vec<String> {
    vec!["localhost:9092".into()]
}

/// `oxeye`: the client id brokers log and quota by.
pub fn default_client_id() -> String {
    "oxeye".into()
}

/// How OTLP requests are written in messages.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Encoding {
    /// `Export*ServiceRequest` in protobuf (the Collector's default).
    #[default]
    OtlpProto,
    /// The same request in OTLP/JSON.
    OtlpJson,
}

/// `traces:`, `metrics:` or `logs:`: the topic of one signal and how its messages are encoded.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalTopic {
    /// Default: `otlp_spans`, `otlp_metrics`, `otlp_logs`.
    pub topic: Option<String>,
    #[serde(default)]
    pub encoding: Encoding,
}

impl SignalTopic {
    /// The topic, or the signal's default (`default`).
    pub fn topic_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.topic.as_deref().unwrap_or(default)
    }
}

/// `tls:` — present (even empty) means TLS, checked against `ca_file` or the system's roots.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `auth:`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub sasl: Option<Sasl>,
}

/// `auth.sasl:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

/// SASL mechanisms librdkafka speaks without Kerberos.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// The connection settings of a receiver's or exporter's config.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub brokers: &'a [String],
    pub client_id: &'a str,
    pub tls: Option<&'a Tls>,
    pub auth: Option<&'a Auth>,
    /// librdkafka properties passed through (`librdkafka: {socket.keepalive.enable: "true"}`),
    /// set last: they override what oxeye sets.
    pub librdkafka: &'a BTreeMap<String, String>,
}

impl Client<'_> {
    /// Adds what is wrong to `errs`: no broker, a broker without a port, a TLS file that
    /// cannot be read, a certificate without its key.
    pub fn validate(&self, errs: &mut ConfigErrors) {
        if self.brokers.is_empty() {
            errs.push("brokers", "no broker given: list at least one `host:port`");
        }
        for (i, b) in self.brokers.iter().enumerate() {
            let port = b.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(p))) if !h.is_empty() && p > 0) {
                errs.push(
                    format!("brokers[{i}]"),
                    format!("`{b}` is not `host:port` (e.g. `localhost:9092`)"),
                );
            }
        }
        if let Some(tls) = self.tls {
            for (field, path) in [
                ("tls.ca_file", &tls.ca_file),
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
            ] {
                if let Some(p) = path {
                    if let Err(e) = std::fs::metadata(p) {
                        errs.push(field, format!("cannot read `{p}`: {e}"));
                    }
                }
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                errs.push(
                    "tls",
                    "cert_file and key_file go together (mutual TLS): give both or neither",
                );
            }
        }
    }

    /// The librdkafka configuration.
    pub fn config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","));
        c.set("client.id", self.client_id);
        let sasl = self.auth.and_then(|a| a.sasl.as_ref());
        let protocol = match (self.tls.is_some(), sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(tls) = self.tls {
            let files = [
                ("ssl.ca.location", &tls.ca_file),
                ("ssl.certificate.location", &tls.cert_file),
                ("ssl.key.location", &tls.key_file),
            ];
            for (key, path) in files {
                if let Some(p) = path {
                    c.set(key, p);
                }
            }
            if tls.insecure_skip_verify {
                c.set("enable.ssl.certificate.verification", "false");
                c.set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        if let Some(s) = sasl {
            c.set("sasl.mechanism", s.mechanism.as_str());
            c.set("sasl.username", &s.username);
            c.set("sasl.password", &s.password);
        }
        for (k, v) in self.librdkafka {
            c.set(k, v);
        }
        c
    }
}

/// A librdkafka client that cannot be made from `config` (an unknown or invalid property):
/// the error for `validate` and `build`.
pub fn creation_error(e: rdkafka::error::KafkaError) -> String {
    format!("the Kafka client cannot be made: {e} (check `librdkafka:` properties)")
}
