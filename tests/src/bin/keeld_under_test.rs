//! The real keeld entry point under another name, so Cargo builds it for the
//! integration tests and passes its path in `CARGO_BIN_EXE_keeld-under-test`.

fn main() -> std::process::ExitCode {
    keel_server::main_entry()
}
