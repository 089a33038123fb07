//! The CPU-bound workload of the profile tests and benchmarks (tests/workloads/burn.c), built
//! with gcc and frame pointers once per process.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

/// tests/workloads/burn.c, built once per test run with frame pointers.
pub fn burn_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("oxeye-burn-{}", std::process::id()));
        build_burn(&dir)
    })
}

/// Builds tests/workloads/burn.c into `dir/burn` (frame pointers, debug info); returns its path.
pub fn build_burn(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let bin = dir.join("burn");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/burn.c");
    let out = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&bin)
        .arg(src)
        .output()
        .expect("gcc");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Samples of `burn` in folded stack lines: (in hot_a, in hot_b, all).
pub fn folded_counts(folded: &str) -> (u64, u64, u64) {
    let (mut a, mut b, mut all) = (0, 0, 0);
    for line in folded.lines().filter(|l| l.starts_with("burn;")) {
        let (stack, n) = line.rsplit_once(' ').expect("`stack count`");
        let n: u64 = n.parse().expect("count");
        let frames: Vec<&str> = stack.split(';').collect();
        a += n * frames.contains(&"hot_a") as u64;
        b += n * frames.contains(&"hot_b") as u64;
        all += n;
    }
    (a, b, all)
}

/// The workload: started waiting, told to go, reports its CPU time.
pub struct Burn {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Its pid.
    pub pid: u32,
}

impl Burn {
    /// Starts it (waiting for `go`) with `burn` arguments: SECONDS|- [THREADS [N [DEPTH]]].
    pub fn start(args: &[&str]) -> Burn {
        let mut child = Command::new(burn_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start burn");
        let stdin = child.stdin.take();
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("pid line");
        let pid = line.trim().parse().expect("pid");
        Burn {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Runs the work until it is done; returns its CPU time in seconds.
    pub fn run(&mut self) -> f64 {
        self.go();
        self.done().0
    }

    /// Lets it start working.
    pub fn go(&mut self) {
        writeln!(self.stdin.as_mut().expect("stdin"), "go").expect("go");
    }

    /// Ends a `-` (until stdin closes) run: returns its CPU seconds and rounds of work.
    pub fn stop(&mut self) -> (f64, u64) {
        self.stdin = None;
        let done = self.done();
        let _ = self.child.wait();
        done
    }

    /// Waits for `done <cpu ns> <rounds>`.
    fn done(&mut self) -> (f64, u64) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("done line");
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["done", ns, rounds] => (
                ns.parse::<f64>().expect("ns") / 1e9,
                rounds.parse().expect("rounds"),
            ),
            _ => panic!("expected `done <ns> <rounds>`, got {line:?}"),
        }
    }

    /// Lets it exit (closing stdin) and reaps it.
    pub fn exit(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

impl Drop for Burn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the unwinding workload (tests/workloads/tree.c) into `dir/tree-c` with `-O2
/// -fomit-frame-pointer`, and tests/workloads/tree.rs into `dir/tree-rust` with `rustc -O`
/// and no frame pointers; returns both paths.
pub fn build_trees(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("dir");
    let (c, rust) = (dir.join("tree-c"), dir.join("tree-rust"));
    let src = |name: &str| format!("{}/workloads/{name}", env!("CARGO_MANIFEST_DIR"));
    let built = |what: &str, out: std::process::Output| {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-o"])
        .arg(&c)
        .arg(src("tree.c"))
        .output()
        .expect("gcc");
    built("gcc", out);
    let out = Command::new("rustc")
        .args(["-O", "-C", "force-frame-pointers=no", "-o"])
        .arg(&rust)
        .arg(src("tree.rs"))
        .output()
        .expect("rustc");
    built("rustc", out);
    (c, rust)
}

/// Builds tests/workloads/dlopen.c into `dir/dlopen-c` and tests/workloads/plugin.c into
/// `dir/libplugin.so`, both `-O2 -fomit-frame-pointer`; returns both paths.
pub fn build_dlopen(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("dir");
    let (exe, lib) = (dir.join("dlopen-c"), dir.join("libplugin.so"));
    let src = |name: &str| format!("{}/workloads/{name}", env!("CARGO_MANIFEST_DIR"));
    for (out, args, source) in [
        (&lib, &["-fPIC", "-shared"][..], "plugin.c"),
        (&exe, &[][..], "dlopen.c"),
    ] {
        let built = Command::new("gcc")
            .args(["-O2", "-fomit-frame-pointer"])
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(src(source))
            .output()
            .expect("gcc");
        assert!(
            built.status.success(),
            "gcc {source}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    (exe, lib)
}

/// Samples of one process (its comm) in folded stack lines: (whole tree from `_start` through
/// `main` down to leaf_a, the same to leaf_b, all).
pub fn tree_counts(folded: &str, comm: &str) -> (u64, u64, u64) {
    let (mut a, mut b, mut all) = (0, 0, 0);
    for line in folded
        .lines()
        .filter(|l| l.starts_with(&format!("{comm};")))
    {
        let (stack, n) = line.rsplit_once(' ').expect("`stack count`");
        let n: u64 = n.parse().expect("count");
        all += n;
        // Rust names carry their crate (`tree_rust::level1`).
        let frames: Vec<&str> = stack
            .split(';')
            .map(|f| f.rsplit("::").next().unwrap_or(f))
            .collect();
        let complete = frames.get(1) == Some(&"_start");
        let tree = |leaf| frames.ends_with(&["main", "level1", "level2", "level3", "level4", leaf]);
        a += n * (complete && tree("leaf_a")) as u64;
        b += n * (complete && tree("leaf_b")) as u64;
    }
    (a, b, all)
}
