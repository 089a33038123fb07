//! `arrow` exporter: spans, flows, profile samples, metrics and logs as Arrow IPC, for DuckDB,
//! Polars, pandas.
//!
//! ```yaml
//! exporters:
//!   arrow:
//!     path: /var/lib/oxeye/spans     # file prefix; "-" writes an IPC stream to stdout
//!     format: file                   # file (IPC file, with footer) | stream (IPC stream)
//!     compression: zstd              # none | zstd | lz4 (IPC buffer compression)
//!     rotate: {max_bytes: 67108864, max_age: 60s}
//! ```
//!
//! Files are `<path>-<start unix ms>.arrow` (`<path>-<signal>-<start>.arrow` when the exporter
//! serves several signals). A file is written as `….arrow.partial` and renamed when complete, so
//! every `.arrow` file is readable. Schemas: [`span_schema`], [`flow_schema`],
//! [`profile_schema`], [`metric_schema`] (a row per data point), [`log_schema`]; column names are
//! the OTel attribute names; low-cardinality strings are dictionary-encoded; stacks are
//! `list<uint64>` and symbolized frames `list<struct>`; the schema metadata carries
//! `oxeye.schema.version`.

mod signals;

pub use signals::{log_schema, logs_to_arrow, metric_schema, metrics_to_arrow};

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::builder::{
    FixedSizeBinaryBuilder, Int64Builder, ListBuilder, MapBuilder, StringBuilder,
    StringDictionaryBuilder, StructBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
    UInt8Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
use arrow_ipc::CompressionType;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use oxeye_api::blocking::{BlockingExport, OnThread};
use oxeye_api::{
    Attributes, Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Flow, Frame,
    Records, Sample, Signal, Span,
};
use serde::Deserialize;

/// Version of the schemas below, in each file's metadata.
pub const SCHEMA_VERSION: &str = "1";

/// IPC format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// IPC file (random access; footer written at rotation).
    #[default]
    File,
    /// IPC stream.
    Stream,
}

/// IPC buffer compression.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// Zstandard.
    Zstd,
    /// LZ4 frame.
    Lz4,
}

/// When to start a new file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rotate {
    /// After this many bytes.
    pub max_bytes: u64,
    /// After this long.
    #[serde(with = "oxeye_api::config::duration")]
    pub max_age: Duration,
}

impl Default for Rotate {
    fn default() -> Self {
        Rotate {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(60),
        }
    }
}

/// Config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrowConfig {
    /// File prefix, or `-` for a stream on stdout.
    pub path: String,
    /// `file` or `stream`.
    #[serde(default)]
    pub format: Format,
    /// `none`, `zstd` or `lz4`.
    #[serde(default)]
    pub compression: Compression,
    /// Rotation.
    #[serde(default)]
    pub rotate: Rotate,
}

pub(crate) fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

pub(crate) fn attributes_field() -> Field {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ])),
        false,
    );
    Field::new("attributes", DataType::Map(Arc::new(entries), false), false)
}

fn frame_fields() -> Fields {
    Fields::from(vec![
        Field::new("address", DataType::UInt64, false),
        Field::new("function", DataType::Utf8, true),
        Field::new("module", DataType::Utf8, true),
        Field::new("offset", DataType::UInt64, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::UInt32, true),
        Field::new("build_id", DataType::Utf8, true),
    ])
}

fn frames_field() -> Field {
    Field::new(
        "frames",
        DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(frame_fields()),
            true,
        ))),
        false,
    )
}

pub(crate) fn u64_list(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::UInt64, true))),
        false,
    )
}

pub(crate) fn with_meta(fields: Vec<Field>, signal: &str) -> SchemaRef {
    let meta = [
        (
            "oxeye.schema.version".to_string(),
            SCHEMA_VERSION.to_string(),
        ),
        ("oxeye.signal".to_string(), signal.to_string()),
    ];
    let meta: std::collections::HashMap<String, String> = meta.into_iter().collect();
    Arc::new(Schema::new(fields).with_metadata(meta))
}

