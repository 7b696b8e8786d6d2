//! Compiling a plan's kernels ahead, on the spare cores (CPU adapters).
//!
//! lavapipe compiles a pipeline's code with LLVM at its first launch, on the
//! one thread that runs the device's queue (and again for a launch whose
//! values of the few parameters it inlines, those deciding branches and
//! loop bounds, make the code much smaller: Mesa 22.3's
//! `update_inline_shader_state`). So a cold start compiles the first step's
//! kernels one after another on one core while the others wait
//! (docs/KERNELS.md, "Start-up"). What it compiles goes into Mesa's shader
//! cache on disk, keyed by the code, where every device of every process
//! finds it. `Gpu::prewarm` therefore opens twin devices on the same
//! adapter, one per spare core, each on a thread of its own, and replays
//! there the plans' launches (each one's pipeline and parameter bytes; the
//! other bindings blank buffers) over zero workgroups: nothing runs, but
//! lavapipe compiles the code and caches it. The twins take each plan's
//! launches from the last one back while the queue takes them from the
//! first, so that most kernels are compiled once. Hardware drivers compile
//! at pipeline creation, so only CPU adapters prewarm.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wgpu::util::DeviceExt;

use super::device::request_device;
use super::dispatch::{Dispatch, Launch};
use super::pipelines::PipelineCache;
use super::{Gpu, GpuError, Result, Tuning};

/// Twin devices at most, whatever the cores: each holds a device and
/// compiles one launch at a time.
const MAX_TWINS: usize = 4;

/// A twin stops once the first launches of QUICK_RUN of its pipelines in a
/// row each took less than QUICK: the cache holds what it replays by then,
/// compiled before (a warm start) or by the queue, which has passed it. A
/// pipeline's first launch took 16 ms to 5.5 s where it compiled, 0.3-21
/// ms where the cache held it (lungnet at 64x64 and 256x256 on lavapipe,
/// 2026-11-29); the pipeline's later launches mostly reuse its code (0.1
/// ms) and do not count.
const QUICK: Duration = Duration::from_millis(25);
const QUICK_RUN: usize = 8;

/// The twins at work; dropping it stops them after the launch each is
/// compiling and waits for them.
pub struct Prewarm {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Prewarm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            // A twin that panicked compiled less; nothing else depends on it.
            let _ = t.join();
        }
    }
}

impl Gpu {
    /// Starts compiling the launches of `plans` (each in the order the
    /// queue makes them, the plans in the order they first run) on twin
    /// devices, on Vulkan CPU adapters (lavapipe) with a spare core, unless
    /// `DILASEG_PREWARM=0` or Mesa's shader cache is off
    /// (`MESA_SHADER_CACHE_DISABLE`: the twins' work would reach nobody and
    /// only take cores from the queue); None otherwise. Keep the guard while
    /// the plans make their first launches.
    pub fn prewarm(&self, plans: &[Vec<&Dispatch>]) -> Option<Prewarm> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let no_cache = std::env::var("MESA_SHADER_CACHE_DISABLE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "y"));
        let off = no_cache || std::env::var("DILASEG_PREWARM").is_ok_and(|v| v == "0");
        // Measured on lavapipe through Vulkan only: GL's software adapter
        // compiles elsewhere and is left alone.
        let vulkan_cpu = self.info.device_type == wgpu::DeviceType::Cpu && self.info.backend == wgpu::Backend::Vulkan;
        if self.tuning() != Tuning::Cpu || !vulkan_cpu || cores < 2 || off {
            return None;
        }
        let todo = Arc::new(Mutex::new(distinct_launches(plans)));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..(cores - 1).min(MAX_TWINS))
            .map(|_| {
                let (todo, stop) = (todo.clone(), stop.clone());
                let (adapter, features, limits) = (self.adapter.clone(), self.features, self.limits.clone());
                std::thread::spawn(move || {
                    // A twin that fails to open or to replay a launch stops:
                    // the queue compiles what it leaves.
                    let Ok(twin) = Twin::open(&adapter, features, &limits) else { return };
                    let mut quick = 0;
                    while !stop.load(Ordering::Relaxed) && quick < QUICK_RUN {
                        let Some(launch) = todo.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else { return };
                        let pipelines = twin.cache.len();
                        let Ok(took) = twin.replay(&launch) else { return };
                        if twin.cache.len() > pipelines {
                            quick = if took < QUICK { quick + 1 } else { 0 };
                        }
                    }
                })
            })
            .collect();
        Some(Prewarm { stop, threads })
    }

    /// What the prewarming twins do, on this thread and to the end: every
    /// distinct launch of `plans` replayed on one twin device; the number
    /// replayed, or the first error (the tests check that every launch of a
    /// plan replays cleanly).
    pub fn replay_on_twin(&self, plans: &[Vec<&Dispatch>]) -> Result<usize> {
        let twin = Twin::open(&self.adapter, self.features, &self.limits)?;
        let launches = distinct_launches(plans);
        for launch in &launches {
            twin.replay(launch)?;
        }
        Ok(launches.len())
    }
}

