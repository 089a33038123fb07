//! Builds the eBPF programs (ebpf/programs) for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker, into OUT_DIR, where `include_bytes!` embeds them in the binary.

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    let missing: Vec<&str> = [
        ("bpf-linker", which("bpf-linker")),
        (
            "the nightly toolchain with rust-src",
            nightly_has_rust_src(),
        ),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(what, _)| what)
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "error: building oxeye's eBPF programs needs {}.\n       Run tests/setup.sh once (idempotent), then build again.",
            missing.join(" and ")
        );
        std::process::exit(1);
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/programs");
    let package = aya_build::Package {
        name: "oxeye-ebpf",
        root_dir: root,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        eprintln!("error: building the eBPF programs failed: {e:#}");
        std::process::exit(1);
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
        .unwrap_or(false)
}

fn nightly_has_rust_src() -> bool {
    std::process::Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
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
