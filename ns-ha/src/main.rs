fn main() -> std::process::ExitCode {
    ns_ha::main_with_args(std::env::args_os())
}
