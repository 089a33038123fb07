//! `pprof` exporter (profiles): one gzip'd `profile.proto` per profile window, named
//! `<path>-<window start unix ms>.pb.gz` — what `go tool pprof`, Parca, Pyroscope and speedscope
//! open.
//!
//! ```yaml
//! exporters:
//!   pprof:
//!     path: /var/lib/oxeye/cpu        # file prefix
//! ```
//!
//! Each file has two sample types, `samples/count` and `cpu/nanoseconds` (period
//! `cpu/nanoseconds` = 1 s / frequency), a location per distinct address (with its function,
//! file and line once symbolized), functions, and mappings with their file offsets and GNU
//! build-ids, so unsymbolized addresses can be resolved later. Samples carry the labels
//! `process.pid`, `thread.id`, `process.executable.name`, and `trace_id`/`span_id` when a span
//! was open on the thread. A window is written once its end is `flush_delay` behind the clock
//! (its records have all arrived by then), and every window still held at shutdown; a file is
//! written as `….pb.gz.partial` and renamed when complete. Encoding, compression and writing run
//! on the exporter's own thread.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oxeye_api::blocking::{BlockingExport, OnThread};
use oxeye_api::profile::Tables;
use oxeye_api::{
    Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Records, Sample, Signal, Value,
};
use prost::Message as _;
use serde::Deserialize;

/// The types generated from profile.proto (`perftools.profiles`).
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

/// Config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PprofConfig {
    /// File prefix: files are `<path>-<window start unix ms>.pb.gz`.
    pub path: String,
    /// How long after a window's end its file is written (its records arrive a moment after
    /// it ends).
    #[serde(default = "flush_delay", with = "oxeye_api::config::duration")]
    pub flush_delay: Duration,
}

fn flush_delay() -> Duration {
    Duration::from_secs(2)
}

/// The samples of one window, in the tables they will be written with.
struct Window {
    start_ns: u64,
    end_ns: u64,
    period_ns: u64,
    tables: Tables,
    samples: Vec<proto::Sample>,
    /// Label key string indexes.
    keys: [u32; 5],
}

impl Window {
    fn new(first: &Sample) -> Window {
        let mut tables = Tables::new();
        let keys = [
            "process.pid",
            "thread.id",
            "process.executable.name",
            "trace_id",
            "span_id",
        ]
        .map(|k| tables.string(k));
        Window {
            start_ns: first.window_start_unix_ns,
            end_ns: first.window_end_unix_ns,
            period_ns: first.period_ns,
            tables,
            samples: Vec::new(),
            keys,
        }
    }

    fn add(&mut self, s: &Sample) {
        let location_id = self.tables.stack(s).into_iter().map(u64::from).collect();
        let [pid, tid, comm, trace, span] = self.keys.map(i64::from);
        let num = |key, n: u32| proto::Label {
            key,
            num: n.into(),
            ..Default::default()
        };
        let mut label = vec![num(pid, s.pid), num(tid, s.tid)];
        let text = |key: i64, value: &str, t: &mut Tables| proto::Label {
            key,
            str: t.string(value).into(),
            ..Default::default()
        };
        label.push(text(comm, &s.comm.as_str(), &mut self.tables));
        if let (Some(t), Some(sp)) = (s.trace_id, s.span_id) {
            label.push(text(trace, &t.to_string(), &mut self.tables));
            label.push(text(span, &sp.to_string(), &mut self.tables));
        }
        for (k, v) in s.attributes.iter() {
            let key = self.tables.string(k).into();
            label.push(match v {
                Value::Int(n) => proto::Label {
                    key,
                    num: *n,
                    ..Default::default()
                },
                other => text(key, &other.to_string(), &mut self.tables),
            });
        }
        self.samples.push(proto::Sample {
            location_id,
            value: vec![s.count as i64, s.cpu_ns() as i64],
            label,
        });
    }

    fn into_profile(mut self) -> proto::Profile {
        let [samples, count, cpu, ns] =
            ["samples", "count", "cpu", "nanoseconds"].map(|s| i64::from(self.tables.string(s)));
        let comment = i64::from(
            self.tables
                .string(concat!("oxeye ", env!("CARGO_PKG_VERSION"))),
        );
        let t = &self.tables;
        let mapping = t
            .mappings
            .iter()
            .enumerate()
            .skip(1)
            .map(|(id, m)| proto::Mapping {
                id: id as u64,
                memory_start: m.start,
                memory_limit: m.end,
                file_offset: m.file_offset,
                filename: m.path.into(),
                build_id: m.build_id.into(),
                has_functions: m.has_functions,
                ..Default::default()
            })
            .collect();
        let location = t
            .locations
            .iter()
            .enumerate()
            .skip(1)
            .map(|(id, l)| proto::Location {
                id: id as u64,
                mapping_id: l.mapping.into(),
                address: l.address,
                line: (l.function != 0)
                    .then(|| proto::Line {
                        function_id: l.function.into(),
                        line: l.line.into(),
                    })
                    .into_iter()
                    .collect(),
                is_folded: false,
            })
            .collect();
        let function = t
            .functions
            .iter()
            .enumerate()
            .skip(1)
            .map(|(id, f)| proto::Function {
                id: id as u64,
                name: f.name.into(),
                system_name: f.name.into(),
                filename: f.file.into(),
                start_line: 0,
            })
            .collect();
        proto::Profile {
            sample_type: vec![
                proto::ValueType {
                    r#type: samples,
                    unit: count,
                },
                proto::ValueType {
                    r#type: cpu,
                    unit: ns,
                },
            ],
            sample: self.samples,
            mapping,
            location,
            function,
            string_table: self.tables.strings.iter().map(|s| s.to_string()).collect(),
            time_nanos: self.start_ns as i64,
            duration_nanos: self.end_ns.saturating_sub(self.start_ns) as i64,
            period_type: Some(proto::ValueType {
                r#type: cpu,
                unit: ns,
            }),
            period: self.period_ns as i64,
            comment: vec![comment],
            default_sample_type: cpu,
            ..Default::default()
        }
    }
}

