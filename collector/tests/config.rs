//! Config validation: every error kind, with file, line, column and YAML path, all at once.

use oxeye::config::{load_with_env, Diagnostic, Loaded, Severity, WhenFull};
use oxeye_api::{BoxError, BuildContext, Factory, Processor, Signal};

/// A traces-only processor, registered by this test binary exactly as a third-party crate would.
struct TracesOnly;
impl Factory for TracesOnly {
    type Config = oxeye_processor_nop::NopConfig;
    type Component = Box<dyn Processor>;
    const TYPE: &'static str = "traces_only";
    const SIGNALS: &'static [Signal] = &[Signal::Traces];
    const DESCRIPTION: &'static str = "test: accepts traces only";
    fn build(_: Self::Config, _: BuildContext) -> Result<Self::Component, BoxError> {
        Ok(Box::new(oxeye_processor_nop::Nop))
    }
}
oxeye_api::register!(TracesOnly);

fn env(name: &str) -> Option<String> {
    match name {
        "SEED" => Some("42".into()),
        "EXPORTER" => Some("nop".into()),
        _ => None,
    }
}

fn load(text: &str) -> Loaded {
    load_with_env("p.yaml", text, &env)
}

fn errors(text: &str) -> Vec<Diagnostic> {
    load(text).errors().cloned().collect()
}

/// The single error whose path is `path`.
fn at<'a>(diags: &'a [Diagnostic], path: &str) -> &'a Diagnostic {
    let found: Vec<_> = diags.iter().filter(|d| d.path == path).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one diagnostic at {path}, got {diags:#?}"
    );
    found[0]
}

const GOOD: &str = "\
receivers:
  synthetic: {seed: 1, spans: {count: 10}}
exporters:
  nop:
service:
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [nop]
";

#[test]
fn a_good_config_loads() {
    let loaded = load(GOOD);
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    let cfg = loaded.config.expect("valid");
    assert_eq!(cfg.pipelines.len(), 1);
    assert_eq!(cfg.pipelines[0].signal, Signal::Traces);
    assert_eq!(cfg.shutdown_timeout, std::time::Duration::from_secs(10));
}

#[test]
fn type_error_has_line_column_and_path() {
    let errs = errors(&GOOD.replace("seed: 1", "seed: one"));
    let e = at(&errs, "receivers.synthetic.seed");
    assert_eq!((e.line, e.column), (Some(2), Some(15)));
    assert!(e.message.contains("expected u64"), "{}", e.message);
    assert_eq!(
        e.to_string(),
        format!(
            "p.yaml:2:15: error: receivers.synthetic.seed: {}",
            e.message
        )
    );
}

#[test]
fn unknown_field_points_at_the_field() {
    let text = GOOD.replace(
        "spans: {count: 10}}",
        "spans: {count: 10}}\n  synthetic/b:\n    spans: {}\n    sped: 3",
    );
    let errs = errors(&text);
    let e = at(&errs, "receivers.synthetic/b.sped");
    assert!(
        e.message.starts_with("unknown field `sped`"),
        "{}",
        e.message
    );
    assert_eq!((e.line, e.column), (Some(5), Some(5)));
}

#[test]
fn component_validation_errors_carry_the_path() {
    let errs = errors(&GOOD.replace("seed: 1,", "seed: 1, batch_size: 0,"));
    let e = at(&errs, "receivers.synthetic.batch_size");
    assert_eq!(e.message, "must be at least 1");
    assert_eq!(e.line, Some(2));
}

