// oxeye with two more processors: link the crates, then run oxeye's own command line.
use my_tag_processor as _;
use shout as _;

fn main() -> std::process::ExitCode {
    oxeye::cli::main()
}
