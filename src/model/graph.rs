//! The network on the GPU. Every buffer is allocated and every dispatch
//! recorded once, when the graph is built for an input shape; a training
//! step rewrites two counters (dropout mask, Adam bias correction) and
//! replays forward, loss, backward and update in ONE submission, reading
//! nothing back unless the loss is asked for.
//!
//! Buffers: the input (when it is normalised), the concatenation's parts
//! (the normalised input, each dilated layer's output: channel slices of
//! one tensor, or, when that tensor would exceed the device's binding
//! limit, tensors of their own, so an image is limited by what one layer
//! needs, not by the whole concatenation), each block's convolution
//! output `t`, head outputs, the logits; in training, their gradients
//! mirror them. A deferred norm block (`View::affine`, on CPU adapters)
//! stores only `t`, in its output's place, and its readers apply the
//! block as they load. CPU oracle: `model::reference`.

use super::config::{NormKind, OutputKind};
use super::params::ParamSet;
use super::{Architecture, Block, ParamSpec, Place};
use crate::gpu::{Dispatch, Gpu, GpuError, Prewarm, Result, Tensor, View};
use crate::nn::{self, Activation, NormStats, SigmoidLoss};
use crate::ops::{self, conv::InputDropout, loss::LossKind, norm::NormTensors, optim::Update};
use crate::shape::Shape;

/// Which part of a step a dispatch belongs to (the loss counts as backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
}

/// The optimiser of a training graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Adam(nn::Adam),
    Sgd(nn::Sgd),
}

/// What a training graph needs beyond the model.
#[derive(Clone, Debug)]
pub struct TrainSetup {
    pub optimizer: Optimizer,
    /// Terms of a sigmoid output's loss.
    pub sigmoid_loss: SigmoidLoss,
    /// Per-class cross-entropy weights for a softmax output.
    pub class_weights: Option<Vec<f32>>,
    pub dropout_seed: u32,
}

/// A channel slice held by value (a `View` borrows): a part of the
/// concatenation or its gradient, with a deferred norm block's table
/// (`View::affine`) where it holds one's input.
#[derive(Clone)]
struct Slice {
    tensor: Tensor,
    offset: usize,
    c: usize,
    affine: Option<Tensor>,
}

impl Slice {
    fn whole(t: &Tensor) -> Self {
        Slice { tensor: t.clone(), offset: 0, c: t.shape.c, affine: None }
    }

    fn view(&self) -> View<'_> {
        View { affine: self.affine.as_ref(), ..self.tensor.channels(self.offset, self.c) }
    }

    /// The slice as stored (without its deferred block).
    fn stored(&self) -> Slice {
        Slice { affine: None, ..self.clone() }
    }

    fn deferred(&self, table: &Tensor) -> Slice {
        Slice { affine: Some(table.clone()), ..self.clone() }
    }
}

/// Entries of a deferred norm block's table: conv.wgsl's PACK_LEN vec4s, one
/// per (sample, channel) of the buffer it describes.
const DEFERRED_ENTRIES: usize = 4096;

/// A table for deferred norm blocks (`View::affine`), every entry (0, 0,
/// 0, 1): a channel read as stored, until a deferred block's statistics
/// pass writes its own.
fn deferred_table(gpu: &Gpu) -> Result<Tensor> {
    let table = gpu.uniform_table(4 * DEFERRED_ENTRIES)?;
    gpu.write(&table, &[0.0, 0.0, 0.0, 1.0].repeat(DEFERRED_ENTRIES))?;
    Ok(table)
}

/// Parts of `channels` each (N x c x H x W): consecutive parts share a
/// tensor as long as it fits one binding (all of them, unless the image is
/// large), so a convolution over them takes few passes.
fn concat_parts(gpu: &Gpu, n: usize, h: usize, w: usize, channels: &[usize]) -> Result<Vec<Slice>> {
    let channel_bytes = (n * h * w * 4) as u64;
    let limit = gpu.limits.max_storage_buffer_binding_size;
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &c in channels {
        match groups.last_mut() {
            Some(g) if (g.iter().sum::<usize>() + c) as u64 * channel_bytes <= limit => g.push(c),
            _ => groups.push(vec![c]),
        }
    }
    let mut parts = Vec::with_capacity(channels.len());
    for g in groups {
        let t = gpu.tensor(Shape::new(n, g.iter().sum(), h, w))?;
        let mut offset = 0;
        for c in g {
            parts.push(Slice { tensor: t.clone(), offset, c, affine: None });
            offset += c;
        }
    }
    Ok(parts)
}

/// Views of `parts`, consecutive slices of one tensor merged: what a
/// convolution over the concatenation binds (one pass where it fits).
fn views(parts: &[Slice]) -> Vec<View<'_>> {
    let mut out: Vec<View> = Vec::new();
    for p in parts {
        match out.last_mut() {
            Some(last)
                if last.tensor.same_storage(&p.tensor)
                    && last.c_offset + last.c == p.offset
                    && match (last.affine, &p.affine) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a.same_storage(b),
                        _ => false,
                    } =>
            {
                last.c += p.c
            }
            _ => out.push(p.view()),
        }
    }
    out
}

