//! Typed GPU tensors: a shape and the pooled buffer holding it (f32, NCHW).

use std::sync::Arc;

use super::pool::PooledBuffer;
use super::{Gpu, GpuError, Result};
use crate::shape::Shape;

/// Usage of every tensor: bound to kernels (as storage, or a 64 KiB window
/// of it as a uniform buffer), uploaded, read back.
const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::UNIFORM)
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A tensor on the GPU: its own buffer, or a part of a buffer holding
/// several (`Gpu::tensors_in_one`). Cloning shares the buffer.
#[derive(Clone)]
pub struct Tensor {
    pub shape: Shape,
    pub(super) buffer: Arc<PooledBuffer>,
    /// Where it starts in the buffer, in bytes (a multiple of the device's
    /// storage offset alignment; 0 for a tensor with a buffer of its own).
    pub(super) offset: u64,
}

impl Tensor {
    pub fn bytes(&self) -> u64 {
        self.shape.numel() as u64 * 4
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.buffer()
    }

    /// Where it starts in `buffer()`, in bytes.
    pub fn byte_offset(&self) -> u64 {
        self.offset
    }

    /// Whether both are one tensor (e.g. two channel slices of one
    /// concatenation buffer, which `ensure_apart` then tells apart).
    pub fn same_storage(&self, other: &Tensor) -> bool {
        self.shares_buffer(other) && self.offset == other.offset
    }

    /// Whether both lie in one wgpu buffer (one tensor, or parts of one).
    pub fn shares_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buffer, &other.buffer)
    }

    /// Whether their bytes overlap.
    pub fn overlaps(&self, other: &Tensor) -> bool {
        self.shares_buffer(other)
            && self.offset < other.offset + other.bytes().max(1)
            && other.offset < self.offset + self.bytes().max(1)
    }

    /// The tensor as a binding: the whole buffer for a tensor with a buffer
    /// of its own, else its part.
    pub(super) fn binding(&self) -> wgpu::BindingResource<'_> {
        if self.offset == 0 && self.bytes().next_multiple_of(256) == self.buffer().size() {
            return self.buffer().as_entire_binding();
        }
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer(),
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes().max(4)),
        })
    }

    /// The whole tensor as a view.
    pub fn view(&self) -> View<'_> {
        View { tensor: self, c_offset: 0, c: self.shape.c, affine: None }
    }

    /// Channels `[c_offset, c_offset + c)`: how a layer reads or writes its
    /// part of the concatenation buffer without a copy.
    pub fn channels(&self, c_offset: usize, c: usize) -> View<'_> {
        assert!(c_offset + c <= self.shape.c, "channels {c_offset}..{} of a {} tensor", c_offset + c, self.shape);
        View { tensor: self, c_offset, c, affine: None }
    }
}

/// A channel slice of a tensor.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub tensor: &'a Tensor,
    pub c_offset: usize,
    pub c: usize,
    /// A deferred norm block: the slice holds the block's input t, and its
    /// values are act(t + Norm(t)), applied by the kernels that read it
    /// from this table of per (sample, channel) entries (mean, gamma /
    /// sqrt(var + eps), beta, activation slope), indexed as the tensor's
    /// channels (written by `ops::norm::moments_deferred`). Only kernels
    /// built for it (conv.wgsl's LAZY) may bind such a view:
    /// `Gpu::dispatch` refuses it elsewhere.
    pub affine: Option<&'a Tensor>,
}

impl<'a> View<'a> {
    /// The logical shape of the slice.
    pub fn shape(&self) -> Shape {
        self.tensor.shape.with_c(self.c)
    }

    /// The view read through a deferred norm block's `table`.
    pub fn deferred(self, table: &'a Tensor) -> View<'a> {
        View { affine: Some(table), ..self }
    }

    /// The values as stored (a deferred block's input).
    pub fn stored(self) -> View<'a> {
        View { affine: None, ..self }
    }
}

impl Gpu {
    /// A tensor whose contents are unspecified (for outputs every element of
    /// which a kernel writes). Refused before any allocation when it exceeds
    /// the device's buffer size limit.
    pub fn tensor(&self, shape: Shape) -> Result<Tensor> {
        let bytes = shape.numel() as u64 * 4;
        if bytes > self.limits.max_buffer_size {
            return Err(GpuError::TooLarge {
                what: format!("a {shape} tensor"),
                bytes,
                limit_name: "max buffer size",
                limit: self.limits.max_buffer_size,
            });
        }
        let buffer = self.scoped(&format!("allocating a {shape} tensor"), || self.pool.take(bytes, TENSOR_USAGE))?;
        Ok(Tensor { shape, buffer, offset: 0 })
    }

