//! Checkpoints exactly as MODEL.md: one safetensors file of f32 tensors
//! with PyTorch's names and shapes and metadata `format` = "dilaseg/1",
//! `config` (the model JSON), optionally `train_size` ("HxW") and
//! `threshold`; and, for resuming, `<stem>.optim.safetensors` beside it.
//!
//! Writes are atomic (temporary file in the same folder, fsync, rename),
//! so a crash mid-write leaves the previous file intact. Reads check
//! everything and report every mismatch by tensor name; a truncated or
//! corrupt file is an error, and nothing is allocated beyond the file's
//! own size.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::config::{ConfigError, ModelConfig};
use super::params::ParamSet;
use super::{Architecture, ParamKind, ParamSpec};

pub const FORMAT: &str = "dilaseg/1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    // `error`, not `source`: the message already holds it, and a source
    // would be printed again after it (`{:#}`, as main prints errors).
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a readable safetensors file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: metadata `format` is {found:?}, expected {FORMAT:?}")]
    Format { path: PathBuf, found: Option<String> },
    #[error("{path}: metadata `config`: {error}")]
    Config { path: PathBuf, error: ConfigError },
    #[error("{path}: metadata `{key}` is {value:?}: {expected}")]
    Metadata { path: PathBuf, key: &'static str, value: String, expected: &'static str },
    #[error("{path} does not match its config:\n  {}", problems.join("\n  "))]
    Mismatch { path: PathBuf, problems: Vec<String> },
}

type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// What a checkpoint records besides the tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointMeta {
    /// Input size (H, W) the weights were trained at.
    pub train_size: Option<(usize, usize)>,
    /// Decision threshold chosen on validation data.
    pub threshold: Option<f32>,
    /// Optimiser steps taken when it was written (a dilaseg key; other
    /// readers ignore it). Resuming checks it against the optimiser file.
    pub step: Option<u64>,
}

/// A loaded checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub arch: Architecture,
    pub params: ParamSet,
    pub meta: CheckpointMeta,
}

/// The shape a tensor has in the file (PyTorch's): OIHW for convolution
/// weights, [C] for vectors.
fn file_shape(spec: &ParamSpec) -> Vec<usize> {
    let s = spec.shape;
    match spec.kind {
        ParamKind::ConvWeight => vec![s.n, s.c, s.h, s.w],
        _ => vec![s.numel()],
    }
}

/// The optimiser-state file that goes with checkpoint `path`.
pub fn optim_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().map_or_else(|| "checkpoint".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.optim.safetensors"))
}

/// Writes `tensors` with `metadata` to `path` atomically.
fn write_atomic(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, &[f32])>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let io = |error| CheckpointError::Io { path: path.to_path_buf(), error };
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map_err(|e| CheckpointError::Corrupt { path: path.to_path_buf(), message: format!("{name}: {e}") })?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| CheckpointError::Corrupt { path: path.to_path_buf(), message: e.to_string() })?;
    replace_file(path, &bytes).map_err(io)
}

/// Replaces (or creates) `path` with `bytes` so that a crash at any moment
/// leaves the old file or the new one, never a part: a temporary file
/// beside it (`.NAME.tmp-PID`, which a resumed training run removes),
/// synced, renamed over it, and the folder synced. Checkpoints and the
/// training logs a resumed run cuts back are written this way.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the folder is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A safetensors file read and checked for structure: its metadata and
/// its f32 tensors by name.
struct SafetensorsFile {
    metadata: HashMap<String, String>,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| CheckpointError::Io { path: path.to_path_buf(), error })
}

/// `bytes` as a safetensors file of f32 tensors; `path` names it in errors.
/// Memory stays within a small multiple of `bytes.len()` whatever the
/// header declares: shapes are checked against the data before use.
fn parse_file(bytes: &[u8], path: &Path) -> Result<SafetensorsFile> {
    let corrupt = |message: String| CheckpointError::Corrupt { path: path.to_path_buf(), message };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!("tensor {name} is {:?}, expected F32", view.dtype())));
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok(SafetensorsFile { metadata, tensors })
}

/// Takes the tensors `expected` (name, file shape) out of `file`, listing
/// every missing, misshapen or unexpected tensor.
fn take_tensors(path: &Path, file: &mut SafetensorsFile, expected: &[(String, Vec<usize>)]) -> Result<Vec<Vec<f32>>> {
    let mut problems = Vec::new();
    let mut values = Vec::new();
    for (name, shape) in expected {
        match file.tensors.remove(name) {
            None => problems.push(format!("{name}: missing (expected shape {shape:?})")),
            Some((found, _)) if &found != shape => {
                problems.push(format!("{name}: shape {found:?}, expected {shape:?}"))
            }
            Some((_, v)) => values.push(v),
        }
    }
    let mut extra: Vec<&String> = file.tensors.keys().collect();
    extra.sort();
    problems.extend(extra.into_iter().map(|name| format!("{name}: not part of this model")));
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(CheckpointError::Mismatch { path: path.to_path_buf(), problems })
    }
}

