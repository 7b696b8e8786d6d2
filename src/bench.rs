//! `dilaseg bench`: the workloads of shared/spec/BENCH.md timed by the CPU
//! clock around synchronised submissions (median and min of repeated runs
//! after warm-ups), with rates from the dispatches' analytic counts, beside
//! the adapter's own peaks measured in the same run by two microbenchmarks
//! (fma throughput, copy bandwidth).

use std::time::Instant;

use crate::gpu::{Dispatch, Gpu, GpuError, Result, Tensor};
use crate::model::config::ModelConfig;
use crate::model::graph::{Graph, Optimizer, TrainSetup};
use crate::model::params::ParamSet;
use crate::model::Architecture;
use crate::nn::{self, SigmoidLoss};
use crate::ops::{self, conv::Variant};
use crate::rng::Rng;
use crate::shape::Shape;

/// Every workload id of BENCH.md, in its order, then the head's backward
/// passes (BENCH.md times only its forward; with it they are about a third
/// of a lungnet training step on lavapipe).
pub const WORKLOADS: [&str; 16] = [
    "lungnet-256-infer",
    "lungnet-256-train",
    "lungnet-kaggle-infer",
    "seo2018-256-train",
    "conv3x3-d1-fwd",
    "conv3x3-d13-fwd",
    "conv3x3-d55-fwd",
    "conv3x3-d1-bwd-data",
    "conv3x3-d13-bwd-data",
    "conv3x3-d55-bwd-data",
    "conv3x3-d1-bwd-weight",
    "conv3x3-d13-bwd-weight",
    "conv3x3-d55-bwd-weight",
    "conv1x1-321-128-fwd",
    "conv1x1-321-128-bwd-data",
    "conv1x1-321-128-bwd-weight",
];

/// A graph with seeded random weights, input and (for training) targets:
/// what `bench` and `profile` time when no checkpoint is given.
pub fn synthetic_graph(gpu: &Gpu, arch: &Architecture, params: &ParamSet, shape: Shape, train: bool) -> Result<Graph> {
    let setup = TrainSetup {
        optimizer: Optimizer::Adam(nn::Adam::with_lr(1e-3)),
        sigmoid_loss: SigmoidLoss { bce: true, dice: false },
        class_weights: None,
        dropout_seed: 0,
    };
    let graph = Graph::new(gpu, arch, params, shape, train.then_some(&setup))?;
    let mut rng = Rng::new(0);
    graph.set_input(gpu, &(0..shape.numel()).map(|_| rng.uniform() as f32).collect::<Vec<_>>())?;
    if train {
        let pixels = shape.n * shape.h * shape.w;
        graph.set_target(gpu, &(0..pixels).map(|_| rng.below(2) as f32).collect::<Vec<_>>())?;
    }
    Ok(graph)
}

/// Median and minimum of timed runs, ms.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
}

/// Runs `f` `warmup` times, then `runs` times under the CPU clock (each run
/// ends synchronised with the device).
pub fn time(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ms = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(Timing { runs: ms.len(), median_ms: ms[ms.len() / 2], min_ms: ms[0] })
}

/// The adapter's measured peaks.
#[derive(Clone, Copy, Debug)]
pub struct Peaks {
    pub fma_gflops: f64,
    pub copy_gbytes_per_s: f64,
}

/// A microbenchmark's run is lengthened until it takes this long, so launch
/// overhead and clock resolution do not count.
const MIN_MICRO_MS: f64 = 50.0;

/// Repeats a microbenchmark made by `make(scale)`, doubling `scale` until
/// one run takes `MIN_MICRO_MS`, then returns (work per run, median ms).
fn micro(gpu: &Gpu, max_scale: u32, make: impl Fn(u32) -> Result<(Vec<Dispatch>, f64)>) -> Result<(f64, f64)> {
    let mut scale = 1;
    loop {
        let (dispatches, work) = make(scale)?;
        let list: Vec<&Dispatch> = dispatches.iter().collect();
        let run = || {
            gpu.run(&list)?;
            gpu.sync()
        };
        let probe = time(1, 1, run)?;
        if probe.median_ms >= MIN_MICRO_MS || scale >= max_scale {
            return Ok((work, time(0, 5, run)?.median_ms));
        }
        scale *= 2;
    }
}

