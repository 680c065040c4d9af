mod cli;
mod quickstart;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, SchemaCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Schema(SchemaCommand::Print(args)) => cli::schema_print(args),
        Command::Quickstart(args) => quickstart::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
