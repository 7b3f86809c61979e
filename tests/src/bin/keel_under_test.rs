//! The real `keel` CLI entry point under another name, so Cargo builds it for the
//! integration tests and passes its path in `CARGO_BIN_EXE_keel-under-test`.

fn main() -> std::process::ExitCode {
    keel_cli::main_entry()
}
