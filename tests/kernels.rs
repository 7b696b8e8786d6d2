//! Every WGSL kernel against the CPU reference (f64) on awkward shapes:
//! odd sizes, channel counts 1, 3, 5, 32, 33, dilation larger than the
//! image, batch 1 and 3, operands that are channel slices of larger
//! buffers. Each comparison states its tolerance: |gpu - cpu| <= atol + rtol |cpu|.

mod common;

use common::{assert_close, Rng};
use dilaseg::cpu::{self, Tensor};
use dilaseg::gpu::{Dispatch, Gpu, Tuning, WORKGROUP};
use dilaseg::nn::{self, Activation, NormStats, SigmoidLoss};
use dilaseg::ops::{self, conv::Variant, loss::LossKind};
use dilaseg::Shape;

fn upload(gpu: &Gpu, t: &Tensor) -> dilaseg::gpu::Tensor {
    gpu.upload(t.shape, &t.to_f32()).unwrap()
}

fn upload_vec(gpu: &Gpu, v: &[f64]) -> dilaseg::gpu::Tensor {
    upload(gpu, &Tensor::new(Shape::vector(v.len()), v.to_vec()))
}

fn read(gpu: &Gpu, t: &dilaseg::gpu::Tensor) -> Tensor {
    Tensor::from_f32(t.shape, &gpu.read(t).unwrap())
}

/// Channels [c0, c0 + c) of a GPU tensor, read back.
fn read_channels(gpu: &Gpu, t: &dilaseg::gpu::Tensor, c0: usize, c: usize) -> Vec<f32> {
    cpu::layout::channels(&read(gpu, t), c0, c).to_f32()
}

fn run(gpu: &Gpu, dispatches: &[&Dispatch]) {
    gpu.run(dispatches).unwrap();
    gpu.sync().unwrap();
}

/// Embeds `t` as channels [c0, c0 + t.c) of a tensor with `extra` more
/// channels of noise around it, so kernels must honour slice offsets.
fn embed(rng: &mut Rng, t: &Tensor, c0: usize, extra: usize) -> Tensor {
    let s = t.shape;
    let before = rng.tensor(s.with_c(c0), -3.0, 3.0);
    let after = rng.tensor(s.with_c(extra - c0), -3.0, 3.0);
    cpu::layout::concat(&[&before, t, &after])
}

// ---------------------------------------------------------------- convolution

#[allow(clippy::too_many_arguments)]
fn check_conv(n: usize, cin: usize, cout: usize, h: usize, w: usize, k: usize, dilation: usize, seed: u64) {
    check_conv_with(&Variant::ALL, n, cin, cout, h, w, k, dilation, seed);
}

/// check_conv for `variants` only (and without the run tuned for hardware
/// GPUs unless `variants` is every one).
#[allow(clippy::too_many_arguments)]
fn check_conv_with(
    variants: &[Variant],
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    dilation: usize,
    seed: u64,
) {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(seed);
    let x = rng.tensor(Shape::new(n, cin, h, w), -1.0, 1.0);
    let wt = rng.tensor(Shape::new(cout, cin, k, k), -0.5, 0.5);
    let b = rng.vec(cout, -0.5, 0.5);
    let dy = rng.tensor(Shape::new(n, cout, h, w), -1.0, 1.0);
    let dx0 = rng.tensor(x.shape, -1.0, 1.0);

    let y_ref = cpu::conv::forward(&x, &wt, &b, dilation);
    let g_ref = cpu::conv::backward(&x, &wt, &dy, dilation);

    // Every variant, and the blocked ones as hardware GPUs run them (one
    // pixel per invocation instead of chains of three; 3x3 layers without
    // subgroups, 1x1 with them where the adapter has them).
    let mut runs: Vec<(&Gpu, Variant)> = variants
        .iter()
        .filter(|&&v| v != Variant::BlockedSubgroup || gpu.has_subgroups(8))
        .map(|&v| (gpu, v))
        .collect();
    if variants.len() == Variant::ALL.len() {
        if let Some(tuned) = common::gpu_tuned_for_gpus() {
            runs.push((tuned, Variant::Blocked));
            if tuned.has_subgroups(8) {
                runs.push((tuned, Variant::BlockedSubgroup));
            }
        }
    }
    for (gpu, variant) in runs {
        // x at channel 1 of cin + 2, y and dy at channel 2 of cout + 3.
        let gx = upload(gpu, &embed(&mut rng, &x, 1, 2));
        let gdy = upload(gpu, &embed(&mut rng, &dy, 2, 3));
        let gdx = upload(gpu, &embed(&mut rng, &dx0, 1, 2));
        let gy = gpu.zeros(Shape::new(n, cout + 3, h, w)).unwrap();
        let (gw, gb) = (upload(gpu, &wt), upload_vec(gpu, &b));
        let gdw = gpu.tensor(wt.shape).unwrap();
        let gdb = gpu.tensor(Shape::vector(cout)).unwrap();

        let (xv, yv, dyv, dxv) =
            (gx.channels(1, cin), gy.channels(2, cout), gdy.channels(2, cout), gdx.channels(1, cin));
        // The narrow kernels compute at most 4 channels, the windowed ones
        // 3x3 from at most 4: the blocked or narrow ones stand in for a
        // pass they do not take.
        let pick = |computed: usize, inputs: usize| match variant {
            Variant::Narrow | Variant::Windowed if computed > 4 => Variant::Blocked,
            Variant::Windowed if k != 3 || inputs > 4 => Variant::Narrow,
            v => v,
        };
        let mut list = ops::conv::forward_with(gpu, pick(cout, cin), xv, &gw, &gb, dilation, yv).unwrap();
        list.extend(ops::conv::backward_data_with(gpu, pick(cin, cout), dyv, &gw, dilation, dxv, true).unwrap());
        list.extend(ops::conv::backward_weight_with(gpu, pick(cout, cin), xv, dyv, dilation, &gdw).unwrap());
        list.extend(ops::conv::backward_bias(gpu, dyv, &gdb).unwrap());
        run(gpu, &list.iter().collect::<Vec<_>>());

        // Sums of up to 9 * 33 products of magnitude <= 0.5 (forward, data
        // gradient) and of up to 3 * 37 * 53 products (weight, bias gradients).
        let what = |op: &str| format!("conv {op} ({variant:?}, {:?} tuning)", gpu.tuning());
        assert_close(&what("forward"), &read_channels(gpu, &gy, 2, cout), &y_ref.data, 1e-5, 1e-5);
        let dx_ref: Vec<f64> = dx0.data.iter().zip(&g_ref.dx.data).map(|(a, b)| a + b).collect();
        assert_close(&what("backward_data, accumulated"), &read_channels(gpu, &gdx, 1, cin), &dx_ref, 1e-5, 1e-5);
        assert_close(&what("backward_weight"), &gpu.read(&gdw).unwrap(), &g_ref.dw.data, 1e-3, 1e-4);
        assert_close(&what("backward_bias"), &gpu.read(&gdb).unwrap(), &g_ref.db, 1e-3, 1e-4);
        // Slices around the output were left alone.
        let untouched = read_channels(gpu, &gy, 0, 2);
        assert!(untouched.iter().all(|&v| v == 0.0), "conv forward ({variant:?}) wrote outside its output slice");
    }
}

/// A convolution over a concatenation held as separate tensors (the
/// network's head over the dilated layers' outputs) equals the convolution
/// of the concatenation: forward, input gradients per part, weight gradient.
fn check_conv_parts(gpu: &Gpu, k: usize, dilation: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (n, h, w, cout) = (2, 13, 17, 7);
    let sizes = [1, 4, 5];
    let parts: Vec<Tensor> = sizes.iter().map(|&c| rng.tensor(Shape::new(n, c, h, w), -1.0, 1.0)).collect();
    let x = cpu::layout::concat(&parts.iter().collect::<Vec<_>>());
    let wt = rng.tensor(Shape::new(cout, 10, k, k), -0.5, 0.5);
    let b = rng.vec(cout, -0.5, 0.5);
    let dy = rng.tensor(Shape::new(n, cout, h, w), -1.0, 1.0);
    let y_ref = cpu::conv::forward(&x, &wt, &b, dilation);
    let g_ref = cpu::conv::backward(&x, &wt, &dy, dilation);

    let gparts: Vec<_> = parts.iter().map(|p| upload(gpu, p)).collect();
    let gdx: Vec<_> = parts.iter().map(|p| gpu.tensor(p.shape).unwrap()).collect();
    let (gw, gb, gdy) = (upload(gpu, &wt), upload_vec(gpu, &b), upload(gpu, &dy));
    let (gy, gdw) = (gpu.tensor(dy.shape).unwrap(), gpu.tensor(wt.shape).unwrap());
    let xs: Vec<_> = gparts.iter().map(|t| t.view()).collect();
    let dxs: Vec<_> = gdx.iter().map(|t| t.view()).collect();
    let mut list = ops::conv::forward_parts(gpu, &xs, &gw, &gb, dilation, gy.view(), None).unwrap();
    list.extend(ops::conv::backward_data_parts(gpu, gdy.view(), &gw, dilation, &dxs, None).unwrap());
    list.extend(ops::conv::backward_weight_parts(gpu, &xs, gdy.view(), dilation, &gdw, None).unwrap());
    run(gpu, &list.iter().collect::<Vec<_>>());

    assert_close("conv over parts", &gpu.read(&gy).unwrap(), &y_ref.data, 1e-5, 1e-5);
    let mut c0 = 0;
    for (c, t) in sizes.iter().zip(&gdx) {
        let expected = cpu::layout::channels(&g_ref.dx, c0, *c);
        assert_close(&format!("input gradient of the part at {c0}"), &gpu.read(t).unwrap(), &expected.data, 1e-5, 1e-5);
        c0 += c;
    }
    assert_close("weight gradient over parts", &gpu.read(&gdw).unwrap(), &g_ref.dw.data, 1e-4, 1e-4);

    // Parts that do not make up the weights' input channels are refused.
    let err = ops::conv::forward_parts(gpu, &xs[..2], &gw, &gb, dilation, gy.view(), None).err().expect("accepted");
    assert!(err.to_string().contains("parts of 5 channels"), "{err}");
}

