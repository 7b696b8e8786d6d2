//! `dilaseg profile` on lavapipe: one row per dispatched kernel, positive
//! times, and a sum that is consistent with the step's own wall time (a
//! loose bound: this checks the bookkeeping, not speed).

mod common;

use dilaseg::model::config::ModelConfig;
use dilaseg::model::graph::{Graph, Optimizer, TrainSetup};
use dilaseg::model::params::ParamSet;
use dilaseg::model::Architecture;
use dilaseg::nn::{self, SigmoidLoss};
use dilaseg::Shape;

#[test]
fn profile_has_a_row_per_kernel_and_adds_up_to_the_step() {
    let gpu = gpu_or_skip!();
    let cfg = ModelConfig { width: 2, head: vec![2], ..ModelConfig::seo2018() };
    let arch = Architecture::new(&cfg);
    let shape = Shape::new(2, 1, 32, 32);
    let setup = TrainSetup {
        optimizer: Optimizer::Adam(nn::Adam::with_lr(1e-3)),
        sigmoid_loss: SigmoidLoss { bce: true, dice: false },
        class_weights: None,
        dropout_seed: 0,
    };
    let mut graph = Graph::new(gpu, &arch, &ParamSet::init(&arch, 0), shape, Some(&setup)).unwrap();
    graph.set_input(gpu, &vec![0.5; shape.numel()]).unwrap();
    graph.set_target(gpu, &vec![1.0; 2 * 32 * 32]).unwrap();
    let labels: std::collections::BTreeSet<String> =
        graph.step_dispatches(gpu, 1, true).iter().map(|(_, d)| d.label().to_string()).collect();
    let dispatches = graph.step_dispatches(gpu, 1, true).len();

    let p = dilaseg::profile::profile(gpu, &mut graph, true, 2).unwrap();
    let rows: std::collections::BTreeSet<String> = p.rows.iter().map(|r| r.name.clone()).collect();
    assert_eq!(rows, labels, "one row per dispatched kernel");
    assert_eq!(p.rows.iter().map(|r| r.calls).sum::<usize>(), 2 * dispatches);
    assert!(p.rows.iter().all(|r| r.total_ms > 0.0), "{:?}", p.rows);
    let per_step = p.total_ms() / 2.0;
    assert!(
        per_step > 0.25 * p.step_ms && per_step < 4.0 * p.step_ms,
        "kernels {per_step} ms vs step {} ms",
        p.step_ms
    );
    assert_eq!(p.phases.len(), 3, "forward, backward and optimiser: {:?}", p.phases);

    // Rates come from analytic counts: BENCH.md's 2 Cin Cout k k H W N per
    // convolution (its launches, per group or band of rows, add up to it),
    // nothing for other kernels; traffic for every kernel.
    let name = "conv.forward 2x2x32x32 3x3 d1";
    let layer2: Vec<_> = p.rows.iter().filter(|r| r.name == name || r.name.starts_with(&format!("{name} "))).collect();
    assert!(!layer2.is_empty(), "layer 2's conv rows");
    let flops: f64 = layer2.iter().map(|r| r.cost.flops).sum();
    assert_eq!(flops, 2.0 * (2.0 * 2.0 * 2.0 * 9.0 * 2.0 * 32.0 * 32.0), "two steps of layer 2");
    assert!(layer2.iter().all(|r| r.gflops() > 0.0 && r.gbytes_per_s() > 0.0));
    for r in &p.rows {
        let arithmetic = ["conv.forward", "conv.backward_data", "conv.backward_weight"];
        assert_eq!(r.cost.flops > 0.0, arithmetic.iter().any(|a| r.name.starts_with(a)), "{}", r.name);
        assert!(r.cost.bytes > 0.0, "{}", r.name);
    }
    // The timeline: one event per timed dispatch, in submission order.
    assert_eq!(p.events.len(), 2 * dispatches);
    assert!(p.events.windows(2).all(|e| e[1].start_ms >= e[0].start_ms), "events out of order");
    // The warm-up: every launch of one step, in order, each timed; its
    // slowest first.
    let order: Vec<String> = graph.step_dispatches(gpu, 1, true).iter().map(|(_, d)| d.label().to_string()).collect();
    assert_eq!(p.first.iter().map(|f| f.0.clone()).collect::<Vec<_>>(), order);
    assert!(p.first.iter().all(|f| f.1 > 0.0), "{:?}", p.first);
    let slowest = p.slowest_first(3);
    assert_eq!(slowest.len(), 3);
    assert!(slowest.windows(2).all(|s| s[0].1 >= s[1].1), "{slowest:?}");
    assert_eq!(slowest[0].1, p.first.iter().map(|f| f.1).fold(0.0, f64::max));
}

#[test]
fn profile_json_is_machine_readable() {
    if common::gpu().is_none() {
        return;
    }
    let (code, stdout, stderr) =
        common::dilaseg(&["profile", "--preset", "seo2018", "--size", "24x20", "--iters", "1", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(v["kernels"].as_array().is_some_and(|k| !k.is_empty()), "{v}");
    assert!(v["step_ms_median"].as_f64().is_some_and(|t| t > 0.0), "{v}");
    assert_eq!(v["time_source"], "GpuTimestamps", "lavapipe has timestamps");
    // One iteration: the launches are the kernels' calls.
    let calls: u64 = v["kernels"].as_array().unwrap().iter().map(|k| k["calls"].as_u64().unwrap()).sum();
    assert_eq!(v["launches_per_iteration"].as_f64(), Some(calls as f64), "{v}");
    // The warm-up's time and every one of its launches, slowest first.
    let slowest = v["first_iteration_slowest"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(slowest.len() as u64, calls, "{v}");
    let ms: Vec<f64> = slowest.iter().map(|k| k["ms"].as_f64().unwrap()).collect();
    assert!(ms.windows(2).all(|m| m[0] >= m[1]), "{v}");
    let sum: f64 = ms.iter().sum();
    assert!(v["first_iteration_ms"].as_f64().is_some_and(|t| (t - sum).abs() <= 1e-6 * t && t > 0.0), "{v}");
}

#[test]
fn trace_file_is_chrome_trace_json_with_an_event_per_dispatch() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("step.trace.json");
    let (code, stdout, stderr) = common::dilaseg(&[
        "profile",
        "--preset",
        "seo2018",
        "--size",
        "20x28",
        "--batch",
        "2",
        "--train",
        "--iters",
        "2",
        "--json",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let profile: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let calls: u64 = profile["kernels"].as_array().unwrap().iter().map(|k| k["calls"].as_u64().unwrap()).sum();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&trace).unwrap()).expect("the trace parses as JSON");
    let events = v["traceEvents"].as_array().expect("traceEvents");
    assert_eq!(events.len() as u64, calls, "one event per timed dispatch");
    for e in events {
        assert_eq!(e["ph"], "X", "{e}");
        assert!(e["name"].as_str().is_some_and(|n| !n.is_empty()), "{e}");
        assert!(e["ts"].as_f64().is_some_and(|t| t >= 0.0) && e["dur"].as_f64().is_some_and(|d| d > 0.0), "{e}");
    }
    let cats: std::collections::BTreeSet<&str> = events.iter().map(|e| e["cat"].as_str().unwrap()).collect();
    assert_eq!(cats, ["backward", "forward", "optimizer"].into_iter().collect());
}
