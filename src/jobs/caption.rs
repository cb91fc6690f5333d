//! `tessera caption`: a caption (or an answer to a question) for every tile and for the whole
//! scene, from an image-conditioned language decoder: one that takes the image as a prefix
//! (BLIP-2, LLaVA-style; [`crate::models::decoder`]) or through cross-attention (BLIP;
//! [`crate::models::cross_decoder`]), the family in `model.toml` choosing.
//!
//! Tiles are read, scaled and normalised by the reader threads and captioned in batches; the
//! scene caption comes from a downsampled view of the whole scene (or a chosen window). Outputs:
//! `captions.jsonl`, a tile layer with the caption attribute, a scene layer, and for
//! Shapefiles a `captions.csv` sidecar holding captions longer than the 254-byte dBase limit.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ndarray::Array4;
use serde::Serialize;

use super::driver::{drive, ModelStage, RunSpec, SceneSink};
use super::{stream_model_tiles, PipelineError, TileBatch};
use crate::models::cross_decoder::CrossDecoderModel;
use crate::models::decoder::{DecoderModel, GenerationParams};
use crate::models::{ModelError, ModelPackage, Normalizer};
use crate::output::{
    FieldKind, FieldSpec, FieldValue, GeometryKind, PendingOutput, VectorLayerWriter,
};
use crate::raster::{Placement, Resampling, Scene, WindowReader, WindowRequest};
use crate::runtime::Runtime;
use crate::tiling::{Tile, TileData};

/// What `tessera caption` does.
#[derive(Debug)]
pub struct CaptionJob {
    /// The scene side: scene, model, runtime, grid, reading, scaling, batch, vector format.
    pub base: crate::options::SceneJobBase,
    pub prompt: String,
    /// `None`: the manifest's defaults.
    pub params: Option<GenerationParams>,
    /// Caption every tile (false: the scene caption only).
    pub tiles: bool,
    /// Source pixel window (x, y, w, h) for the scene caption; `None`: the whole scene.
    pub scene_window: Option<(usize, usize, usize, usize)>,
    pub out: Option<PathBuf>,
    pub overwrite: bool,
    /// Tiles from a shared read pass (multi-model pipelines) instead of reading the scene.
    pub feed: Option<super::feed::FeedPort>,
}

/// One captioned tile.
#[derive(Debug, Clone, Serialize)]
pub struct TileCaption {
    pub tile_id: String,
    pub row: usize,
    pub col: usize,
    /// Footprint corners in the scene CRS.
    pub footprint: Vec<(f64, f64)>,
    pub valid_fraction: f64,
    pub caption: String,
    pub tokens: Vec<u32>,
}

/// What `tessera caption` did.
#[derive(Debug, Serialize)]
pub struct CaptionReport {
    /// Scene, model, provider, tile counts, outputs, memory.
    #[serde(flatten)]
    pub run: super::SceneRunReport,
    pub model_trained: bool,
    pub prompt: String,
    pub params: GenerationParams,
    pub scene_caption: String,
    pub tiles_captioned: usize,
    pub new_tokens: usize,
    pub seconds: f64,
    pub model_seconds: f64,
    /// Wall seconds of the pass over the tiles (reading and captioning them; the scene
    /// caption, loading and writing excluded).
    pub tiles_seconds: f64,
    pub captions_per_second: f64,
    pub tokens_per_second: f64,
}

const TILE_FIELDS: [FieldSpec; 5] = [
    FieldSpec {
        name: "tile_id",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "row",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "col",
        kind: FieldKind::Integer,
    },
    FieldSpec {
        name: "caption",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "valid_frac",
        kind: FieldKind::Real,
    },
];

const SCENE_FIELDS: [FieldSpec; 3] = [
    FieldSpec {
        name: "scene",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "prompt",
        kind: FieldKind::String,
    },
    FieldSpec {
        name: "caption",
        kind: FieldKind::String,
    },
];

/// A captioning model of either decoder family: the one seam between the job and the families.
// One per run, so the variants' sizes do not matter (they differ by a tokenizer or so).
#[allow(clippy::large_enum_variant)]
enum CaptionModel {
    /// `image-text-decoder`: the image as a prefix of the prompt.
    Prefix(DecoderModel),
    /// `cross-attention-decoder`: the image through cross-attention.
    Cross(CrossDecoderModel),
}

/// `$m` bound to the model of either kind, `$body` evaluated with it.
macro_rules! either {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            CaptionModel::Prefix($m) => $body,
            CaptionModel::Cross($m) => $body,
        }
    };
}

