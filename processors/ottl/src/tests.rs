use std::net::IpAddr;

use oxeye_api::{
    Attributes, Comm, Direction, Flow, Resource, Span, SpanId, SpanKind, StatusCode, TaskContext,
    TraceId, Transport, Value,
};

use super::*;

fn span() -> Span {
    Span {
        trace_id: TraceId([0xab; 16]),
        span_id: SpanId([1, 2, 3, 4, 5, 6, 7, 8]),
        parent_span_id: None,
        name: "GET /users/42".into(),
        kind: SpanKind::Server,
        start_unix_ns: 1_000,
        end_unix_ns: 5_000_001_000,
        status: StatusCode::Error,
        attributes: [
            ("http.route", Value::from("/users/{id}")),
            ("http.response.status_code", Value::from(503i64)),
            ("ratio", Value::from(0.25)),
            ("cached", Value::from(false)),
        ]
        .into_iter()
        .collect(),
        task: Some(TaskContext {
            pid: 42,
            tid: 43,
            comm: Comm::new("curl"),
            cpu: 1,
        }),
        return_value: Some(-2),
        ..Span::default()
    }
}

fn flow() -> Flow {
    Flow {
        src_addr: "10.0.0.1".parse::<IpAddr>().unwrap(),
        dst_addr: "10.0.0.2".parse::<IpAddr>().unwrap(),
        src_port: 40000,
        dst_port: 53,
        transport: Transport::Udp,
        ether_type: 0x0800,
        ifindex: 2,
        interface: Some("eth0".into()),
        direction: Direction::Transmit,
        packets: 3,
        bytes: 300,
        tcp_flags: Default::default(),
        first_seen_unix_ns: 10,
        last_seen_unix_ns: 30,
        window_start_unix_ns: 0,
        window_end_unix_ns: 100,
        attributes: Attributes::new(),
    }
}

fn resource() -> Resource {
    Resource::new([("service.name", "checkout")].into_iter().collect())
}

