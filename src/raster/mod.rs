//! Scene reading: opening any GDAL raster, describing it, and reading windows of it.
//!
//! This module owns everything that touches GDAL's raster API. A [`Scene`] is an opened
//! dataset plus its validated description ([`SceneInfo`]); [`WindowReader`] reads resampled,
//! masked windows from it; [`BandMapping`] and [`Scaling`] say which bands feed a model and
//! how their values map to the model's input range. GDAL handles are `Send` but not `Sync`:
//! every reader thread opens its own [`Scene`].

mod bands;
mod budget;
mod geotransform;
mod read;
mod sample;
mod scaling;
mod scene;

pub use bands::BandMapping;
pub(crate) use budget::{check as check_budget, dtype_bytes};
pub use budget::{memory_budget, MEMORY_BUDGET_VAR};
pub use geotransform::GeoTransform;
pub use read::{Placement, Resampling, WindowReader, WindowRequest};
pub use sample::Sample;
pub use scaling::{BandScale, Scaling, ScalingSpec};
pub use scene::{special_file_kind, BandInfo, CrsInfo, Footprint, OpenOptions, Scene, SceneInfo};

use thiserror::Error;

/// What can go wrong while opening or reading a scene. Every variant names the file.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum RasterError {
    #[error("{path}: no such file")]
    NotFound { path: String },
    #[error("{path}: not a readable raster ({reason})")]
    Open { path: String, reason: String },
    #[error("{path}: raster has zero size ({width}x{height}, {bands} bands)")]
    Empty {
        path: String,
        width: usize,
        height: usize,
        bands: usize,
    },
    #[error("{path}: no georeferencing (no geotransform or no CRS); pass --pixel-coords to work in pixel coordinates")]
    NoGeoreference { path: String },
    #[error("{path}: degenerate geotransform {gt:?} (not invertible)")]
    DegenerateTransform { path: String, gt: [f64; 6] },
    #[error("{path}: band {band} does not exist (the raster has {count} bands)")]
    NoSuchBand {
        path: String,
        band: usize,
        count: usize,
    },
    #[error("{path}: band {band} has data type {dtype}, which tessera cannot read")]
    UnsupportedType {
        path: String,
        band: usize,
        dtype: String,
    },
    #[error("{path}: reading window x={x} y={y} {w}x{h} failed: {reason}")]
    Read {
        path: String,
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        reason: String,
    },
    #[error("{path}: band {band} statistics failed: {reason}")]
    Statistics {
        path: String,
        band: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {what} would need {bytes} bytes, more than the memory budget of {budget} bytes (refused before reading; set TESSERA_MEMORY_BUDGET=BYTES, with an optional K/M/G suffix, to allow it)")]
    OverBudget {
        path: String,
        what: String,
        bytes: u128,
        budget: u64,
    },
}

pub type Result<T, E = RasterError> = std::result::Result<T, E>;

/// The human part of a GDAL error: the CPL message when there is one.
pub(crate) fn gdal_reason(err: &gdal::errors::GdalError) -> String {
    use gdal::errors::GdalError;
    match err {
        GdalError::CplError { msg, .. } if !msg.is_empty() => msg.trim().to_string(),
        GdalError::NullPointer { msg, .. } if !msg.is_empty() => msg.trim().to_string(),
        other => other.to_string(),
    }
}

/// The last CPL error message, for raw `gdal_sys` calls.
pub(crate) fn last_cpl_message() -> String {
    // SAFETY: CPLGetLastErrorMsg returns a pointer to a thread-local, NUL-terminated buffer
    // that stays valid until the next CPL call on this thread; we copy it at once.
    let msg = unsafe {
        let ptr = gdal_sys::CPLGetLastErrorMsg();
        if ptr.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned()
        }
    };
    if msg.trim().is_empty() {
        "unknown GDAL error".to_string()
    } else {
        msg.trim().to_string()
    }
}

/// GDAL's switch for raw VRT bands, which tessera turns off unless the environment sets it.
pub const RAW_VRT_VAR: &str = "GDAL_VRT_ENABLE_RAWRASTERBAND";

/// Process-wide GDAL set-up, done once: register drivers, keep GDAL's own messages off
/// stderr (errors come back through return values and are reported once, on one line),
/// disable raw VRT bands (see [`RAW_VRT_VAR`]) unless the environment enables them, and let
/// `GDAL_*` environment variables keep their usual meaning.
pub fn init_gdal() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gdal::DriverManager::register_all();
        // A VRT's raw bands (VRTRawRasterBand) read any local file as pixels (`/etc/passwd`
        // into output chips): off unless the user opts in with
        // GDAL_VRT_ENABLE_RAWRASTERBAND=YES in the environment.
        if std::env::var_os(RAW_VRT_VAR).is_none() {
            let _ = gdal::config::set_config_option(RAW_VRT_VAR, "NO");
        }
        // Masks of written GeoTIFFs go inside the file, not into .msk sidecars.
        if std::env::var_os("GDAL_TIFF_INTERNAL_MASK").is_none() {
            let _ = gdal::config::set_config_option("GDAL_TIFF_INTERNAL_MASK", "YES");
        }
        gdal::config::set_error_handler(|class, _num, msg| {
            if matches!(class, gdal::errors::CplErrType::Debug) {
                return;
            }
            if std::env::var_os("TESSERA_GDAL_MESSAGES").is_some() {
                eprintln!("GDAL: {msg}");
            }
        });
    });
}

/// Bound GDAL's block cache (shared by all open datasets) unless the user set
/// `GDAL_CACHEMAX` themselves. Tiling reads each block row a bounded number of times, so a
/// cache that holds a few block rows of every reader's stripe is enough; a larger cache only
/// grows memory with the scene's area.
pub fn set_block_cache_bytes(bytes: usize) {
    if std::env::var_os("GDAL_CACHEMAX").is_some() {
        return;
    }
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    // SAFETY: plain setter on a process-wide integer.
    unsafe { gdal_sys::GDALSetCacheMax64(bytes) };
}
