//! Needs no GPU: checkpoints have MODEL.md's names, shapes and metadata,
//! round-trip exactly, and every kind of bad file is a clear error.

use dilaseg::model::checkpoint::{self, CheckpointError, CheckpointMeta, OptimState};
use dilaseg::model::config::ModelConfig;
use dilaseg::model::params::ParamSet;
use dilaseg::model::Architecture;
use safetensors::SafeTensors;

fn saved(cfg: &ModelConfig, dir: &std::path::Path) -> (std::path::PathBuf, ParamSet) {
    let arch = Architecture::new(cfg);
    let params = ParamSet::init(&arch, 3);
    let path = dir.join("model.safetensors");
    let meta = CheckpointMeta { train_size: Some((128, 96)), threshold: Some(0.35), step: Some(12) };
    checkpoint::save(&path, &arch, &params, &meta).unwrap();
    (path, params)
}

#[test]
fn checkpoint_has_model_md_names_shapes_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved(&ModelConfig::lungnet(), dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let shape = |name: &str| st.tensor(name).unwrap_or_else(|_| panic!("{name} missing")).shape().to_vec();
    assert_eq!(shape("input_norm.weight"), [1]);
    assert_eq!(shape("dilated.0.conv.weight"), [32, 1, 3, 3]);
    assert_eq!(shape("dilated.9.conv.weight"), [32, 32, 3, 3]);
    assert_eq!(shape("dilated.9.norm.bias"), [32]);
    assert_eq!(shape("head.0.conv.weight"), [128, 321, 1, 1]);
    assert_eq!(shape("head.1.conv.weight"), [32, 128, 1, 1]);
    assert_eq!(shape("out.weight"), [2, 32, 1, 1]);
    assert_eq!(shape("out.bias"), [2]);
    assert!(st.tensor("dilated.0.norm.running_mean").is_err(), "instance norm has no running statistics");
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["format"], "dilaseg/1");
    assert_eq!(meta["train_size"], "128x96");
    let config: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(config["dilations"], serde_json::json!([1, 1, 2, 3, 5, 8, 13, 21, 34, 55]));
    assert_eq!(config["norm"], "instance");
}

#[test]
fn batch_norm_checkpoints_carry_running_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved(&ModelConfig::seo2018(), dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for name in
        ["input_norm.running_mean", "input_norm.running_var", "dilated.4.norm.running_var", "head.1.norm.running_mean"]
    {
        assert!(st.tensor(name).is_ok(), "{name} missing");
    }
}

#[test]
fn checkpoint_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (path, params) = saved(&ModelConfig::seo2018(), dir.path());
    let loaded = checkpoint::load(&path).unwrap();
    assert_eq!(loaded.params, params);
    assert_eq!(loaded.arch.config, ModelConfig::seo2018());
    assert_eq!(loaded.meta, CheckpointMeta { train_size: Some((128, 96)), threshold: Some(0.35), step: Some(12) });
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind: {leftovers:?}");
}

#[test]
fn truncated_and_garbage_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved(&ModelConfig::lungnet(), dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for (what, content) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("header only", bytes[..100].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"\xff\xff\xff\xff\xff\xff\xff\x7fhuge header length".to_vec()),
    ] {
        let bad = dir.path().join(format!("{what}.safetensors"));
        std::fs::write(&bad, content).unwrap();
        let err = checkpoint::load(&bad).expect_err(what);
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{what}: {err:?}");
        assert!(err.to_string().contains(&bad.display().to_string()), "{what}: the error names the file: {err}");
    }
}

#[test]
fn headers_declaring_huge_shapes_or_models_are_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // A tensor declared 2^32 x 2^32 over 4 bytes of data.
    let header = br#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0; 4]);
    let err = checkpoint::parse(&file, std::path::Path::new("huge.safetensors")).expect_err("accepted");
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err:?}");

    // A config asking for a model of 10^12 parameters, in a checkpoint's metadata.
    let (path, _) = saved(&ModelConfig::seo2018(), dir.path());
    let st_bytes = std::fs::read(&path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&st_bytes).unwrap();
    let mut config = ModelConfig::seo2018().to_json();
    config["width"] = 1_000_000.into();
    let mut metadata = meta.metadata().clone().unwrap();
    metadata.insert("config".into(), config.to_string());
    let st = SafeTensors::deserialize(&st_bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let huge = dir.path().join("huge-config.safetensors");
    safetensors::serialize_to_file(tensors, Some(metadata), &huge).unwrap();
    let err = checkpoint::load(&huge).expect_err("accepted");
    assert!(err.to_string().contains("parameters") && err.to_string().contains("huge-config"), "{err}");
}