/// The head's dropout fused into its 1x1 convolution (CPU adapters'
/// blocked kernels): forward of dropout(concat), the concatenation's
/// gradient through the mask, the weight gradient from the dropped input;
/// the concatenation as separate tensors (parts of 5, 6 and 9 channels) and
/// as one slice of a larger buffer (the mask indexes the concatenation,
/// not the buffer), batch 2, odd sizes, the mask of a step set after the
/// launches were built.
#[test]
fn conv1x1_with_fused_dropout_matches_cpu_dropout_then_conv() {
    let gpu = gpu_or_skip!();
    check_fused_dropout(gpu, [5, 6, 9], 35);
    // A part and a slice of over 256 channels: read from an interleaved
    // copy on CPU adapters, the mask still by the concatenation's index.
    check_fused_dropout(gpu, [257, 5, 66], 36);
}

fn check_fused_dropout(gpu: &Gpu, sizes: [usize; 3], seed: u64) {
    let mut rng = Rng::new(seed);
    let (n, h, w, cout) = (2, 13, 17, 7);
    let cin: usize = sizes.iter().sum();
    let (p, seed, step) = (0.4, 321, 3);
    let x = rng.tensor(Shape::new(n, cin, h, w), -1.0, 1.0);
    let wt = rng.tensor(Shape::new(cout, cin, 1, 1), -0.5, 0.5);
    let b = rng.vec(cout, -0.5, 0.5);
    let dy = rng.tensor(Shape::new(n, cout, h, w), -1.0, 1.0);
    let dropped = cpu::dropout::forward(&x, p, seed, step);
    let y_ref = cpu::conv::forward(&dropped, &wt, &b, 1);
    let g_ref = cpu::conv::backward(&dropped, &wt, &dy, 1);
    let dx_ref = cpu::dropout::backward(&g_ref.dx, p, seed, step);

    let (gw, gb, gdy) = (upload(gpu, &wt), upload_vec(gpu, &b), upload(gpu, &dy));
    let drop = Some(ops::conv::InputDropout { p, seed });
    let mut c0 = 0;
    let parts: Vec<Tensor> = sizes
        .iter()
        .map(|&c| {
            c0 += c;
            cpu::layout::channels(&x, c0 - c, c)
        })
        .collect();
    let gparts: Vec<_> = parts.iter().map(|t| upload(gpu, t)).collect();
    let gdx: Vec<_> = parts.iter().map(|t| gpu.tensor(t.shape).unwrap()).collect();
    let embedded = upload(gpu, &embed(&mut rng, &x, 2, 3));
    let gdx_embedded = upload(gpu, &embed(&mut rng, &x, 1, 4));
    let layouts = [
        (gparts.iter().map(|t| t.view()).collect::<Vec<_>>(), gdx.iter().map(|t| t.view()).collect::<Vec<_>>()),
        (vec![embedded.channels(2, cin)], vec![gdx_embedded.channels(1, cin)]),
    ];
    for (what, (xs, dxs)) in ["parts", "a slice"].into_iter().zip(layouts) {
        if !ops::conv::takes_dropout(gpu, &xs, cout) {
            assert_ne!(gpu.tuning(), Tuning::Cpu, "CPU adapters fuse the dropout");
            return;
        }
        let (gy, gdw) = (gpu.tensor(dy.shape).unwrap(), gpu.tensor(wt.shape).unwrap());
        let mut list = ops::conv::forward_parts(gpu, &xs, &gw, &gb, 1, gy.view(), drop).unwrap();
        list.extend(ops::conv::backward_data_parts(gpu, gdy.view(), &gw, 1, &dxs, drop).unwrap());
        list.extend(ops::conv::backward_weight_parts(gpu, &xs, gdy.view(), 1, &gdw, drop).unwrap());
        for d in &list {
            d.set_step(gpu, step);
        }
        run(gpu, &list.iter().collect::<Vec<_>>());
        assert_close(&format!("dropout then conv, {what}"), &gpu.read(&gy).unwrap(), &y_ref.data, 1e-5, 1e-5);
        let dx: Vec<f32> = if dxs.len() > 1 {
            gdx.iter().flat_map(|t| gpu.read(t).unwrap()).collect()
        } else {
            read_channels(gpu, &gdx_embedded, 1, cin)
        };
        let dx_ref: Vec<f64> = if dxs.len() > 1 {
            let mut c0 = 0;
            sizes
                .iter()
                .flat_map(|&c| {
                    c0 += c;
                    cpu::layout::channels(&dx_ref, c0 - c, c).data
                })
                .collect()
        } else {
            dx_ref.data.clone()
        };
        assert_close(&format!("input gradient through the mask, {what}"), &dx, &dx_ref, 1e-5, 1e-5);
        assert_close(&format!("weight gradient, {what}"), &gpu.read(&gdw).unwrap(), &g_ref.dw.data, 1e-4, 1e-4);
    }
}

#[test]
fn conv1x1_over_concatenation_parts_matches_cpu() {
    check_conv_parts(gpu_or_skip!(), 1, 1, 31);
}

#[test]
fn conv3x3_over_concatenation_parts_matches_cpu() {
    check_conv_parts(gpu_or_skip!(), 3, 5, 32);
}

// The same with the kernels hardware GPUs get (tiled).
#[test]
fn tiled_convolutions_over_concatenation_parts_match_cpu() {
    let Some(gpu) = common::gpu_tuned_for_gpus() else { return };
    check_conv_parts(gpu, 1, 1, 33);
    check_conv_parts(gpu, 3, 5, 34);
}

#[test]
fn the_blocked_convolution_is_chosen_where_its_table_fits_and_refused_elsewhere() {
    let gpu = gpu_or_skip!();
    let blocked = Variant::blocked(gpu);
    // A hardware GPU's 3x3 layers read the table without subgroups.
    let blocked_3x3 = if gpu.tuning() == Tuning::Gpu { Variant::Blocked } else { blocked };
    assert_eq!(Variant::choose(gpu, 32, 32, 3), blocked_3x3);
    assert_eq!(Variant::choose(gpu, 321, 128, 1), blocked);
    assert_eq!(Variant::choose(gpu, 64, 32, 3), Variant::Tiled, "64 x 9 x 8 vec4s exceed the 64 KiB table");
    assert_eq!(Variant::choose(gpu, 32, 32, 5), Variant::Tiled, "the blocked kernels spell out 1x1 and 3x3 taps only");
    if std::env::var_os("CI").is_some() {
        assert_eq!(blocked, Variant::BlockedSubgroup, "lavapipe has subgroups of 8: CI must test that path");
    }
    // The weight gradient: blocked on CPU adapters, tiled on hardware GPUs.
    let tuned = common::gpu_tuned_for_gpus().expect("the adapter opened once opens again");
    assert_eq!(Variant::for_weight_grad(tuned, 3), Variant::Tiled);
    assert_eq!(Variant::choose(tuned, 32, 32, 3), Variant::Blocked);
    assert_eq!(Variant::choose(tuned, 321, 128, 1), Variant::blocked(tuned));
    if gpu.tuning() == Tuning::Cpu {
        assert_eq!(Variant::for_weight_grad(gpu, 32), blocked);
        assert_eq!(Variant::for_weight_grad(gpu, 3), Variant::Narrow);
        assert_eq!(Variant::choose(gpu, 32, 3, 3), Variant::Narrow);
        assert_eq!(Variant::choose(gpu, 3, 3, 3), Variant::Windowed);
        assert_eq!(Variant::choose(gpu, 3, 3, 1), Variant::Narrow, "the windowed kernels take 3x3 kernels only");
        // The windowed kernels: the packed weights, then a launch per band
        // of rows (two for 131 rows of 127); the narrow ones' two launches
        // for an input under a window's 64 KiB.
        for (h, launches) in [(131, 3), (5, 2)] {
            let x = gpu.zeros(Shape::new(1, 3, h, 127)).unwrap();
            let (w, b) = (gpu.zeros(Shape::new(3, 3, 3, 3)).unwrap(), gpu.zeros(Shape::vector(3)).unwrap());
            let y = gpu.tensor(x.shape).unwrap();
            let list = ops::conv::forward_with(gpu, Variant::Windowed, x.view(), &w, &b, 1, y.view()).unwrap();
            assert_eq!(list.len(), launches, "windowed launches for {h} rows");
        }
    }
    let x = gpu.zeros(Shape::new(1, 64, 5, 7)).unwrap();
    let (w, b) = (gpu.zeros(Shape::new(32, 64, 3, 3)).unwrap(), gpu.zeros(Shape::vector(32)).unwrap());
    let y = gpu.tensor(Shape::new(1, 32, 5, 7)).unwrap();
    let err = ops::conv::forward_with(gpu, Variant::Blocked, x.view(), &w, &b, 1, y.view()).err().expect("accepted");
    assert!(err.to_string().contains("baseline"), "{err}");
    assert_eq!(
        ops::conv::forward(gpu, x.view(), &w, &b, 1, y.view()).unwrap().len(),
        1,
        "the tiled kernel's one dispatch"
    );
}

