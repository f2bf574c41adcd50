//! Loss plugins without hand-written gradients: a small reverse-mode automatic differentiation
//! tape, so that a loss writes only its forward computation over the batch's features.
//!
//! ```
//! use triad_plugin_sdk::autodiff;
//! use triad_plugin_sdk::prelude::*;
//!
//! /// Masked mean negative log-likelihood.
//! #[derive(Default, Deserialize)]
//! struct Nll;
//!
//! impl Plugin for Nll {}
//!
//! impl Loss for Nll {
//!     fn features(&self) -> Vec<Feature> {
//!         vec![Feature::Logprob, Feature::Mask]
//!     }
//!
//!     fn compute(&mut self, batch: &LossBatch) -> Result<LossOutput, String> {
//!         autodiff::compute(batch, |x| {
//!             let logprob = x.per_token(Feature::Logprob)?; // variables: their gradient comes back
//!             let mask = x.batch().per_token(Feature::Mask)?; // plain f32: constants
//!             let tokens = mask.iter().map(|&m| f64::from(m)).sum::<f64>();
//!             let nll = x.tape().sum(logprob.iter().zip(mask).map(|(&l, &m)| -l * f64::from(m)));
//!             Ok((nll / tokens.max(1.0), vec![("tokens", tokens)]))
//!         })
//!     }
//! }
//!
//! let batch = triad_plugin_sdk::testing::loss_batch(
//!     &[0, 3],
//!     &[(Feature::Logprob, &[-1.0, -2.0, -4.0]), (Feature::Mask, &[1.0, 1.0, 0.0])],
//! );
//! let out = Nll.compute(&batch).unwrap();
//! assert_eq!(out.value, 1.5);
//! assert_eq!(out.gradients[0].values, vec![-0.5, -0.5, 0.0]); // logprob's; mask has none
//! ```
//!
//! How it works, micrograd-style: every operation on a [`Var`] computes its value at once and
//! records on the [`Tape`] its inputs with the local partial derivative of each. One backward
//! sweep over the tape in reverse order then accumulates `d loss / d node` for every node by the
//! chain rule. Values are `f64` throughout; the features arrive as `f32` and the gradients leave
//! as `f32`, as with a hand-written loss.
//!
//! Conventions, chosen to match PyTorch's autograd so that a plugin ported from Python gives the
//! same gradients:
//! - `a.max(b)` and `a.min(b)` are `torch.maximum`/`torch.minimum`: the chosen input receives the
//!   gradient, and on a tie each receives half of it. A NaN input gives a NaN value.
//! - `x.clamp(lo, hi)` is `torch.clamp`: gradient 1 inside the bounds including the bounds
//!   themselves, 0 strictly outside.
//! - `x.abs()` has gradient `sign(x)`, 0 at 0.
//! - `x.powi(0)` and `x.powf(0.0)` have gradient 0 everywhere, `0^0 = 1`; `x.sqrt()` at 0 and
//!   `x.ln()` at 0 have an infinite gradient.
//! - `softplus`, `log_sigmoid` and `sigmoid` are exact and overflow-free for every finite input
//!   (PyTorch's `softplus` switches to the identity above 20; this one does not).
//! - A branch is plain Rust: `if c { a } else { b }` is `torch.where(c, a, b)`, and only the chosen
//!   branch gets gradient. Unlike `torch.where`, the other branch cannot turn the gradient into NaN
//!   through `0 * inf`, because nothing links it to the result.
//! - Only the operations the loss depends on pass gradient back, as in PyTorch's graph. On that
//!   path an upstream gradient of 0 still multiplies the partials, so `0 * inf` is NaN as in
//!   PyTorch: a loss must not compute `sqrt(0)` or `ln(0)` on a path it then multiplies by 0.
//!
//! Cost: about one node per arithmetic operation, each a few dozen bytes on the plugin's memory
//! cap, and one backward sweep; a per-token loss over a large batch pays that per token.

use std::cell::RefCell;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use crate::{Feature, FeatureValues, LossBatch, LossBatchExt, LossOutput, is_differentiable};

/// The record of a forward computation: for each node, its inputs and the partial derivative of
/// the node with respect to each.
#[derive(Default)]
pub struct Tape {
    nodes: RefCell<Nodes>,
}

/// Node `i`'s edges are `edges[ends[i - 1]..ends[i]]` (from 0 for node 0): one flat array
/// rather than a vector per node, so that a long forward pass allocates rarely.
#[derive(Default)]
struct Nodes {
    ends: Vec<usize>,
    edges: Vec<(usize, f64)>,
}