/// A norm block's per-group statistics, kept from forward to backward.
struct NormBufs {
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
}

/// One block's buffers, for the backward pass.
struct BlockBufs {
    /// The convolution's input: one slice, or the concatenation's parts.
    input: Vec<Slice>,
    /// The convolution's output. With a norm block, the block's output
    /// before the activation is never stored: the activation is fused into
    /// it (`ops::norm` with an activation) and its backward works the
    /// block's output out again. A deferred block's `t` is `out` as stored.
    t: Slice,
    out: Slice,
    norm: Option<(String, NormBufs)>,
    /// The head's dropout where the convolution does it (its input is the
    /// concatenation; `ops::conv::InputDropout`).
    drop: Option<InputDropout>,
}

/// Where a norm block reads its input in the forward pass: what gathers
/// its statistics outside the graph (exact tiles of an instance-norm model,
/// `infer.rs`) reads `input` after running the first `after` dispatches.
pub struct NormSite {
    pub prefix: String,
    input: Slice,
    pub after: usize,
}

impl NormSite {
    /// The channels of the block's input.
    pub fn channels(&self) -> usize {
        self.input.c
    }
}

pub struct Graph {
    pub arch: Architecture,
    /// The input shape (N x in_channels x H x W).
    pub shape: Shape,
    specs: Vec<ParamSpec>,
    /// The trainable ones are parts of one buffer (`trainable_parts`), as
    /// are their gradients and each optimiser moment: one launch updates all.
    params: Vec<Tensor>,
    /// Gradients of trainable parameters (None for running statistics).
    grads: Vec<Option<Tensor>>,
    /// Optimiser state per trainable parameter: Adam [m, v] or SGD [momentum].
    state: Vec<Vec<Tensor>>,
    /// Where `set_input` writes: the input buffer, or the concatenation's
    /// first part when there is no input norm.
    input: Slice,
    logits: Tensor,
    /// Input norm and dilated layers (up to the concatenation).
    trunk: Vec<Dispatch>,
    /// Dropout of the concatenation, part by part.
    dropout_forward: Vec<Dispatch>,
    /// Head layers and the output convolution.
    head: Vec<Dispatch>,
    /// Loss, then backward through the output convolution and the head.
    head_backward: Vec<Dispatch>,
    dropout_backward: Vec<Dispatch>,
    /// Backward through the dilated layers and the input norm.
    trunk_backward: Vec<Dispatch>,
    /// Every norm block's input, in forward order.
    norm_sites: Vec<NormSite>,
    /// The optimiser's one launch over every trainable parameter.
    update: Option<Update>,
    /// The loss's targets and sums (its dispatches are in `head_backward`).
    loss: Option<ops::loss::Loss>,
    optimizer: Option<Optimizer>,
}

fn norm_stats(norm: NormKind) -> NormStats {
    match norm {
        NormKind::Batch => NormStats::PerChannel,
        _ => NormStats::PerSample,
    }
}

/// Builds dispatches that share the graph's tensors.
struct Builder<'a> {
    gpu: &'a Gpu,
    specs: &'a [ParamSpec],
    params: &'a [Tensor],
    stats: NormStats,
    batch_norm: bool,
    training: bool,
    n: usize,
}