#[test]
fn conv3x3_with_3_channels_matches_cpu_for_batch_2_dilation_13() {
    // seo2018's layers: the narrow kernels, rows of 53 = 6 runs of 8 and 5.
    check_conv(2, 3, 3, 37, 53, 3, 13, 7);
}

#[test]
fn conv3x3_with_3_channels_matches_cpu_over_several_bands_of_rows() {
    // Planes of 131 x 127 pixels: the windowed kernels' bands of 128 rows
    // (rows of 127 floats, not a multiple of the window alignment), then 3.
    check_conv(2, 3, 3, 131, 127, 3, 5, 9);
    // A dilation larger than the image: every off-centre row is padding.
    check_conv(1, 2, 3, 131, 127, 3, 140, 10);
    // Rows of 128 floats start aligned: windows of exactly 128 rows, no
    // room left for rounding a start down, then a band of 5.
    check_conv(2, 3, 2, 133, 128, 3, 7, 21);
    // Dilation 1: the second band's windows clamped to the image's last
    // rows.
    check_conv(1, 3, 3, 131, 127, 3, 1, 23);
}

#[test]
fn conv3x3_narrow_weight_gradient_walks_input_channels_side_by_side() {
    // 3 output channels: the narrow weight gradient, which walks up to 3
    // input channels a chain at once. 5 input channels: a block of 3 and a
    // block of 2 (its third past Cin, stored nowhere); 2: one short block.
    check_conv(2, 5, 3, 29, 31, 3, 4, 24);
    check_conv(1, 2, 4, 23, 17, 3, 2, 25);
}

#[test]
fn conv1x1_with_31_to_3_channels_matches_cpu_for_batch_2() {
    // seo2018's head: the narrow weight gradient's blocks of 9 input
    // channels, the last one short.
    check_conv(2, 31, 3, 19, 23, 1, 1, 8);
}

/// The narrow 1x1 kernels' vec4 runs (rows of a multiple of 8 pixels):
/// 31 -> 3 (forward and weight gradient narrow), 3 -> 31 (the input
/// gradient narrow, added into its destination), batch 2.
#[test]
fn conv1x1_narrow_kernels_match_cpu_in_vec4_runs() {
    check_conv(2, 31, 3, 12, 24, 1, 1, 21);
    check_conv(2, 3, 31, 9, 16, 1, 1, 22);
}

#[test]
fn tap_weight_gradient_matches_cpu_where_steps_span_samples_and_tiles_end_short() {
    // tap_weight (the tiled variant's 1x1 and 3x3 weight gradient): a 3x5
    // image, so that a step of 16 pixels spans rows and samples of a batch
    // of 3; 33 output channels (a second tile of one), 11 input channels
    // (3x3: a second tile of 3, dilation past the image) and 73 (1x1: a
    // second tile of one).
    check_conv(3, 11, 33, 3, 5, 3, 7, 41);
    check_conv(3, 73, 33, 3, 5, 1, 1, 42);
}

#[test]
fn conv1x1_matches_cpu_for_5_to_140_channels_batch_2() {
    // 140 channels: on CPU adapters a launch of four 32-channel tables and
    // one of a single table with 12 channels; on GPUs five of one.
    check_conv(2, 5, 140, 13, 11, 1, 1, 12);
}

#[test]
fn conv3x3_matches_cpu_for_batch_2_when_the_last_row_ends_a_pair() {
    // 44 rows at dilation 11 in blocks of 22: on CPU adapters pairs of rows
    // (`ROWS` = 2, `row_bands` in src/ops/conv.rs), rows 33 to 43 the lower rows
    // of the pairs (22, 33) to (32, 43).
    check_conv(2, 3, 8, 44, 29, 3, 11, 13);
}

#[test]
fn conv3x3_matches_cpu_for_batch_2_when_triples_of_rows_end_short() {
    // On CPU adapters triples of rows (`ROWS` = 3). 53 rows at dilation 5
    // in blocks of 15: the last block's triples (45, 50, 55) to (49, 54,
    // 59) have only their first two rows, or one. 37 rows at dilation 13:
    // one block of 13 triples, (11, 24, 37) and (12, 25, 38) without their
    // third row.
    check_conv(2, 3, 8, 53, 29, 3, 5, 15);
    check_conv(2, 5, 7, 37, 31, 3, 13, 16);
}

#[test]
fn conv3x3_matches_cpu_for_batch_2_in_two_bands_of_rows() {
    // 64 rows at dilation 13: on CPU adapters a launch of 13 pairs over
    // rows 0 to 25, then one of 13 triples over rows 26 to 63, (38, 51, 64)
    // without its third row (`row_bands` in src/ops/conv.rs).
    check_conv(2, 4, 9, 64, 23, 3, 13, 22);
}

#[test]
fn conv3x3_matches_cpu_when_the_last_block_of_chains_and_pairs_is_short() {
    // Dilation 21 on 46x67: columns in blocks of 63 with 4 left over, rows
    // in blocks of 42 with 4 left over; on CPU adapters the last blocks
    // take 4 chains and 4 pairs, not 21 (`slots`).
    check_conv(2, 3, 8, 46, 67, 3, 21, 14);
}

#[test]
fn conv3x3_matches_cpu_on_37x53_single_input_channel() {
    check_conv(1, 1, 3, 37, 53, 3, 1, 1);
}

#[test]
fn conv3x3_matches_cpu_for_batch_3_with_5_to_33_channels_dilation_2() {
    check_conv(3, 5, 33, 37, 53, 3, 2, 2);
}

#[test]
fn conv3x3_matches_cpu_for_32_channels_dilation_13_on_odd_sizes() {
    check_conv(1, 32, 32, 37, 53, 3, 13, 3);
}

#[test]
fn conv3x3_matches_cpu_for_dilation_55_on_a_40x40_image() {
    check_conv(1, 32, 33, 40, 40, 3, 55, 4);
}

#[test]
fn conv3x3_dilation_55_reaches_across_a_large_image() {
    check_conv(3, 3, 5, 61, 117, 3, 55, 5);
}

#[test]
fn conv3x3_weight_gradient_over_many_chunks_matches_cpu() {
    // The blocked weight gradient with 9 output channels (tables of 1365
    // pixels) over 2 x 97 x 131 pixels: 19 chunks packed in one batch (on
    // CPU adapters through windows of dy, one per sample's part), each
    // summed by 14 parts per (ci, tap) that are reduced once.
    check_conv(2, 2, 9, 97, 131, 3, 8, 11);
}

#[test]
fn conv3x3_weight_gradient_packs_dy_across_windows_and_batches() {
    // On CPU adapters dy is packed through 64 KiB windows of its planes,
    // one launch per sample's part of a batch of chunks that a window
    // holds. Planes of 131 x 140 = 18340 pixels, batch 2: with 32 output
    // channels (chunks of 512 pixels, batches of 28) a batch ends inside a
    // plane and the next spans two samples; with 9 (chunks of 1365) the one
    // batch takes two windows of each plane.
    check_conv(2, 2, 32, 131, 140, 3, 5, 17);
    check_conv(2, 2, 9, 131, 140, 3, 3, 18);
}

