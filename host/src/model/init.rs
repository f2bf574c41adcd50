//! Parameter declarations and GPT-2 style initialisation, deterministic from a seed.
//!
//! Every family describes its parameters once, as a list of [`ParamSpec`]s (Hugging Face name,
//! shape, initialiser). That one list drives initialisation, the shape checks of
//! `Model::from_weights`, and the parameter count of a config (which allocates nothing).
//!
//! candle's CPU random generator cannot be seeded, so the values are drawn here, on the host,
//! from `StdRng` and uploaded with `Tensor::from_vec`: the same seed gives bit-identical
//! parameters on every device. Each tensor draws from its own stream, seeded by the model seed
//! and the tensor's name, so a tensor's values do not depend on which other tensors exist or in
//! which order they are built. (`StdRng` is reproducible for a fixed `rand` version, which the
//! lock file pins.)

use candle_core::{Device, Var};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal(0, std): linear and embedding weights.
    Normal { std: f64 },
    /// All zeros: biases.
    Zeros,
    /// All ones: norm gains.
    Ones,
}

/// One parameter of a model: its Hugging Face name, shape and initialiser.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    pub(crate) fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        ParamSpec { name: name.into(), shape: shape.to_vec(), init }
    }

    /// Number of scalars in the parameter.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The standard deviation GPT-2 uses for weights.
pub const INIT_STD: f64 = 0.02;

/// GPT-2's scaled init for the projections that write into the residual stream (attention
/// out-projection, MLP down-projection): each of the `2 * layers` residual additions then adds
/// variance 0.02² / (2·layers), so the stream's variance does not grow with depth.
pub fn residual_std(layers: usize) -> f64 {
    INIT_STD / ((2 * layers) as f64).sqrt()
}

/// SplitMix64 finaliser: spreads a 64-bit value over all bits (used to derive stream seeds).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a name: stable across platforms and Rust versions, unlike `DefaultHasher`.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The generator of one named stream under `seed`.
pub(crate) fn stream(seed: u64, name: &str) -> StdRng {
    StdRng::seed_from_u64(mix64(seed) ^ fnv1a(name))
}

/// A uniform draw in the open interval (0, 1), from the top 53 bits of a u64.
fn open_unit(rng: &mut StdRng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// `n` draws from Normal(0, std) by the Box-Muller transform (each pair of uniforms gives two).
pub fn normal_values(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u1, u2) = (open_unit(rng), open_unit(rng));
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// The initial values of one parameter under `seed`, row-major.
pub fn init_values(spec: &ParamSpec, seed: u64) -> Vec<f32> {
    let n = spec.numel();
    match spec.init {
        Init::Normal { std } => normal_values(&mut stream(seed, &spec.name), n, std),
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
    }
}

/// A fresh trainable variable for `spec`.
pub fn init_var(spec: &ParamSpec, seed: u64, device: &Device) -> candle_core::Result<Var> {
    Var::from_vec(init_values(spec, seed), spec.shape.as_slice(), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_muller_has_the_requested_moments() {
        let v = normal_values(&mut stream(3, "x"), 200_001, 0.02);
        assert_eq!(v.len(), 200_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 2e-4, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 2e-4, "std {}", var.sqrt());
        // Tails exist but stay sane: about 0.27% beyond 3 sigma.
        let beyond = v.iter().filter(|x| x.abs() > 0.06).count() as f64 / n;
        assert!((0.0015..0.004).contains(&beyond), "tail fraction {beyond}");
    }

    #[test]
    fn streams_depend_on_seed_and_name_only() {
        let a = normal_values(&mut stream(1, "h.0.attn.c_attn.weight"), 8, 1.0);
        let b = normal_values(&mut stream(1, "h.0.attn.c_attn.weight"), 8, 1.0);
        let c = normal_values(&mut stream(2, "h.0.attn.c_attn.weight"), 8, 1.0);
        let d = normal_values(&mut stream(1, "h.1.attn.c_attn.weight"), 8, 1.0);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