impl Builder<'_> {
    fn param(&self, name: &str) -> Tensor {
        let i = self.specs.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("no parameter {name}"));
        self.params[i].clone()
    }

    /// The norm block `y = x + Norm(x)`, then `act(y)` when an activation
    /// follows: batch statistics (and the running-statistics update) in
    /// training, running statistics in batch-norm inference, per-sample
    /// statistics for instance norm.
    #[allow(clippy::too_many_arguments)]
    fn norm_forward(
        &self,
        out: &mut Vec<Dispatch>,
        prefix: &str,
        x: View,
        act: Option<Activation>,
        y: View,
        residual: Option<View>,
        deferred: Option<&Tensor>,
    ) -> Result<NormBufs> {
        let gpu = self.gpu;
        let groups = self.stats.groups(self.n, x.c);
        let bufs = NormBufs {
            gamma: self.param(&format!("{prefix}.weight")),
            beta: self.param(&format!("{prefix}.bias")),
            mean: gpu.tensor(Shape::vector(groups))?,
            var: gpu.tensor(Shape::vector(groups))?,
        };
        let running = self
            .batch_norm
            .then(|| (self.param(&format!("{prefix}.running_mean")), self.param(&format!("{prefix}.running_var"))));
        let apply = |stats, t: &NormTensors| match residual {
            Some(r) => ops::norm::apply_with_residual(gpu, x, stats, t, act, y, r),
            None => Ok(vec![ops::norm::apply(gpu, x, stats, t, act, y)?]),
        };
        if let (Some((rm, rv)), false) = (&running, self.training) {
            let t = NormTensors { gamma: &bufs.gamma, beta: &bufs.beta, mean: rm, var: rv };
            out.extend(apply(NormStats::PerChannel, &t)?);
            return Ok(bufs);
        }
        let t = NormTensors { gamma: &bufs.gamma, beta: &bufs.beta, mean: &bufs.mean, var: &bufs.var };
        match deferred {
            // The block's output is y = x as stored, read through the table.
            Some(table) => out.extend(ops::norm::moments_deferred(gpu, x, self.stats, &t, act, table)?),
            None => out.extend(ops::norm::moments(gpu, x, self.stats, &bufs.mean, &bufs.var)?),
        }
        if let Some((rm, rv)) = &running {
            out.push(ops::norm::update_running(gpu, x, &bufs.mean, &bufs.var, rm, rv)?);
        }
        if deferred.is_none() {
            out.extend(apply(self.stats, &t)?);
        }
        Ok(bufs)
    }

    /// Backward of the norm block (and `act` after it) on `x` given `dy`,
    /// the gradient of the block's (activation's) output; writes the gamma
    /// and beta gradients, and with `dx` (where x is a convolution's output)
    /// x's gradient and the gradient of that convolution's bias.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        out: &mut Vec<Dispatch>,
        grads: &Grads,
        prefix: &str,
        bufs: &NormBufs,
        x: View,
        act: Option<Activation>,
        dy: View,
        dx: Option<(View, &Tensor)>,
    ) -> Result<()> {
        let gpu = self.gpu;
        let sums = gpu.tensor(Shape::vector(2 * self.stats.groups(self.n, x.c)))?;
        let t = NormTensors { gamma: &bufs.gamma, beta: &bufs.beta, mean: &bufs.mean, var: &bufs.var };
        out.extend(ops::norm::backward_sums(gpu, x, dy, self.stats, &t, act, &sums)?);
        if let Some((dx, _)) = dx {
            out.push(ops::norm::backward_data(gpu, x, dy, self.stats, &t, act, &sums, dx)?);
        }
        let (dgamma, dbeta) = (grads.of(&format!("{prefix}.weight")), grads.of(&format!("{prefix}.bias")));
        let conv_bias = dx.map(|(_, db)| db);
        out.push(ops::norm::param_grads(gpu, x, self.stats, &sums, &dgamma, &dbeta, conv_bias)?);
        Ok(())
    }

    /// Weight and (when wanted) input gradients of block `b`'s convolution,
    /// given the gradient `dy` of its output (its bias's: the caller's).
    fn conv_backward(
        &self,
        out: &mut Vec<Dispatch>,
        grads: &Grads,
        b: &Block,
        (input, drop): (&[Slice], Option<InputDropout>),
        dy: View,
        dx: Option<InputGrad>,
    ) -> Result<()> {
        let gpu = self.gpu;
        let dw = grads.of(&format!("{}.weight", b.conv));
        let w = self.param(&format!("{}.weight", b.conv));
        if let Some(InputGrad::Write(dxs)) = &dx {
            // One function for both: they may share dy's packing.
            out.extend(ops::conv::backward_parts(gpu, &views(input), dy, &w, b.dilation, &dw, &views(dxs), drop)?);
            return Ok(());
        }
        out.extend(ops::conv::backward_weight_parts(gpu, &views(input), dy, b.dilation, &dw, drop)?);
        match dx {
            Some(InputGrad::Add { dx, residual: None }) => {
                out.extend(ops::conv::backward_data(gpu, dy, &w, b.dilation, dx.view(), true)?)
            }
            Some(InputGrad::Add { dx, residual: Some(r) }) => {
                out.extend(ops::conv::backward_data_adding(gpu, dy, &w, b.dilation, dx.view(), r.view())?)
            }
            Some(InputGrad::Write(_)) | None => {}
        }
        Ok(())
    }
}

/// Where a block's input gradient goes.
enum InputGrad {
    /// Added into a slice that other consumers also feed (the trunk), with
    /// the layer's residual gradient (the output's, unchanged by the
    /// block's backward) when it adds its input to its output.
    Add { dx: Slice, residual: Option<Slice> },
    /// Written into the slice, or the concatenation's parts, it mirrors.
    Write(Vec<Slice>),
}

/// A part of one zeroed buffer for each trainable parameter of `specs` (None
/// for running statistics), and that buffer.
fn trainable_parts(gpu: &Gpu, specs: &[ParamSpec]) -> Result<(Tensor, Vec<Option<Tensor>>)> {
    let shapes: Vec<Shape> = specs.iter().filter(|s| s.kind.trainable()).map(|s| s.shape).collect();
    let (whole, mut parts) = gpu.tensors_in_one(&shapes)?;
    parts.reverse();
    let placed = specs.iter().map(|s| if s.kind.trainable() { parts.pop() } else { None }).collect();
    Ok((whole, placed))
}

/// Parameter gradients by name.
struct Grads<'a> {
    specs: &'a [ParamSpec],
    grads: &'a [Option<Tensor>],
}

impl Grads<'_> {
    fn of(&self, name: &str) -> Tensor {
        let i = self.specs.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("no parameter {name}"));
        self.grads[i].clone().unwrap_or_else(|| panic!("{name} is not trainable"))
    }
}

