fn main() -> std::process::ExitCode {
    ns_ha_sync::main_with_args(std::env::args_os())
}
