//! One module per operation: its kernel parameters (a `#[repr(C)]` mirror
//! of the WGSL `struct Params`) and the launches that build `Dispatch`es for
//! it. Each names its CPU oracle in `crate::cpu`, against which
//! `tests/kernels.rs` checks it.

pub mod bench;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod loss;
pub mod norm;
pub mod optim;

use crate::gpu::{Gpu, GpuError, Grid, Result, Tuning, View, WINDOW_BYTES, WORKGROUP};

/// A kernel's precondition failed: the launch is refused, nothing dispatched.
fn ensure(ok: bool, kernel: &str, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(GpuError::Shape { kernel: kernel.to_string(), message: message() })
    }
}

/// Views of the same logical shape (elementwise inputs and outputs).
fn ensure_same(kernel: &str, a: &View, b: &View) -> Result<()> {
    ensure(a.shape() == b.shape(), kernel, || format!("shapes {} and {} differ", a.shape(), b.shape()))
}

/// Two slices of one buffer that do not overlap (an operand read from the
/// buffer its result is written to).
fn ensure_apart(kernel: &str, a: &View, b: &View) -> Result<()> {
    ensure(a.c_offset + a.c <= b.c_offset || b.c_offset + b.c <= a.c_offset, kernel, || {
        format!("channels {}.. and {}.. of one buffer overlap", a.c_offset, b.c_offset)
    })
}

/// The grid of a run kernel over the planes of `v`: one invocation per run
/// of `Gpu::run_length` pixels.
fn run_grid(gpu: &Gpu, v: &View) -> Grid {
    let s = v.shape();
    Grid::Elements(s.n * s.c * s.plane().div_ceil(gpu.run_length()))
}

/// Workgroups the per-channel reductions (norm statistics, bias gradient)
/// aim for on a hardware GPU: batch norm over 3 channels is 3 groups, a
/// workgroup each, where an H200 has 132 multiprocessors (seo2018's moments
/// took 0.25 ms a layer that way, 2026-11-28).
const GPU_REDUCTION_WORKGROUPS: usize = 512;

/// ... and on a CPU adapter: its 2 threads took 3 workgroups (seo2018's
/// 3-channel layers) in two rounds; 8 made its step 1.13 -> 1.06 s on
/// lavapipe, 16 no faster (2026-11-28, A/B/A/B).
const CPU_REDUCTION_WORKGROUPS: usize = 8;

/// Parts each of `groups` reductions over planes of `plane` pixels is split
/// into (ranges of each plane's pixels, each at least one trip of a
/// workgroup's runs), their sums then added in order by another pass.
fn reduction_parts(gpu: &Gpu, groups: usize, plane: usize) -> usize {
    let target = match gpu.tuning() {
        Tuning::Cpu => CPU_REDUCTION_WORKGROUPS,
        Tuning::Gpu => GPU_REDUCTION_WORKGROUPS,
    };
    let most = plane.div_ceil(WORKGROUP * gpu.run_length());
    target.div_ceil(groups).min(most).max(1)
}

/// The uniform offset alignment in floats. Window starts are rounded down
/// to it; one that would run past its buffer ends at the buffer's end (the
/// pool's buffers are whole multiples of the alignment and of a window).
fn window_align(gpu: &Gpu) -> usize {
    (gpu.limits.min_uniform_buffer_offset_alignment as usize / 4).max(1)
}

/// The 64 KiB window of view `v` holding the `len` elements of plane
/// (n, c) from element `from`: its offset in the tensor (bytes) and where
/// they start in it. None where no window can: a buffer under 64 KiB, an
/// alignment that would leave them past its end, a start before the
/// tensor's (a tensor sharing a buffer).
pub(super) fn window_of(gpu: &Gpu, v: &View, n: usize, c: usize, from: usize, len: usize) -> Option<(u64, u32)> {
    let window = WINDOW_BYTES as usize / 4;
    let align = window_align(gpu);
    let s = v.shape();
    let origin = v.tensor.byte_offset() as usize / 4;
    let at = origin + ((n * v.tensor.shape.c + v.c_offset + c) * s.plane() + from);
    let start = (at / align * align).min((v.tensor.buffer().size() as usize / 4).checked_sub(window)?);
    (start >= origin && at + len <= start + window).then(|| (((start - origin) * 4) as u64, u32_of(at - start)))
}

fn u32_of(v: usize) -> u32 {
    u32::try_from(v).expect("tensor dimensions are bounded by the binding-size check")
}

#[cfg(test)]
mod tests {
    use crate::gpu::shaders::{struct_size, Family};

    #[test]
    fn every_params_struct_mirrors_its_wgsl_struct() {
        let rust = [
            (Family::Conv, size_of::<super::conv::Params>()),
            (Family::Norm, size_of::<super::norm::Params>()),
            (Family::Elementwise, size_of::<super::elementwise::Params>()),
            (Family::Dropout, size_of::<super::dropout::Params>()),
            (Family::Loss, size_of::<super::loss::Params>()),
            (Family::Optim, size_of::<super::optim::Params>()),
            (Family::Bench, size_of::<super::bench::Params>()),
        ];
        for (family, size) in rust {
            assert_eq!(struct_size(family, "Params"), Some(size as u32), "{family:?} Params");
            assert_eq!(size % 16, 0, "{family:?} Params is not a multiple of 16 bytes");
        }
    }
}
