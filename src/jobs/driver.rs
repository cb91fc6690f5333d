//! One scene-run skeleton for every model command: the calling thread gathers the ordered
//! tile stream into batches, one model thread runs the model on them, and one sink thread owns
//! the writers (stitcher, layers, result lists) and finishes them.
//!
//! ```text
//! readers -> [calling thread: gather] -> batches -> [model thread] -> outputs -> [sink thread]
//!                      ^------------- emptied batches come back ------'
//! ```
//!
//! Two batches exist: one filling while the model runs the other (pinned staging memory for
//! CLIP, plain arrays elsewhere), so reading, batching, inference and writing overlap. Tiles
//! without valid pixels (delivered only when the read options ask for them) go around the
//! model to the sink, in their place in the stream. One place, [`drive`], decides which error
//! a failed run reports: a thread's own error explains the "stopped" that its neighbours see.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::time::Instant;

use super::{Phase, PipelineError, Progress};
use crate::tiling::{StreamStats, Tile, TileData};

/// The model side of a scene run.
pub(crate) trait ModelStage<T>: Send {
    /// Tiles gathered for one model call (its memory is reused batch after batch).
    type Batch: Send;
    /// What the sink receives for one batch.
    type Output: Send;
    /// An empty batch; called twice, before the run.
    ///
    /// # Errors
    /// The model cannot give input memory (device staging buffers).
    fn new_batch(&self) -> Result<Self::Batch, PipelineError>;
    /// Add a tile to `batch` (on the calling thread); true when the batch is now full.
    fn push(batch: &mut Self::Batch, tile: TileData<T>) -> bool;
    /// Run the model on the batch's tiles (on the model thread), leaving `batch` empty for
    /// the next tiles. The driver times this call.
    ///
    /// # Errors
    /// Inference failure.
    fn run(&mut self, batch: &mut Self::Batch) -> Result<Self::Output, PipelineError>;
}

/// The writing side of a scene run: it receives every batch's output in tile order.
pub(crate) trait SceneSink: Send {
    type Input: Send;
    /// What the sink gives back when the scene is done.
    type Done: Send;
    /// Take one batch's output.
    ///
    /// # Errors
    /// A write error; the run stops.
    fn consume(&mut self, output: Self::Input) -> Result<(), PipelineError>;
    /// A tile with no valid pixel, in its place among the batches.
    ///
    /// # Errors
    /// A write error; the run stops.
    fn skipped(&mut self, _tile: Tile) -> Result<(), PipelineError> {
        Ok(())
    }
    /// Every tile was consumed: finish the outputs (only then; never after a failure).
    ///
    /// # Errors
    /// A write error.
    fn finish(self) -> Result<Self::Done, PipelineError>;
}

/// How a run shows itself.
pub(crate) struct RunSpec {
    /// Tiles in the grid (the progress bars' length).
    pub tiles: usize,
    pub progress: Progress,
    /// What the model does ("segmenting"): the model bar's label is `model (segmenting)`.
    pub what: &'static str,
    /// The sink thread's name in errors and its progress bar ("stitching", "writer").
    pub sink: &'static str,
    /// What the sink's [`SceneSink::finish`] does, shown as a phase of its own when it can
    /// take a while ("assembling COGs"); `None`: nothing worth showing.
    pub finishing: Option<&'static str>,
}

/// The bars of a sweep: tiles read, run through the model, taken by the sink.
struct Bars {
    reading: Phase,
    model: Phase,
    sink: Phase,
}

/// What a successful run gives back.
pub(crate) struct Swept<M, D> {
    pub stats: StreamStats,
    /// The model stage, with whatever it counted.
    pub model: M,
    /// The sink's result.
    pub done: D,
    /// Seconds inside [`ModelStage::run`].
    pub model_seconds: f64,
    /// Seconds the gathering side waited for tiles from the stream.
    pub wait_seconds: f64,
}

/// The tile stream a run consumes: it calls its argument with every tile, in grid order.
pub(crate) type Consume<'c, T> = dyn FnMut(TileData<T>) -> Result<(), PipelineError> + 'c;

/// Why a part of the run did not finish.
enum Stop {
    /// Its own error: this explains the run's failure.
    Failed(PipelineError),
    /// A neighbour went away (a closed channel): the neighbour's error explains it.
    Stopped,
}

impl From<PipelineError> for Stop {
    fn from(e: PipelineError) -> Stop {
        Stop::Failed(e)
    }
}

enum Work<B> {
    Batch(B, usize),
    Skipped(Tile),
    End,
}

enum Item<O> {
    /// One batch's output and its number of tiles.
    Output(O, usize),
    Skipped(Tile),
    End,
}