#[test]
fn weight_gradient_launches_of_many_tables_match_cpu() {
    // On CPU adapters a launch of the blocked weight gradient walks as many
    // chunks of dy as 14 tables hold for its blocks of 32 output channels
    // (but no more than there are). 130 outputs: 4 blocks take 2 chunks of
    // 512 pixels a launch, here 3 chunks (the second launch walks one, a
    // partial one); the fifth block (2 channels) all 3 in one launch. 65
    // outputs (3 blocks, the last of one channel) of a 3x3 layer: 4 chunks
    // a launch, 6 chunks. The blocked kernels only: the others bind one
    // table a launch at most.
    let blocked = [Variant::Blocked, Variant::BlockedSubgroup];
    check_conv_with(&blocked, 2, 5, 130, 23, 29, 1, 1, 19);
    check_conv_with(&blocked, 2, 3, 65, 41, 37, 3, 7, 20);
}

/// 260 input channels: on CPU adapters the blocked forward reads a
/// channel-interleaved copy of its input (143 pixels a plane: the last tile of 8
/// is short), with one table of outputs and with two.
#[test]
fn conv1x1_over_an_interleaved_copy_of_260_channels_matches_cpu() {
    let gpu = gpu_or_skip!();
    check_conv(2, 260, 5, 13, 11, 1, 1, 24);
    check_conv(2, 260, 40, 11, 13, 1, 1, 25);
    // Planes of a multiple of 8 pixels: the copy from aligned vec4s.
    check_conv(1, 260, 5, 8, 12, 1, 1, 26);
    let x = gpu.tensor(Shape::new(2, 260, 13, 11)).unwrap();
    let (w, b, y) = (
        gpu.tensor(Shape::new(5, 260, 1, 1)).unwrap(),
        gpu.tensor(Shape::vector(5)).unwrap(),
        gpu.tensor(Shape::new(2, 5, 13, 11)).unwrap(),
    );
    let list = ops::conv::forward_with(gpu, Variant::Blocked, x.view(), &w, &b, 1, y.view()).unwrap();
    let copies = list.iter().filter(|d| d.label().starts_with("conv.interleave_channels")).count();
    let expected = gpu.tuning() == Tuning::Cpu && gpu.mesa_release().is_none_or(|r| r < (25, 0));
    assert_eq!(copies, usize::from(expected), "interleaved copies with {:?} tuning", gpu.tuning());
}

#[test]
fn conv1x1_matches_cpu_for_33_to_5_channels_batch_3() {
    check_conv(3, 33, 5, 37, 53, 1, 1, 6);
}

#[test]
fn concat_is_written_in_place_by_each_layer_and_equals_cpu_concat() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(7);
    let (n, h, w) = (2, 19, 23);
    let x0 = rng.tensor(Shape::new(n, 1, h, w), -1.0, 1.0);
    let (w1, b1) = (rng.tensor(Shape::new(3, 1, 3, 3), -0.5, 0.5), rng.vec(3, -0.5, 0.5));
    let (w2, b2) = (rng.tensor(Shape::new(3, 3, 3, 3), -0.5, 0.5), rng.vec(3, -0.5, 0.5));
    let x1 = cpu::act::forward(&cpu::conv::forward(&x0, &w1, &b1, 1), Activation::RELU);
    let x2 = cpu::act::forward(&cpu::conv::forward(&x1, &w2, &b2, 2), Activation::RELU);
    let cat_ref = cpu::layout::concat(&[&x0, &x1, &x2]);

    // As in the network: the input's slice is written first (here by the
    // upload); each layer convolves the previous slice into a scratch
    // tensor and its activation writes straight into the layer's own slice,
    // which the next layer reads in place. No copies.
    let cat = upload(gpu, &cpu::layout::concat(&[&x0, &Tensor::zeros(Shape::new(n, 6, h, w))]));
    let scratch = gpu.tensor(Shape::new(n, 3, h, w)).unwrap();
    let (gw1, gb1, gw2, gb2) = (upload(gpu, &w1), upload_vec(gpu, &b1), upload(gpu, &w2), upload_vec(gpu, &b2));
    let relu = Activation::RELU;
    let mut d = ops::conv::forward(gpu, cat.channels(0, 1), &gw1, &gb1, 1, scratch.view()).unwrap();
    d.push(ops::elementwise::act_forward(gpu, scratch.view(), relu, cat.channels(1, 3)).unwrap());
    d.extend(ops::conv::forward(gpu, cat.channels(1, 3), &gw2, &gb2, 2, scratch.view()).unwrap());
    d.push(ops::elementwise::act_forward(gpu, scratch.view(), relu, cat.channels(4, 3)).unwrap());
    run(gpu, &d.iter().collect::<Vec<_>>());
    assert_close("concatenation", &gpu.read(&cat).unwrap(), &cat_ref.data, 1e-5, 1e-5);

    // A convolution straight into a slice of the buffer it reads: the
    // blocked kernels read such an input through the output's binding (a
    // launch may bind a buffer it writes only once); every other variant
    // refuses it up front with a clear error, as every variant refuses
    // overlapping slices, rather than leave it to a validation failure at
    // submit. Per variant, not per adapter: an H200 picks a blocked kernel
    // for this layer where lavapipe picks a narrow one.
    let y2_ref = cpu::conv::forward(&x1, &w2, &b2, 2);
    let in_place_ref = cpu::layout::concat(&[&x0, &x1, &y2_ref]);
    for variant in Variant::ALL.into_iter().filter(|&v| v != Variant::BlockedSubgroup || gpu.has_subgroups(8)) {
        let refused = |y, what: &str| {
            let err = ops::conv::forward_with(gpu, variant, cat.channels(1, 3), &gw2, &gb2, 2, y)
                .err()
                .unwrap_or_else(|| panic!("{}: {what} accepted", variant.name()));
            assert!(err.to_string().contains("one buffer"), "{}: unclear error: {err}", variant.name());
        };
        refused(cat.channels(3, 3), "overlapping slices");
        if matches!(variant, Variant::Blocked | Variant::BlockedSubgroup) {
            let cat = upload(gpu, &cpu::layout::concat(&[&x0, &x1, &Tensor::zeros(Shape::new(n, 3, h, w))]));
            run(
                gpu,
                &ops::conv::forward_with(gpu, variant, cat.channels(1, 3), &gw2, &gb2, 2, cat.channels(4, 3))
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>(),
            );
            assert_close(variant.name(), &gpu.read(&cat).unwrap(), &in_place_ref.data, 1e-5, 1e-5);
        } else {
            refused(cat.channels(4, 3), "one buffer read and written");
        }
    }
}

// ----------------------------------------------------------------------- norm

