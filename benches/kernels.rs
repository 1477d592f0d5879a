//! Ternary kernel benchmarks: GEMV (one token, decode) and GEMM (128 tokens, prefill) on the
//! weight shapes of the 700M dummy, BitNet b1.58 2B4T and Llama3-8B, for 1 and 2 threads and
//! every instruction set this CPU has and the kernel families (I2_S, `lut-*`, and for one token
//! `base3-*`, the base-3 decode copy), next to Burn's own f32 matmul on Flex; then a decode
//! sweep over the 700M and 3B stacks of layers (0.17 and 0.81 GB of packed weights in I2_S,
//! 0.14 and 0.65 GB in base-3, 0.14 and 0.67 GB in LUT3; and at 2 threads with the halves of every matrix swept by two
//! threads that never synchronize), the 3B layout's LM head in F16 and int8, and the cached
//! attention of a prefill and a decode step.
//!
//! `cargo bench --bench kernels` (all), `cargo bench --bench kernels -- sweep` (the sweep only).
//! Throughput is reported as ternary multiply-accumulates per second (`elem/s`) for the kernel
//! groups, as bytes read per second for the sweep and the head, and as float multiply-adds per
//! second for attention.

use std::hint::black_box;
use std::time::Duration;

use bitnet_backend::attention::{AttentionShape, cached_attention};
use bitnet_backend::base3::{i2s_base3_linear_group_quantized, reads_base3};
use bitnet_backend::kernels::{multiply_roofline, roofline_of, ternary_linear_quantized};
use bitnet_backend::lut::lut_linear_quantized;
use bitnet_backend::lut3::i2s_lut3_linear_group_quantized;
use bitnet_backend::{
    ActivationScale, HalfMatrix, I2sBase3Weights, I2sLut3Weights, I2sWeights, Int8Matrix, Isa,
    LutWeights, QuantizedActivations, ScaleConvention, TernaryLayout,
};
use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;

/// (n, k) of each distinct BitLinear shape: output rows x input columns.
const SHAPES: [(&str, usize, usize); 12] = [
    ("700M", 1536, 1536),
    ("700M", 4096, 1536),
    ("700M", 1536, 4096),
    ("3B", 3200, 3200),
    ("3B", 8640, 3200),
    ("3B", 3200, 8640),
    ("2B4T", 2560, 2560),
    ("2B4T", 6912, 2560),
    ("2B4T", 2560, 6912),
    ("8B", 4096, 4096),
    ("8B", 14336, 4096),
    ("8B", 4096, 14336),
];
const THREADS: [usize; 2] = [1, 2];

/// Deterministic random bytes (SplitMix64).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Random valid I2_S weights: every 2-bit code drawn from {0, 1, 2}.
fn random_weights(n: usize, k: usize, seed: u64) -> I2sWeights {
    let layout = TernaryLayout::new(n, k, 0.5, ScaleConvention::Multiply).expect("valid shape");
    let codes = random_bytes(layout.packed_len(), seed)
        .into_iter()
        .map(|b| (0..4).fold(0u8, |acc, i| acc | ((((b >> (2 * i)) & 3) % 3) << (2 * i))))
        .collect();
    I2sWeights::from_codes(layout, codes).expect("codes are valid")
}

