//! `bench-report DIR [--publish DOCS_DIR README]`: the one table of a
//! `make bench` run (see `ns_ha_tests::bench`).

fn main() -> std::process::ExitCode {
    ns_ha_tests::bench::report_main(std::env::args_os().skip(1).collect())
}
