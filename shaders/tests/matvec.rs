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