/// The span schema.
pub fn span_schema() -> SchemaRef {
    with_meta(
        vec![
            Field::new("trace_id", DataType::FixedSizeBinary(16), false),
            Field::new("span_id", DataType::FixedSizeBinary(8), false),
            Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
            Field::new("name", dict(), false),
            Field::new("kind", dict(), false),
            Field::new("start_time_unix_nano", DataType::UInt64, false),
            Field::new("end_time_unix_nano", DataType::UInt64, false),
            Field::new("duration_ns", DataType::UInt64, false),
            Field::new("status", dict(), false),
            Field::new("status_message", DataType::Utf8, true),
            Field::new("process.pid", DataType::UInt32, true),
            Field::new("thread.id", DataType::UInt32, true),
            Field::new("process.executable.name", dict(), true),
            Field::new("cpu.logical_number", DataType::UInt32, true),
            Field::new("oxeye.return_value", DataType::Int64, true),
            u64_list("oxeye.args"),
            u64_list("oxeye.kernel_stack"),
            u64_list("oxeye.user_stack"),
            frames_field(),
            attributes_field(),
            Field::new("service.name", dict(), true),
            Field::new("host.name", dict(), true),
        ],
        "traces",
    )
}

/// The profile schema: one row per (thread, stack, span) of a window, with its sample count.
pub fn profile_schema() -> SchemaRef {
    with_meta(
        vec![
            Field::new("process.pid", DataType::UInt32, false),
            Field::new("thread.id", DataType::UInt32, false),
            Field::new("process.executable.name", dict(), false),
            Field::new("count", DataType::UInt64, false),
            Field::new("cpu_ns", DataType::UInt64, false),
            Field::new("period_ns", DataType::UInt64, false),
            Field::new("window_start_unix_nano", DataType::UInt64, false),
            Field::new("window_end_unix_nano", DataType::UInt64, false),
            Field::new("trace_id", DataType::FixedSizeBinary(16), true),
            Field::new("span_id", DataType::FixedSizeBinary(8), true),
            u64_list("oxeye.kernel_stack"),
            u64_list("oxeye.user_stack"),
            frames_field(),
            attributes_field(),
            Field::new("service.name", dict(), true),
            Field::new("host.name", dict(), true),
        ],
        "profiles",
    )
}

