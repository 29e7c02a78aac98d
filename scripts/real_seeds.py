"""docs/results.md's real-LM seed tables, from the small files of finished runs (no weights, no samples).

    collapse sweep configs/real/smollm2-135m-seeds.yaml                         # 6 runs, ~2 hours on 2 cores
    python scripts/real_seeds.py export runs/real/smollm2-135m-seeds docs/results/smollm2-seeds
    python scripts/real_seeds.py export runs/real/fp32-run docs/results/smollm2-seeds --as float32-replace-seed0
    python scripts/real_seeds.py tables docs/results/smollm2-seeds              # print the tables
    python scripts/real_seeds.py tables docs/results/smollm2-seeds --check docs/results.md   # are they the doc's?
    python scripts/real_seeds.py tables docs/results/smollm2-seeds --write docs/results.md   # put them there

``export`` copies each finished run's ``config.yaml``, ``metrics.jsonl`` and ``gen_000/train.json`` into
``<dest>/<regime>-seed<seed>/`` (or ``--as``) with ``machine.json`` (this machine's CPU, torch, the training precision, and the
run's wall time from its files' times): export on the machine that made the run. ``tables`` reads those folders:
per regime (runs in bfloat16-trained precision, the seeds), test perplexity by generation (mean and 95% t-interval
over seeds), the changes at the last generation with how many seeds' own paired intervals resolve them, the tail
loss by rank, the samples' entropy and top-10 shift over generations, the text figures where the runs have them,
mix − replace paired by seed, and a run in another training precision beside its seed's twin (the seeds are the
runs in the most common precision). The tables go between ``<!-- real-seeds:begin -->`` and ``<!-- real-seeds:end -->``
(``--marker`` names other markers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

MARK = "real-seeds"  # the tables go between <!-- MARK:begin --> and <!-- MARK:end -->
BUCKETS = ("1-10", "11-100", "101-1000", "1001-10000", "unseen")
TOKEN_BUCKETS = ("1-10", "11-100", "101-1000", "1001-10000", "10001+", "unseen")  # a task per bucket (kjv_cloze_...)
FILES = ("config.yaml", "metrics.jsonl", "gen_000/train.json")


def t975(df: int) -> float:
    from collapse.report.seeds import t975 as t

    return t(df)


# ---------------------------------------------------------------------- export


def _cpu() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        flags = re.search(r"^flags\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return platform.processor() or platform.machine()
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if flags and f in flags.group(1).split()]
    return f"{m.group(1).strip() if m else platform.machine()} ({', '.join(bf16) or 'no bf16 units'})"


def export(src: Path, dest: Path, name: str | None = None) -> list[Path]:
    """Copy the small files of each finished run under ``src`` (itself a run, or a parent of runs) to ``dest``."""
    import os

    import torch

    runs = [src] if (src / "metrics.jsonl").is_file() else sorted(p.parent for p in src.glob("*/metrics.jsonl"))
    done = []
    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        if not manifest.get("complete"):
            print(f"skipped (not finished): {run}", file=sys.stderr)
            continue
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        out = dest / (name or f"{cfg['regime']['kind']}-seed{cfg['seed']}")
        for f in FILES:
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            if (run / f).is_file():  # gen_000/train.json: only where generation 0 was fitted
                shutil.copyfile(run / f, out / f)
        wall = os.path.getmtime(run / "metrics.jsonl") - os.path.getmtime(run / "config.yaml")
        mp, dt = cfg["train"]["mixed_precision"], cfg["model"]["dtype"]  # `auto` means float32 on a CPU
        machine = {"cpu": _cpu(), "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
                   "weights": "float32" if dt == "auto" else dt, "training": mp if mp in ("bf16", "fp16") else "float32",
                   "wall_seconds_from_file_times": round(wall)}
        (out / "machine.json").write_text(json.dumps(machine, indent=1) + "\n")
        done.append(out)
    return done


# ---------------------------------------------------------------------- tables


def _load(folder: Path) -> dict:
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"name": folder.name, "cfg": cfg, "rows": rows, "machine": json.loads((folder / "machine.json").read_text()),
            "train0": json.loads(t0.read_text()) if (t0 := folder / "gen_000" / "train.json").is_file() else {}}


def _mean_ci(v: list[float], fmt: str) -> str:
    a = np.asarray([x for x in v if x is not None and math.isfinite(x)], np.float64)
    if len(a) == 0:
        return "—"
    if len(a) == 1:
        return format(a[0], fmt)
    h = t975(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return f"{format(a.mean(), fmt)} [{format(a.mean() - h, fmt)}, {format(a.mean() + h, fmt)}]"


def _get(row: dict, key: str):
    if "." in key:
        fig, b = key.split(".", 1)
        return (row.get(fig) or {}).get(b)
    return row.get(key)


def _change(row: dict, key: str) -> dict | None:
    return ((row.get("changes") or {}).get("from_gen0") or {}).get(key)


def _regime(run: dict) -> str:
    r = run["cfg"]["regime"]
    return "replace" if r["kind"] == "replace" else f"{r['kind']} {r['real_fraction']:.0%}"


def tables(folder: Path, only: tuple[str, ...] = ()) -> str:
    """The tables; ``only``: just these figures' changes and series (e.g. the text figures)."""
    runs = [_load(p.parent) for p in sorted(folder.glob("*/metrics.jsonl"))]
    precisions = [r["machine"]["training"] for r in runs]
    main = max(sorted(set(precisions)), key=precisions.count)  # the seeds' precision; a run in another sits beside its twin
    seeds = [r for r in runs if r["machine"]["training"] == main]
    others = [r for r in runs if r["machine"]["training"] != main]
    regimes = sorted({_regime(r) for r in seeds}, key=lambda x: (x != "replace", x))
    by = {k: sorted((r for r in seeds if _regime(r) == k), key=lambda r: r["cfg"]["seed"]) for k in regimes}
    G = min(len(r["rows"]) for r in seeds) - 1
    out = []
    cmd = f"python scripts/real_seeds.py tables {folder.as_posix()}" + (f" --only {','.join(only)}" if only else "")
    out.append(f"Runs (`{cmd}`: the small files in {folder.as_posix()}/):\n")
    out.append("| run | regime | seed | machine | weights / training | wall | gen-0 val ppl (as shipped → fitted) |")
    out.append("|---|---|---|---|---|---|---|")
    for r in [*seeds, *others]:
        m, t0 = r["machine"], r["train0"]
        w = m["wall_seconds_from_file_times"]
        fit = f"{t0['val_ppl_before']:.2f} → {t0['val_ppl_after']:.2f}" if "val_ppl_after" in t0 else "not fitted"
        out.append(f"| {r['name']} | {_regime(r)} | {r['cfg']['seed']} | {m['cpu']}, {m['cores']} cores | "
                   f"{m['weights']} / {m['training']} | "
                   f"{w // 60}m{w % 60:02d}s | {fit} |")
    n = ", ".join(f"{k}: {len(v)} seed{'s' if len(v) > 1 else ''}" for k, v in by.items())
    if not only:
        out.append(f"\nTest perplexity by generation, mean over seeds [95% t-interval] ({n}):\n")
        out.append("| gen | " + " | ".join(regimes) + " |")
        out.append("|---|" + "---|" * len(regimes))
        for g in range(G + 1):
            out.append(f"| {g} | " + " | ".join(_mean_ci([r["rows"][g]["test_ppl"] for r in by[k]], ".2f")
                                               for k in regimes) + " |")
    figs = [("test_ppl", "Δ test ppl", "+.2f"), *((f"tail_loss.{b}", f"Δ NLL {b} (nats)", "+.3f") for b in BUCKETS),
            ("bucket_shift.1-10", "Δ shift 1-10 (points)", "+.1f"),
            ("bucket_shift.1001-10000", "Δ shift 1001-10000 (points)", "+.1f"),
            ("entropy", "Δ entropy of the samples (bits)", "+.3f"), ("coverage", "Δ coverage", "+.4f"),
            ("gen0_ppl_mean", "Δ samples' gen-0 ppl", "+.2f"), ("mauve", "Δ MAUVE", "+.3f"),
            ("self_bleu", "Δ self-BLEU", "+.3f")]
    # lm-eval's figures (eval.harness): named by their task, found in the rows
    hkeys = [k for k in seeds[0]["rows"][0] if k.startswith("harness/") and not k.endswith(("_stderr", "_ci"))]
    figs += [(k, f"Δ {k.split('/', 1)[1].replace('/', ' ')}", "+.3f") for k in hkeys]
    if only:
        figs = [f for f in figs if f[0] in only or ("harness" in only and f[0].startswith("harness/"))]
    out.append(f"\nChanges from generation 0 at generation {G}: mean over seeds [95% t-interval]; in how many seeds "
               "the run's own paired interval excludes 0, and on which side:\n")
    out.append("| figure | " + " | ".join(regimes) + " |")
    out.append("|---|" + "---|" * len(regimes))
    for key, label, fmt in figs:
        cells = []
        for k in regimes:
            ch = [_change(r["rows"][G], key) for r in by[k]]
            if not any(ch):
                cells.append("—")
                continue
            up = sum(1 for c in ch if c and c["resolved"] and c["delta"] > 0)
            down = sum(1 for c in ch if c and c["resolved"] and c["delta"] < 0)
            cells.append(f"{_mean_ci([c['delta'] for c in ch if c], fmt)}; resolved {up}↑ {down}↓ of {len(ch)}")
        if any(c != "—" for c in cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label, fmt in (("entropy", "entropy of the samples (bits)", ".3f"),
                            ("bucket_shift.1-10", "top-10 shift of the samples (%)", "+.1f"),
                            ("mauve", "MAUVE (samples vs the prompts' true continuations)", ".3f"),
                            ("self_bleu", "self-BLEU-4 of 100 samples", ".3f")):
        if (only and key not in only) or not any(_get(r["rows"][0], key) is not None for r in seeds):
            continue
        out.append(f"\n{label[0].upper() + label[1:]} by generation, mean over seeds [95% t-interval]:\n")
        out.append("| gen | " + " | ".join(regimes) + " |")
        out.append("|---|" + "---|" * len(regimes))
        for g in range(G + 1):
            out.append(f"| {g} | " + " | ".join(_mean_ci([_get(r["rows"][g], key) for r in by[k]], fmt)
                                               for k in regimes) + " |")
    # by generation: a table per task family and metric (kjv_lambada's nll: a column per bucket, `all` its group)
    fams: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for h in hkeys:
        _, task, metric = h.split("/")
        b = next((b for b in TOKEN_BUCKETS if task.endswith("_" + b)), None)
        fam, col = (task[:-len(b) - 1], b) if b else (task, "all")
        fams.setdefault((fam, metric), []).append((col, h))
    for (fam, metric), cols in fams.items() if not only or "harness" in only else ():
        for k in regimes:
            out.append(f"\n{fam} {metric} by generation, {k}, mean over seeds [95% t-interval]:\n")
            out.append("| gen | " + " | ".join(c for c, _ in cols) + " |")
            out.append("|---|" + "---|" * len(cols))
            for g in range(G + 1):
                out.append(f"| {g} | " + " | ".join(_mean_ci([r["rows"][g].get(h) for r in by[k]], ".3f")
                                                   for _, h in cols) + " |")
    if only:
        return "\n".join(out) + "\n"
    if len(regimes) == 2:
        a, b = regimes
        pairs = [(ra, rb) for ra in by[b] for rb in by[a] if ra["cfg"]["seed"] == rb["cfg"]["seed"]]
        out.append(f"\n{b} − {a}, paired by seed (the same seed: the same generation 0 and prompts), at generation {G}:\n")
        out.append("| figure | " + " | ".join(f"seed {ra['cfg']['seed']}" for ra, _ in pairs) + " | mean [95% t] |")
        out.append("|---|" + "---|" * (len(pairs) + 1))
        for key, label, fmt in figs[:6]:
            d = [(_change(ra["rows"][G], key) or {}).get("delta", math.nan) - (_change(rb["rows"][G], key) or {}).get(
                "delta", math.nan) for ra, rb in pairs]
            out.append(f"| {label} | " + " | ".join(format(x, fmt) for x in d) + f" | {_mean_ci(d, fmt)} |")
    for o in others:  # a run in another precision beside the bf16 run of the same regime and seed
        twin = [r for r in seeds if _regime(r) == _regime(o) and r["cfg"]["seed"] == o["cfg"]["seed"]]
        if not twin:
            continue
        if len(o["rows"]) <= G:
            continue
        deltas = [c["delta"] for r in by[_regime(o)] if (c := _change(r["rows"][G], "test_ppl"))]
        t, sd = twin[0], (f"{np.std(deltas, ddof=1):.2f}" if len(deltas) > 1 else "— (one seed)")
        a, b = o["machine"]["training"], t["machine"]["training"]
        out.append(f"\nPrecision, {_regime(o)} seed {o['cfg']['seed']}: {a} training ({o['name']}) against {b} "
                   f"({t['name']}), both evaluated in float32; the seeds' standard deviation of Δ test ppl "
                   f"under {_regime(o)}: {sd}:\n")
        out.append(f"| figure | {a} | {b} | {b} − {a} |")
        out.append("|---|---|---|---|")
        for key, label, fmt in (("test_ppl", "test ppl, generation 0", ".2f"),):
            x, y = o["rows"][0][key], t["rows"][0][key]
            out.append(f"| {label} | {x:{fmt}} | {y:{fmt}} | {y - x:+{fmt}} |")
        for key, label, fmt in figs[:6]:
            cx, cy = _change(o["rows"][G], key), _change(t["rows"][G], key)
            if cx and cy:
                out.append(f"| {label}, generation {G} | {cx['delta']:{fmt}} [{cx['ci95'][0]:{fmt}}, {cx['ci95'][1]:{fmt}}]"
                           f" | {cy['delta']:{fmt}} [{cy['ci95'][0]:{fmt}}, {cy['ci95'][1]:{fmt}}] | "
                           f"{cy['delta'] - cx['delta']:{fmt}} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("src", type=Path)
    e.add_argument("dest", type=Path)
    e.add_argument("--as", dest="name", default=None, help="the folder name under dest (one run only)")
    t = sub.add_parser("tables")
    t.add_argument("folder", type=Path)
    g = t.add_mutually_exclusive_group()
    g.add_argument("--check", type=Path, help="exit 1 unless this markdown file holds these tables")
    g.add_argument("--write", type=Path, help="put the tables between the markers in this markdown file")
    t.add_argument("--only", default="", help="comma list of figures: only their changes and series (mauve,self_bleu; "
                   "harness: every lm-eval figure)")
    t.add_argument("--marker", default=MARK, help="the markers' name: <!-- NAME:begin --> ... <!-- NAME:end -->")
    a = p.parse_args(argv)
    if a.cmd == "export":
        for d in export(a.src, a.dest, a.name):
            print(d)
        return 0
    text = tables(a.folder, tuple(x for x in a.only.split(",") if x))
    if not (a.check or a.write):
        print(text, end="")
        return 0
    BEGIN, END = f"<!-- {a.marker}:begin -->", f"<!-- {a.marker}:end -->"
    doc = (a.check or a.write).read_text()
    if BEGIN not in doc or END not in doc:
        print(f"error: {a.check or a.write} has no {BEGIN} … {END} block: add the two markers where the tables go.",
              file=sys.stderr)
        return 2
    head, rest = doc.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    if a.check:
        same = old.strip() == text.strip()
        print("the tables in the doc are these" if same else "the tables in the doc differ from these: run --write")
        return 0 if same else 1
    a.write.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
