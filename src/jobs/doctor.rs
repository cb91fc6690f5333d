//! `tessera doctor`: what this installation can do.

use std::path::Path;

use serde::Serialize;

use crate::runtime::{Runtime, RuntimeInfo};

/// A GDAL driver tessera relies on.
#[derive(Debug, Serialize)]
pub struct DriverStatus {
    pub name: &'static str,
    pub purpose: &'static str,
    pub available: bool,
}

/// What `tessera doctor` found.
#[derive(Debug, Serialize)]
pub struct DoctorReport {
    pub tessera_version: &'static str,
    pub gdal_version: String,
    pub drivers: Vec<DriverStatus>,
    /// The loaded ONNX Runtime, or why it could not be loaded.
    pub onnxruntime: Result<RuntimeInfo, String>,
}

impl DoctorReport {
    /// True when everything tessera needs is there.
    pub fn healthy(&self) -> bool {
        self.onnxruntime.is_ok() && self.drivers.iter().all(|d| d.available)
    }
}

const DRIVERS: [(&str, &str); 5] = [
    ("GTiff", "read scenes, write rasters"),
    ("COG", "write cloud-optimised GeoTIFFs"),
    ("GPKG", "write GeoPackage layers"),
    ("ESRI Shapefile", "write Shapefiles"),
    ("FlatGeobuf", "write FlatGeobuf layers"),
];

/// Inspect GDAL and load ONNX Runtime. Problems are reported, not returned as errors.
pub fn run_doctor(ort_lib: Option<&Path>) -> DoctorReport {
    crate::raster::init_gdal();
    let drivers = DRIVERS
        .iter()
        .map(|&(name, purpose)| DriverStatus {
            name,
            purpose,
            available: gdal::DriverManager::get_driver_by_name(name).is_ok(),
        })
        .collect();
    DoctorReport {
        tessera_version: env!("CARGO_PKG_VERSION"),
        gdal_version: gdal::version::version_info("RELEASE_NAME"),
        drivers,
        onnxruntime: Runtime::load(ort_lib)
            .map(|rt| rt.info.clone())
            .map_err(|e| e.to_string()),
    }
}
