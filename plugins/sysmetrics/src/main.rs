//! `herd-sysmetrics`: see the library documentation of `herd-plugin-sysmetrics`.

fn main() -> std::process::ExitCode {
    herd_plugin_sysmetrics::main()
}
