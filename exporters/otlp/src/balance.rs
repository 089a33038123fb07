//! Load balancing over several endpoints (`endpoints:` + `routing_key:`): a consistent-hash
//! ring, so every record with the same key — the spans of a trace, the points of a metric
//! stream, the records of a service — goes to the same gateway, and adding or removing one
//! moves only its share. The keys are the Collector's loadbalancing exporter's ([`RoutingKey`]). An endpoint that fails is taken off the ring for a while
//! (1 s, doubling to 30 s while it keeps failing); its traces go to the next endpoint on the ring
//! and come back when it answers again.
//!
//! The ring depends only on the endpoint strings (not their order) and a fixed hash, so agents
//! that list the same endpoints agree on where each trace goes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use oxeye_api::{Attributes, Metric, Resource, Scope, TraceId, Value};

use crate::config::OtlpSignal;
use crate::transport::Client;

/// Most endpoints one exporter balances over.
pub const MAX_ENDPOINTS: usize = 128;
/// Points per endpoint on the ring: enough for an even share (±10 % with three endpoints).
const POINTS: u64 = 256;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// FNV-1a, then the splitmix64 finalizer: stable across builds and machines (std's hasher is
/// not promised to be), and well spread even for sequential input.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The ring position of a trace.
pub fn trace_key(id: &TraceId) -> u64 {
    hash(&[&id.0])
}

/// What records are routed by (`routing_key:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingKey {
    /// Trace id: every span (log record) of a trace to one endpoint.
    TraceId,
    /// The resource's `service.name`.
    Service,
    /// Every resource attribute.
    Resource,
    /// The metric's name (and its resource's service).
    Metric,
    /// The metric stream: resource, scope, metric name and the data point's attributes.
    StreamId,
}

impl RoutingKey {
    /// The config names, in the Collector's spelling.
    pub const NAMES: [&'static str; 5] = ["traceID", "service", "resource", "metric", "streamID"];

    /// From its config name.
    pub fn parse(s: &str) -> Option<RoutingKey> {
        Some(match s {
            "traceID" => RoutingKey::TraceId,
            "service" => RoutingKey::Service,
            "resource" => RoutingKey::Resource,
            "metric" => RoutingKey::Metric,
            "streamID" => RoutingKey::StreamId,
            _ => return None,
        })
    }

    /// The key `signal` is routed by when `routing_key` says `key` (`None`: not set), or why it
    /// cannot be: traces by trace id (default), service or resource; metrics by service
    /// (default), resource, metric or stream; logs by trace id (default) or resource.
    pub fn for_signal(key: Option<RoutingKey>, signal: OtlpSignal) -> Result<RoutingKey, String> {
        use RoutingKey::*;
        match (signal, key) {
            (OtlpSignal::Traces, None) => Ok(TraceId),
            (OtlpSignal::Traces, Some(k @ (TraceId | Service | Resource))) => Ok(k),
            (OtlpSignal::Metrics, None) => Ok(Service),
            (OtlpSignal::Metrics, Some(k @ (Service | Resource | Metric | StreamId))) => Ok(k),
            (OtlpSignal::Logs, None) => Ok(TraceId),
            (OtlpSignal::Logs, Some(k @ (TraceId | Resource))) => Ok(k),
            (OtlpSignal::Traces, Some(_)) => {
                Err("traces are routed by `traceID`, `service` or `resource`".into())
            }
            (OtlpSignal::Metrics, Some(_)) => Err(
                "metrics have no trace id: route them by `service`, `resource`, `metric` or `streamID`"
                    .into(),
            ),
            (OtlpSignal::Logs, Some(_)) => {
                Err("logs are routed by `traceID` or `resource`".into())
            }
            (OtlpSignal::Profiles, _) => Err(
                "profiles (and flows) are not load balanced: send them through another otlp exporter"
                    .into(),
            ),
        }
    }
}

fn value_bytes(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(0);
}

fn attributes_key(a: &Attributes, out: &mut Vec<u8>) {
    // Sorted: the same attributes in another order are the same stream.
    let mut pairs: Vec<(&str, &Value)> = a.iter().collect();
    pairs.sort_by(|x, y| x.0.cmp(y.0));
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        value_bytes(v, out);
    }
}

