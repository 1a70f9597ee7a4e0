//! The vendor-GEMM extension (`blip3_shaders::gemm`): products against a float64 host reference
//! for every operand layout the linear layers produce (contiguous, transposed views, row slices
//! with padded strides) in f32, f16 and bf16, and its autodiff backward against Burn's matmul,
//! on flex and every GPU device here. On CUDA the products go to cuBLAS; with
//! `BLIP3_REQUIRE_CUBLAS` set (the GPU check sets it) the test also fails unless cuBLAS, not
//! the fallback, computed them.

mod common;

use blip3_shaders::gemm::{
    MatmulPath, is_cuda_device, linear_product, vendor_available, vendor_calls, vendor_matmul,
};
use burn::prelude::*;
use burn::tensor::DType;
use common::*;

/// How an operand is laid out in memory.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Row-major and contiguous.
    Contiguous,
    /// Stored as its transpose and used through `.transpose()` (the LM head's weight).
    Transposed,
    /// Columns `2..2+cols` of a wider row-major matrix: an offset and padded rows.
    Slice,
}

/// A `[rows, cols]` operand with `values` (row-major) laid out as `layout`, in `dtype`.
fn operand(
    values: &[f32],
    [rows, cols]: [usize; 2],
    layout: Layout,
    dtype: DType,
    device: &Device,
) -> Tensor<2> {
    match layout {
        Layout::Contiguous => {
            Tensor::<2>::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
                .cast(dtype)
        }
        Layout::Transposed => {
            let mut t = vec![0.0; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = values[r * cols + c];
                }
            }
            Tensor::<2>::from_data(TensorData::new(t, [cols, rows]), device)
                .cast(dtype)
                .transpose()
        }
        Layout::Slice => {
            let wide = cols + 5;
            let mut t = vec![9.0; rows * wide];
            for r in 0..rows {
                t[r * wide + 2..r * wide + 2 + cols].copy_from_slice(&values[r * cols..][..cols]);
            }
            Tensor::<2>::from_data(TensorData::new(t, [rows, wide]), device)
                .cast(dtype)
                .narrow(1, 2, cols)
        }
    }
}

/// The values as `dtype` stores them (what the device multiplies).
fn rounded(values: &[f32], dtype: DType) -> Vec<f64> {
    let device = Device::flex();
    let n = values.len();
    doubles(Tensor::<1>::from_data(TensorData::new(values.to_vec(), [n]), &device).cast(dtype))
}

/// `a [m, k] · b [k, n]` in float64.
fn reference(a: &[f64], b: &[f64], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += x * b[p * n + j];
            }
        }
    }
    c
}

/// Largest error allowed, relative to the largest reference magnitude: f32 must be computed in
/// f32 (TF32 would be about 1e-3 here), half precision is judged by its output rounding.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 2e-3,
        _ => 1e-2,
    }
}

fn cublas_required() -> bool {
    std::env::var_os("BLIP3_REQUIRE_CUBLAS").is_some()
}

