fn main() -> std::process::ExitCode {
    keel_cli::main_entry()
}
