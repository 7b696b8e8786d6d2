//! Where a step's time goes: every dispatch of a forward pass or training
//! step timed on the GPU (`Gpu::run_timed`), summed per kernel (label: op,
//! shape, dilation) and per phase, beside the step's own wall time, with
//! rates from the dispatches' analytic counts (`Cost`) and a timeline of
//! every dispatch for Chrome's trace-event format.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::gpu::{Cost, Dispatch, Gpu, Result, TimeSource};
use crate::model::graph::{Graph, Phase};

#[derive(Clone, Debug, PartialEq)]
pub struct KernelRow {
    pub name: String,
    pub calls: usize,
    pub total_ms: f64,
    /// Counted work summed over the calls.
    pub cost: Cost,
}

impl KernelRow {
    pub fn gflops(&self) -> f64 {
        self.cost.flops / self.total_ms / 1e6
    }

    pub fn gbytes_per_s(&self) -> f64 {
        self.cost.bytes / self.total_ms / 1e6
    }
}

/// One timed dispatch on the profile's timeline (iterations laid end to end).
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub phase: Phase,
    pub iteration: usize,
    pub start_ms: f64,
    pub ms: f64,
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
    pub events: Vec<Event>,
    /// The warm-up iteration's launches in order (label, ms): where a
    /// driver compiles a pipeline at its first launch, as lavapipe does (its
    /// LLVM step), that launch holds the compile (docs/KERNELS.md "Start-up").
    pub first: Vec<(String, f64)>,
}

impl Profile {
    /// Launches per iteration: each also costs the adapter something the
    /// timestamps leave out (on lavapipe waking its worker threads, about
    /// 0.05 ms).
    pub fn launches_per_iter(&self) -> f64 {
        self.rows.iter().map(|r| r.calls).sum::<usize>() as f64 / self.iters as f64
    }

    /// Total of the per-dispatch times over the timed iterations.
    pub fn total_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.total_ms).sum()
    }

    /// The warm-up iteration's launches' sum, ms.
    pub fn first_ms(&self) -> f64 {
        self.first.iter().map(|f| f.1).sum()
    }

    /// The warm-up iteration's `n` slowest launches, slowest first.
    pub fn slowest_first(&self, n: usize) -> Vec<(String, f64)> {
        let mut first = self.first.clone();
        first.sort_by(|a, b| b.1.total_cmp(&a.1));
        first.truncate(n);
        first
    }

    pub fn to_json(&self) -> serde_json::Value {
        let total = self.total_ms();
        serde_json::json!({
            "time_source": format!("{:?}", self.source),
            "iterations": self.iters,
            "step_ms_median": self.step_ms,
            "launches_per_iteration": self.launches_per_iter(),
            "kernels": self.rows.iter().map(|r| serde_json::json!({
                "name": r.name, "calls": r.calls, "total_ms": r.total_ms,
                "mean_ms": r.total_ms / r.calls as f64, "share": r.total_ms / total,
                "gflops": r.gflops(), "gbytes_per_s": r.gbytes_per_s(),
            })).collect::<Vec<_>>(),
            "phases_ms": self.phases.iter().map(|(p, ms)| (phase_name(*p), *ms)).collect::<BTreeMap<_, _>>(),
            "first_iteration_ms": self.first_ms(),
            // Every warm-up launch, slowest first: on a cold start, which
            // kernels' compiles the seconds went to.
            "first_iteration_slowest": self.slowest_first(self.first.len()).iter()
                .map(|(name, ms)| serde_json::json!({"name": name, "ms": ms})).collect::<Vec<_>>(),
        })
    }

    /// Chrome trace-event JSON (Perfetto, chrome://tracing): one complete
    /// ("X") event per timed dispatch, microseconds, one track per phase.
    pub fn to_trace(&self) -> serde_json::Value {
        let events: Vec<_> = self
            .events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name, "cat": phase_name(e.phase), "ph": "X", "pid": 1, "tid": e.phase as u32,
                    "ts": e.start_ms * 1e3, "dur": e.ms * 1e3, "args": {"iteration": e.iteration},
                })
            })
            .collect();
        serde_json::json!({
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {"time_source": format!("{:?}", self.source)},
        })
    }
}

fn phase_name(p: Phase) -> String {
    format!("{p:?}").to_lowercase()
}

/// The warm-up launches the profile's table lists, slowest first (its JSON
/// lists them all).
pub const FIRST_SHOWN: usize = 10;

/// Profiles `iters` training steps (`train`) or forward passes of `graph`,
/// after one warm-up, timed too: it settles the driver, and on lavapipe its
/// launches compile their pipelines (`Profile::first`).
pub fn profile(gpu: &Gpu, graph: &mut Graph, train: bool, iters: usize) -> Result<Profile> {
    let iters = iters.max(1);
    let mut per_label: BTreeMap<String, KernelRow> = BTreeMap::new();
    let mut phases = BTreeMap::new();
    let mut source = TimeSource::GpuTimestamps;
    let mut walls = Vec::new();
    let mut events = Vec::new();
    let mut origin = 0.0;
    let mut first = Vec::new();
    for it in 0..=iters {
        let step = it as u32 + 1;
        let list: Vec<(Phase, &Dispatch)> = if train {
            graph.step_dispatches(gpu, step, true)
        } else {
            graph.forward_dispatches().into_iter().map(|d| (Phase::Forward, d)).collect()
        };
        let dispatches: Vec<&Dispatch> = list.iter().map(|(_, d)| *d).collect();
        if it == 0 {
            let (_, spans) = gpu.run_timed(&dispatches)?;
            first = dispatches.iter().zip(&spans).map(|(d, s)| (d.label().to_string(), s.ms)).collect();
            continue;
        }
        // The step as training runs it: one submission, timed by the CPU.
        let t = Instant::now();
        gpu.run(&dispatches)?;
        gpu.sync()?;
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let (src, spans) = gpu.run_timed(&dispatches)?;
        walls.push(wall);
        source = src;
        for ((phase, d), span) in list.iter().zip(&spans) {
            let row = per_label.entry(d.label().to_string()).or_insert_with(|| KernelRow {
                name: d.label().to_string(),
                calls: 0,
                total_ms: 0.0,
                cost: Cost::default(),
            });
            row.calls += 1;
            row.total_ms += span.ms;
            row.cost.flops += d.cost().flops;
            row.cost.bytes += d.cost().bytes;
            *phases.entry(*phase).or_insert(0.0) += span.ms;
            events.push(Event {
                name: d.label().to_string(),
                phase: *phase,
                iteration: it,
                start_ms: origin + span.start_ms,
                ms: span.ms,
            });
        }
        origin += spans.iter().map(|s| s.start_ms + s.ms).fold(0.0, f64::max);
    }
    walls.sort_by(f64::total_cmp);
    let mut rows: Vec<KernelRow> = per_label.into_values().collect();
    rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
    Ok(Profile { source, iters, rows, phases, step_ms: walls[walls.len() / 2], events, first })
}
