//! `pipeline.yaml`: env expansion, parsing, validation and the pipeline graph.
//!
//! Validation collects every problem at once. Each [`Diagnostic`] carries the file, line and
//! column (where known), the YAML path (`processors.sampling/slow.ratio`) and what was expected.
//! Nothing is started here: component configs are deserialized and validated, never built.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use oxeye_api::{Attributes, Kind, Registration, Resource, Signal, Value};
use serde::Deserialize;
use serde_yaml::Value as Yaml;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The config cannot run.
    Error,
    /// The config runs, but something is probably unintended.
    Warning,
}

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file name as given.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// YAML path (`service.pipelines.traces.exporters[1]`); empty for the whole file.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {sev}: ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// What to do when a queue between two stages is full.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: slows the sender, loses nothing.
    #[default]
    Block,
    /// Drop the batch being sent and count its records as dropped (`reason="queue_full"`).
    DropNewest,
}

/// Settings of one edge's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Capacity in batches.
    pub capacity: usize,
    /// Full-queue policy.
    pub when_full: WhenFull,
}

/// Default queue capacity, in batches.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueRaw {
    capacity: Option<usize>,
    when_full: Option<WhenFull>,
}

impl QueueRaw {
    fn over(self, base: QueueConfig) -> QueueConfig {
        QueueConfig {
            capacity: self.capacity.unwrap_or(base.capacity),
            when_full: self.when_full.unwrap_or(base.when_full),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineRaw {
    #[serde(default)]
    receivers: Vec<String>,
    #[serde(default)]
    processors: Vec<String>,
    #[serde(default)]
    exporters: Vec<String>,
    #[serde(default)]
    queue: QueueRaw,
    #[serde(default)]
    queues: BTreeMap<String, QueueRaw>,
}

/// `service.telemetry`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Logs.
    pub logs: LogsConfig,
    /// Self-metrics endpoint.
    pub metrics: MetricsConfig,
}

/// `service.telemetry.logs`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `error`, `warn`, `info` (default), `debug` or `trace`.
    pub level: LogLevel,
    /// `text` (default) or `json` (one JSON object a line, for log pipelines).
    pub format: LogFormat,
    /// How often to log a one-line summary of records/s in, out and dropped (`0s`: never).
    #[serde(with = "oxeye_api::config::duration")]
    pub summary_interval: Duration,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            level: LogLevel::Info,
            format: LogFormat::Text,
            summary_interval: Duration::from_secs(10),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields.message`, ...).
    Json,
}

/// Log level.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Verbose.
    Debug,
    /// Very verbose.
    Trace,
}

impl LogLevel {
    /// As a tracing filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `service.telemetry.metrics`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` for `/metrics`, `/healthz` and `/readyz`; a bare `:port` binds 127.0.0.1.
    /// Unset: no endpoint.
    pub address: Option<String>,
}

/// A component declared in `receivers:`, `processors:` or `exporters:`.
#[derive(Clone, Debug)]
pub struct ComponentDef {
    /// Id as written (`type` or `type/name`).
    pub id: String,
    /// Its factory.
    pub registration: &'static Registration,
    /// Its raw config (validated).
    pub config: Yaml,
}

/// One pipeline of `service.pipelines`.
#[derive(Clone, Debug)]
pub struct PipelineDef {
    /// Id as written (`traces` or `traces/name`).
    pub id: String,
    /// The signal it carries.
    pub signal: Signal,
    /// Receiver ids.
    pub receivers: Vec<String>,
    /// Processor ids, in order.
    pub processors: Vec<String>,
    /// Exporter ids.
    pub exporters: Vec<String>,
    /// Queue of the edges into each processor and exporter of this pipeline.
    pub queues: BTreeMap<String, QueueConfig>,
}

impl PipelineDef {
    /// The queue of the edge into `to` (a processor or exporter id of this pipeline).
    pub fn queue_into(&self, to: &str) -> QueueConfig {
        self.queues.get(to).copied().unwrap_or(QueueConfig {
            capacity: DEFAULT_QUEUE_CAPACITY,
            when_full: WhenFull::Block,
        })
    }
}

/// A validated config, ready to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// File name (for messages).
    pub file: String,
    /// Components by kind and id; only those used by some pipeline.
    pub components: BTreeMap<(Kind, String), ComponentDef>,
    /// Pipelines, in id order.
    pub pipelines: Vec<PipelineDef>,
    /// `service.telemetry`.
    pub telemetry: TelemetryConfig,
    /// Resource attributes for every batch receivers create.
    pub resource: Arc<Resource>,
    /// `service.shutdown_timeout` (default 10s).
    pub shutdown_timeout: Duration,
}

