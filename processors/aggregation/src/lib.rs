//! `aggregation` processor (flows): tumbling windows aligned to wall-clock multiples of
//! `window`; records with the same `group_by` dimensions are merged (packets and bytes summed,
//! TCP flags ORed, first/last seen kept); each window is emitted when it closes (on a tick, or
//! when a record of a later window arrives) and the open one at shutdown.
//!
//! Bounded memory: beyond `max_entries` keys, records fold into one overflow record per window
//! (attribute `oxeye.aggregation.overflow = true`), counted. Late records (older than the open
//! window) go into it (`late: include`, counted) or are dropped (`late: drop`, counted).
//! Conservation: packets and bytes out == in, minus what `late: drop` counts as dropped.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Direction, Factory, Flow, Output, Processor,
    Records, Resource, Signal, TcpFlags, Telemetry, Transport,
};
// Keyed by what clients send (trace ids, names, packet fields): a hasher with a random seed, so
// crafted keys cannot collide into quadratic lookups.
type KeyedMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use serde::Deserialize;

/// Flow dimensions that can be grouped by.
pub const DIMENSIONS: [&str; 7] = [
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "network.transport",
    "network.interface.name",
    "network.io.direction",
];

/// What happens to a record older than the open window.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Late {
    /// Counted into the open window (and counted as late).
    #[default]
    Include,
    /// Dropped (and counted).
    Drop,
}

/// Config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// Window length; windows start at multiples of it since the Unix epoch.
    #[serde(with = "oxeye_api::config::duration")]
    pub window: Duration,
    /// Dimensions kept (the rest are merged away); default: all.
    pub group_by: Vec<String>,
    /// Distinct keys per window before records fold into the overflow record.
    pub max_entries: usize,
    /// Records older than the open window.
    pub late: Late,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            window: Duration::from_secs(10),
            group_by: DIMENSIONS.iter().map(|d| d.to_string()).collect(),
            max_entries: 100_000,
            late: Late::Include,
        }
    }
}

/// Bits of the dimensions kept.
#[derive(Clone, Copy, Debug)]
struct Mask(u8);

impl Mask {
    fn has(self, dim: usize) -> bool {
        self.0 & (1 << dim) != 0
    }
}

/// A group: the kept dimensions of a flow, the others zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    transport: Transport,
    ifindex: u32,
    direction: Direction,
    ether_type: u16,
}

const OVERFLOW: Key = Key {
    src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    sport: 0,
    dport: 0,
    transport: Transport::None,
    ifindex: u32::MAX,
    direction: Direction::Receive,
    ether_type: 0,
};

impl Key {
    fn of(f: &Flow, m: Mask) -> Key {
        let unspecified = |a: &IpAddr| -> IpAddr {
            match a {
                IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            }
        };
        Key {
            src: if m.has(0) {
                f.src_addr
            } else {
                unspecified(&f.src_addr)
            },
            sport: if m.has(1) { f.src_port } else { 0 },
            dst: if m.has(2) {
                f.dst_addr
            } else {
                unspecified(&f.dst_addr)
            },
            dport: if m.has(3) { f.dst_port } else { 0 },
            transport: if m.has(4) {
                f.transport
            } else {
                Transport::None
            },
            ifindex: if m.has(5) { f.ifindex } else { 0 },
            direction: if m.has(6) {
                f.direction
            } else {
                Direction::Receive
            },
            ether_type: f.ether_type,
        }
    }
}

#[derive(Clone, Debug)]
struct Totals {
    packets: u64,
    bytes: u64,
    flags: u8,
    first: u64,
    last: u64,
    interface: Option<Arc<str>>,
}

impl Totals {
    fn add(&mut self, f: &Flow) {
        self.packets += f.packets;
        self.bytes += f.bytes;
        self.flags |= f.tcp_flags.0;
        if f.first_seen_unix_ns != 0 {
            self.first = if self.first == 0 {
                f.first_seen_unix_ns
            } else {
                self.first.min(f.first_seen_unix_ns)
            };
        }
        self.last = self.last.max(f.last_seen_unix_ns);
    }
}

