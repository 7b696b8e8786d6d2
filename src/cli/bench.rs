//! `dilaseg bench`: BENCH.md's workloads, one JSON object per line on
//! stdout (progress and a readable summary on stderr).

use clap::Args;
use dilaseg::bench::{self, WORKLOADS};
use dilaseg::gpu::Gpu;
use dilaseg::ops::conv::Variant;

use super::GpuArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Run only this workload (repeatable); default: all of BENCH.md's.
    #[arg(long = "workload", value_name = "ID", value_parser = clap::builder::PossibleValuesParser::new(WORKLOADS))]
    workloads: Vec<String>,
    /// Untimed runs before the timed ones (BENCH.md asks for at least 2).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs (BENCH.md asks for at least 10).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Also time each convolution workload with these kernels (repeatable:
    /// baseline, blocked, blocked-subgroup, tiled), in the same run.
    #[arg(long = "variant", value_name = "NAME", value_parser = clap::value_parser!(Variant))]
    variants: Vec<Variant>,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// Ok(false) when a workload could not run (reported; the others went on).
pub fn run(args: &BenchArgs) -> anyhow::Result<bool> {
    let gpu = Gpu::new(&args.gpu.options())?;
    eprintln!("adapter: {}", gpu.describe());
    if args.warmup < 2 || args.runs < 10 {
        eprintln!(
            "note: {} warm-ups and {} runs are fewer than BENCH.md's 2 and 10; fine for a look, not for docs/",
            args.warmup, args.runs
        );
    }
    let peaks = bench::measure_peaks(&gpu)?;
    eprintln!("measured peaks: fma {:.1} GFLOP/s, copy {:.1} GB/s", peaks.fma_gflops, peaks.copy_gbytes_per_s);
    let ids: Vec<&str> = if args.workloads.is_empty() {
        WORKLOADS.to_vec()
    } else {
        args.workloads.iter().map(String::as_str).collect()
    };
    let mut all_ok = true;
    for id in ids {
        let mut variants = vec![None];
        if bench::is_kernel_workload(id) {
            variants.extend(args.variants.iter().copied().map(Some));
        }
        for variant in variants {
            eprintln!("{id}: {} warm-ups, {} runs ...", args.warmup, args.runs);
            match bench::run(&gpu, id, args.warmup, args.runs, variant) {
                Ok(outcome) => {
                    println!("{}", outcome.to_json(&gpu, &peaks));
                    eprintln!(
                        "{id} ({}): median {:.2} ms, min {:.2} ms, {:.2} GFLOP/s ({:.1}% of fma peak), {:.2} GB/s",
                        outcome.variant,
                        outcome.timing.median_ms,
                        outcome.timing.min_ms,
                        outcome.gflops(),
                        100.0 * outcome.gflops() / peaks.fma_gflops,
                        outcome.gbytes_per_s()
                    );
                }
                Err(e) => {
                    all_ok = false;
                    eprintln!("{id}: failed: {e}");
                    let error = serde_json::json!({"workload": id, "adapter": gpu.info.name, "error": e.to_string()});
                    println!("{error}");
                }
            }
        }
    }
    Ok(all_ok)
}
