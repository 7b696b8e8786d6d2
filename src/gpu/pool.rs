//! The one buffer allocator. A training step needs the same buffers every
//! step, so freed buffers are kept by (size, usage) and handed out again:
//! after the first step nothing is allocated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

type Key = (u64, wgpu::BufferUsages);

#[derive(Default)]
struct Free {
    buffers: HashMap<Key, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

/// Counters for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created on the device.
    pub created: u64,
    /// Requests served from freed buffers.
    pub reused: u64,
    /// Bytes of the buffers on loan now (what live tensors hold).
    pub on_loan: u64,
}

pub(crate) struct BufferPool {
    device: wgpu::Device,
    free: Arc<Mutex<Free>>,
}

/// A buffer on loan from the pool; it goes back when the last owner drops it.
pub struct PooledBuffer {
    buffer: wgpu::Buffer,
    usage: wgpu::BufferUsages,
    pool: Weak<Mutex<Free>>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut free = pool.lock().unwrap_or_else(|p| p.into_inner());
            free.stats.on_loan -= self.buffer.size();
            free.buffers.entry((self.buffer.size(), self.usage)).or_default().push(self.buffer.clone());
        }
    }
}

impl BufferPool {
    pub fn new(device: wgpu::Device) -> Self {
        BufferPool { device, free: Arc::default() }
    }

    /// A buffer of at least `bytes` (rounded up to 256, the largest uniform
    /// offset alignment wgpu allows, so a 64 KiB window can end at any
    /// buffer's end) with `usage`; its contents are whatever its last user
    /// left.
    pub fn take(&self, bytes: u64, usage: wgpu::BufferUsages) -> Arc<PooledBuffer> {
        let size = bytes.max(1).next_multiple_of(256);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let buffer = match free.buffers.get_mut(&(size, usage)).and_then(Vec::pop) {
            Some(buffer) => {
                free.stats.reused += 1;
                buffer
            }
            None => {
                free.stats.created += 1;
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size,
                    usage,
                    mapped_at_creation: false,
                })
            }
        };
        free.stats.on_loan += size;
        Arc::new(PooledBuffer { buffer, usage, pool: Arc::downgrade(&self.free) })
    }

    pub fn stats(&self) -> PoolStats {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).stats
    }
}