/// The processor.
pub struct Aggregation {
    window_ns: u64,
    mask: Mask,
    max_entries: usize,
    late: Late,
    /// Start of the open window, Unix ns (0 until the first record or tick).
    start: u64,
    groups: KeyedMap<Key, Totals>,
    overflow: Option<Totals>,
    resource: Option<Arc<Resource>>,
    telemetry: Telemetry,
    folds: u64,
    late_included: u64,
    future: u64,
    /// Input records in the open window (each group's becomes one output record; the rest are
    /// counted as merged when the window closes).
    open: u64,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Aggregation {
    fn align(&self, t: u64) -> u64 {
        t - t % self.window_ns
    }

    /// Emits the open window (if it holds anything) and opens the one containing `t`.
    fn close(&mut self, t: u64, out: &mut Output) {
        if !self.groups.is_empty() || self.overflow.is_some() {
            let (start, end) = (self.start, self.start + self.window_ns);
            let mut flows: Vec<Flow> = self
                .groups
                .drain()
                .map(|(k, t)| to_flow(&k, t, start, end, oxeye_api::Attributes::new()))
                .collect();
            if let Some(t) = self.overflow.take() {
                let mut attrs = oxeye_api::Attributes::new();
                attrs.set("oxeye.aggregation.overflow", true);
                flows.push(to_flow(&OVERFLOW, t, start, end, attrs));
            }
            let resource = self.resource.clone().unwrap_or_default();
            self.telemetry
                .add_merged(self.open.saturating_sub(flows.len() as u64));
            self.open = 0;
            out.push(Batch::flows(resource, flows));
        }
        self.start = self.align(t);
    }

    /// The time a record counts at: its last-seen time, or `now` when it has none or when it
    /// lies more than a window ahead of the clock (a broken clock must not close the open
    /// window and make every later record late; counted as `aggregation_future_records`).
    fn stamp(&mut self, f: &Flow, now: u64) -> u64 {
        let ts = f.last_seen_unix_ns;
        if ts == 0 {
            now
        } else if ts > now.saturating_add(self.window_ns.max(1_000_000_000)) {
            self.future += 1;
            now
        } else {
            ts
        }
    }

    fn add(&mut self, f: &Flow, ts: u64) {
        if self.start == 0 {
            self.start = self.align(ts);
        }
        if ts < self.start {
            match self.late {
                Late::Drop => {
                    self.telemetry.add_dropped("late", 1);
                    return;
                }
                Late::Include => self.late_included += 1,
            }
        }
        self.open += 1;
        let key = Key::of(f, self.mask);
        if let Some(t) = self.groups.get_mut(&key) {
            t.add(f);
        } else if self.groups.len() < self.max_entries {
            let mut t = Totals {
                packets: 0,
                bytes: 0,
                flags: 0,
                first: 0,
                last: 0,
                interface: if self.mask.has(5) {
                    f.interface.clone()
                } else {
                    None
                },
            };
            t.add(f);
            self.groups.insert(key, t);
        } else {
            self.folds += 1;
            let o = self.overflow.get_or_insert(Totals {
                packets: 0,
                bytes: 0,
                flags: 0,
                first: 0,
                last: 0,
                interface: None,
            });
            o.add(f);
        }
    }
}

fn to_flow(k: &Key, t: Totals, start: u64, end: u64, attributes: oxeye_api::Attributes) -> Flow {
    Flow {
        src_addr: k.src,
        dst_addr: k.dst,
        src_port: k.sport,
        dst_port: k.dport,
        transport: k.transport,
        ether_type: k.ether_type,
        ifindex: if k.ifindex == u32::MAX { 0 } else { k.ifindex },
        interface: t.interface,
        direction: k.direction,
        packets: t.packets,
        bytes: t.bytes,
        tcp_flags: TcpFlags(t.flags),
        first_seen_unix_ns: t.first,
        last_seen_unix_ns: t.last,
        window_start_unix_ns: start,
        window_end_unix_ns: end,
        attributes,
    }
}

#[async_trait]
impl Processor for Aggregation {
    async fn process(&mut self, batch: Arc<Batch>, out: &mut Output) -> Result<(), BoxError> {
        let Records::Flows(flows) = &batch.records else {
            return Ok(()); // the factory accepts flows only
        };
        if self.resource.is_none() {
            self.resource = Some(batch.resource.clone());
        }
        let now = unix_ns(SystemTime::now());
        for f in flows {
            let ts = self.stamp(f, now);
            // A record of a later window closes the open one first.
            if self.start != 0 && ts >= self.start + self.window_ns {
                self.close(ts, out);
            }
            self.add(f, ts);
        }
        self.publish();
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_nanos(self.window_ns.min(1_000_000_000)))
    }