/// A scalar on a [`Tape`]: its value, and where the tape records how it was computed. `Copy`, so
/// it is used like an `f64`.
#[derive(Clone, Copy)]
pub struct Var<'t> {
    tape: &'t Tape,
    index: usize,
    value: f64,
}

impl std::fmt::Debug for Var<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var(#{} = {})", self.index, self.value)
    }
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Tape::default()
    }

    /// A new input variable: the gradient of a result with respect to it can be read back.
    pub fn var(&self, value: f64) -> Var<'_> {
        self.push(value, [])
    }

    /// The sum of the variables, as one node: added left to right, like a loop of `+=`. An empty
    /// sum is 0.
    pub fn sum<'t>(&'t self, xs: impl IntoIterator<Item = Var<'t>>) -> Var<'t> {
        let xs: Vec<Var<'t>> = xs.into_iter().collect();
        let value = xs.iter().fold(0.0, |total, x| total + x.value);
        self.push(value, xs.iter().map(|&x| (x, 1.0)))
    }

    /// The mean of the variables. An empty mean is NaN, as in PyTorch: a loss decides itself what
    /// an empty batch gives.
    pub fn mean<'t>(&'t self, xs: impl IntoIterator<Item = Var<'t>>) -> Var<'t> {
        let xs: Vec<Var<'t>> = xs.into_iter().collect();
        let n = xs.len() as f64;
        self.sum(xs) / n
    }

    /// The number of nodes recorded so far.
    fn len(&self) -> usize {
        self.nodes.borrow().ends.len()
    }

    /// Records a node computed from `inputs`, each with `d node / d input`.
    fn push<'t>(&'t self, value: f64, inputs: impl IntoIterator<Item = (Var<'t>, f64)>) -> Var<'t> {
        let mut nodes = self.nodes.borrow_mut();
        for (input, partial) in inputs {
            // Variables of two tapes cannot be combined: the indices would point into the wrong
            // record and the gradients would be silently wrong.
            assert!(std::ptr::eq(input.tape, self), "a Var of another tape was used");
            nodes.edges.push((input.index, partial));
        }
        let end = nodes.edges.len();
        nodes.ends.push(end);
        Var { tape: self, index: nodes.ends.len() - 1, value }
    }
}

/// `d result / d x` for every variable `x` recorded before the result, from [`Var::backward`].
pub struct Gradients(Vec<f64>);

impl Gradients {
    /// The gradient with respect to `x`: 0 when the result does not depend on it.
    pub fn wrt(&self, x: Var<'_>) -> f64 {
        self.0.get(x.index).copied().unwrap_or(0.0)
    }
}

impl<'t> Var<'t> {
    /// The value computed in the forward pass.
    pub fn value(self) -> f64 {
        self.value
    }

    /// The gradient of this variable with respect to every variable of its tape, by one reverse
    /// sweep over the tape.
    pub fn backward(self) -> Gradients {
        let nodes = self.tape.nodes.borrow();
        let mut adjoint = vec![0.0; nodes.ends.len()];
        // Only nodes the result depends on pass gradient on: a value computed but not used (the
        // branch not taken) must not add `0 * inf = NaN` to its inputs.
        let mut reached = vec![false; nodes.ends.len()];
        adjoint[self.index] = 1.0;
        reached[self.index] = true;
        // Every node's inputs were recorded before it, so in reverse order a node's adjoint is
        // complete before it is passed on.
        for node in (0..=self.index).rev() {
            if !reached[node] {
                continue;
            }
            let start = if node == 0 { 0 } else { nodes.ends[node - 1] };
            let upstream = adjoint[node];
            for &(input, partial) in &nodes.edges[start..nodes.ends[node]] {
                adjoint[input] += upstream * partial;
                reached[input] = true;
            }
        }
        Gradients(adjoint)
    }

