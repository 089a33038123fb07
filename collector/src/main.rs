fn main() -> std::process::ExitCode {
    oxeye::cli::main()
}
