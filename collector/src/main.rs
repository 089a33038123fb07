// Encoding telemetry allocates many small objects (OTLP messages, Arrow builders); mimalloc
// makes the otlp exporter's encoding ~3x faster than glibc malloc here (benches/exporters.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    oxeye::cli::main()
}