    /// A node computed from this variable alone.
    fn unary(self, value: f64, partial: f64) -> Var<'t> {
        self.tape.push(value, [(self, partial)])
    }

    /// A node computed from this variable and another.
    fn binary(self, other: Var<'t>, value: f64, partials: (f64, f64)) -> Var<'t> {
        self.tape.push(value, [(self, partials.0), (other, partials.1)])
    }

    /// `e^x`.
    pub fn exp(self) -> Var<'t> {
        let e = self.value.exp();
        self.unary(e, e)
    }

    /// `e^x - 1`, accurate near 0.
    pub fn exp_m1(self) -> Var<'t> {
        self.unary(self.value.exp_m1(), self.value.exp())
    }

    /// The natural logarithm.
    pub fn ln(self) -> Var<'t> {
        self.unary(self.value.ln(), 1.0 / self.value)
    }

    /// `ln(1 + x)`, accurate near 0.
    pub fn ln_1p(self) -> Var<'t> {
        self.unary(self.value.ln_1p(), 1.0 / (1.0 + self.value))
    }

    /// The square root.
    pub fn sqrt(self) -> Var<'t> {
        let root = self.value.sqrt();
        self.unary(root, 0.5 / root)
    }

    /// `x^n` for an integer power.
    pub fn powi(self, n: i32) -> Var<'t> {
        let partial = if n == 0 { 0.0 } else { f64::from(n) * self.value.powi(n - 1) };
        self.unary(self.value.powi(n), partial)
    }

    /// `x^p` for a real power.
    pub fn powf(self, p: f64) -> Var<'t> {
        let partial = if p == 0.0 { 0.0 } else { p * self.value.powf(p - 1.0) };
        self.unary(self.value.powf(p), partial)
    }

    /// `|x|`, with gradient `sign(x)` and 0 at 0.
    pub fn abs(self) -> Var<'t> {
        let sign = if self.value > 0.0 {
            1.0
        } else if self.value < 0.0 {
            -1.0
        } else {
            0.0
        };
        self.unary(self.value.abs(), sign)
    }

    /// `1 / (1 + e^-x)`.
    pub fn sigmoid(self) -> Var<'t> {
        let s = sigmoid(self.value);
        self.unary(s, s * (1.0 - s))
    }

    /// `ln(1 + e^x)`, whose derivative is `sigmoid(x)`.
    pub fn softplus(self) -> Var<'t> {
        let x = self.value;
        self.unary(x.max(0.0) + (-x.abs()).exp().ln_1p(), sigmoid(x))
    }

    /// `ln(sigmoid(x)) = -softplus(-x)`, whose derivative is `sigmoid(-x)`.
    pub fn log_sigmoid(self) -> Var<'t> {
        let x = self.value;
        self.unary(x.min(0.0) - (-x.abs()).exp().ln_1p(), sigmoid(-x))
    }

    /// The larger of the two, as `torch.maximum`: a tie splits the gradient evenly.
    pub fn max(self, other: Var<'t>) -> Var<'t> {
        let (value, partials) = choose(self.value, other.value, self.value > other.value, other.value > self.value);
        self.binary(other, value, partials)
    }

    /// The smaller of the two, as `torch.minimum`: a tie splits the gradient evenly.
    pub fn min(self, other: Var<'t>) -> Var<'t> {
        let (value, partials) = choose(self.value, other.value, self.value < other.value, other.value < self.value);
        self.binary(other, value, partials)
    }

    /// `x` limited to `[lo, hi]`, as `torch.clamp`: gradient 1 on the bounds and between them, 0
    /// strictly outside. Panics unless `lo <= hi`, as `f64::clamp` does.
    pub fn clamp(self, lo: f64, hi: f64) -> Var<'t> {
        let inside = lo <= self.value && self.value <= hi;
        self.unary(self.value.clamp(lo, hi), if inside { 1.0 } else { 0.0 })
    }
}

/// The value and partials of a two-way choice: `a` when `a_wins`, `b` when `b_wins`, half of each
/// on a tie, NaN when either is NaN (neither wins and they are not equal).
fn choose(a: f64, b: f64, a_wins: bool, b_wins: bool) -> (f64, (f64, f64)) {
    if a_wins {
        (a, (1.0, 0.0))
    } else if b_wins {
        (b, (0.0, 1.0))
    } else {
        (if a == b { a } else { f64::NAN }, (0.5, 0.5))
    }
}

/// `1 / (1 + e^-x)` without overflow for any finite x.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl<'t> Add for Var<'t> {
    type Output = Var<'t>;
    fn add(self, other: Var<'t>) -> Var<'t> {
        self.binary(other, self.value + other.value, (1.0, 1.0))
    }
}

