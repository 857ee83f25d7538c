//! `herd-exec`: see the library documentation of `herd-plugin-exec`.

fn main() -> std::process::ExitCode {
    herd_plugin_exec::main()
}