/// The flow schema.
pub fn flow_schema() -> SchemaRef {
    with_meta(
        vec![
            Field::new("source.address", DataType::Utf8, false),
            Field::new("source.port", DataType::UInt16, false),
            Field::new("destination.address", DataType::Utf8, false),
            Field::new("destination.port", DataType::UInt16, false),
            Field::new("network.transport", dict(), false),
            Field::new("network.type", dict(), false),
            Field::new("network.interface.name", dict(), true),
            Field::new("network.io.direction", dict(), false),
            Field::new("packets", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("oxeye.tcp_flags", DataType::UInt8, false),
            Field::new("first_seen_unix_nano", DataType::UInt64, false),
            Field::new("last_seen_unix_nano", DataType::UInt64, false),
            Field::new("window_start_unix_nano", DataType::UInt64, false),
            Field::new("window_end_unix_nano", DataType::UInt64, false),
            attributes_field(),
            Field::new("service.name", dict(), true),
            Field::new("host.name", dict(), true),
        ],
        "flows",
    )
}

/// The dictionaries of one file so far, per column: each batch's dictionary extends the
/// previous one (same values first), which the IPC file format accepts as a delta; a fresh
/// dictionary per batch would be a replacement, which it does not.
#[derive(Default)]
pub struct Dicts(std::collections::HashMap<usize, arrow_array::StringArray>);

impl Dicts {
    pub(crate) fn builder(
        &self,
        column: usize,
    ) -> Result<StringDictionaryBuilder<Int32Type>, BoxError> {
        Ok(match self.0.get(&column) {
            Some(values) => StringDictionaryBuilder::new_with_dictionary(0, values)?,
            None => StringDictionaryBuilder::new(),
        })
    }

    /// A column with the same value (or null) in all `n` rows, such as the resource's
    /// `service.name`: the keys are written at once instead of hashing one string per row.
    pub(crate) fn constant(
        &mut self,
        column: usize,
        value: Option<&str>,
        n: usize,
    ) -> Result<ArrayRef, BoxError> {
        let mut b = self.builder(column)?;
        let key = value.map(|v| b.append(v)).transpose()?;
        let one = b.finish();
        let values = one.values().clone();
        self.0.insert(
            column,
            values
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .ok_or("dictionary values are strings")?
                .clone(),
        );
        let keys = match key {
            Some(k) => arrow_array::Int32Array::from(vec![k; n]),
            None => arrow_array::Int32Array::new_null(n),
        };
        Ok(Arc::new(
            arrow_array::DictionaryArray::<Int32Type>::try_new(keys, values)?,
        ))
    }

    pub(crate) fn finish(
        &mut self,
        column: usize,
        mut b: StringDictionaryBuilder<Int32Type>,
    ) -> Result<ArrayRef, BoxError> {
        let array = b.finish();
        let values = array
            .values()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .ok_or("dictionary values are strings")?
            .clone();
        self.0.insert(column, values);
        Ok(Arc::new(array))
    }
}

pub(crate) fn append_attributes(
    b: &mut MapBuilder<StringBuilder, StringBuilder>,
    attrs: &Attributes,
) -> Result<(), BoxError> {
    for (k, v) in attrs.iter() {
        b.keys().append_value(k);
        b.values().append_value(v.to_string());
    }
    b.append(true)?;
    Ok(())
}

pub(crate) fn resource_str(resource: &oxeye_api::Resource, key: &str) -> Option<String> {
    resource.attributes.get(key).map(|v| v.to_string())
}

fn u64_lists<'a>(rows: impl Iterator<Item = &'a [u64]>) -> ArrayRef {
    let mut b = ListBuilder::new(UInt64Builder::new());
    for row in rows {
        b.values().append_slice(row);
        b.append(true);
    }
    Arc::new(b.finish())
}

/// One row of the `frames` column.
fn append_frames(b: &mut ListBuilder<StructBuilder>, frames: &[Frame]) -> Result<(), BoxError> {
    let fb = b.values();
    for f in frames {
        fb.field_builder::<UInt64Builder>(0)
            .ok_or("frame address")?
            .append_value(f.address);
        fb.field_builder::<StringBuilder>(1)
            .ok_or("frame function")?
            .append_option(f.function.as_deref());
        fb.field_builder::<StringBuilder>(2)
            .ok_or("frame module")?
            .append_option(f.module.as_deref());
        fb.field_builder::<UInt64Builder>(3)
            .ok_or("frame offset")?
            .append_value(f.offset);
        fb.field_builder::<StringBuilder>(4)
            .ok_or("frame file")?
            .append_option(f.file.as_deref());
        fb.field_builder::<UInt32Builder>(5)
            .ok_or("frame line")?
            .append_option(f.line);
        fb.field_builder::<StringBuilder>(6)
            .ok_or("frame build_id")?
            .append_option(f.build_id.as_deref());
        fb.append(true);
    }
    b.append(true);
    Ok(())
}