#[test]
fn unknown_type_lists_registered_types() {
    let errs = errors(&GOOD.replace("  nop:\n", "  nop:\n  zipkin:\n"));
    let e = at(&errs, "exporters.zipkin");
    assert!(
        e.message.contains("unknown exporter type `zipkin`"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("nop, otlp, pprof, prometheus, prometheusremotewrite, stdout"),
        "{}",
        e.message
    );
    assert_eq!(e.line, Some(5));
}

#[test]
fn undefined_references_and_empty_pipelines() {
    let text = "\
receivers:
  synthetic: {spans: {}}
exporters:
  nop:
service:
  pipelines:
    traces:
      receivers: [synthetic, synthetic/missing]
      processors: [batch]
      exporters: [nop]
    flows:
      receivers: []
    events:
      receivers: [synthetic]
";
    let errs = errors(text);
    let e = at(&errs, "service.pipelines.traces.receivers[1]");
    assert!(
        e.message.contains("undefined receiver `synthetic/missing`"),
        "{}",
        e.message
    );
    assert!(e.message.contains("declared: synthetic"), "{}", e.message);
    assert_eq!((e.line, e.column), (Some(8), Some(30)));
    let e = at(&errs, "service.pipelines.traces.processors[0]");
    assert!(
        e.message.contains("undefined processor `batch`"),
        "{}",
        e.message
    );
    assert!(e.message.contains("declared: none"), "{}", e.message);
    let flows: Vec<_> = errs
        .iter()
        .filter(|d| d.path == "service.pipelines.flows")
        .collect();
    assert_eq!(flows.len(), 2, "{flows:#?}");
    assert!(flows.iter().any(|d| d.message.contains("no receivers")));
    assert!(flows.iter().any(|d| d.message.contains("no exporters")));
    let e = at(&errs, "service.pipelines.events");
    assert!(
        e.message.contains("unknown signal `events`"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("traces or metrics or logs or flows or profiles"),
        "{}",
        e.message
    );
}

#[test]
fn unsupported_signal_is_an_error() {
    let text = "\
receivers:
  synthetic: {flows: {}}
processors:
  traces_only:
exporters:
  nop:
service:
  pipelines:
    flows:
      receivers: [synthetic]
      processors: [traces_only]
      exporters: [nop]
";
    let errs = errors(text);
    let e = at(&errs, "service.pipelines.flows.processors[0]");
    assert!(
        e.message.contains("does not support flows"),
        "{}",
        e.message
    );
    assert!(e.message.contains("supports traces"), "{}", e.message);
}

#[test]
fn env_expansion_and_missing_variables() {
    let loaded = load(
        &GOOD
            .replace("seed: 1", "seed: ${env:SEED}")
            .replace("[nop]", "[${env:EXPORTER:-stdout}]"),
    );
    assert!(loaded.config.is_some(), "{:#?}", loaded.diagnostics);

    let errs = errors(&GOOD.replace("seed: 1", "seed: ${env:OXEYE_TEST_UNSET}"));
    let e = errs
        .iter()
        .find(|d| d.message.contains("`OXEYE_TEST_UNSET` is not set"))
        .expect("missing variable reported");
    assert_eq!((e.line, e.column), (Some(2), Some(21)));
    assert!(
        e.message.contains("${env:OXEYE_TEST_UNSET:-default}"),
        "{}",
        e.message
    );
}

#[test]
fn queues_and_service_settings() {
    let text = GOOD.replace(
        "      exporters: [nop]\n",
        "      exporters: [nop]\n      queue: {capacity: 0}\n      queues: {nop: {when_full: drop_newest, capacity: 3}, stdout: {}}\n  shutdown_timeout: 5\n  telemetry: {logs: {level: loud}}\n",
    );
    let errs = errors(&text);
    at(&errs, "service.pipelines.traces.queue.capacity");
    let e = at(&errs, "service.pipelines.traces.queues.stdout");
    assert!(
        e.message
            .contains("not a processor or exporter of this pipeline"),
        "{}",
        e.message
    );
    let e = at(&errs, "service.shutdown_timeout");
    assert!(e.message.contains("duration"), "{}", e.message);
    let e = at(&errs, "service.telemetry.logs.level");
    assert!(
        e.message.contains("unknown variant `loud`"),
        "{}",
        e.message
    );

    let ok = GOOD.replace(
        "      exporters: [nop]\n",
        "      exporters: [nop]\n      queues: {nop: {when_full: drop_newest, capacity: 3}}\n",
    );
    let cfg = load(&ok).config.expect("valid");
    let q = cfg.pipelines[0].queue_into("nop");
    assert_eq!((q.capacity, q.when_full), (3, WhenFull::DropNewest));
}

#[test]
fn unused_components_warn_and_duplicates_error() {
    let text = GOOD
        .replace("  nop:\n", "  nop:\n  stdout:\n")
        .replace("exporters: [nop]", "exporters: [nop, nop]");
    let loaded = load(&text);
    let warn = loaded
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Warning)
        .expect("a warning");
    assert_eq!(warn.path, "exporters.stdout");
    assert!(warn.message.contains("not used by any pipeline"));
    let errs: Vec<_> = loaded.errors().cloned().collect();
    let e = at(&errs, "service.pipelines.traces.exporters[1]");
    assert!(e.message.contains("listed twice"));
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let text = "\
receivers:
  synthetic: {seed: x, spans: {}}
  bogus:
exporters:
  nop: {delay: fast}
extensions: {}
service:
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [nope]
";
    let errs = errors(text);
    assert_eq!(errs.len(), 5, "{errs:#?}");
    let lines: Vec<_> = errs.iter().map(|d| d.line.expect("located")).collect();
    assert_eq!(lines, vec![2, 3, 5, 6, 11]);
    assert!(errs[3].message.contains("unknown key `extensions`"));
}

#[test]
fn syntax_errors_have_a_location() {
    let errs = errors("receivers:\n  synthetic: {seed: 1\nexporters: [");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].message.starts_with("not valid YAML"),
        "{}",
        errs[0].message
    );
    assert!(errs[0].line.is_some());
}

