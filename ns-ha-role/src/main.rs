fn main() -> std::process::ExitCode {
    ns_ha_role::main_with_args(std::env::args_os())
}
