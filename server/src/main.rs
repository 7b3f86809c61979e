fn main() -> std::process::ExitCode {
    keel_server::main_entry()
}
