//! The `imgc` binary: parses arguments, runs the command, renders errors,
//! and maps them to exit codes (0 success, 1 build error, 2 usage error).

mod cli;

fn main() {
    std::process::exit(cli::run());
}
