//! `referral-engine`: see `referral-engine --help`.

// Commands, events and decoded rows are many small, short-lived allocations
// across threads; with glibc's allocator they took a fifth of the CPU of a
// loaded server (`bench commands`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    referral_infra::cli::main()
}