/// The norm block, with `act` fused after it where given, against the CPU
/// oracle composed of the block and the activation. Returns the launches'
/// labels.
#[allow(clippy::too_many_arguments)]
fn check_norm(
    gpu: &Gpu,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    stats: NormStats,
    act: Option<Activation>,
    offset: f64,
    seed: u64,
) -> Vec<String> {
    let mut rng = Rng::new(seed);
    // Post-ReLU-like activations: a large mean and a small spread defeat
    // E[x^2] - E[x]^2 in f32; the kernel must compute them soundly.
    let x = rng.tensor(Shape::new(n, c, h, w), offset, offset + 1.0);
    let (gamma, beta) = (rng.vec(c, 0.5, 1.5), rng.vec(c, -0.5, 0.5));
    let dy = rng.tensor(x.shape, -1.0, 1.0);
    let (u_ref, m_ref) = cpu::norm::forward(&x, stats, &gamma, &beta);
    let y_ref = match act {
        Some(act) => cpu::act::forward(&u_ref, act),
        None => u_ref,
    };

    let groups = stats.groups(n, c);
    let gx = upload(gpu, &embed(&mut rng, &x, 2, 3));
    let gdy = upload(gpu, &embed(&mut rng, &dy, 1, 1));
    let gy = gpu.tensor(Shape::new(n, c + 1, h, w)).unwrap();
    let gdx = gpu.tensor(gx.shape).unwrap();
    let (gg, gbt) = (upload_vec(gpu, &gamma), upload_vec(gpu, &beta));
    let mean = gpu.tensor(Shape::vector(groups)).unwrap();
    let var = gpu.tensor(Shape::vector(groups)).unwrap();
    let sums = gpu.tensor(Shape::vector(2 * groups)).unwrap();
    let (dgamma, dbeta) = (gpu.tensor(Shape::vector(c)).unwrap(), gpu.tensor(Shape::vector(c)).unwrap());
    let t = ops::norm::NormTensors { gamma: &gg, beta: &gbt, mean: &mean, var: &var };
    let (xv, yv, dyv) = (gx.channels(2, c), gy.channels(1, c), gdy.channels(1, c));
    let mut d = ops::norm::moments(gpu, xv, stats, &mean, &var).unwrap();
    d.push(ops::norm::apply(gpu, xv, stats, &t, act, yv).unwrap());
    d.extend(ops::norm::backward_sums(gpu, xv, dyv, stats, &t, act, &sums).unwrap());
    d.push(ops::norm::backward_data(gpu, xv, dyv, stats, &t, act, &sums, gdx.channels(2, c)).unwrap());
    d.push(ops::norm::param_grads(gpu, xv, stats, &sums, &dgamma, &dbeta, None).unwrap());
    run(gpu, &d.iter().collect::<Vec<_>>());

    // Variances of uniform(0, 1) are 1/12; f32 inputs near `offset` carry
    // an absolute rounding of offset * 6e-8, hence the tolerances.
    let xtol = 1e-5 + offset * 2e-7;
    assert_close("norm mean", &gpu.read(&mean).unwrap(), &m_ref.mean, xtol, 1e-6);
    assert_close("norm var", &gpu.read(&var).unwrap(), &m_ref.var, 1e-6, 1e-3);
    let y_gpu = cpu::layout::channels(&read(gpu, &gy), 1, c);
    assert_close("norm block output", &y_gpu.to_f32(), &y_ref.data, 1e-3, 1e-5);
    // The backward against the oracle with the activation's derivative on
    // the side the GPU's own output took: at an output within f32 rounding
    // of the kink (a random case hit one at 3.5e-8) f32 and f64 can take
    // different sides, and through the norm's sums that moves the whole
    // channel's input gradient (there 0.08 against -0.27).
    let du = match act {
        Some(act) => cpu::act::backward(&y_gpu, &dy, act),
        None => dy.clone(),
    };
    let g_ref = cpu::norm::backward(&x, stats, &gamma, &du);
    assert_close("norm backward_data", &read_channels(gpu, &gdx, 2, c), &g_ref.dx.data, 1e-3, 1e-3);
    assert_close("norm dgamma", &gpu.read(&dgamma).unwrap(), &g_ref.dgamma, 1e-2, 1e-3);
    assert_close("norm dbeta", &gpu.read(&dbeta).unwrap(), &g_ref.dbeta, 1e-3, 1e-4);
    // Runs of 8 pixels (CPU adapters) that divide the planes take vec4s.
    let vec4 = gpu.tuning() == Tuning::Cpu && (h * w).is_multiple_of(8);
    for kernel in ["norm.apply", "norm.backward_data"] {
        let label = d.iter().map(|d| d.label()).find(|l| l.starts_with(kernel)).expect("launched");
        assert_eq!(label.ends_with("vec4"), vec4, "{label} at {h}x{w}");
    }
    d.iter().map(|d| d.label().to_string()).collect()
}

/// The windowed reductions of CPU adapters (planes of at least one part of
/// 4080 pixels) on shapes they take: planes of two parts, the second
/// shorter, 18 of them (launches of 14 windows, or 7 of x and 7 of dy,
/// then one with empty slots); batch norm's groups over three samples with large means (x and
/// dy windows at one offset within a vec4: planes of a multiple of 4
/// pixels); and an odd plane, whose parts start inside a vec4 (its backward
/// sums, x and dy at other offsets, run from storage).
#[test]
fn norm_reductions_through_windows_match_cpu() {
    let gpu = gpu_or_skip!();
    let cases = [
        (2, 9, 64, 68, NormStats::PerSample, Some(Activation::RELU), -0.5, &["norm.moments", "norm.backward_sums"][..]),
        (3, 4, 64, 72, NormStats::PerChannel, None, 1000.0, &["norm.moments", "norm.backward_sums"]),
        (1, 5, 67, 71, NormStats::PerSample, None, -0.5, &["norm.moments"]),
        // Planes of 131 x 127 (odd): four parts of 4096 would not fit a
        // window whose start is rounded down, so parts of 4080 (PART_LENS).
        (1, 2, 131, 127, NormStats::PerSample, Some(Activation::RELU), 0.5, &["norm.moments"]),
    ];
    for (seed, (n, c, h, w, stats, act, offset, windowed)) in cases.into_iter().enumerate() {
        let labels = check_norm(gpu, n, c, h, w, stats, act, offset, 41 + seed as u64);
        if gpu.tuning() == Tuning::Cpu {
            for kernel in windowed {
                let launches = labels.iter().filter(|l| l.starts_with(kernel) && l.ends_with("windowed")).count();
                assert!(launches >= 1, "{kernel} at {n}x{c}x{h}x{w}: no windowed launch in {labels:?}");
            }
        }
    }
}

#[test]
fn instance_norm_block_matches_cpu_for_batch_3_odd_sizes() {
    check_norm(gpu_or_skip!(), 3, 5, 37, 53, NormStats::PerSample, None, -0.5, 11);
}

#[test]
fn instance_norm_is_sound_on_large_means() {
    check_norm(gpu_or_skip!(), 1, 33, 40, 40, NormStats::PerSample, None, 1000.0, 12);
}

#[test]
fn batch_norm_block_matches_cpu_for_batch_3_with_33_channels() {
    check_norm(gpu_or_skip!(), 3, 33, 37, 53, NormStats::PerChannel, None, -0.5, 13);
}

#[test]
fn batch_norm_is_sound_on_large_means() {
    check_norm(gpu_or_skip!(), 2, 3, 37, 53, NormStats::PerChannel, None, 1000.0, 14);
}

#[test]
fn instance_norm_with_fused_relu_matches_cpu_for_batch_3_odd_sizes() {
    check_norm(gpu_or_skip!(), 3, 5, 37, 53, NormStats::PerSample, Some(Activation::RELU), -0.5, 16);
}

#[test]
fn batch_norm_with_fused_leaky_relu_matches_cpu_for_batch_2() {
    check_norm(gpu_or_skip!(), 2, 7, 29, 31, NormStats::PerChannel, Some(Activation::LEAKY_RELU), -0.5, 17);
}

#[test]
fn norm_block_with_relu_matches_cpu_with_an_output_on_the_kink() {
    // A case the random shapes drew in CI (2026-11-30): one block output at
    // 3.5e-8, whose ReLU derivative f32 and f64 took on different sides.
    let seed = 4252947004864741544;
    check_norm(gpu_or_skip!(), 3, 6, 9, 13, NormStats::PerChannel, Some(Activation::RELU), -1.8908146464182018, seed);
}

#[test]
fn batch_norm_running_statistics_update_and_inference_match_cpu() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(15);
    let (n, c, h, w) = (3, 5, 37, 53);
    let x = rng.tensor(Shape::new(n, c, h, w), 0.0, 4.0);
    let (gamma, beta) = (rng.vec(c, 0.5, 1.5), rng.vec(c, -0.5, 0.5));
    let (mut rm, mut rv) = (rng.vec(c, -1.0, 1.0), rng.vec(c, 0.5, 2.0));
    let (grm, grv) = (upload_vec(gpu, &rm), upload_vec(gpu, &rv));

    let m = cpu::norm::moments(&x, NormStats::PerChannel);
    cpu::norm::update_running(&mut rm, &mut rv, &m);
    let running = cpu::norm::Moments { mean: rm.clone(), var: rv.clone(), count: 0 };
    let y_ref = cpu::norm::apply(&x, &running, NormStats::PerChannel, &gamma, &beta);

    let gx = upload(gpu, &x);
    let mean = gpu.tensor(Shape::vector(c)).unwrap();
    let var = gpu.tensor(Shape::vector(c)).unwrap();
    let gy = gpu.tensor(x.shape).unwrap();
    let (gg, gb) = (upload_vec(gpu, &gamma), upload_vec(gpu, &beta));
    let inference = ops::norm::NormTensors { gamma: &gg, beta: &gb, mean: &grm, var: &grv };
    let mut d = ops::norm::moments(gpu, gx.view(), NormStats::PerChannel, &mean, &var).unwrap();
    d.push(ops::norm::update_running(gpu, gx.view(), &mean, &var, &grm, &grv).unwrap());
    d.push(ops::norm::apply(gpu, gx.view(), NormStats::PerChannel, &inference, None, gy.view()).unwrap());
    run(gpu, &d.iter().collect::<Vec<_>>());
    assert_close("running mean", &gpu.read(&grm).unwrap(), &rm, 1e-6, 1e-5);
    assert_close("running var", &gpu.read(&grv).unwrap(), &rv, 1e-6, 1e-5);
    assert_close("inference with running statistics", &gpu.read(&gy).unwrap(), &y_ref.data, 1e-5, 1e-5);
}

/// Also with vec4 runs (planes of 24 x 16 on CPU adapters: runs of 8
/// pixels divide them), and lane by lane (29 x 31).
#[test]
fn norm_apply_adds_the_residual_in_its_pass_or_after_it() {
    let gpu = gpu_or_skip!();
    for (seed, (h, w)) in [(29, 31), (24, 16)].into_iter().enumerate() {
        check_apply_residual(gpu, 2, 3, h, w, 16 + seed as u64);
    }
}