/// The outcome of loading a config: the config when valid, and every diagnostic.
#[derive(Debug)]
pub struct Loaded {
    /// `Some` when there are no errors.
    pub config: Option<Config>,
    /// Errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

/// Line/column of every YAML path, from a marked event parse (serde_yaml keeps none), and
/// where the text of scalar values starts (for errors inside expressions).
#[derive(Default)]
struct Locations {
    paths: HashMap<String, (usize, usize)>,
    text_starts: HashMap<String, TextStart>,
}

/// Where the text of a scalar value starts; `lines` for a literal block (`|`), whose lines
/// each start at the block's column.
struct TextStart {
    line: usize,
    column: usize,
    lines: Option<String>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Locator {
    stack: Vec<Frame>,
    out: HashMap<String, (usize, usize)>,
    text_starts: HashMap<String, TextStart>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Locator {
    /// Path of a value that starts here; records sequence items.
    fn value_path(&mut self, mark: yaml_rust::scanner::Marker) -> String {
        match self.stack.last() {
            Some(Frame::Map { path, key: Some(k) }) => join(path, k),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                self.out.insert(p.clone(), (mark.line(), mark.col() + 1));
                p
            }
            _ => String::new(),
        }
    }

    fn after_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl yaml_rust::parser::MarkedEventReceiver for Locator {
    fn on_event(&mut self, ev: yaml_rust::Event, mark: yaml_rust::scanner::Marker) {
        use yaml_rust::Event;
        match ev {
            Event::MappingStart(_) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(_) => {
                let path = self.value_path(mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.after_value();
            }
            Event::Scalar(s, style, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let p = join(path, &s);
                    self.out.insert(p, (mark.line(), mark.col() + 1));
                    *key = Some(s);
                } else {
                    let p = self.value_path(mark);
                    // Columns inside the text are exact only for one-line, escape-free scalars.
                    use yaml_rust::scanner::TScalarStyle as Style;
                    let one_line = !s.contains('\n');
                    let start = match style {
                        Style::Plain if one_line => Some((0, None)),
                        Style::SingleQuoted if one_line && !s.contains('\'') => Some((1, None)),
                        Style::DoubleQuoted if one_line && !s.contains(['"', '\\']) => {
                            Some((1, None))
                        }
                        Style::Literal => Some((0, Some(s))),
                        _ => None,
                    };
                    if let Some((quote, lines)) = start {
                        let (line, column) = (mark.line(), mark.col() + 1 + quote);
                        self.text_starts.insert(
                            p,
                            TextStart {
                                line,
                                column,
                                lines,
                            },
                        );
                    }
                    self.after_value();
                }
            }
            Event::Alias(_) => {
                self.value_path(mark);
                self.after_value();
            }
            _ => {}
        }
    }
}

impl Locations {
    fn parse(text: &str) -> Locations {
        let mut locator = Locator::default();
        let mut parser = yaml_rust::parser::Parser::new(text.chars());
        // A syntax error is reported by serde_yaml with its own location; keep what we got.
        let _ = parser.load(&mut locator, false);
        Locations {
            paths: locator.out,
            text_starts: locator.text_starts,
        }
    }

    /// Location of character `offset` of the one-line string value at `path`.
    fn find_in_text(&self, path: &str, offset: usize) -> Option<(usize, usize)> {
        let start = self.text_starts.get(path)?;
        let Some(text) = &start.lines else {
            return Some((start.line, start.column + offset));
        };
        let before: String = text.chars().take(offset).collect();
        let line = start.line + before.matches('\n').count();
        let column = match before.rfind('\n') {
            Some(nl) => start.column + before[nl + 1..].chars().count(),
            None => start.column + before.chars().count(),
        };
        Some((line, column))
    }

    /// Location of `path`, else of its closest ancestor.
    fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(&loc) = self.paths.get(p) {
                return Some(loc);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The deepest path whose key starts on `line`.
    fn path_at_line(&self, line: usize) -> Option<&str> {
        self.paths
            .iter()
            .filter(|(_, &(l, _))| l == line)
            .max_by_key(|(_, &(_, c))| c)
            .map(|(p, _)| p.as_str())
    }
}

/// An error from `${env:...}` expansion, at a byte offset of the original text.
struct ExpandError {
    offset: usize,
    message: String,
}

/// Byte index where a YAML comment starts on `line` (a `#` at the start or after whitespace,
/// outside quotes), if any.
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return Some(i),
            None => {}
        }
        prev = c;
    }
    None
}

/// Expands `${env:VAR}` and `${env:VAR:-default}` outside comments; `$$` is a literal `$`.
fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> (String, Vec<ExpandError>) {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code_end = comment_start(line).unwrap_or(line.len());
        let (code, comment) = line.split_at(code_end);
        let (expanded, errs) = expand_line(code, lookup);
        out.push_str(&expanded);
        out.push_str(comment);
        errors.extend(errs.into_iter().map(|e| ExpandError {
            offset: offset + e.offset,
            message: e.message,
        }));
        offset += line.len();
    }
    (out, errors)
}

