"""Rounds of `bench` against ik_llama.cpp on the same weights, and the README's table from them.

One command moves by 5-25% between runs on a shared VM, so a single comparison says little: the
README's tables against ik_llama.cpp are medians over rounds, each round timing both engines on
every model pair, the engine that goes first alternating (ours in odd rounds). This script runs
those rounds, keeps every run's JSON, and prints the table:

    python3 benches/rounds.py --rounds 6 --out DIR \\
        --bench target/release/examples/bench --ik "ik/bin/python benches/ik_llama.py" \\
        d700.bitnet=d700-iq2bn-f16.gguf d3b.bitnet=d3b-iq2bn-f16.gguf
    python3 benches/rounds.py --summarize DIR    # the table again, from the kept JSON

Per layout, thread count and test: our median t/s over the rounds (lowest-highest), ik_llama.cpp's
(its better row of each round, e.g. of flash attention on and off), the median of the per-round
ratios and in how many rounds the ratio reached the target; for decode rows, what our runs read
as a share of the same run's `mem-read`.
"""

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

OURS_ARGS = "-p 128 -n 64 -t 1,2 -r 3 --mem-read --json"
IK_ARGS = "-p 128 -n 64 -t 1,2 -r 3 --fa 0,1 --json"
RUN_FILE = re.compile(r"^r(\d+)-(ours|ik)-(.+)\.json$")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="*", metavar="OURS=IK",
                   help="our model file and ik_llama.cpp's GGUF of the same weights")
    p.add_argument("--rounds", type=int, default=6, help="rounds to run (default 6)")
    p.add_argument("--out", help="directory for each run's JSON (created if missing)")
    p.add_argument("--bench", default="target/release/examples/bench", help="our `bench` binary")
    p.add_argument("--ik", default="python3 benches/ik_llama.py",
                   help="the command that runs benches/ik_llama.py")
    p.add_argument("--bench-args", default=OURS_ARGS, help=f"default: {OURS_ARGS}")
    p.add_argument("--ik-args", default=IK_ARGS, help=f"default: {IK_ARGS}")
    p.add_argument("--target", type=float, default=1.2, help="the ratio a round must reach")
    p.add_argument("--summarize", metavar="DIR", help="only print the table of DIR's runs")
    args = p.parse_args()
    if args.summarize:
        if args.pairs:
            p.error("--summarize takes no model pairs")
        return args
    if not args.out:
        p.error("--out DIR is needed to run rounds")
    if not args.pairs:
        p.error("give at least one OURS=IK model pair")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    for pair in args.pairs:
        if pair.count("=") != 1 or "" in pair.split("="):
            p.error(f"{pair!r} is not OURS=IK (our model file = ik_llama.cpp's GGUF)")
        for path in pair.split("="):
            if not os.path.exists(path):
                p.error(f"{path}: no such file")
    return args


def label(path):
    """`d700` for `/tmp/d700.bitnet`: the layout a pair's rows are named by."""
    return os.path.basename(path.rstrip("/")).split(".")[0]


def run(command, path):
    """Runs one engine's command, its stdout (JSON) into `path`; exits naming it if it fails."""
    with open(path, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        sys.exit(f"`{shlex.join(command)}` failed ({done.returncode}):\n{tail}")


def run_rounds(args):
    os.makedirs(args.out, exist_ok=True)
    pairs = [pair.split("=") for pair in args.pairs]
    for r in range(1, args.rounds + 1):
        print(f"round {r} of {args.rounds}, {time.strftime('%H:%M:%S')}", file=sys.stderr)
        for ours, ik in pairs:
            name = label(ours)
            engines = [
                ("ours", [args.bench, "-m", ours, *shlex.split(args.bench_args)]),
                ("ik", [*shlex.split(args.ik), "-m", ik, *shlex.split(args.ik_args)]),
            ]
            if r % 2 == 0:
                engines.reverse()
            for engine, command in engines:
                run(command, os.path.join(args.out, f"r{r}-{engine}-{name}.json"))


def load_runs(directory):
    """{(round, engine, layout): rows} for every run file in `directory`."""
    if not os.path.isdir(directory):
        sys.exit(f"{directory}: not a directory")
    runs = {}
    for name in sorted(os.listdir(directory)):
        match = RUN_FILE.match(name)
        if not match:
            continue
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                rows = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"{path}: not the JSON array `bench --json` prints ({e})")
        # Timed rows carry t/s; `mem-read` rows carry GB/s instead.
        def valid(row):
            rate = "read_gbps" if row.get("test") == "mem-read" else "mean_tps"
            return all(k in row for k in ("test", "threads", rate))
        if not isinstance(rows, list) or not all(isinstance(r, dict) and valid(r) for r in rows):
            sys.exit(f"{path}: not an array of rows with test, threads and mean_tps")
        runs[(int(match[1]), match[2], match[3])] = rows
    if not runs:
        sys.exit(f"{directory}: no run files (r<N>-ours-<layout>.json, r<N>-ik-<layout>.json)")
    return runs


def rounds_of(runs):
    """Per (model bytes, layout, threads, test): (ours, ik, read share of mem-read) per round."""
    table = {}
    for (r, engine, name), ours in sorted(runs.items()):
        if engine != "ours" or (r, "ik", name) not in runs:
            continue
        ik = runs[(r, "ik", name)]
        mem_read = {row["threads"]: row["read_gbps"] for row in ours if row["test"] == "mem-read"}
        for row in ours:
            if row["test"] == "mem-read":
                continue
            theirs = [i["mean_tps"] for i in ik
                      if i["test"] == row["test"] and i["threads"] == row["threads"]]
            if not theirs:
                continue
            share = None
            if row.get("read_gbps") and row["threads"] in mem_read:
                share = row["read_gbps"] / mem_read[row["threads"]]
            key = (row.get("model_bytes", 0), name, row["threads"], row["test"])
            table.setdefault(key, []).append((row["mean_tps"], max(theirs), share))
    return table


def spread(values, digits=1):
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def summarize(directory, target):
    table = rounds_of(load_runs(directory))
    if not table:
        sys.exit(f"{directory}: no round has both engines' runs of one layout")
    print("| layout | threads | test | ours t/s | ik_llama.cpp t/s | ratio | "
          f"rounds ≥ {target}x | read / mem-read |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    # Prefill rows first, then decode; smaller models first, as in the README.
    order = sorted(table, key=lambda k: (not k[3].startswith("pp"), k))
    for key in order:
        _, name, threads, test = key
        rows = table[key]
        ours = [o for o, _, _ in rows]
        ik = [i for _, i, _ in rows]
        ratios = [o / i for o, i, _ in rows]
        shares = [100 * s for _, _, s in rows if s is not None]
        reached = sum(ratio >= target for ratio in ratios)
        share = f"{min(shares):.0f}-{max(shares):.0f}%" if shares else ""
        print(f"| {name} | {threads} | {test} | {spread(ours)} | {spread(ik)} | "
              f"{statistics.median(ratios):.3f}x | {reached}/{len(rows)} | {share} |")
    print()
    print("Per-round ratios, in round order:")
    for key in order:
        _, name, threads, test = key
        ratios = [f"{o / i:.3f}" for o, i, _ in table[key]]
        print(f"- {name} t{threads} {test}: {', '.join(ratios)}")


def main():
    args = parse_args()
    if args.summarize:
        summarize(args.summarize, args.target)
        return
    run_rounds(args)
    summarize(args.out, args.target)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        # A reader that stops early (`| head`): end quietly, as Python's docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
