//! Arrow files written by oxeye, read back by pyarrow and queried by DuckDB (both from PyPI,
//! pinned, installed by tests/setup.sh): every rotated file is complete, row counts and values
//! match what the synthetic receiver sent.

use std::process::Command;

use oxeye_tests::{oxeye_bin, temp_config};

const CHECK: &str = r#"
import glob, json, sys
import pyarrow as pa, pyarrow.ipc as ipc, duckdb
prefix = sys.argv[1]
out = {"files": {}, "rows": {"traces": 0, "flows": 0}}
assert not glob.glob(prefix + "*.partial"), "a partial file was left behind"
for path in sorted(glob.glob(prefix + "*.arrow")):
    with pa.memory_map(path) as src:
        table = ipc.open_file(src).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    sig = meta["oxeye.signal"]
    out["rows"][sig] += table.num_rows
    out["files"][path] = {"signal": sig, "version": meta["oxeye.schema.version"], "rows": table.num_rows}
    if sig == "traces":
        out["trace_id_width"] = table.schema.field("trace_id").type.byte_width
        out["names"] = sorted(set(table.column("name").to_pylist()))
        out["span_attrs_type"] = str(table.schema.field("attributes").type)
        out["kernel_stack_type"] = str(table.schema.field("oxeye.kernel_stack").type)
        out["name_is_dict"] = pa.types.is_dictionary(table.schema.field("name").type)
        out["service"] = table.column("service.name").to_pylist()[0]
flows = [p for p, f in out["files"].items() if f["signal"] == "flows"][0]
con = duckdb.connect()
tbl = ipc.open_file(pa.memory_map(flows)).read_all()
out["duckdb"] = con.execute(
    'SELECT count(*), sum(packets), count(DISTINCT "network.transport") FROM tbl').fetchone()
out["duckdb_rows_expected"] = tbl.num_rows
out["packets_expected"] = sum(tbl.column("packets").to_pylist())
print(json.dumps(out))
"#;

