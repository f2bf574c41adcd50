//! The machine's peak f32 throughput, measured: every thread runs a loop of independent fused
//! multiply-adds in the widest vectors the CPU has (AVX-512, else AVX2 with FMA, chosen at run
//! time), long enough to be timed. MFU is then tokens/s x model FLOPs per token over this
//! peak, on the machine that ran the benchmark rather than an assumed one.

use std::time::Instant;

/// Independent accumulators per thread: enough to cover the FMA latency of current cores.
const CHAINS: usize = 12;

/// The measured peak in GFLOP/s over `threads` threads (each FMA counts two FLOPs), and the
/// instruction set that reached it.
pub fn measure_peak_gflops(threads: usize) -> (f64, &'static str) {
    let threads = threads.max(1);
    let (per_call, isa): (fn(u64) -> f32, _) = best_loop();
    let iterations: u64 = 20_000_000;
    // One warm-up call per thread (clocks ramp up, pages fault in), then the timed run.
    let run = || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(move || per_call(iterations))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum::<f32>()
        })
    };
    std::hint::black_box(run());
    let started = Instant::now();
    std::hint::black_box(run());
    let seconds = started.elapsed().as_secs_f64();
    let lanes = match isa {
        "AVX-512" => 16,
        "AVX2+FMA" => 8,
        _ => 1,
    };
    let flops = 2.0 * (CHAINS * lanes) as f64 * iterations as f64 * threads as f64;
    (flops / seconds / 1e9, isa)
}

fn best_loop() -> (fn(u64) -> f32, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return (|n| unsafe { x86::fma_avx512(n) }, "AVX-512");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return (|n| unsafe { x86::fma_avx2(n) }, "AVX2+FMA");
        }
    }
    (scalar, "scalar")
}

fn scalar(iterations: u64) -> f32 {
    let mut acc = [1.0f32; CHAINS];
    let (a, b) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-7f32));
    for _ in 0..iterations {
        for x in &mut acc {
            *x = x.mul_add(a, b);
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iterations: u64) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iterations {
            for x in &mut acc {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iterations: u64) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iterations {
            for x in &mut acc {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut lanes = [0.0f32; 8];
        let mut total = 0.0;
        for x in acc {
            // SAFETY: `lanes` holds the 8 floats the store writes.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
            total += lanes.iter().sum::<f32>();
        }
        total
    }
}
