//! Kernel test (root): process lifecycle events. A thousand short processes started and ended
//! here each arrive once as `process.exec` and once as `process.exit` — with their pid, parent,
//! executable, command line and exit code — through `oxeye run` to JSON lines, or are counted
//! as lost in the summary.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use oxeye_tests::netns::require_root;
use oxeye_tests::{temp_config, Running};

const PROCESSES: usize = 1000;

#[test]
fn a_thousand_short_processes_each_exec_and_exit_once() {
    require_root();
    let cfg = temp_config(
        "process",
        "receivers:
  ebpf: {process: {}}
processors:
  enrich: {container_id: true}
exporters:
  stdout: {format: json}
service:
  pipelines:
    logs: {receivers: [ebpf], processors: [enrich], exporters: [stdout]}
",
    );
    // Killed if anything below fails, so no program stays attached.
    let ox = Running::start(
        &cfg,
        "process events: sched_process_exec and sched_process_exit attached",
    );
    // Bounded in count and time: 1 000 processes, 60 s at most.
    let started = Instant::now();
    let mut expected = HashMap::new();
    for i in 0..PROCESSES {
        assert!(started.elapsed() < Duration::from_secs(60), "too slow");
        let code = (i % 200) as i32;
        let mut child = Command::new("/bin/sh")
            .args(["-c", &format!("exit {code}"), "oxeye-test-arg"])
            .spawn()
            .expect("sh");
        let pid = child.id();
        let status = child.wait().expect("wait");
        assert_eq!(status.code(), Some(code));
        expected.insert(pid as i64, code as i64);
    }
    // The reader drains every 100 ms: let the last events through, then stop.
    std::thread::sleep(Duration::from_millis(500));
    let (out, stderr) = ox.stop();

    let me = std::process::id() as i64;
    let (mut execs, mut exits) = (HashMap::new(), HashMap::new());
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let Some(pid) = v["process.pid"].as_i64() else {
            continue;
        };
        let Some(&code) = expected.get(&pid) else {
            continue;
        };
        match v["event_name"].as_str() {
            Some("process.exec") => {
                assert_eq!(v["process.parent_pid"], me, "{line}");
                assert_eq!(v["process.executable.name"], "sh", "{line}");
                assert_eq!(v["process.executable.path"], "/bin/sh", "{line}");
                assert_eq!(
                    v["process.command_line"],
                    format!("/bin/sh -c exit {code} oxeye-test-arg"),
                    "{line}"
                );
                assert!(v["oxeye.cgroup"].is_string(), "{line}");
                *execs.entry(pid).or_insert(0) += 1;
            }
            Some("process.exit") => {
                assert_eq!(v["process.exit.code"], code, "{line}");
                assert_eq!(v["body"], format!("exit {code}"), "{line}");
                *exits.entry(pid).or_insert(0) += 1;
            }
            other => panic!("unexpected event {other:?}: {line}"),
        }
    }
    assert!(
        execs.values().chain(exits.values()).all(|&n| n == 1),
        "each at most once"
    );
    // Whatever did not arrive must be counted as lost in the summary.
    let lost: u64 = stderr
        .lines()
        .find(|l| l.contains("stopped after"))
        .and_then(|l| l.split(", ").find(|p| p.contains("lost in the kernel")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary with losses: {stderr}"));
    let missing = (2 * PROCESSES - execs.len() - exits.len()) as u64;
    assert!(
        missing <= lost,
        "{missing} events missing, {lost} counted lost: {stderr}"
    );
    assert!(
        execs.len() + exits.len() >= PROCESSES,
        "most events arrive: {} execs, {} exits",
        execs.len(),
        exits.len()
    );
}
