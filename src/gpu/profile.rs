//! Per-dispatch timing. With timestamp queries each dispatch runs in a
//! compute pass of its own whose begin and end are stamped by the GPU; the
//! stamps are resolved in the step's encoder and copied for reading in a
//! SEPARATE submission (resolving and copying in one encoder can read
//! zeros on Vulkan), then scaled by the queue's timestamp period. Without
//! timestamps each dispatch is submitted alone and timed by the CPU clock
//! (labelled as such by `TimeSource`).

use std::time::Instant;

use super::dispatch::Dispatch;
use super::{Gpu, Result};

/// Where the times come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSource {
    GpuTimestamps,
    /// CPU wall time of one submission per dispatch, synchronised.
    CpuWallPerSubmission,
}

/// One dispatch's place on the timeline, ms, from the first dispatch's start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    pub start_ms: f64,
    pub ms: f64,
}

/// wgpu's cap on queries per set, two per dispatch.
const MAX_QUERIES: u32 = 4096;

impl Gpu {
    /// Runs `dispatches` in order and returns where each one ran.
    pub fn run_timed(&self, dispatches: &[&Dispatch]) -> Result<(TimeSource, Vec<Span>)> {
        let mut spans = Vec::with_capacity(dispatches.len());
        if !self.has_timestamps() {
            let origin = Instant::now();
            for d in dispatches {
                let start_ms = origin.elapsed().as_secs_f64() * 1e3;
                self.run(&[d])?;
                self.sync()?;
                spans.push(Span { start_ms, ms: origin.elapsed().as_secs_f64() * 1e3 - start_ms });
            }
            return Ok((TimeSource::CpuWallPerSubmission, spans));
        }
        // Chunks are separate submissions with their own clock origin: each
        // is laid after the previous one's end.
        let mut offset = 0.0;
        for chunk in dispatches.chunks((MAX_QUERIES / 2) as usize) {
            let part = self.stamp(chunk)?;
            let end = part.iter().map(|s| s.start_ms + s.ms).fold(0.0, f64::max);
            spans.extend(part.into_iter().map(|s| Span { start_ms: s.start_ms + offset, ..s }));
            offset += end;
        }
        Ok((TimeSource::GpuTimestamps, spans))
    }

    fn stamp(&self, dispatches: &[&Dispatch]) -> Result<Vec<Span>> {
        let count = 2 * dispatches.len() as u32;
        let bytes = count as u64 * 8;
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("dispatch timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolved = self.pool.take(bytes, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        self.scoped("timing kernels", || {
            let mut encoder = self.device.create_command_encoder(&Default::default());
            for (i, d) in dispatches.iter().enumerate() {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(d.label()),
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &queries,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    }),
                });
                d.record(&mut pass);
            }
            encoder.resolve_query_set(&queries, 0..count, resolved.buffer(), 0);
            self.queue.submit([encoder.finish()]);
        })?;
        // Copied in a submission of its own, after the resolve's.
        let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_bytes(resolved.buffer(), 0, bytes)?);
        let period_ns = self.queue.get_timestamp_period() as f64;
        let origin = stamps.iter().step_by(2).copied().min().unwrap_or(0);
        let ms = |ticks: u64| ticks as f64 * period_ns / 1e6;
        Ok(stamps
            .chunks(2)
            .map(|p| Span { start_ms: ms(p[0].saturating_sub(origin)), ms: ms(p[1].saturating_sub(p[0])) })
            .collect())
    }
}
