//! The `referral-engine` command line, built inside this crate so that the
//! CLI tests (`tests/cli.rs`) always run a binary built from the current code
//! (`CARGO_BIN_EXE_*` names only the binaries of the crate under test, and
//! `cargo test -p referral-tests` does not build `referral-infra`'s binary).
//! It is the same `main` as `referral-engine`'s.
fn main() -> std::process::ExitCode {
    referral_infra::cli::main()
}
