//! Instance, adapter and device creation.
//!
//! The device is opened with the ADAPTER's limits (wgpu's defaults would cap
//! storage bindings at 128 MiB and workgroup memory at 16 KiB on hardware
//! that offers more) and with the optional features that help: timestamp
//! queries for profiling, f16 and subgroups for fast kernels.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use super::pipelines::PipelineCache;
use super::pool::BufferPool;
use super::{GpuError, Result};

/// Which graphics API to use. `Auto` honours `WGPU_BACKEND`, else tries all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl FromStr for BackendChoice {
    type Err = GpuError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => BackendChoice::Auto,
            "vulkan" | "vk" => BackendChoice::Vulkan,
            "metal" | "mtl" => BackendChoice::Metal,
            "dx12" | "d3d12" => BackendChoice::Dx12,
            "gl" | "gles" | "opengl" => BackendChoice::Gl,
            _ => return Err(GpuError::UnknownBackend(s.to_string())),
        })
    }
}

impl BackendChoice {
    fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }
}

/// How to pick and open the device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub backend: BackendChoice,
    /// Case-insensitive substring of the adapter's name.
    pub adapter: Option<String>,
    /// Only CPU/software adapters (such as lavapipe).
    pub software: bool,
    /// Open the device with at most this storage-binding size (tests use it
    /// to exercise the too-large path cheaply).
    pub max_storage_binding: Option<u64>,
    /// Memory the plans may take, instead of what the machine has available
    /// (tests use it to exercise the too-large path cheaply).
    pub memory_budget: Option<u64>,
    /// Kernels shaped for this kind of device instead of the adapter's own
    /// kind (tests run the GPU kernels on lavapipe).
    pub tuning: Option<Tuning>,
}

/// Which kernels a device runs best, by its kind (docs/KERNELS.md): a CPU
/// adapter such as lavapipe runs a workgroup as a few SIMD threads, a
/// hardware GPU needs thousands of invocations in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    /// Runs of 8 pixels per invocation; convolutions register-blocked with
    /// the weights in a uniform table.
    Cpu,
    /// One pixel per invocation (coalesced); convolutions as GEMMs tiled in
    /// workgroup memory, the weight gradient split over pixels.
    Gpu,
}

impl GpuOptions {
    /// Defaults plus `WGPU_ADAPTER_NAME` (`WGPU_BACKEND` is read by `Auto`).
    pub fn from_env() -> Self {
        GpuOptions { adapter: std::env::var("WGPU_ADAPTER_NAME").ok(), ..Default::default() }
    }
}

fn instance(backend: BackendChoice) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
    desc.backends = backend.backends();
    wgpu::Instance::new(desc)
}

/// A device on `adapter` with `features` and `limits` (also the prewarming
/// twins', `Gpu::prewarm`).
pub(super) fn request_device(
    adapter: &wgpu::Adapter,
    features: wgpu::Features,
    limits: &wgpu::Limits,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("dilaseg"),
        required_features: features,
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| GpuError::RequestDevice { adapter: adapter.get_info().name, message: e.to_string() })
}

/// The optional features worth having, where the adapter offers them.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
}

/// Preference order when several adapters match: real GPUs first, then
/// software ones; native APIs before GL.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    (kind, u8::from(info.backend == wgpu::Backend::Gl))
}

/// An open device with its queue, the one pipeline cache and the one buffer
/// pool of the process.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub(super) adapter: wgpu::Adapter,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub(super) pipelines: PipelineCache,
    pub(super) pool: BufferPool,
    /// wgpu reports validation errors and device loss through callbacks;
    /// they are collected here and returned by `check` instead of panicking.
    errors: Arc<Mutex<Vec<String>>>,
    budget: Option<u64>,
    tuning: Tuning,
}

