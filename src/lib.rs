//! tessera: georeferenced answers from satellite and aerial scenes with vision-language models.
//!
//! Data flows one way: a scene ([`raster`]) is cut into tiles ([`tiling`]), tiles are batched
//! into models ([`runtime`]), model outputs are written as georeferenced rasters and vectors
//! ([`output`]); [`jobs`] holds the jobs that wire these stages together and [`cli`] the
//! command line on top of them.

pub mod batch;
pub mod cli;
pub mod eval;
pub mod generation;
pub mod jobs;
pub mod models;
pub mod options;
pub mod output;
pub mod raster;
pub mod runtime;
pub mod stitch;
pub mod task;
pub mod tiling;