    /// Tensors of `shapes` as parts of one zeroed buffer, and the whole
    /// buffer as a vector over them: kernels bind each part alone, and one
    /// launch can update them all (the optimiser). Each part starts at a
    /// multiple of the storage offset alignment; the gaps stay zero.
    pub fn tensors_in_one(&self, shapes: &[Shape]) -> Result<(Tensor, Vec<Tensor>)> {
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment).max(4);
        let mut offsets = Vec::with_capacity(shapes.len());
        let mut end = 0u64;
        for s in shapes {
            offsets.push(end);
            end = (end + s.numel() as u64 * 4).next_multiple_of(align);
        }
        let whole = self.zeros(Shape::vector((end / 4) as usize))?;
        let parts = shapes
            .iter()
            .zip(offsets)
            .map(|(&shape, offset)| Tensor { shape, buffer: whole.buffer.clone(), offset })
            .collect();
        Ok((whole, parts))
    }

    /// A vector of `len` floats that kernels can also read as a uniform
    /// buffer (e.g. the blocked convolution's packed weights). `len` is at
    /// most 16384 (64 KiB, every adapter's minimum uniform binding size).
    pub fn uniform_table(&self, len: usize) -> Result<Tensor> {
        assert!(len <= 16384, "a uniform table of {len} floats exceeds 64 KiB");
        let shape = Shape::vector(len);
        let buffer = self.scoped("allocating a uniform table", || self.pool.take(len as u64 * 4, TENSOR_USAGE))?;
        Ok(Tensor { shape, buffer, offset: 0 })
    }

    pub fn zeros(&self, shape: Shape) -> Result<Tensor> {
        let t = self.tensor(shape)?;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(t.buffer(), 0, None);
        self.queue.submit([encoder.finish()]);
        Ok(t)
    }

    pub fn upload(&self, shape: Shape, data: &[f32]) -> Result<Tensor> {
        let t = self.tensor(shape)?;
        self.write(&t, data)?;
        Ok(t)
    }

    /// Overwrites a tensor's values (queued before the next submission).
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.shape.numel() {
            return Err(GpuError::Shape {
                kernel: "write".into(),
                message: format!("{} values for a {} tensor", data.len(), t.shape),
            });
        }
        self.write_bytes(t, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Writes `bytes` at byte `at` of tensor `t` (the caller keeps within it).
    pub fn write_bytes(&self, t: &Tensor, at: u64, bytes: &[u8]) {
        debug_assert!(at + bytes.len() as u64 <= t.bytes(), "a write past the end of a {} tensor", t.shape);
        self.queue.write_buffer(t.buffer(), t.offset + at, bytes);
    }

    /// Copies a tensor back to the host (waits for the queue).
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t.buffer(), t.offset, t.bytes())?))
    }

    /// A view's values as stored (N x its channels x H x W): one read from
    /// the first sample's slice to the last's.
    pub fn read_view(&self, v: View) -> Result<Vec<f32>> {
        let s = v.tensor.shape;
        let (first, len) = (s.index(0, v.c_offset, 0, 0), v.c * s.plane());
        let span = s.index(s.n - 1, v.c_offset, 0, 0) + len - first;
        let bytes = self.read_bytes(v.tensor.buffer(), v.tensor.offset + 4 * first as u64, 4 * span as u64)?;
        let read: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        let per_sample = s.c * s.plane();
        Ok((0..s.n).flat_map(|n| read[n * per_sample..n * per_sample + len].iter().copied()).collect())
    }

    /// Copies `bytes` from byte `offset` of `buffer` (COPY_SRC) back to the
    /// host, in a submission of its own, and waits for it: the one read-back
    /// path.
    pub(super) fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let staging = self.pool.take(bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, staging.buffer(), 0, bytes);
        self.queue.submit([encoder.finish()]);
        let slice = staging.buffer().slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        rx.recv()
            .map_err(|e| GpuError::Device(e.to_string()))?
            .map_err(|e| GpuError::Device(format!("mapping a read-back buffer: {e}")))?;
        let data = slice.get_mapped_range().map_err(|e| GpuError::Device(e.to_string()))?.to_vec();
        staging.buffer().unmap();
        Ok(data)
    }

    pub fn pool_stats(&self) -> super::PoolStats {
        self.pool.stats()
    }

    /// Pipelines compiled so far in this process.
    pub fn pipelines_compiled(&self) -> usize {
        self.pipelines.len()
    }
}
