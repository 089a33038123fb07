// Fails early, with the fix, when the eBPF linker is missing.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        panic!("bpf-linker not found: run tests/setup.sh (it installs bpf-linker and rust-src for the nightly toolchain)");
    }
}
