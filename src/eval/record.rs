//! The comparison table: one [`ModelRecord`] per model, written as `eval.json` (per model in
//! the order given, keyed by the package path as given) and `eval.md`.

use std::path::Path;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use super::EvalError;

/// Scalar metrics in the order the table shows them (those a task has).
pub const SCALAR_METRICS: &[&str] = &[
    "top1",
    "top5",
    "map_50",
    "map_50_95",
    "precision",
    "recall",
    "f1",
    "miou",
    "pixel_accuracy",
    "bleu4",
    "cider",
];

/// One model's row.
#[derive(Debug, Clone)]
pub struct ModelRecord {
    /// The package path as given (the key in `eval.json`).
    pub model: String,
    /// `name` and `family` of its manifest.
    pub name: String,
    pub family: String,
    /// `precision` of its manifest (fp32, fp16, int8, int4), when it records one.
    pub precision: Option<String>,
    /// The execution provider it ran on.
    pub provider: String,
    /// Metrics under their `eval.json` names, and task details (`per_class`, `confusion`).
    pub metrics: Map<String, Value>,
    /// The metric the charts use.
    pub headline: &'static str,
    /// Tiles (or chips) evaluated.
    pub tiles: usize,
    /// Tiles per second of the job over those tiles, loading excluded.
    pub tiles_per_second: f64,
    /// Bytes of the package folder (every file under it; links followed).
    pub size_bytes: u64,
    /// Peak resident memory of the process that ran this model alone.
    pub peak_rss_bytes: Option<u64>,
    /// Fraction of tiles where this model predicts what the first model predicts (1 for the
    /// first model itself).
    pub agreement: Option<f64>,
}

impl ModelRecord {
    /// The headline metric's value.
    pub fn headline_value(&self) -> Option<f64> {
        self.metrics.get(self.headline).and_then(Value::as_f64)
    }

    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), self.name.clone().into());
        m.insert("family".into(), self.family.clone().into());
        // Not `precision`: that is a metric (classification, detection).
        m.insert(
            "model_precision".into(),
            self.precision.clone().map_or(Value::Null, Value::from),
        );
        m.insert("provider".into(), self.provider.clone().into());
        for (k, v) in &self.metrics {
            m.insert(k.clone(), v.clone());
        }
        m.insert("tiles".into(), self.tiles.into());
        m.insert("tiles_per_second".into(), self.tiles_per_second.into());
        m.insert("size_bytes".into(), self.size_bytes.into());
        m.insert(
            "peak_rss_bytes".into(),
            self.peak_rss_bytes.map_or(Value::Null, Value::from),
        );
        m.insert(
            "agreement".into(),
            self.agreement.map_or(Value::Null, Value::from),
        );
        m
    }
}

/// What `tessera eval` did.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub task: &'static str,
    /// The data, in words.
    pub data: String,
    /// How speed and memory were measured, in words (also in `eval.md`).
    pub method: String,
    /// Every model, in the order given, keyed by its path.
    #[serde(serialize_with = "models_in_order")]
    pub models: Vec<ModelRecord>,
    /// The charts written, relative to the output folder.
    pub charts: Vec<String>,
    /// Every file written.
    pub outputs: Vec<String>,
}

fn models_in_order<S: Serializer>(models: &[ModelRecord], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(models.len()))?;
    for m in models {
        map.serialize_entry(&m.model, &m.to_json())?;
    }
    map.end()
}

/// Write `eval.json`: the report without its `outputs` (those are the command's).
///
/// # Errors
/// The file cannot be written.
pub fn write_json(report: &EvalReport, path: &Path) -> Result<(), EvalError> {
    #[derive(Serialize)]
    struct File<'a> {
        task: &'a str,
        data: &'a str,
        method: &'a str,
        #[serde(serialize_with = "models_in_order")]
        models: &'a [ModelRecord],
        charts: &'a [String],
    }
    let text = serde_json::to_string_pretty(&File {
        task: report.task,
        data: &report.data,
        method: &report.method,
        models: &report.models,
        charts: &report.charts,
    })
    .map_err(|e| EvalError::data(path, e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| EvalError::io(path, e))
}

fn num(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) => format!("{x:.4}"),
        None => "-".into(),
    }
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