impl Gpu {
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let instance = instance(opts.backend);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(opts.backend.backends()));
        let seen: Vec<String> =
            adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
        if let Some(name) = &opts.adapter {
            let name = name.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&name));
        }
        if opts.software {
            adapters.retain(|a| a.get_info().device_type == wgpu::DeviceType::Cpu);
        }
        adapters.sort_by_key(|a| rank(&a.get_info()));
        let Some(adapter) = adapters.into_iter().next() else {
            let mut wanted = Vec::new();
            if let Some(name) = &opts.adapter {
                wanted.push(format!("a name containing {name:?}"));
            }
            if opts.software {
                wanted.push("a software (CPU) adapter".to_string());
            }
            let detail = match (wanted.is_empty(), seen.is_empty()) {
                (_, true) => String::new(),
                (true, false) => format!(" (seen: {})", seen.join(", ")),
                (false, false) => {
                    format!(" with {} (seen: {})", wanted.join(" and "), seen.join(", "))
                }
            };
            return Err(GpuError::NoAdapter { detail });
        };
        Self::open(adapter, opts)
    }

    fn open(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Gpu> {
        let info = adapter.get_info();
        let mut limits = adapter.limits();
        if let Some(cap) = opts.max_storage_binding {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(cap);
        }
        let features = adapter.features() & wanted_features();
        let (device, queue) = request_device(&adapter, features, &limits)?;

        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(format!("device lost ({reason:?}): {message}"));
        });
        let pool = BufferPool::new(device.clone());
        let budget = opts.memory_budget;
        let kind = if info.device_type == wgpu::DeviceType::Cpu { Tuning::Cpu } else { Tuning::Gpu };
        let tuning = opts.tuning.unwrap_or(kind);
        Ok(Gpu {
            device,
            queue,
            adapter,
            info,
            limits,
            features,
            pipelines: PipelineCache::default(),
            pool,
            errors,
            budget,
            tuning,
        })
    }

    /// Runs `f` inside validation and out-of-memory error scopes (wgpu's are
    /// per thread), so an error is returned to the call that caused it,
    /// named by `what`, instead of reaching the uncaptured-error handler.
    pub fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        match validation.or(oom) {
            Some(e) => Err(GpuError::Device(format!("{what}: {e}"))),
            None => Ok(out),
        }
    }

    /// Returns (and clears) the errors wgpu reported outside any scope
    /// (device loss among them) since the last check.
    pub fn check(&self) -> Result<()> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.join("; ");
        errors.clear();
        Err(GpuError::Device(message))
    }

    /// Blocks until the queue is idle.
    pub fn sync(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| GpuError::Device(e.to_string()))?;
        self.check()
    }

    /// Whether kernels may use subgroup operations on subgroups of at
    /// least `lanes` invocations.
    pub fn has_subgroups(&self, lanes: u32) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP) && self.info.subgroup_min_size >= lanes
    }

    /// Memory this device can still give plans, where known: a software
    /// adapter allocates from the machine's memory (MemAvailable, read now;
    /// Linux only); wgpu does not tell a hardware GPU's.
    pub fn memory_budget(&self) -> Option<u64> {
        if self.budget.is_some() || self.info.device_type != wgpu::DeviceType::Cpu {
            return self.budget;
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Refuses, with the figures, a plan (`what`) that needs more memory
    /// than the device has to give, before anything of it is allocated.
    pub fn check_memory(&self, what: impl FnOnce() -> String, bytes: u64) -> Result<()> {
        match self.memory_budget() {
            Some(limit) if bytes > limit => {
                Err(GpuError::TooLarge { what: what(), bytes, limit_name: "available memory", limit })
            }
            _ => Ok(()),
        }
    }

    /// The kernels this device runs (`GpuOptions::tuning`).
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// Pixels per invocation of the run kernels (`RUN` in common.wgsl, set
    /// on every pipeline): 8 on CPU adapters (measured on lavapipe,
    /// docs/KERNELS.md), 1 on GPUs, where neighbouring invocations should
    /// read neighbouring elements.
    pub fn run_length(&self) -> usize {
        match self.tuning {
            Tuning::Cpu => 8,
            Tuning::Gpu => 1,
        }
    }

    /// The Mesa release of a Mesa driver as (major, minor), None for
    /// other drivers: lavapipe's costs moved between releases, and a few
    /// kernel choices with them (docs/KERNELS.md, "Mesa 25").
    pub fn mesa_release(&self) -> Option<(u32, u32)> {
        mesa_release(&self.info.driver_info)
    }

    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// One line naming the adapter, for logs and reports.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }
}

/// (major, minor) of a driver description such as lavapipe's "Mesa
/// 25.0.7-2~bpo12+1 (LLVM 15.0.6)".
fn mesa_release(driver_info: &str) -> Option<(u32, u32)> {
    let version = driver_info.trim().strip_prefix("Mesa ")?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What `dilaseg devices` shows of one adapter.
pub struct AdapterReport {
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
}

/// Every adapter the chosen backends offer, best first.
pub fn adapter_reports(backend: BackendChoice) -> Vec<AdapterReport> {
    let instance = instance(backend);
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backend.backends()));
    adapters.sort_by_key(|a| rank(&a.get_info()));
    adapters.iter().map(|a| AdapterReport { info: a.get_info(), limits: a.limits(), features: a.features() }).collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (i, l) = (&self.info, &self.limits);
        let yes = |feature| {
            if self.features.contains(feature) {
                "yes"
            } else {
                "no"
            }
        };
        writeln!(f, "{}", i.name)?;
        writeln!(f, "  backend            {:?}", i.backend)?;
        writeln!(f, "  device type        {:?}", i.device_type)?;
        let driver: Vec<&str> = [i.driver.trim(), i.driver_info.trim()].into_iter().filter(|s| !s.is_empty()).collect();
        writeln!(f, "  driver             {}", driver.join(" "))?;
        writeln!(f, "  storage binding    {}", mib(l.max_storage_buffer_binding_size))?;
        writeln!(f, "  uniform binding    {} KiB", l.max_uniform_buffer_binding_size / 1024)?;
        writeln!(f, "  storage buffers    {} per shader stage", l.max_storage_buffers_per_shader_stage)?;
        writeln!(f, "  max buffer size    {}", mib(l.max_buffer_size))?;
        writeln!(f, "  workgroup memory   {} KiB", l.max_compute_workgroup_storage_size / 1024)?;
        writeln!(f, "  invocations/group  {}", l.max_compute_invocations_per_workgroup)?;
        writeln!(f, "  workgroups/dim     {}", l.max_compute_workgroups_per_dimension)?;
        writeln!(
            f,
            "  subgroup size      {}..{} (subgroup ops: {})",
            i.subgroup_min_size,
            i.subgroup_max_size,
            yes(wgpu::Features::SUBGROUP)
        )?;
        writeln!(
            f,
            "  timestamps         {} (inside passes: {})",
            yes(wgpu::Features::TIMESTAMP_QUERY),
            yes(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
        )?;
        write!(f, "  f16                {}", yes(wgpu::Features::SHADER_F16))
    }
}

#[cfg(test)]
mod tests {
    use super::mesa_release;

    #[test]
    fn mesa_release_reads_the_major_and_minor_of_mesa_drivers_only() {
        assert_eq!(mesa_release("Mesa 22.3.6 (LLVM 15.0.6)"), Some((22, 3)));
        assert_eq!(mesa_release("Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)"), Some((25, 0)));
        assert_eq!(mesa_release("Mesa 24.2.0-devel (git-1a2b3c)"), Some((24, 2)));
        assert_eq!(mesa_release("550.54.14"), None);
        assert_eq!(mesa_release("Mesa"), None);
        assert_eq!(mesa_release(""), None);
    }
}
