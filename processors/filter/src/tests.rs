use std::sync::Arc;

use oxeye_api::testing::{check, ProcessorHarness};
use oxeye_api::{Batch, Records};
use oxeye_ottl::testing::{example_config, readme_examples, sample_flows, sample_spans};

use super::*;

fn names(out: &[Arc<Batch>]) -> Vec<String> {
    out.iter()
        .flat_map(|b| match &b.records {
            Records::Spans(v) => v.iter().map(|s| s.name.to_string()).collect::<Vec<_>>(),
            Records::Flows(v) => v
                .iter()
                .map(|f| format!("{}:{}", f.dst_addr, f.dst_port))
                .collect(),
            _ => panic!("spans and flows only here"),
        })
        .collect()
}

fn run(config: &str, input: Batch) -> (Vec<String>, ProcessorHarness) {
    let mut h =
        ProcessorHarness::new::<FilterFactory>(config).unwrap_or_else(|e| panic!("{config}: {e}"));
    let out = h.process(input).unwrap();
    (names(&out), h)
}

#[test]
fn every_readme_example_runs() {
    let all_spans = names(&[Arc::new(sample_spans())]);
    let examples = readme_examples(include_str!("../README.md"));
    assert_eq!(
        examples.len(),
        4,
        "a new example needs its expectation here"
    );
    for (name, yaml) in examples {
        let config = example_config(&yaml);
        let (spans, h) = run(&config, sample_spans());
        let (flows, _) = run(&config, sample_flows());
        let dropped_spans: Vec<&String> = all_spans.iter().filter(|n| !spans.contains(n)).collect();
        match name.as_str() {
            "health_checks" => assert_eq!(dropped_spans, ["GET /health", "GET /metrics"]),
            "static_assets" => assert_eq!(dropped_spans, ["GET /static/app.js"]),
            "short_syscalls_of_one_program" => assert_eq!(dropped_spans, ["read"]),
            "dns_and_non_ip_flows" => {
                assert!(dropped_spans.is_empty());
                assert_eq!(flows, ["93.184.216.34:443"]);
            }
            other => panic!("no expectation for example `{other}`"),
        }
        if !dropped_spans.is_empty() {
            assert_eq!(
                h.telemetry().dropped(),
                vec![("filtered", dropped_spans.len() as u64)]
            );
        }
    }
}

#[test]
fn untouched_batches_are_not_copied_and_empty_ones_not_sent() {
    let mut h =
        ProcessorHarness::new::<FilterFactory>("traces: {span: ['name == \"nope\"']}").unwrap();
    let shared = Arc::new(sample_spans());
    let out = h.process_shared(Arc::clone(&shared)).unwrap();
    assert!(
        Arc::ptr_eq(&out[0], &shared),
        "nothing dropped: the same batch goes on"
    );
    let mut h =
        ProcessorHarness::new::<FilterFactory>("traces: {span: ['duration >= 0']}").unwrap();
    assert!(h.process(sample_spans()).unwrap().is_empty());
    assert_eq!(h.telemetry().dropped(), vec![("filtered", 6)]);
    // Flows pass a filter that only has span conditions.
    assert_eq!(h.process(sample_flows()).unwrap()[0].len(), 4);
}

#[test]
fn error_modes() {
    // `url.full` is a string on one span: arithmetic on it fails there only.
    let cond = "traces: {span: ['attributes[\"url.full\"] != nil and attributes[\"url.full\"] + 1 > 0 or name == \"GET /health\"']}";
    let (names_, h) = run(cond, sample_spans());
    assert_eq!(
        names_.len(),
        5,
        "ignore: the failing record is kept, the health check dropped"
    );
    assert!(h
        .telemetry()
        .counters()
        .contains(&("filter_errors", "filter".to_string(), 1)));
    let (names_, h) = run(&format!("error_mode: propagate\n{cond}"), sample_spans());
    assert!(names_.is_empty());
    assert_eq!(h.telemetry().dropped(), vec![("expression_error", 6)]);
}

#[test]
fn validation() {
    let e = check::<FilterFactory>(
        "traces: {span: ['name ==', 'source.port == 1']}\nflows: {flow: ['name == \"x\"']}",
    )
    .unwrap_err();
    let at: Vec<(&str, Option<usize>)> = e.0.iter().map(|f| (f.path.as_str(), f.offset)).collect();
    assert_eq!(
        at,
        [
            ("traces.span[0]", Some(7)),
            ("traces.span[1]", Some(0)),
            ("flows.flow[0]", Some(0))
        ]
    );
    assert!(
        e.0[2].message.contains("`name` is not a field of a flow"),
        "{e}"
    );
    assert!(check::<FilterFactory>("{}")
        .unwrap_err()
        .to_string()
        .contains("no conditions"));
    assert!(check::<FilterFactory>("error_mode: loud\ntraces: {span: ['true']}").is_err());
}

#[test]
fn metrics_datapoints_and_log_records() {
    use oxeye_api::testing::{log_batch, logs, metric_batch, metrics};
    // Whole metrics by name; then points by attribute (k = i % 4) — the summary (i = 5, k = 1)
    // loses its only point and goes too.
    let mut h = ProcessorHarness::new::<FilterFactory>(
        r#"metrics:
  metric: ['name == "gauge"', 'type == METRIC_DATA_TYPE_EXPONENTIAL_HISTOGRAM']
  datapoint: ['attributes["k"] == 1']"#,
    )
    .unwrap();
    let out = h.process(metric_batch(6)).unwrap();
    let names: Vec<&str> = metrics(&out).iter().map(|m| &*m.name).collect();
    assert_eq!(names, ["updown", "histogram"]);
    assert_eq!(h.telemetry().dropped(), [("filtered", 4)]);
    let mut h = ProcessorHarness::new::<FilterFactory>(
        "logs: {log_record: ['trace_id == nil', 'severity_number < SEVERITY_NUMBER_INFO']}",
    )
    .unwrap();
    let out = h.process(log_batch(4)).unwrap();
    assert_eq!(logs(&out).len(), 2, "the records without a trace go");
    // A metric condition that names point attributes is refused at validate.
    let e = check::<FilterFactory>(r#"metrics: {metric: ['attributes["k"] == 1']}"#).unwrap_err();
    assert_eq!(e.0[0].path, "metrics.metric[0]");
    assert!(e.0[0].message.contains("its data points do"), "{e}");
}