/// Profile samples → a record batch of [`profile_schema`].
pub fn samples_to_arrow(
    samples: &[Sample],
    resource: &oxeye_api::Resource,
    dicts: &mut Dicts,
) -> Result<RecordBatch, BoxError> {
    let n = samples.len();
    let (mut pid, mut tid) = (
        UInt32Builder::with_capacity(n),
        UInt32Builder::with_capacity(n),
    );
    let mut comm = dicts.builder(2)?;
    let [mut count, mut cpu, mut period, mut start, mut end] =
        std::array::from_fn(|_| UInt64Builder::with_capacity(n));
    let mut trace = FixedSizeBinaryBuilder::with_capacity(n, 16);
    let mut span_id = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut frames = ListBuilder::new(StructBuilder::from_fields(frame_fields(), 0));
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for s in samples {
        pid.append_value(s.pid);
        tid.append_value(s.tid);
        comm.append_value(s.comm.as_str());
        count.append_value(s.count);
        cpu.append_value(s.cpu_ns());
        period.append_value(s.period_ns);
        start.append_value(s.window_start_unix_ns);
        end.append_value(s.window_end_unix_ns);
        match s.trace_id {
            Some(t) => trace.append_value(t.0)?,
            None => trace.append_null(),
        }
        match s.span_id {
            Some(id) => span_id.append_value(id.0)?,
            None => span_id.append_null(),
        }
        append_frames(&mut frames, &s.frames)?;
        append_attributes(&mut attrs, &s.attributes)?;
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(pid.finish()),
        Arc::new(tid.finish()),
        dicts.finish(2, comm)?,
        Arc::new(count.finish()),
        Arc::new(cpu.finish()),
        Arc::new(period.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(trace.finish()),
        Arc::new(span_id.finish()),
        u64_lists(samples.iter().map(|s| s.kernel_stack.as_slice())),
        u64_lists(samples.iter().map(|s| s.user_stack.as_slice())),
        Arc::new(frames.finish()),
        Arc::new(attrs.finish()),
        dicts.constant(14, resource_str(resource, "service.name").as_deref(), n)?,
        dicts.constant(15, resource_str(resource, "host.name").as_deref(), n)?,
    ];
    Ok(RecordBatch::try_new(profile_schema(), columns)?)
}

/// Spans → a record batch of [`span_schema`].
pub fn spans_to_arrow(
    spans: &[Span],
    resource: &oxeye_api::Resource,
    dicts: &mut Dicts,
) -> Result<RecordBatch, BoxError> {
    let n = spans.len();
    let mut trace = FixedSizeBinaryBuilder::with_capacity(n, 16);
    let mut span_id = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut parent = FixedSizeBinaryBuilder::with_capacity(n, 8);
    let mut name = dicts.builder(3)?;
    let mut kind = dicts.builder(4)?;
    let (mut start, mut end, mut dur) = (
        UInt64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
    );
    let mut status = dicts.builder(8)?;
    let mut message = StringBuilder::new();
    let (mut pid, mut tid, mut cpu) = (
        UInt32Builder::with_capacity(n),
        UInt32Builder::with_capacity(n),
        UInt32Builder::with_capacity(n),
    );
    let mut comm = dicts.builder(12)?;
    let mut ret = Int64Builder::with_capacity(n);
    let mut frames = ListBuilder::new(StructBuilder::from_fields(frame_fields(), 0));
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let (service_name, host_name) = (
        resource_str(resource, "service.name"),
        resource_str(resource, "host.name"),
    );
    for s in spans {
        trace.append_value(s.trace_id.0)?;
        span_id.append_value(s.span_id.0)?;
        match s.parent_span_id {
            Some(p) => parent.append_value(p.0)?,
            None => parent.append_null(),
        }
        name.append_value(&*s.name);
        kind.append_value(s.kind.as_str());
        start.append_value(s.start_unix_ns);
        end.append_value(s.end_unix_ns);
        dur.append_value(s.duration_ns());
        status.append_value(s.status.as_str());
        message.append_option(s.status_message.as_deref());
        match &s.task {
            Some(t) => {
                pid.append_value(t.pid);
                tid.append_value(t.tid);
                comm.append_value(t.comm.as_str());
                cpu.append_value(t.cpu);
            }
            None => {
                pid.append_null();
                tid.append_null();
                comm.append_null();
                cpu.append_null();
            }
        }
        ret.append_option(s.return_value);
        append_frames(&mut frames, &s.frames)?;
        append_attributes(&mut attrs, &s.attributes)?;
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(trace.finish()),
        Arc::new(span_id.finish()),
        Arc::new(parent.finish()),
        dicts.finish(3, name)?,
        dicts.finish(4, kind)?,
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(dur.finish()),
        dicts.finish(8, status)?,
        Arc::new(message.finish()),
        Arc::new(pid.finish()),
        Arc::new(tid.finish()),
        dicts.finish(12, comm)?,
        Arc::new(cpu.finish()),
        Arc::new(ret.finish()),
        u64_lists(spans.iter().map(|s| s.args.as_slice())),
        u64_lists(spans.iter().map(|s| s.kernel_stack.as_slice())),
        u64_lists(spans.iter().map(|s| s.user_stack.as_slice())),
        Arc::new(frames.finish()),
        Arc::new(attrs.finish()),
        dicts.constant(20, service_name.as_deref(), n)?,
        dicts.constant(21, host_name.as_deref(), n)?,
    ];
    Ok(RecordBatch::try_new(span_schema(), columns)?)
}

/// Flows → a record batch of [`flow_schema`].
pub fn flows_to_arrow(
    flows: &[Flow],
    resource: &oxeye_api::Resource,
    dicts: &mut Dicts,
) -> Result<RecordBatch, BoxError> {
    let n = flows.len();
    let (mut src, mut dst) = (StringBuilder::new(), StringBuilder::new());
    let (mut sport, mut dport) = (
        UInt16Builder::with_capacity(n),
        UInt16Builder::with_capacity(n),
    );
    let mut transport = dicts.builder(4)?;
    let mut net_type = dicts.builder(5)?;
    let mut iface = dicts.builder(6)?;
    let mut dir = dicts.builder(7)?;
    let (mut packets, mut bytes) = (
        UInt64Builder::with_capacity(n),
        UInt64Builder::with_capacity(n),
    );
    let mut flags = UInt8Builder::with_capacity(n);
    let mut times: [UInt64Builder; 4] = std::array::from_fn(|_| UInt64Builder::with_capacity(n));
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let (service_name, host_name) = (
        resource_str(resource, "service.name"),
        resource_str(resource, "host.name"),
    );
    for f in flows {
        src.append_value(f.src_addr.to_string());
        dst.append_value(f.dst_addr.to_string());
        sport.append_value(f.src_port);
        dport.append_value(f.dst_port);
        transport.append_value(f.transport.as_str());
        net_type.append_value(f.network_type());
        iface.append_option(f.interface.as_deref());
        dir.append_value(f.direction.as_str());
        packets.append_value(f.packets);
        bytes.append_value(f.bytes);
        flags.append_value(f.tcp_flags.0);
        for (b, v) in times.iter_mut().zip([
            f.first_seen_unix_ns,
            f.last_seen_unix_ns,
            f.window_start_unix_ns,
            f.window_end_unix_ns,
        ]) {
            b.append_value(v);
        }
        append_attributes(&mut attrs, &f.attributes)?;
    }
    let [mut first, mut last, mut wstart, mut wend] = times;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(src.finish()),
        Arc::new(sport.finish()),
        Arc::new(dst.finish()),
        Arc::new(dport.finish()),
        dicts.finish(4, transport)?,
        dicts.finish(5, net_type)?,
        dicts.finish(6, iface)?,
        dicts.finish(7, dir)?,
        Arc::new(packets.finish()),
        Arc::new(bytes.finish()),
        Arc::new(flags.finish()),
        Arc::new(first.finish()),
        Arc::new(last.finish()),
        Arc::new(wstart.finish()),
        Arc::new(wend.finish()),
        Arc::new(attrs.finish()),
        dicts.constant(16, service_name.as_deref(), n)?,
        dicts.constant(17, host_name.as_deref(), n)?,
    ];
    Ok(RecordBatch::try_new(flow_schema(), columns)?)
}

