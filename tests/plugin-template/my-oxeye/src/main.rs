// oxeye with one more processor: link the crate, then run oxeye's own command line.
use shout as _;

fn main() -> std::process::ExitCode {
    oxeye::cli::main()
}