    async fn tick(&mut self, now: SystemTime, out: &mut Output) -> Result<(), BoxError> {
        let now = unix_ns(now);
        if self.start == 0 {
            self.start = self.align(now);
        } else if now >= self.start + self.window_ns {
            self.close(now, out);
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Output) -> Result<(), BoxError> {
        let start = self.start;
        self.close(start, out);
        self.publish();
        Ok(())
    }

    fn held(&self) -> u64 {
        self.open
    }
}

impl Aggregation {
    fn publish(&self) {
        self.telemetry
            .set_counter("aggregation_overflow_folds", "aggregation", self.folds);
        self.telemetry.set_counter(
            "aggregation_late_included",
            "aggregation",
            self.late_included,
        );
        self.telemetry
            .set_counter("aggregation_future_records", "aggregation", self.future);
    }
}

/// Factory for [`Aggregation`].
pub struct AggregationFactory;

impl Factory for AggregationFactory {
    type Config = AggregationConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "aggregation";
    const SIGNALS: &'static [Signal] = &[Signal::Flows];
    const DESCRIPTION: &'static str =
        "tumbling flow windows with group_by; bounded, conserving packets and bytes";
    const DOCS: &'static str = include_str!("../../../docs/components/processor-aggregation.md");

    fn validate(c: &AggregationConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.window.is_zero() || !c.window.as_nanos().is_multiple_of(1_000_000) {
            e.push(
                "window",
                "must be a positive whole number of milliseconds, e.g. 10s",
            );
        }
        if c.max_entries == 0 {
            e.push("max_entries", "must be at least 1");
        }
        for (i, d) in c.group_by.iter().enumerate() {
            if !DIMENSIONS.contains(&d.as_str()) {
                e.push(
                    format!("group_by[{i}]"),
                    format!(
                        "unknown dimension `{d}`; expected one of {}",
                        DIMENSIONS.join(", ")
                    ),
                );
            }
        }
        e.into_result()
    }

    fn build(c: AggregationConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        let mut mask = 0u8;
        for d in &c.group_by {
            if let Some(i) = DIMENSIONS.iter().position(|x| x == d) {
                mask |= 1 << i;
            }
        }
        Ok(Box::new(Aggregation {
            window_ns: c.window.as_nanos() as u64,
            mask: Mask(mask),
            max_entries: c.max_entries,
            late: c.late,
            start: 0,
            groups: KeyedMap::default(),
            overflow: None,
            resource: None,
            telemetry: ctx.telemetry,
            folds: 0,
            late_included: 0,
            future: 0,
            open: 0,
        }))
    }
}

oxeye_api::register!(AggregationFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, ProcessorHarness};
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn flow(src_port: u16, dst_port: u16, packets: u64, bytes: u64, at: u64) -> Flow {
        let mut b = oxeye_api::testing::flow_batch(1);
        let Records::Flows(f) = &mut b.records else {
            unreachable!()
        };
        let mut f = f.remove(0);
        f.src_port = src_port;
        f.dst_port = dst_port;
        f.packets = packets;
        f.bytes = bytes;
        f.first_seen_unix_ns = at;
        f.last_seen_unix_ns = at;
        f
    }

