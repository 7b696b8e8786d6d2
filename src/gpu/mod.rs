//! The GPU runtime: adapter choice and device creation (`device`), one
//! buffer pool (`pool`), one pipeline cache (`pipelines`), typed tensors
//! (`tensor`), recorded kernel launches (`dispatch`), their timing
//! (`profile`), their compiling ahead on the spare cores (`prewarm`) and
//! the WGSL sources (`shaders`). Ops (`crate::ops`) build on these; nothing
//! here knows about the network or files.

mod device;
mod dispatch;
mod pipelines;
mod pool;
mod prewarm;
mod profile;
pub mod shaders;
mod specialize;
mod tensor;

pub use device::{adapter_reports, AdapterReport, BackendChoice, Gpu, GpuOptions, Tuning};
pub use dispatch::{Cost, Dispatch, Grid, Kernel, Launch, Window, WINDOW_BYTES, WORKGROUP};
pub use pool::PoolStats;
pub use prewarm::Prewarm;
pub use profile::{Span, TimeSource};
pub use tensor::{Tensor, View};

/// Errors of the GPU layer. Each says what was being done and, where a
/// limit is involved, the figures and what to change.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no GPU adapter found{detail}\n\
         To get one, install your GPU's Vulkan, Metal or DX12 driver, or a software adapter such as \
         Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`, then run with `--software`).\n\
         `dilaseg devices` lists the adapters this machine offers."
    )]
    NoAdapter { detail: String },
    #[error("could not open a device on adapter {adapter:?}: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error(
        "{what} needs {bytes} bytes, more than this device's {limit_name} of {limit} bytes; \
         use a smaller batch or image size"
    )]
    TooLarge { what: String, bytes: u64, limit_name: &'static str, limit: u64 },
    #[error("{kernel}: {message}")]
    Shape { kernel: String, message: String },
    #[error("the GPU reported an error: {0}")]
    Device(String),
    #[error("unknown backend {0:?}: expected auto, vulkan, metal, dx12 or gl")]
    UnknownBackend(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;
