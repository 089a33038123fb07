//! `stdout` exporter: one line per record, as text for people or JSON lines for `jq`.
//!
//! JSON keys are the OpenTelemetry names (`name`, `trace_id`, `span_id`, `parent_span_id`,
//! `source.address`, `source.port`, `network.transport`, `packets`, ...); resource attributes
//! are under `resource`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use oxeye_api::{
    Attributes, Batch, BoxError, BuildContext, Exporter, Factory, Flow, Records, Signal, Span,
    Value,
};
use serde::Deserialize;

/// Output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One readable line per record.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    /// `text` (default) or `json`.
    pub format: Format,
}

/// The exporter.
pub struct Stdout {
    format: Format,
    buf: String,
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_value(out: &mut String, v: &Value) {
    match v {
        Value::Str(s) => json_str(out, s),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::F64(f) if f.is_finite() => {
            let _ = write!(out, "{f}");
        }
        Value::F64(_) => out.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Bytes(_) => json_str(out, &v.to_string()),
    }
}

/// Writes `,"key":` (the object is already open, so always with a leading comma but the first).
fn key(out: &mut String, k: &str) {
    if !out.ends_with('{') {
        out.push(',');
    }
    json_str(out, k);
    out.push(':');
}

fn json_attrs(out: &mut String, attrs: &Attributes) {
    for (k, v) in attrs.iter() {
        key(out, k);
        json_value(out, v);
    }
}

fn json_addrs(out: &mut String, k: &str, addrs: &[u64]) {
    key(out, k);
    out.push('[');
    for (i, a) in addrs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{a:#x}\"");
    }
    out.push(']');
}

fn json_span(out: &mut String, s: &Span, resource: &Attributes) {
    out.push('{');
    key(out, "signal");
    out.push_str("\"traces\"");
    key(out, "name");
    json_str(out, &s.name);
    let _ = write!(
        out,
        ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
        s.trace_id, s.span_id
    );
    key(out, "parent_span_id");
    match s.parent_span_id {
        Some(p) => {
            let _ = write!(out, "\"{p}\"");
        }
        None => out.push_str("null"),
    }
    let _ = write!(
        out,
        ",\"kind\":\"{}\",\"start_time_unix_nano\":{},\"end_time_unix_nano\":{},\"duration_ns\":{},\"status\":\"{}\"",
        s.kind.as_str(),
        s.start_unix_ns,
        s.end_unix_ns,
        s.duration_ns(),
        s.status.as_str()
    );
    if let Some(m) = &s.status_message {
        key(out, "status_message");
        json_str(out, m);
    }
    if let Some(t) = &s.task {
        let _ = write!(out, ",\"process.pid\":{},\"thread.id\":{}", t.pid, t.tid);
        key(out, "process.executable.name");
        json_str(out, &t.comm.as_str());
        let _ = write!(out, ",\"cpu.logical_number\":{}", t.cpu);
    }
    if let Some(r) = s.return_value {
        let _ = write!(out, ",\"oxeye.return_value\":{r}");
    }
    if !s.args.is_empty() {
        json_addrs(out, "oxeye.args", &s.args);
    }
    if !s.kernel_stack.is_empty() {
        json_addrs(out, "oxeye.kernel_stack", &s.kernel_stack);
    }
    if !s.user_stack.is_empty() {
        json_addrs(out, "oxeye.user_stack", &s.user_stack);
    }
    if !s.frames.is_empty() {
        key(out, "code.stacktrace");
        let mut trace = String::new();
        for f in &s.frames {
            let _ = writeln!(
                trace,
                "{}+{:#x} ({})",
                f.function.as_deref().unwrap_or("?"),
                f.offset,
                f.module.as_deref().unwrap_or("?")
            );
        }
        json_str(out, trace.trim_end());
    }
    json_attrs(out, &s.attributes);
    key(out, "resource");
    out.push('{');
    json_attrs(out, resource);
    out.push_str("}}\n");
}

fn json_flow(out: &mut String, f: &Flow, resource: &Attributes) {
    out.push('{');
    let _ = write!(
        out,
        "\"signal\":\"flows\",\"source.address\":\"{}\",\"source.port\":{},\"destination.address\":\"{}\",\"destination.port\":{},\"network.transport\":\"{}\",\"network.type\":\"{}\"",
        f.src_addr,
        f.src_port,
        f.dst_addr,
        f.dst_port,
        f.transport.as_str(),
        f.network_type()
    );
    if let Some(i) = &f.interface {
        key(out, "network.interface.name");
        json_str(out, i);
    }
    let _ = write!(
        out,
        ",\"network.io.direction\":\"{}\",\"packets\":{},\"bytes\":{},\"oxeye.tcp_flags\":[",
        f.direction.as_str(),
        f.packets,
        f.bytes
    );
    for (i, name) in f.tcp_flags.names().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\"");
    }
    let _ = write!(
        out,
        "],\"oxeye.ether_type\":{},\"oxeye.ifindex\":{},\"first_seen_unix_nano\":{},\"last_seen_unix_nano\":{},\"window_start_unix_nano\":{},\"window_end_unix_nano\":{}",
        f.ether_type,
        f.ifindex,
        f.first_seen_unix_ns,
        f.last_seen_unix_ns,
        f.window_start_unix_ns,
        f.window_end_unix_ns
    );
    json_attrs(out, &f.attributes);
    key(out, "resource");
    out.push('{');
    json_attrs(out, resource);
    out.push_str("}}\n");
}