fn holds(text: &str, context: Context) -> bool {
    let c = Condition::compile(text, context).unwrap_or_else(|e| panic!("{text}: {e}"));
    let (s, f, r) = (span(), flow(), resource());
    let (l, m) = (log(), histogram());
    let rec = match context {
        Context::Span => Record::Span(&s),
        Context::Flow => Record::Flow(&f),
        Context::Log => Record::Log(&l),
        Context::Metric => Record::Metric(&m),
        Context::DataPoint => Record::DataPoint(&m, 0),
    };
    c.eval(rec, &r).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn log() -> oxeye_api::LogRecord {
    let mut l = oxeye_api::testing::log_batch(1);
    let oxeye_api::Records::Logs(v) = &mut l.records else {
        unreachable!()
    };
    let mut l = v.remove(0);
    l.attributes.set("process.pid", 42i64);
    l.event_name = Some("process.exec".into());
    l
}

/// The histogram of `metric_batch` (count 3, sum 7.5, attribute k = 3).
fn histogram() -> oxeye_api::Metric {
    let mut b = oxeye_api::testing::metric_batch(4);
    let oxeye_api::Records::Metrics(v) = &mut b.records else {
        unreachable!()
    };
    v.remove(3)
}

#[test]
fn log_metric_and_datapoint_conditions() {
    for (text, context, want) in [
        (r#"body == "message 0""#, Context::Log, true),
        (r#"log.body == "message 1""#, Context::Log, false),
        (
            "severity_number >= SEVERITY_NUMBER_INFO",
            Context::Log,
            true,
        ),
        (
            "severity_number >= SEVERITY_NUMBER_WARN",
            Context::Log,
            false,
        ),
        (r#"severity_text == "INFO""#, Context::Log, true),
        (r#"event_name == "process.exec""#, Context::Log, true),
        (r#"attributes["process.pid"] == 42"#, Context::Log, true),
        ("trace_id != nil", Context::Log, true),
        (r#"name == "histogram""#, Context::Metric, true),
        (r#"metric.name == "histogram""#, Context::Metric, true),
        ("type == METRIC_DATA_TYPE_HISTOGRAM", Context::Metric, true),
        (
            "aggregation_temporality == AGGREGATION_TEMPORALITY_DELTA",
            Context::Metric,
            true,
        ),
        (r#"unit == "1""#, Context::Metric, true),
        ("is_monotonic", Context::Metric, false),
        (r#"metric.name == "histogram""#, Context::DataPoint, true),
        (
            "metric.type == METRIC_DATA_TYPE_HISTOGRAM",
            Context::DataPoint,
            true,
        ),
        ("count == 3 and sum > 7.0", Context::DataPoint, true),
        (r#"attributes["k"] == 3"#, Context::DataPoint, true),
        (
            r#"datapoint.attributes["k"] == 2"#,
            Context::DataPoint,
            false,
        ),
        ("value_int == nil", Context::DataPoint, true),
        (
            "time_unix_nano > start_time_unix_nano",
            Context::DataPoint,
            true,
        ),
    ] {
        assert_eq!(holds(text, context), want, "{text} in {}", context.as_str());
    }
    let e = Condition::compile(r#"attributes["k"] == 1"#, Context::Metric).unwrap_err();
    assert!(e.message.contains("its data points do"), "{e}");
    let e = Condition::compile(r#"body == "x""#, Context::Span).unwrap_err();
    assert!(e.message.contains("not a field of a span"), "{e}");
}

#[test]
fn span_conditions() {
    let yes = [
        r#"name == "GET /users/42""#,
        r#"span.name == "GET /users/42""#,
        r#"attributes["http.route"] == "/users/{id}""#,
        r#"attributes["http.response.status_code"] >= 500"#,
        r#"attributes["ratio"] < 0.5 and attributes["cached"] == false"#,
        r#"attributes["missing"] == nil"#,
        "status == STATUS_CODE_ERROR",
        "status.code == 2",
        "kind == SPAN_KIND_SERVER",
        "duration > 5000000000 - 1",
        "duration / 1000000 == 5000",
        r#"resource.attributes["service.name"] == "checkout""#,
        r#"IsMatch(name, "^GET /users/[0-9]+$")"#,
        r#"HasPrefix(name, "GET") and not HasSuffix(name, "x")"#,
        r#"Len(name) == 13"#,
        r#"Concat([name, "!"], "") == "GET /users/42!""#,
        r#"ToLowerCase(name) == "get /users/42""#,
        r#"Substring(name, 0, 3) == "GET""#,
        r#"Int("12") + 1 == 13"#,
        r#"String(attributes["http.response.status_code"]) == "503""#,
        r#"trace_id.string == "abababababababababababababababab""#,
        "span_id == 0x0102030405060708",
        r#"process.executable.name == "curl" and process.pid == 42 and thread.id == 43"#,
        "return_value < 0",
        "parent_span_id == nil",
        r#"name != "x" or (1 == 2)"#,
        r#"attributes["http.route"] != 5"#,
    ];
    for text in yes {
        assert!(holds(text, Context::Span), "expected true: {text}");
    }
    let no = [
        r#"name == "other""#,
        r#"attributes["http.route"] == 5"#,
        r#"attributes["http.route"] > 5"#,
        r#"attributes["missing"] == "x""#,
        "not (status == STATUS_CODE_ERROR)",
        r#"IsMatch(attributes["missing"], ".*")"#,
        "kind == SPAN_KIND_CLIENT or status == STATUS_CODE_OK",
    ];
    for text in no {
        assert!(!holds(text, Context::Span), "expected false: {text}");
    }
}

#[test]
fn flow_conditions() {
    for text in [
        "destination.port == 53",
        r#"network.transport == "udp" and network.type == "ipv4""#,
        r#"source.address == "10.0.0.1""#,
        r#"network.interface.name == "eth0""#,
        r#"network.io.direction == "transmit""#,
        "bytes / packets == 100",
        "duration == 20",
        r#"flow.source.port > 1024"#,
    ] {
        assert!(holds(text, Context::Flow), "expected true: {text}");
    }
}

fn compile_error(text: &str, context: Context) -> CompileError {
    match Condition::compile(text, context) {
        Ok(_) => panic!("`{text}` compiled"),
        Err(e) => e,
    }
}

#[test]
fn condition_errors_say_where_and_what() {
    let cases: &[(&str, usize, &str)] = &[
        (r#"name == "x" and"#, 15, "syntax error: found the end"),
        (r#"name = "x""#, 5, "syntax error: found `=`"),
        (
            r#"nmae == "x""#,
            0,
            "unknown path `nmae` (did you mean `name`?); span paths: name,",
        ),
        (
            "source.port == 53",
            0,
            "`source.port` is not a field of a span",
        ),
        (r#"name == 5"#, 5, "`name` is a string and `5` is an int"),
        ("name", 0, "`name` is a string, not true or false"),
        (r#"IsMatch(name, "(")"#, 14, "invalid regex"),
        (
            r#"IsMatch(name, attributes["p"])"#,
            14,
            "must be a string literal",
        ),
        ("Foo(name)", 0, "unknown function `Foo`"),
        (
            "IsMach(name, \"x\")",
            0,
            "unknown function `IsMach` (did you mean `IsMatch`?)",
        ),
        ("Len(name, 1) == 1", 0, "`Len` takes 1 argument(s), got 2"),
        (
            "kind == SPAN_KIND_SERVR",
            8,
            "unknown enum `SPAN_KIND_SERVR`",
        ),
        (
            r#"name + 1 == 2"#,
            5,
            "`+` needs numbers; `name` is a string",
        ),
        (r#"name == "a\q""#, 10, "unknown escape"),
        ("duration > true", 9, "compare numbers or strings"),
    ];
    for (text, offset, msg) in cases {
        let e = compile_error(text, Context::Span);
        assert!(
            e.message.contains(msg),
            "`{text}`: `{}` lacks `{msg}`",
            e.message
        );
        assert_eq!(e.offset, *offset, "`{text}`: {}", e.message);
    }
}

fn apply(text: &str) -> (Outcome, Span, Resource) {
    let st = Statement::compile(text, Context::Span).unwrap_or_else(|e| panic!("{text}: {e}"));
    let mut s = span();
    let mut r = resource();
    let outcome = if st.writes_resource() {
        st.apply(RecordMut::Span(&mut s), &mut ResourceRef::Mut(&mut r))
    } else {
        st.apply(
            RecordMut::Span(&mut s),
            &mut ResourceRef::Shared(&resource()),
        )
    }
    .unwrap_or_else(|e| panic!("{text}: {e}"));
    (outcome, s, r)
}

#[test]
fn statements_change_records() {
    let (o, s, _) = apply(r#"set(attributes["env"], "prod") where name == "GET /users/42""#);
    assert_eq!(o, Outcome::Applied);
    assert_eq!(s.attributes.get("env"), Some(&Value::from("prod")));

    let (o, s, _) = apply(r#"set(attributes["env"], "prod") where name == "nope""#);
    assert_eq!(o, Outcome::Skipped);
    assert_eq!(s.attributes.get("env"), None);

    let (_, s, _) = apply(r#"set(name, attributes["http.route"])"#);
    assert_eq!(&*s.name, "/users/{id}");
    let (_, s, _) = apply(r#"replace_pattern(name, "/[0-9]+", "/{id}")"#);
    assert_eq!(&*s.name, "GET /users/{id}");
    let (_, s, _) = apply("set(status.code, STATUS_CODE_OK)");
    assert_eq!(s.status, StatusCode::Ok);
    let (_, s, _) = apply(r#"set(attributes["ms"], duration / 1000000)"#);
    assert_eq!(s.attributes.get("ms"), Some(&Value::Int(5000)));
    let (_, s, _) = apply(r#"set(attributes["x"], attributes["missing"])"#);
    assert_eq!(s.attributes.get("x"), None, "setting nil changes nothing");
    let (_, s, _) = apply(r#"delete_key(attributes, "ratio")"#);
    assert_eq!(s.attributes.len(), 3);
    let (_, s, _) = apply(r#"keep_keys(attributes, ["http.route", "cached"])"#);
    let keys: Vec<&str> = s.attributes.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["http.route", "cached"]);
    let (_, s, _) = apply(r#"delete_matching_keys(attributes, "^http\\.")"#);
    assert_eq!(s.attributes.len(), 2);
    let (_, s, _) = apply(r#"keep_matching_keys(attributes, "^http\\.")"#);
    assert_eq!(s.attributes.len(), 2);
    let (_, s, _) = apply("truncate_all(attributes, 3)");
    assert_eq!(s.attributes.get("http.route"), Some(&Value::from("/us")));
    let (_, s, _) = apply(r#"replace_all_patterns(attributes, "key", "^http\\.", "h.")"#);
    assert!(s.attributes.get("h.route").is_some());
    let (_, s, _) = apply(r#"replace_all_patterns(attributes, "value", "[0-9]+", "N")"#);
    assert_eq!(
        s.attributes.get("http.response.status_code"),
        Some(&Value::Int(503))
    );
    let (o, _, _) = apply("drop() where status == STATUS_CODE_ERROR");
    assert_eq!(o, Outcome::Drop);
    let (_, _, r) = apply(r#"set(resource.attributes["team"], "payments")"#);
    assert_eq!(r.attributes.get("team"), Some(&Value::from("payments")));
}

#[test]
fn statement_errors() {
    let cases: &[(&str, usize, &str)] = &[
        ("set(duration, 1)", 4, "`duration` is read-only"),
        (
            r#"set(name, 5)"#,
            10,
            "the target is a string but `5` is an int",
        ),
        (r#"set(attributes["x"], [1, 2])"#, 21, "is a list"),
        (
            "sett(name, \"x\")",
            0,
            "unknown editor `sett` (did you mean `set`?)",
        ),
        ("set(name)", 0, "`set` takes 2 argument(s), got 1"),
        (
            r#"set(name, "x") where name"#,
            21,
            "`name` is a string, not true or false",
        ),
        (
            r#"delete_key(name, "x")"#,
            11,
            "expected `attributes` or `resource.attributes`",
        ),
        (
            "truncate_all(attributes, -1)",
            25,
            "non-negative int literal",
        ),
        (r#"set(name, "x") whre 1 == 1"#, 15, "syntax error"),
    ];
    for (text, offset, msg) in cases {
        let e = match Statement::compile(text, Context::Span) {
            Ok(_) => panic!("`{text}` compiled"),
            Err(e) => e,
        };
        assert!(
            e.message.contains(msg),
            "`{text}`: `{}` lacks `{msg}`",
            e.message
        );
        assert_eq!(e.offset, *offset, "`{text}`: {}", e.message);
    }
}

#[test]
fn runtime_errors_are_errors_not_panics() {
    let st = Statement::compile(
        r#"set(attributes["x"], 1 / (duration - duration))"#,
        Context::Span,
    )
    .unwrap();
    let mut s = span();
    let r = resource();
    let e = st
        .apply(RecordMut::Span(&mut s), &mut ResourceRef::Shared(&r))
        .unwrap_err();
    assert!(e.0.contains("division by zero"));
    let c = Condition::compile(r#"attributes["http.route"] + 1 > 0"#, Context::Span).unwrap();
    assert!(c
        .eval(Record::Span(&s), &r)
        .unwrap_err()
        .0
        .contains("needs numbers"));
    let c = Condition::compile(r#"attributes["http.route"]"#, Context::Span).unwrap();
    assert!(
        c.eval(Record::Span(&s), &r).is_err(),
        "a string is not a condition"
    );
    let st = Statement::compile(r#"set(name, Substring(name, 10, 20))"#, Context::Span).unwrap();
    assert!(st
        .apply(RecordMut::Span(&mut s), &mut ResourceRef::Shared(&r))
        .is_err());
}
