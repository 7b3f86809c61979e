//! The real `keel-bench` entry point under another name, so Cargo builds it for the
//! integration tests and passes its path in `CARGO_BIN_EXE_keel-bench-under-test`.

fn main() -> std::process::ExitCode {
    keel_bench::main_entry()
}
