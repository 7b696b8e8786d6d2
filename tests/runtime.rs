//! The GPU runtime's promises: tensors over the device's binding limit are
//! refused before anything is dispatched, pipelines compile once, buffers
//! are reused, and a missing adapter is a clear error rather than a panic.

mod common;

use std::process::Command;

use dilaseg::gpu::{Gpu, GpuError, GpuOptions};
use dilaseg::{ops, Shape};

/// A device of its own (not the shared test one), so counters and lowered
/// limits are this test's alone. Fails rather than skips under CI.
fn own_gpu(max_storage_binding: Option<u64>) -> Option<Gpu> {
    common::gpu()?;
    Some(Gpu::new(&GpuOptions { max_storage_binding, ..GpuOptions::from_env() }).expect("second device"))
}

#[test]
fn tensors_over_the_storage_binding_limit_are_refused_before_dispatch() {
    let Some(gpu) = own_gpu(Some(1 << 20)) else { return };
    assert_eq!(gpu.limits.max_storage_buffer_binding_size, 1 << 20);
    let w = gpu.zeros(Shape::new(32, 32, 3, 3)).unwrap();
    let b = gpu.zeros(Shape::vector(32)).unwrap();

    // 1 x 32 x 128 x 128 f32 is 2 MiB: over the 1 MiB binding limit.
    let big = gpu.zeros(Shape::new(1, 32, 128, 128)).unwrap();
    let out = gpu.tensor(big.shape).unwrap();
    let err = ops::conv::forward(&gpu, big.view(), &w, &b, 1, out.view()).err().expect("over-limit binding accepted");
    assert!(matches!(err, GpuError::TooLarge { bytes: 2_097_152, limit: 1_048_576, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("max storage binding size") && message.contains("1x32x128x128"), "{message}");
    assert!(message.contains("smaller batch or image size"), "the error says what to change: {message}");

    // Just under the limit works on the same device.
    let small = gpu.zeros(Shape::new(1, 32, 90, 90)).unwrap();
    let out = gpu.tensor(small.shape).unwrap();
    let d = ops::conv::forward(&gpu, small.view(), &w, &b, 1, out.view()).unwrap();
    gpu.run(&d.iter().collect::<Vec<_>>()).unwrap();
    assert!(gpu.read(&out).unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn pipelines_compile_once_and_freed_buffers_are_reused() {
    let Some(gpu) = own_gpu(None) else { return };
    let shape = Shape::new(1, 3, 17, 19);
    let x = gpu.zeros(shape).unwrap();
    let y = gpu.tensor(shape).unwrap();
    let relu = dilaseg::nn::Activation::RELU;
    let first = ops::elementwise::act_forward(&gpu, x.view(), relu, y.view()).unwrap();
    let compiled = gpu.pipelines_compiled();
    let again = ops::elementwise::act_forward(&gpu, y.view(), relu, x.view()).unwrap();
    assert_eq!(gpu.pipelines_compiled(), compiled, "the same kernel compiled twice");
    gpu.run(&[&first, &again]).unwrap();

    let before = gpu.pool_stats();
    drop((first, again, x, y));
    let _x = gpu.tensor(shape).unwrap();
    let _y = gpu.tensor(shape).unwrap();
    let after = gpu.pool_stats();
    assert_eq!(after.created, before.created, "freed buffers were not reused");
    assert_eq!(after.reused, before.reused + 2);
}

#[test]
fn a_missing_adapter_is_a_clear_error_naming_the_fix() {
    let opts = GpuOptions { adapter: Some("no-such-adapter-7f3a".into()), ..GpuOptions::from_env() };
    let err = Gpu::new(&opts).err().expect("a nonexistent adapter was found");
    let message = err.to_string();
    assert!(message.contains("no-such-adapter-7f3a"), "{message}");
    assert!(message.contains("mesa-vulkan-drivers"), "{message}");
}

#[test]
fn devices_command_fails_cleanly_without_a_matching_adapter() {
    let out = Command::new(env!("CARGO_BIN_EXE_dilaseg"))
        .args(["devices", "--adapter", "no-such-adapter-7f3a"])
        .output()
        .expect("dilaseg runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "the device status: {stderr}");
    assert!(stderr.contains("no GPU adapter found") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn devices_command_lists_the_adapter_and_its_limits() {
    if common::gpu().is_none() {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_dilaseg")).arg("devices").output().expect("dilaseg runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for field in ["storage binding", "max buffer size", "workgroup memory", "subgroup size", "timestamps", "f16"] {
        assert!(stdout.contains(field), "`dilaseg devices` lacks {field}:\n{stdout}");
    }
    assert!(stdout.contains("dilaseg would use:"), "{stdout}");
}

#[test]
fn a_channel_slice_reads_back_sample_by_sample() {
    let Some(gpu) = own_gpu(None) else { return };
    let shape = Shape::new(3, 5, 4, 7);
    let t = gpu.tensor(shape).unwrap();
    let values: Vec<f32> = (0..shape.numel()).map(|i| i as f32).collect();
    gpu.write(&t, &values).unwrap();
    let got = gpu.read_view(t.channels(2, 2)).unwrap();
    let want: Vec<f32> =
        (0..3).flat_map(|n| values[shape.index(n, 2, 0, 0)..shape.index(n, 4, 0, 0)].to_vec()).collect();
    assert_eq!(got, want);
}

/// Prewarming (`Gpu::prewarm`) replays the launches of a plan built without
/// pipelines (`Gpu::planning`) on a twin device with blank buffers in place
/// of the plan's tensors. The planned plan must hold the memory the real
/// one does (the memory estimate is built that way) and make the same
/// launches (else the twins compile other code), and each launch must be
/// valid on the twin (the bindings' kinds and least sizes taken from the
/// specialised module, uniform windows and tables included), or a twin
/// would stop and compile nothing. Training and inference plans of both
/// presets, at sizes where the windowed kernels run.
#[test]
fn every_launch_of_a_plan_replays_cleanly_on_a_twin_device() {
    use dilaseg::bench::synthetic_graph;
    use dilaseg::model::config::ModelConfig;
    use dilaseg::model::params::ParamSet;
    use dilaseg::model::Architecture;

    // A device of its own: the memory counts are this test's alone.
    let Some(gpu) = own_gpu(None) else { return };
    let gpu = &gpu;
    let lungnet = ModelConfig { width: 8, ..ModelConfig::lungnet() };
    for (name, cfg, shape) in
        [("lungnet", lungnet, Shape::new(1, 1, 64, 64)), ("seo2018", ModelConfig::seo2018(), Shape::new(2, 1, 64, 64))]
    {
        let arch = Architecture::new(&cfg);
        let params = ParamSet::init(&arch, 1);
        let held = || gpu.pool_stats().on_loan;
        let before = held();
        let planned = gpu.planning(|| synthetic_graph(gpu, &arch, &params, shape, true)).unwrap();
        let planned_held = held() - before;
        let train = synthetic_graph(gpu, &arch, &params, shape, true).unwrap();
        assert_eq!(held() - before - planned_held, planned_held, "{name}: memory held by the planned and real plans");
        let launches = |plan: &dilaseg::model::graph::Graph| -> Vec<String> {
            plan.dispatches().iter().map(|d| format!("{:?}", d.launch())).collect()
        };
        assert_eq!(launches(&planned), launches(&train), "{name}: the planned plan's launches");
        drop(planned);
        let infer = synthetic_graph(gpu, &arch, &params, shape.with_n(1), false).unwrap();
        let plans = [train.dispatches(), infer.dispatches()];
        let launches: usize = plans.iter().map(Vec::len).sum();
        let replayed = gpu.replay_on_twin(&plans).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Launches with equal kernels and parameters are replayed once.
        assert!(replayed > launches / 4 && replayed <= launches, "{name}: {replayed} of {launches}");
    }
}
