mod cli;
mod commands;
mod quickstart;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, SchemaCommand};

fn main() -> ExitCode {
    protolake::allocator::tune();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Schema(SchemaCommand::Print(args)) => cli::schema_print(args).map(|()| ExitCode::SUCCESS),
            Command::Schema(SchemaCommand::Init(args)) => commands::schema_init(args),
            Command::Schema(SchemaCommand::Check(args)) => commands::schema_check(args).await,
            Command::Backfill(args) => commands::backfill(args).await,
            Command::Ingest(args) => commands::ingest(args).await,
            Command::CloseBooks(args) => commands::close_books(args).await,
            Command::Inspect(args) => commands::inspect(args).await,
            Command::Optimize(args) => commands::optimize(args).await,
            Command::Vacuum(args) => commands::vacuum(args).await,
            Command::Gateway(args) => commands::gateway(args).await,
            Command::Quickstart(args) => quickstart::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
