//! Stitching: model outputs of overlapping tiles merged back into one georeferenced result.
//! `boxes` merges detections across tiles (class-aware NMS, weighted box fusion, boxes cut by
//! a tile edge); `mask` blends overlapping segmentation predictions into a mosaic written as
//! the sweep passes; `instances` joins per-tile instance masks into scene instances (one id
//! per object across seams) with the rows retired as the sweep passes.

pub mod boxes;
pub mod instances;
pub mod mask;