fn text_span(out: &mut String, s: &Span) {
    let _ = write!(
        out,
        "span {} trace={} span={} parent={} duration={}us status={}",
        s.name,
        s.trace_id,
        s.span_id,
        s.parent_span_id
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
        s.duration_ns() as f64 / 1000.0,
        s.status.as_str()
    );
    if let Some(t) = &s.task {
        let _ = write!(
            out,
            " pid={} tid={} comm={} cpu={}",
            t.pid,
            t.tid,
            t.comm.as_str(),
            t.cpu
        );
    }
    if let Some(r) = s.return_value {
        let _ = write!(out, " ret={r}");
    }
    for (k, v) in s.attributes.iter() {
        let _ = write!(out, " {k}={v}");
    }
    out.push('\n');
}

fn text_flow(out: &mut String, f: &Flow) {
    let flags: Vec<&str> = f.tcp_flags.names().collect();
    let _ = write!(
        out,
        "flow {} {} {} {}:{} -> {}:{} packets={} bytes={}",
        f.interface.as_deref().unwrap_or("?"),
        f.direction.as_str(),
        f.transport.as_str(),
        f.src_addr,
        f.src_port,
        f.dst_addr,
        f.dst_port,
        f.packets,
        f.bytes
    );
    if !flags.is_empty() {
        let _ = write!(out, " flags={}", flags.join("|"));
    }
    for (k, v) in f.attributes.iter() {
        let _ = write!(out, " {k}={v}");
    }
    out.push('\n');
}

impl Stdout {
    fn render(&mut self, batch: &Batch) {
        let out = &mut self.buf;
        let resource = &batch.resource.attributes;
        match (&batch.records, self.format) {
            (Records::Spans(spans), Format::Json) => {
                spans.iter().for_each(|s| json_span(out, s, resource))
            }
            (Records::Flows(flows), Format::Json) => {
                flows.iter().for_each(|f| json_flow(out, f, resource))
            }
            (Records::Spans(spans), Format::Text) => spans.iter().for_each(|s| text_span(out, s)),
            (Records::Flows(flows), Format::Text) => flows.iter().for_each(|f| text_flow(out, f)),
        }
    }
}

#[async_trait]
impl Exporter for Stdout {
    async fn export(&mut self, batch: Arc<Batch>) -> Result<(), BoxError> {
        self.buf.clear();
        self.render(&batch);
        // One write per batch; a closed stdout (e.g. `| head`) ends the collector with an error.
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(self.buf.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("writing to stdout: {e}"))?;
        Ok(())
    }
}

/// Factory for [`Stdout`].
pub struct StdoutFactory;

impl Factory for StdoutFactory {
    type Config = StdoutConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "stdout";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str = "writes one line per record to stdout (format: text | json)";

    fn build(config: StdoutConfig, _ctx: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(Stdout {
            format: config.format,
            buf: String::new(),
        }))
    }
}

oxeye_api::register!(StdoutFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::{Direction, SpanId, TcpFlags, TraceId, Transport};

    #[test]
    fn json_lines_carry_otel_names() {
        let mut out = String::new();
        let span = Span {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: Some(SpanId([3; 8])),
            name: "say \"hi\"\n".into(),
            start_unix_ns: 10,
            end_unix_ns: 25,
            ..Span::default()
        };
        let resource: Attributes = [("service.name", "edge")].into_iter().collect();
        json_span(&mut out, &span, &resource);
        assert_eq!(
            out,
            "{\"signal\":\"traces\",\"name\":\"say \\\"hi\\\"\\n\",\"trace_id\":\"01010101010101010101010101010101\",\
             \"span_id\":\"0202020202020202\",\"parent_span_id\":\"0303030303030303\",\"kind\":\"internal\",\
             \"start_time_unix_nano\":10,\"end_time_unix_nano\":25,\"duration_ns\":15,\"status\":\"unset\",\
             \"resource\":{\"service.name\":\"edge\"}}\n"
        );

        out.clear();
        let flow = Flow {
            src_addr: "10.0.0.1".parse().expect("ip"),
            dst_addr: "10.0.0.2".parse().expect("ip"),
            src_port: 40000,
            dst_port: 443,
            transport: Transport::Tcp,
            ether_type: 0x0800,
            ifindex: 3,
            interface: Some("veth0".into()),
            direction: Direction::Transmit,
            packets: 3,
            bytes: 180,
            tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::FIN),
            first_seen_unix_ns: 1,
            last_seen_unix_ns: 2,
            window_start_unix_ns: 0,
            window_end_unix_ns: 5,
            attributes: Attributes::new(),
        };
        json_flow(&mut out, &flow, &Attributes::new());
        assert!(out.contains("\"source.port\":40000"), "{out}");
        assert!(
            out.contains(
                "\"network.interface.name\":\"veth0\",\"network.io.direction\":\"transmit\""
            ),
            "{out}"
        );
        assert!(
            out.contains("\"oxeye.tcp_flags\":[\"FIN\",\"SYN\"]"),
            "{out}"
        );
        assert!(out.ends_with("\"resource\":{}}\n"), "{out}");
    }
}

#[cfg(test)]
mod harness_tests {
    use super::*;
    use oxeye_api::testing::{self, ExporterHarness};

    #[test]
    fn exports_through_the_harness() {
        let mut h = ExporterHarness::new::<StdoutFactory>("format: json").unwrap();
        h.export(testing::flow_batch(3)).unwrap();
        h.shutdown().unwrap();
        assert!(testing::check::<StdoutFactory>("format: xml").is_err());
    }
}
