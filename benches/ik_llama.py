"""Times ik_llama.cpp like `bench` times us: pp (one batch of P tokens) and tg (N single-token
decodes from an empty cache) per thread count, a warm-up run then R timed runs, mean ± sd.

ik_llama.cpp is one of the two engines our speed targets are set against. Its PyPI wheel
(`pip install ik-llama-cpp-python==0.1.5`: an AVX2 + FMA build, no AVX-512) ships the library
and its `llama-quantize`, which turns the I2_S GGUF that `dummy --gguf` writes into IQ2_BN, so
both engines run the very same weights on the same machine in the same hour:

    python benches/ik_llama.py -m d700-iq2bn.gguf -p 128 -n 64 -t 1,2 -r 3 [--fa 0,1] [--json]

With `--json` it prints, as `bench --json` does, an array of
{"test", "threads", "mean_tps", "sd_tps", "reps"} (plus "engine" and "flash_attn").

`--check-logits OURS --tokens 1,2,3` instead runs the tokens through ik_llama.cpp in one batch
and compares every position's logits with ours (`logits --tokens 1,2,3 --out OURS`): it fails
unless each position's logits correlate at 0.99 or better, which only the same weights do (ik
keeps its KV cache and the head's input in f16, so the figures differ by a few percent).
"""

import argparse
import json
import math
import random
import statistics
import struct
import sys
import time

from ik_llama_cpp import _ctypes_api as C
from ik_llama_cpp._internals import make_batch_range, make_batch_single


def int_list(minimum):
    """An argparse type: comma-separated integers, each at least `minimum`."""
    def parse(text):
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least {minimum}")
        return values
    return parse


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", required=True, help="GGUF file ik_llama.cpp can load")
    p.add_argument("-p", "--n-prompt", type=int, default=128, help="prefill tokens (0: none)")
    p.add_argument("-n", "--n-gen", type=int, default=64, help="decode steps (0: none)")
    p.add_argument("-t", "--threads", type=int_list(1), default=[1, 2],
                   help="comma-separated thread counts")
    p.add_argument("-r", "--reps", type=int, default=5, help="timed runs after the warm-up")
    p.add_argument("--fa", type=int_list(0), default=[1],
                   help="flash attention: 0, 1 or 0,1 (each measured)")
    p.add_argument("--no-repack", action="store_true", help="skip run-time repacking (-rtr)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead")
    p.add_argument("--check-logits", metavar="OURS", help="safetensors from `logits --out`")
    p.add_argument("--tokens", type=int_list(0), help="comma-separated token ids, with --check-logits")
    args = p.parse_args()
    if any(f > 1 for f in args.fa):
        p.error("--fa takes 0, 1 or 0,1")
    if bool(args.check_logits) != bool(args.tokens):
        p.error("--check-logits and --tokens go together")
    if args.reps < 1 or (args.n_prompt <= 0 and args.n_gen <= 0):
        p.error("need -r >= 1 and at least one of -p, -n above 0")
    return args


def timed_tests(ctx, n_vocab, args):
    """Yields (name, function returning tokens/s of one run) for each requested test."""
    rng = random.Random(0)

    def prefill():
        C.llama_kv_cache_clear(ctx)
        tokens = [rng.randrange(n_vocab) for _ in range(args.n_prompt)]
        batch = make_batch_range(tokens, pos_start=0, logits_last=True)
        start = time.perf_counter()
        status = C.llama_decode(ctx, batch)
        elapsed = time.perf_counter() - start
        C.llama_batch_free(batch)
        if status != 0:
            sys.exit(f"llama_decode failed ({status}) on a {args.n_prompt}-token prefill")
        return args.n_prompt / elapsed

    def decode():
        C.llama_kv_cache_clear(ctx)
        batches = [make_batch_single(rng.randrange(n_vocab), pos) for pos in range(args.n_gen)]
        start = time.perf_counter()
        for batch in batches:
            if C.llama_decode(ctx, batch) != 0:
                sys.exit("llama_decode failed on a decode step")
        elapsed = time.perf_counter() - start
        for batch in batches:
            C.llama_batch_free(batch)
        return args.n_gen / elapsed

    if args.n_prompt > 0:
        yield f"pp{args.n_prompt}", prefill
    if args.n_gen > 0:
        yield f"tg{args.n_gen}", decode