pub fn save(path: &Path, arch: &Architecture, params: &ParamSet, meta: &CheckpointMeta) -> Result<()> {
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("config".to_string(), arch.config.to_json().to_string()),
    ]);
    if let Some((h, w)) = meta.train_size {
        metadata.insert("train_size".into(), format!("{h}x{w}"));
    }
    if let Some(t) = meta.threshold {
        metadata.insert("threshold".into(), t.to_string());
    }
    if let Some(step) = meta.step {
        metadata.insert("step".into(), step.to_string());
    }
    let tensors =
        params.specs.iter().zip(&params.values).map(|(s, v)| (s.name.clone(), file_shape(s), v.as_slice())).collect();
    write_atomic(path, tensors, metadata)
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    parse(&read(path)?, path)
}

/// A checkpoint from the bytes of the file at `path` (named in errors).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let mut file = parse_file(bytes, path)?;
    let format = file.metadata.get("format");
    if format.map(String::as_str) != Some(FORMAT) {
        return Err(CheckpointError::Format { path: path.to_path_buf(), found: format.cloned() });
    }
    let config_text = file.metadata.get("config").map_or("", String::as_str);
    let config = ModelConfig::from_json(config_text)
        .map_err(|error| CheckpointError::Config { path: path.to_path_buf(), error })?;
    let arch = Architecture::new(&config);
    let specs = arch.params();
    let expected: Vec<(String, Vec<usize>)> = specs.iter().map(|s| (s.name.clone(), file_shape(s))).collect();
    let values = take_tensors(path, &mut file, &expected)?;
    let meta_err = |key, value: &String, expected| CheckpointError::Metadata {
        path: path.to_path_buf(),
        key,
        value: value.clone(),
        expected,
    };
    let train_size = match file.metadata.get("train_size") {
        None => None,
        Some(v) => Some(parse_size(v).ok_or_else(|| meta_err("train_size", v, "expected HxW, e.g. 256x256"))?),
    };
    let threshold = match file.metadata.get("threshold") {
        None => None,
        Some(v) => Some(
            v.parse::<f32>()
                .ok()
                .filter(|t| t.is_finite())
                .ok_or_else(|| meta_err("threshold", v, "expected a number"))?,
        ),
    };
    let step = file.metadata.get("step").and_then(|v| v.parse().ok());
    Ok(Checkpoint { arch, params: ParamSet { specs, values }, meta: CheckpointMeta { train_size, threshold, step } })
}

/// Parses "HxW" (both at least 1).
pub fn parse_size(s: &str) -> Option<(usize, usize)> {
    let (h, w) = s.split_once(['x', 'X'])?;
    let (h, w) = (h.trim().parse().ok()?, w.trim().parse().ok()?);
    (h > 0 && w > 0).then_some((h, w))
}

/// The optimiser's state and the run's position, for `--resume`.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimState {
    /// MODEL.md's names: `{param}.exp_avg`, `{param}.exp_avg_sq` (Adam) or
    /// `{param}.momentum_buffer` (SGD), with each parameter's file shape.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Optimiser steps taken (metadata `step`).
    pub step: u64,
    /// Further metadata: optimiser kind, RNG state, epoch and position.
    pub position: HashMap<String, String>,
}

/// The state tensor names and file shapes of `specs` under `optimizer`
/// ("adam" or "sgd").
pub fn optim_names(specs: &[ParamSpec], adam: bool) -> Vec<(String, Vec<usize>)> {
    let suffixes: &[&str] = if adam { &["exp_avg", "exp_avg_sq"] } else { &["momentum_buffer"] };
    specs
        .iter()
        .filter(|s| s.kind.trainable())
        .flat_map(|s| suffixes.iter().map(move |suffix| (format!("{}.{suffix}", s.name), file_shape(s))))
        .collect()
}

pub fn save_optim(path: &Path, state: &OptimState) -> Result<()> {
    let mut metadata = state.position.clone();
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("step".into(), state.step.to_string());
    let tensors = state.tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice())).collect();
    write_atomic(path, tensors, metadata)
}

/// Loads the optimiser state for a model of `specs` trained with Adam
/// (`adam`) or SGD, checking every tensor.
pub fn load_optim(path: &Path, specs: &[ParamSpec], adam: bool) -> Result<OptimState> {
    parse_optim(&read(path)?, path, specs, adam)
}

/// `load_optim` from the bytes of the file at `path` (named in errors).
pub fn parse_optim(bytes: &[u8], path: &Path, specs: &[ParamSpec], adam: bool) -> Result<OptimState> {
    let mut file = parse_file(bytes, path)?;
    let step_text = file.metadata.remove("step").unwrap_or_default();
    let step = step_text.parse().map_err(|_| CheckpointError::Metadata {
        path: path.to_path_buf(),
        key: "step",
        value: step_text.clone(),
        expected: "expected the number of optimiser steps",
    })?;
    let names = optim_names(specs, adam);
    let values = take_tensors(path, &mut file, &names)?;
    let tensors = names.into_iter().zip(values).map(|((n, s), v)| (n, s, v)).collect();
    Ok(OptimState { tensors, step, position: file.metadata })
}
