//! Where a step's time goes: every dispatch of a forward pass or training
//! step timed on the GPU (`Gpu::run_timed`), summed per kernel (label: op,
//! shape, dilation) and per phase, beside the step's own wall time.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::gpu::{Dispatch, Gpu, Result, TimeSource};
use crate::model::graph::{Graph, Phase};

#[derive(Clone, Debug, PartialEq)]
pub struct KernelRow {
    pub name: String,
    pub calls: usize,
    pub total_ms: f64,
}

#[derive(Clone, Debug)]
pub struct Profile {
    pub source: TimeSource,
    pub iters: usize,
    /// Per kernel label, summed over the timed iterations, largest first.
    pub rows: Vec<KernelRow>,
    /// Per phase, summed over the timed iterations.
    pub phases: BTreeMap<Phase, f64>,
    /// Median wall time of a normal (untimed, one submission) step, ms.
    pub step_ms: f64,
}

impl Profile {
    /// Total of the per-dispatch times over the timed iterations.
    pub fn total_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.total_ms).sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let total = self.total_ms();
        serde_json::json!({
            "time_source": format!("{:?}", self.source),
            "iterations": self.iters,
            "step_ms_median": self.step_ms,
            "kernels": self.rows.iter().map(|r| serde_json::json!({
                "name": r.name, "calls": r.calls, "total_ms": r.total_ms,
                "mean_ms": r.total_ms / r.calls as f64, "share": r.total_ms / total,
            })).collect::<Vec<_>>(),
            "phases_ms": self.phases.iter().map(|(p, ms)| (format!("{p:?}").to_lowercase(), *ms)).collect::<BTreeMap<_, _>>(),
        })
    }
}

/// Profiles `iters` training steps (`train`) or forward passes of `graph`,
/// after one warm-up (which compiles nothing new but settles the driver).
pub fn profile(gpu: &Gpu, graph: &mut Graph, train: bool, iters: usize) -> Result<Profile> {
    let iters = iters.max(1);
    let mut per_label: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut phases = BTreeMap::new();
    let mut source = TimeSource::GpuTimestamps;
    let mut walls = Vec::new();
    for it in 0..=iters {
        let step = it as u32 + 1;
        let list: Vec<(Phase, &Dispatch)> = if train {
            graph.step_dispatches(gpu, step, true)
        } else {
            graph.forward_dispatches().into_iter().map(|d| (Phase::Forward, d)).collect()
        };
        let dispatches: Vec<&Dispatch> = list.iter().map(|(_, d)| *d).collect();
        // The step as training runs it: one submission, timed by the CPU.
        let t = Instant::now();
        gpu.run(&dispatches)?;
        gpu.sync()?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let (src, times) = gpu.run_timed(&dispatches)?;
        if it == 0 {
            continue; // warm-up
        }
        walls.push(wall);
        source = src;
        for ((phase, d), ms) in list.iter().zip(times) {
            let e = per_label.entry(d.label().to_string()).or_default();
            e.0 += 1;
            e.1 += ms;
            *phases.entry(*phase).or_insert(0.0) += ms;
        }
    }
    walls.sort_by(f64::total_cmp);
    let mut rows: Vec<KernelRow> =
        per_label.into_iter().map(|(name, (calls, total_ms))| KernelRow { name, calls, total_ms }).collect();
    rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    Ok(Profile { source, iters, rows, phases, step_ms: walls[walls.len() / 2] })
}
