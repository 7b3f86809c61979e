fn main() -> std::process::ExitCode {
    keel_bench::main_entry()
}