/// Each distinct launch of `plans` once, each plan's from its last.
fn distinct_launches(plans: &[Vec<&Dispatch>]) -> VecDeque<Launch> {
    let mut seen = HashSet::new();
    plans
        .iter()
        .flat_map(|plan| plan.iter().rev())
        .map(|d| d.launch())
        .filter(|(kernel, params)| seen.insert((kernel.key(), params.clone())))
        .cloned()
        .collect()
}

/// A device of its own on the adapter, with its own pipelines.
struct Twin {
    device: wgpu::Device,
    queue: wgpu::Queue,
    cache: PipelineCache,
}

impl Twin {
    fn open(adapter: &wgpu::Adapter, features: wgpu::Features, limits: &wgpu::Limits) -> Result<Twin> {
        let (device, queue) = request_device(adapter, features, limits)?;
        // wgpu's default answer to an error outside a scope is a panic; a
        // twin's (out of memory, say) only means less compiled ahead.
        device.on_uncaptured_error(Arc::new(|_| {}));
        Ok(Twin { device, queue, cache: PipelineCache::default() })
    }

    /// Compiles `launch` by making it over zero workgroups, with its
    /// parameters at binding 0 and blank buffers of the least size each
    /// takes at the others; returns how long the launch took (the compile,
    /// not the pipeline's creation).
    fn replay(&self, (kernel, params): &Launch) -> Result<Duration> {
        let device = &self.device;
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let compiled = self.cache.get(device, kernel);
        let buffers: Vec<(u32, wgpu::Buffer)> = compiled
            .bindings
            .iter()
            .map(|slot| {
                let usage = if slot.uniform { wgpu::BufferUsages::UNIFORM } else { wgpu::BufferUsages::STORAGE };
                let buffer = if slot.binding == 0 {
                    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: params,
                        usage,
                    })
                } else {
                    let size = slot.min_bytes.max(16).next_multiple_of(16);
                    device.create_buffer(&wgpu::BufferDescriptor {
                        label: None,
                        size,
                        usage,
                        mapped_at_creation: false,
                    })
                };
                (slot.binding, buffer)
            })
            .collect();
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|(binding, b)| wgpu::BindGroupEntry { binding: *binding, resource: b.as_entire_binding() })
            .collect();
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &compiled.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let started = Instant::now();
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&compiled.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(0, 1, 1);
        }
        self.queue.submit([encoder.finish()]);
        if let Some(e) = pollster::block_on(validation.pop()) {
            return Err(GpuError::Device(format!("prewarming {}: {e}", kernel.entry)));
        }
        // One launch at a time, so that a stop waits for one compile at most.
        device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Device(e.to_string()))?;
        Ok(started.elapsed())
    }
}