/// Measures fma throughput and copy bandwidth (shaders/bench.wgsl).
pub fn measure_peaks(gpu: &Gpu) -> Result<Peaks> {
    // 2^18 invocations (a full H100 holds about 270k threads).
    let seeds_shape = Shape::vector(4 << 18);
    let mut rng = Rng::new(1);
    let seeds = gpu.upload(seeds_shape, &(0..seeds_shape.numel()).map(|_| rng.uniform() as f32).collect::<Vec<_>>())?;
    let sums = gpu.tensor(seeds_shape)?;
    let (flops, fma_ms) = micro(gpu, 1 << 14, |scale| {
        let d = ops::bench::fma_chains(gpu, &seeds, &sums, 16 * scale)?;
        let flops = d.cost().flops;
        Ok((vec![d], flops))
    })?;
    // Buffers well past any cache, within the binding limit.
    let bytes = gpu.limits.max_storage_buffer_binding_size.min(64 << 20);
    let shape = Shape::vector((bytes / 16 * 4) as usize);
    let (src, dst) = (gpu.zeros(shape)?, gpu.tensor(shape)?);
    let (moved, copy_ms) = micro(gpu, 1 << 10, |scale| {
        let copies = (0..scale).map(|_| ops::bench::copy(gpu, &src, &dst)).collect::<Result<Vec<_>>>()?;
        let moved = copies.iter().map(|d| d.cost().bytes).sum();
        Ok((copies, moved))
    })?;
    Ok(Peaks { fma_gflops: flops / fma_ms / 1e6, copy_gbytes_per_s: moved / copy_ms / 1e6 })
}

/// One workload's figures.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub workload: String,
    /// The convolution kernels it ran (`ops::conv::Variant`), or "auto"
    /// for whole-model workloads (each convolution's own choice).
    pub variant: String,
    pub timing: Timing,
    /// BENCH.md's arithmetic count of one run.
    pub flops: f64,
    /// Compulsory memory traffic of one run (every dispatch's operands once).
    pub bytes: f64,
}

impl Outcome {
    pub fn gflops(&self) -> f64 {
        self.flops / self.timing.median_ms / 1e6
    }

    pub fn gbytes_per_s(&self) -> f64 {
        self.bytes / self.timing.median_ms / 1e6
    }

    /// BENCH.md's JSON object, with the bandwidth figures beside the flops.
    pub fn to_json(&self, gpu: &Gpu, peaks: &Peaks) -> serde_json::Value {
        serde_json::json!({
            "workload": self.workload,
            "variant": self.variant,
            "adapter": gpu.info.name,
            "backend": format!("{:?}", gpu.info.backend),
            "runs": self.timing.runs,
            "median_ms": self.timing.median_ms,
            "min_ms": self.timing.min_ms,
            "gflops": self.gflops(),
            "peak_fraction": self.gflops() / peaks.fma_gflops,
            "gbytes_per_s": self.gbytes_per_s(),
            "bandwidth_fraction": self.gbytes_per_s() / peaks.copy_gbytes_per_s,
            "fma_peak_gflops": peaks.fma_gflops,
            "copy_peak_gbytes_per_s": peaks.copy_gbytes_per_s,
        })
    }
}

fn sum_cost(list: &[&Dispatch]) -> (f64, f64) {
    list.iter().fold((0.0, 0.0), |(f, b), d| (f + d.cost().flops, b + d.cost().bytes))
}

/// Whether `id` times one convolution (and so can run any `Variant`).
pub fn is_kernel_workload(id: &str) -> bool {
    id.starts_with("conv")
}

/// Builds and times workload `id` (one of `WORKLOADS`); a kernel workload
/// runs `variant` when given, else the variant the model would choose.
pub fn run(gpu: &Gpu, id: &str, warmup: usize, runs: usize, variant: Option<Variant>) -> Result<Outcome> {
    let unknown = || GpuError::Shape {
        kernel: "bench".into(),
        message: format!("unknown workload {id:?}; the workloads are: {}", WORKLOADS.join(", ")),
    };
    let model = |preset: &str, shape: Shape, train: bool| -> Result<Outcome> {
        let cfg = ModelConfig::preset(preset).expect("BENCH.md names known presets");
        let arch = Architecture::new(&cfg);
        let mut graph = synthetic_graph(gpu, &arch, &ParamSet::init(&arch, 0), shape, train)?;
        let (forward_flops, forward_bytes) = sum_cost(&graph.forward_dispatches());
        if !train {
            let timing = time(warmup, runs, || graph.forward(gpu).and_then(|()| graph.read_logits(gpu).map(drop)))?;
            return Ok(Outcome {
                workload: id.into(),
                variant: "auto".into(),
                timing,
                flops: forward_flops,
                bytes: forward_bytes,
            });
        }
        let list: Vec<&Dispatch> = graph.step_dispatches(gpu, 1, true).into_iter().map(|(_, d)| d).collect();
        let (_, bytes) = sum_cost(&list);
        let mut step = 0;
        let timing = time(warmup, runs, || {
            step += 1;
            graph.step(gpu, step, true)?;
            gpu.sync()
        })?;
        // BENCH.md: a step counts three times the forward convolutions.
        Ok(Outcome { workload: id.into(), variant: "auto".into(), timing, flops: 3.0 * forward_flops, bytes })
    };
    match id {
        "lungnet-256-infer" => model("lungnet", Shape::new(1, 1, 256, 256), false),
        "lungnet-256-train" => model("lungnet", Shape::new(1, 1, 256, 256), true),
        "lungnet-kaggle-infer" => model("lungnet", Shape::new(1, 1, 420, 580), false),
        "seo2018-256-train" => model("seo2018", Shape::new(2, 1, 256, 256), true),
        _ => {
            let (k, cin, cout, dilation, pass) = parse_conv(id).ok_or_else(unknown)?;
            let variant = variant.unwrap_or_else(|| match pass {
                "bwd-weight" => Variant::for_weight_grad(gpu, cout),
                _ => Variant::choose(gpu, cin, cout, k),
            });
            let d = conv_workload(gpu, variant, pass, cin, cout, k, dilation)?;
            kernel_outcome(gpu, id, variant, &d, warmup, runs)
        }
    }
}

