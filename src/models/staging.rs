//! Image batches staged straight into an image encoder's input memory: ONNX Runtime tensors
//! allocated once (in page-locked host memory when the encoder runs on a GPU) and refilled
//! for every batch, as bytes (uint8 graphs) or floats.

use ndarray::ArrayView4;

use super::preprocess::ImageElement;
use super::InputType;
use crate::runtime::{ModelSession, SessionOptions};

/// Tiles gathered straight into the image encoder's input memory (page-locked host memory
/// when the encoder runs on a GPU): each tile is copied in once, and a full batch goes to ONNX
/// Runtime as it is ([`DualEncoderModel::classify_staged`]). Made by [`DualEncoderModel::staged_batch`].
///
/// [`DualEncoderModel::classify_staged`]: super::dual_encoder::DualEncoderModel::classify_staged
/// [`DualEncoderModel::staged_batch`]: super::dual_encoder::DualEncoderModel::staged_batch
pub struct StagedBatch<T: ImageElement> {
    pub(super) tensor: StagedTensor,
    pub(super) per_image: usize,
    pub(super) capacity: usize,
    pub(super) len: usize,
    pub(super) _element: std::marker::PhantomData<T>,
}

pub(super) enum StagedTensor {
    Bytes(ort::value::Tensor<u8>),
    Floats(ort::value::Tensor<f32>),
}

impl<T: ImageElement> std::fmt::Debug for StagedBatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBatch")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .finish()
    }
}

impl<T: ImageElement> StagedBatch<T> {
    /// Add a tile's `3 * size * size` samples (ignored when the batch is full); true when the
    /// batch is now full.
    pub fn push(&mut self, pixels: &[T]) -> bool {
        if self.len < self.capacity {
            let at = self.len * self.per_image;
            let n = self.per_image.min(pixels.len());
            match &mut self.tensor {
                StagedTensor::Bytes(t) => {
                    u8::copy_from(&mut t.extract_tensor_mut().1[at..at + n], &pixels[..n]);
                }
                StagedTensor::Floats(t) => {
                    f32::copy_from(&mut t.extract_tensor_mut().1[at..at + n], &pixels[..n]);
                }
            }
            self.len += 1;
        }
        self.len == self.capacity
    }

    /// Tiles in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empty the batch (its memory is kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The image encoder's input tensors, allocated once by ONNX Runtime and refilled for every
/// batch (one per batch size seen: full batches and a last partial one). When the encoder runs
/// on CUDA or TensorRT they live in page-locked (pinned) host memory, so the copy to the GPU is
/// a direct DMA instead of a staged copy out of pageable memory; elsewhere in plain host memory.
pub(super) struct InputStaging {
    pub(super) allocator: ort::memory::Allocator,
    /// The allocator is CUDA's pinned host memory.
    pub(super) pinned: bool,
    pub(super) bytes: std::collections::HashMap<usize, ort::value::Tensor<u8>>,
    pub(super) floats: std::collections::HashMap<usize, ort::value::Tensor<f32>>,
}

impl InputStaging {
    pub(super) fn new(image: &ModelSession, options: &SessionOptions) -> InputStaging {
        use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
        let pinned = image
            .cuda_device(options)
            .map(|id| {
                MemoryInfo::new(
                    AllocationDevice::CUDA_PINNED,
                    id,
                    AllocatorType::Device,
                    MemoryType::CPUInput,
                )
                .and_then(|info| Allocator::new(&image.session, info))
            })
            .and_then(|r| match r {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(
                        "pinned host memory unavailable ({e}): batches are copied from pageable memory"
                    );
                    None
                }
            });
        InputStaging {
            pinned: pinned.is_some(),
            allocator: pinned.unwrap_or_default(),
            bytes: Default::default(),
            floats: Default::default(),
        }
    }
}

/// Copy a batch into the reused (pinned on GPUs) input tensor of its size: as bytes for uint8
/// graphs (the quantised values are whole numbers 0..255), else as floats.
pub(super) fn stage<'a, T: ImageElement>(
    st: &'a mut InputStaging,
    input_type: InputType,
    batch: &ArrayView4<'_, T>,
) -> Result<ort::value::ValueRef<'a, ort::value::DynTensorValueType>, ort::Error> {
    let shape = batch.shape();
    let dims = [shape[0], 3, shape[2], shape[2]];
    if input_type == InputType::Uint8 {
        stage_into(&mut st.bytes, &st.allocator, dims, batch)
    } else {
        stage_into(&mut st.floats, &st.allocator, dims, batch)
    }
}

/// [`stage`] into the tensors of element type `E`, one per batch size.
pub(super) fn stage_into<'a, E: StagedElement, T: ImageElement>(
    tensors: &'a mut std::collections::HashMap<usize, ort::value::Tensor<E>>,
    allocator: &ort::memory::Allocator,
    dims: [usize; 4],
    batch: &ArrayView4<'_, T>,
) -> Result<ort::value::ValueRef<'a, ort::value::DynTensorValueType>, ort::Error> {
    let t = match tensors.entry(dims[0]) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(ort::value::Tensor::<E>::new(allocator, dims)?)
        }
    };
    let (_, data) = t.extract_tensor_mut();
    // Contiguous batches (the usual case) as one copy: a memcpy when the types agree.
    match batch.as_slice() {
        Some(src) => E::copy_from(data, src),
        None => {
            for (d, &v) in data.iter_mut().zip(batch.iter()) {
                *d = E::convert(v);
            }
        }
    }
    Ok(t.upcast_ref())
}

/// The element types of the image encoder's input: bytes (uint8 graphs) or floats.
pub(super) trait StagedElement:
    ort::value::PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static
{
    fn convert<T: ImageElement>(v: T) -> Self;
    fn copy_from<T: ImageElement>(dst: &mut [Self], src: &[T]);
}

impl StagedElement for u8 {
    fn convert<T: ImageElement>(v: T) -> u8 {
        v.to_byte()
    }
    fn copy_from<T: ImageElement>(dst: &mut [u8], src: &[T]) {
        T::copy_bytes(dst, src);
    }
}

impl StagedElement for f32 {
    fn convert<T: ImageElement>(v: T) -> f32 {
        v.to_float()
    }
    fn copy_from<T: ImageElement>(dst: &mut [f32], src: &[T]) {
        T::copy_floats(dst, src);
    }
}