def load_model(path, repack):
    C.llama_backend_init()
    params = C.llama_model_default_params()
    params.repack_tensors = repack
    model = C.llama_model_load_from_file(path.encode(), params)
    if not model:
        sys.exit(f"ik_llama.cpp could not load {path} (its log above says why)")
    return model


def new_context(model, n_ctx, threads, fa):
    params = C.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn = bool(fa)
    ctx = C.llama_init_from_model(model, params)
    if not ctx:
        sys.exit("ik_llama.cpp could not create a context")
    return ctx


def read_logits(path):
    """The [T, vocab] f32 tensor `logits` of a safetensors file, as rows of floats."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        header_len = struct.unpack("<Q", raw[:8])[0]
        entry = json.loads(raw[8:8 + header_len])["logits"]
    except (OSError, struct.error, ValueError, KeyError) as e:
        sys.exit(f"{path}: not a safetensors file with a `logits` tensor ({e})")
    if entry["dtype"] != "F32" or len(entry["shape"]) != 2:
        sys.exit(f"{path}: `logits` is not a [T, vocab] F32 tensor")
    start, end = (8 + header_len + o for o in entry["data_offsets"])
    values = struct.unpack(f"<{(end - start) // 4}f", raw[start:end])
    width = entry["shape"][1]
    return [values[i:i + width] for i in range(0, len(values), width)]


def correlation(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb)


def check_logits(model, args):
    """Compares ik_llama.cpp's logits for `args.tokens` with ours; exits 1 on a mismatch."""
    tokens = args.tokens
    ours = read_logits(args.check_logits)
    n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(model))
    if max(tokens) >= n_vocab:
        sys.exit(f"token {max(tokens)} is outside the model's vocabulary of {n_vocab}")
    if len(ours) != len(tokens) or len(ours[0]) != n_vocab:
        sys.exit(f"ours are {len(ours)} x {len(ours[0])} logits, ik's {len(tokens)} x {n_vocab}")
    ctx = new_context(model, max(256, len(tokens)), 2, 1)
    batch = make_batch_range(tokens, pos_start=0, logits_last=False)
    for i in range(len(tokens)):
        batch.logits[i] = 1
    if C.llama_decode(ctx, batch) != 0:
        sys.exit("llama_decode failed")
    worst = 1.0
    for pos, row in enumerate(ours):
        theirs = C.llama_get_logits_ith(ctx, pos)[:n_vocab]
        r = correlation(row, theirs)
        diff = max(abs(x - y) for x, y in zip(row, theirs)) / max(abs(x) for x in row)
        argmax = [max(range(n_vocab), key=v.__getitem__) for v in (row, theirs)]
        print(f"position {pos}: correlation {r:.5f}, max |diff| {100 * diff:.1f}% of max |logit|, "
              f"argmax ours {argmax[0]} ik {argmax[1]}")
        worst = min(worst, r)
    if worst < 0.99:
        sys.exit(f"logits differ: correlation {worst:.4f} < 0.99")
    print(f"same model: every position's logits correlate at {worst:.4f} or better")


def main():
    args = parse_args()
    model = load_model(args.model, not args.no_repack)
    if args.check_logits:
        check_logits(model, args)
        return
    n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(model))
    n_ctx = max(256, args.n_prompt + args.n_gen)
    results = []
    for threads in args.threads:
        for fa in args.fa:
            ctx = new_context(model, n_ctx, threads, fa)
            for name, run in timed_tests(ctx, n_vocab, args):
                run()  # warm-up
                rates = [run() for _ in range(args.reps)]
                results.append({
                    "engine": "ik_llama.cpp",
                    "test": name,
                    "threads": threads,
                    "flash_attn": bool(fa),
                    "mean_tps": statistics.mean(rates),
                    "sd_tps": statistics.stdev(rates) if len(rates) > 1 else 0.0,
                    "reps": args.reps,
                })
            C.llama_free(ctx)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| model | engine | fa | threads | test | t/s |")
    print("|---|---|---:|---:|---|---:|")
    for r in results:
        print(f"| {args.model.split('/')[-1]} | ik_llama.cpp | {int(r['flash_attn'])} "
              f"| {r['threads']} | {r['test']} | {r['mean_tps']:.2f} ± {r['sd_tps']:.2f} |")


if __name__ == "__main__":
    main()
