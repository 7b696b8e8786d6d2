//! The one pipeline cache: each (family, entry point, constants) is compiled
//! once per process, on first use; later requests share it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::dispatch::Kernel;
use super::shaders::Family;

type Key = (Family, &'static str, Vec<(&'static str, u64)>);

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<Family, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<Key, Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    pub fn get(&self, device: &wgpu::Device, kernel: &Kernel) -> Arc<wgpu::ComputePipeline> {
        let key: Key =
            (kernel.family, kernel.entry, kernel.constants.iter().map(|&(name, v)| (name, v.to_bits())).collect());
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipelines.get(&key) {
            return p.clone();
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            modules
                .entry(kernel.family)
                .or_insert_with(|| {
                    device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.family.file_name()),
                        source: wgpu::ShaderSource::Wgsl(kernel.family.source().into()),
                    })
                })
                .clone()
        };
        let pipeline = Arc::new(device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &kernel.constants,
                ..Default::default()
            },
            cache: None,
        }));
        pipelines.insert(key, pipeline.clone());
        pipeline
    }

    /// Pipelines compiled so far.
    pub fn len(&self) -> usize {
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
