//! Image preprocessing shared by the families: the manifest's `[preprocess]` normalisation as
//! a small value reader threads can share ([`Normalizer`]), and the element types an image
//! batch arrives in ([`ImageElement`]).

use super::Preprocess;

/// Per-channel normalisation `(v - mean) / std` of values already scaled to `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalizer {
    pub mean: [f32; 3],
    pub inv_std: [f32; 3],
    /// Swap the first and third planes (models trained on BGR).
    pub bgr: bool,
    /// Multiplier from tessera's `[0, 1]` scaled values to the model's `v / value_range`
    /// (`255 / value_range`: 1 for models fed `v / 255`, 255 for models fed raw 0..255).
    pub gain: f32,
    /// The graph normalises (uint8 input): produce whole 0..255 values instead, the mean
    /// colour for invalid pixels.
    pub quantize: bool,
}

impl Normalizer {
    /// The normalisation a manifest's `[preprocess]` section describes.
    pub fn from_preprocess(p: &Preprocess) -> Normalizer {
        let at = |v: &[f32], i: usize, d: f32| v.get(i).copied().unwrap_or(d);
        Normalizer {
            mean: [
                at(&p.mean, 0, 0.0),
                at(&p.mean, 1, 0.0),
                at(&p.mean, 2, 0.0),
            ],
            inv_std: [
                1.0 / at(&p.std, 0, 1.0),
                1.0 / at(&p.std, 1, 1.0),
                1.0 / at(&p.std, 2, 1.0),
            ],
            bgr: p.channel_order == "bgr",
            gain: 255.0 / p.value_range,
            quantize: false,
        }
    }

    /// Normalise one tile in place: `pixels` holds 3 planes of values scaled to `[0, 1]`
    /// (for 8-bit scenes `v / 255`), which become `(v / value_range - mean) / std`; invalid
    /// pixels become 0 after normalisation (the mean colour).
    pub fn apply(&self, pixels: &mut [f32], valid: &[u8]) {
        let plane = pixels.len() / 3;
        if self.bgr {
            let (a, rest) = pixels.split_at_mut(plane);
            a.swap_with_slice(&mut rest[plane..]);
        }
        if self.quantize {
            for c in 0..3 {
                let fill = (self.mean[c] * 255.0).round().clamp(0.0, 255.0);
                for (v, &ok) in pixels[c * plane..(c + 1) * plane].iter_mut().zip(valid) {
                    *v = if ok != 0 {
                        (*v * 255.0).round().clamp(0.0, 255.0)
                    } else {
                        fill
                    };
                }
            }
            return;
        }
        for c in 0..3 {
            let (m, inv, g) = (self.mean[c], self.inv_std[c], self.gain);
            for (v, &ok) in pixels[c * plane..(c + 1) * plane].iter_mut().zip(valid) {
                *v = if ok != 0 { (*v * g - m) * inv } else { 0.0 };
            }
        }
    }
}

/// Element types an image batch arrives in: normalised float32, or (uint8-input packages)
/// raw bytes.
pub trait ImageElement: Copy + 'static {
    /// Raw bytes, valid only for uint8-input packages.
    const BYTES: bool;
    /// The value as a byte (floats hold whole numbers 0..255 for uint8-input packages).
    fn to_byte(self) -> u8;
    fn to_float(self) -> f32;
    /// `dst[i] = src[i].to_byte()`: a plain copy for bytes.
    fn copy_bytes(dst: &mut [u8], src: &[Self]) {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = v.to_byte();
        }
    }
    /// `dst[i] = src[i].to_float()`: a plain copy for floats.
    fn copy_floats(dst: &mut [f32], src: &[Self]) {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = v.to_float();
        }
    }
}

impl ImageElement for f32 {
    const BYTES: bool = false;
    fn to_byte(self) -> u8 {
        self as u8
    }
    fn to_float(self) -> f32 {
        self
    }
    fn copy_floats(dst: &mut [f32], src: &[f32]) {
        let n = dst.len().min(src.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
}

impl ImageElement for u8 {
    const BYTES: bool = true;
    fn to_byte(self) -> u8 {
        self
    }
    fn to_float(self) -> f32 {
        f32::from(self)
    }
    fn copy_bytes(dst: &mut [u8], src: &[u8]) {
        let n = dst.len().min(src.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
}

impl Normalizer {
    /// The mean colour as bytes: what invalid pixels of a byte tile become (the graph then
    /// normalises them to about 0, as [`Normalizer::apply`] does for float tiles).
    pub fn mean_bytes(&self) -> [u8; 3] {
        self.mean
            .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8)
    }

    /// Prepare a byte tile for a uint8-input model in place: invalid pixels become the mean
    /// colour, planes swapped for BGR models.
    pub fn apply_bytes(&self, pixels: &mut [u8], valid: &[u8]) {
        let plane = pixels.len() / 3;
        if self.bgr {
            let (a, rest) = pixels.split_at_mut(plane);
            a.swap_with_slice(&mut rest[plane..]);
        }
        let fill = self.mean_bytes();
        for (c, f) in fill.iter().enumerate() {
            for (v, &ok) in pixels[c * plane..(c + 1) * plane].iter_mut().zip(valid) {
                if ok == 0 {
                    *v = *f;
                }
            }
        }
    }
}
