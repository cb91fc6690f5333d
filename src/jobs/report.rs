//! What every scene run reports, and the reports of the model commands as one type.

use std::path::Path;

use serde::Serialize;

use super::{CaptionReport, ClassifyReport, DetectReport, SegmentReport};

/// The part every model command's report shares, flattened into it: the JSON keys are the
/// report's own (`"scene"`, `"outputs"`, ...). The reports dereference to it, so
/// `report.provider` reads as before.
#[derive(Clone, Debug, Serialize)]
pub struct SceneRunReport {
    pub scene: String,
    /// The model package's path.
    pub model: String,
    /// The execution provider the model ran on.
    pub provider: String,
    /// Why it is not the one asked for, when it fell back.
    pub fallback: Option<String>,
    pub tiles_total: usize,
    pub tiles_skipped: usize,
    /// Every file written, named where it is once the run is committed.
    pub outputs: Vec<String>,
    pub peak_rss_bytes: Option<u64>,
}

impl SceneRunReport {
    /// The shared part of a finished run of `base`: the model ran on `provider` (with the
    /// fallback reason, if it fell back), the stream's counts, the files written.
    pub fn new(
        base: &crate::options::SceneJobBase,
        (provider, fallback): (&str, Option<&str>),
        stats: &crate::tiling::StreamStats,
        outputs: Vec<String>,
    ) -> SceneRunReport {
        SceneRunReport {
            scene: base.scene.clone(),
            model: base.model.display().to_string(),
            provider: provider.to_string(),
            fallback: fallback.map(str::to_string),
            tiles_total: stats.tiles_total,
            tiles_skipped: stats.tiles_skipped,
            outputs,
            peak_rss_bytes: super::peak_rss_bytes(),
        }
    }

    /// Outputs under `from` named under `to` instead (a batch run writes into a temporary
    /// folder and then renames it into place).
    pub fn rebase(&mut self, from: &Path, to: &Path) {
        for o in &mut self.outputs {
            if let Ok(rest) = Path::new(o.as_str()).strip_prefix(from) {
                *o = to.join(rest).display().to_string();
            }
        }
    }
}

/// Field access to the shared part (`report.outputs`).
macro_rules! shares_run_report {
    ($($report:ty),*) => {$(
        impl std::ops::Deref for $report {
            type Target = SceneRunReport;
            fn deref(&self) -> &SceneRunReport {
                &self.run
            }
        }
        impl std::ops::DerefMut for $report {
            fn deref_mut(&mut self) -> &mut SceneRunReport {
                &mut self.run
            }
        }
    )*};
}

shares_run_report!(ClassifyReport, CaptionReport, DetectReport, SegmentReport);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_names_outputs_in_the_final_folder() {
        let mut r = SceneRunReport {
            scene: "/data/.out-tmp/s.tif".into(),
            model: "m".into(),
            provider: "CPUExecutionProvider".into(),
            fallback: None,
            tiles_total: 1,
            tiles_skipped: 0,
            outputs: vec![
                "/data/.out-tmp/seg/classes.tif".into(),
                "/elsewhere/x.tif".into(),
                "/data/.out-tmpx/y.tif".into(),
            ],
            peak_rss_bytes: None,
        };
        r.rebase(Path::new("/data/.out-tmp"), Path::new("/data/out"));
        assert_eq!(
            r.outputs,
            [
                "/data/out/seg/classes.tif",
                "/elsewhere/x.tif",
                "/data/.out-tmpx/y.tif"
            ]
        );
        // Only outputs are renamed.
        assert_eq!(r.scene, "/data/.out-tmp/s.tif");
    }
}
