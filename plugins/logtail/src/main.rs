//! `herd-logtail`: see the library documentation of `herd-plugin-logtail`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    herd_plugin::cli::exit_code(
        "logtail",
        herd_plugin_logtail::run(herd_plugin_logtail::Args::parse()),
    )
}
