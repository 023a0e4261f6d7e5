//! `referral-engine`: see `referral-engine --help`.
fn main() -> std::process::ExitCode {
    referral_infra::cli::main()
}