impl<'t> Sub for Var<'t> {
    type Output = Var<'t>;
    fn sub(self, other: Var<'t>) -> Var<'t> {
        self.binary(other, self.value - other.value, (1.0, -1.0))
    }
}

impl<'t> Mul for Var<'t> {
    type Output = Var<'t>;
    fn mul(self, other: Var<'t>) -> Var<'t> {
        self.binary(other, self.value * other.value, (other.value, self.value))
    }
}

impl<'t> Div for Var<'t> {
    type Output = Var<'t>;
    fn div(self, other: Var<'t>) -> Var<'t> {
        let q = self.value / other.value;
        self.binary(other, q, (1.0 / other.value, -q / other.value))
    }
}

impl<'t> Neg for Var<'t> {
    type Output = Var<'t>;
    fn neg(self) -> Var<'t> {
        self.unary(-self.value, -1.0)
    }
}

impl<'t> AddAssign for Var<'t> {
    fn add_assign(&mut self, other: Var<'t>) {
        *self = *self + other;
    }
}

// With a constant on either side: one node, a single partial.

impl<'t> Add<f64> for Var<'t> {
    type Output = Var<'t>;
    fn add(self, c: f64) -> Var<'t> {
        self.unary(self.value + c, 1.0)
    }
}

impl<'t> Add<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn add(self, x: Var<'t>) -> Var<'t> {
        x.unary(self + x.value, 1.0)
    }
}

impl<'t> Sub<f64> for Var<'t> {
    type Output = Var<'t>;
    fn sub(self, c: f64) -> Var<'t> {
        self.unary(self.value - c, 1.0)
    }
}

impl<'t> Sub<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn sub(self, x: Var<'t>) -> Var<'t> {
        x.unary(self - x.value, -1.0)
    }
}

impl<'t> Mul<f64> for Var<'t> {
    type Output = Var<'t>;
    fn mul(self, c: f64) -> Var<'t> {
        self.unary(self.value * c, c)
    }
}

impl<'t> Mul<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn mul(self, x: Var<'t>) -> Var<'t> {
        x.unary(self * x.value, self)
    }
}

impl<'t> Div<f64> for Var<'t> {
    type Output = Var<'t>;
    fn div(self, c: f64) -> Var<'t> {
        self.unary(self.value / c, 1.0 / c)
    }
}

impl<'t> Div<Var<'t>> for f64 {
    type Output = Var<'t>;
    fn div(self, x: Var<'t>) -> Var<'t> {
        let q = self / x.value;
        x.unary(q, -q / x.value)
    }
}

/// What a forward pass returns: the loss as a variable of the tape, and diagnostics as
/// `(name, value)` pairs (as [`LossOutput::new`] takes them), or an error naming what is wrong.
pub type Forward<'t> = Result<(Var<'t>, Vec<(&'static str, f64)>), String>;

/// The batch as a forward pass sees it: features as tape variables, and the batch itself for
/// what needs no gradient.
pub struct Inputs<'t> {
    tape: &'t Tape,
    batch: &'t LossBatch,
    /// The features read as variables: (feature, index of its first variable, count). A feature's
    /// variables are recorded one after another, so a range finds their gradients.
    read: RefCell<Vec<(Feature, usize, usize)>>,
}

impl<'t> Inputs<'t> {
    /// The tape that the loss's variables live on, for [`Tape::sum`] and [`Tape::mean`].
    pub fn tape(&self) -> &'t Tape {
        self.tape
    }

    /// The batch: its layout (`sequences()`, `shape()`) and features as plain, checked `f32`
    /// values (`per_token`, `per_sequence`), which the tape treats as constants.
    pub fn batch(&self) -> &'t LossBatch {
        self.batch
    }

    /// A per-token feature as variables, checked as [`LossBatchExt::per_token`] checks it. The
    /// gradient with respect to it is returned if the feature is differentiable.
    pub fn per_token(&self, feature: Feature) -> Result<Vec<Var<'t>>, String> {
        Ok(self.variables(feature, self.batch.per_token(feature)?))
    }

    /// A per-sequence feature as variables, checked as [`LossBatchExt::per_sequence`] checks it.
    /// The gradient with respect to it is returned if the feature is differentiable.
    pub fn per_sequence(&self, feature: Feature) -> Result<Vec<Var<'t>>, String> {
        Ok(self.variables(feature, self.batch.per_sequence(feature)?))
    }

    /// The feature's variables, recorded on the first read; a second read returns the same
    /// variables, so that both uses add to one gradient.
    fn variables(&self, feature: Feature, values: &[f32]) -> Vec<Var<'t>> {
        let mut read = self.read.borrow_mut();
        if let Some(&(_, first, _)) = read.iter().find(|(f, ..)| *f == feature) {
            let var = |(i, &v): (usize, &f32)| Var { tape: self.tape, index: first + i, value: f64::from(v) };
            return values.iter().enumerate().map(var).collect();
        }
        let vars: Vec<Var<'t>> = values.iter().map(|&v| self.tape.var(f64::from(v))).collect();
        read.push((feature, self.tape.len() - vars.len(), vars.len()));
        vars
    }
}