/// The blocking half: keeps windows until they are due, then encodes, gzips and writes them.
pub struct PprofWriter {
    config: PprofConfig,
    windows: BTreeMap<u64, Window>,
    /// Windows written (for a name that cannot collide: see `write`).
    written: u64,
}

impl PprofWriter {
    /// A writer for `config` (nothing is written until a window is due).
    pub fn new(config: PprofConfig) -> PprofWriter {
        PprofWriter {
            config,
            windows: BTreeMap::new(),
            written: 0,
        }
    }

    /// The file a window starting at `start_ns` goes to.
    pub fn file_name(&self, start_ns: u64) -> PathBuf {
        PathBuf::from(format!(
            "{}-{}.pb.gz",
            self.config.path,
            start_ns / 1_000_000
        ))
    }

    /// Writes a window: gzip'd in memory, then to `<name>.partial` created new, then given its
    /// name — never over an existing file: a window written twice (a sample arriving after
    /// its window's file was written) gets the next free name, `<path>-<start ms>.1.pb.gz`.
    fn write(&mut self, w: Window) -> Result<(), BoxError> {
        let start_ms = w.start_ns / 1_000_000;
        let done = self.file_name(w.start_ns);
        if let Some(dir) = done.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let bytes = w.into_profile().encode_to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes)?;
        let gz = gz.finish()?;
        let base = format!("{}-{start_ms}", self.config.path);
        let (mut file, partial, done) = oxeye_api::files::create_partial(&base, ".pb.gz")?;
        file.write_all(&gz)
            .and_then(|()| file.flush())
            .map_err(|e| format!("writing {}: {e}", partial.display()))?;
        drop(file);
        oxeye_api::files::publish(&partial, &done, &base, ".pb.gz")?;
        self.written += 1;
        Ok(())
    }

    /// Writes the windows whose end is `flush_delay` or more behind `now_ns` (all when `None`).
    fn flush(&mut self, now_ns: Option<u64>) -> Result<(), BoxError> {
        let delay = self.config.flush_delay.as_nanos() as u64;
        let due: Vec<u64> = self
            .windows
            .iter()
            .filter(|(_, w)| now_ns.is_none_or(|now| w.end_ns + delay <= now))
            .map(|(&k, _)| k)
            .collect();
        for k in due {
            if let Some(w) = self.windows.remove(&k) {
                self.write(w)?;
            }
        }
        Ok(())
    }
}

impl BlockingExport for PprofWriter {
    fn export(&mut self, batch: &Batch) -> Result<(), BoxError> {
        let Records::Samples(samples) = &batch.records else {
            return Ok(());
        };
        for s in samples {
            self.windows
                .entry(s.window_start_unix_ns)
                .or_insert_with(|| Window::new(s))
                .add(s);
        }
        Ok(())
    }

    fn tick(&mut self, now: SystemTime) -> Result<(), BoxError> {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.flush(Some(now_ns))
    }

    fn shutdown(&mut self) -> Result<(), BoxError> {
        self.flush(None)
    }
}

/// Factory for the `pprof` exporter.
pub struct PprofFactory;

impl Factory for PprofFactory {
    type Config = PprofConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "pprof";
    const SIGNALS: &'static [Signal] = &[Signal::Profiles];
    const DESCRIPTION: &'static str =
        "pprof files (gzip'd profile.proto), one per profile window: go tool pprof, Parca, speedscope";
    const DOCS: &'static str = include_str!("../../../docs/components/exporter-pprof.md");

    fn validate(c: &PprofConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.path.is_empty() {
            e.push("path", "give a file prefix such as /var/lib/oxeye/cpu");
        }
        e.into_result()
    }

    fn build(c: PprofConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        if let Err(why) = oxeye_api::files::check_prefix(&c.path) {
            let mut e = ConfigErrors::new();
            e.push("path", why.to_string());
            return Err(e.into());
        }
        let tick = Some(Duration::from_millis(500));
        Ok(Box::new(OnThread::spawn(
            "pprof",
            PprofWriter::new(c),
            ctx.telemetry,
            tick,
        )?))
    }
}

