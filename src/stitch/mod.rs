//! Stitching: model outputs of overlapping tiles merged back into one georeferenced result.
//! `boxes` merges detections across tiles (class-aware NMS, weighted box fusion, boxes cut by
//! a tile edge); `mask` blends overlapping segmentation predictions into a mosaic written as
//! the sweep passes.

pub mod boxes;
pub mod mask;
