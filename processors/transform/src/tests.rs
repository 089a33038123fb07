use std::sync::Arc;

use oxeye_api::testing::{check, ProcessorHarness};
use oxeye_api::{Batch, Records, Span, Value};
use oxeye_ottl::testing::{example_config, readme_examples, sample_flows, sample_spans};

use super::*;

fn spans(out: &[Arc<Batch>]) -> Vec<Span> {
    match &out[0].records {
        Records::Spans(v) => v.clone(),
        _ => panic!("spans expected"),
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes.get(key)
}

#[test]
fn every_readme_example_runs() {
    let examples = readme_examples(include_str!("../README.md"));
    assert_eq!(
        examples.len(),
        5,
        "a new example needs its expectation here"
    );
    for (name, yaml) in examples {
        let config = example_config(&yaml);
        let mut h = ProcessorHarness::new::<TransformFactory>(&config)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = h.process(sample_spans()).unwrap();
        let s = spans(&out);
        let flows = h.process(sample_flows()).unwrap();
        match name.as_str() {
            "environment_and_milliseconds" => {
                assert!(s
                    .iter()
                    .all(|s| attr(s, "deployment.environment") == Some(&"prod".into())));
                assert_eq!(attr(&s[0], "duration_ms"), Some(&Value::Int(12)));
                assert_eq!(attr(&s[4], "duration_ms"), Some(&Value::Int(0)));
            }
            "route_names_for_server_spans" => {
                assert_eq!(&*s[0].name, "GET /users/{id}");
                assert_eq!(attr(&s[0], "http.route"), Some(&"GET /users/{id}".into()));
                assert_eq!(attr(&s[1], "http.route"), Some(&"/health".into()), "kept");
                assert_eq!(&*s[4].name, "read", "not a server span");
                assert_eq!(attr(&s[4], "http.route"), None);
            }
            "failed_syscalls" => {
                assert_eq!(attr(&s[4], "error.type"), Some(&"errno 11".into()));
                assert_eq!(s[4].status_message.as_deref(), Some("failed"));
                assert_eq!(attr(&s[5], "error.type"), None, "write returned 512");
                assert_eq!(s[5].status_message, None);
            }
            "privacy" => {
                let keys: Vec<&str> = s[0].attributes.iter().map(|(k, _)| k).collect();
                assert_eq!(keys, ["url.full"]);
                assert_eq!(attr(&s[0], "url.full"), Some(&"https://shop.exa".into()));
            }
            "flows" => {
                let Records::Flows(f) = &flows[0].records else {
                    panic!("flows expected")
                };
                assert_eq!(f.len(), 3, "the ARP frame is dropped");
                assert_eq!(
                    f[0].attributes.get("service.port.name"),
                    Some(&"dns".into())
                );
                assert_eq!(f[2].attributes.get("service.port.name"), None);
                assert_eq!(
                    flows[0].resource.attributes.get("network.zone"),
                    Some(&"edge".into())
                );
                assert_eq!(h.telemetry().dropped(), vec![("transform_drop", 1)]);
                assert_eq!(s, spans(&[Arc::new(sample_spans())]), "spans untouched");
            }
            other => panic!("no expectation for example `{other}`"),
        }
    }
}

#[test]
fn resource_is_copied_only_by_statements_that_write_it() {
    let mut h = ProcessorHarness::new::<TransformFactory>(
        "trace_statements: ['set(attributes[\"a\"], 1)']",
    )
    .unwrap();
    let input = sample_spans();
    let resource = Arc::clone(&input.resource);
    let out = h.process(input).unwrap();
    assert!(Arc::ptr_eq(&out[0].resource, &resource));
    let mut h = ProcessorHarness::new::<TransformFactory>(
        "trace_statements: ['set(resource.attributes[\"a\"], 1)']",
    )
    .unwrap();
    let input = sample_spans();
    let resource = Arc::clone(&input.resource);
    let out = h.process(input).unwrap();
    assert!(!Arc::ptr_eq(&out[0].resource, &resource));
    assert_eq!(
        resource.attributes.get("a"),
        None,
        "the shared resource is untouched"
    );
    assert_eq!(out[0].resource.attributes.get("a"), Some(&Value::Int(1)));
}

#[test]
fn error_modes() {
    let stmts = "trace_statements: ['set(attributes[\"n\"], Substring(name, 4, 6))', 'set(attributes[\"after\"], true)']";
    let mut h = ProcessorHarness::new::<TransformFactory>(stmts).unwrap();
    let s = spans(&h.process(sample_spans()).unwrap());
    assert_eq!(attr(&s[0], "n"), Some(&"/users".into()));
    assert_eq!(attr(&s[4], "n"), None, "`read` is too short (and `write`)");
    assert!(
        s.iter().all(|s| attr(s, "after").is_some()),
        "later statements still run"
    );
    let errors = h.telemetry().counters();
    assert!(
        errors.contains(&("transform_errors", "transform".to_string(), 2)),
        "{errors:?}"
    );
    let mut h =
        ProcessorHarness::new::<TransformFactory>(&format!("error_mode: propagate\n{stmts}"))
            .unwrap();
    assert!(h.process(sample_spans()).unwrap().is_empty());
    assert_eq!(h.telemetry().dropped(), vec![("expression_error", 6)]);
}

#[test]
fn validation() {
    let e = check::<TransformFactory>(
        "trace_statements:\n  - 'set(name, 1)'\n  - context: resource\n    conditions: ['nam == 1']\n    statements: ['sett(name, \"x\")']\nflow_statements: ['set(source.port, 1)']",
    )
    .unwrap_err();
    let at: Vec<(&str, Option<usize>)> = e.0.iter().map(|f| (f.path.as_str(), f.offset)).collect();
    assert_eq!(
        at,
        [
            ("trace_statements[0]", Some(10)),
            ("trace_statements[1].context", None),
            ("trace_statements[1].conditions[0]", Some(0)),
            ("trace_statements[1].statements[0]", Some(0)),
            ("flow_statements[0]", Some(4)),
        ],
        "{e}"
    );
    assert!(e.0[1]
        .message
        .contains("write resource.attributes[\"key\"] in span context"));
    assert!(check::<TransformFactory>("trace_statements: [{statements: []}]").is_err());
    assert!(
        check::<TransformFactory>("trace_statements: [{statement: ['drop()']}]")
            .unwrap_err()
            .to_string()
            .contains("unknown field `statement`")
    );
    assert!(check::<TransformFactory>("{}")
        .unwrap_err()
        .to_string()
        .contains("no statements"));
}

#[test]
fn metrics_datapoints_and_log_records() {
    use oxeye_api::testing::{log_batch, logs, metric_batch, metrics, ProcessorHarness};
    let mut h = ProcessorHarness::new::<TransformFactory>(
        r#"metric_statements:
  - 'set(description, "renamed") where name == "counter"'
  - context: datapoint
    statements:
      - 'set(attributes["metric"], metric.name)'
      - 'drop() where attributes["k"] == 0'
log_statements:
  - 'set(severity_text, "NOTICE")'
  - 'set(attributes["len"], Len(body))'
  - 'set(body, Concat(["[", body, "]"], ""))'"#,
    )
    .unwrap();
    let out = h.process(metric_batch(6)).unwrap();
    let ms = metrics(&out);
    // The gauge and the exponential histogram (k = 0) lost their only point and went; every
    // other point is labelled.
    let names: Vec<&str> = ms.iter().map(|m| &*m.name).collect();
    assert_eq!(names, ["counter", "updown", "histogram", "summary"]);
    assert_eq!(h.telemetry().dropped(), [("transform_drop", 2)]);
    assert_eq!(ms[0].description.as_deref(), Some("renamed"));
    for m in &ms {
        let mut m = (*m).clone();
        m.data.for_each_point(|a| {
            assert_eq!(
                a.get("metric"),
                Some(&oxeye_api::Value::Str(m.name.clone()))
            )
        });
    }
    let out = h.process(log_batch(2)).unwrap();
    let l = logs(&out);
    assert_eq!(l[0].severity_text.as_deref(), Some("NOTICE"));
    assert_eq!(l[0].body, Some("[message 0]".into()));
    assert_eq!(l[0].attributes.get("len"), Some(&oxeye_api::Value::Int(9)));
    let e = oxeye_api::testing::check::<TransformFactory>(
        "metric_statements: [{context: span, statements: ['set(name, \"x\")']}]",
    )
    .unwrap_err();
    assert_eq!(e.0[0].path, "metric_statements[0].context");
    assert!(e.0[0].message.contains("`metric` or `datapoint`"), "{e}");
}
