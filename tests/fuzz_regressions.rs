//! Replays every fuzz seed and every input that once broke a fuzz target
//! (assets/fuzz-seeds/TARGET, fuzz/regressions/TARGET) through the code the
//! targets run (fuzz/harness), on stable Rust, so a fixed bug stays fixed
//! without nightly or libFuzzer (docs/ROBUSTNESS.md).

#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::path::Path;

/// Runs `f` on every stored input of `target`; returns how many there were.
fn replay(target: &str, f: fn(&[u8])) -> usize {
    let mut count = 0;
    for kind in ["assets/fuzz-seeds", "fuzz/regressions"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| f(&data));
            assert!(outcome.is_ok(), "{} panicked", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn checkpoint_inputs_never_panic() {
    assert!(replay("checkpoint", harness::checkpoint) > 0);
}

#[test]
fn optimiser_state_inputs_never_panic() {
    assert!(replay("optim_state", harness::optim_state) > 0);
}

#[test]
fn config_inputs_never_panic() {
    assert!(replay("config", harness::config) > 0);
}

#[test]
fn image_inputs_never_panic() {
    assert!(replay("image", harness::image) > 0);
}

#[test]
fn data_folder_inputs_never_panic() {
    assert!(replay("data_folder", harness::data_folder) > 0);
}
