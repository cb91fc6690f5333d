//! Command-line interface: parse, dispatch, print. The only place that uses `anyhow` and
//! prints. [`args`] declares the commands (option groups come from [`crate::options`]),
//! [`models`], [`scene`] and [`batch`] run them, [`print`] prints their reports, [`signals`]
//! stops `watch`.

/// `println!` that returns an error instead of panicking: `out!(...)?` writes one line to
/// stdout; a closed pipe or a full disk comes back as a [`StdoutError`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

mod args;
mod batch;
mod eval;
mod models;
mod print;
mod scene;
mod signals;

use std::io::Write;

use anyhow::Result;
use clap::Parser;

pub use args::{Cli, Command};

use crate::options::{InvalidOption, KeyStyle, OptionsError};

/// A write to stdout failed: the reader closed the pipe (`| head -1`) or the disk is full.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(pub std::io::Error);

/// One line to stdout, an error instead of a panic when stdout is gone or full.
pub(crate) fn write_stdout(args: std::fmt::Arguments) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(StdoutError)
}

/// A closed pipe anywhere in the chain of causes.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .is_some_and(|s| s.0.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Exit status: the command's, or 1 after one `tessera: error:` line. A reader that closed
/// stdout early (`tessera doctor | head -1`) is a clean stop: no message, exit 0 (the reader
/// had what it wanted; outputs are complete, being written before the report). A full stdout
/// (`>/dev/full`) is an error.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = run(cli).and_then(|code| {
        std::io::stdout()
            .flush()
            .map_err(|e| anyhow::Error::new(StdoutError(e)))?;
        Ok(code)
    });
    match result {
        Ok(code) => code,
        Err(e) if broken_pipe(&e) => 0,
        Err(e) => {
            // One line: the chain of causes joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            let _ = writeln!(std::io::stderr(), "tessera: error: {msg}");
            1
        }
    }
}

/// `--progress` of this process's command line.
static PROGRESS_FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How jobs show their progress: off with `--quiet`, always with `--progress`, else on a
/// terminal only.
fn progress(quiet: bool) -> crate::jobs::Progress {
    crate::jobs::Progress::from_flags(
        quiet,
        PROGRESS_FLAG.load(std::sync::atomic::Ordering::Relaxed),
    )
}

fn run(cli: Cli) -> Result<i32> {
    init_logging(cli.verbose);
    PROGRESS_FLAG.store(cli.progress, std::sync::atomic::Ordering::Relaxed);
    let (ort_lib, quiet) = (cli.ort_lib, cli.quiet);
    match cli.command {
        Command::Info(a) => scene::info(a),
        Command::Tiles(a) => scene::tiles(a, quiet),
        Command::Doctor(a) => scene::doctor(a, ort_lib),
        Command::BenchRead(a) => scene::bench_read(a),
        Command::Classify(a) => models::classify(a, ort_lib, quiet),
        Command::Caption(a) => models::caption(a, ort_lib, quiet),
        Command::Segment(a) => models::segment(a, ort_lib, quiet),
        Command::Detect(a) => models::detect(a, ort_lib, quiet),
        Command::Models(a) => models::models(a, ort_lib),
        Command::BenchModel(a) => models::bench_model(a, ort_lib),
        Command::Eval(a) => eval::eval(a, ort_lib, quiet),
        Command::Run(a) => batch::run_pipeline(a, ort_lib, quiet),
        Command::Ingest(a) => batch::ingest(a, None, ort_lib, quiet),
        Command::Watch(a) => batch::ingest(a.ingest, Some(a.interval), ort_lib, quiet),
    }
}

/// An option error as the command line spells it (`--tile-size`).
fn flag_error(e: InvalidOption) -> anyhow::Error {
    anyhow::Error::msg(e.render(KeyStyle::Flag))
}

fn options_error(e: OptionsError) -> anyhow::Error {
    match e {
        OptionsError::Invalid(e) => flag_error(e),
        OptionsError::Model(e) => e.into(),
    }
}

/// Logs through `tracing` on stderr: off by default, -v info, -vv debug.
fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
