//! Crash safety, for real: a training run killed with SIGKILL at arbitrary
//! moments (start-up, steps, validation, checkpoint writes) and resumed each
//! time ends with the same weights and logs as an uninterrupted run; a full
//! disk (a small tmpfs) during a checkpoint write leaves the previous
//! checkpoint intact and says so.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dilaseg::model::checkpoint::{self, CheckpointMeta};
use dilaseg::model::config::ModelConfig;
use dilaseg::model::params::ParamSet;
use dilaseg::model::Architecture;
use dilaseg::train;

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", data, "--out", out];
    args.extend(["--preset", "seo2018", "--size", "16x16", "--epochs", "10", "--val-fraction", "0.25"]);
    args
}

fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_dilaseg"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dilaseg starts")
}

#[test]
fn a_run_killed_at_arbitrary_moments_and_resumed_ends_as_an_uninterrupted_one() {
    if common::gpu().is_none() {
        return;
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/lung-cxr");
    let data = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    let (whole_s, killed_s) = (whole.to_str().unwrap(), killed.to_str().unwrap());
    let started = Instant::now();
    let (code, _, stderr) = common::dilaseg(&train_args(data, whole_s));
    assert_eq!(code, 0, "{stderr}");
    let life = started.elapsed().as_secs_f64() * 1000.0;

    // Kill after delays of up to 30% of the uninterrupted run's life
    // (start-up, then epochs of 6 steps, validation and checkpoint
    // writes), so that most attempts, resumed ones too, are still running;
    // then let the last attempt finish.
    let mut rng = common::Rng::new(7);
    let mut kills = 0;
    for attempt in 0.. {
        let resume = train::last_path(&killed).exists();
        if !resume {
            // Killed before its first checkpoint: start again.
            let _ = std::fs::remove_dir_all(&killed);
        }
        let args = if resume { vec!["train", "--resume", killed_s] } else { train_args(data, killed_s) };
        let mut child = spawn(&args);
        if kills < 12 {
            std::thread::sleep(Duration::from_millis(rng.uniform(0.02 * life, 0.3 * life) as u64));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "attempt {attempt} failed: {stderr}");
        break;
    }
    eprintln!("the run was killed {kills} times before it finished ({life:.0} ms uninterrupted)");
    // Typically 12; fewer only if the runs finish much faster than here.
    assert!(kills >= 3, "only {kills} attempts were still running when killed");

    let a = checkpoint::load(&train::last_path(&whole)).unwrap();
    let b = checkpoint::load(&train::last_path(&killed)).unwrap();
    assert_eq!(a.params, b.params, "weights differ after {kills} kills");
    let (a, b) =
        (checkpoint::load(&train::best_path(&whole)).unwrap(), checkpoint::load(&train::best_path(&killed)).unwrap());
    assert!(a.params == b.params && a.meta == b.meta, "the best checkpoints differ after {kills} kills");
    for log in ["loss.csv", "metrics.csv"] {
        let rows = |run: &Path| -> Vec<String> {
            // The last column of metrics.csv is wall time.
            let text = std::fs::read_to_string(run.join(log)).unwrap();
            text.lines().map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string()).collect()
        };
        assert_eq!(rows(&whole), rows(&killed), "{log} differs after {kills} kills");
    }
}

/// Mounts a tmpfs of `kib` KiB at `dir`; false where this process may not.
fn mount_tmpfs(dir: &Path, kib: usize) -> bool {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs", dir.to_str().unwrap()])
        .stderr(Stdio::null())
        .status();
    status.is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    if !mount_tmpfs(dir.path(), 64) {
        eprintln!("skipped: mounting a tmpfs needs root (CAP_SYS_ADMIN)");
        return;
    }
    let _unmount = Unmount(dir.path());
    let arch = Architecture::new(&ModelConfig::seo2018()); // 10.7 KB
    let path = dir.path().join("model.safetensors");
    let first = ParamSet::init(&arch, 1);
    checkpoint::save(&path, &arch, &first, &CheckpointMeta::default()).expect("the first save fits");
    let before = std::fs::read(&path).unwrap();
    // Fill the disk but for a few KiB: the next save cannot be written.
    std::fs::write(dir.path().join("filler"), vec![0u8; (64 << 10) - before.len() - (8 << 10)]).ok();
    let err = checkpoint::save(&path, &arch, &ParamSet::init(&arch, 2), &CheckpointMeta::default())
        .expect_err("a save onto a full disk succeeded");
    let message = err.to_string();
    assert!(message.contains("model.safetensors") && message.contains("No space left"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the previous checkpoint changed");
    assert_eq!(checkpoint::load(&path).unwrap().params, first);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}
