//! Builds the eBPF programs (ebpf/programs) for bpfel-unknown-none with the pinned nightly
//! toolchain (RUST_NIGHTLY in tests/pins.env) and bpf-linker, into OUT_DIR, where
//! `include_bytes!` embeds them in the binary.

const PINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/pins.env");

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed={PINS}");
    let pins =
        std::fs::read_to_string(PINS).unwrap_or_else(|e| fail(&format!("reading {PINS}: {e}")));
    let Some(nightly) = pins
        .lines()
        .find_map(|line| line.strip_prefix("RUST_NIGHTLY="))
        .map(str::trim)
    else {
        fail(&format!("{PINS} has no RUST_NIGHTLY= line"))
    };
    let bpf_linker = which("bpf-linker");
    let rust_src = has_rust_src(nightly);
    let missing: Vec<String> = [
        (bpf_linker, "bpf-linker".to_string()),
        (rust_src, format!("the {nightly} toolchain with rust-src")),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        fail(&format!(
            "building oxeye's eBPF programs needs {}.\n       Run ebpf/setup.sh once (idempotent: it installs the toolchain), then build again.",
            missing.join(" and ")
        ));
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/programs");
    let package = aya_build::Package {
        name: "oxeye-ebpf",
        root_dir: root,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(nightly)) {
        fail(&format!("building the eBPF programs failed: {e:#}"));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
        .unwrap_or(false)
}

fn has_rust_src(toolchain: &str) -> bool {
    std::process::Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .is_some_and(|sysroot| {
            std::path::Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library/core")
                .exists()
        })
}
