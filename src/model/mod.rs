//! The network of MODEL.md: its configuration (`config`), the architecture
//! derived from it (this file: blocks in execution order, tensor names and
//! shapes), parameters and their initialisation (`params`), the CPU
//! reference of the whole graph (`reference`), the GPU graph (`graph`) and
//! checkpoints (`checkpoint`).

pub mod checkpoint;
pub mod config;
pub mod graph;
pub mod output;
pub mod params;
pub mod reference;

use config::{ModelConfig, NormKind};

use crate::shape::Shape;

/// Where a block's output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A dilated layer: its channel slice of the concatenation, from `offset`.
    Concat { offset: usize },
    /// A 1x1 head layer: a tensor of its own.
    Head,
    /// The output convolution: the logits.
    Out,
}

/// One convolution block, `act(norm_block(conv(x)))` (+ x), or the bare
/// output convolution.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Tensor-name prefix of the convolution: `dilated.3.conv`, `head.0.conv`, `out`.
    pub conv: String,
    /// Tensor-name prefix of the norm, if the block has one.
    pub norm: Option<String>,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub dilation: usize,
    /// Whether the activation follows (all but the output convolution).
    pub act: bool,
    /// Whether the block's input is added after the activation.
    pub residual: bool,
    pub place: Place,
}

/// The graph a configuration describes.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub config: ModelConfig,
    /// `input_norm`, unless the norm kind is `none`.
    pub input_norm: Option<String>,
    /// Dilated layers, head layers, then the output convolution.
    pub blocks: Vec<Block>,
    /// Channels of the concatenation: in_channels + layers * width.
    pub cat_channels: usize,
}

/// What a parameter tensor is, for initialisation and the optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    ConvWeight,
    ConvBias,
    NormWeight,
    NormBias,
    /// Batch-norm running statistics: state, not trained.
    RunningMean,
    RunningVar,
}

impl ParamKind {
    pub fn trainable(self) -> bool {
        !matches!(self, ParamKind::RunningMean | ParamKind::RunningVar)
    }
}

/// One named tensor of the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Shape,
    pub kind: ParamKind,
}

impl Architecture {
    pub fn new(config: &ModelConfig) -> Self {
        let c = config;
        let norm = c.norm != NormKind::None;
        let mut blocks = Vec::new();
        let mut cin = c.in_channels;
        for (i, &dilation) in c.dilations.iter().enumerate() {
            blocks.push(Block {
                conv: format!("dilated.{i}.conv"),
                norm: norm.then(|| format!("dilated.{i}.norm")),
                cin,
                cout: c.width,
                kernel: 3,
                dilation,
                act: true,
                residual: c.layer_residual && cin == c.width,
                place: Place::Concat { offset: c.in_channels + i * c.width },
            });
            cin = c.width;
        }
        let cat_channels = c.in_channels + c.dilations.len() * c.width;
        let mut cin = cat_channels;
        for (j, &w) in c.head.iter().enumerate() {
            blocks.push(Block {
                conv: format!("head.{j}.conv"),
                norm: norm.then(|| format!("head.{j}.norm")),
                cin,
                cout: w,
                kernel: 1,
                dilation: 1,
                act: true,
                residual: false,
                place: Place::Head,
            });
            cin = w;
        }
        blocks.push(Block {
            conv: "out".into(),
            norm: None,
            cin,
            cout: c.out_channels,
            kernel: 1,
            dilation: 1,
            act: false,
            residual: false,
            place: Place::Out,
        });
        Architecture { config: c.clone(), input_norm: norm.then(|| "input_norm".into()), blocks, cat_channels }
    }

    /// Every tensor of the checkpoint, in a fixed order: names and shapes as
    /// MODEL.md lists them.
    pub fn params(&self) -> Vec<ParamSpec> {
        let batch = self.config.norm == NormKind::Batch;
        let mut specs = Vec::new();
        let norm = |specs: &mut Vec<ParamSpec>, prefix: &str, c: usize| {
            let v = Shape::vector(c);
            specs.push(ParamSpec { name: format!("{prefix}.weight"), shape: v, kind: ParamKind::NormWeight });
            specs.push(ParamSpec { name: format!("{prefix}.bias"), shape: v, kind: ParamKind::NormBias });
            if batch {
                specs.push(ParamSpec {
                    name: format!("{prefix}.running_mean"),
                    shape: v,
                    kind: ParamKind::RunningMean,
                });
                specs.push(ParamSpec { name: format!("{prefix}.running_var"), shape: v, kind: ParamKind::RunningVar });
            }
        };
        if let Some(prefix) = &self.input_norm {
            norm(&mut specs, prefix, self.config.in_channels);
        }
        for b in &self.blocks {
            let w = Shape::new(b.cout, b.cin, b.kernel, b.kernel);
            specs.push(ParamSpec { name: format!("{}.weight", b.conv), shape: w, kind: ParamKind::ConvWeight });
            specs.push(ParamSpec {
                name: format!("{}.bias", b.conv),
                shape: Shape::vector(b.cout),
                kind: ParamKind::ConvBias,
            });
            if let Some(prefix) = &b.norm {
                norm(&mut specs, prefix, b.cout);
            }
        }
        specs
    }

    /// The last dilated layer's radius of reach: (kernel / 2) * sum(dilations).
    pub fn receptive_radius(&self) -> usize {
        self.blocks.iter().map(|b| b.kernel / 2 * b.dilation).sum()
    }
}
