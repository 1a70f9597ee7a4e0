//! A module's float parameters read back to the host, in visiting order: for comparing two models
//! (training and resume checks) and for checking what a load produced.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::DType;

/// Every float parameter's values as f32 (cast from its dtype), in visiting order.
pub fn param_values<M: Module>(module: &M) -> Vec<Vec<f32>> {
    struct Values(Vec<Vec<f32>>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let data = p.val().cast(DType::F32).into_data();
            // A cast to f32 always yields f32 data.
            self.0
                .push(data.try_into_vec_as::<f32>().unwrap_or_default());
        }
    }
    let mut v = Values(Vec::new());
    module.visit(&mut v);
    v.0
}

/// Every float parameter's dtype, in visiting order.
pub fn param_dtypes<M: Module>(module: &M) -> Vec<DType> {
    struct Dtypes(Vec<DType>);
    impl ModuleVisitor for Dtypes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.val().dtype());
        }
    }
    let mut v = Dtypes(Vec::new());
    module.visit(&mut v);
    v.0
}

/// Largest absolute difference between two parameter lists of the same shapes (`None` when the
/// lists differ in length or in any tensor's size; NaN counts as infinitely far).
pub fn max_param_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<f32> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(u, v)| (u - v).abs()))
            .fold(
                0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            ),
    )
}