fn service(resource: &Resource) -> &[u8] {
    match resource.attributes.get("service.name") {
        Some(Value::Str(s)) => s.as_bytes(),
        _ => b"",
    }
}

/// The ring position of a resource's service.
pub fn service_key(resource: &Resource) -> u64 {
    hash(&[service(resource)])
}

/// The ring position of a resource (all its attributes).
pub fn resource_key(resource: &Resource) -> u64 {
    let mut bytes = Vec::new();
    attributes_key(&resource.attributes, &mut bytes);
    hash(&[&bytes])
}

/// The ring position of a metric: its service and name.
pub fn metric_key(resource: &Resource, metric: &Metric) -> u64 {
    hash(&[service(resource), metric.name.as_bytes()])
}

/// The ring position of a metric stream: resource, scope, metric name, point attributes.
pub fn stream_key(
    resource: &Resource,
    scope: Option<&Scope>,
    name: &str,
    point: &Attributes,
) -> u64 {
    let mut bytes = Vec::new();
    attributes_key(&resource.attributes, &mut bytes);
    if let Some(s) = scope {
        bytes.extend_from_slice(s.name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(s.version.as_bytes());
    }
    bytes.push(0);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    attributes_key(point, &mut bytes);
    hash(&[&bytes])
}

#[derive(Default)]
struct Health {
    /// Off the ring until then.
    down_until: Option<Instant>,
    /// The next time off the ring if it fails again.
    backoff: Duration,
}

/// One endpoint.
pub struct Member {
    /// Its URL.
    pub url: String,
    /// Its client for each signal it takes (over HTTP each has its own path).
    clients: Vec<(OtlpSignal, Client)>,
    health: Mutex<Health>,
}

impl Member {
    /// Its client for `signal`.
    pub fn client(&self, signal: OtlpSignal) -> Option<&Client> {
        self.clients
            .iter()
            .find(|(s, _)| *s == signal)
            .map(|(_, c)| c)
    }
}

/// The ring of endpoints.
pub struct Balancer {
    members: Vec<Member>,
    /// (position, member), sorted by position.
    ring: Vec<(u64, usize)>,
}

impl Balancer {
    /// A ring over `members` (URL and a client per signal each).
    pub fn new(members: Vec<(String, Vec<(OtlpSignal, Client)>)>) -> Balancer {
        let mut ring = Vec::with_capacity(members.len() * POINTS as usize);
        for (i, (url, _)) in members.iter().enumerate() {
            for p in 0..POINTS {
                ring.push((hash(&[url.as_bytes(), &p.to_le_bytes()]), i));
            }
        }
        ring.sort_unstable();
        Balancer {
            members: members
                .into_iter()
                .map(|(url, clients)| Member {
                    url,
                    clients,
                    health: Mutex::default(),
                })
                .collect(),
            ring,
        }
    }

    /// The members.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    fn is_up(&self, i: usize, now: Instant) -> bool {
        let h = self.members[i]
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        h.down_until.is_none_or(|t| now >= t)
    }

    /// The member for ring position `key` and its owner: the owner itself, or when the owner
    /// is off the ring the next member on the ring that is up. `None` when every member is down.
    pub fn route(&self, key: u64, now: Instant) -> Option<(usize, usize)> {
        let start = self.ring.partition_point(|&(p, _)| p < key);
        let owner = self.ring[start % self.ring.len()].1;
        // Members already found down (at most MAX_ENDPOINTS, one bit each).
        let mut down = 0u128;
        for k in 0..self.ring.len() {
            let i = self.ring[(start + k) % self.ring.len()].1;
            if down & (1 << i) != 0 {
                continue;
            }
            if self.is_up(i, now) {
                return Some((i, owner));
            }
            down |= 1 << i;
            if down.count_ones() as usize == self.members.len() {
                break;
            }
        }
        None
    }

    /// Takes member `i` off the ring after a failure; true when it was up until now.
    pub fn mark_down(&self, i: usize) -> (bool, Duration) {
        let mut h = self.members[i]
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let was_up = h.down_until.is_none_or(|t| now >= t);
        if !was_up {
            return (false, h.backoff);
        }
        let off = if h.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            h.backoff
        };
        h.down_until = Some(now + off);
        h.backoff = (off * 2).min(MAX_BACKOFF);
        (true, off)
    }

    /// Member `i` answered: back in full; true when it had been down.
    pub fn mark_up(&self, i: usize) -> bool {
        let mut h = self.members[i]
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let was_down = h.down_until.is_some();
        *h = Health::default();
        was_down
    }

    /// When the first member that is down comes back on the ring.
    pub fn next_return(&self) -> Option<Instant> {
        self.members
            .iter()
            .filter_map(|m| {
                m.health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .down_until
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(urls: &[&str]) -> Balancer {
        // Clients are lazy: building one opens no connection.
        let members = urls
            .iter()
            .map(|u| {
                let cfg: crate::OtlpConfig =
                    serde_yaml::from_str(&format!("endpoint: '{u}'")).unwrap();
                let r = cfg
                    .resolve(crate::config::OtlpSignal::Traces, &|_| None)
                    .unwrap();
                (
                    u.to_string(),
                    vec![(crate::config::OtlpSignal::Traces, Client::new(&r).unwrap())],
                )
            })
            .collect();
        Balancer::new(members)
    }

    #[tokio::test]
    async fn shares_are_even_stable_and_move_only_from_a_removed_member() {
        let urls = ["http://gw-a:4317", "http://gw-b:4317", "http://gw-c:4317"];
        let three = ring(&urls);
        let reversed = ring(&[urls[2], urls[1], urls[0]]);
        let two = ring(&urls[..2]);
        let now = Instant::now();
        let mut counts = [0u32; 3];
        let mut moved = 0;
        for t in 0..30_000u64 {
            let key = trace_key(&TraceId(
                (t as u128).wrapping_mul(0x9e37_79b9).to_be_bytes(),
            ));
            let (i, owner) = three.route(key, now).unwrap();
            assert_eq!(i, owner, "all up: the owner takes it");
            counts[i] += 1;
            let (j, _) = reversed.route(key, now).unwrap();
            assert_eq!(
                three.members()[i].url,
                reversed.members()[j].url,
                "order does not matter"
            );
            let (k, _) = two.route(key, now).unwrap();
            if i < 2 {
                assert_eq!(i, k, "a trace of a remaining member stays put");
            } else {
                moved += 1;
            }
        }
        for c in counts {
            assert!((8_500..11_500).contains(&c), "uneven shares: {counts:?}");
        }
        assert_eq!(moved, counts[2]);
    }

    #[tokio::test]
    async fn a_failed_member_is_skipped_then_comes_back() {
        let b = ring(&["http://gw-a:4317", "http://gw-b:4317"]);
        let now = Instant::now();
        let key = (0..)
            .map(|t: u64| hash(&[&t.to_le_bytes()]))
            .find(|&k| b.route(k, now) == Some((0, 0)))
            .unwrap();
        assert_eq!(b.mark_down(0), (true, FIRST_BACKOFF));
        assert_eq!(
            b.route(key, Instant::now()),
            Some((1, 0)),
            "next on the ring"
        );
        assert_eq!(
            b.route(key, Instant::now() + FIRST_BACKOFF),
            Some((0, 0)),
            "back after its time off"
        );
        assert!(b.mark_down(1).0);
        assert_eq!(b.route(key, Instant::now()), None, "all down");
        assert!(b.mark_up(0));
        assert_eq!(b.route(key, Instant::now()), Some((0, 0)));
        assert!(b.next_return().is_some());
    }
}