#[test]
fn rotated_arrow_files_read_back_with_pyarrow_and_duckdb() {
    let dir = std::env::temp_dir().join(format!("oxeye-arrow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let prefix = dir.join("out").display().to_string();
    let cfg = temp_config(
        "arrow",
        &format!(
            "receivers:\n  synthetic: {{seed: 11, batch_size: 500, spans: {{count: 20000}}, flows: {{count: 8000}}}}\nexporters:\n  arrow: {{path: '{prefix}', compression: zstd, rotate: {{max_bytes: 300000, max_age: 60s}}}}\nservice:\n  resource: {{service.name: arrow-test}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [arrow]}}\n    flows: {{receivers: [synthetic], exporters: [arrow]}}\n"
        ),
    );
    let run = Command::new(oxeye_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .expect("run oxeye");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = Command::new("python3")
        .args(["-c", CHECK, &prefix])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow/duckdb check failed (tests/setup.sh installs them):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["rows"]["traces"], 20000, "{v}");
    assert_eq!(v["rows"]["flows"], 8000, "{v}");
    let files = v["files"].as_object().expect("files");
    assert!(files.len() >= 3, "rotation by size made several files: {v}");
    assert!(files.values().all(|f| f["version"] == "1"));
    assert!(
        files
            .keys()
            .all(|p| p.contains("-traces-") || p.contains("-flows-")),
        "{v}"
    );
    assert_eq!(v["trace_id_width"], 16);
    assert_eq!(v["name_is_dict"], true);
    assert_eq!(v["service"], "arrow-test");
    assert_eq!(v["kernel_stack_type"], "list<item: uint64>");
    assert!(
        v["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == "handle_request")),
        "{v}"
    );
    // DuckDB reads the same file and agrees.
    assert_eq!(v["duckdb"][0], v["duckdb_rows_expected"]);
    assert_eq!(v["duckdb"][1], v["packets_expected"]);
    assert_eq!(v["duckdb"][2], 2, "tcp and udp");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_idle_file_is_completed_at_max_age_while_oxeye_runs() {
    let dir = std::env::temp_dir().join(format!("oxeye-arrow-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let prefix = dir.join("spans");
    // 500 spans at once, then nothing on that pipeline; another pipeline keeps oxeye running.
    let yaml = format!(
        "receivers:\n  synthetic: {{seed: 3, spans: {{count: 500}}}}\n  synthetic/alive: {{seed: 4, flows: {{rate: 10}}}}\nexporters:\n  arrow: {{path: '{}', rotate: {{max_age: 300ms}}}}\n  nop:\nservice:\n  telemetry: {{logs: {{summary_interval: 0s}}}}\n  pipelines:\n    traces: {{receivers: [synthetic], exporters: [arrow]}}\n    flows: {{receivers: [synthetic/alive], exporters: [nop]}}\n",
        prefix.display()
    );
    let watch = dir.clone();
    let seen = std::thread::spawn(move || {
        // Complete files seen while oxeye still runs (it is stopped at 2 s).
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(1800) {
            let done = std::fs::read_dir(&watch)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".arrow"))
                        .count()
                })
                .unwrap_or(0);
            if done > 0 {
                return Some(started.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    });
    let report = oxeye_tests::run_with_stop(&yaml, Some(std::time::Duration::from_secs(2)));
    assert!(report.clean(), "{:?}", report.failures);
    let at = seen.join().expect("watcher");
    assert!(
        at.is_some(),
        "no complete .arrow file before shutdown: the idle file waited for a next record"
    );
    assert_eq!(
        report.emitted(oxeye_api::Kind::Exporter, "arrow"),
        500,
        "out = written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const METRICS_LOGS: &str = r#"
import glob, json, sys
import pyarrow as pa, pyarrow.ipc as ipc, duckdb
prefix = sys.argv[1]
tables = {}
assert not glob.glob(prefix + "*.partial"), "a partial file was left behind"
for path in sorted(glob.glob(prefix + "*.arrow")):
    t = ipc.open_file(pa.memory_map(path)).read_all()
    sig = t.schema.metadata[b"oxeye.signal"].decode()
    tables[sig] = pa.concat_tables([tables[sig], t]) if sig in tables else t
metrics, logs = tables["metrics"], tables["logs"]
con = duckdb.connect()
out = {
    "metric_rows": metrics.num_rows,
    "log_rows": logs.num_rows,
    "types": con.execute("SELECT type, count(*) FROM metrics GROUP BY type ORDER BY type").fetchall(),
    # Every histogram row's buckets add up to its count.
    "bad_histograms": con.execute(
        "SELECT count(*) FROM metrics WHERE type = 'Histogram' AND list_sum(bucket_counts) != count").fetchone()[0],
    "counters_monotonic": con.execute(
        "SELECT bool_and(is_monotonic) FROM metrics WHERE name = 'http.server.requests'").fetchone()[0],
    "gauge_values": con.execute(
        "SELECT count(value_int) FROM metrics WHERE type = 'Gauge'").fetchone()[0],
    "severities": con.execute(
        "SELECT severity_text, count(*) FROM logs GROUP BY 1 ORDER BY 1").fetchall(),
    "traced": con.execute("SELECT count(trace_id) FROM logs").fetchone()[0],
    "body": logs.column("body").to_pylist()[0],
}
print(json.dumps(out))
"#;

#[test]
fn metrics_and_logs_read_back_with_pyarrow_and_duckdb() {
    let dir = std::env::temp_dir().join(format!("oxeye-arrow-ml-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let prefix = dir.join("out").display().to_string();
    let cfg = temp_config(
        "arrow-ml",
        &format!(
            "receivers:\n  synthetic: {{seed: 4, batch_size: 300, metrics: {{count: 3000, series: 32}}, logs: {{count: 2000}}}}\nexporters:\n  arrow: {{path: '{prefix}', compression: zstd}}\nservice:\n  pipelines:\n    metrics: {{receivers: [synthetic], exporters: [arrow]}}\n    logs: {{receivers: [synthetic], exporters: [arrow]}}\n"
        ),
    );
    let run = Command::new(oxeye_bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .expect("run oxeye");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out = Command::new("python3")
        .args(["-c", METRICS_LOGS, &prefix])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow/duckdb check failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (v["metric_rows"].as_u64(), v["log_rows"].as_u64()),
        (Some(3000), Some(2000)),
        "{v}"
    );
    assert_eq!(
        v["types"],
        serde_json::json!([
            ["ExponentialHistogram", 600],
            ["Gauge", 600],
            ["Histogram", 600],
            ["Sum", 1200]
        ]),
        "{v}"
    );
    assert_eq!(v["bad_histograms"], 0, "{v}");
    assert_eq!(v["counters_monotonic"], true, "{v}");
    assert_eq!(v["gauge_values"], 600, "{v}");
    let traced = v["traced"].as_u64().unwrap_or(0);
    assert!(
        (800..1200).contains(&traced),
        "about half the logs in a trace: {v}"
    );
    assert!(
        v["body"].as_str().is_some_and(|b| b.contains("answered")),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
