//! The `tessera` command: everything lives in the library; see [`tessera::cli`].

fn main() {
    std::process::exit(tessera::cli::main());
}
