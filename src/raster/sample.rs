//! Sample types tessera reads and writes.

use gdal::raster::GdalType;

/// A pixel sample type GDAL can read into and write from.
pub trait Sample: GdalType + Copy + Send + Sync + 'static {
    /// Convert with `as` semantics (saturating for floats into integers).
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! sample {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            #[allow(clippy::cast_possible_truncation, clippy::cast_lossless)]
            fn from_f64(v: f64) -> Self { v as $t }
            #[allow(clippy::cast_precision_loss, clippy::cast_lossless)]
            fn to_f64(self) -> f64 { self as f64 }
        }
    )*};
}
sample!(u8, u16, i16, u32, i32, u64, i64, f32, f64);
