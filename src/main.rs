//! The `imgc` binary: parses arguments, runs the command, renders errors,
//! and maps them to exit codes (0 success, 1 build error, 2 usage error).

mod cli;

/// Counts the allocations of template rendering, to bound its memory.
#[global_allocator]
static ALLOC: imgc::budget::BudgetAlloc = imgc::budget::BudgetAlloc;

fn main() {
    imgc::budget::declare_installed();
    std::process::exit(cli::run());
}