fn expand_line(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> (String, Vec<ExpandError>) {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let consumed = if tail.starts_with("$$") {
            out.push('$');
            2
        } else if let Some(body) = tail.strip_prefix("${") {
            match body.find('}') {
                None => {
                    errors.push(ExpandError {
                        offset: offset + i,
                        message: "unclosed `${`: write ${env:NAME} or $$ for a literal $".into(),
                    });
                    out.push_str(tail);
                    tail.len()
                }
                Some(end) => {
                    let inner = &body[..end];
                    match inner.strip_prefix("env:") {
                        Some(spec) => {
                            let (name, default) = match spec.split_once(":-") {
                                Some((n, d)) => (n, Some(d)),
                                None => (spec, None),
                            };
                            let valid = !name.is_empty()
                                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                            match (valid, lookup(name), default) {
                                (false, _, _) => errors.push(ExpandError {
                                    offset: offset + i,
                                    message: format!("`${{{inner}}}`: `{name}` is not a valid environment variable name"),
                                }),
                                (true, Some(v), _) => out.push_str(&v),
                                (true, None, Some(d)) => out.push_str(d),
                                (true, None, None) => errors.push(ExpandError {
                                    offset: offset + i,
                                    message: format!(
                                        "environment variable `{name}` is not set and has no default: set it, or write ${{env:{name}:-default}}"
                                    ),
                                }),
                            }
                        }
                        None => errors.push(ExpandError {
                            offset: offset + i,
                            message: format!(
                                "unsupported expansion `${{{inner}}}`: only ${{env:NAME}} and ${{env:NAME:-default}} are expanded; write $$ for a literal $"
                            ),
                        }),
                    }
                    2 + end + 1
                }
            }
        } else {
            out.push('$');
            1
        };
        rest = &tail[consumed..];
        offset += i + consumed;
    }
    out.push_str(rest);
    (out, errors)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

struct Ctx<'a> {
    file: &'a str,
    locations: Locations,
    diagnostics: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn report(&mut self, severity: Severity, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let message = message.into();
        let loc = self.locations.find(&path);
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line: loc.map(|l| l.0),
            column: loc.map(|l| l.1),
            path,
            message,
        });
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.report(Severity::Error, path, message);
    }

    /// An error at character `offset` of the string at `path` (inside an expression); at the
    /// string itself when its text cannot be mapped to columns (multi-line, escapes).
    fn error_in_text(&mut self, path: String, offset: usize, message: String) {
        match self.locations.find_in_text(&path, offset) {
            Some((line, column)) => self.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: self.file.to_string(),
                line: Some(line),
                column: Some(column),
                path,
                message,
            }),
            None => self.error(path, format!("at character {}: {message}", offset + 1)),
        }
    }

    /// Deserializes `value` as `T`, reporting a failure at its path; `None` on error.
    fn typed<T: serde::de::DeserializeOwned>(&mut self, base: &str, value: &Yaml) -> Option<T> {
        let value = match value {
            Yaml::Null => Yaml::Mapping(Default::default()),
            v => v.clone(),
        };
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut path = base.to_string();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            path.push_str(&format!("[{index}]"))
                        }
                        other => path = join(&path, &other.to_string()),
                    }
                }
                self.error(path, e.into_inner().to_string());
                None
            }
        }
    }
}

fn key_str(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        _ => "<complex key>".into(),
    }
}

