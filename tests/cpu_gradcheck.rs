//! Every backward of the CPU reference agrees with central finite
//! differences in f64 (step 1e-6; |numeric - analytic| <= 1e-7 + 1e-5 |numeric|).
//! Non-scalar ops are checked through the scalar L = sum(f(x) * R) for a
//! random R, whose gradient with respect to f's output is R.

mod common;

use common::Rng;
use dilaseg::cpu::{self, Tensor};
use dilaseg::nn::{Activation, NormStats, SigmoidLoss};
use dilaseg::Shape;

const STEP: f64 = 1e-6;

/// Checks `analytic` = dL/dv at `v` (every coordinate).
fn gradcheck(what: &str, v: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(v.len(), analytic.len(), "{what}: gradient length");
    let mut probe = v.to_vec();
    for i in 0..v.len() {
        probe[i] = v[i] + STEP;
        let plus = loss(&probe);
        probe[i] = v[i] - STEP;
        let minus = loss(&probe);
        probe[i] = v[i];
        let numeric = (plus - minus) / (2.0 * STEP);
        assert!(
            (numeric - analytic[i]).abs() <= 1e-7 + 1e-5 * numeric.abs(),
            "{what}[{i}]: finite difference {numeric} vs backward {}",
            analytic[i]
        );
    }
}

fn dot(a: &Tensor, r: &Tensor) -> f64 {
    a.data.iter().zip(&r.data).map(|(a, b)| a * b).sum()
}

fn check_conv(k: usize, dilation: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor(Shape::new(2, 3, 7, 6), -1.0, 1.0);
    let w = rng.tensor(Shape::new(4, 3, k, k), -0.5, 0.5);
    let b = rng.vec(4, -0.5, 0.5);
    let r = rng.tensor(Shape::new(2, 4, 7, 6), -1.0, 1.0);
    let g = cpu::conv::backward(&x, &w, &r, dilation);
    let l = |x: &Tensor, w: &Tensor, b: &[f64]| dot(&cpu::conv::forward(x, w, b, dilation), &r);
    gradcheck("conv dx", &x.data, &g.dx.data, |v| l(&Tensor::new(x.shape, v.to_vec()), &w, &b));
    gradcheck("conv dw", &w.data, &g.dw.data, |v| l(&x, &Tensor::new(w.shape, v.to_vec()), &b));
    gradcheck("conv db", &b, &g.db, |v| l(&x, &w, v));
}

#[test]
fn conv3x3_backward_matches_finite_differences() {
    check_conv(3, 1, 1);
}

#[test]
fn conv3x3_backward_matches_finite_differences_with_dilation_2() {
    check_conv(3, 2, 2);
}

#[test]
fn conv3x3_backward_matches_finite_differences_when_dilation_exceeds_the_image() {
    check_conv(3, 9, 3);
}

#[test]
fn conv1x1_backward_matches_finite_differences() {
    check_conv(1, 1, 4);
}

fn check_norm(stats: NormStats, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor(Shape::new(2, 3, 5, 4), -1.0, 3.0);
    let (gamma, beta) = (rng.vec(3, 0.5, 1.5), rng.vec(3, -0.5, 0.5));
    let r = rng.tensor(x.shape, -1.0, 1.0);
    let g = cpu::norm::backward(&x, stats, &gamma, &r);
    let l = |x: &Tensor, gamma: &[f64], beta: &[f64]| dot(&cpu::norm::forward(x, stats, gamma, beta).0, &r);
    gradcheck("norm dx", &x.data, &g.dx.data, |v| l(&Tensor::new(x.shape, v.to_vec()), &gamma, &beta));
    gradcheck("norm dgamma", &gamma, &g.dgamma, |v| l(&x, v, &beta));
    gradcheck("norm dbeta", &beta, &g.dbeta, |v| l(&x, &gamma, v));
}

#[test]
fn instance_norm_block_backward_matches_finite_differences() {
    check_norm(NormStats::PerSample, 5);
}

#[test]
fn batch_norm_block_backward_matches_finite_differences() {
    check_norm(NormStats::PerChannel, 6);
}

fn check_act(act: Activation, seed: u64) {
    let mut rng = Rng::new(seed);
    // Away from the kink at 0, where the derivative is not defined.
    let x = Tensor::new(
        Shape::new(2, 3, 4, 5),
        (0..120).map(|_| rng.uniform(0.1, 1.0) * if rng.next_u64().is_multiple_of(2) { 1.0 } else { -1.0 }).collect(),
    );
    let r = rng.tensor(x.shape, -1.0, 1.0);
    let dx = cpu::act::backward(&cpu::act::forward(&x, act), &r, act);
    gradcheck("activation dx", &x.data, &dx.data, |v| {
        dot(&cpu::act::forward(&Tensor::new(x.shape, v.to_vec()), act), &r)
    });
}

#[test]
fn relu_backward_matches_finite_differences() {
    check_act(Activation::RELU, 7);
}

#[test]
fn leaky_relu_backward_matches_finite_differences() {
    check_act(Activation { slope: 0.2 }, 8);
}