fn check_apply_residual(gpu: &Gpu, n: usize, c: usize, h: usize, w: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor(Shape::new(n, c, h, w), -1.0, 2.0);
    let res = rng.tensor(x.shape, -1.0, 1.0);
    let (gamma, beta) = (rng.vec(c, 0.5, 1.5), rng.vec(c, -0.5, 0.5));
    let stats = NormStats::PerChannel;
    let m = cpu::norm::moments(&x, stats);
    let u = cpu::norm::apply(&x, &m, stats, &gamma, &beta);
    let y_ref: Vec<f64> =
        cpu::act::forward(&u, Activation::RELU).data.iter().zip(&res.data).map(|(a, b)| a + b).collect();
    let (gx, gg, gb) = (upload(gpu, &x), upload_vec(gpu, &gamma), upload_vec(gpu, &beta));
    let (mean, var) = (upload_vec(gpu, &m.mean), upload_vec(gpu, &m.var));
    let t = ops::norm::NormTensors { gamma: &gg, beta: &gb, mean: &mean, var: &var };
    // The residual at channel 1 of a buffer whose channels 4.. take the
    // output (one pass), then in a buffer of its own (apply, then add).
    let shared = upload(gpu, &cpu::layout::concat(&[&Tensor::zeros(x.shape.with_c(1)), &res, &x]));
    let (rv, yv) = (shared.channels(1, c), shared.channels(4, c));
    let fused = ops::norm::apply_with_residual(gpu, gx.view(), stats, &t, Some(Activation::RELU), yv, rv).unwrap();
    assert_eq!(fused.len(), 1, "a residual in the output's buffer is added in the same pass");
    let (gres, gy) = (upload(gpu, &res), gpu.tensor(x.shape).unwrap());
    let apart =
        ops::norm::apply_with_residual(gpu, gx.view(), stats, &t, Some(Activation::RELU), gy.view(), gres.view())
            .unwrap();
    assert_eq!(apart.len(), 2);
    run(gpu, &fused.iter().chain(&apart).collect::<Vec<_>>());
    assert_close("apply + residual in one pass", &read_channels(gpu, &shared, 4, c), &y_ref, 1e-5, 1e-5);
    assert_close("the residual left alone", &read_channels(gpu, &shared, 1, c), &res.data, 0.0, 0.0);
    assert_close("apply, then the residual", &gpu.read(&gy).unwrap(), &y_ref, 1e-5, 1e-5);
    let vec4 = gpu.tuning() == Tuning::Cpu && (h * w).is_multiple_of(8);
    assert_eq!(fused[0].label().ends_with("vec4"), vec4, "{} at {h}x{w}", fused[0].label());
}

#[test]
fn conv_data_gradient_adds_the_residual_gradient_in_its_stores_or_before() {
    let gpu = gpu_or_skip!();
    // The narrow kernels (dy under a 64 KiB window), then on CPU adapters
    // the windowed ones.
    check_residual_data(gpu, 2, 29, 31, 17);
    check_residual_data(gpu, 2, 64, 48, 18);
}

fn check_residual_data(gpu: &Gpu, n: usize, h: usize, w: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let c = 3;
    let wt = rng.tensor(Shape::new(c, c, 3, 3), -0.5, 0.5);
    let x = rng.tensor(Shape::new(n, c, h, w), -1.0, 1.0);
    let dy = rng.tensor(x.shape, -1.0, 1.0);
    let (dx0, res) = (rng.tensor(x.shape, -1.0, 1.0), rng.tensor(x.shape, -1.0, 1.0));
    let g = cpu::conv::backward(&x, &wt, &dy, 7);
    let expected: Vec<f64> = (0..dx0.data.len()).map(|i| dx0.data[i] + g.dx.data[i] + res.data[i]).collect();
    let (gw, gdy) = (upload(gpu, &wt), upload(gpu, &dy));
    // dx at channel 0 and the residual at channel 3 of one buffer (one
    // pass), then each in a buffer of its own (an add, then the gradient).
    let shared = upload(gpu, &cpu::layout::concat(&[&dx0, &res]));
    let fused =
        ops::conv::backward_data_adding(gpu, gdy.view(), &gw, 7, shared.channels(0, c), shared.channels(c, c)).unwrap();
    assert!(fused.iter().all(|d| !d.label().starts_with("residual")), "the residual added in the stores");
    let (gdx, gres) = (upload(gpu, &dx0), upload(gpu, &res));
    let apart = ops::conv::backward_data_adding(gpu, gdy.view(), &gw, 7, gdx.view(), gres.view()).unwrap();
    assert!(apart[0].label().starts_with("residual"));
    run(gpu, &fused.iter().chain(&apart).collect::<Vec<_>>());
    assert_close("data gradient + residual in one pass", &read_channels(gpu, &shared, 0, c), &expected, 1e-5, 1e-5);
    assert_close("the residual left alone", &read_channels(gpu, &shared, c, c), &res.data, 0.0, 0.0);
    assert_close("residual, then the data gradient", &gpu.read(&gdx).unwrap(), &expected, 1e-5, 1e-5);
}

// ------------------------------------------------- activation, residual, dropout

fn check_act(gpu: &Gpu, act: Activation, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.tensor(Shape::new(3, 5, 37, 53), -1.0, 1.0);
    let dy = rng.tensor(x.shape, -1.0, 1.0);
    let y_ref = cpu::act::forward(&x, act);
    let dx_ref = cpu::act::backward(&y_ref, &dy, act);
    let gx = upload(gpu, &embed(&mut rng, &x, 1, 1));
    let gy = gpu.tensor(Shape::new(3, 7, 37, 53)).unwrap();
    // dy and dx in slices of their own buffers at different offsets.
    let gdy = upload(gpu, &embed(&mut rng, &dy, 2, 2));
    let gdx = gpu.tensor(Shape::new(3, 9, 37, 53)).unwrap();
    let f = ops::elementwise::act_forward(gpu, gx.channels(1, 5), act, gy.channels(2, 5)).unwrap();
    let b =
        ops::elementwise::act_backward(gpu, gy.channels(2, 5), act, gdy.channels(2, 5), gdx.channels(4, 5)).unwrap();
    run(gpu, &[&f, &b]);
    assert_close("activation forward", &read_channels(gpu, &gy, 2, 5), &y_ref.data, 0.0, 1e-6);
    assert_close("activation backward", &read_channels(gpu, &gdx, 4, 5), &dx_ref.data, 0.0, 1e-6);
    assert_close("its gradient left alone", &read_channels(gpu, &gdy, 2, 5), &dy.data, 0.0, 0.0);
}

#[test]
fn relu_matches_cpu_on_channel_slices() {
    check_act(gpu_or_skip!(), Activation::RELU, 21);
}

#[test]
fn leaky_relu_matches_cpu_on_channel_slices() {
    check_act(gpu_or_skip!(), Activation::LEAKY_RELU, 22);
}

#[test]
fn residual_add_matches_cpu_on_channel_slices() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(23);
    let (a, b) = (rng.tensor(Shape::new(3, 5, 37, 53), -1.0, 1.0), rng.tensor(Shape::new(3, 5, 37, 53), -1.0, 1.0));
    let sum = cpu::act::add(&a, &b);
    let (ga, gb) = (upload(gpu, &embed(&mut rng, &a, 1, 2)), upload(gpu, &embed(&mut rng, &b, 2, 3)));
    run(gpu, &[&ops::elementwise::add(gpu, ga.channels(1, 5), gb.channels(2, 5)).unwrap()]);
    assert_close("residual", &read_channels(gpu, &gb, 2, 5), &sum.data, 0.0, 1e-6);
    assert_close("residual source untouched", &read_channels(gpu, &ga, 1, 5), &a.data, 0.0, 0.0);

    // Both slices in one buffer: bound once.
    let cat = rng.tensor(Shape::new(3, 11, 37, 53), -1.0, 1.0);
    let (a, b) = (cpu::layout::channels(&cat, 1, 5), cpu::layout::channels(&cat, 6, 5));
    let sum = cpu::act::add(&a, &b);
    let g = upload(gpu, &cat);
    run(gpu, &[&ops::elementwise::add(gpu, g.channels(1, 5), g.channels(6, 5)).unwrap()]);
    assert_close("residual within one buffer", &read_channels(gpu, &g, 6, 5), &sum.data, 0.0, 1e-6);
    assert_close("its source untouched", &read_channels(gpu, &g, 1, 5), &a.data, 0.0, 0.0);
    assert!(ops::elementwise::add(gpu, g.channels(1, 5), g.channels(4, 5)).is_err(), "overlap accepted");
}