/// The Markdown table: one row per model, then per-class tables and the charts.
pub fn markdown(report: &EvalReport) -> String {
    let mut md = format!("# tessera eval: {}\n\n{}\n\n", report.task, report.data);
    let metrics: Vec<&str> = SCALAR_METRICS
        .iter()
        .copied()
        .filter(|k| report.models.iter().any(|m| m.metrics.contains_key(*k)))
        .collect();
    let precision = report.models.iter().any(|m| m.precision.is_some());
    let mut head = vec!["model".to_string()];
    if precision {
        head.push("weights".into());
    }
    head.extend(metrics.iter().map(|m| m.to_string()));
    head.extend(
        [
            "tiles",
            "tiles/s",
            "size (MiB)",
            "peak RSS (MiB)",
            "agreement",
        ]
        .map(String::from),
    );
    md.push_str(&format!("| {} |\n", head.join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(head.len())));
    for m in &report.models {
        let mut row = vec![format!("`{}`", m.model)];
        if precision {
            row.push(m.precision.clone().unwrap_or_else(|| "-".into()));
        }
        row.extend(metrics.iter().map(|k| num(m.metrics.get(*k))));
        row.push(m.tiles.to_string());
        row.push(format!("{:.2}", m.tiles_per_second));
        row.push(mib(Some(m.size_bytes)));
        row.push(mib(m.peak_rss_bytes));
        row.push(
            m.agreement
                .map_or_else(|| "-".into(), |a| format!("{a:.4}")),
        );
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    md.push_str(&format!("\n{}\n", report.method));
    for m in &report.models {
        if let Some(Value::Object(per)) = m.metrics.get("per_class") {
            md.push_str(&format!(
                "\n## `{}`: per class\n\n| class | precision | recall | f1 | support |\n|---|---|---|---|---|\n",
                m.model
            ));
            for (class, v) in per {
                md.push_str(&format!(
                    "| {class} | {} | {} | {} | {} |\n",
                    num(v.get("precision")),
                    num(v.get("recall")),
                    num(v.get("f1")),
                    v.get("support").and_then(Value::as_u64).unwrap_or(0)
                ));
            }
        }
        if let Some(Value::Object(iou)) = m.metrics.get("iou") {
            md.push_str(&format!(
                "\n## `{}`: IoU per class\n\n| class | iou |\n|---|---|\n",
                m.model
            ));
            for (class, v) in iou {
                md.push_str(&format!("| {class} | {} |\n", num(Some(v))));
            }
        }
    }
    if !report.charts.is_empty() {
        md.push_str("\n## Charts\n\n");
        for c in &report.charts {
            md.push_str(&format!("![{c}]({c})\n\n"));
        }
    }
    md
}

/// Write `eval.md`.
///
/// # Errors
/// The file cannot be written.
pub fn write_markdown(report: &EvalReport, path: &Path) -> Result<(), EvalError> {
    std::fs::write(path, markdown(report)).map_err(|e| EvalError::io(path, e))
}

/// Bytes of every file under `dir` (links followed, each file once by path).
///
/// # Errors
/// A folder or file that cannot be read.
pub fn folder_size(dir: &Path) -> Result<u64, EvalError> {
    let meta = std::fs::metadata(dir).map_err(|e| EvalError::io(dir, e))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))? {
        let entry = entry.map_err(|e| EvalError::io(dir, e))?;
        total += folder_size(&entry.path())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(model: &str, top1: f64) -> ModelRecord {
        let mut metrics = Map::new();
        metrics.insert("top1".into(), top1.into());
        ModelRecord {
            model: model.into(),
            name: "n".into(),
            family: "clip".into(),
            precision: None,
            provider: "CPUExecutionProvider".into(),
            metrics,
            headline: "top1",
            tiles: 4,
            tiles_per_second: 2.0,
            size_bytes: 1048576,
            peak_rss_bytes: Some(2097152),
            agreement: Some(1.0),
        }
    }

    #[test]
    fn json_keeps_the_order_given_and_the_names() {
        let report = EvalReport {
            task: "classify",
            data: "d".into(),
            method: "m".into(),
            models: vec![record("z/pkg", 0.5), record("a/pkg", 0.25)],
            charts: vec![],
            outputs: vec![],
        };
        let text = serde_json::to_string(&report).expect("json");
        let z = text.find("\"z/pkg\"").expect("z");
        let a = text.find("\"a/pkg\"").expect("a");
        assert!(z < a, "{text}");
        let v: Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(v["models"]["a/pkg"]["top1"], 0.25);
        assert_eq!(v["models"]["a/pkg"]["size_bytes"], 1048576);
        let md = markdown(&report);
        assert!(
            md.contains("| `z/pkg` | 0.5000 | 4 | 2.00 | 1.0 | 2.0 | 1.0000 |"),
            "{md}"
        );
    }
}
