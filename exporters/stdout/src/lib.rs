//! `stdout` exporter: one line per record (per data point for metrics), as text for people or
//! JSON lines for `jq`, and CPU profiles as folded stacks for flame graphs.
//!
//! JSON keys are the OpenTelemetry names (`name`, `trace_id`, `span_id`, `parent_span_id`,
//! `source.address`, `source.port`, `network.transport`, `packets`, ...); resource attributes
//! are under `resource`. `format: folded` (profiles only) writes one line per stack,
//! `comm;outermost;...;innermost count` — what `flamegraph.pl` and speedscope read; kernel
//! frames end in `_[k]`, as `stackcollapse-perf.pl` marks them.

mod signals;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;

use oxeye_api::blocking::{BlockingExport, OnThread};
use oxeye_api::{
    Attributes, Batch, BoxError, BuildContext, ConfigErrors, Exporter, Factory, Flow, Frame,
    Records, Sample, Signal, Span, Value,
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
    /// Profiles only: `comm;outermost;...;innermost count`, one line per stack (flame graphs).
    Folded,
}

/// Config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    /// `text` (default), `json` or `folded`.
    pub format: Format,
}

/// Renders batches as lines; one per exporter, its buffer reused batch after batch.
pub struct Renderer {
    format: Format,
    buf: Vec<u8>,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.extend_from_slice(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
    }
}

/// `0x` and the address in lower-case hex without leading zeros (as `{:#x}` prints it).
fn hex_u64(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 16];
    let mut i = 16;
    let mut v = v;
    loop {
        i -= 1;
        digits[i] = HEX[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(b"0x");
    out.extend_from_slice(&digits[i..]);
}

pub(crate) fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// What `f64` Display prints for `ns / 1000` (e.g. `12.34`, `7`), without floating point.
fn micros(out: &mut Vec<u8>, ns: u64) {
    int(out, ns / 1000);
    let frac = ns % 1000;
    if frac != 0 {
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let keep = 4 - frac.is_multiple_of(10) as usize - frac.is_multiple_of(100) as usize;
        out.extend_from_slice(&digits[..keep]);
    }
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| needs_escape(b)) {
        out.extend_from_slice(bytes);
    } else {
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b if b < 0x20 => {
                    out.extend_from_slice(b"\\u00");
                    hex(out, &[b]);
                }
                b => out.push(b),
            }
        }
    }
    out.push(b'"');
}

pub(crate) fn json_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => json_str(out, s),
        Value::Int(i) => int(out, *i),
        Value::F64(f) if f.is_finite() => {
            let _ = write!(out, "{f}");
        }
        Value::F64(_) => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Bytes(b) => {
            out.push(b'"');
            hex(out, b);
            out.push(b'"');
        }
        Value::Array(values) => {
            out.push(b'[');
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_value(out, v);
            }
            out.push(b']');
        }
        Value::Map(attrs) => {
            out.push(b'{');
            json_attrs(out, attrs);
            out.push(b'}');
        }
        // Empty, and value types this version does not know.
        _ => out.extend_from_slice(b"null"),
    }
}

/// A string in text output, where one record is one line and a terminal shows it: control
/// characters (C0, DEL, C1 — newlines, escape sequences) and the backslash are escaped, so a
/// client-sent string can neither split a line nor drive the terminal.
pub(crate) fn text_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // C1 controls are U+0080..U+009F: 0xC2 then 0x80..0x9F in UTF-8.
    let plain = !bytes
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f || b == b'\\' || b == 0xc2);
    if plain {
        out.extend_from_slice(bytes);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

pub(crate) fn text_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => text_str(out, s),
        Value::Int(i) => int(out, *i),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Bytes(b) => hex(out, b),
        _ => text_str(out, &v.to_string()),
    }
}

/// Writes `,"key":` (`"key":` right after the opening brace).
pub(crate) fn key(out: &mut Vec<u8>, k: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    json_str(out, k);
    out.push(b':');
}

pub(crate) fn json_attrs(out: &mut Vec<u8>, attrs: &Attributes) {
    for (k, v) in attrs.iter() {
        key(out, k);
        json_value(out, v);
    }
}

fn json_addrs(out: &mut Vec<u8>, k: &str, addrs: &[u64]) {
    key(out, k);
    out.push(b'[');
    for (i, a) in addrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        hex_u64(out, *a);
        out.push(b'"');
    }
    out.push(b']');
}

