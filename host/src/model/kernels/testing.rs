//! Helpers the kernel tests (and the optimizer's, which compare fused and plain updates) share:
//! seeded random values, tensors from values and back, closeness within f32's resolution.

use candle_core::{Device, Tensor};

use crate::model::init::{normal_values, stream};

/// Seeded normal values of standard deviation `std`, as many as `shape` holds.
pub(crate) fn random(seed: u64, shape: &[usize], std: f64) -> Vec<f32> {
    normal_values(&mut stream(seed, "kernels"), shape.iter().product(), std)
}

/// A CPU tensor of `values` in `shape`.
pub(crate) fn tensor(values: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).expect("a tensor of matching size")
}

/// A tensor's values, flattened.
pub(crate) fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32 values")
}

/// |a - b| <= rtol |b| + atol elementwise (`a` the fused result, `b` the plain one), NaN only
/// where both are NaN.
pub(crate) fn assert_close(what: &str, a: &[f32], b: &[f32], rtol: f32, atol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x.is_nan() || y.is_nan() {
            assert!(x.is_nan() && y.is_nan(), "{what}[{i}]: {x} vs {y}");
            continue;
        }
        assert!((x - y).abs() <= rtol * y.abs() + atol, "{what}[{i}]: fused {x} vs plain {y} (diff {})", (x - y).abs());
    }
}