    fn batch(flows: Vec<Flow>) -> Batch {
        Batch::flows(Arc::default(), flows)
    }

    fn flows(out: &[Arc<Batch>]) -> Vec<Flow> {
        out.iter()
            .flat_map(|b| match &b.records {
                Records::Flows(f) => f.clone(),
                _ => vec![],
            })
            .collect()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn group_by_merges_and_windows_align_to_the_clock() {
        let mut h = ProcessorHarness::new::<AggregationFactory>(
            "{window: 10s, group_by: [source.address, destination.address, destination.port, network.transport]}",
        )
        .unwrap();
        // 50 ephemeral source ports to one service, in the window [1000 s, 1010 s).
        let input: Vec<Flow> = (0..50)
            .map(|i| flow(40000 + i, 443, 2, 200, 1003 * S + i as u64))
            .collect();
        assert!(
            h.process(batch(input)).unwrap().is_empty(),
            "nothing before the window closes"
        );
        assert!(h.tick(at(1009)).unwrap().is_empty());
        let out = flows(&h.tick(at(1010)).unwrap());
        assert_eq!(out.len(), 1, "service-level flow");
        let f = &out[0];
        assert_eq!(
            (f.src_port, f.dst_port, f.packets, f.bytes),
            (0, 443, 100, 10_000)
        );
        assert_eq!(
            (f.window_start_unix_ns, f.window_end_unix_ns),
            (1000 * S, 1010 * S)
        );
        assert_eq!(
            (f.first_seen_unix_ns, f.last_seen_unix_ns),
            (1003 * S, 1003 * S + 49)
        );
        assert_eq!(h.telemetry().dropped_total(), 0);
    }

    #[test]
    fn a_later_record_closes_the_window_and_flush_emits_the_open_one() {
        let mut h = ProcessorHarness::new::<AggregationFactory>("{window: 1s}").unwrap();
        assert!(h
            .process(batch(vec![flow(1, 2, 1, 10, 5 * S)]))
            .unwrap()
            .is_empty());
        let out = flows(
            &h.process(batch(vec![flow(1, 2, 1, 10, 6 * S + 1)]))
                .unwrap(),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].window_start_unix_ns, 5 * S);
        let out = flows(&h.flush().unwrap());
        assert_eq!((out.len(), out[0].window_start_unix_ns), (1, 6 * S));
    }