oxeye_api::register!(PprofFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{check, sample_batch, ExporterHarness};
    use oxeye_api::{Frame, Mapping};
    use std::io::Read as _;
    use std::sync::Arc;

    fn read(path: &std::path::Path) -> proto::Profile {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).expect("file"))
            .read_to_end(&mut bytes)
            .expect("gzip");
        proto::Profile::decode(bytes.as_slice()).expect("profile.proto")
    }

    #[test]
    fn a_window_becomes_one_profile_with_counts_and_cpu_time() {
        let dir = std::env::temp_dir().join(format!("oxeye-pprof-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let prefix = dir.join("cpu");
        let mut h = PprofWriter::new(PprofConfig {
            path: prefix.display().to_string(),
            flush_delay: flush_delay(),
        });
        let mut batch = sample_batch(100);
        if let Records::Samples(s) = &mut batch.records {
            let maps: Arc<[Mapping]> = Arc::from(vec![Mapping {
                start: 0x1000,
                end: 0x4000,
                file_offset: 0,
                path: "/bin/app".into(),
            }]);
            for x in s.iter_mut() {
                x.mappings = maps.clone();
            }
            s[0].frames = vec![Frame {
                address: 0x1000,
                function: Some("leaf".into()),
                module: Some("/bin/app".into()),
                build_id: Some("0123abcd".into()),
                line: Some(3),
                ..Frame::default()
            }];
        }
        h.export(&batch).unwrap();
        // Not yet due: the window ended at 1 010 s and the clock says 1 011 s.
        h.tick(UNIX_EPOCH + Duration::from_secs(1011)).unwrap();
        let file = prefix.with_file_name("cpu-1000000.pb.gz");
        assert!(!file.exists());
        h.tick(UNIX_EPOCH + Duration::from_secs(1012)).unwrap();
        let p = read(&file);
        let s = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(p.sample.len(), 100);
        let (count, cpu): (i64, i64) = p
            .sample
            .iter()
            .fold((0, 0), |(c, n), x| (c + x.value[0], n + x.value[1]));
        assert_eq!((count, cpu), (100, 100 * 10_000_000));
        assert_eq!(
            (p.time_nanos, p.duration_nanos, p.period),
            (1_000_000_000_000, 10_000_000_000, 10_000_000)
        );
        // The symbolized leaf: a location with a line, in a mapping with the build id.
        let leaf = &p.location[(p.sample[0].location_id[0] - 1) as usize];
        let f = &p.function[(leaf.line[0].function_id - 1) as usize];
        assert_eq!((s(f.name), leaf.line[0].line), ("leaf", 3));
        let m = &p.mapping[(leaf.mapping_id - 1) as usize];
        assert_eq!(
            (s(m.filename), s(m.build_id), m.memory_start),
            ("/bin/app", "0123abcd", 0x1000)
        );
        // Span labels on every fourth sample.
        let spans = p
            .sample
            .iter()
            .filter(|x| x.label.iter().any(|l| s(l.key) == "span_id"))
            .count();
        assert_eq!(spans, 25);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn windows_still_held_are_written_at_shutdown() {
        let dir = std::env::temp_dir().join(format!("oxeye-pprof-s-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = format!("path: {}/cpu", dir.display());
        let mut h = ExporterHarness::new::<PprofFactory>(&config).unwrap();
        h.export(sample_batch(10)).unwrap();
        h.shutdown().unwrap();
        let p = read(&dir.join("cpu-1000000.pb.gz"));
        assert_eq!(p.sample.len(), 10);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no .partial left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_late_sample_gets_a_file_of_its_own_and_the_first_stays() {
        let dir = std::env::temp_dir().join(format!("oxeye-pprof-late-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = format!("path: {}/cpu", dir.display());
        let mut h = ExporterHarness::new::<PprofFactory>(&config).unwrap();
        h.export(sample_batch(10)).unwrap();
        // The window is due and written (on the exporter's thread)...
        h.tick(UNIX_EPOCH + Duration::from_secs(2000)).unwrap();
        let first = dir.join("cpu-1000000.pb.gz");
        for _ in 0..500 {
            if first.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(read(&first).sample.len(), 10);
        // ...then samples of the same window arrive late: a second file, the first intact.
        h.export(sample_batch(3)).unwrap();
        h.shutdown().unwrap();
        assert_eq!(read(&dir.join("cpu-1000000.pb.gz")).sample.len(), 10);
        assert_eq!(read(&dir.join("cpu-1000000.1.pb.gz")).sample.len(), 3);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn validation() {
        assert!(check::<PprofFactory>("path: ''").is_err());
        assert!(check::<PprofFactory>("{path: /tmp/x, flush_delay: 1s}").is_ok());
        assert!(check::<PprofFactory>("{path: /tmp/x, format: svg}").is_err());
    }
}