fn random_activations(m: usize, k: usize, k_padded: usize, seed: u64) -> QuantizedActivations {
    let x: Vec<f32> = random_bytes(m * k, seed)
        .into_iter()
        .map(|b| b as f32 / 128.0 - 1.0)
        .collect();
    QuantizedActivations::new(&x, m, k, k_padded, ActivationScale::default())
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn kernels(c: &mut Criterion) {
    for m in [1usize, 128] {
        let mut group = c.benchmark_group(if m == 1 { "gemv" } else { "gemm128" });
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        for (model, n, k) in SHAPES {
            let weights = random_weights(n, k, (n * k) as u64);
            let x = random_activations(m, k, weights.layout().k_padded(), 7);
            let lut = LutWeights::from_i2s(weights.view());
            // Only decode (one token) reads the base-3 copy; prefill runs the I2_S kernels.
            let base3 = (m == 1).then(|| I2sBase3Weights::from_i2s(&weights));
            group.throughput(Throughput::Elements((m * n * k) as u64));
            for threads in THREADS {
                let pool = pool(threads);
                for isa in Isa::supported() {
                    // The scalar reference is for correctness; at m=128 it would take minutes.
                    if isa == Isa::Scalar && m > 1 {
                        continue;
                    }
                    let id =
                        BenchmarkId::new(format!("{isa}/t{threads}"), format!("{model} {n}x{k}"));
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            pool.install(|| {
                                ternary_linear_quantized(isa, weights.view(), black_box(&x))
                            })
                        })
                    });
                    let id = BenchmarkId::new(
                        format!("lut-{isa}/t{threads}"),
                        format!("{model} {n}x{k}"),
                    );
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            pool.install(|| lut_linear_quantized(isa, lut.view(), black_box(&x)))
                        })
                    });
                    if let Some(base3) = base3.as_ref().filter(|_| reads_base3(isa)) {
                        let id = BenchmarkId::new(
                            format!("base3-{isa}/t{threads}"),
                            format!("{model} {n}x{k}"),
                        );
                        group.bench_function(id, |b| {
                            b.iter(|| {
                                pool.install(|| {
                                    i2s_base3_linear_group_quantized(
                                        isa,
                                        &[base3.view()],
                                        black_box(&x),
                                    )
                                })
                            })
                        });
                    }
                }
                let device = Device::flex();
                let xf = Tensor::<2>::from_data(
                    TensorData::new(
                        random_bytes(m * k, 1)
                            .into_iter()
                            .map(f32::from)
                            .collect::<Vec<_>>(),
                        [m, k],
                    ),
                    &device,
                );
                let wf = Tensor::<2>::from_data(
                    TensorData::new(weights.view().dequantize(), [n, k]),
                    &device,
                )
                .transpose();
                let id =
                    BenchmarkId::new(format!("flex-f32/t{threads}"), format!("{model} {n}x{k}"));
                group.bench_function(id, |b| {
                    b.iter(|| pool.install(|| xf.clone().matmul(wf.clone()).into_data()))
                });
            }
        }
        group.finish();
    }
}

/// (name, hidden, FFN, layers) of the dummy layouts the decode sweeps read.
const SWEEP_LAYOUTS: [(&str, usize, usize, usize); 2] =
    [("700M", 1536, 4096, 24), ("3B", 3200, 8640, 26)];

