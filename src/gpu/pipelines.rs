//! The one pipeline cache: each (family, entry point, constants) is compiled
//! once per process, on first use; later requests share it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::dispatch::{Kernel, KernelKey};
use super::shaders::Family;
use super::specialize::Parsed;

/// A compiled pipeline and the bindings (group 0) its specialised module
/// declares: a branch ruled out by the constants takes its bindings with
/// it (`ACCUMULATE` forward kernels read no bias), and a bind group must
/// hold exactly the layout's.
#[derive(Clone)]
pub(crate) struct Compiled {
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bindings: Arc<[Slot]>,
}

/// One binding of a specialised module: its number, whether it is a
/// uniform (else storage) buffer, and the least bytes it takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub binding: u32,
    pub uniform: bool,
    pub min_bytes: u64,
}

impl Compiled {
    pub fn binds(&self, binding: u32) -> bool {
        self.bindings.iter().any(|s| s.binding == binding)
    }
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    families: Mutex<HashMap<Family, Arc<Parsed>>>,
    pipelines: Mutex<HashMap<KernelKey, Compiled>>,
}

impl PipelineCache {
    pub fn get(&self, device: &wgpu::Device, kernel: &Kernel) -> Compiled {
        let key = kernel.key();
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipelines.get(&key) {
            return p.clone();
        }
        let parsed = {
            let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
            families
                .entry(kernel.family)
                .or_insert_with(|| {
                    let family = kernel.family;
                    // The shaders are compiled into the binary and validated by
                    // the tests (tests/shaders.rs): failing here is a bug.
                    Arc::new(Parsed::new(family.file_name(), &family.source()).unwrap_or_else(|e| panic!("{e}")))
                })
                .clone()
        };
        let specialized = parsed.specialize(kernel.entry, &kernel.constants).unwrap_or_else(|e| panic!("{e}"));
        let layouter = specialized.to_ctx();
        let bindings: Arc<[Slot]> = specialized
            .global_variables
            .iter()
            .filter_map(|(_, g)| {
                let binding = g.binding.as_ref()?.binding;
                let uniform = g.space == naga::AddressSpace::Uniform;
                Some(Slot { binding, uniform, min_bytes: u64::from(specialized.types[g.ty].inner.size(layouter)) })
            })
            .collect();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(kernel.entry),
            source: wgpu::ShaderSource::Naga(std::borrow::Cow::Owned(specialized)),
        });
        let pipeline = Arc::new(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: Default::default(),
            cache: None,
        }));
        let compiled = Compiled { pipeline, bindings };
        pipelines.insert(key, compiled.clone());
        compiled
    }

    /// Pipelines compiled so far.
    pub fn len(&self) -> usize {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