fn yaml_to_value(v: &Yaml) -> Option<Value> {
    match v {
        Yaml::String(s) => Some(Value::from(s.as_str())),
        Yaml::Bool(b) => Some(Value::Bool(*b)),
        Yaml::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::F64)),
        _ => None,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Registered factories of `kind`, by type name.
pub fn registered(kind: Kind) -> BTreeMap<&'static str, &'static Registration> {
    Registration::all()
        .filter(|r| r.kind == kind)
        .map(|r| (r.type_name, r))
        .collect()
}

/// Two crates registering the same kind and type name: one message per clash, naming both.
pub fn duplicate_registrations() -> Vec<String> {
    let mut seen: BTreeMap<(Kind, &str), &Registration> = BTreeMap::new();
    let mut clashes = Vec::new();
    for r in Registration::all() {
        if let Some(first) = seen.insert((r.kind, r.type_name), r) {
            clashes.push(format!(
                "{} type `{}` is registered twice: by crate `{}` and by crate `{}`; rename one of them",
                r.kind, r.type_name, first.crate_name, r.crate_name
            ));
        }
    }
    clashes
}

/// Loads a config from text, using the process environment for `${env:...}`.
pub fn load(file: &str, text: &str) -> Loaded {
    load_with_env(file, text, &|name| std::env::var(name).ok())
}

/// Loads a config from text with an explicit environment (tests).
pub fn load_with_env(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Loaded {
    let (expanded, env_errors) = expand_env(text, env);
    let mut ctx = Ctx {
        file,
        locations: Locations::parse(&expanded),
        diagnostics: Vec::new(),
    };
    for e in env_errors {
        let (line, col) = line_col(text, e.offset);
        let path = ctx.locations.path_at_line(line).unwrap_or("").to_string();
        ctx.diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line: Some(line),
            column: Some(col),
            path,
            message: e.message,
        });
    }
    let root: Yaml = match serde_yaml::from_str(&expanded) {
        Ok(v) => v,
        Err(e) => {
            let loc = e.location();
            ctx.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_string(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                path: String::new(),
                message: format!("not valid YAML: {e}"),
            });
            return Loaded {
                config: None,
                diagnostics: ctx.diagnostics,
            };
        }
    };
    let config = validate(&mut ctx, &root);
    let mut diagnostics = ctx.diagnostics;
    diagnostics.sort_by_key(|d| (d.line.unwrap_or(usize::MAX), d.column.unwrap_or(0)));
    let ok = !diagnostics.iter().any(|d| d.severity == Severity::Error);
    Loaded {
        config: config.filter(|_| ok),
        diagnostics,
    }
}

const TOP_KEYS: &[&str] = &["receivers", "processors", "exporters", "service"];
const SERVICE_KEYS: &[&str] = &["pipelines", "telemetry", "resource", "shutdown_timeout"];

fn mapping<'a>(ctx: &mut Ctx, path: &str, v: Option<&'a Yaml>) -> Vec<(String, &'a Yaml)> {
    match v {
        None | Some(Yaml::Null) => Vec::new(),
        Some(Yaml::Mapping(m)) => m.iter().map(|(k, v)| (key_str(k), v)).collect(),
        Some(_) => {
            ctx.error(path, "expected a mapping");
            Vec::new()
        }
    }
}

fn check_keys(ctx: &mut Ctx, path: &str, entries: &[(String, &Yaml)], allowed: &[&str]) {
    for (k, _) in entries {
        if !allowed.contains(&k.as_str()) {
            ctx.error(
                join(path, k),
                format!("unknown key `{k}`: expected one of {}", allowed.join(", ")),
            );
        }
    }
}