#[test]
fn dropout_backward_matches_finite_differences() {
    let mut rng = Rng::new(9);
    let x = rng.tensor(Shape::new(2, 3, 4, 5), -1.0, 1.0);
    let r = rng.tensor(x.shape, -1.0, 1.0);
    let dx = cpu::dropout::backward(&r, 0.3, 5, 11);
    gradcheck("dropout dx", &x.data, &dx.data, |v| {
        dot(&cpu::dropout::forward(&Tensor::new(x.shape, v.to_vec()), 0.3, 5, 11), &r)
    });
}

#[test]
fn residual_add_and_concat_backward_match_finite_differences() {
    let mut rng = Rng::new(10);
    let a = rng.tensor(Shape::new(2, 2, 3, 4), -1.0, 1.0);
    let b = rng.tensor(Shape::new(2, 3, 3, 4), -1.0, 1.0);
    let r = rng.tensor(Shape::new(2, 5, 3, 4), -1.0, 1.0);
    // d/da of sum(concat(a, b) * R) is R's slice of a's channels.
    let da = cpu::layout::channels(&r, 0, 2);
    gradcheck("concat da", &a.data, &da.data, |v| {
        dot(&cpu::layout::concat(&[&Tensor::new(a.shape, v.to_vec()), &b]), &r)
    });
    let db = cpu::layout::channels(&r, 2, 3);
    gradcheck("concat db", &b.data, &db.data, |v| {
        dot(&cpu::layout::concat(&[&a, &Tensor::new(b.shape, v.to_vec())]), &r)
    });
    let r2 = cpu::layout::channels(&r, 0, 2);
    let a2 = rng.tensor(a.shape, -1.0, 1.0);
    gradcheck("residual", &a.data, &r2.data, |v| dot(&cpu::act::add(&Tensor::new(a.shape, v.to_vec()), &a2), &r2));
}

fn labels(rng: &mut Rng, len: usize, classes: u64) -> Vec<f64> {
    (0..len).map(|_| (rng.next_u64() % classes) as f64).collect()
}

#[test]
fn weighted_softmax_cross_entropy_gradient_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let z = rng.tensor(Shape::new(2, 3, 4, 5), -3.0, 3.0);
    let y = labels(&mut rng, 40, 3);
    let w = [0.5, 1.0, 3.0];
    let g = cpu::loss::softmax_cross_entropy(&z, &y, Some(&w));
    gradcheck("cross-entropy", &z.data, &g.grad.data, |v| {
        cpu::loss::softmax_cross_entropy(&Tensor::new(z.shape, v.to_vec()), &y, Some(&w)).loss
    });
}

fn check_sigmoid(which: SigmoidLoss, seed: u64) {
    let mut rng = Rng::new(seed);
    let z = rng.tensor(Shape::new(2, 1, 4, 5), -3.0, 3.0);
    let y = labels(&mut rng, 40, 2);
    let g = cpu::loss::sigmoid_loss(&z, &y, which);
    gradcheck("sigmoid loss", &z.data, &g.grad.data, |v| {
        cpu::loss::sigmoid_loss(&Tensor::new(z.shape, v.to_vec()), &y, which).loss
    });
}

#[test]
fn binary_cross_entropy_gradient_matches_finite_differences() {
    check_sigmoid(SigmoidLoss { bce: true, dice: false }, 12);
}

#[test]
fn soft_dice_gradient_matches_finite_differences() {
    check_sigmoid(SigmoidLoss { bce: false, dice: true }, 13);
}

#[test]
fn bce_plus_dice_gradient_matches_finite_differences() {
    check_sigmoid(SigmoidLoss { bce: true, dice: true }, 14);
}

#[test]
fn mse_gradient_matches_finite_differences() {
    let mut rng = Rng::new(15);
    let z = rng.tensor(Shape::new(2, 1, 4, 5), -1.0, 2.0);
    let y = labels(&mut rng, 40, 2);
    let g = cpu::loss::mse(&z, &y);
    gradcheck("mse", &z.data, &g.grad.data, |v| cpu::loss::mse(&Tensor::new(z.shape, v.to_vec()), &y).loss);
}

#[test]
fn adam_first_step_moves_each_parameter_by_lr_against_its_gradient_sign() {
    // With zero moments, bias-corrected m / sqrt(v) is g / |g|: PyTorch's
    // first Adam step is -lr * sign(g) (up to eps).
    let hp = dilaseg::nn::Adam::with_lr(0.01);
    let g = [0.5, -2.0, 1e-3, -7.0];
    let mut p = [1.0, 1.0, 1.0, 1.0];
    let (mut m, mut v) = ([0.0; 4], [0.0; 4]);
    cpu::optim::adam_step(&hp, 1, &mut p, &g, &mut m, &mut v);
    for (pi, gi) in p.iter().zip(g) {
        assert!((pi - (1.0 - 0.01 * gi.signum())).abs() < 1e-6, "{pi} after a step on gradient {gi}");
    }
}

#[test]
fn sgd_momentum_accumulates_like_pytorch() {
    // PyTorch: buf = g on step 1, then buf = 0.9 buf + g; p -= lr * buf
    // (hyper-parameters are f32, hence the tolerance).
    let hp = dilaseg::nn::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
    let (mut p, mut buf) = ([0.0], [0.0]);
    cpu::optim::sgd_step(&hp, &mut p, &[1.0], &mut buf);
    cpu::optim::sgd_step(&hp, &mut p, &[1.0], &mut buf);
    assert!((p[0] - -(0.1 + 0.1 * 1.9)).abs() < 1e-7, "{}", p[0]);
}
