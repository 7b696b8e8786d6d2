//! Recorded kernel launches. A `Dispatch` owns everything one launch needs
//! (pipeline, bind group, parameter buffer, grid), created once when a plan
//! is built; recording it into a pass allocates and compiles nothing, which
//! is what lets a training step replay its dispatches every step.

use std::cell::Cell;
use std::sync::Arc;

use bytemuck::Pod;

use super::pool::PooledBuffer;
use super::shaders::Family;
use super::tensor::{Tensor, View};
use super::{Gpu, GpuError, Result};

/// Invocations per workgroup of every kernel (`WG` in shaders/common.wgsl).
pub const WORKGROUP: usize = 256;

/// One entry point of a family, with its pipeline-overridable constants.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub family: Family,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, f64)>,
}

impl Kernel {
    pub fn new(family: Family, entry: &'static str) -> Self {
        Kernel { family, entry, constants: Vec::new() }
    }

    pub fn with(mut self, name: &'static str, value: f64) -> Self {
        self.constants.push((name, value));
        self
    }

    /// What tells pipelines apart (the constants' bits: f64 is not `Eq`).
    pub(crate) fn key(&self) -> KernelKey {
        (self.family, self.entry, self.constants.iter().map(|&(name, v)| (name, v.to_bits())).collect())
    }
}

pub(crate) type KernelKey = (Family, &'static str, Vec<(&'static str, u64)>);

/// A launch as `Gpu::prewarm` replays it: the kernel and its parameters'
/// bytes.
pub type Launch = (Kernel, Vec<u8>);

/// How many invocations a launch needs.
#[derive(Clone, Copy, Debug)]
pub enum Grid {
    /// One invocation per element: ceil(count / 256) workgroups.
    Elements(usize),
    /// One workgroup per item (reductions).
    Groups(usize),
}

/// What a launch does, counted analytically for the profile and the bench:
/// arithmetic (BENCH.md's convention: 2 per multiply-add of a convolution,
/// 0 for everything else) and the compulsory memory traffic (every bound
/// operand read or written once).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
}

/// Bytes of a uniform window (`Gpu::dispatch_windowed`): every adapter's
/// minimum uniform binding size.
pub const WINDOW_BYTES: u64 = 65536;

/// A window of a tensor's buffer bound as a uniform buffer: WINDOW_BYTES
/// from `offset` (a multiple of the device's uniform offset alignment,
/// within the buffer).
pub struct Window<'a> {
    pub binding: u32,
    pub tensor: &'a Tensor,
    pub offset: u64,
}

pub struct Dispatch {
    label: String,
    cost: Cost,
    /// None in a plan built without pipelines (`Gpu::planning`), never run.
    compiled: Option<(Arc<wgpu::ComputePipeline>, wgpu::BindGroup)>,
    params: Arc<PooledBuffer>,
    workgroups: (u32, u32),
    /// Where the parameters hold the training step, if they do (`set_step`).
    step_at: Option<u64>,
    /// The kernel and its first parameters, for `Gpu::prewarm`.
    launch: Launch,
    /// The bound tensors' buffers stay out of the pool while this exists.
    _bound: Vec<Arc<PooledBuffer>>,
}

impl Dispatch {
    /// The kernel and the parameters this launch was built with.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// Sets the arithmetic count (the traffic comes from the bindings).
    pub fn with_flops(mut self, flops: f64) -> Self {
        self.cost.flops = flops;
        self
    }

    /// Overrides the traffic where a binding is read and written.
    pub fn with_bytes(mut self, bytes: f64) -> Self {
        self.cost.bytes = bytes;
        self
    }

    /// Rewrites the parameters (e.g. the optimiser step) before the next
    /// submission; no allocation.
    pub fn set_params<P: Pod>(&self, gpu: &Gpu, params: &P) {
        gpu.queue.write_buffer(self.params.buffer(), 0, bytemuck::bytes_of(params));
    }

    /// Marks the u32 at byte `offset` of the parameters as the training
    /// step (a dropout mask's counter), which `set_step` rewrites.
    pub fn with_step_at(mut self, offset: usize) -> Self {
        self.step_at = Some(offset as u64);
        self
    }

    /// Sets the training step before the next submission, where the
    /// parameters hold one (`with_step_at`); else nothing.
    pub fn set_step(&self, gpu: &Gpu, step: u32) {
        if let Some(at) = self.step_at {
            gpu.queue.write_buffer(self.params.buffer(), at, bytemuck::bytes_of(&step));
        }
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        let (pipeline, bind_group) =
            self.compiled.as_ref().unwrap_or_else(|| panic!("{}: a launch built by Gpu::planning ran", self.label));
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups.0, self.workgroups.1, 1);
    }
}

thread_local! {
    /// Set while `Gpu::planning` runs on this thread.
    static PLANNING: Cell<bool> = const { Cell::new(false) };
}

impl Gpu {
    /// Runs `f` with the launches it builds on this thread left without
    /// pipelines and bind groups: plans built only for the memory they hold
    /// (`Graph::memory_need`) or the launches they list (`Gpu::prewarm`),
    /// never run. Creating the pipelines is most of building a plan on
    /// lavapipe (its NIR front end: 4.5 s of a lungnet 256x256 start,
    /// 2026-11-29); without them a plan takes milliseconds.
    pub fn planning<T>(&self, f: impl FnOnce() -> T) -> T {
        /// Restores the flag however `f` ends.
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                PLANNING.with(|p| p.set(self.0));
            }
        }
        let _restore = Restore(PLANNING.with(|p| p.replace(true)));
        f()
    }
}

