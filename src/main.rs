//! The `rekey` binary: parses the command line and maps outcomes to exit codes.
//! Everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    rekey::cli::main()
}