/// `conv3x3-d{D}-{PASS}` for D in 1, 13, 55 -> (3, 32, 32, D, PASS), and
/// `conv1x1-321-128-{PASS}` -> (1, 321, 128, 1, PASS): (kernel size, input
/// and output channels, dilation, pass), PASS one of fwd, bwd-data,
/// bwd-weight.
fn parse_conv(id: &str) -> Option<(usize, usize, usize, usize, &str)> {
    let (shape, pass) = match id.strip_prefix("conv1x1-321-128-") {
        Some(pass) => ((1, 321, 128, 1), pass),
        None => {
            let (d, pass) = id.strip_prefix("conv3x3-d")?.split_once('-')?;
            let d: usize = d.parse().ok()?;
            ([1, 13, 55].contains(&d).then_some((3, 32, 32, d))?, pass)
        }
    };
    ["fwd", "bwd-data", "bwd-weight"].contains(&pass).then_some((shape.0, shape.1, shape.2, shape.3, pass))
}

/// One convolution's launches on 1 x cin x 256 x 256 with random operands.
fn conv_workload(
    gpu: &Gpu,
    variant: Variant,
    pass: &str,
    cin: usize,
    cout: usize,
    k: usize,
    dilation: usize,
) -> Result<Vec<Dispatch>> {
    let mut rng = Rng::new(2);
    let mut random = |shape: Shape| -> Result<Tensor> {
        gpu.upload(shape, &(0..shape.numel()).map(|_| rng.uniform() as f32 - 0.5).collect::<Vec<_>>())
    };
    let x = random(Shape::new(1, cin, 256, 256))?;
    let y = random(Shape::new(1, cout, 256, 256))?;
    let w = random(Shape::new(cout, cin, k, k))?;
    match pass {
        "fwd" => ops::conv::forward_with(gpu, variant, x.view(), &w, &random(Shape::vector(cout))?, dilation, y.view()),
        "bwd-data" => ops::conv::backward_data_with(gpu, variant, y.view(), &w, dilation, x.view(), false),
        _ => ops::conv::backward_weight_with(gpu, variant, x.view(), y.view(), dilation, &w),
    }
}

fn kernel_outcome(
    gpu: &Gpu,
    id: &str,
    variant: Variant,
    list: &[Dispatch],
    warmup: usize,
    runs: usize,
) -> Result<Outcome> {
    let refs: Vec<&Dispatch> = list.iter().collect();
    let timing = time(warmup, runs, || {
        gpu.run(&refs)?;
        gpu.sync()
    })?;
    let (flops, bytes) = sum_cost(&refs);
    Ok(Outcome { workload: id.into(), variant: variant.name().into(), timing, flops, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_workload_ids_parse() {
        assert_eq!(parse_conv("conv3x3-d13-bwd-weight"), Some((3, 32, 32, 13, "bwd-weight")));
        assert_eq!(parse_conv("conv1x1-321-128-bwd-data"), Some((1, 321, 128, 1, "bwd-data")));
        assert_eq!(parse_conv("conv3x3-d2-fwd"), None);
        assert_eq!(parse_conv("conv3x3-d1-sideways"), None);
        assert_eq!(parse_conv("conv1x1-321-64-fwd"), None);
        let conv = WORKLOADS.iter().filter(|id| is_kernel_workload(id)).count();
        assert_eq!(conv, WORKLOADS.iter().filter_map(|id| parse_conv(id)).count());
    }
}
