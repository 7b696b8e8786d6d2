//! The model configuration: MODEL.md's preset table as a type, the two
//! presets, and the JSON form (a custom-variant file, and the `config`
//! metadata of every checkpoint). Parsing names the field at fault.

use serde_json::{json, Map, Value};

use crate::nn::Activation;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    Instance,
    Batch,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActKind {
    Relu,
    LeakyRelu { slope: f32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Softmax over `out_channels` classes, cross-entropy.
    Softmax,
    /// One raw channel, mean squared error (the 2018 blog variant).
    Linear,
    /// One channel, sigmoid, binary cross-entropy and/or soft Dice.
    Sigmoid,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// std = sqrt(2 / fan_in), not truncated.
    HeNormal,
    NormalStd(f32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub in_channels: usize,
    pub width: usize,
    pub dilations: Vec<usize>,
    pub norm: NormKind,
    pub act: ActKind,
    pub layer_residual: bool,
    pub dropout: f32,
    pub head: Vec<usize>,
    pub output: OutputKind,
    pub out_channels: usize,
    pub init: Init,
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid JSON: {0}")]
    Json(String),
    #[error("config field `{field}`: {message}")]
    Field { field: &'static str, message: String },
    #[error("unknown preset {0:?}: expected lungnet or seo2018")]
    UnknownPreset(String),
}

fn field_error(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field { field, message: message.into() }
}

const PAPER_DILATIONS: [usize; 10] = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55];

/// Limits on a config (lungnet: 10 dilated layers up to 55, 2 classes,
/// 0.1 M parameters): generous for any real variant, small enough that a
/// model within them can always be allocated (64 M parameters: 256 MB).
const MAX_LAYERS: usize = 256;
const MAX_DILATION: usize = 1 << 16;
const MAX_CLASSES: usize = 1024;
const MAX_PARAMS: u64 = 1 << 26;

impl ModelConfig {
    /// The paper's network (MODEL.md, preset `lungnet`).
    pub fn lungnet() -> Self {
        ModelConfig {
            in_channels: 1,
            width: 32,
            dilations: PAPER_DILATIONS.to_vec(),
            norm: NormKind::Instance,
            act: ActKind::Relu,
            layer_residual: false,
            dropout: 0.5,
            head: vec![128, 32],
            output: OutputKind::Softmax,
            out_channels: 2,
            init: Init::HeNormal,
        }
    }

    /// The 2018 blog variant (MODEL.md, preset `seo2018`).
    pub fn seo2018() -> Self {
        ModelConfig {
            in_channels: 1,
            width: 3,
            dilations: PAPER_DILATIONS.to_vec(),
            norm: NormKind::Batch,
            act: ActKind::Relu,
            layer_residual: true,
            dropout: 0.0,
            head: vec![3, 3],
            output: OutputKind::Linear,
            out_channels: 1,
            init: Init::NormalStd(0.05),
        }
    }

    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "lungnet" => Ok(Self::lungnet()),
            "seo2018" => Ok(Self::seo2018()),
            _ => Err(ConfigError::UnknownPreset(name.to_string())),
        }
    }

    /// The classes a multi-class softmax model's masks index: such masks
    /// are label maps (MODEL.md: the class index per pixel); None where
    /// masks are binary (two classes or one output channel).
    pub fn label_classes(&self) -> Option<usize> {
        (self.output == OutputKind::Softmax && self.out_channels > 2).then_some(self.out_channels)
    }

    pub fn activation(&self) -> Activation {
        match self.act {
            ActKind::Relu => Activation::RELU,
            ActKind::LeakyRelu { slope } => Activation { slope },
        }
    }

    /// Checks every value; the error names the first field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.in_channels, 1 | 3) {
            return Err(field_error("in_channels", format!("must be 1 (grey) or 3 (RGB), got {}", self.in_channels)));
        }
        if self.width == 0 {
            return Err(field_error("width", "must be at least 1, got 0"));
        }
        if self.dilations.is_empty() {
            return Err(field_error("dilations", "must list at least one layer"));
        }
        if let Some(i) = self.dilations.iter().position(|&d| d == 0) {
            return Err(field_error("dilations", format!("entry {i} is 0; dilations start at 1")));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(field_error("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if let Some(i) = self.head.iter().position(|&w| w == 0) {
            return Err(field_error("head", format!("entry {i} is 0; every head layer needs at least one map")));
        }
        match (self.output, self.out_channels) {
            (OutputKind::Softmax, c) if c < 2 => {
                return Err(field_error("out_channels", format!("softmax needs at least 2 classes, got {c}")))
            }
            (OutputKind::Linear | OutputKind::Sigmoid, c) if c != 1 => {
                return Err(field_error("out_channels", format!("linear and sigmoid outputs have 1 channel, got {c}")))
            }
            _ => {}
        }
        if let ActKind::LeakyRelu { slope } = self.act {
            if !(slope.is_finite() && slope >= 0.0) {
                return Err(field_error("leaky_slope", format!("must be a finite number >= 0, got {slope}")));
            }
        }
        if let Init::NormalStd(s) = self.init {
            if !(s.is_finite() && s > 0.0) {
                return Err(field_error("init", format!("normal_std must be a finite number > 0, got {s}")));
            }
        }
        self.validate_size()
    }

    /// Bounds that keep a config from asking for more than a machine has:
    /// a config file or checkpoint header is outside input, and a model is
    /// allocated (initialised, uploaded) from it.
    fn validate_size(&self) -> Result<(), ConfigError> {
        if self.dilations.len() > MAX_LAYERS || self.head.len() > MAX_LAYERS {
            return Err(field_error("dilations", format!("at most {MAX_LAYERS} dilated and {MAX_LAYERS} head layers")));
        }
        if let Some(&d) = self.dilations.iter().find(|&&d| d > MAX_DILATION) {
            return Err(field_error("dilations", format!("a dilation of {d} is over the {MAX_DILATION} allowed")));
        }
        if self.out_channels > MAX_CLASSES {
            return Err(field_error("out_channels", format!("at most {MAX_CLASSES}, got {}", self.out_channels)));
        }
        // Every tensor's size, in checked arithmetic (huge widths overflow).
        let total = super::Architecture::new(self).params().iter().try_fold(0u64, |sum, p| {
            let s = p.shape;
            [s.n, s.c, s.h, s.w].iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).and_then(|n| sum.checked_add(n))
        });
        match total {
            Some(n) if n <= MAX_PARAMS => Ok(()),
            _ => Err(field_error(
                "width",
                format!(
                    "the model would have {} parameters; at most {MAX_PARAMS} are allowed",
                    total.map_or("too many".into(), |n| n.to_string())
                ),
            )),
        }
    }

    /// MODEL.md's JSON form (lower-case keys of the preset table).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "in_channels": self.in_channels,
            "width": self.width,
            "dilations": self.dilations,
            "norm": match self.norm { NormKind::Instance => "instance", NormKind::Batch => "batch", NormKind::None => "none" },
            "act": match self.act { ActKind::Relu => "relu", ActKind::LeakyRelu { .. } => "leaky_relu" },
            "layer_residual": self.layer_residual,
            "dropout": self.dropout,
            "head": self.head,
            "output": match self.output { OutputKind::Softmax => "softmax", OutputKind::Linear => "linear", OutputKind::Sigmoid => "sigmoid" },
            "out_channels": self.out_channels,
            "init": match self.init { Init::HeNormal => json!("he_normal"), Init::NormalStd(s) => json!({ "normal_std": s }) },
        });
        if let ActKind::LeakyRelu { slope } = self.act {
            v["leaky_slope"] = json!(slope);
        }
        v
    }

    /// Parses and validates the JSON form. `act` (relu), `leaky_slope`
    /// (0.01) and `init` (he_normal) may be left out; every other field of
    /// MODEL.md's table is required and unknown fields are refused.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(ConfigError::Json("expected a JSON object of model fields".into()));
        };
        const KNOWN: [&str; 12] = [
            "in_channels",
            "width",
            "dilations",
            "norm",
            "act",
            "leaky_slope",
            "layer_residual",
            "dropout",
            "head",
            "output",
            "out_channels",
            "init",
        ];
        if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ConfigError::Json(format!("unknown field `{unknown}` (fields: {})", KNOWN.join(", "))));
        }
        let slope = match map.get("leaky_slope") {
            None => 0.01,
            v => number(v, "leaky_slope")? as f32,
        };
        let cfg = ModelConfig {
            in_channels: count(&map, "in_channels")?,
            width: count(&map, "width")?,
            dilations: counts(&map, "dilations")?,
            norm: match string(&map, "norm")? {
                "instance" => NormKind::Instance,
                "batch" => NormKind::Batch,
                "none" => NormKind::None,
                other => {
                    return Err(field_error(
                        "norm",
                        format!("unknown norm {other:?} (expected instance, batch or none)"),
                    ))
                }
            },
            act: match map.get("act").map(|_| string(&map, "act")).transpose()?.unwrap_or("relu") {
                "relu" => ActKind::Relu,
                "leaky_relu" => ActKind::LeakyRelu { slope },
                other => {
                    return Err(field_error(
                        "act",
                        format!("unknown activation {other:?} (expected relu or leaky_relu)"),
                    ))
                }
            },
            layer_residual: match map.get("layer_residual") {
                Some(Value::Bool(b)) => *b,
                other => {
                    return Err(field_error("layer_residual", format!("expected true or false, got {}", shown(other))))
                }
            },
            dropout: number(map.get("dropout"), "dropout")? as f32,
            head: counts(&map, "head")?,
            output: match string(&map, "output")? {
                "softmax" => OutputKind::Softmax,
                "linear" => OutputKind::Linear,
                "sigmoid" => OutputKind::Sigmoid,
                other => {
                    return Err(field_error(
                        "output",
                        format!("unknown output {other:?} (expected softmax, linear or sigmoid)"),
                    ))
                }
            },
            out_channels: count(&map, "out_channels")?,
            init: match map.get("init") {
                None => Init::HeNormal,
                Some(Value::String(s)) if s == "he_normal" => Init::HeNormal,
                Some(Value::Object(o)) if o.len() == 1 && o.contains_key("normal_std") => {
                    Init::NormalStd(number(o.get("normal_std"), "init")? as f32)
                }
                other => {
                    return Err(field_error(
                        "init",
                        format!("expected \"he_normal\" or {{\"normal_std\": s}}, got {}", shown(other)),
                    ))
                }
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn shown(v: Option<&Value>) -> String {
    v.map_or("nothing".to_string(), Value::to_string)
}

fn string<'a>(map: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ConfigError> {
    map.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| field_error(field, format!("expected a string, got {}", shown(map.get(field)))))
}

fn number(v: Option<&Value>, field: &'static str) -> Result<f64, ConfigError> {
    v.and_then(Value::as_f64).ok_or_else(|| field_error(field, format!("expected a number, got {}", shown(v))))
}

fn as_count(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| n <= 1 << 20)
}

fn count(map: &Map<String, Value>, field: &'static str) -> Result<usize, ConfigError> {
    let v = map.get(field);
    v.and_then(as_count).ok_or_else(|| field_error(field, format!("expected a whole number, got {}", shown(v))))
}

fn counts(map: &Map<String, Value>, field: &'static str) -> Result<Vec<usize>, ConfigError> {
    let v = map.get(field);
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| field_error(field, format!("expected a list of whole numbers, got {}", shown(v))))?;
    list.iter()
        .enumerate()
        .map(|(i, x)| as_count(x).ok_or_else(|| field_error(field, format!("entry {i} is {x}, not a whole number"))))
        .collect()
}
