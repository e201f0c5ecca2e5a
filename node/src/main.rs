use std::process::ExitCode;

use clap::Parser;
use concordance::config::Cli;
use concordance::config::Command;
use concordance::error::BoxError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), BoxError> = match cli.command {
        None => concordance::server::run(cli.serve),
        Some(Command::Serve(args)) => concordance::server::run(*args),
        Some(Command::Inspect { data_dir, json }) => concordance::inspect::run(&data_dir, json),
        Some(Command::Recover {
            data_dir,
            advertise,
        }) => concordance::offline::recover(&data_dir, advertise.as_deref()),
        Some(Command::Restore {
            backup,
            data_dir,
            node_id,
            advertise,
        }) => concordance::offline::restore(&backup, &data_dir, &node_id, &advertise),
        Some(Command::Certs(command)) => concordance::certs::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concordance: error: {e}");
            ExitCode::FAILURE
        }
    }
}
