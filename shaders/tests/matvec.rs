//! `row_matmul`: the column-split single-row product equals the plain product, for contiguous and
//! transposed weights, widths that do not divide evenly, and the cases that fall back.

mod common;

use blip3_shaders::matvec::{MIN_BLOCK_WEIGHTS, column_blocks, row_matmul};
use burn::prelude::*;
use common::*;

fn tensor(rng: &mut Rng, dims: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(rng.vec(dims[0] * dims[1], 1.0), dims),
        device,
    )
}

/// Runs `f` on a rayon pool of `threads` threads (so the split happens whatever this machine has).
fn on_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
        .install(f)
}

#[test]
fn split_product_equals_the_plain_product() {
    let device = Device::flex();
    let mut rng = Rng::new(7);
    // (K, N): several blocks, a width that is not a multiple of 16, one just big enough to split.
    for (k, n) in [
        (512, 4096),
        (384, 3001),
        (1024, 2 * MIN_BLOCK_WEIGHTS / 1024),
    ] {
        assert!(k * n >= 2 * MIN_BLOCK_WEIGHTS, "({k}, {n}) must be split");
        let x = tensor(&mut rng, [1, k], &device);
        let w = tensor(&mut rng, [k, n], &device);
        let want = floats(x.clone().matmul(w.clone()));
        for threads in [2, 3, 4] {
            let blocks = on_pool(threads, || column_blocks(1, k, n, &device));
            assert_eq!(blocks, threads.min(k * n / MIN_BLOCK_WEIGHTS), "({k}, {n})");
            assert!(blocks >= 2);
            let got = floats(on_pool(threads, || row_matmul(x.clone(), w.clone())));
            assert_eq!(got.len(), n);
            let d = max_abs_diff(&got, &want);
            assert!(d <= 1e-5, "({k}, {n}) on {threads} threads: max diff {d}");
        }
        // A transposed view (the LM head's layout): [N, K] stored, used as [K, N].
        let wt = tensor(&mut rng, [n, k], &device);
        let want = floats(x.clone().matmul(wt.clone().transpose()));
        let got = floats(on_pool(2, || row_matmul(x.clone(), wt.clone().transpose())));
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "({k}, {n}) transposed: max diff {d}");
    }
}

#[test]
fn the_gemv_path_parses_and_flex_never_takes_the_kernel() {
    use blip3_shaders::matvec::{GemvPath, gemv_applies};
    assert_eq!(GemvPath::parse(" Burn "), Some(GemvPath::Burn));
    assert_eq!(GemvPath::parse("blip3"), Some(GemvPath::Blip3));
    assert_eq!(GemvPath::parse("auto"), None);
    assert_eq!(GemvPath::default(), GemvPath::Burn);
    let device = Device::flex();
    let mut rng = Rng::new(3);
    let (x, w) = (
        tensor(&mut rng, [1, 16], &device),
        tensor(&mut rng, [16, 8], &device),
    );
    assert!(!gemv_applies(&x, &w), "flex has no GEMV kernel");
}

#[test]
fn several_rows_small_weights_and_one_thread_fall_back() {
    let device = Device::flex();
    let mut rng = Rng::new(8);
    let w = tensor(&mut rng, [256, 4096], &device);
    let rows = tensor(&mut rng, [3, 256], &device);
    assert_eq!(on_pool(4, || column_blocks(3, 256, 4096, &device)), 1);
    assert_eq!(on_pool(4, || column_blocks(1, 64, 64, &device)), 1);
    assert_eq!(on_pool(1, || column_blocks(1, 256, 4096, &device)), 1);
    assert_eq!(
        on_pool(4, || column_blocks(
            1,
            256,
            4096,
            &device.clone().autodiff()
        )),
        1,
        "training keeps the plain product"
    );
    let want = floats(rows.clone().matmul(w.clone()));
    assert_eq!(floats(on_pool(4, || row_matmul(rows, w.clone()))), want);
    let small = tensor(&mut rng, [64, 64], &device);
    let x = tensor(&mut rng, [1, 64], &device);
    let want = floats(x.clone().matmul(small.clone()));
    assert_eq!(floats(on_pool(4, || row_matmul(x.clone(), small))), want);
    let x = tensor(&mut rng, [1, 256], &device);
    let want = floats(x.clone().matmul(w.clone()));
    assert_eq!(floats(on_pool(1, || row_matmul(x, w))), want);
}