impl CaptionModel {
    /// The package's family picks the runner; every other family goes to the image-text
    /// decoder, whose errors (wrong family included) are unchanged.
    fn load(
        runtime: &Runtime,
        dir: &std::path::Path,
        options: &crate::runtime::SessionOptions,
    ) -> Result<CaptionModel, ModelError> {
        let cross = ModelPackage::load(dir)
            .is_ok_and(|p| p.manifest.family == crate::models::cross_decoder::FAMILY);
        Ok(if cross {
            CaptionModel::Cross(CrossDecoderModel::load(runtime, dir, options)?)
        } else {
            CaptionModel::Prefix(DecoderModel::load(runtime, dir, options)?)
        })
    }

    fn generate(
        &mut self,
        pixels: ndarray::ArrayView4<'_, f32>,
        prompts: &[String],
        params: &GenerationParams,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        either!(self, m => m.generate(pixels, prompts, params))
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        either!(self, m => m.decode(ids))
    }

    fn prompt_ids(&self, prompt: &str) -> Result<Vec<i64>, ModelError> {
        either!(self, m => m.prompt_ids(prompt))
    }

    fn input_size(&self) -> usize {
        either!(self, m => m.input_size())
    }

    fn normalizer(&self) -> Normalizer {
        either!(self, m => m.normalizer())
    }

    fn default_params(&self) -> GenerationParams {
        either!(self, m => m.default_params())
    }

    fn provider(&self) -> (&'static str, Option<&str>) {
        either!(self, m => m.provider())
    }

    fn package(&self) -> &ModelPackage {
        either!(self, m => m.package())
    }
}

/// The model thread's part: captions for a batch of tiles.
struct Captioner<'m> {
    model: &'m mut CaptionModel,
    params: &'m GenerationParams,
    /// The prompt once per batch slot.
    prompts: Vec<String>,
    tile_size: usize,
    new_tokens: usize,
}

impl ModelStage<f32> for Captioner<'_> {
    type Batch = TileBatch<(Tile, f64)>;
    type Output = Vec<TileCaption>;

    fn new_batch(&self) -> Result<Self::Batch, PipelineError> {
        Ok(TileBatch::new(self.prompts.len(), self.tile_size))
    }

    fn push(batch: &mut Self::Batch, t: TileData<f32>) -> bool {
        batch.push(&t.pixels, (t.tile, t.valid_fraction))
    }

    fn run(&mut self, batch: &mut Self::Batch) -> Result<Vec<TileCaption>, PipelineError> {
        let (pixels, tiles) = batch.take();
        let n = tiles.len();
        let out = self
            .model
            .generate(pixels, &self.prompts[..n], self.params)?;
        let mut captions = Vec::with_capacity(n);
        for ((tile, valid_fraction), tokens) in tiles.into_iter().zip(out) {
            self.new_tokens += tokens.len();
            captions.push(TileCaption {
                tile_id: tile.id.clone(),
                row: tile.row,
                col: tile.col,
                footprint: tile
                    .geotransform
                    .footprint(tile.size as f64, tile.size as f64)
                    .to_vec(),
                valid_fraction,
                caption: self.model.decode(&tokens)?.trim().to_string(),
                tokens,
            });
        }
        Ok(captions)
    }
}

/// The sink's part: every tile's caption.
struct Captions(Vec<TileCaption>);

impl SceneSink for Captions {
    type Input = Vec<TileCaption>;
    type Done = Vec<TileCaption>;

    fn consume(&mut self, captions: Vec<TileCaption>) -> Result<(), PipelineError> {
        self.0.extend(captions);
        Ok(())
    }

    fn finish(self) -> Result<Vec<TileCaption>, PipelineError> {
        Ok(self.0)
    }
}

/// The scene caption: the whole scene (or `job.scene_window`) resampled to one model input.
/// Returns the caption, its new tokens and the model's seconds.
fn caption_scene(
    job: &CaptionJob,
    model: &mut CaptionModel,
    scene: &Scene,
    scaling: &crate::raster::Scaling,
    params: &GenerationParams,
) -> Result<(String, usize, f64), PipelineError> {
    let size = model.input_size();
    let plane = size * size;
    let (wx, wy, ww, wh) = job
        .scene_window
        .unwrap_or((0, 0, scene.width(), scene.height()));
    if ww == 0 || wh == 0 || wx + ww > scene.width() || wy + wh > scene.height() {
        return Err(crate::options::InvalidOption::new(
            "scene_window",
            format!(
                "{wx},{wy},{ww},{wh} is not inside the {}x{} scene",
                scene.width(),
                scene.height()
            ),
        )
        .into());
    }
    let reader = WindowReader::new(scene, &job.base.read.bands, Resampling::Average)?;
    let req = WindowRequest {
        x: wx as f64,
        y: wy as f64,
        w: ww as f64,
        h: wh as f64,
        out_w: size,
        out_h: size,
    };
    let place = Placement {
        offset: 0,
        line_stride: size,
        band_stride: plane,
    };
    let mut view = vec![0f32; 3 * plane];
    reader.read_into(&req, &mut view, &place)?;
    let mut valid = vec![0u8; plane];
    reader.read_valid(&req, &mut valid, &place)?;
    for c in 0..3 {
        scaling.apply(c, &mut view[c * plane..(c + 1) * plane]);
    }
    model.normalizer().apply(&mut view, &valid);
    let view = Array4::from_shape_vec((1, 3, size, size), view)
        .map_err(|e| PipelineError::Internal(e.to_string()))?;
    let t = Instant::now();
    let tokens = model.generate(view.view(), std::slice::from_ref(&job.prompt), params)?;
    let seconds = t.elapsed().as_secs_f64();
    let caption = model.decode(&tokens[0])?.trim().to_string();
    Ok((caption, tokens[0].len(), seconds))
}

