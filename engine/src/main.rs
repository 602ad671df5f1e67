//! The `ferry` command: argument parsing, output and exit codes around the `ferry` library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
