//! Jobs: the library-level entry points behind each command. A job takes a validated
//! configuration, drives scene -> tiles -> (models) -> writers, and returns a serialisable
//! report; it never prints. The CLI only parses arguments into jobs and prints reports.

mod bench;
mod caption;
mod classify;
mod detect;
mod doctor;
mod segment;
mod tiles;

pub use bench::{run_bench_read, BenchReadJob, BenchReadReport};
pub use caption::{run_caption, CaptionJob, CaptionReport, TileCaption};
pub use classify::{run_classify, ClassifyJob, ClassifyReport, TileResult, Timings};
pub use detect::{run_detect, DetectJob, DetectReport};
pub use doctor::{run_doctor, DoctorReport};
pub use segment::{run_segment, SegmentJob, SegmentReport};
pub use tiles::{run_tiles, TilesJob, TilesReport};

use thiserror::Error;

use crate::output::OutputError;
use crate::raster::RasterError;
use crate::runtime::RuntimeError;
use crate::tiling::TilingError;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PipelineError {
    #[error(transparent)]
    Raster(#[from] RasterError),
    #[error(transparent)]
    Tiling(#[from] TilingError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error("{0}")]
    Options(String),
}

/// Peak resident memory of this process so far (VmHWM), in bytes, where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A progress bar on stderr, hidden when `show` is false or stderr is not a terminal.
pub(crate) fn progress_bar(len: usize, show: bool, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} tiles, {per_sec}, ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