/// Run the job.
///
/// # Errors
/// Bad scene, model, prompt or options; inference failure; unwritable outputs (nothing partial
/// is left under `--out`).
pub fn run_caption(mut job: CaptionJob) -> Result<CaptionReport, PipelineError> {
    let start = Instant::now();
    let loading = super::Phase::spinner(job.base.progress, "loading model");
    let runtime = Runtime::load(job.base.ort_lib.as_deref())?;
    let mut model = CaptionModel::load(runtime, &job.base.model, &job.base.session)?;
    tracing::info!(
        model = %job.base.model.display(),
        provider = model.provider().0,
        input_size = model.input_size(),
        "model loaded"
    );
    let params = job.params.clone().unwrap_or_else(|| model.default_params());
    // Fail on a prompt the model cannot take before reading anything.
    model.prompt_ids(&job.prompt)?;
    let size = model.input_size();
    crate::options::check_batch_bytes(job.base.batch_size, size)?;
    let tiles = super::ModelTiles {
        size,
        any_size: false,
        defaults: None,
    };
    let (scene, scaling, grid) = super::model_input(
        &job.base.scene,
        &job.base.open,
        &job.base.grid,
        &mut job.base.read,
        &job.base.scaling,
        &tiles,
    )?;
    loading.finish();
    let pending = match &job.out {
        Some(dir) => Some(PendingOutput::dir(dir, job.overwrite)?),
        None => None,
    };
    let (scene_caption, mut new_tokens, mut model_seconds) =
        super::phase(job.base.progress, "model (scene caption)", || {
            caption_scene(&job, &mut model, &scene, &scaling, &params)
        })?;

    // Every tile.
    let mut captions: Vec<TileCaption> = Vec::new();
    let mut stats = crate::tiling::StreamStats {
        tiles_total: grid.len(),
        ..Default::default()
    };
    let tiles_start = Instant::now();
    if job.tiles {
        let norm = model.normalizer();
        let spec = RunSpec {
            tiles: grid.len(),
            progress: job.base.progress,
            what: "captioning",
            sink: "caption",
            finishing: None,
        };
        let stage = Captioner {
            model: &mut model,
            params: &params,
            prompts: vec![job.prompt.clone(); job.base.batch_size.max(1)],
            tile_size: size,
            new_tokens: 0,
        };
        let feed = job.feed.take();
        let swept = drive(&spec, stage, Captions(Vec::new()), |consume| {
            stream_model_tiles(
                feed,
                &scene,
                &grid,
                &job.base.read,
                &scaling,
                &norm,
                consume,
            )
        })?;
        stats = swept.stats;
        model_seconds += swept.model_seconds;
        new_tokens += swept.model.new_tokens;
        captions = swept.done;
        captions.sort_by_key(|c| (c.row, c.col));
        tracing::info!(
            read = stats.tiles_read,
            skipped = stats.tiles_skipped,
            new_tokens,
            "tiles captioned"
        );
    }

    let tiles_seconds = tiles_start.elapsed().as_secs_f64();
    let mut outputs = Vec::new();
    let (provider, fallback) = model.provider();
    let mut section = None;
    if let (Some(pending), Some(dir)) = (pending, &job.out) {
        let t = Instant::now();
        super::phase(job.base.progress, "writing", || {
            write_outputs(&job, &scene, &captions, &scene_caption, &pending)
        })?;
        let mut s = super::report::section("caption", &job.base, provider);
        s.answer = Some(scene_caption.clone());
        for c in &captions {
            s.push_chip(crate::output::report::Chip {
                id: c.tile_id.clone(),
                bounds: bounds(&c.footprint),
                text: c.caption.clone(),
            });
        }
        s.fact(
            "prompt",
            if job.prompt.is_empty() {
                "(none)"
            } else {
                &job.prompt
            },
        );
        s.fact("tiles captioned", captions.len());
        s.fact("new tokens", new_tokens);
        s.fact(
            "generation",
            serde_json::to_string(&params).unwrap_or_default(),
        );
        s.timing("model (scene and tiles)", model_seconds);
        s.timing("reading and captioning the tiles", tiles_seconds);
        s.timing("writing layers", t.elapsed().as_secs_f64());
        s.timing("whole run", start.elapsed().as_secs_f64());
        super::report::write_report(&job.base, &pending.path(), &s)?;
        outputs = super::output_names(&pending.path(), dir)?;
        pending.commit()?;
        section = Some(s);
        super::log_outputs(&outputs);
    }
    let seconds = start.elapsed().as_secs_f64();
    let n_captions = captions.len() + 1;
    let mut run = super::SceneRunReport::new(&job.base, (provider, fallback), &stats, outputs);
    run.section = section;
    Ok(CaptionReport {
        run,
        model_trained: model.package().manifest.trained,
        prompt: job.prompt.clone(),
        params,
        scene_caption,
        tiles_captioned: captions.len(),
        new_tokens,
        seconds,
        model_seconds,
        tiles_seconds,
        captions_per_second: n_captions as f64 / model_seconds.max(1e-9),
        tokens_per_second: new_tokens as f64 / model_seconds.max(1e-9),
    })
}