impl Graph {
    /// Builds the graph for inputs of `shape`: training when `train` is
    /// given (batch statistics, dropout, loss, backward, optimiser), else
    /// inference.
    pub fn new(
        gpu: &Gpu,
        arch: &Architecture,
        values: &ParamSet,
        shape: Shape,
        train: Option<&TrainSetup>,
    ) -> Result<Self> {
        let cfg = &arch.config;
        if shape.c != cfg.in_channels {
            return Err(GpuError::Shape {
                kernel: "graph".into(),
                message: format!("input {shape} for a model of {} input channels", cfg.in_channels),
            });
        }
        let specs = arch.params();
        let (trainable, parts) = trainable_parts(gpu, &specs)?;
        let params = specs
            .iter()
            .zip(parts)
            .zip(&values.values)
            .map(|((s, part), v)| {
                let t = match part {
                    Some(t) => t,
                    None => gpu.tensor(s.shape)?,
                };
                gpu.write(&t, v)?;
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        let (n, h, w) = (shape.n, shape.h, shape.w);
        let act = cfg.activation();
        let training = train.is_some();
        let bld = Builder {
            gpu,
            specs: &specs,
            params: &params,
            stats: norm_stats(cfg.norm),
            batch_norm: cfg.norm == NormKind::Batch,
            training,
            n,
        };

        // ---- forward
        let mut trunk = Vec::new();
        let mut head = Vec::new();
        let mut norm_sites = Vec::new();
        // The concatenation's parts: the (normalised) input, each dilated layer.
        let widths: Vec<usize> = std::iter::once(cfg.in_channels)
            .chain(arch.blocks.iter().filter(|b| matches!(b.place, Place::Concat { .. })).map(|b| b.cout))
            .collect();
        let parts = concat_parts(gpu, n, h, w, &widths)?;
        let (input, input_norm) = match &arch.input_norm {
            Some(prefix) => {
                let input = Slice::whole(&gpu.tensor(shape)?);
                norm_sites.push(NormSite { prefix: prefix.clone(), input: input.clone(), after: 0 });
                let bufs = bld.norm_forward(&mut trunk, prefix, input.view(), None, parts[0].view(), None, None)?;
                (input, Some((prefix.clone(), bufs)))
            }
            None => (parts[0].clone(), None),
        };
        let dropout_p = if training { cfg.dropout } else { 0.0 };
        let dropout_seed = train.map_or(0, |t| t.dropout_seed);
        let mut dropout_forward = Vec::new();
        // The head's first convolution drops out its input itself where its
        // kernels can (no pass, no dropped copy); else a dropout pass into
        // a copy of the concatenation.
        let head_cout = arch.blocks.iter().find(|b| !matches!(b.place, Place::Concat { .. })).map_or(0, |b| b.cout);
        let fused = dropout_p > 0.0 && ops::conv::takes_dropout(gpu, &views(&parts), head_cout);
        let head_drop = fused.then_some(InputDropout { p: dropout_p, seed: dropout_seed });
        // Deferred norm blocks (`View::affine`): a block's output act(t +
        // Norm(t)) is not stored where every convolution reading it applies
        // it as it loads (`ops::conv::reads_deferred`); its statistics pass
        // writes the table they read, and no apply pass runs. Not with the
        // running statistics (batch-norm inference has no statistics pass to
        // write the table), nor where a residual reads a block's output,
        // nor past a table's entries. The concatenation's parts share a
        // table per tensor (one, unless it exceeds a binding); a part
        // stored as it is read (the normalised input) keeps its initial
        // entries.
        let defers = (training || cfg.norm != NormKind::Batch) && !arch.blocks.iter().any(|b| b.residual);
        let fits = |t: &Tensor| n * t.shape.c <= DEFERRED_ENTRIES;
        let cat_defers = defers
            && arch.blocks.iter().any(|b| matches!(b.place, Place::Concat { .. }) && b.norm.is_some())
            && (dropout_p == 0.0 || fused)
            && parts.iter().all(|p| fits(&p.tensor))
            && arch.blocks.iter().all(|b| match b.place {
                Place::Concat { .. } => ops::conv::reads_deferred(gpu, b.cin, b.cout, b.kernel),
                _ => true,
            })
            && arch.blocks.iter().find(|b| !matches!(b.place, Place::Concat { .. })).is_some_and(|hb| {
                views(&parts).iter().all(|v| ops::conv::reads_deferred(gpu, v.c, hb.cout, hb.kernel))
            });
        let parts: Vec<Slice> = if cat_defers {
            let mut tables: Vec<(Tensor, Tensor)> = Vec::new();
            let mut deferred = Vec::with_capacity(parts.len());
            for p in &parts {
                let table = match tables.iter().find(|(t, _)| t.same_storage(&p.tensor)) {
                    Some((_, table)) => table.clone(),
                    None => {
                        let table = deferred_table(gpu)?;
                        tables.push((p.tensor.clone(), table.clone()));
                        table
                    }
                };
                deferred.push(p.deferred(&table));
            }
            deferred
        } else {
            parts
        };
        let head_input = if dropout_p > 0.0 && !fused {
            let dropped = concat_parts(gpu, n, h, w, &widths)?;
            let mut offset = 0;
            for (x, y) in views(&parts).into_iter().zip(views(&dropped)) {
                let mask = (arch.cat_channels, offset);
                dropout_forward.push(ops::dropout::apply_part(gpu, x, dropout_p, dropout_seed, 1, y, mask)?);
                offset += x.c;
            }
            dropped
        } else {
            parts.clone()
        };
        let mut blocks: Vec<BlockBufs> = Vec::new();
        let mut layer = 0;
        let mut head_prev: Option<Slice> = None;
        let mut out_input = None;
        let mut logits = None;
        for (i, b) in arch.blocks.iter().enumerate() {
            let dilated = matches!(b.place, Place::Concat { .. });
            // Where `list` starts in the forward order (the head follows the trunk and dropout).
            let base = if dilated { 0 } else { trunk.len() + dropout_forward.len() };
            let list = if dilated { &mut trunk } else { &mut head };
            let (input, drop) = match (dilated, &head_prev) {
                (true, _) => (vec![parts[layer].clone()], None),
                (false, Some(prev)) => (vec![prev.clone()], None),
                (false, None) => (head_input.clone(), head_drop),
            };
            let shape_t = Shape::new(n, b.cout, h, w);
            let (wt, bias) = (bld.param(&format!("{}.weight", b.conv)), bld.param(&format!("{}.bias", b.conv)));
            if b.place == Place::Out {
                let t = gpu.tensor(shape_t)?;
                list.extend(ops::conv::forward_parts(gpu, &views(&input), &wt, &bias, b.dilation, t.view(), drop)?);
                out_input = Some((input, drop));
                logits = Some(t);
                break;
            }
            // How the block's output is read (`out`) and where it is
            // written (`stored`): a head block's is deferred where its
            // reader (the next 1x1 convolution) takes it.
            let (stored, table) = if dilated {
                (parts[layer + 1].stored(), parts[layer + 1].affine.clone().filter(|_| b.norm.is_some()))
            } else {
                let reader = &arch.blocks[i + 1];
                let stored = Slice::whole(&gpu.tensor(shape_t)?);
                let defer = defers
                    && b.norm.is_some()
                    && fits(&stored.tensor)
                    && ops::conv::reads_deferred(gpu, b.cout, reader.cout, reader.kernel);
                (stored, defer.then(|| deferred_table(gpu)).transpose()?)
            };
            let out = match (&table, dilated) {
                (_, true) => parts[layer + 1].clone(),
                (Some(table), false) => stored.deferred(table),
                (None, false) => stored.clone(),
            };
            // A deferred block's convolution writes its output in place.
            let t = if table.is_some() { stored.clone() } else { Slice::whole(&gpu.tensor(shape_t)?) };
            list.extend(ops::conv::forward_parts(gpu, &views(&input), &wt, &bias, b.dilation, t.view(), drop)?);
            // The residual is added after the activation: by the norm
            // block's apply where there is one (ops::norm::apply_with_residual).
            let residual = b.residual.then(|| input[0].view());
            let norm = match &b.norm {
                Some(prefix) => {
                    norm_sites.push(NormSite { prefix: prefix.clone(), input: t.clone(), after: base + list.len() });
                    let bufs =
                        bld.norm_forward(list, prefix, t.view(), Some(act), stored.view(), residual, table.as_ref())?;
                    Some((prefix.clone(), bufs))
                }
                None => {
                    list.push(ops::elementwise::act_forward(gpu, t.view(), act, stored.view())?);
                    list.extend(residual.map(|r| ops::elementwise::add(gpu, r, stored.view())).transpose()?);
                    None
                }
            };
            if dilated {
                layer += 1;
            } else {
                head_prev = Some(out.clone());
            }
            blocks.push(BlockBufs { input, t, out, norm, drop });
        }
        let (Some(logits), Some(out_input)) = (logits, out_input) else {
            unreachable!("an architecture ends with its output convolution")
        };

        let mut graph = Graph {
            arch: arch.clone(),
            shape,
            grads: specs.iter().map(|_| None).collect(),
            state: Vec::new(),
            specs: specs.clone(),
            params: params.clone(),
            input,
            logits,
            trunk,
            dropout_forward,
            head,
            head_backward: Vec::new(),
            dropout_backward: Vec::new(),
            trunk_backward: Vec::new(),
            norm_sites,
            update: None,
            loss: None,
            optimizer: train.map(|t| t.optimizer),
        };
        let Some(setup) = train else { return Ok(graph) };

        // ---- loss and backward
        let (grad_all, grads) = trainable_parts(gpu, &specs)?;
        let g = Grads { specs: &specs, grads: &grads };
        let target = gpu.tensor(shape.with_c(1))?;
        let dlogits = gpu.tensor(graph.logits.shape)?;
        let kind = match cfg.output {
            OutputKind::Softmax => LossKind::SoftmaxCrossEntropy { class_weights: setup.class_weights.clone() },
            OutputKind::Sigmoid => LossKind::Sigmoid(setup.sigmoid_loss),
            OutputKind::Linear => LossKind::Mse,
        };
        let mut loss = ops::loss::build(gpu, &graph.logits, &target, &kind, &dlogits)?;
        let mut head_backward = std::mem::take(&mut loss.dispatches);
        let dparts = concat_parts(gpu, n, h, w, &widths)?;
        let dhead_input =
            if graph.dropout_forward.is_empty() { dparts.clone() } else { concat_parts(gpu, n, h, w, &widths)? };
        let dilated = arch.blocks.iter().filter(|b| matches!(b.place, Place::Concat { .. })).count();
        // The gradient of each head block's output, then of the output conv's.
        let mut douts: Vec<Slice> = Vec::new();
        for bb in &blocks[dilated..] {
            douts.push(Slice::whole(&gpu.tensor(bb.out.view().shape())?));
        }
        let out_block = arch.blocks.last().expect("output block");
        let d_out_input = douts.last().map_or_else(|| dhead_input.clone(), |d| vec![d.clone()]);
        let d_out_bias = g.of(&format!("{}.bias", out_block.conv));
        head_backward.extend(ops::conv::backward_bias(gpu, dlogits.view(), &d_out_bias)?);
        bld.conv_backward(
            &mut head_backward,
            &g,
            out_block,
            (&out_input.0, out_input.1),
            dlogits.view(),
            Some(InputGrad::Write(d_out_input)),
        )?;
        for (j, (b, bb)) in arch.blocks[dilated..arch.blocks.len() - 1].iter().zip(&blocks[dilated..]).enumerate().rev()
        {
            let dinput = if j == 0 { dhead_input.clone() } else { vec![douts[j - 1].clone()] };
            graph.block_backward(
                &bld,
                &g,
                &mut head_backward,
                b,
                bb,
                douts[j].view(),
                Some(InputGrad::Write(dinput)),
            )?;
        }
        if !graph.dropout_forward.is_empty() {
            let mut offset = 0;
            for (d, dpart) in views(&dhead_input).into_iter().zip(views(&dparts)) {
                let mask = (arch.cat_channels, offset);
                graph.dropout_backward.push(ops::dropout::apply_part(gpu, d, dropout_p, dropout_seed, 1, dpart, mask)?);
                offset += d.c;
            }
        }
        let mut trunk_backward = Vec::new();
        for (i, (b, bb)) in arch.blocks[..dilated].iter().zip(&blocks[..dilated]).enumerate().rev() {
            let (dout, dinput) = (&dparts[i + 1], &dparts[i]);
            // Layer 1's input gradient only feeds the input norm's parameters.
            let wanted = i > 0 || input_norm.is_some();
            // The residual's gradient: added by the convolution's data
            // gradient where the block has a norm (its backward leaves dout
            // as it is), else first (the activation's backward works on
            // dout in place).
            let mut residual = None;
            if b.residual {
                if bb.norm.is_some() && wanted {
                    residual = Some(dout.clone());
                } else {
                    trunk_backward.push(ops::elementwise::add(gpu, dout.view(), dinput.view())?);
                }
            }
            graph.block_backward(
                &bld,
                &g,
                &mut trunk_backward,
                b,
                bb,
                dout.view(),
                wanted.then(|| InputGrad::Add { dx: dinput.clone(), residual }),
            )?;
        }
        if let Some((prefix, bufs)) = &input_norm {
            bld.norm_backward(&mut trunk_backward, &g, prefix, bufs, graph.input.view(), None, dparts[0].view(), None)?;
        }

        // ---- optimiser: one launch over the parameters' buffer (its gaps
        // between parts stay zero: a zero gradient and zero moments update
        // a zero parameter by zero).
        let moments = if matches!(setup.optimizer, Optimizer::Adam(_)) { 2 } else { 1 };
        let per_moment: Vec<(Tensor, Vec<Option<Tensor>>)> =
            (0..moments).map(|_| trainable_parts(gpu, &specs)).collect::<Result<_>>()?;
        graph.update = Some(match &setup.optimizer {
            Optimizer::Adam(hp) => {
                ops::optim::adam(gpu, &trainable, &grad_all, &per_moment[0].0, &per_moment[1].0, hp)?
            }
            Optimizer::Sgd(hp) => ops::optim::sgd(gpu, &trainable, &grad_all, &per_moment[0].0, hp)?,
        });
        // Per parameter, its moments' parts (checkpoints read them by name).
        graph.state = (0..specs.len())
            .filter(|&i| grads[i].is_some())
            .map(|i| per_moment.iter().map(|(_, parts)| parts[i].clone().expect("a trainable part")).collect())
            .collect();
        graph.head_backward = head_backward;
        graph.trunk_backward = trunk_backward;
        graph.grads = grads;
        graph.loss = Some(loss);
        Ok(graph)
    }

    /// Starts compiling the kernels of the plans for `plans` (shape, and the
    /// training setup of a training plan), in the order they will first
    /// run, on the spare cores (`Gpu::prewarm`). Their launches come from
    /// the plans built without pipelines (`Gpu::planning`: moments), so the
    /// twins compile while the caller creates the real plans' pipelines
    /// (seconds on lavapipe) and makes their first launches; keep the guard
    /// until then.
    pub fn prewarm(
        gpu: &Gpu,
        arch: &Architecture,
        values: &ParamSet,
        plans: &[(Shape, Option<&TrainSetup>)],
    ) -> Result<Option<Prewarm>> {
        gpu.planning(|| {
            let planned = plans
                .iter()
                .map(|&(shape, train)| Graph::new(gpu, arch, values, shape, train))
                .collect::<Result<Vec<_>>>()?;
            Ok(gpu.prewarm(&planned.iter().map(Graph::dispatches).collect::<Vec<_>>()))
        })
    }

    /// The device memory a graph of `shape` holds, found by building two tiny
    /// ones: what a graph allocates is an affine function of its pixel count
    /// (weights, optimiser state and tables; activations and gradients per
    /// pixel), so a plan can be checked against the device
    /// (`Gpu::check_memory`) before anything large is allocated.
    pub fn memory_need(
        gpu: &Gpu,
        arch: &Architecture,
        values: &ParamSet,
        shape: Shape,
        train: Option<&TrainSetup>,
    ) -> Result<u64> {
        let held = |h: usize, w: usize| -> Result<u64> {
            let before = gpu.pool_stats().on_loan;
            let graph = gpu.planning(|| Graph::new(gpu, arch, values, Shape { h, w, ..shape }, train))?;
            let held = gpu.pool_stats().on_loan.saturating_sub(before);
            drop(graph);
            Ok(held)
        };
        let (small, large) = (held(8, 8)?, held(8, 16)?);
        let probe_pixels = (shape.n * 64) as f64;
        let per_pixel = large.saturating_sub(small) as f64 / probe_pixels;
        let more_pixels = (shape.n * shape.h * shape.w) as f64 - probe_pixels;
        Ok(small + (per_pixel * more_pixels.max(0.0)) as u64)
    }

    /// Backward through act(norm_block(conv(input))) from the gradient of
    /// its activation output `dout` (left as it is: a layer residual's gradient
    /// is read from it afterwards).
    #[allow(clippy::too_many_arguments)]
    fn block_backward(
        &self,
        bld: &Builder,
        g: &Grads,
        out: &mut Vec<Dispatch>,
        b: &Block,
        bb: &BlockBufs,
        dout: View,
        dinput: Option<InputGrad>,
    ) -> Result<()> {
        let act = self.arch.config.activation();
        let db = g.of(&format!("{}.bias", b.conv));
        // The convolution output's gradient, in a tensor of its own: dout
        // may be a slice of the concatenation's gradient, beside the slice
        // the convolution's data pass writes.
        let dt = bld.gpu.tensor(bb.t.view().shape())?;
        match &bb.norm {
            Some((prefix, bufs)) => {
                let dx = Some((dt.view(), &db));
                bld.norm_backward(out, g, prefix, bufs, bb.t.view(), Some(act), dout, dx)?;
            }
            None => {
                // The activation's derivative depends only on the sign of
                // its input, the convolution's output here.
                out.push(ops::elementwise::act_backward(bld.gpu, bb.t.view(), act, dout, dt.view())?);
                out.extend(ops::conv::backward_bias(bld.gpu, dt.view(), &db)?);
            }
        }
        bld.conv_backward(out, g, b, (&bb.input, bb.drop), dt.view(), dinput)
    }
}

impl Graph {
    /// Uploads a batch of images (N x in_channels x H x W, NCHW).
    pub fn set_input(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        self.write_samples(gpu, &self.input, data, "input")
    }

    /// Uploads the per-pixel targets (N x 1 x H x W) of a training graph.
    pub fn set_target(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        let loss = self.loss.as_ref().ok_or_else(|| GpuError::Shape {
            kernel: "graph".into(),
            message: "targets given to an inference graph".into(),
        })?;
        loss.write_target(gpu, data)
    }

    /// Writes per-sample planes into a slice: one write per sample, since a
    /// slice of a wider buffer is contiguous only within a sample.
    fn write_samples(&self, gpu: &Gpu, dst: &Slice, data: &[f32], what: &str) -> Result<()> {
        let s = dst.tensor.shape;
        let per_sample = dst.c * s.plane();
        if data.len() != s.n * per_sample {
            return Err(GpuError::Shape {
                kernel: "graph".into(),
                message: format!("{} {what} values for {} samples of {}x{}x{}", data.len(), s.n, dst.c, s.h, s.w),
            });
        }
        for (n, sample) in data.chunks(per_sample).enumerate() {
            let offset = (s.index(n, dst.offset, 0, 0) * 4) as u64;
            gpu.write_bytes(&dst.tensor, offset, bytemuck::cast_slice(sample));
        }
        Ok(())
    }

    /// The forward pass's dispatches, in order.
    pub fn forward_dispatches(&self) -> Vec<&Dispatch> {
        let mut list: Vec<&Dispatch> = self.trunk.iter().collect();
        list.extend(&self.dropout_forward);
        list.extend(&self.head);
        list
    }

    /// Runs the forward pass (the logits are then in `read_logits`).
    pub fn forward(&self, gpu: &Gpu) -> Result<()> {
        gpu.run(&self.forward_dispatches())
    }

    /// Every norm block's input, in forward order.
    pub fn norm_sites(&self) -> &[NormSite] {
        &self.norm_sites
    }

    /// Runs the forward pass as far as `site`'s input (then read it).
    pub fn forward_to(&self, gpu: &Gpu, site: &NormSite) -> Result<()> {
        gpu.run(&self.forward_dispatches()[..site.after])
    }

    /// `site`'s input (N x its channels x H x W), which may be a channel
    /// slice of a wider buffer (a deferred block's, in the concatenation).
    pub fn read_norm_input(&self, gpu: &Gpu, site: &NormSite) -> Result<Vec<f32>> {
        gpu.read_view(site.input.view())
    }

    /// Prepares training step `step` (from 1: the dropout mask's counter and
    /// Adam's bias correction) and returns its dispatches by phase, in
    /// order: forward, loss and backward, and the optimiser when `update`.
    pub fn step_dispatches(&mut self, gpu: &Gpu, step: u32, update: bool) -> Vec<(Phase, &Dispatch)> {
        // The dropout launches' mask counter (ops::dropout's passes, or the
        // head convolution's where it drops out its input itself).
        for d in self.dropout_forward.iter().chain(&self.head).chain(&self.head_backward).chain(&self.dropout_backward)
        {
            d.set_step(gpu, step);
        }
        if let Some(u) = self.update.as_mut().filter(|_| update) {
            u.set_step(gpu, step);
        }
        self.phases(update)
    }

    /// A training step's dispatches by phase, in order (the forward pass's
    /// alone in an inference graph).
    fn phases(&self, update: bool) -> Vec<(Phase, &Dispatch)> {
        let mut list: Vec<(Phase, &Dispatch)> =
            self.forward_dispatches().into_iter().map(|d| (Phase::Forward, d)).collect();
        list.extend(self.head_backward.iter().map(|d| (Phase::Backward, d)));
        list.extend(self.dropout_backward.iter().map(|d| (Phase::Backward, d)));
        list.extend(self.trunk_backward.iter().map(|d| (Phase::Backward, d)));
        if update {
            list.extend(self.update.iter().map(|u| (Phase::Optimizer, &u.dispatch)));
        }
        list
    }

    /// Every dispatch a step (or an inference graph's forward pass) makes,
    /// in order: what `Gpu::prewarm` compiles ahead.
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        self.phases(true).into_iter().map(|(_, d)| d).collect()
    }

    /// One training step (see `step_dispatches`) in one submission.
    pub fn step(&mut self, gpu: &Gpu, step: u32, update: bool) -> Result<()> {
        let list: Vec<&Dispatch> = self.step_dispatches(gpu, step, update).into_iter().map(|(_, d)| d).collect();
        gpu.run(&list)
    }

    /// The loss of the last step (reads back one value).
    pub fn loss(&self, gpu: &Gpu) -> Result<f32> {
        let loss = self.loss.as_ref().ok_or_else(|| GpuError::Shape {
            kernel: "graph".into(),
            message: "an inference graph has no loss".into(),
        })?;
        Ok(gpu.read(&loss.sums)?[ops::loss::Loss::LOSS_INDEX])
    }

    pub fn read_logits(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read(&self.logits)
    }

    /// The current parameter values (after updates; running statistics too).
    pub fn read_params(&self, gpu: &Gpu) -> Result<ParamSet> {
        let values = self.params.iter().map(|t| gpu.read(t)).collect::<Result<_>>()?;
        Ok(ParamSet { specs: self.specs.clone(), values })
    }

    /// The gradients of the last step, aligned with the parameters (None for
    /// running statistics and in inference graphs).
    pub fn read_grads(&self, gpu: &Gpu) -> Result<Vec<Option<Vec<f32>>>> {
        self.grads.iter().map(|g| g.as_ref().map(|t| gpu.read(t)).transpose()).collect()
    }
}

impl Graph {
    /// Whether the optimiser is Adam (its state: two moments per parameter)
    /// rather than SGD (one momentum buffer).
    pub fn is_adam(&self) -> bool {
        matches!(self.optimizer, Some(Optimizer::Adam(_)))
    }

    /// The optimiser state, in `checkpoint::optim_names` order.
    pub fn read_optimizer_state(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        self.state.iter().flatten().map(|t| gpu.read(t)).collect()
    }

    /// Restores the optimiser state (same order as `read_optimizer_state`).
    pub fn write_optimizer_state(&self, gpu: &Gpu, values: &[Vec<f32>]) -> Result<()> {
        let tensors: Vec<&Tensor> = self.state.iter().flatten().collect();
        if tensors.len() != values.len() || tensors.iter().zip(values).any(|(t, v)| t.shape.numel() != v.len()) {
            return Err(GpuError::Shape {
                kernel: "graph".into(),
                message: "optimiser state does not match the model's parameters".into(),
            });
        }
        for (t, v) in tensors.iter().zip(values) {
            gpu.write(t, v)?;
        }
        Ok(())
    }

    /// Overwrites the parameters (e.g. to share trained weights with an
    /// inference graph of another shape).
    pub fn write_params(&self, gpu: &Gpu, values: &ParamSet) -> Result<()> {
        for (t, v) in self.params.iter().zip(&values.values) {
            gpu.write(t, v)?;
        }
        Ok(())
    }
}