/// (seed, n, k) of every BitLinear of a layout's stack, in the order decode reads them.
fn stack_shapes(
    hidden: usize,
    ffn: usize,
    layers: usize,
) -> impl Iterator<Item = (u64, usize, usize)> {
    let per_layer = [
        (hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (hidden, hidden),
        (ffn, hidden),
        (ffn, hidden),
        (hidden, ffn),
    ];
    (0..layers).flat_map(move |l| {
        per_layer
            .into_iter()
            .enumerate()
            .map(move |(i, (n, k))| ((l * 16 + i) as u64, n, k))
    })
}

/// GEMV over every BitLinear of the 700M and 3B dummy layouts (hidden, FFN, layers: 1536,
/// 4096, 24 and 3200, 8640, 26), one matrix after the other as decode reads them: 0.17 and
/// 0.81 GB of packed weights, far beyond any cache; then the same from the base-3 copies
/// (`base3-*`, 0.14 and 0.65 GB read, AVX-512) and the LUT3 copies (`lut3-*`, 0.14 and 0.67 GB,
/// AVX2). Throughput is the bytes the format's decode reads.
fn decode_sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("sweep");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, hidden, ffn, layers) in SWEEP_LAYOUTS {
        let stack: Vec<I2sWeights> = stack_shapes(hidden, ffn, layers)
            .map(|(seed, n, k)| random_weights(n, k, seed))
            .collect();
        let inputs: Vec<QuantizedActivations> = [hidden, ffn]
            .iter()
            .map(|&k| random_activations(1, k, k.div_ceil(128) * 128, 3))
            .collect();
        let input = |k: usize| &inputs[usize::from(k != hidden)];
        let base3: Vec<I2sBase3Weights> = stack.iter().map(I2sBase3Weights::from_i2s).collect();
        let lut3: Vec<I2sLut3Weights> = stack.iter().map(I2sLut3Weights::from_i2s).collect();
        type Sweep<'a> = Box<dyn Fn(Isa) + Sync + 'a>;
        // (name prefix, bytes a sweep reads, which paths read them, the sweep)
        type Format<'a> = (&'a str, usize, fn(Isa) -> bool, Sweep<'a>);
        let formats: [Format; 3] = [
            (
                "",
                stack.iter().map(|w| w.codes().len()).sum(),
                |isa| isa != Isa::Scalar,
                Box::new(|isa| {
                    for w in &stack {
                        let x = input(w.layout().k);
                        black_box(ternary_linear_quantized(isa, w.view(), x).expect("valid"));
                    }
                }),
            ),
            (
                "base3-",
                base3
                    .iter()
                    .map(|w| w.layout().n * w.layout().decode_row_bytes())
                    .sum(),
                // AVX2 decodes base-3 layers from their I2_S copy: that is the sweep above.
                |isa| isa != Isa::Scalar && reads_base3(isa),
                Box::new(|isa| {
                    for w in &base3 {
                        let x = input(w.layout().k);
                        black_box(
                            i2s_base3_linear_group_quantized(isa, &[w.view()], x).expect("valid"),
                        );
                    }
                }),
            ),
            (
                "lut3-",
                lut3.iter()
                    .map(|w| w.layout().n * w.layout().decode_row_bytes())
                    .sum(),
                // The AVX2 kernel: AVX-512 machines decode from base-3 copies instead.
                |isa| isa == Isa::Avx2,
                Box::new(|isa| {
                    for w in &lut3 {
                        let x = input(w.layout().k);
                        black_box(
                            i2s_lut3_linear_group_quantized(isa, &[w.view()], x).expect("valid"),
                        );
                    }
                }),
            ),
        ];
        for (prefix, bytes, timed, sweep) in &formats {
            group.throughput(Throughput::Bytes(*bytes as u64));
            for threads in THREADS {
                let pool = pool(threads);
                for isa in Isa::supported().into_iter().filter(|&isa| timed(isa)) {
                    let id = BenchmarkId::new(
                        format!("{prefix}{isa}/t{threads}"),
                        format!("{name} layers"),
                    );
                    group.bench_function(id, |b| b.iter(|| pool.install(|| sweep(isa))));
                }
            }
        }
    }
    group.finish();
}

/// The I2_S sweep above with every matrix split into two halves of rows, stored apart, each
/// half of the stack swept by its own thread on its own one-thread pool and nothing shared or
/// awaited between the two until the sweep ends (`independent-{isa}/t2`): the most two threads
/// draw when no pool couples them, the bound for any scheduling of decode at 2 threads.
fn independent_halves(c: &mut Criterion) {
    let isa = Isa::best();
    let mut group = c.benchmark_group("sweep");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, hidden, ffn, layers) in SWEEP_LAYOUTS {
        let halves: [Vec<I2sWeights>; 2] = [0, 1].map(|half| {
            stack_shapes(hidden, ffn, layers)
                .map(|(seed, n, k)| random_weights(n / 2, k, 2 * seed + half))
                .collect()
        });
        let inputs: Vec<QuantizedActivations> = [hidden, ffn]
            .iter()
            .map(|&k| random_activations(1, k, k.div_ceil(128) * 128, 3))
            .collect();
        let input = &|k: usize| &inputs[usize::from(k != hidden)];
        let bytes: usize = halves.iter().flatten().map(|w| w.codes().len()).sum();
        let pools = [pool(1), pool(1)];
        group.throughput(Throughput::Bytes(bytes as u64));
        let id = BenchmarkId::new(format!("independent-{isa}/t2"), format!("{name} layers"));
        group.bench_function(id, |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for (pool, half) in pools.iter().zip(&halves) {
                        s.spawn(move || {
                            pool.install(|| {
                                for w in half {
                                    let x = input(w.layout().k);
                                    black_box(ternary_linear_quantized(isa, w.view(), x))
                                        .expect("valid");
                                }
                            })
                        });
                    }
                })
            })
        });
    }
    group.finish();
}