#[test]
fn dropout_by_parts_reproduces_the_whole_mask() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(25);
    let (p, seed, step) = (0.5, 99, 3);
    let whole = rng.tensor(Shape::new(2, 9, 13, 11), 0.5, 1.5);
    let y_ref = cpu::dropout::forward(&whole, p, seed, step);
    // Channels [0, 1), [1, 5), [5, 9) as separate tensors, as the graph holds them.
    for (c0, c) in [(0, 1), (1, 4), (5, 4)] {
        let part = upload(gpu, &cpu::layout::channels(&whole, c0, c));
        let out = gpu.tensor(part.shape).unwrap();
        let d = ops::dropout::apply_part(gpu, part.view(), p, seed, step, out.view(), (9, c0)).unwrap();
        run(gpu, &[&d]);
        let expected = cpu::layout::channels(&y_ref, c0, c);
        assert_close(&format!("dropout part at channel {c0}"), &gpu.read(&out).unwrap(), &expected.data, 0.0, 1e-6);
    }
}

#[test]
fn dropout_mask_is_reproduced_exactly_from_seed_and_step() {
    check_dropout(gpu_or_skip!());
}

// The run kernels (norm apply and gradients, activations, dropout) as GPUs
// run them, one pixel per invocation.
#[test]
fn run_kernels_match_cpu_one_pixel_per_invocation() {
    let Some(gpu) = common::gpu_tuned_for_gpus() else { return };
    assert_eq!(gpu.run_length(), 1);
    check_norm(gpu, 3, 5, 37, 53, NormStats::PerSample, Some(Activation::RELU), -0.5, 31);
    check_norm(gpu, 2, 7, 29, 31, NormStats::PerChannel, None, 1000.0, 32);
    // One group of more parts than a workgroup has invocations: the
    // combining workgroup's invocations take two parts or one.
    let labels = check_norm(gpu, 2, 1, 300, 300, NormStats::PerChannel, None, 1000.0, 34);
    let parts = |l: &String| l.strip_suffix(" parts")?.rsplit(' ').next()?.parse::<usize>().ok();
    assert!(labels.iter().filter_map(parts).all(|p| p > WORKGROUP), "{labels:?}");
    assert!(labels.iter().filter_map(parts).count() == 2, "{labels:?}");
    check_act(gpu, Activation::LEAKY_RELU, 33);
    check_dropout(gpu);
}

fn check_dropout(gpu: &Gpu) {
    let mut rng = Rng::new(24);
    let (p, seed, step) = (0.5, 1234, 7);
    let x = rng.tensor(Shape::new(3, 33, 37, 53), 0.5, 1.5);
    let y_ref = cpu::dropout::forward(&x, p, seed, step);
    let gx = upload(gpu, &embed(&mut rng, &x, 3, 4));
    let gy = gpu.tensor(Shape::new(3, 34, 37, 53)).unwrap();
    let d = ops::dropout::apply(gpu, gx.channels(3, 33), p, seed, step, gy.channels(1, 33)).unwrap();
    run(gpu, &[&d]);
    let y = read_channels(gpu, &gy, 1, 33);
    for (i, (&g, &c)) in y.iter().zip(&y_ref.data).enumerate() {
        assert_eq!(g == 0.0, c == 0.0, "mask differs at element {i}");
    }
    assert_close("dropout values", &y, &y_ref.data, 0.0, 1e-6);
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.5).abs() < 0.01, "kept fraction {kept} for p = 0.5");

    // Another step draws another mask; the backward pass (same launch on the
    // gradient) of that step follows it.
    d.set_step(gpu, step + 1);
    run(gpu, &[&d]);
    let y2 = read_channels(gpu, &gy, 1, 33);
    let y2_ref = cpu::dropout::backward(&x, p, seed, step + 1);
    assert_close("dropout at the next step", &y2, &y2_ref.data, 0.0, 1e-6);
    let changed = y.iter().zip(&y2).filter(|(a, b)| (**a == 0.0) != (**b == 0.0)).count();
    assert!(changed as f64 > 0.4 * y.len() as f64, "masks of consecutive steps are too alike");
    assert!(nn::dropout_keeps(seed, step, 0, 0.0), "p = 0 keeps everything");
}

// ----------------------------------------------------------------------- loss

/// The loss as both tunings build it: its reduction in a few parts (CPU
/// adapters) or in many (GPUs), then over the parts' sums.
fn check_loss(logits: &Tensor, target: &[f64], kind: LossKind, expected: cpu::loss::LossGrad, probs: Option<Tensor>) {
    let gpu = gpu_or_skip!();
    for gpu in [gpu, common::gpu_tuned_for_gpus().expect("the adapter opened once opens again")] {
        let gl = upload(gpu, logits);
        let gt = gpu.tensor(logits.shape.with_c(1)).unwrap();
        let grad = gpu.tensor(logits.shape).unwrap();
        let loss = ops::loss::build(gpu, &gl, &gt, &kind, &grad).unwrap();
        let parts = loss.dispatches.iter().filter(|d| d.label().ends_with(" parts")).count();
        assert_eq!(parts, 1, "{:?} tuning: the reduction in parts", gpu.tuning());
        loss.write_target(gpu, &target.iter().map(|&t| t as f32).collect::<Vec<_>>()).unwrap();
        run(gpu, &loss.dispatches.iter().collect::<Vec<_>>());
        let sums = gpu.read(&loss.sums).unwrap();
        assert_close("loss value", &sums[ops::loss::Loss::LOSS_INDEX..][..1], &[expected.loss], 1e-6, 1e-5);
        assert_close("loss gradient", &gpu.read(&grad).unwrap(), &expected.grad.data, 1e-9, 1e-4);
        if let (Some(p), Some(p_ref)) = (&loss.probs, probs.as_ref()) {
            assert_close("output probabilities", &gpu.read(p).unwrap(), &p_ref.data, 1e-7, 1e-5);
        }
    }
}

fn labels(rng: &mut Rng, len: usize, classes: usize) -> Vec<f64> {
    (0..len).map(|_| (rng.next_u64() % classes as u64) as f64).collect()
}

#[test]
fn softmax_cross_entropy_matches_cpu_for_3_classes_batch_3() {
    let mut rng = Rng::new(31);
    let logits = rng.tensor(Shape::new(3, 3, 37, 53), -4.0, 4.0);
    let target = labels(&mut rng, 3 * 37 * 53, 3);
    let expected = cpu::loss::softmax_cross_entropy(&logits, &target, None);
    check_loss(
        &logits,
        &target,
        LossKind::SoftmaxCrossEntropy { class_weights: None },
        expected,
        Some(cpu::loss::softmax(&logits)),
    );
}

#[test]
fn class_weighted_cross_entropy_matches_cpu() {
    let mut rng = Rng::new(32);
    let logits = rng.tensor(Shape::new(2, 2, 37, 53), -4.0, 4.0);
    let target = labels(&mut rng, 2 * 37 * 53, 2);
    let weights = [0.3, 2.5];
    let expected = cpu::loss::softmax_cross_entropy(&logits, &target, Some(&weights));
    let kind = LossKind::SoftmaxCrossEntropy { class_weights: Some(weights.map(|w| w as f32).to_vec()) };
    check_loss(&logits, &target, kind, expected, Some(cpu::loss::softmax(&logits)));
}

#[test]
fn loss_targets_are_checked_before_they_are_written() {
    let gpu = gpu_or_skip!();
    let shape = Shape::new(1, 3, 2, 2);
    let (logits, target, grad) =
        (gpu.tensor(shape).unwrap(), gpu.tensor(shape.with_c(1)).unwrap(), gpu.tensor(shape).unwrap());
    let kind = LossKind::SoftmaxCrossEntropy { class_weights: None };
    let loss = ops::loss::build(gpu, &logits, &target, &kind, &grad).unwrap();
    for (bad, named) in
        [(3.0, "target 2 is 3"), (1.5, "target 2 is 1.5"), (-1.0, "target 2 is -1"), (f32::NAN, "target 2 is NaN")]
    {
        let err = loss.write_target(gpu, &[0.0, 1.0, bad, 2.0]).unwrap_err().to_string();
        assert!(err.contains(named), "{err}");
    }
    let err = loss.write_target(gpu, &[0.0; 3]).unwrap_err().to_string();
    assert!(err.contains("3 target values for 4 pixels"), "{err}");
    loss.write_target(gpu, &[0.0, 1.0, 2.0, 2.0]).unwrap();
    assert_eq!(gpu.read(&target).unwrap(), vec![0.0, 1.0, 2.0, 2.0]);
}

fn check_sigmoid(which: SigmoidLoss, seed: u64) {
    let mut rng = Rng::new(seed);
    let logits = rng.tensor(Shape::new(2, 1, 37, 53), -6.0, 6.0);
    let target = labels(&mut rng, 2 * 37 * 53, 2);
    let expected = cpu::loss::sigmoid_loss(&logits, &target, which);
    check_loss(&logits, &target, LossKind::Sigmoid(which), expected, Some(cpu::loss::sigmoid(&logits)));
}

