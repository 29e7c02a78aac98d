"""What the CPU and the CUDA benchmarks share: the JSON schema, the machine record, interleaved timing,
result rows and targets, the printed table, progress lines and the JSON file.

Imported by :mod:`collapse.bench.cpu.stages`, :mod:`collapse.bench.cpu.counting`, :mod:`collapse.bench.cpu.e2e` and the
CUDA modules; it imports none of them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

SCHEMA = "collapse-bench/1"
REPO = Path(__file__).resolve().parents[2]


def machine_info(device: str = "cpu") -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        txt = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", txt, re.M)
        cpu = m.group(1).strip() if m else cpu
        f = re.search(r"^flags\s*:\s*(.+)$", txt, re.M)
        flags = set(f.group(1).split()) if f else set()
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count()
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cores_usable": affinity,
        "cpu_features": sorted(x for x in flags if x in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"}),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": load_average(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    gpu_capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda,
                    bf16=torch.cuda.is_bf16_supported())
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def interleaved(methods: dict, repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each ``methods[name]()`` over ``repeats`` rounds (methods interleaved per round).

    A method may return a number of seconds itself (when it times only part of its work).
    """
    CPU_TIMES.clear()
    if warmup:
        for f in methods.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(repeats):
        for name, f in methods.items():
            c0 = time.process_time()
            t0 = time.perf_counter()
            r = f()
            dt = time.perf_counter() - t0
            CPU_TIMES.setdefault(name, []).append(time.process_time() - c0)
            out[name].append(float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else dt)
    return out


CPU_TIMES: dict[str, list[float]] = {}  # process CPU seconds of the last interleaved calls (diagnostics)


def result_row(name: str, times: list[float], units: float | None = None, unit: str = "tokens", **extra) -> dict:
    med = median(times)
    row = {"name": name, "seconds_median": med, "seconds": times, **extra}
    if units is not None:
        row[unit] = units
        row[f"{unit}_per_s"] = units / med if med > 0 else None
    return row


def format_number(v, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return "—"
        if abs(v) >= 1e6:
            return f"{v / 1e6:.2f}M"
        if abs(v) >= 1e4:
            return f"{v / 1e3:.1f}k"
        if 0 < abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def print_table(res: dict, file=sys.stdout) -> None:
    m = res["machine"]
    print(f"\n== collapse bench ({res['device']}{', quick' if res.get('quick') else ''}) — {m.get('gpu') or m['cpu']}; "
          f"{m['cores_usable']} cores usable, torch {m['torch']}, {m['torch_threads']} threads; "
          f"load avg before {m.get('load_avg')} after {res.get('load_avg_after')}", file=file)
    for pname, part in res["parts"].items():
        print(f"\n-- {pname}", file=file)
        if "skipped" in part:
            print(f"   skipped: {part['skipped']}", file=file)
            continue
        for c in part.get("checks", []):
            print(f"   {'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['detail']}", file=file)
        for r in part.get("rows", []):
            rate = next((k for k in r if k.endswith("_per_s")), None)
            extra = f"  {rate.replace('_', ' ')}: {format_number(r[rate])}" if rate else ""
            notes = f"  ({r['note']})" if r.get("note") else ""
            print(f"   {r['name']:<58} median {format_number(r['seconds_median'], 3):>8} s{extra}{notes}", file=file)
        for k, v in part.get("ratios", {}).items():
            print(f"   ratio {k:<52} {format_number(v, 2)}×", file=file)
        for k, v in part.get("info", {}).items():
            print(f"   {k:<58} {format_number(v, 3) if not isinstance(v, (dict, list)) else json.dumps(v)}", file=file)
        for t in part.get("targets", []):
            print(f"   target {t['what']}: {format_number(t['value'], 2)} vs {t['op']} {t['threshold']} -> "
                  f"{'met' if t['met'] else 'NOT met'}", file=file)


def target(what: str, value, op: str, threshold: float) -> dict:
    ok = value is not None and math.isfinite(value) and (value >= threshold if op == ">=" else value <= threshold)
    return {"what": what, "value": value, "op": op, "threshold": threshold, "met": bool(ok)}


_T0 = [time.perf_counter()]


def restart_clock() -> None:
    """Count the seconds of later :func:`say` lines from now."""
    _T0[0] = time.perf_counter()


def say(msg: str, tag: str = "bench", file=None) -> None:
    """A progress line ``[TAG seconds] msg`` (seconds since import or :func:`restart_clock`); stderr by default."""
    print(f"[{tag} {time.perf_counter() - _T0[0]:6.1f} s] {msg}", file=sys.stderr if file is None else file,
          flush=True)


def write_json(res: dict, path: str | Path) -> Path:
    """``res`` as indented JSON at ``path`` (folders made); numpy / torch values made plain first."""
    from collapse.io import write_json as write_json_atomic

    write_json_atomic(path, res)
    return Path(path)


STAGE_LINE = re.compile(r"\[\s*\d+/\d+\]\s+gen (\d+): (\S+)\s.*?\s(\d+\.\d+) s\b")


def stage_seconds(log_text: str) -> dict[int, dict[str, float]]:
    """{generation: {stage: seconds}} from a run's progress lines (``[ 3/12] gen 1: train   24.5 s ...``)."""
    out: dict[int, dict[str, float]] = {}
    for m in STAGE_LINE.finditer(log_text):
        g, stage, s = int(m.group(1)), m.group(2).rstrip(":"), float(m.group(3))
        out.setdefault(g, {})[stage] = out.get(g, {}).get(stage, 0.0) + s
    return out
