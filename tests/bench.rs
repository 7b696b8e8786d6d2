//! `dilaseg bench` on lavapipe: the analytic counts agree with BENCH.md's
//! published totals, and a workload prints BENCH.md's JSON object with
//! consistent figures (a check of the bookkeeping, never of speed).

mod common;

use dilaseg::model::config::ModelConfig;
use dilaseg::model::params::ParamSet;
use dilaseg::model::Architecture;
use dilaseg::Shape;

fn forward_gflop(preset: &str, shape: Shape) -> f64 {
    let gpu = common::gpu().expect("checked by the caller");
    let arch = Architecture::new(&ModelConfig::preset(preset).unwrap());
    let graph = dilaseg::bench::synthetic_graph(gpu, &arch, &ParamSet::init(&arch, 0), shape, false).unwrap();
    graph.forward_dispatches().iter().map(|d| d.cost().flops).sum::<f64>() / 1e9
}

#[test]
fn flop_counts_match_bench_md() {
    if common::gpu().is_none() {
        return;
    }
    // BENCH.md: lungnet at 256x256 forward 16.84 GFLOP; seo2018 at 2x256x256 0.23.
    let lungnet = forward_gflop("lungnet", Shape::new(1, 1, 256, 256));
    assert!((lungnet - 16.84).abs() < 0.005, "lungnet forward {lungnet} GFLOP");
    let seo = forward_gflop("seo2018", Shape::new(2, 1, 256, 256));
    assert!((seo - 0.23).abs() < 0.005, "seo2018 forward {seo} GFLOP");
}

#[test]
fn bench_prints_one_json_object_per_workload() {
    if common::gpu().is_none() {
        return;
    }
    let ids = ["conv3x3-d55-bwd-data", "seo2018-256-train"];
    let mut args = vec!["bench", "--warmup", "1", "--runs", "2", "--variant", "baseline"];
    for id in ids {
        args.extend(["--workload", id]);
    }
    let (code, stdout, stderr) = common::dilaseg(&args);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    // The convolution also with the baseline kernels; the model step once.
    assert_eq!(lines.len(), ids.len() + 1, "{stdout}");
    assert_eq!(lines[1]["workload"], ids[0]);
    assert_eq!(lines[1]["variant"], "baseline");
    assert_ne!(lines[0]["variant"], "baseline");
    assert_eq!(lines[2]["variant"], "auto");
    for (v, id) in lines.iter().zip([ids[0], ids[0], ids[1]]) {
        assert_eq!(v["workload"], id);
        assert_eq!(v["runs"], 2);
        assert!(v["adapter"].as_str().is_some_and(|a| !a.is_empty()), "{v}");
        let (median, min) = (v["median_ms"].as_f64().unwrap(), v["min_ms"].as_f64().unwrap());
        assert!(min > 0.0 && min <= median, "{v}");
        let (gflops, fraction, peak) = (
            v["gflops"].as_f64().unwrap(),
            v["peak_fraction"].as_f64().unwrap(),
            v["fma_peak_gflops"].as_f64().unwrap(),
        );
        assert!(gflops > 0.0 && peak > 0.0, "{v}");
        assert!((fraction - gflops / peak).abs() <= 1e-9 * fraction.max(1.0), "{v}");
    }
    // conv3x3 data gradient: 2 * 32 * 32 * 9 * 256 * 256 flops per run.
    let flops = lines[0]["gflops"].as_f64().unwrap() * lines[0]["median_ms"].as_f64().unwrap() * 1e6;
    assert!((flops / (2.0 * 32.0 * 32.0 * 9.0 * 65536.0) - 1.0).abs() < 1e-6, "{flops}");
}

#[test]
fn an_unknown_workload_is_refused_with_the_list() {
    let (code, _, stderr) = common::dilaseg(&["bench", "--workload", "conv3x3-d2-fwd"]);
    assert_eq!(code, 2, "clap's usage error: {stderr}");
    assert!(stderr.contains("conv3x3-d13-fwd"), "{stderr}");
}