#[test]
fn mismatched_tensors_are_all_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let arch = Architecture::new(&ModelConfig::lungnet());
    let mut params = ParamSet::init(&arch, 1);
    // A checkpoint written for width 16 but claiming lungnet's config.
    let narrow = Architecture::new(&ModelConfig { width: 16, ..ModelConfig::lungnet() });
    let wrong = ParamSet::init(&narrow, 1);
    let path = dir.path().join("wrong.safetensors");
    checkpoint::save(&path, &arch, &wrong, &CheckpointMeta::default()).unwrap();
    let err = checkpoint::load(&path).expect_err("shapes differ").to_string();
    assert!(err.contains("dilated.3.conv.weight: shape [16, 16, 3, 3], expected [32, 32, 3, 3]"), "{err}");
    assert!(err.contains("head.0.conv.weight: shape [128, 161, 1, 1], expected [128, 321, 1, 1]"), "{err}");

    // A missing tensor and an unknown one.
    let i = params.index("out.bias").unwrap();
    params.specs[i].name = "out.offset".into();
    checkpoint::save(&path, &arch, &params, &CheckpointMeta::default()).unwrap();
    let err = checkpoint::load(&path).expect_err("names differ").to_string();
    assert!(err.contains("out.bias: missing") && err.contains("out.offset: not part of this model"), "{err}");
}

#[test]
fn wrong_format_or_config_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.safetensors");
    let data = [0.0f32; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], bytemuck::cast_slice(&data)).unwrap();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(&path, safetensors::serialize([("w", view.clone())], Some(meta)).unwrap()).unwrap();
    assert!(matches!(checkpoint::load(&path), Err(CheckpointError::Format { .. })));

    let meta = std::collections::HashMap::from([
        ("format".to_string(), "dilaseg/1".to_string()),
        ("config".to_string(), r#"{"width": 0}"#.to_string()),
    ]);
    std::fs::write(&path, safetensors::serialize([("w", view)], Some(meta)).unwrap()).unwrap();
    let err = checkpoint::load(&path).expect_err("bad config").to_string();
    assert!(err.contains("config"), "{err}");
}

#[test]
fn a_failed_write_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (path, params) = saved(&ModelConfig::seo2018(), dir.path());
    let before = std::fs::read(&path).unwrap();
    // Make the folder unwritable for the temporary file: replace the
    // target's folder by a path under a regular file.
    let blocked = path.join("inside-a-file.safetensors");
    let arch = Architecture::new(&ModelConfig::seo2018());
    assert!(checkpoint::save(&blocked, &arch, &params, &CheckpointMeta::default()).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn optimiser_state_round_trips_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let arch = Architecture::new(&ModelConfig::seo2018());
    let specs = arch.params();
    let names = checkpoint::optim_names(&specs, true);
    assert!(names.iter().any(|(n, _)| n == "dilated.0.conv.weight.exp_avg_sq"));
    assert!(!names.iter().any(|(n, _)| n.contains("running_mean")), "running statistics have no optimiser state");
    let tensors = names
        .iter()
        .enumerate()
        .map(|(i, (n, s))| (n.clone(), s.clone(), vec![i as f32; s.iter().product()]))
        .collect();
    let state = OptimState { tensors, step: 42, position: [("epoch".to_string(), "3".to_string())].into() };
    let path = checkpoint::optim_path(&dir.path().join("last.safetensors"));
    assert!(path.ends_with("last.optim.safetensors"));
    checkpoint::save_optim(&path, &state).unwrap();
    let loaded = checkpoint::load_optim(&path, &specs, true).unwrap();
    assert_eq!((loaded.step, loaded.tensors.clone()), (42, state.tensors.clone()));
    assert_eq!(loaded.position["epoch"], "3");
    let err = checkpoint::load_optim(&path, &specs, false).expect_err("SGD state expected").to_string();
    assert!(err.contains("momentum_buffer: missing"), "{err}");
}

/// What a user sees for a checkpoint that is not there: the file named
/// with the reason once (the reason was printed twice, as the message and
/// again as its source), and the bad-input exit status.
#[test]
fn a_missing_checkpoint_is_named_once_with_the_bad_input_status() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("none.safetensors");
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/lung-cxr/images/CHNCXR_0001_0.png");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dilaseg"))
        .arg("infer")
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(&image)
        .output()
        .expect("dilaseg runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "the bad-input status: {stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains(&model.display().to_string()), "{line}");
    assert_eq!(line.matches("os error 2").count(), 1, "{line}");
}
