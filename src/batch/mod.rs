//! Batch orchestration: pipeline files ([`spec`]), many scenes per run ([`run`]), per-scene
//! records that make reruns skip finished work ([`record`]), STAC Items describing each
//! scene's outputs ([`stac`]), and scheduled ingestion of a folder, a STAC API or a static STAC
//! catalog ([`stac_source`]) with a state database ([`ingest`], [`state`]).
//!
//! Every scene is written into a hidden temporary folder and renamed into place only when all
//! its outputs and its record are complete, so a crash at any point leaves either the previous
//! complete result or nothing; temporary folders of dead processes are removed by the next run.

pub mod ingest;
pub mod inputs;
pub mod record;
pub mod run;
pub mod spec;
pub mod stac;
pub mod stac_assets;
pub mod stac_source;
pub mod state;
pub mod state_postgres;

pub use inputs::{expand, InputItem, SceneInput, Shard};
pub use run::{run_batch, BatchJob, BatchReport, SceneOutcome, SceneReport};
pub use spec::{JobContext, Pipeline, Stage, StageJob, Task};

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A pipeline file that is not valid.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Pipeline {
        path: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{0}")]
    Inputs(String),
    #[error("{path}: {reason}")]
    Output { path: String, reason: String },
    #[error("{path}: {reason}")]
    Model { path: String, reason: String },
    /// The ingest state (its message names the file or database URL).
    #[error(transparent)]
    State(#[from] state::StateError),
    /// A STAC API or catalog that cannot be listed (unreachable, not STAC).
    #[error("{0}")]
    Source(String),
}

/// This machine's name (for claims and temporary names; several hosts may share a folder).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// Whether process `pid` exists on this machine.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