/// Run a scene: `stream` feeds the gathering side, `model` runs on its own thread, `sink` on
/// another. Errors, in order of precedence: the sink's own, the model's own, the stream's
/// (a thread's error explains the failed send or receive its neighbours see).
///
/// # Errors
/// A stream (read) error, the model's or the sink's error, or a thread that panicked.
pub(crate) fn drive<T, M, S, F>(
    spec: &RunSpec,
    model: M,
    sink: S,
    stream: F,
) -> Result<Swept<M, S::Done>, PipelineError>
where
    M: ModelStage<T, Output = S::Input>,
    S: SceneSink,
    F: FnOnce(&mut Consume<'_, T>) -> Result<StreamStats, PipelineError>,
{
    let bars = Bars {
        reading: Phase::bar(spec.progress, "reading", spec.tiles, "tiles"),
        model: Phase::bar(
            spec.progress,
            &format!("model ({})", spec.what),
            spec.tiles,
            "tiles",
        ),
        sink: Phase::bar(spec.progress, spec.sink, spec.tiles, "tiles"),
    };
    let finishing = spec.finishing.map(|f| (spec.progress, f));
    let batches = [model.new_batch()?, model.new_batch()?];
    // Batches are bounded by their number; the queue leaves room for skipped tiles.
    let (work_tx, work_rx) = sync_channel::<Work<M::Batch>>(64);
    let (empty_tx, empty_rx) = channel::<M::Batch>();
    let (item_tx, item_rx) = sync_channel::<Item<S::Input>>(2);
    let (gathered, modelled, sunk) = std::thread::scope(|scope| {
        let bars = &bars;
        let sinking = scope.spawn(move || sink_loop(sink, item_rx, &bars.sink, finishing));
        let modelling =
            scope.spawn(move || model_loop(model, work_rx, empty_tx, item_tx, &bars.model));
        let gathered = gather::<T, M, F>(batches, work_tx, empty_rx, &bars.reading, stream);
        let modelled = modelling.join().unwrap_or_else(|_| {
            (
                None,
                Err(Stop::Failed(PipelineError::worker("model", "panicked"))),
            )
        });
        let sunk = sinking
            .join()
            .unwrap_or_else(|_| Err(Stop::Failed(PipelineError::worker(spec.sink, "panicked"))));
        (gathered, modelled, sunk)
    });
    match (gathered, modelled, sunk) {
        (Ok((stats, wait_seconds)), (Some(model), Ok(model_seconds)), Ok(done)) => Ok(Swept {
            stats,
            model,
            done,
            model_seconds,
            wait_seconds,
        }),
        (_, _, Err(Stop::Failed(e))) | (_, (_, Err(Stop::Failed(e))), _) => Err(e),
        (Err(Stop::Failed(e)), _, _) => Err(e),
        // Nobody failed on their own, yet a part stopped (not expected to happen).
        _ => Err(PipelineError::worker("model", "stopped")),
    }
}

/// The calling thread: gather the stream's tiles into the two batches, hand full ones to the
/// model thread, and end the work with `End` only when the stream succeeded.
fn gather<T, M, F>(
    batches: [M::Batch; 2],
    work: SyncSender<Work<M::Batch>>,
    empty: Receiver<M::Batch>,
    bar: &Phase,
    stream: F,
) -> Result<(StreamStats, f64), Stop>
where
    M: ModelStage<T>,
    F: FnOnce(&mut Consume<'_, T>) -> Result<StreamStats, PipelineError>,
{
    let [first, second] = batches;
    let mut current = first;
    let mut spare = Some(second);
    let mut filled = 0usize;
    let mut stopped = false;
    let mut waiting = 0.0;
    let mut waited = Instant::now();
    let streamed = stream(&mut |t: TileData<T>| {
        waiting += waited.elapsed().as_secs_f64();
        bar.inc(1);
        let gone = |stopped: &mut bool| {
            *stopped = true;
            PipelineError::worker("model", "stopped")
        };
        if t.pixels.is_empty() {
            // A skipped tile: nothing to predict, but the sink sees it in its place.
            work.send(Work::Skipped(t.tile))
                .map_err(|_| gone(&mut stopped))?;
        } else {
            filled += 1;
            if M::push(&mut current, t) {
                // The second batch, or the first back from the model thread.
                let next = match spare.take() {
                    Some(b) => b,
                    None => empty.recv().map_err(|_| gone(&mut stopped))?,
                };
                let full = std::mem::replace(&mut current, next);
                work.send(Work::Batch(full, std::mem::take(&mut filled)))
                    .map_err(|_| gone(&mut stopped))?;
            }
        }
        waited = Instant::now();
        Ok(())
    });
    let stats = match streamed {
        Ok(stats) => {
            bar.finish();
            stats
        }
        Err(_) if stopped => return Err(Stop::Stopped),
        Err(e) => return Err(Stop::Failed(e)),
    };
    if filled > 0 {
        work.send(Work::Batch(current, filled))
            .map_err(|_| Stop::Stopped)?;
    }
    work.send(Work::End).map_err(|_| Stop::Stopped)?;
    Ok((stats, waiting))
}

/// The model thread: run every batch, pass outputs and skipped tiles on in order, and give
/// the emptied batch back. Returns the stage (when it was not lost to a panic) and its seconds.
fn model_loop<T, M: ModelStage<T>>(
    mut model: M,
    work: Receiver<Work<M::Batch>>,
    empty: Sender<M::Batch>,
    items: SyncSender<Item<M::Output>>,
    bar: &Phase,
) -> (Option<M>, Result<f64, Stop>) {
    let mut seconds = 0.0;
    let result = (|| -> Result<(), Stop> {
        for w in work {
            match w {
                Work::Batch(mut batch, n) => {
                    let t = Instant::now();
                    let out = model.run(&mut batch)?;
                    seconds += t.elapsed().as_secs_f64();
                    items
                        .send(Item::Output(out, n))
                        .map_err(|_| Stop::Stopped)?;
                    bar.inc(n as u64);
                    // The gathering side may have finished: then the batch is not needed.
                    let _ = empty.send(batch);
                }
                Work::Skipped(tile) => {
                    bar.inc(1);
                    items.send(Item::Skipped(tile)).map_err(|_| Stop::Stopped)?
                }
                Work::End => {
                    bar.finish();
                    return items.send(Item::End).map_err(|_| Stop::Stopped);
                }
            }
        }
        // The work ended without `End`: the gathering side stopped.
        Err(Stop::Stopped)
    })();
    (Some(model), result.map(|()| seconds))
}

/// The sink thread: consume every item, finish at `End` (shown as the phase `finishing`).
fn sink_loop<S: SceneSink>(
    mut sink: S,
    items: Receiver<Item<S::Input>>,
    bar: &Phase,
    finishing: Option<(Progress, &str)>,
) -> Result<S::Done, Stop> {
    for item in items {
        match item {
            Item::Output(out, n) => {
                sink.consume(out)?;
                bar.inc(n as u64);
            }
            Item::Skipped(tile) => {
                sink.skipped(tile)?;
                bar.inc(1);
            }
            Item::End => {
                bar.finish();
                let phase = finishing.map(|(p, what)| Phase::spinner(p, what));
                let done = sink.finish()?;
                if let Some(p) = phase {
                    p.finish();
                }
                return Ok(done);
            }
        }
    }
    Err(Stop::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::GeoTransform;

    fn tile(index: usize) -> Tile {
        Tile {
            index,
            row: 0,
            col: index,
            id: format!("t{index}"),
            x: index,
            y: 0,
            size: 1,
            inside_w: 1,
            inside_h: 1,
            geotransform: GeoTransform::PIXEL,
        }
    }

    /// Tiles `0..n`; those in `skipped` without pixels.
    fn tiles(n: usize, skipped: &[usize]) -> Vec<TileData<u8>> {
        (0..n)
            .map(|i| TileData {
                tile: tile(i),
                pixels: if skipped.contains(&i) {
                    vec![]
                } else {
                    vec![i as u8]
                }
                .into(),
                valid: vec![1].into(),
                valid_fraction: 1.0,
            })
            .collect()
    }

    /// Batches of `size` tiles; fails on the batch holding tile `fail_at`.
    struct Model {
        size: usize,
        fail_at: Option<u8>,
        runs: usize,
    }

    impl ModelStage<u8> for Model {
        type Batch = (usize, Vec<u8>);
        type Output = Vec<u8>;

        fn new_batch(&self) -> Result<Self::Batch, PipelineError> {
            Ok((self.size, Vec::new()))
        }

        fn push((size, batch): &mut Self::Batch, t: TileData<u8>) -> bool {
            batch.push(t.pixels[0]);
            batch.len() == *size
        }

        fn run(&mut self, (_, batch): &mut Self::Batch) -> Result<Vec<u8>, PipelineError> {
            self.runs += 1;
            if self.fail_at.is_some_and(|f| batch.contains(&f)) {
                return Err(PipelineError::Internal("model failed".into()));
            }
            Ok(std::mem::take(batch))
        }
    }

    /// Records what it sees: `Some(tile)` for a predicted tile, `None` for a skipped one.
    #[derive(Default)]
    struct Sink {
        seen: Vec<(Option<u8>, usize)>,
        fail_on_consume: bool,
        finished: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    }

    impl SceneSink for Sink {
        type Input = Vec<u8>;
        type Done = Vec<(Option<u8>, usize)>;

        fn consume(&mut self, out: Vec<u8>) -> Result<(), PipelineError> {
            if self.fail_on_consume {
                return Err(PipelineError::Internal("sink failed".into()));
            }
            self.seen
                .extend(out.into_iter().map(|v| (Some(v), v as usize)));
            Ok(())
        }

        fn skipped(&mut self, tile: Tile) -> Result<(), PipelineError> {
            self.seen.push((None, tile.index));
            Ok(())
        }

        fn finish(self) -> Result<Self::Done, PipelineError> {
            if let Some(f) = &self.finished {
                f.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(self.seen)
        }
    }

    const SPEC: RunSpec = RunSpec {
        tiles: 0,
        progress: Progress::Off,
        what: "testing",
        sink: "writer",
        finishing: None,
    };

    /// A stream of `data`, failing with a read error after `fail_after` tiles.
    fn stream(
        data: Vec<TileData<u8>>,
        fail_after: Option<usize>,
    ) -> impl FnOnce(&mut Consume<'_, u8>) -> Result<StreamStats, PipelineError> {
        move |consume| {
            let n = data.len();
            for (i, t) in data.into_iter().enumerate() {
                if fail_after == Some(i) {
                    return Err(PipelineError::Internal("read failed".into()));
                }
                consume(t)?;
            }
            Ok(StreamStats {
                tiles_total: n,
                ..Default::default()
            })
        }
    }

    fn model(size: usize, fail_at: Option<u8>) -> Model {
        Model {
            size,
            fail_at,
            runs: 0,
        }
    }

    #[test]
    fn every_tile_reaches_the_sink_in_order_with_skipped_ones_in_place() {
        for size in [1, 2, 3, 7] {
            let swept = drive(
                &SPEC,
                model(size, None),
                Sink::default(),
                stream(tiles(10, &[0, 4, 5, 9]), None),
            )
            .expect("run");
            let indexes: Vec<usize> = swept.done.iter().map(|(_, i)| *i).collect();
            assert_eq!(swept.stats.tiles_total, 10);
            // Skipped tiles pass the tiles still being batched: order within the predicted
            // tiles and within the skipped ones is kept.
            let predicted: Vec<usize> = swept
                .done
                .iter()
                .filter(|(v, _)| v.is_some())
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(predicted, vec![1, 2, 3, 6, 7, 8], "batch size {size}");
            assert_eq!(indexes.len(), 10, "batch size {size}");
            assert_eq!(swept.model.runs, 6usize.div_ceil(size), "batch size {size}");
        }
    }

    #[test]
    fn a_skipped_tile_reaches_the_sink_after_the_batches_before_it() {
        let swept = drive(
            &SPEC,
            model(2, None),
            Sink::default(),
            stream(tiles(5, &[2]), None),
        )
        .expect("run");
        let order: Vec<usize> = swept.done.iter().map(|(_, i)| *i).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_failing_part_explains_the_run() {
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watched = || Sink {
            finished: Some(finished.clone()),
            ..Sink::default()
        };
        type Run = Result<Swept<Model, Vec<(Option<u8>, usize)>>, PipelineError>;
        let err = |r: Run| r.err().map(|e| e.to_string()).unwrap_or_default();
        let many = || tiles(200, &[]);
        // The model fails: not "the model thread stopped" from the gathering side.
        let e = err(drive(
            &SPEC,
            model(2, Some(5)),
            watched(),
            stream(many(), None),
        ));
        assert_eq!(e, "internal error: model failed");
        // The sink fails: not the model's failed send, nor the gatherer's.
        let sink = Sink {
            fail_on_consume: true,
            ..Sink::default()
        };
        let e = err(drive(&SPEC, model(2, None), sink, stream(many(), None)));
        assert_eq!(e, "internal error: sink failed");
        // The stream fails: the model and the sink only stopped.
        let e = err(drive(
            &SPEC,
            model(2, None),
            watched(),
            stream(many(), Some(7)),
        ));
        assert_eq!(e, "internal error: read failed");
        // A failed run never finishes the outputs.
        assert!(!finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_thread_is_named() {
        struct Panics;
        impl SceneSink for Panics {
            type Input = Vec<u8>;
            type Done = ();
            fn consume(&mut self, _: Vec<u8>) -> Result<(), PipelineError> {
                panic!("bug");
            }
            fn finish(self) -> Result<(), PipelineError> {
                Ok(())
            }
        }
        let e = drive(&SPEC, model(1, None), Panics, stream(tiles(50, &[]), None))
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("the writer thread panicked"));
    }
}