/// Counts bytes written, for rotation by size.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Writer {
    File(FileWriter<Counting<BufWriter<File>>>),
    Stream(StreamWriter<Counting<BufWriter<File>>>),
    Stdout(StreamWriter<std::io::Stdout>),
}

/// One open output per signal.
struct Output {
    writer: Writer,
    dicts: Dicts,
    /// `….arrow.partial` → `….arrow` on finish (files only), and the base of its name.
    paths: Option<(PathBuf, PathBuf, String)>,
    opened: Instant,
}

impl Output {
    fn written(&self) -> u64 {
        match &self.writer {
            Writer::File(w) => w.get_ref().written,
            Writer::Stream(w) => w.get_ref().written,
            Writer::Stdout(_) => 0,
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), BoxError> {
        match &mut self.writer {
            Writer::File(w) => w.write(batch)?,
            Writer::Stream(w) => w.write(batch)?,
            Writer::Stdout(w) => {
                w.write(batch)?;
                w.flush()?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), BoxError> {
        match &mut self.writer {
            Writer::File(w) => w.finish()?,
            Writer::Stream(w) => w.finish()?,
            Writer::Stdout(w) => w.finish()?,
        }
        if let Some((partial, done, base)) = self.paths {
            oxeye_api::files::publish(&partial, &done, &base, ".arrow")?;
        }
        Ok(())
    }
}

/// The exporter's blocking half: encoding, compression, writes and renames run on its own
/// thread ([`OnThread`]), never on the async workers.
pub struct ArrowExporter {
    config: ArrowConfig,
    options: IpcWriteOptions,
    /// More than one signal: the signal goes into file names.
    several_signals: bool,
    outputs: [Option<Output>; 5],
    /// The start time in the last file name: a new file never reuses it.
    last_ms: u128,
}

fn slot(signal: Signal) -> usize {
    match signal {
        Signal::Traces => 0,
        Signal::Flows => 1,
        Signal::Metrics => 3,
        Signal::Logs => 4,
        _ => 2,
    }
}

impl ArrowExporter {
    fn open(&mut self, signal: Signal, schema: &SchemaRef) -> Result<Output, BoxError> {
        if self.config.path == "-" {
            let w = StreamWriter::try_new_with_options(
                std::io::stdout(),
                schema,
                self.options.clone(),
            )?;
            return Ok(Output {
                writer: Writer::Stdout(w),
                dicts: Dicts::default(),
                paths: None,
                opened: Instant::now(),
            });
        }
        // Two rotations within one millisecond must not write the same name: the second file
        // takes the next millisecond (names stay unique and in order).
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let ms = now_ms.max(self.last_ms + 1);
        self.last_ms = ms;
        let base = if self.several_signals {
            format!("{}-{}-{ms}", self.config.path, signal.as_str())
        } else {
            format!("{}-{ms}", self.config.path)
        };
        if let Some(dir) = PathBuf::from(&base)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        // Created new, never over an existing file or through a link planted at the name.
        let (file, partial, done) = oxeye_api::files::create_partial(&base, ".arrow")?;
        let sink = Counting {
            inner: BufWriter::new(file),
            written: 0,
        };
        let writer = match self.config.format {
            Format::File => Writer::File(FileWriter::try_new_with_options(
                sink,
                schema,
                self.options.clone(),
            )?),
            Format::Stream => Writer::Stream(StreamWriter::try_new_with_options(
                sink,
                schema,
                self.options.clone(),
            )?),
        };
        Ok(Output {
            writer,
            dicts: Dicts::default(),
            paths: Some((partial, done, base)),
            opened: Instant::now(),
        })
    }
}

impl BlockingExport for ArrowExporter {
    fn export(&mut self, batch: &Batch) -> Result<(), BoxError> {
        let (signal, schema) = match &batch.records {
            Records::Spans(_) | Records::Encoded(_) => (Signal::Traces, span_schema()),
            Records::Flows(_) => (Signal::Flows, flow_schema()),
            Records::Samples(_) => (Signal::Profiles, profile_schema()),
            Records::Metrics(_) => (Signal::Metrics, metric_schema()),
            Records::Logs(_) => (Signal::Logs, log_schema()),
            _ => return Err("arrow: records of a signal this exporter has no schema for".into()),
        };
        let i = slot(signal);
        if self.outputs[i].is_none() {
            self.outputs[i] = Some(self.open(signal, &schema)?);
        }
        let out = self.outputs[i].as_mut().ok_or("output")?;
        let rb = match &batch.records {
            Records::Spans(s) => spans_to_arrow(s, &batch.resource, &mut out.dicts)?,
            Records::Flows(f) => flows_to_arrow(f, &batch.resource, &mut out.dicts)?,
            Records::Samples(p) => samples_to_arrow(p, &batch.resource, &mut out.dicts)?,
            Records::Metrics(m) => metrics_to_arrow(m, &batch.resource, &mut out.dicts)?,
            Records::Logs(l) => logs_to_arrow(l, &batch.resource, &mut out.dicts)?,
            // The engine decodes them before this exporter; decoded here too for direct callers.
            Records::Encoded(e) => spans_to_arrow(&e.decode()?, &batch.resource, &mut out.dicts)?,
            _ => return Err("arrow: records of a signal this exporter has no schema for".into()),
        };
        out.write(&rb)?;
        let rotate = &self.config.rotate;
        if self.config.path != "-"
            && (out.written() >= rotate.max_bytes || out.opened.elapsed() >= rotate.max_age)
        {
            if let Some(done) = self.outputs[i].take() {
                done.finish()?;
            }
        }
        Ok(())
    }

    /// Closes (and renames) a file that reached `max_age` while no record came.
    fn tick(&mut self, _now: SystemTime) -> Result<(), BoxError> {
        if self.config.path == "-" {
            return Ok(());
        }
        for out in self.outputs.iter_mut() {
            if out
                .as_ref()
                .is_some_and(|o| o.opened.elapsed() >= self.config.rotate.max_age)
            {
                if let Some(done) = out.take() {
                    done.finish()?;
                }
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), BoxError> {
        for out in self.outputs.iter_mut() {
            if let Some(o) = out.take() {
                o.finish()?;
            }
        }
        Ok(())
    }
}

/// Factory for [`ArrowExporter`].
pub struct ArrowFactory;

impl Factory for ArrowFactory {
    type Config = ArrowConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "arrow";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "Arrow IPC files (rotated, zstd/lz4) or a stream on stdout";
    const DOCS: &'static str = include_str!("../../../docs/components/exporter-arrow.md");

    fn validate(c: &ArrowConfig) -> Result<(), ConfigErrors> {
        let mut e = ConfigErrors::new();
        if c.path.is_empty() {
            e.push(
                "path",
                "give a file prefix such as /var/lib/oxeye/spans, or - for stdout",
            );
        }
        if c.path == "-" && c.format == Format::File {
            e.push("format", "stdout can only carry `format: stream`");
        }
        if c.rotate.max_bytes == 0 || c.rotate.max_age.is_zero() {
            e.push("rotate", "max_bytes and max_age must be greater than 0");
        }
        e.into_result()
    }

    fn build(c: ArrowConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        if c.path != "-" {
            if let Err(why) = oxeye_api::files::check_prefix(&c.path) {
                let mut e = ConfigErrors::new();
                e.push("path", why.to_string());
                return Err(e.into());
            }
        }
        if c.path == "-" && ctx.signals.len() > 1 {
            let signals: Vec<&str> = ctx.signals.iter().map(|s| s.as_str()).collect();
            let mut e = ConfigErrors::new();
            e.push("path", format!(
                "`path: -` writes one Arrow IPC stream to stdout, which carries one schema, but this exporter is in pipelines of {}: give it a file prefix, or declare one arrow exporter per signal (arrow/traces, arrow/flows)",
                signals.join(" and ")
            ));
            return Err(e.into());
        }
        let compression = match c.compression {
            Compression::None => None,
            Compression::Zstd => Some(CompressionType::ZSTD),
            Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
        };
        let options = IpcWriteOptions::default()
            .try_with_compression(compression)?
            .with_dictionary_handling(arrow_ipc::writer::DictionaryHandling::Delta);
        // Ticks close idle files on time; at most a second late for short ages.
        let tick = c.rotate.max_age.min(Duration::from_secs(1));
        let files = ArrowExporter {
            config: c,
            options,
            several_signals: ctx.signals.len() > 1,
            outputs: Default::default(),
            last_ms: 0,
        };
        Ok(Box::new(OnThread::spawn(
            "arrow",
            files,
            ctx.telemetry,
            Some(tick),
        )?))
    }
}

oxeye_api::register!(ArrowFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::testing::{self, ExporterHarness};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxeye-arrow-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn files(d: &std::path::Path, suffix: &str) -> usize {
        std::fs::read_dir(d)
            .expect("read_dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(suffix))
            })
            .count()
    }

    #[test]
    fn rotations_within_one_millisecond_write_distinct_files() {
        let d = dir("rotate");
        let yaml = format!("path: {}/spans\nrotate: {{max_bytes: 1}}", d.display());
        let mut h = ExporterHarness::new::<ArrowFactory>(&yaml).expect("build");
        for _ in 0..30 {
            h.export(testing::span_batch(10)).expect("export");
        }
        h.shutdown().expect("shutdown");
        // Every batch rotated: 30 files, none overwritten by a same-millisecond twin.
        assert_eq!(files(&d, ".arrow"), 30);
        assert_eq!(files(&d, ".partial"), 0);
        assert_eq!(h.telemetry().emitted(), 300);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_idle_file_is_closed_at_max_age_by_a_tick() {
        let d = dir("tick");
        let yaml = format!("path: {}/spans\nrotate: {{max_age: 200ms}}", d.display());
        let mut h = ExporterHarness::new::<ArrowFactory>(&yaml).expect("build");
        assert_eq!(h.tick_interval(), Some(Duration::from_millis(200)));
        h.export(testing::span_batch(5)).expect("export");
        std::thread::sleep(Duration::from_millis(300));
        h.tick(SystemTime::now()).expect("tick");
        // No further record: the tick alone completes the file.
        let t = Instant::now();
        while files(&d, ".arrow") == 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(files(&d, ".arrow"), 1);
        assert_eq!(files(&d, ".partial"), 0);
        h.shutdown().expect("shutdown");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn files_taken_already_and_planted_links_are_left_alone() {
        let d = dir("noclobber");
        let prefix = d.join("spans").display().to_string();
        // Every name this second may produce is taken by a file or a link to a victim.
        let victim = d.join("victim");
        std::fs::write(&victim, b"victim").expect("write");
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        for ms in now_ms..now_ms + 3000 {
            if ms % 2 == 0 {
                std::fs::write(format!("{prefix}-{ms}.arrow"), b"precious").expect("write");
            } else {
                std::os::unix::fs::symlink(&victim, format!("{prefix}-{ms}.arrow.partial"))
                    .expect("symlink");
            }
        }
        let yaml = format!(
            "path: {prefix}
rotate: {{max_bytes: 1}}"
        );
        let mut h = ExporterHarness::new::<ArrowFactory>(&yaml).expect("build");
        for _ in 0..3 {
            h.export(testing::span_batch(10)).expect("export");
        }
        h.shutdown().expect("shutdown");
        assert_eq!(std::fs::read(&victim).expect("read"), b"victim");
        for ms in (now_ms..now_ms + 3000).filter(|ms| ms % 2 == 0) {
            let kept = std::fs::read(format!("{prefix}-{ms}.arrow")).expect("read");
            assert_eq!(kept, b"precious");
        }
        assert_eq!(h.telemetry().emitted(), 30);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_stream_on_stdout_takes_one_signal() {
        let mut ctx = BuildContext::for_test("arrow");
        ctx.signals = vec![Signal::Traces, Signal::Flows];
        let c: ArrowConfig = serde_yaml::from_str("{path: '-', format: stream}").expect("config");
        let e = ArrowFactory::build(c, ctx)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("one arrow exporter per signal"), "{e}");
    }
}