#[test]
fn products_match_a_float64_reference() {
    let _serial = VENDOR_COUNTER.lock().unwrap_or_else(|e| e.into_inner());
    let shapes = [(1, 64, 48), (37, 96, 130), (128, 256, 64), (5, 3, 1)];
    let layouts = [
        (Layout::Contiguous, Layout::Contiguous),
        (Layout::Contiguous, Layout::Transposed),
        (Layout::Transposed, Layout::Contiguous),
        (Layout::Slice, Layout::Transposed),
        (Layout::Contiguous, Layout::Slice),
    ];
    for (device_name, device) in devices() {
        let cuda = is_cuda_device(&device);
        if cuda && cublas_required() {
            assert!(
                vendor_available(),
                "BLIP3_REQUIRE_CUBLAS: no cuBLAS library"
            );
        }
        // Every float dtype the device has (WGSL has no bf16).
        let dtypes = [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .filter(|d| device.supports_dtype(*d));
        for dtype in dtypes {
            for (seed, &(m, k, n)) in shapes.iter().enumerate() {
                let mut rng = Rng::new(40 + seed as u64);
                let a = rng.vec(m * k, 1.0);
                let b = rng.vec(k * n, 1.0);
                let want = reference(&rounded(&a, dtype), &rounded(&b, dtype), (m, k, n));
                let scale = want.iter().fold(1e-6f64, |s, x| s.max(x.abs()));
                for (la, lb) in layouts {
                    let lhs = operand(&a, [m, k], la, dtype, &device);
                    let rhs = operand(&b, [k, n], lb, dtype, &device);
                    let calls = vendor_calls();
                    let got = vendor_matmul(lhs, rhs);
                    assert_eq!(got.dims(), [m, n]);
                    assert_eq!(got.dtype(), dtype);
                    let got = doubles(got);
                    let err =
                        got.iter()
                            .zip(&want)
                            .map(|(x, y)| (x - y).abs())
                            .fold(
                                0.0f64,
                                |e, d| if d.is_nan() { f64::INFINITY } else { e.max(d) },
                            )
                            / scale;
                    let case = format!("{device_name} {dtype:?} [{m},{k}]·[{k},{n}] {la:?}·{lb:?}");
                    eprintln!("{case}: relative error {err:.2e}");
                    assert!(err <= tolerance(dtype), "{case}: relative error {err:.2e}");
                    if cuda && cublas_required() {
                        assert!(vendor_calls() > calls, "{case}: cuBLAS did not run");
                    }
                    if !cuda {
                        assert_eq!(vendor_calls(), calls, "{case}: cuBLAS ran off CUDA");
                    }
                }
            }
        }
    }
}

/// Held by the tests that count cuBLAS calls (one counter per process), so that one test's
/// products are not counted by another.
static VENDOR_COUNTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Transposes a row-major `[rows, cols]` matrix.
fn transpose(values: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}

#[test]
fn gradients_match_a_float64_reference() {
    let _serial = VENDOR_COUNTER.lock().unwrap_or_else(|e| e.into_inner());
    for (device_name, device) in devices() {
        for ((m, k, n), train_w, w_layout) in [
            ((6, 32, 24), true, Layout::Contiguous),
            ((6, 32, 24), true, Layout::Transposed),
            ((9, 16, 40), false, Layout::Contiguous),
            ((1, 64, 8), true, Layout::Slice),
        ] {
            let case = format!("{device_name} [{m},{k}]·[{k},{n}] train_w={train_w} {w_layout:?}");
            let mut rng = Rng::new(7);
            let (xv, wv, gv) = (
                rng.vec(m * k, 1.0),
                rng.vec(k * n, 1.0),
                rng.vec(m * n, 1.0),
            );
            let ad = device.clone().autodiff();
            let x = operand(&xv, [m, k], Layout::Contiguous, DType::F32, &ad).require_grad();
            let w = operand(&wv, [k, n], w_layout, DType::F32, &ad);
            let w = if train_w { w.require_grad() } else { w };
            let g = operand(&gv, [m, n], Layout::Contiguous, DType::F32, &ad);
            let calls = vendor_calls();
            let grads = (vendor_matmul(x.clone(), w.clone()) * g).sum().backward();
            if is_cuda_device(&device) && cublas_required() {
                // The forward and the two backward products.
                let expected = if train_w { 3 } else { 2 };
                assert!(
                    vendor_calls() >= calls + expected,
                    "{case}: cuBLAS did not run"
                );
            }
            let (x64, w64, g64) = (
                rounded(&xv, DType::F32),
                rounded(&wv, DType::F32),
                rounded(&gv, DType::F32),
            );
            // d x = g · wᵀ, d w = xᵀ · g.
            let want_dx = reference(&g64, &transpose(&w64, k, n), (m, n, k));
            let want_dw = reference(&transpose(&x64, m, k), &g64, (k, m, n));
            let close = |got: Vec<f64>, want: &[f64], what: &str| {
                let scale = want.iter().fold(1e-6f64, |s, x| s.max(x.abs()));
                let err = got
                    .iter()
                    .zip(want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max)
                    / scale;
                eprintln!("{case}: d{what} relative error {err:.2e}");
                assert!(
                    err <= tolerance(DType::F32),
                    "{case}: d{what} relative error {err:.2e}"
                );
            };
            close(doubles(x.grad(&grads).expect("x gradient")), &want_dx, "x");
            match w.grad(&grads) {
                Some(dw) => {
                    assert!(train_w, "{case}: a frozen weight got a gradient");
                    close(doubles(dw), &want_dw, "w");
                }
                None => assert!(!train_w, "{case}: no weight gradient"),
            }
        }
    }
}

#[test]
fn linear_product_flattens_leading_dimensions() {
    let device = Device::flex();
    let mut rng = Rng::new(3);
    let x = Tensor::<3>::from_data(TensorData::new(rng.vec(2 * 3 * 8, 1.0), [2, 3, 8]), &device);
    let w = Tensor::<2>::from_data(TensorData::new(rng.vec(8 * 5, 1.0), [8, 5]), &device);
    let got = linear_product(x.clone(), w.clone());
    assert_eq!(got.dims(), [2, 3, 5]);
    let want = x.matmul(w.unsqueeze::<3>());
    let d = max_abs_diff(&floats(got), &floats(want));
    assert!(d <= 1e-6, "max diff {d}");
}

#[test]
fn the_matmul_path_parses() {
    assert_eq!(MatmulPath::parse(" Burn "), Some(MatmulPath::Burn));
    assert_eq!(MatmulPath::parse("cublas"), Some(MatmulPath::Cublas));
    assert_eq!(MatmulPath::parse("vendor"), Some(MatmulPath::Cublas));
    assert_eq!(MatmulPath::parse("extension"), Some(MatmulPath::Extension));
    assert_eq!(MatmulPath::parse("auto"), None);
    assert_eq!(MatmulPath::default(), MatmulPath::Burn);
    let flex = Device::flex();
    assert!(!is_cuda_device(&flex));
    assert!(!MatmulPath::Burn.routes(&flex));
    assert!(
        !MatmulPath::Cublas.routes(&flex),
        "cublas routes CUDA devices only"
    );
    assert!(MatmulPath::Extension.routes(&flex));
    assert!(MatmulPath::Extension.routes(&flex.clone().autodiff()));
}