    #[test]
    fn overflow_folds_and_counts_and_conserves() {
        let mut h =
            ProcessorHarness::new::<AggregationFactory>("{window: 10s, max_entries: 10}").unwrap();
        let input: Vec<Flow> = (0..50).map(|i| flow(i, 80, 1, 100, 2 * S)).collect();
        h.process(batch(input)).unwrap();
        let out = flows(&h.flush().unwrap());
        assert_eq!(out.len(), 11);
        let overflow: Vec<&Flow> = out
            .iter()
            .filter(|f| f.attributes.get("oxeye.aggregation.overflow").is_some())
            .collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].packets, 40);
        assert_eq!(out.iter().map(|f| f.bytes).sum::<u64>(), 5000);
        assert!(h.telemetry().counters().contains(&(
            "aggregation_overflow_folds",
            "aggregation".into(),
            40
        )));
    }

    #[test]
    fn late_records_are_included_or_dropped_and_counted() {
        for (late, kept, dropped) in [("include", 30, 0), ("drop", 20, 1)] {
            let mut h = ProcessorHarness::new::<AggregationFactory>(&format!(
                "{{window: 10s, late: {late}}}"
            ))
            .unwrap();
            h.process(batch(vec![flow(1, 2, 10, 100, 25 * S)])).unwrap();
            h.process(batch(vec![flow(1, 2, 10, 100, 26 * S)])).unwrap();
            h.process(batch(vec![flow(1, 2, 10, 100, 12 * S)])).unwrap(); // window [10, 20): late
            let out = flows(&h.flush().unwrap());
            assert_eq!(out.iter().map(|f| f.packets).sum::<u64>(), kept, "{late}");
            assert_eq!(h.telemetry().dropped_total(), dropped, "{late}");
        }
    }

    #[test]
    fn a_far_future_timestamp_does_not_make_later_records_late() {
        let mut h =
            ProcessorHarness::new::<AggregationFactory>("{window: 10s, late: drop}").unwrap();
        let now = unix_ns(SystemTime::now());
        let year = 365 * 24 * 3600 * S;
        let mut out = flows(&h.process(batch(vec![flow(1, 2, 1, 10, now)])).unwrap());
        // One record from a broken clock, a year ahead, then an ordinary one.
        out.extend(flows(
            &h.process(batch(vec![flow(3, 4, 1, 10, now + year)]))
                .unwrap(),
        ));
        out.extend(flows(
            &h.process(batch(vec![flow(1, 2, 1, 10, now + 1)])).unwrap(),
        ));
        out.extend(flows(&h.flush().unwrap()));
        out.sort_by_key(|f| f.src_port);
        assert_eq!(
            h.telemetry().dropped_total(),
            0,
            "{:?}",
            h.telemetry().dropped()
        );
        assert_eq!(out.iter().map(|f| f.packets).sum::<u64>(), 3);
        assert!(h.telemetry().counters().contains(&(
            "aggregation_future_records",
            "aggregation".into(),
            1
        )));
    }

    #[test]
    fn validation() {
        let e = check::<AggregationFactory>(
            "{window: 0s, group_by: [source.address, colour], max_entries: 0}",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["window", "max_entries", "group_by[1]"]);
        assert!(e.to_string().contains("unknown dimension `colour`"));
    }

    proptest! {
        /// Whatever the records, windows and ticks: packets and bytes out == in (late: include),
        /// and with late: drop, out + dropped == in.
        #[test]
        fn conservation(
            recs in proptest::collection::vec((0u16..20, 1u64..1000, 1u64..100_000, 0u64..60), 1..300),
            ticks in proptest::collection::vec(0u64..70, 0..10),
            window in 1u64..20,
            max_entries in 1usize..30,
            drop_late in any::<bool>(),
        ) {
            let cfg = format!("{{window: {window}s, max_entries: {max_entries}, late: {}}}", if drop_late { "drop" } else { "include" });
            let mut h = ProcessorHarness::new::<AggregationFactory>(&cfg).unwrap();
            let mut out = Vec::new();
            let mut ticks = ticks;
            ticks.sort_unstable();
            let (mut pin, mut bin) = (0u64, 0u64);
            for (i, (port, packets, bytes, t)) in recs.iter().enumerate() {
                pin += packets;
                bin += bytes;
                out.extend(h.process(batch(vec![flow(*port, 80, *packets, *bytes, 100 * S + t * S)])).unwrap());
                if let Some(t) = ticks.get(i) {
                    out.extend(h.tick(at(100 + t)).unwrap());
                }
            }
            out.extend(h.flush().unwrap());
            let fl = flows(&out);
            let pout: u64 = fl.iter().map(|f| f.packets).sum();
            let bout: u64 = fl.iter().map(|f| f.bytes).sum();
            let dropped = h.telemetry().dropped_total();
            if drop_late {
                prop_assert!(pout <= pin && bout <= bin);
                prop_assert!(dropped <= recs.len() as u64, "each dropped record counted once");
                if dropped == 0 {
                    prop_assert_eq!((pout, bout), (pin, bin));
                }
            } else {
                prop_assert_eq!((pout, bout), (pin, bin));
                prop_assert_eq!(dropped, 0);
            }
            // No window holds more than max_entries keys plus the overflow record.
            for b in &out {
                prop_assert!(b.len() <= max_entries + 1);
            }
        }
    }
}
