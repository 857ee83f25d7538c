//! The herd hub binary: configuration (TOML file, environment, flags), logging,
//! and the wiring of `herd_actors::hub` into one supervised process.

fn main() {
    eprintln!(
        "{} {}: not implemented yet",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
