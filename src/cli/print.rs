//! How reports are printed: JSON with `--json`, else a few lines for a person.

use anyhow::{Context, Result};

use crate::jobs::{CaptionReport, ClassifyReport, DetectReport, SegmentReport, TilesReport};

pub(super) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(value).context("encoding JSON")?;
    out!("{s}")?;
    Ok(())
}

/// The warning when the requested execution provider could not load.
pub(super) fn fallback(reason: Option<&str>, provider: &str, quiet: bool) {
    if let Some(reason) = reason {
        if !quiet {
            eprintln!("tessera: warning: {reason}; running on {provider}");
        }
    }
}

/// The note that a model's weights are random (its answers mean nothing).
/// On stderr: it is a warning about the report, not part of it (`--json` stays parseable).
fn untrained(trained: bool, model: &str, what: &str) {
    if !trained {
        eprintln!(
            "tessera: note: {model} has untrained (random) weights: its {what} are meaningless"
        );
    }
}

fn outputs(outputs: &[String]) -> Result<()> {
    for o in outputs {
        out!("  wrote {o}")?;
    }
    Ok(())
}

pub(super) fn tiles(report: &TilesReport) -> Result<()> {
    out!(
        "{}: {} tiles ({} cols x {} rows) of {} px, overlap {}: {} kept, {} skipped, {} padded",
        report.scene,
        report.stats.tiles_total,
        report.cols,
        report.rows,
        report.tile_size,
        report.overlap,
        report.stats.tiles_read,
        report.stats.tiles_skipped,
        report.padded
    )?;
    outputs(&report.outputs)
}

pub(super) fn classify(report: &ClassifyReport) -> Result<()> {
    untrained(report.model_trained, &report.model, "labels");
    out!(
        "{}: {} tiles classified ({} skipped) with {} on {} in {:.1} s",
        report.scene,
        report.tiles_read,
        report.tiles_skipped,
        report.model,
        report.provider,
        report.timings.total_seconds
    )?;
    for (label, n) in &report.label_counts {
        out!("  {label:<20} {n}")?;
    }
    outputs(&report.outputs)
}

pub(super) fn caption(report: &CaptionReport) -> Result<()> {
    untrained(report.model_trained, &report.model, "captions");
    out!("scene: {}", report.scene_caption)?;
    out!(
        "{} tiles captioned ({} skipped) on {} in {:.1} s ({:.1} captions/s, {:.0} tokens/s)",
        report.tiles_captioned,
        report.tiles_skipped,
        report.provider,
        report.seconds,
        report.captions_per_second,
        report.tokens_per_second
    )?;
    outputs(&report.outputs)
}

pub(super) fn segment(report: &SegmentReport) -> Result<()> {
    if let Some(i) = &report.instances {
        out!(
            "{}: {} instances from {} boxes ({} empty) in {} tiles ({} skipped) on {} in {:.1} s",
            report.scene,
            i.instances,
            i.boxes,
            i.empty_boxes,
            report.tiles_read,
            report.tiles_skipped,
            report.provider,
            report.seconds
        )?;
        return outputs(&report.outputs);
    }
    out!(
        "{}: {} tiles segmented ({} skipped) on {} in {:.1} s; {} polygons",
        report.scene,
        report.tiles_read,
        report.tiles_skipped,
        report.provider,
        report.seconds,
        report.polygons
    )?;
    outputs(&report.outputs)
}

pub(super) fn detect(report: &DetectReport) -> Result<()> {
    out!(
        "{}: {} objects ({} boxes before merging) in {} tiles on {} in {:.1} s",
        report.scene,
        report.detections,
        report.raw_detections,
        report.tiles_read,
        report.provider,
        report.seconds
    )?;
    for (label, n) in &report.counts {
        out!("  {label:<20} {n}")?;
    }
    outputs(&report.outputs)
}