impl Gpu {
    /// Builds a launch of `kernel` over `grid` with `params` at binding 0
    /// and each tensor at its binding. Every bound tensor is checked against
    /// the device's storage-binding limit BEFORE anything is created or
    /// dispatched.
    pub fn dispatch<P: Pod>(
        &self,
        label: String,
        kernel: &Kernel,
        params: &P,
        bindings: &[(u32, View)],
        grid: Grid,
    ) -> Result<Dispatch> {
        self.dispatch_windowed(label, kernel, params, bindings, &[], grid)
    }

    /// `dispatch` with uniform windows into tensors besides (the windowed
    /// convolution). A window past its buffer's end or off the alignment is
    /// refused (a bug in the caller, named).
    pub fn dispatch_windowed<P: Pod>(
        &self,
        label: String,
        kernel: &Kernel,
        params: &P,
        bindings: &[(u32, View)],
        windows: &[Window],
        grid: Grid,
    ) -> Result<Dispatch> {
        let align = u64::from(self.limits.min_uniform_buffer_offset_alignment);
        for w in windows {
            if let Some((b, _)) = bindings.iter().find(|(_, v)| v.tensor.shares_buffer(w.tensor)) {
                return Err(GpuError::Shape {
                    kernel: label,
                    message: format!("window {} and binding {b} are one buffer", w.binding),
                });
            }
            let start = w.tensor.offset + w.offset;
            if start % align != 0 || start + WINDOW_BYTES > w.tensor.buffer().size() {
                return Err(GpuError::Shape {
                    kernel: label,
                    message: format!(
                        "window at byte {} of the {} tensor (buffer of {} bytes, alignment {align})",
                        w.offset,
                        w.tensor.shape,
                        w.tensor.buffer().size()
                    ),
                });
            }
        }
        let lazy = kernel.constants.contains(&("LAZY", 1.0));
        if let Some((b, _)) = bindings.iter().find(|(_, v)| v.affine.is_some() && !lazy) {
            return Err(GpuError::Shape {
                kernel: label,
                message: format!(
                    "binding {b} is a deferred norm block's input, which {} would read as stored values",
                    kernel.entry
                ),
            });
        }
        let limit = self.limits.max_storage_buffer_binding_size;
        for (binding, view) in bindings {
            let t = view.tensor;
            if t.bytes() > limit {
                return Err(GpuError::TooLarge {
                    what: format!("{label}: the {} tensor at binding {binding}", t.shape),
                    bytes: t.bytes(),
                    limit_name: "max storage binding size",
                    limit,
                });
            }
        }
        for (i, (a, ta)) in bindings.iter().enumerate() {
            if let Some((b, _)) = bindings[i + 1..].iter().find(|(_, tb)| ta.tensor.overlaps(tb.tensor)) {
                return Err(GpuError::Shape {
                    kernel: label,
                    message: format!(
                        "bindings {a} and {b} overlap in one buffer; a dispatch cannot read and write the same \
                         memory through two bindings (read from another buffer, or use an in-place kernel)"
                    ),
                });
            }
        }
        let kernel = &kernel.clone().with("RUN", self.run_length() as f64);
        let workgroups = self.fold(&label, grid)?;
        let bytes = bytemuck::bytes_of(params);
        let launch = (kernel.clone(), bytes.to_vec());
        debug_assert_eq!(bytes.len() % 16, 0, "{label}: Params must be a multiple of 16 bytes");
        let params_buf = self.pool.take(bytes.len() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let planning = PLANNING.with(Cell::get);
        let compiled = self.scoped(&label, || {
            self.queue.write_buffer(params_buf.buffer(), 0, bytes);
            if planning {
                return None;
            }
            let compiled = self.pipelines.get(&self.device, kernel);
            let mut entries =
                vec![wgpu::BindGroupEntry { binding: 0, resource: params_buf.buffer().as_entire_binding() }];
            entries.extend(
                bindings.iter().map(|(b, v)| wgpu::BindGroupEntry { binding: *b, resource: v.tensor.binding() }),
            );
            entries.extend(windows.iter().map(|w| wgpu::BindGroupEntry {
                binding: w.binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: w.tensor.buffer(),
                    offset: w.tensor.offset + w.offset,
                    size: wgpu::BufferSize::new(WINDOW_BYTES),
                }),
            }));
            entries.retain(|e| compiled.binds(e.binding));
            let pipeline = compiled.pipeline;
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            Some((pipeline, bind_group))
        })?;
        let bytes = bindings.iter().map(|(_, v)| v.shape().numel() as f64 * 4.0).sum();
        Ok(Dispatch {
            label,
            cost: Cost { flops: 0.0, bytes },
            compiled,
            params: params_buf,
            workgroups,
            step_at: None,
            launch,
            _bound: bindings
                .iter()
                .map(|(_, v)| v.tensor.buffer.clone())
                .chain(windows.iter().map(|w| w.tensor.buffer.clone()))
                .collect(),
        })
    }

    /// Folds a 1-D grid into (x, y) workgroups within the per-dimension limit
    /// (the shaders unfold it: `element_index`, `group_index`).
    fn fold(&self, label: &str, grid: Grid) -> Result<(u32, u32)> {
        let groups = match grid {
            Grid::Elements(n) => n.div_ceil(WORKGROUP),
            Grid::Groups(n) => n,
        }
        .max(1) as u64;
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(GpuError::Shape {
                kernel: label.to_string(),
                message: format!("{groups} workgroups exceed the device's grid of {max} x {max}"),
            });
        }
        Ok((x as u32, y as u32))
    }

    /// Records `dispatches` in order into one compute pass and submits them
    /// as one command buffer (wgpu orders dependent dispatches in a pass).
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        self.scoped("submitting kernels", || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                for d in dispatches {
                    d.record(&mut pass);
                }
            }
            self.queue.submit([encoder.finish()]);
        })?;
        self.check()
    }
}