/// (min x, min y, max x, max y) of corners.
fn bounds(corners: &[(f64, f64)]) -> (f64, f64, f64, f64) {
    corners.iter().fold(
        (
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ),
        |(x0, y0, x1, y1), &(x, y)| (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
    )
}

fn write_err(path: &std::path::Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Output(crate::output::OutputError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn write_outputs(
    job: &CaptionJob,
    scene: &Scene,
    captions: &[TileCaption],
    scene_caption: &str,
    pending: &PendingOutput,
) -> Result<(), PipelineError> {
    let dir = pending.path();
    let crs = scene.crs_wkt();
    let ext = job.base.format.extension();

    let jsonl = dir.join("captions.jsonl");
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(&jsonl).map_err(|e| write_err(&jsonl, e))?);
    for c in captions {
        let line = serde_json::to_string(c).map_err(|e| write_err(&jsonl, e))?;
        writeln!(f, "{line}").map_err(|e| write_err(&jsonl, e))?;
    }
    f.flush().map_err(|e| write_err(&jsonl, e))?;

    // Shapefile strings stop at 254 bytes: the full text goes to a CSV keyed by tile id.
    let limit = job.base.format.max_string_len();
    let long: Vec<&TileCaption> = match limit {
        Some(max) => captions.iter().filter(|c| c.caption.len() > max).collect(),
        None => Vec::new(),
    };
    if !long.is_empty() {
        let csv = dir.join("captions.csv");
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&csv).map_err(|e| write_err(&csv, e))?);
        writeln!(f, "tile_id,caption").map_err(|e| write_err(&csv, e))?;
        for c in &long {
            writeln!(f, "{},\"{}\"", c.tile_id, c.caption.replace('"', "\"\""))
                .map_err(|e| write_err(&csv, e))?;
        }
        f.flush().map_err(|e| write_err(&csv, e))?;
    }

    let mut tiles = VectorLayerWriter::create(
        &dir.join(format!("tiles.{ext}")),
        job.base.format,
        "tiles",
        GeometryKind::Polygon,
        crs,
        &TILE_FIELDS,
        false,
    )?;
    for c in captions {
        tiles.add_polygon(
            &c.footprint,
            &[
                FieldValue::String(c.tile_id.clone()),
                FieldValue::Integer(c.row as i64),
                FieldValue::Integer(c.col as i64),
                FieldValue::String(c.caption.clone()),
                FieldValue::Real(c.valid_fraction),
            ],
        )?;
    }
    tiles.finish()?;

    let mut layer = VectorLayerWriter::create(
        &dir.join(format!("scene.{ext}")),
        job.base.format,
        "scene",
        GeometryKind::Polygon,
        crs,
        &SCENE_FIELDS,
        false,
    )?;
    layer.add_polygon(
        &scene.info().footprint.corners,
        &[
            FieldValue::String(job.base.scene.clone()),
            FieldValue::String(job.prompt.clone()),
            FieldValue::String(scene_caption.to_string()),
        ],
    )?;
    layer.finish()?;
    Ok(())
}

impl crate::task::SceneJob for CaptionJob {
    type Report = CaptionReport;
    fn set_feed(&mut self, port: super::feed::FeedPort) {
        self.feed = Some(port);
    }
    fn run(self) -> Result<CaptionReport, PipelineError> {
        run_caption(self)
    }
}
