// Fails early, with the fix, when the eBPF linker is missing.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        panic!("bpf-linker not found: run ebpf/setup.sh (it installs the pinned nightly with rust-src, and bpf-linker)");
    }
}
