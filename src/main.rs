//! The `resagent` command. Everything it does lives in the library (`cli` parses the
//! command line and dispatches), so this file stays a one-line entry point.

fn main() -> std::process::ExitCode {
    resagent::main()
}
