//! Logging setup shared by every tool: logs go to stderr (results go to
//! stdout), level from `-v` flags or `RUST_LOG`, so keepalived hooks and cron
//! capture them the same way.

/// Initialise env_logger: `RUST_LOG` wins; otherwise `warn`, `info` with one `-v`, `debug` with two.
pub fn init(verbosity: u8) {
    let default = match verbosity {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let env = env_logger::Env::default().default_filter_or(default);
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .try_init();
}