fn validate(ctx: &mut Ctx, root: &Yaml) -> Option<Config> {
    if !matches!(root, Yaml::Mapping(_) | Yaml::Null) {
        ctx.error(
            "",
            "expected a mapping with receivers, processors, exporters and service",
        );
        return None;
    }
    let top = mapping(ctx, "", Some(root));
    check_keys(ctx, "", &top, TOP_KEYS);
    let get = |k: &str| top.iter().find(|(key, _)| key == k).map(|(_, v)| *v);

    // Components: id syntax, registered type, config valid.
    let mut defs: BTreeMap<(Kind, String), ComponentDef> = BTreeMap::new();
    let mut declared: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for kind in [Kind::Receiver, Kind::Processor, Kind::Exporter] {
        let section = kind.section();
        let known = registered(kind);
        for (id, cfg) in mapping(ctx, section, get(section)) {
            let path = join(section, &id);
            declared.entry(kind).or_default().insert(id.clone());
            let type_name = id.split('/').next().unwrap_or("");
            let name_ok = id
                .split_once('/')
                .is_none_or(|(_, n)| !n.is_empty() && !n.contains('/'));
            if type_name.is_empty() || !name_ok {
                ctx.error(
                    &path,
                    format!("invalid {kind} id `{id}`: write `type` or `type/name`"),
                );
                continue;
            }
            let Some(registration) = known.get(type_name) else {
                let list: Vec<&str> = known.keys().copied().collect();
                ctx.error(
                    &path,
                    format!(
                        "unknown {kind} type `{type_name}`; registered {} types: {}",
                        kind,
                        list.join(", ")
                    ),
                );
                continue;
            };
            if let Err(errors) = registration.check(cfg) {
                for e in errors.0 {
                    let p = if e.path.is_empty() {
                        path.clone()
                    } else if e.path.starts_with('[') {
                        format!("{path}{}", e.path)
                    } else {
                        join(&path, &e.path)
                    };
                    match e.offset {
                        Some(offset) => ctx.error_in_text(p, offset, e.message),
                        None => ctx.error(p, e.message),
                    }
                }
                continue;
            }
            defs.insert(
                (kind, id.clone()),
                ComponentDef {
                    id,
                    registration,
                    config: cfg.clone(),
                },
            );
        }
    }

    // Service.
    let service = mapping(ctx, "service", get("service"));
    check_keys(ctx, "service", &service, SERVICE_KEYS);
    let sget = |k: &str| service.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
    let telemetry = sget("telemetry")
        .and_then(|v| ctx.typed::<TelemetryConfig>("service.telemetry", v))
        .unwrap_or_default();
    let shutdown_timeout = match sget("shutdown_timeout") {
        None => Duration::from_secs(10),
        Some(Yaml::String(s)) => oxeye_api::config::parse_duration(s).unwrap_or_else(|e| {
            ctx.error("service.shutdown_timeout", e);
            Duration::from_secs(10)
        }),
        Some(_) => {
            ctx.error(
                "service.shutdown_timeout",
                "expected a duration such as `10s`",
            );
            Duration::from_secs(10)
        }
    };
    let mut attributes = Attributes::new();
    attributes.set("host.name", host_name());
    attributes.set("os.type", "linux");
    attributes.set("service.name", "oxeye");
    for (k, v) in mapping(ctx, "service.resource", sget("resource")) {
        match yaml_to_value(v) {
            Some(value) => attributes.set(k.as_str(), value),
            None => ctx.error(
                join("service.resource", &k),
                "expected a string, number or boolean",
            ),
        }
    }

    // Pipelines.
    let mut pipelines = Vec::new();
    let mut used: BTreeSet<(Kind, String)> = BTreeSet::new();
    let entries = mapping(ctx, "service.pipelines", sget("pipelines"));
    if entries.is_empty() {
        ctx.error(
            "service.pipelines",
            "no pipelines: add e.g. `traces: {receivers: [...], exporters: [...]}`",
        );
    }
    for (pid, body) in entries {
        let path = join("service.pipelines", &pid);
        let signal_name = pid.split('/').next().unwrap_or("");
        let Some(signal) = Signal::parse(signal_name) else {
            let names: Vec<&str> = Signal::ALL.iter().map(|s| s.as_str()).collect();
            ctx.error(
                &path,
                format!("unknown signal `{signal_name}` in pipeline id `{pid}`: expected {} (optionally `/name`)", names.join(" or ")),
            );
            continue;
        };
        let Some(raw) = ctx.typed::<PipelineRaw>(&path, body) else {
            continue;
        };
        if raw.receivers.is_empty() {
            ctx.error(
                &path,
                "pipeline has no receivers: list at least one under `receivers:`",
            );
        }
        if raw.exporters.is_empty() {
            ctx.error(
                &path,
                "pipeline has no exporters: list at least one under `exporters:`",
            );
        }
        for (kind, list, field) in [
            (Kind::Receiver, &raw.receivers, "receivers"),
            (Kind::Processor, &raw.processors, "processors"),
            (Kind::Exporter, &raw.exporters, "exporters"),
        ] {
            let mut seen = BTreeSet::new();
            for (i, id) in list.iter().enumerate() {
                let p = format!("{path}.{field}[{i}]");
                if !seen.insert(id) {
                    ctx.error(
                        &p,
                        format!("{kind} `{id}` is listed twice in this pipeline"),
                    );
                    continue;
                }
                used.insert((kind, id.clone()));
                let is_declared = declared.get(&kind).is_some_and(|s| s.contains(id));
                if !is_declared {
                    let have: Vec<String> = declared
                        .get(&kind)
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default();
                    let have = if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    };
                    ctx.error(
                        &p,
                        format!(
                            "undefined {kind} `{id}`: not declared under `{}:` (declared: {have})",
                            kind.section()
                        ),
                    );
                } else if let Some(def) = defs.get(&(kind, id.clone())) {
                    if !def.registration.supports(signal) {
                        let sigs: Vec<&str> = def
                            .registration
                            .signals
                            .iter()
                            .map(|s| s.as_str())
                            .collect();
                        ctx.error(
                            &p,
                            format!(
                                "{kind} `{id}` does not support {signal}: type `{}` supports {}",
                                def.registration.type_name,
                                sigs.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        let base = QueueRaw::default().over(QueueConfig {
            capacity: DEFAULT_QUEUE_CAPACITY,
            when_full: WhenFull::Block,
        });
        let base = raw.queue.over(base);
        if base.capacity == 0 {
            ctx.error(
                format!("{path}.queue.capacity"),
                "must be at least 1 (batches)",
            );
        }
        let mut queues = BTreeMap::new();
        for to in raw.processors.iter().chain(&raw.exporters) {
            queues.insert(to.clone(), base);
        }
        for (to, q) in &raw.queues {
            let p = format!("{path}.queues.{to}");
            if !queues.contains_key(to) {
                ctx.error(&p, format!("`{to}` is not a processor or exporter of this pipeline; queues are set on the edge into one"));
                continue;
            }
            let q = q.over(base);
            if q.capacity == 0 {
                ctx.error(format!("{p}.capacity"), "must be at least 1 (batches)");
            }
            queues.insert(to.clone(), q);
        }
        pipelines.push(PipelineDef {
            id: pid,
            signal,
            receivers: raw.receivers,
            processors: raw.processors,
            exporters: raw.exporters,
            queues,
        });
    }

    for (kind, ids) in &declared {
        for id in ids {
            if !used.contains(&(*kind, id.clone())) {
                ctx.report(
                    Severity::Warning,
                    join(kind.section(), id),
                    format!("{kind} `{id}` is not used by any pipeline and will not run"),
                );
            }
        }
    }

    defs.retain(|key, _| used.contains(key));
    Some(Config {
        file: ctx.file.to_string(),
        components: defs,
        pipelines,
        telemetry,
        resource: Arc::new(Resource::new(attributes)),
        shutdown_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/x".into()),
            "RATE" => Some("250".into()),
            _ => None,
        }
    }

    #[test]
    fn env_expansion() {
        let (out, errs) = expand_env(
            "a: ${env:HOME_DIR}/x\nb: ${env:NOPE:-dflt}\nc: $$5 $x",
            &env,
        );
        assert!(errs.is_empty());
        assert_eq!(out, "a: /home/x/x\nb: dflt\nc: $5 $x");
        let (_, errs) = expand_env("a: 1\nb: ${env:NOPE}\nc: ${foo}\nd: ${env:BAD-NAME}", &env);
        let msgs: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("`NOPE` is not set"));
        assert!(msgs[1].contains("unsupported expansion `${foo}`"));
        assert!(msgs[2].contains("not a valid environment variable name"));
        assert_eq!(line_col("a: 1\nb: ${env:NOPE}", errs[0].offset), (2, 4));
    }

    #[test]
    fn locations_of_keys_and_items() {
        let text = "service:\n  pipelines:\n    traces:\n      exporters: [a, b]\n      receivers:\n        - x\n";
        let loc = Locations::parse(text);
        assert_eq!(loc.find("service.pipelines.traces"), Some((3, 5)));
        assert_eq!(
            loc.find("service.pipelines.traces.exporters[1]"),
            Some((4, 22))
        );
        assert_eq!(
            loc.find("service.pipelines.traces.receivers[0]"),
            Some((6, 11))
        );
        assert_eq!(
            loc.find("service.pipelines.traces.receivers[0].deeper"),
            Some((6, 11))
        );
        assert_eq!(
            loc.path_at_line(4),
            Some("service.pipelines.traces.exporters[1]")
        );
    }
}