#[test]
fn shipped_examples_validate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("config/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            let loaded = oxeye::config::load(&path.display().to_string(), &text);
            let errs: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
            assert!(errs.is_empty(), "{}: {errs:#?}", path.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected the shipped examples, found {n}");
    let loaded = oxeye::config::load("default", oxeye::DEFAULT_PIPELINE);
    assert!(loaded.config.is_some());
}

#[test]
fn expression_errors_point_at_the_character() {
    let text = r#"
receivers:
  synthetic: {seed: 1, spans: {count: 10}}
processors:
  filter:
    traces:
      span:
        - 'attributes["http.route"] = "/health"'
        - "nmae == \"x\""
  transform:
    trace_statements:
      - set(attributes["env"], "prod") where name ==
      - context: span
        statements:
          - 'set(duration, 1)'
          - |
            set(name,
                5)
exporters:
  nop:
service:
  pipelines:
    traces:
      receivers: [synthetic]
      processors: [filter, transform]
      exporters: [nop]
"#;
    let errs = errors(text);
    let e = at(&errs, "processors.filter.traces.span[0]");
    assert_eq!((e.line, e.column), (Some(8), Some(37)), "{e}");
    assert!(e.message.contains("syntax error: found `=`"), "{e}");
    // Escaped quotes shift columns: reported at the string itself.
    let e = at(&errs, "processors.filter.traces.span[1]");
    assert_eq!((e.line, e.column), (Some(9), Some(11)), "{e}");
    assert!(
        e.message.starts_with("at character 1: unknown path `nmae`"),
        "{e}"
    );
    let e = at(&errs, "processors.transform.trace_statements[0]");
    assert_eq!((e.line, e.column), (Some(12), Some(53)), "{e}");
    assert!(e.message.contains("found the end"), "{e}");
    let e = at(
        &errs,
        "processors.transform.trace_statements[1].statements[0]",
    );
    assert_eq!((e.line, e.column), (Some(15), Some(18)), "{e}");
    assert!(e.message.contains("`duration` is read-only"), "{e}");
    let e = at(
        &errs,
        "processors.transform.trace_statements[1].statements[1]",
    );
    assert_eq!((e.line, e.column), (Some(18), Some(17)), "{e}");
    assert!(
        e.message
            .contains("the target is a string but `5` is an int"),
        "{e}"
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn connectors_are_checked_on_both_sides_and_cycles_refused() {
    let good = "\
receivers:
  synthetic: {spans: {count: 10}}
exporters:
  nop:
connectors:
  spanmetrics:
service:
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [nop, spanmetrics]
    metrics:
      receivers: [spanmetrics]
      exporters: [nop]
";
    assert_eq!(errors(good), vec![], "a traces -> metrics connector");
    // Wrong signal on either side, and one side only.
    let text = "\
receivers:
  synthetic: {spans: {count: 10}}
exporters:
  nop:
connectors:
  spanmetrics:
  spanmetrics/one_sided:
service:
  pipelines:
    traces:
      receivers: [synthetic, spanmetrics]
      exporters: [nop, spanmetrics/one_sided]
    logs:
      receivers: [synthetic]
      exporters: [spanmetrics]
";
    let errs = errors(text);
    let e = at(&errs, "service.pipelines.traces.receivers[1]");
    assert!(
        e.message
            .contains("connector `spanmetrics` makes metrics, not traces"),
        "{}",
        e.message
    );
    let e = at(&errs, "service.pipelines.logs.exporters[0]");
    assert!(
        e.message.contains("takes traces, not logs"),
        "{}",
        e.message
    );
    let e = at(&errs, "connectors.spanmetrics/one_sided");
    assert!(
        e.message.contains("a receiver of no pipeline"),
        "{}",
        e.message
    );
    // A cycle: traces -> (spanmetrics) -> metrics -> (back) -> traces.
    let text = "\
receivers:
  synthetic: {spans: {count: 10}}
exporters:
  nop:
connectors:
  spanmetrics:
  spanmetrics/back:
service:
  pipelines:
    metrics:
      receivers: [spanmetrics]
      exporters: [spanmetrics/back]
    traces:
      receivers: [synthetic, spanmetrics/back]
      exporters: [nop, spanmetrics]
";
    let errs = errors(text);
    let cycle: Vec<&Diagnostic> = errs
        .iter()
        .filter(|d| d.message.contains("cycle"))
        .collect();
    assert_eq!(cycle.len(), 1, "reported once: {errs:#?}");
    assert_eq!(cycle[0].path, "service.pipelines.metrics");
    assert!(
        cycle[0]
            .message
            .contains("metrics → spanmetrics/back → traces → spanmetrics → metrics"),
        "{}",
        cycle[0].message
    );
    // A name under both receivers: and connectors:.
    let text = "\
receivers:
  synthetic: {spans: {count: 10}}
  spanmetrics/x: {}
exporters:
  nop:
connectors:
  spanmetrics/x:
service:
  pipelines:
    traces:
      receivers: [synthetic]
      exporters: [nop, spanmetrics/x]
    metrics:
      receivers: [spanmetrics/x]
      exporters: [nop]
";
    let errs = errors(text);
    assert!(
        errs.iter().any(|d| d
            .message
            .contains("declared under both `receivers:` and `connectors:`")),
        "{errs:#?}"
    );
}