/// The LM head of the 3B layout (`[32002, 3200]`) in F16 (205 MB) and int8 (102 MB): one
/// matrix-vector product per decode step, streamed like the ternary layers. Throughput is the
/// bytes of the format read per second.
fn head(c: &mut Criterion) {
    let (vocab, hidden) = (32_002, 3200);
    let values: Vec<f32> = random_bytes(vocab * hidden, 5)
        .iter()
        .map(|&b| (b as f32 - 128.0) / 64.0)
        .collect();
    let half = HalfMatrix::from_f32_exact(&values, vocab, hidden).expect("exact in F16");
    let int8 = Int8Matrix::quantize(&values, vocab, hidden).expect("valid shape");
    let x: Vec<f32> = (0..hidden).map(|i| (i % 17) as f32 - 8.0).collect();
    type Product<'a> = Box<dyn Fn(Isa) -> Vec<f32> + Sync + 'a>;
    let formats: [(&str, usize, Product); 2] = [
        (
            "3B f16",
            vocab * hidden * 2,
            Box::new(|isa| half.matvec(isa, &x).expect("valid shapes")),
        ),
        (
            "3B int8",
            int8.bytes(),
            Box::new(|isa| int8.matvec(isa, &x).expect("valid shapes")),
        ),
    ];
    let mut group = c.benchmark_group("head");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, bytes, product) in &formats {
        group.throughput(Throughput::Bytes(*bytes as u64));
        for threads in THREADS {
            let pool = pool(threads);
            for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Scalar) {
                group.bench_function(BenchmarkId::new(format!("{isa}/t{threads}"), name), |b| {
                    b.iter(|| pool.install(|| black_box(product(isa))))
                });
            }
        }
    }
    group.finish();
}

/// Causal attention over the cache as the 700M and 3B layouts run it (16 heads of 96, 32 of
/// 100): a 128-token prefill into an empty cache and after 512 cached positions, and one
/// decode step after 255 (named as `bench -d` names them). The path is the detected one
/// (`BITNET_ISA` forces another). Throughput is the multiply-adds of the scores and the
/// weighted sum over the positions each row sees.
fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(20);
    for (model, heads, dim) in [("700M", 16, 96), ("3B", 32, 100)] {
        let tests = [
            ("pp128", 0, 128),
            ("pp128@d512", 512, 128),
            ("tg1@d255", 255, 1),
        ];
        for (test, start, len) in tests {
            let shape = AttentionShape {
                batch: 1,
                kv_heads: heads,
                rows: len,
                dim,
                capacity: start + len,
                start,
                len,
            };
            let random = |count: usize, seed: u64| -> Vec<f32> {
                random_bytes(count, seed)
                    .into_iter()
                    .map(|b| b as f32 / 64.0 - 2.0)
                    .collect()
            };
            let q = random(heads * len * dim, 7);
            let keys = random(heads * (start + len) * dim, 8);
            let values = random(keys.len(), 9);
            let seen: usize = (start + 1..=start + len).sum();
            group.throughput(Throughput::Elements((2 * heads * seen * dim) as u64));
            // The cache in f16 too (`--cache-type f16`): half the bytes, widened as read.
            let halves = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>();
            let (keys16, values16) = (halves(&keys), halves(&values));
            for threads in THREADS {
                let pool = pool(threads);
                let id = BenchmarkId::new(format!("{test}/t{threads}"), model);
                group.bench_function(id, |b| {
                    b.iter(|| pool.install(|| cached_attention(&q, &keys, &values, shape)))
                });
                let id = BenchmarkId::new(format!("{test}/f16/t{threads}"), model);
                group.bench_function(id, |b| {
                    b.iter(|| pool.install(|| cached_attention(&q, &keys16, &values16, shape)))
                });
            }
        }
    }
    group.finish();
}

/// The multiply peak of one core on each supported path with a roofline (AVX-512: sixteen
/// independent `vpdpbusd` chains on registers; AVX2: the prefill loop's eight `vpmaddubsw` +
/// `vpaddw` pairs per six loads from L1), in products per second like `gemm128`: what the
/// prefill kernel's rate is a fraction of.
fn roofline(c: &mut Criterion) {
    const STEPS: usize = 1 << 16;
    let mut group = c.benchmark_group("roofline");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for isa in Isa::supported() {
        let Some(roofline) = roofline_of(isa) else {
            continue;
        };
        group.throughput(Throughput::Elements(
            (STEPS * roofline.products_per_step) as u64,
        ));
        group.bench_function(format!("{isa}/{}", roofline.instruction), |b| {
            b.iter(|| multiply_roofline(isa, black_box(STEPS)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    kernels,
    decode_sweep,
    independent_halves,
    head,
    attention,
    roofline
);
criterion_main!(benches);