/// `x · w` in float64 from the values the tensors hold, with `Σ |x·w|` per output (the scale the
/// rounding error grows with).
fn reference(x: &[f64], w: &[f64], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for r in 0..m {
        for kk in 0..k {
            let a = x[r * k + kk];
            for c in 0..n {
                out[r * n + c] += a * w[kk * n + c];
                mag[r * n + c] += (a * w[kk * n + c]).abs();
            }
        }
    }
    (out, mag)
}

#[test]
fn the_gemv_kernel_equals_a_float64_reference_on_gpu_devices() {
    use blip3_shaders::matvec::{MAX_KERNEL_ROWS, gemv, gemv_applies};
    use burn::tensor::DType;
    let gpus = gpu_devices();
    if gpus.is_empty() {
        eprintln!("skipping wgpu: no GPU device for the GEMV kernel");
        return;
    }
    let mut rng = Rng::new(21);
    // (M, K, N): split-K over several cubes, K below one slice, a single column, widths that are
    // not multiples of the cube's 32 or 8, every row count up to the kernel's limit.
    let shapes = [
        (1, 3072, 96),
        (1, 700, 257),
        (3, 1000, 33),
        (MAX_KERNEL_ROWS, 512, 40),
        (2, 5, 3),
        (1, 300, 1),
        (5, 64, 1000),
    ];
    for (name, device) in gpus {
        for &(m, k, n) in &shapes {
            for (x_dtype, w_dtype) in [
                (DType::F32, DType::F32),
                (DType::F16, DType::F16),
                (DType::F32, DType::F16),
            ] {
                let x = tensor(&mut rng, [m, k], &device).cast(x_dtype);
                let w_rows = tensor(&mut rng, [k, n], &device).cast(w_dtype);
                // The same weights stored transposed (the LM head's layout), used as a view.
                let w_cols = w_rows.clone().transpose().into_data();
                let w_cols = Tensor::<2>::from_data(w_cols, &device)
                    .cast(w_dtype)
                    .transpose();
                let (want, mag) = reference(&doubles(x.clone()), &doubles(w_rows.clone()), m, k, n);
                for (layout, w) in [("rows", w_rows.clone()), ("transposed", w_cols)] {
                    let got = gemv(x.clone(), w);
                    assert_eq!(got.dims(), [m, n]);
                    assert_eq!(got.dtype(), x_dtype, "{name} output dtype");
                    let got = doubles(got);
                    for i in 0..m * n {
                        // f32 accumulation; an f16 output adds its own rounding (2^-11).
                        let rel = if x_dtype == DType::F16 { 1e-3 } else { 0.0 };
                        let tol = 2e-6 * mag[i] + rel * want[i].abs() + 1e-7;
                        assert!(
                            (got[i] - want[i]).abs() <= tol,
                            "{name} {layout} ({m}, {k}, {n}) {x_dtype:?}x{w_dtype:?} at {i}: {} vs \
                             {} (tolerance {tol})",
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
        // The routing: the kernel for 1..=8 rows of floats on the plain device; Burn's matmul for
        // more rows and under autodiff (where the kernel has no backward), with the same product.
        let w = tensor(&mut rng, [64, 48], &device);
        for m in 1..=MAX_KERNEL_ROWS {
            assert!(
                gemv_applies(&tensor(&mut rng, [m, 64], &device), &w),
                "{name} M={m}"
            );
        }
        let x = tensor(&mut rng, [MAX_KERNEL_ROWS + 1, 64], &device);
        assert!(!gemv_applies(&x, &w), "{name}: 9 rows");
        let d = max_abs_diff(
            &floats(gemv(x.clone(), w.clone())),
            &floats(x.clone().matmul(w.clone())),
        );
        assert!(d <= 1e-5, "{name}: {d}");
        let ad = device.clone().autodiff();
        let (xa, wa) = (
            Tensor::<2>::from_data(x.narrow(0, 0, 1).into_data(), &ad),
            Tensor::<2>::from_data(w.into_data(), &ad),
        );
        assert!(xa.is_autodiff());
        assert!(!gemv_applies(&xa, &wa), "{name}: autodiff");
        let d = max_abs_diff(
            &floats(gemv(xa.clone(), wa.clone())),
            &floats(xa.matmul(wa)),
        );
        assert!(d <= 1e-5, "{name} autodiff: {d}");
    }
}