#[test]
fn sigmoid_binary_cross_entropy_matches_cpu() {
    check_sigmoid(SigmoidLoss { bce: true, dice: false }, 33);
}

#[test]
fn sigmoid_soft_dice_matches_cpu() {
    check_sigmoid(SigmoidLoss { bce: false, dice: true }, 34);
}

#[test]
fn sigmoid_bce_plus_dice_matches_cpu() {
    check_sigmoid(SigmoidLoss { bce: true, dice: true }, 35);
}

#[test]
fn mse_matches_cpu_for_batch_2() {
    let mut rng = Rng::new(36);
    let pred = rng.tensor(Shape::new(2, 1, 37, 53), -1.0, 2.0);
    let target = labels(&mut rng, 2 * 37 * 53, 2);
    let expected = cpu::loss::mse(&pred, &target);
    check_loss(&pred, &target, LossKind::Mse, expected, None);
}

// ------------------------------------------------------------------ optimiser

/// Parts of one buffer (`tensors_in_one`) bind alone: a kernel on the middle
/// part updates it like the CPU and leaves its neighbours and the zeroed
/// gaps between parts as they were.
#[test]
fn a_part_of_a_shared_buffer_is_updated_alone() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(43);
    let hp = nn::Adam::with_lr(1e-2);
    let shapes = [Shape::vector(5), Shape::new(3, 1, 1, 11), Shape::vector(7)];
    let (whole, parts) = gpu.tensors_in_one(&shapes).unwrap();
    let (_, grads) = gpu.tensors_in_one(&shapes).unwrap();
    let (_, first) = gpu.tensors_in_one(&shapes).unwrap();
    let (_, second) = gpu.tensors_in_one(&shapes).unwrap();
    let values: Vec<Vec<f64>> = shapes.iter().map(|s| rng.vec(s.numel(), -1.0, 1.0)).collect();
    let g = rng.vec(33, -1.0, 1.0);
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    for (t, v) in parts.iter().zip(&values) {
        gpu.write(t, &f32s(v)).unwrap();
    }
    gpu.write(&grads[1], &f32s(&g)).unwrap();
    let update = ops::optim::adam(gpu, &parts[1], &grads[1], &first[1], &second[1], &hp).unwrap();
    run(gpu, &[&update.dispatch]);
    let mut want = values.clone();
    let (mut m, mut v) = (vec![0.0; 33], vec![0.0; 33]);
    cpu::optim::adam_step(&hp, 1, &mut want[1], &g, &mut m, &mut v);
    for (i, (t, w)) in parts.iter().zip(&want).enumerate() {
        assert_close(&format!("part {i}"), &gpu.read(t).unwrap(), w, 1e-6, 1e-5);
    }
    // Every value of the buffer is a part's or zero.
    let all = gpu.read(&whole).unwrap();
    let nonzero = all.iter().filter(|&&x| x != 0.0).count();
    assert_eq!(nonzero, want.iter().flatten().filter(|&&x| x as f32 != 0.0).count(), "values outside the parts");
}

#[test]
fn adam_with_weight_decay_matches_cpu_over_three_steps() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(41);
    let hp = nn::Adam { weight_decay: 0.01, ..nn::Adam::with_lr(1e-2) };
    let len = 32 * 33 * 9 + 7;
    let mut p = rng.vec(len, -1.0, 1.0);
    let (mut m, mut v) = (vec![0.0; len], vec![0.0; len]);
    let (gp, gg) = (upload_vec(gpu, &p), gpu.tensor(Shape::vector(len)).unwrap());
    let (gm, gv) = (gpu.zeros(Shape::vector(len)).unwrap(), gpu.zeros(Shape::vector(len)).unwrap());
    let mut update = ops::optim::adam(gpu, &gp, &gg, &gm, &gv, &hp).unwrap();
    for step in 1..=3 {
        let g = rng.vec(len, -1.0, 1.0);
        gpu.queue.write_buffer(gg.buffer(), 0, bytemuck::cast_slice(&g.iter().map(|&v| v as f32).collect::<Vec<_>>()));
        update.set_step(gpu, step);
        run(gpu, &[&update.dispatch]);
        cpu::optim::adam_step(&hp, step, &mut p, &g, &mut m, &mut v);
    }
    assert_close("adam parameters", &gpu.read(&gp).unwrap(), &p, 1e-6, 1e-5);
    assert_close("adam first moment", &gpu.read(&gm).unwrap(), &m, 1e-7, 1e-5);
    assert_close("adam second moment", &gpu.read(&gv).unwrap(), &v, 1e-8, 1e-5);
}

fn check_sgd(momentum: f32) {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(42);
    let hp = nn::Sgd { lr: 0.1, momentum, weight_decay: 1e-3 };
    let len = 1001;
    let mut p = rng.vec(len, -1.0, 1.0);
    let mut buf = vec![0.0; len];
    let (gp, gg, gb) =
        (upload_vec(gpu, &p), gpu.tensor(Shape::vector(len)).unwrap(), gpu.zeros(Shape::vector(len)).unwrap());
    let update = ops::optim::sgd(gpu, &gp, &gg, &gb, &hp).unwrap();
    for _ in 0..3 {
        let g = rng.vec(len, -1.0, 1.0);
        gpu.queue.write_buffer(gg.buffer(), 0, bytemuck::cast_slice(&g.iter().map(|&v| v as f32).collect::<Vec<_>>()));
        run(gpu, &[&update.dispatch]);
        cpu::optim::sgd_step(&hp, &mut p, &g, &mut buf);
    }
    assert_close("sgd parameters", &gpu.read(&gp).unwrap(), &p, 1e-6, 1e-5);
}

#[test]
fn sgd_with_momentum_matches_cpu_over_three_steps() {
    check_sgd(0.9);
}

#[test]
fn plain_sgd_matches_cpu_over_three_steps() {
    check_sgd(0.0);
}

// ---------------------------------------------------------- microbenchmarks

#[test]
fn fma_chains_match_the_cpu_and_copy_is_exact() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new(41);
    // 1001 invocations: a partial last workgroup.
    let seeds: Vec<f32> = (0..4 * 1001).map(|_| rng.uniform(-2.0, 2.0) as f32).collect();
    let src = gpu.upload(Shape::vector(seeds.len()), &seeds).unwrap();
    let out = gpu.zeros(src.shape).unwrap();
    let iters = 36;
    let d = ops::bench::fma_chains(gpu, &src, &out, iters).unwrap();
    assert_eq!(d.cost().flops, 2.0 * ops::bench::CHAINS as f64 * iters as f64 * 1001.0);
    run(gpu, &[&d]);
    let expected: Vec<f64> =
        seeds.chunks(4).flat_map(|s| cpu::bench::fma_chains([s[0], s[1], s[2], s[3]], iters)).map(f64::from).collect();
    // f32 chains on both sides; a backend may round fma as mul + add.
    assert_close("fma_chains", &gpu.read(&out).unwrap(), &expected, 1e-5, 1e-5);
    assert!(ops::bench::fma_chains(gpu, &src, &out, 6).is_err(), "steps come four per trip");

    let copied = gpu.zeros(src.shape).unwrap();
    run(gpu, &[&ops::bench::copy(gpu, &src, &copied).unwrap()]);
    assert_eq!(gpu.read(&copied).unwrap(), seeds);
}

// ---------------------------------------------------------------- properties

// The same checks on shapes drawn at random (fresh ones every run; a
// failure prints the shrunk case): every convolution variant, forward and
// both gradients, and the norm block, within sizes a software adapter runs
// in a few seconds.
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, failure_persistence: None, ..Default::default() })]

    #[test]
    fn conv_matches_cpu_on_random_shapes(
        n in 1usize..=2, cin in 1usize..=12, cout in 1usize..=12, h in 1usize..=24, w in 1usize..=24,
        k in proptest::sample::select(vec![1usize, 3]), dilation in 1usize..=40, seed: u64,
    ) {
        check_conv(n, cin, cout, h, w, k, dilation, seed);
    }

    #[test]
    fn norm_block_matches_cpu_on_random_shapes(
        n in 1usize..=3, c in 1usize..=9, h in 1usize..=20, w in 1usize..=20,
        per_sample: bool, act in proptest::sample::select(vec![None, Some(Activation::RELU), Some(Activation::LEAKY_RELU)]),
        offset in -10.0f64..10.0, seed: u64,
    ) {
        let stats = if per_sample { NormStats::PerSample } else { NormStats::PerChannel };
        if let Some(gpu) = common::gpu() {
            check_norm(gpu, n, c, h, w, stats, act, offset, seed);
        }
    }
}