/// A loss's value, gradients and metrics in `f64`: what [`compute`] returns before the gradients
/// are rounded to `f32`, for tests that compare losses more finely than the boundary does.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The loss value.
    pub value: f64,
    /// `d value / d feature` for each differentiable feature read as variables, in the order of
    /// first reading.
    pub gradients: Vec<(Feature, Vec<f64>)>,
    /// The metrics the forward pass returned.
    pub metrics: Vec<(&'static str, f64)>,
}

/// Runs `forward` on a fresh tape over `batch` and differentiates its loss with one backward
/// pass. Gradients are returned for the differentiable features (`logprob`, `mean-logprob`,
/// `entropy`, `value`, `sequence-logprob`) that `forward` read with [`Inputs::per_token`] or
/// [`Inputs::per_sequence`]; other features read that way are constants.
pub fn evaluate<F>(batch: &LossBatch, forward: F) -> Result<Evaluation, String>
where
    F: for<'t> FnOnce(&Inputs<'t>) -> Forward<'t>,
{
    let tape = Tape::new();
    let inputs = Inputs { tape: &tape, batch, read: RefCell::new(Vec::new()) };
    let (loss, metrics) = forward(&inputs)?;
    let all = loss.backward();
    let gradients = inputs
        .read
        .into_inner()
        .into_iter()
        .filter(|&(feature, ..)| is_differentiable(feature))
        .map(|(feature, first, count)| (feature, (first..first + count).map(|i| all.0[i]).collect()))
        .collect();
    Ok(Evaluation { value: loss.value, gradients, metrics })
}

