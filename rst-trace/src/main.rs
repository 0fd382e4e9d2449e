//! The `rst-trace` binary: parse the command line, run, turn errors into one sentence and exit 1.

use std::process::ExitCode;

use clap::Parser as _;
use rst_trace::{
    StderrLogger,
    cli::{Cli, Command},
    run,
};

static LOGGER: StderrLogger = StderrLogger;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let result = match cli.command {
        Some(Command::Check) => run::check(&mut std::io::stdout().lock()),
        Some(Command::Backlog(args)) => run::backlog(&args).map(|()| true),
        Some(Command::Explain { cause }) => {
            run::explain(cause.as_deref(), &mut std::io::stdout().lock())
        }
        Some(Command::BenchReference { duration }) => {
            rst_trace::bench_reference::run(duration).map(|()| true)
        }
        Some(Command::Generate { dir }) => {
            rst_trace::generate::run(&dir, &mut std::io::stdout().lock()).map(|()| true)
        }
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run::trace(cli.trace)))
            .map(|_| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("rst-trace: {error:#}");
            ExitCode::FAILURE
        }
    }
}