fn json_span(out: &mut Vec<u8>, s: &Span, resource: &Attributes) {
    out.extend_from_slice(b"{\"signal\":\"traces\",\"name\":");
    json_str(out, &s.name);
    out.extend_from_slice(b",\"trace_id\":\"");
    hex(out, &s.trace_id.0);
    out.extend_from_slice(b"\",\"span_id\":\"");
    hex(out, &s.span_id.0);
    out.extend_from_slice(b"\",\"parent_span_id\":");
    match s.parent_span_id {
        Some(p) => {
            out.push(b'"');
            hex(out, &p.0);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(s.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"start_time_unix_nano\":");
    int(out, s.start_unix_ns);
    out.extend_from_slice(b",\"end_time_unix_nano\":");
    int(out, s.end_unix_ns);
    out.extend_from_slice(b",\"duration_ns\":");
    int(out, s.duration_ns());
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(s.status.as_str().as_bytes());
    out.push(b'"');
    if let Some(m) = &s.status_message {
        key(out, "status_message");
        json_str(out, m);
    }
    if let Some(t) = &s.task {
        out.extend_from_slice(b",\"process.pid\":");
        int(out, t.pid);
        out.extend_from_slice(b",\"thread.id\":");
        int(out, t.tid);
        out.extend_from_slice(b",\"process.executable.name\":");
        json_str(out, &t.comm.as_str());
        out.extend_from_slice(b",\"cpu.logical_number\":");
        int(out, t.cpu);
    }
    if let Some(r) = s.return_value {
        out.extend_from_slice(b",\"oxeye.return_value\":");
        int(out, r);
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
    if let Some(sc) = &s.scope {
        key(out, "otel.scope.name");
        json_str(out, &sc.name);
        if !sc.version.is_empty() {
            key(out, "otel.scope.version");
            json_str(out, &sc.version);
        }
    }
    if !s.events.is_empty() {
        key(out, "events");
        out.push(b'[');
        for (i, e) in s.events.iter().enumerate() {
            out.extend_from_slice(if i > 0 { b",{" } else { b"{" });
            key(out, "name");
            json_str(out, &e.name);
            key(out, "time_unix_nano");
            int(out, e.time_unix_ns);
            json_attrs(out, &e.attributes);
            out.push(b'}');
        }
        out.push(b']');
    }
    if !s.links.is_empty() {
        key(out, "links");
        out.push(b'[');
        for (i, l) in s.links.iter().enumerate() {
            out.extend_from_slice(if i > 0 {
                b",{\"trace_id\":\""
            } else {
                b"{\"trace_id\":\""
            });
            hex(out, &l.trace_id.0);
            out.extend_from_slice(b"\",\"span_id\":\"");
            hex(out, &l.span_id.0);
            out.push(b'"');
            json_attrs(out, &l.attributes);
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"resource\":{");
    json_attrs(out, resource);
    out.extend_from_slice(b"}}\n");
}

fn json_flow(out: &mut Vec<u8>, f: &Flow, resource: &Attributes) {
    out.extend_from_slice(b"{\"signal\":\"flows\"");
    // The same keys for every flow (one schema for jq and friends); a non-IP frame also says
    // what it was, since its addresses and ports are zero.
    let _ = write!(
        out,
        ",\"source.address\":\"{}\",\"source.port\":{},\"destination.address\":\"{}\",\"destination.port\":{},\"network.transport\":\"{}\",\"network.type\":\"{}\"",
        f.src_addr,
        f.src_port,
        f.dst_addr,
        f.dst_port,
        f.transport.as_str(),
        f.network_type()
    );
    if !f.is_ip() {
        if let Some(name) = f.ether_type_name() {
            let _ = write!(out, ",\"oxeye.ether_type.name\":\"{name}\"");
        }
    }
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
            out.push(b',');
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
    out.extend_from_slice(b",\"resource\":{");
    json_attrs(out, resource);
    out.extend_from_slice(b"}}\n");
}

fn text_span(out: &mut Vec<u8>, s: &Span) {
    out.extend_from_slice(b"span ");
    text_str(out, &s.name);
    out.extend_from_slice(b" trace=");
    hex(out, &s.trace_id.0);
    out.extend_from_slice(b" span=");
    hex(out, &s.span_id.0);
    out.extend_from_slice(b" parent=");
    match s.parent_span_id {
        Some(p) => hex(out, &p.0),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" duration=");
    micros(out, s.duration_ns());
    out.extend_from_slice(b"us status=");
    out.extend_from_slice(s.status.as_str().as_bytes());
    if let Some(t) = &s.task {
        out.extend_from_slice(b" pid=");
        int(out, t.pid);
        out.extend_from_slice(b" tid=");
        int(out, t.tid);
        out.extend_from_slice(b" comm=");
        text_str(out, &t.comm.as_str());
        out.extend_from_slice(b" cpu=");
        int(out, t.cpu);
    }
    if let Some(r) = s.return_value {
        out.extend_from_slice(b" ret=");
        int(out, r);
    }
    for (k, v) in s.attributes.iter() {
        out.push(b' ');
        text_str(out, k);
        out.push(b'=');
        text_value(out, v);
    }
    out.push(b'\n');
}

/// The name of a frame in a stack line: its function, else `module+0xoffset`, else the address;
/// `;` (the folded separator) becomes `:`.
fn frame_name(out: &mut Vec<u8>, f: &Frame) {
    let start = out.len();
    match (&f.function, &f.module) {
        (Some(func), _) => text_str(out, func),
        (None, Some(module)) => {
            let base = module.rsplit('/').next().unwrap_or(module);
            text_str(out, base);
            out.push(b'+');
            hex_u64(out, f.offset);
        }
        (None, None) => hex_u64(out, f.address),
    }
    for b in &mut out[start..] {
        if *b == b';' {
            *b = b':';
        }
    }
}

fn is_kernel(f: &Frame) -> bool {
    f.module.as_deref() == Some(oxeye_api::profile::KERNEL_MODULE)
}

/// A sample's stack, outermost first, frames separated by `sep`; kernel frames end in `_[k]`.
fn stack_line(out: &mut Vec<u8>, s: &Sample, sep: u8) {
    let mut first = true;
    let mut next = |out: &mut Vec<u8>| {
        if !first {
            out.push(sep);
        }
        first = false;
    };
    if !s.frames.is_empty() {
        // Frames are kernel then user, innermost first: reversed, that is outermost first.
        for f in s.frames.iter().rev() {
            next(out);
            frame_name(out, f);
            if is_kernel(f) {
                out.extend_from_slice(b"_[k]");
            }
        }
        return;
    }
    for &a in s.user_stack.iter().rev() {
        next(out);
        hex_u64(out, a);
    }
    for &a in s.kernel_stack.iter().rev() {
        next(out);
        hex_u64(out, a);
        out.extend_from_slice(b"_[k]");
    }
}

fn json_sample(out: &mut Vec<u8>, s: &Sample, resource: &Attributes) {
    out.extend_from_slice(b"{\"signal\":\"profiles\",\"process.pid\":");
    int(out, s.pid);
    out.extend_from_slice(b",\"thread.id\":");
    int(out, s.tid);
    out.extend_from_slice(b",\"process.executable.name\":");
    json_str(out, &s.comm.as_str());
    out.extend_from_slice(b",\"count\":");
    int(out, s.count);
    out.extend_from_slice(b",\"cpu_ns\":");
    int(out, s.cpu_ns());
    out.extend_from_slice(b",\"window_start_unix_nano\":");
    int(out, s.window_start_unix_ns);
    out.extend_from_slice(b",\"window_end_unix_nano\":");
    int(out, s.window_end_unix_ns);
    if let (Some(t), Some(sp)) = (s.trace_id, s.span_id) {
        out.extend_from_slice(b",\"trace_id\":\"");
        hex(out, &t.0);
        out.extend_from_slice(b"\",\"span_id\":\"");
        hex(out, &sp.0);
        out.push(b'"');
    }
    if !s.kernel_stack.is_empty() {
        json_addrs(out, "oxeye.kernel_stack", &s.kernel_stack);
    }
    if !s.user_stack.is_empty() {
        json_addrs(out, "oxeye.user_stack", &s.user_stack);
    }
    if !s.frames.is_empty() {
        // Innermost first, as the stacks above.
        key(out, "frames");
        out.push(b'[');
        let mut name = Vec::new();
        for (i, f) in s.frames.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            name.clear();
            frame_name(&mut name, f);
            json_str(out, &String::from_utf8_lossy(&name));
        }
        out.push(b']');
    }
    json_attrs(out, &s.attributes);
    out.extend_from_slice(b",\"resource\":{");
    json_attrs(out, resource);
    out.extend_from_slice(b"}}\n");
}

fn text_sample(out: &mut Vec<u8>, s: &Sample) {
    out.extend_from_slice(b"sample ");
    text_str(out, &s.comm.as_str());
    out.extend_from_slice(b" pid=");
    int(out, s.pid);
    out.extend_from_slice(b" tid=");
    int(out, s.tid);
    out.extend_from_slice(b" count=");
    int(out, s.count);
    out.extend_from_slice(b" cpu=");
    micros(out, s.cpu_ns() / 1000);
    out.extend_from_slice(b"ms");
    if let (Some(t), Some(sp)) = (s.trace_id, s.span_id) {
        out.extend_from_slice(b" trace=");
        hex(out, &t.0);
        out.extend_from_slice(b" span=");
        hex(out, &sp.0);
    }
    for (k, v) in s.attributes.iter() {
        out.push(b' ');
        text_str(out, k);
        out.push(b'=');
        text_value(out, v);
    }
    out.extend_from_slice(b" stack=");
    stack_line(out, s, b';');
    out.push(b'\n');
}

/// Folded stacks of a batch: identical `comm;stack` lines are merged (first-seen order).
fn folded(out: &mut Vec<u8>, samples: &[Sample]) {
    let mut lines: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut index: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    let mut line = Vec::new();
    for s in samples {
        line.clear();
        let start = line.len();
        text_str(&mut line, &s.comm.as_str());
        for b in &mut line[start..] {
            if *b == b';' || *b == b' ' {
                *b = b'_';
            }
        }
        line.push(b';');
        // A stack that does not reach the outermost frame is rooted apart, not beside the
        // complete ones as if it were one.
        if s.attributes.get("oxeye.profile.truncated").is_some() {
            line.extend_from_slice(b"[truncated];");
        }
        stack_line(&mut line, s, b';');
        match index.get(&line) {
            Some(&i) => lines[i].1 += s.count,
            None => {
                index.insert(line.clone(), lines.len());
                lines.push((line.clone(), s.count));
            }
        }
    }
    for (l, n) in lines {
        out.extend_from_slice(&l);
        out.push(b' ');
        int(out, n);
        out.push(b'\n');
    }
}

fn text_flow(out: &mut Vec<u8>, f: &Flow) {
    let mut escaped = Vec::new();
    text_str(&mut escaped, f.interface.as_deref().unwrap_or("?"));
    let iface = String::from_utf8_lossy(&escaped);
    let dir = f.direction.as_str();
    if f.is_ip() {
        let _ = write!(
            out,
            "flow {iface} {dir} {} {} -> {} packets={} bytes={}",
            f.transport.as_str(),
            // IPv6 in brackets ([::1]:80), as SocketAddr writes it.
            SocketAddr::new(f.src_addr, f.src_port),
            SocketAddr::new(f.dst_addr, f.dst_port),
            f.packets,
            f.bytes
        );
    } else {
        // ARP, LLDP, ...: no addresses or ports, so name the EtherType instead.
        let name = f.ether_type_name().unwrap_or("ether_type");
        let _ = write!(
            out,
            "flow {iface} {dir} {name} (0x{:04x}) packets={} bytes={}",
            f.ether_type, f.packets, f.bytes
        );
    }
    let mut flags = f.tcp_flags.names().peekable();
    if flags.peek().is_some() {
        out.extend_from_slice(b" flags=");
        for (i, name) in flags.enumerate() {
            if i > 0 {
                out.push(b'|');
            }
            out.extend_from_slice(name.as_bytes());
        }
    }
    for (k, v) in f.attributes.iter() {
        out.push(b' ');
        text_str(out, k);
        out.push(b'=');
        text_value(out, v);
    }
    out.push(b'\n');
}

impl Renderer {
    /// A renderer for `format`.
    pub fn new(format: Format) -> Self {
        Renderer {
            format,
            buf: Vec::with_capacity(1 << 20),
        }
    }

    /// The lines of one batch (valid until the next call).
    pub fn render(&mut self, batch: &Batch) -> &[u8] {
        let out = &mut self.buf;
        out.clear();
        let resource = &batch.resource.attributes;
        match (&batch.records, self.format) {
            (Records::Spans(spans), Format::Json) => {
                spans.iter().for_each(|s| json_span(out, s, resource))
            }
            (Records::Flows(flows), Format::Json) => {
                flows.iter().for_each(|f| json_flow(out, f, resource))
            }
            (Records::Samples(samples), Format::Json) => {
                samples.iter().for_each(|s| json_sample(out, s, resource))
            }
            (Records::Spans(spans), Format::Text) => spans.iter().for_each(|s| text_span(out, s)),
            (Records::Flows(flows), Format::Text) => flows.iter().for_each(|f| text_flow(out, f)),
            (Records::Samples(samples), Format::Text) => {
                samples.iter().for_each(|s| text_sample(out, s))
            }
            (Records::Metrics(metrics), Format::Json) => metrics
                .iter()
                .for_each(|m| signals::json_metric(out, m, resource)),
            (Records::Metrics(metrics), Format::Text) => {
                metrics.iter().for_each(|m| signals::text_metric(out, m))
            }
            (Records::Logs(logs), Format::Json) => logs
                .iter()
                .for_each(|l| signals::json_log(out, l, resource)),
            (Records::Logs(logs), Format::Text) => {
                logs.iter().for_each(|l| signals::text_log(out, l))
            }
            (Records::Samples(samples), Format::Folded) => folded(out, samples),
            // Refused at build: folded is for profiles only (and the other signals below).
            // Never here: this exporter does not take encoded spans, the engine decodes them.
            _ => {}
        }
        out
    }
}

/// Renders and writes on the exporter's own thread: a slow terminal or pipe never holds an
/// async worker, and rendering overlaps with the rest of the pipeline.
struct StdoutWriter {
    renderer: Renderer,
}

impl BlockingExport for StdoutWriter {
    fn export(&mut self, batch: &Batch) -> Result<(), BoxError> {
        let lines = self.renderer.render(batch);
        // One write per batch; a closed stdout (e.g. `| head`) ends the collector with an error.
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(lines)
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("writing to stdout: {e}"))?;
        Ok(())
    }
}

/// Factory for [`StdoutWriter`] (run by [`OnThread`]).
pub struct StdoutFactory;

impl Factory for StdoutFactory {
    type Config = StdoutConfig;
    type Component = Box<dyn Exporter>;
    const TYPE: &'static str = "stdout";
    const SIGNALS: &'static [Signal] = Signal::ALL;
    const DESCRIPTION: &'static str =
        "writes one line per record to stdout (format: text | json | folded for profiles)";
    const DOCS: &'static str = include_str!("../../../docs/components/exporter-stdout.md");

    fn build(config: StdoutConfig, ctx: BuildContext) -> Result<Self::Component, BoxError> {
        if config.format == Format::Folded {
            if let Some(other) = ctx.signals.iter().find(|s| **s != Signal::Profiles) {
                let mut e = ConfigErrors::new();
                e.push(
                    "format",
                    format!(
                        "`format: folded` writes profiles only, but a {other} pipeline uses it: \
                         give {other} an exporter of its own (e.g. stdout/{other} with format text or json)"
                    ),
                );
                return Err(e.into());
            }
        }
        let writer = StdoutWriter {
            renderer: Renderer::new(config.format),
        };
        Ok(Box::new(OnThread::spawn(
            "stdout",
            writer,
            ctx.telemetry,
            None,
        )?))
    }
}

oxeye_api::register!(StdoutFactory);

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_api::{Direction, SpanId, TcpFlags, TraceId, Transport};

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_truncated_stack_is_rooted_apart_in_folded_lines() {
        let whole = Sample {
            comm: oxeye_api::Comm::new("app"),
            user_stack: vec![0x30, 0x20, 0x10],
            count: 3,
            ..Sample::default()
        };
        let mut cut = Sample {
            user_stack: vec![0x30, 0x20],
            count: 2,
            ..whole.clone()
        };
        cut.attributes.set("oxeye.profile.truncated", true);
        let lines = text(|o| folded(o, &[whole, cut]));
        assert_eq!(lines, "app;0x10;0x20;0x30 3\napp;[truncated];0x20;0x30 2\n");
    }

    #[test]
    fn client_strings_cannot_split_lines_or_drive_the_terminal() {
        let mut s = Span {
            name: "GET /\nspan forged trace=00 \u{1b}[2J\u{9b}31m".into(),
            ..Span::default()
        };
        s.attributes.set("k\r\n", "a\\b\tc\u{7f}");
        let line = text(|o| text_span(o, &s));
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(line.ends_with('\n'));
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\n'),
            "{line:?}"
        );
        assert!(
            line.starts_with("span GET /\\nspan forged trace=00 \\u{1b}[2J\\u{9b}31m "),
            "{line:?}"
        );
        assert!(line.contains(" k\\r\\n=a\\\\b\\tc\\u{7f}"), "{line:?}");
        // Plain strings are written as they are.
        assert_eq!(text(|o| text_str(o, "héllo wörld/é")), "héllo wörld/é");
    }

    fn flow() -> Flow {
        Flow {
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
        }
    }

    #[test]
    fn json_lines_carry_otel_names() {
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
        let out = text(|o| json_span(o, &span, &resource));
        assert_eq!(
            out,
            "{\"signal\":\"traces\",\"name\":\"say \\\"hi\\\"\\n\",\"trace_id\":\"01010101010101010101010101010101\",\
             \"span_id\":\"0202020202020202\",\"parent_span_id\":\"0303030303030303\",\"kind\":\"internal\",\
             \"start_time_unix_nano\":10,\"end_time_unix_nano\":25,\"duration_ns\":15,\"status\":\"unset\",\
             \"resource\":{\"service.name\":\"edge\"}}\n"
        );

        let out = text(|o| json_flow(o, &flow(), &Attributes::new()));
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

    #[test]
    fn fast_formatting_matches_the_standard_library() {
        for v in [0u64, 1, 0xf, 0x10, 0xffff_ffff_81a2_b3c4, u64::MAX] {
            assert_eq!(text(|o| hex_u64(o, v)), format!("{v:#x}"));
        }
        for ns in [
            0u64,
            7,
            999,
            1000,
            12_340,
            12_345,
            12_300,
            5_000_000,
            123_456_789,
        ] {
            assert_eq!(text(|o| micros(o, ns)), (ns as f64 / 1000.0).to_string());
        }
        assert_eq!(text(|o| json_str(o, "a\u{1}b\tc")), "\"a\\u0001b\\tc\"");
        let span = Span {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0x0c; 8]),
            name: "getppid".into(),
            start_unix_ns: 1_000,
            end_unix_ns: 13_340,
            task: Some(oxeye_api::TaskContext {
                pid: 42,
                tid: 43,
                comm: oxeye_api::Comm::new("app"),
                cpu: 1,
            }),
            return_value: Some(-2),
            ..Span::default()
        };
        assert_eq!(
            text(|o| text_span(o, &span)),
            format!(
                "span getppid trace={} span={} parent=- duration=12.34us status=unset pid=42 tid=43 comm=app cpu=1 ret=-2\n",
                span.trace_id, span.span_id
            )
        );
    }

    #[test]
    fn ipv6_addresses_are_in_brackets() {
        let v6 = Flow {
            src_addr: "fe80::1".parse().expect("ip"),
            dst_addr: "2001:db8::2".parse().expect("ip"),
            ether_type: 0x86dd,
            ..flow()
        };
        let line = text(|o| text_flow(o, &v6));
        assert!(line.contains(" [fe80::1]:"), "{line}");
        assert!(line.contains(" -> [2001:db8::2]:"), "{line}");
    }

    #[test]
    fn non_ip_frames_say_what_they_are() {
        let arp = Flow {
            src_addr: "0.0.0.0".parse().expect("ip"),
            dst_addr: "0.0.0.0".parse().expect("ip"),
            src_port: 0,
            dst_port: 0,
            transport: Transport::None,
            ether_type: 0x0806,
            tcp_flags: TcpFlags(0),
            direction: Direction::Receive,
            ..flow()
        };
        assert_eq!(
            text(|o| text_flow(o, &arp)),
            "flow veth0 receive arp (0x0806) packets=3 bytes=180\n"
        );
        let json = text(|o| json_flow(o, &arp, &Attributes::new()));
        assert!(
            json.contains("\"network.type\":\"other\",\"oxeye.ether_type.name\":\"arp\""),
            "{json}"
        );
        assert!(json.contains("\"source.address\":\"0.0.0.0\""), "{json}");
        let odd = Flow {
            ether_type: 0x1234,
            ..arp
        };
        assert_eq!(
            text(|o| text_flow(o, &odd)),
            "flow veth0 receive ether_type (0x1234) packets=3 bytes=180\n"
        );
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