/// [`evaluate`], as the [`Loss::compute`](crate::Loss::compute) that the host calls:
/// `autodiff::compute(batch, |x| self.forward(x))`.
pub fn compute<F>(batch: &LossBatch, forward: F) -> Result<LossOutput, String>
where
    F: for<'t> FnOnce(&Inputs<'t>) -> Forward<'t>,
{
    let out = evaluate(batch, forward)?;
    let gradients = out.gradients.into_iter().map(|(feature, g)| FeatureValues::new(feature, g)).collect();
    Ok(LossOutput::new(out.value, gradients, out.metrics))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_gradient, lm_batch, loss_batch};

    /// `f` at `x` and its derivative there, from a fresh tape.
    fn run(f: impl for<'t> Fn(Var<'t>) -> Var<'t>, x: f64) -> (f64, f64) {
        let tape = Tape::new();
        let v = tape.var(x);
        let y = f(v);
        (y.value(), y.backward().wrt(v))
    }

    /// Central difference of `f`'s tape value, with a step relative to `x`.
    fn finite_difference(f: impl for<'t> Fn(Var<'t>) -> Var<'t> + Copy, x: f64) -> f64 {
        let h = 1e-6 * x.abs().max(1.0);
        (run(f, x + h).0 - run(f, x - h).0) / (2.0 * h)
    }

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * b.abs().max(1.0)
    }

    /// Checks an op's value and derivative against their closed forms, and the derivative against
    /// finite differences of the op's own values, at every point.
    fn check(
        name: &str,
        op: impl for<'t> Fn(Var<'t>) -> Var<'t> + Copy,
        value: impl Fn(f64) -> f64,
        derivative: impl Fn(f64) -> f64,
        points: &[f64],
    ) {
        for &x in points {
            let (y, g) = run(op, x);
            assert!(close(y, value(x), 1e-14), "{name}({x}) = {y}, expected {}", value(x));
            assert!(close(g, derivative(x), 1e-14), "{name}'({x}) = {g}, expected {}", derivative(x));
            let fd = finite_difference(op, x);
            assert!(close(g, fd, 1e-6), "{name}'({x}) = {g}, finite difference {fd}");
        }
    }

    const EVERYWHERE: [f64; 7] = [-7.5, -1.0, -0.3, 0.2, 1.0, 3.0, 12.0];
    const POSITIVE: [f64; 5] = [1e-3, 0.2, 1.0, 3.0, 150.0];

    #[test]
    fn elementary_functions_match_their_closed_forms_and_finite_differences() {
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        check("exp", |x| x.exp(), f64::exp, f64::exp, &EVERYWHERE);
        check("exp_m1", |x| x.exp_m1(), f64::exp_m1, f64::exp, &[-3.0, -1e-9, 1e-9, 0.5, 4.0]);
        check("ln", |x| x.ln(), f64::ln, |x| 1.0 / x, &POSITIVE);
        check("ln_1p", |x| x.ln_1p(), f64::ln_1p, |x| 1.0 / (1.0 + x), &[-0.9, -1e-9, 1e-9, 0.5, 40.0]);
        check("sqrt", |x| x.sqrt(), f64::sqrt, |x| 0.5 / x.sqrt(), &POSITIVE);
        check("powi(3)", |x| x.powi(3), |x| x * x * x, |x| 3.0 * x * x, &EVERYWHERE);
        check("powi(-2)", |x| x.powi(-2), |x| 1.0 / (x * x), |x| -2.0 / (x * x * x), &EVERYWHERE);
        check("powi(1)", |x| x.powi(1), |x| x, |_| 1.0, &EVERYWHERE);
        check("powf(2.5)", |x| x.powf(2.5), |x| x.powf(2.5), |x| 2.5 * x.powf(1.5), &POSITIVE);
        check("powf(-0.5)", |x| x.powf(-0.5), |x| 1.0 / x.sqrt(), |x| -0.5 / (x * x.sqrt()), &POSITIVE);
        check("abs", |x| x.abs(), f64::abs, f64::signum, &EVERYWHERE);
        check("neg", |x| -x, |x| -x, |_| -1.0, &EVERYWHERE);
        check("sigmoid", |x| x.sigmoid(), s, |x| s(x) * (1.0 - s(x)), &EVERYWHERE);
        check("softplus", |x| x.softplus(), |x| x.exp().ln_1p(), s, &EVERYWHERE);
        check("log_sigmoid", |x| x.log_sigmoid(), |x| s(x).ln(), |x| s(-x), &EVERYWHERE);
        check(
            "clamp",
            |x| x.clamp(-2.0, 2.5),
            |x| x.clamp(-2.0, 2.5),
            |x| f64::from(u8::from(x.abs() < 2.0)),
            &[-7.5, -1.0, 0.2, 1.0, 3.0],
        );
    }

    #[test]
    fn arithmetic_with_variables_and_constants() {
        let (a, b) = (1.75, -0.4);
        let tape = Tape::new();
        let (x, y) = (tape.var(a), tape.var(b));
        // (result, its value, d/dx, d/dy)
        let cases = [
            (x + y, a + b, 1.0, 1.0),
            (x - y, a - b, 1.0, -1.0),
            (x * y, a * b, b, a),
            (x / y, a / b, 1.0 / b, -a / (b * b)),
            (x + 3.0, a + 3.0, 1.0, 0.0),
            (3.0 + x, 3.0 + a, 1.0, 0.0),
            (x - 3.0, a - 3.0, 1.0, 0.0),
            (3.0 - x, 3.0 - a, -1.0, 0.0),
            (x * 3.0, a * 3.0, 3.0, 0.0),
            (3.0 * x, 3.0 * a, 3.0, 0.0),
            (x / 3.0, a / 3.0, 1.0 / 3.0, 0.0),
            (3.0 / x, 3.0 / a, -3.0 / (a * a), 0.0),
            (x.max(y), a, 1.0, 0.0),
            (x.min(y), b, 0.0, 1.0),
            (y.max(x), a, 1.0, 0.0),
            (y.min(x), b, 0.0, 1.0),
        ];
        for (i, (result, value, dx, dy)) in cases.into_iter().enumerate() {
            let g = result.backward();
            assert!(close(result.value(), value, 1e-15), "case {i}: value {} vs {value}", result.value());
            assert!(close(g.wrt(x), dx, 1e-15) && close(g.wrt(y), dy, 1e-15), "case {i}: {} {}", g.wrt(x), g.wrt(y));
        }
        let mut total = x;
        total += y;
        assert_eq!((total.value(), total.backward().wrt(y)), (a + b, 1.0));
    }

    #[test]
    fn kinks_follow_pytorch_subgradients() {
        assert_eq!(run(|x| x.abs(), 0.0), (0.0, 0.0));
        // Clamp passes the gradient on its bounds, not beyond.
        assert_eq!(run(|x| x.clamp(-1.0, 2.0), 2.0), (2.0, 1.0));
        assert_eq!(run(|x| x.clamp(-1.0, 2.0), -1.0), (-1.0, 1.0));
        assert_eq!(run(|x| x.clamp(-1.0, 2.0), 2.5), (2.0, 0.0));
        assert_eq!(run(|x| x.clamp(-1.0, 2.0), -3.0), (-1.0, 0.0));
        // A tie splits the gradient evenly between both inputs.
        let tape = Tape::new();
        let (x, y) = (tape.var(0.5), tape.var(0.5));
        for result in [x.max(y), x.min(y)] {
            let g = result.backward();
            assert_eq!((result.value(), g.wrt(x), g.wrt(y)), (0.5, 0.5, 0.5));
        }
        // Both inputs the same variable: the halves add up to the identity's gradient.
        assert_eq!(run(|x| x.max(x), 3.0), (3.0, 1.0));
        let nan = tape.var(f64::NAN);
        assert!(x.max(nan).value().is_nan() && nan.min(x).value().is_nan());
        // Power 0 is the constant 1, also at 0; sqrt and ln at 0 have infinite slope.
        assert_eq!(run(|x| x.powi(0), 0.0), (1.0, 0.0));
        assert_eq!(run(|x| x.powf(0.0), 0.0), (1.0, 0.0));
        assert_eq!(run(|x| x.sqrt(), 0.0), (0.0, f64::INFINITY));
        assert_eq!(run(|x| x.ln(), 0.0), (f64::NEG_INFINITY, f64::INFINITY));
    }

    #[test]
    fn sigmoid_family_is_finite_at_extreme_inputs() {
        assert_eq!(run(|x| x.softplus(), 1000.0), (1000.0, 1.0));
        assert_eq!(run(|x| x.softplus(), -1000.0), (0.0, 0.0));
        assert_eq!(run(|x| x.log_sigmoid(), -1000.0), (-1000.0, 1.0));
        assert_eq!(run(|x| x.log_sigmoid(), 1000.0), (0.0, 0.0));
        assert_eq!(run(|x| x.sigmoid(), -1000.0), (0.0, 0.0));
        assert_eq!(run(|x| x.sigmoid(), 1000.0), (1.0, 0.0));
        // Where the naive ln(1 + e^x) loses every digit.
        let (y, g) = run(|x| x.log_sigmoid(), 40.0);
        assert!(y < 0.0 && close(y, -(-40.0f64).exp(), 1e-12) && close(g, (-40.0f64).exp(), 1e-12), "{y} {g}");
    }

    #[test]
    fn shared_variables_accumulate_and_compositions_match_finite_differences() {
        // x * x: the two uses of x add up to 2x.
        assert_eq!(run(|x| x * x, 3.0), (9.0, 6.0));
        // A composition using every kind of node, checked against central differences in each input.
        fn f<'t>(x: Var<'t>, y: Var<'t>) -> Var<'t> {
            let tape = x.tape;
            let r = (x * x + y * y).sqrt();
            let terms = [(x * y).softplus() / r, (x - y).abs().powf(1.5), x.max(y).exp_m1(), (-y).log_sigmoid()];
            tape.mean(terms) + tape.sum([x.clamp(-1.0, 1.0), y.min(x).sigmoid()]) * 0.5
        }
        let value = |a: f64, b: f64| {
            let tape = Tape::new();
            f(tape.var(a), tape.var(b)).value()
        };
        for (a, b) in [(0.7, -1.3), (-2.0, 0.4), (1.5, 2.5), (0.3, 0.3001)] {
            let tape = Tape::new();
            let (x, y) = (tape.var(a), tape.var(b));
            let g = f(x, y).backward();
            let h = 1e-6;
            let (fx, fy) =
                ((value(a + h, b) - value(a - h, b)) / (2.0 * h), (value(a, b + h) - value(a, b - h)) / (2.0 * h));
            assert!(
                close(g.wrt(x), fx, 1e-6) && close(g.wrt(y), fy, 1e-6),
                "at ({a}, {b}): {} {} vs {fx} {fy}",
                g.wrt(x),
                g.wrt(y)
            );
        }
    }

    #[test]
    fn sums_and_means_of_slices() {
        let tape = Tape::new();
        let xs: Vec<Var<'_>> = [1.0, 2.0, 4.5].into_iter().map(|v| tape.var(v)).collect();
        let sum = tape.sum(xs.iter().copied());
        let mean = tape.mean(xs.iter().copied());
        assert_eq!((sum.value(), mean.value()), (7.5, 2.5));
        let (gs, gm) = (sum.backward(), mean.backward());
        assert!(xs.iter().all(|&x| gs.wrt(x) == 1.0 && gm.wrt(x) == 1.0 / 3.0));
        assert_eq!(tape.sum([]).value(), 0.0);
        assert!(tape.mean([]).value().is_nan());
        // A variable recorded after the result does not influence it.
        let later = tape.var(1.0);
        assert_eq!(sum.backward().wrt(later), 0.0);
    }

    #[test]
    fn a_branch_is_torch_where_without_its_nan() {
        // where(x > 0, sqrt(x), 2x) at x = 0: the unused sqrt has slope infinity.
        let tape = Tape::new();
        let x = tape.var(0.0);
        let root = x.sqrt();
        let y = if x.value() > 0.0 { root } else { x * 2.0 };
        assert_eq!(y.backward().wrt(x), 2.0);
        // Multiplying that infinite slope by 0 on the path is NaN, as in PyTorch.
        assert!((root * 0.0).backward().wrt(x).is_nan());
    }

    #[test]
    #[should_panic(expected = "a Var of another tape")]
    fn variables_of_two_tapes_do_not_mix() {
        let (a, b) = (Tape::new(), Tape::new());
        let _ = a.var(1.0) + b.var(2.0);
    }

    /// A focal-style loss over a real-looking batch: `-(1 - p)^2 ln p` per counted token, with
    /// `p = exp(logprob)`, plus 0.1 of the mean `mean-logprob`. Reads `logprob` twice and `mask`
    /// as variables.
    fn toy_loss<'t>(x: &Inputs<'t>) -> Forward<'t> {
        let (logprob, again) = (x.per_token(Feature::Logprob)?, x.per_token(Feature::Logprob)?);
        let mask = x.per_token(Feature::Mask)?;
        let mean_logprob = x.per_token(Feature::MeanLogprob)?;
        let tape = x.tape();
        let per_token = (0..logprob.len()).map(|i| -(-again[i].exp_m1()).powi(2) * logprob[i] * mask[i]);
        let tokens: f64 = mask.iter().map(|m| m.value()).sum();
        let loss = tape.sum(per_token) / tokens.max(1.0) + 0.1 * tape.mean(mean_logprob);
        Ok((loss, vec![("tokens", tokens)]))
    }

    #[test]
    fn evaluate_returns_the_gradients_of_the_differentiable_features_read() {
        let b = lm_batch(3, &[30, 20], 4);
        let features =
            [(Feature::Logprob, &b.logprob[..]), (Feature::MeanLogprob, &b.mean_logprob), (Feature::Mask, &b.mask)];
        let out = evaluate(&loss_batch(&b.offsets, &features), toy_loss).unwrap();
        // Mask is not differentiable: no gradient, though it was read as variables.
        let order: Vec<Feature> = out.gradients.iter().map(|(f, _)| *f).collect();
        assert_eq!(order, vec![Feature::Logprob, Feature::MeanLogprob]);
        assert_eq!(out.metrics, vec![("tokens", 42.0)]);
        let with = |logprob: &[f32], mean_logprob: &[f32]| {
            let features =
                [(Feature::Logprob, logprob), (Feature::MeanLogprob, mean_logprob), (Feature::Mask, &b.mask)];
            evaluate(&loss_batch(&b.offsets, &features), toy_loss).unwrap().value
        };
        assert_gradient(&b.logprob, &out.gradients[0].1, |lp| with(lp, &b.mean_logprob));
        assert_gradient(&b.mean_logprob, &out.gradients[1].1, |m| with(&b.logprob, m));
        // Padding tokens get exactly 0.
        assert!(out.gradients[0].1.iter().zip(&b.mask).all(|(g, &m)| (m == 0.0) == (*g == 0.0)));

        // compute is evaluate with the gradients rounded to f32.
        let output = compute(&loss_batch(&b.offsets, &features), toy_loss).unwrap();
        assert_eq!(output.value, out.value);
        let rounded: Vec<f32> = out.gradients[0].1.iter().map(|&g| g as f32).collect();
        assert_eq!((output.gradients[0].feature, &output.gradients[0].values), (Feature::Logprob, &rounded));
        assert_eq!((output.metrics[0].name.as_str(), output.metrics[0].value), ("tokens", 42.0));
    }

    #[test]
    fn evaluate_reports_the_feature_checks_and_the_forward_errors() {
        let lp = [-1.0f32, -2.0];
        let e = evaluate(&loss_batch(&[0, 2], &[(Feature::Logprob, &lp)]), toy_loss).unwrap_err();
        assert_eq!(e, "the host did not pass feature `mask`");
        let e = evaluate(&loss_batch(&[0, 3], &[(Feature::Logprob, &lp)]), toy_loss).unwrap_err();
        assert_eq!(e, "feature `logprob` has 2 values, expected 3 (one per token)");
        let e = evaluate(&loss_batch(&[0, 2], &[]), |x| Err(format!("{} tokens", x.batch().shape()?.1))).unwrap_err();
        assert_eq!(e, "2 tokens");
    }
}
