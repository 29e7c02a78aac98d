"""Results as data: every run folder (and `collapse measure` folder) as one tidy pandas table.

    df = collapse.load_runs(["runs/experiments/remedies"])       # a sweep's parent, run folders, measure folders
    df[df.figure == "test_ppl"].groupby(["curate.kind", "generation"]).value.mean()

One row per (run, generation, figure, bucket): ``value``, its interval ``lo`` / ``hi``, the paired change from
generation 0 (``change``, ``change_lo``, ``change_hi``, ``resolved``), then every config key flattened
(``regime.kind``, ``generation.temperature``, ``seed``, …) and the run's ``run`` name and ``path``. ``bucket`` is
empty for a scalar figure. The figures are the metric registry's (a plugin's registered figure appears with no
edit), read from ``metrics.jsonl`` through :func:`collapse.report.runs.load_run`, the reader the report uses. A
measure folder gives rows of generation 0 (its shifts are of continuations against true second halves).
``wide=True``: one row per (run, generation), a column per figure (``tail_loss.1001-10000``).
Imports pandas when called (``import collapse`` does not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collapse.errors import DataError

COLUMNS = ("run", "generation", "figure", "bucket", "value", "lo", "hi", "change", "change_lo", "change_hi",
           "resolved")


def run_folders(paths) -> list[Path]:
    """Each path as the run or measure folders it names: a folder with config.yaml, else the ones inside it."""
    out: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if (p / "config.yaml").is_file():
            out.append(p)
            continue
        inner = sorted(d for d in p.iterdir() if (d / "config.yaml").is_file()) if p.is_dir() else []
        if not inner:
            raise DataError(f"{p} holds no run: pass the out_dir of a `collapse run`, `collapse measure` or "
                            "`collapse sweep`.")
        out += inner
    return out


def _flat_config(config: dict) -> dict[str, Any]:
    """The config's dotted keys; a list or map value as its text (one cell)."""
    from collapse.report.runs import flatten_config

    return {k: str(v) if isinstance(v, (list, dict)) else v for k, v in flatten_config(config).items()}


def _defaults() -> dict[str, Any]:
    import dataclasses

    from collapse.config import Config

    return _flat_config(dataclasses.asdict(Config()))


def _pair(ci) -> tuple[Any, Any]:
    return (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)


def row_records(row: dict, g: int) -> list[dict]:
    """The tidy records of one metrics row (or a measure.json, whose bucket entries are maps)."""
    from collapse.metrics.registry import FIGURES, adopt

    adopt(row)  # lm-eval's figures (eval.harness), known from their names
    changes = (row.get("changes") or {}).get("from_gen0") or {}
    recs = []
    for f in FIGURES.values():
        if f.name not in row:
            continue
        if f.buckets:
            values, cis = row[f.name] or {}, row.get(f"{f.name}_ci") or {}
            items = []
            for b, v in values.items():
                if isinstance(v, dict):  # measure.json: {ref_share, gen_share, shift_pct, ci95}
                    v, ci = v.get("shift_pct"), v.get("ci95")
                else:
                    ci = cis.get(b)
                items.append((b, v, ci, changes.get(f"{f.name}.{b}")))
        else:
            items = [(None, row[f.name], row.get(f"{f.name}_ci"), changes.get(f.name))]
        for b, v, ci, ch in items:
            lo, hi = _pair(ci)
            clo, chi = _pair((ch or {}).get("ci95"))
            recs.append({"generation": g, "figure": f.name, "bucket": b, "value": v, "lo": lo, "hi": hi,
                         "change": (ch or {}).get("delta"), "change_lo": clo, "change_hi": chi,
                         "resolved": (ch or {}).get("resolved")})
    return recs


def load_runs(paths, wide: bool = False):
    """The tidy table of every run in ``paths`` (see the module docstring); ``wide``: a column per figure."""
    import json
    import logging

    import pandas as pd
    import yaml

    from collapse.report.runs import load_run

    frames, defaults = [], _defaults()
    for folder in run_folders(paths):
        if not (folder / "measure.json").is_file() and not (folder / "metrics.jsonl").is_file():
            logging.getLogger("collapse").warning(f"{folder}: no finished generation yet: left out")
            continue
        if (folder / "measure.json").is_file():
            config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
            rows = [(0, json.loads((folder / "measure.json").read_text()))]
            name = folder.resolve().name
        else:
            run = load_run(folder)
            config, name = run.config, run.name
            rows = [(r["generation"], r) for r in run.rows]
        recs = [rec for g, r in rows for rec in row_records(r, g)]
        df = pd.DataFrame.from_records(recs, columns=COLUMNS[1:])
        df.insert(0, "run", name)
        for k, v in _flat_config(config).items():
            df[k] = v
        for k, v in defaults.items():  # a key the run's config.yaml leaves out (curate.kind: none) at its default
            if k not in df.columns:
                df[k] = v
        if df["curate.kind"].iloc[0] != "none" and df["curate.share"].isna().all():  # the share the curator used
            from types import SimpleNamespace

            from collapse.loop.curate import resolved

            c = resolved(SimpleNamespace(kind=df["curate.kind"].iloc[0], share=None,
                                         oversample=int(df["curate.oversample"].iloc[0]),
                                         real_share=float(df["curate.real_share"].iloc[0])))
            df["curate.share"] = c.share
        df["path"] = str(folder)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*COLUMNS, "path"])
    df = df.infer_objects()  # a config key that is null in some runs and a number in others stays numeric
    for c in ("value", "lo", "hi", "change", "change_lo", "change_hi"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["resolved"] = df["resolved"].astype("boolean")
    if not wide:
        return df
    df = df.assign(key=df.figure.where(df.bucket.isna(), df.figure + "." + df.bucket.fillna("")))
    meta = [c for c in df.columns if c not in (*COLUMNS[2:], "key")]
    wide_df = df.pivot_table(index=["path", "generation"], columns="key", values="value", aggfunc="first",
                             dropna=False).reset_index()
    wide_df.columns.name = None
    keys = df[meta].drop_duplicates(["path", "generation"])
    return keys.merge(wide_df, on=["path", "generation"], how="left")


def export(paths, to: str | Path) -> Path:
    """Write :func:`load_runs` of ``paths`` to ``to`` (``.parquet`` or ``.csv``), atomically."""
    from collapse.io import atomic_path

    to = Path(to)
    if to.suffix not in (".parquet", ".csv"):
        raise DataError(f"--to {to}: name a .parquet or .csv file.")
    df = load_runs(paths)
    with atomic_path(to) as tmp:
        if to.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            import pyarrow as pa

            mixed = []  # object columns arrow cannot type (values of several kinds): as text
            for c in df.columns:
                if df[c].dtype == object:
                    try:
                        pa.array(df[c])
                    except (pa.ArrowInvalid, pa.ArrowTypeError):
                        mixed.append(c)
            df.astype({c: "string" for c in mixed}).to_parquet(tmp, index=False)
    return to
