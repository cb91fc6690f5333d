//! Detections in map coordinates and their merging across tiles (filled in next).
