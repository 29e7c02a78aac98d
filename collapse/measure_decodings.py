"""`collapse measure` with ``measure.decodings``: the seed's figure for several decodings of one model, and a control.

Is the seed's "over-predicts common tokens, under-predicts rare ones" the model or the decoding? Every decoding
continues the same prompts (paired columns), and every column's intervals resample the same examples. Beside them
stands the control: as many random windows of real *training* text of the same length, in the measured model's
tokenizer, bucketed the same way: the shift that sampling noise and the ranking alone give real text. It is shown
beside the decodings, not subtracted from them.

Writes ``decodings.json`` (every column: its settings, the measure's figures with intervals, its seconds),
``decodings.md`` (the table the console prints), ``decodings.png`` (grouped bars with interval bars) and
``continuations/<column>.parquet``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from collapse.config.decodings import CONTROL, decoding_config, slug
from collapse.continuations import Prepared, continue_prompts, shift_result
from collapse.io import write_json, write_parquet, write_text

log = logging.getLogger("collapse")


def control_windows(p: Prepared) -> np.ndarray:
    """One random window of ``half`` real training tokens per example, inside one training document (seeded): a
    document drawn uniformly among those long enough, then an offset in it."""
    from collapse.errors import DataError
    from collapse.seeding import numpy_rng

    half, n = p.half, len(p.windows)
    docs = [d for d in p.train_docs if len(d) >= half]
    if not docs:
        raise DataError(f"no training document has {half} tokens for the control's windows: lower measure.window.")
    rng = numpy_rng(p.cfg.seed, "measure", "control")
    picks = rng.integers(len(docs), size=n)
    return np.stack([docs[i][(o := rng.integers(len(docs[i]) - half + 1)):o + half] for i in picks]).astype(np.int32)


def _cell(v: dict) -> str:
    if v.get("shift_pct") is None:
        return "—"
    lo, hi = (v.get("ci95") or [None, None])[:2]
    if lo is None:
        return f"{v['shift_pct']:+.1f}"
    return f"{v['shift_pct']:+.1f} [{lo:+.1f}, {hi:+.1f}]{'*' if lo > 0 or hi < 0 else ''}"


def table(columns: list[dict]) -> str:
    """Buckets × columns in markdown: each ranked bucket's shift in % with its 95% interval (``*``: resolved), then
    the unseen share, entropy and coverage."""
    names = [c["name"] for c in columns]
    buckets = [b for b in columns[0]["bucket_shift"] if b != "unseen"
               and any(c["bucket_shift"][b]["shift_pct"] is not None for c in columns)]
    lines = ["| bucket (train rank) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for b in buckets:
        lines.append(f"| {b} | " + " | ".join(_cell(c["bucket_shift"][b]) for c in columns) + " |")

    def share(c):
        u = c["bucket_shift"].get("unseen", {})
        lo, hi = (u.get("gen_share_ci95") or [None, None])[:2]
        return f"{100 * u.get('gen_share', 0.0):.2f}%" + ("" if lo is None else f" [{100 * lo:.2f}, {100 * hi:.2f}]")

    lines.append("| unseen share (apart) | " + " | ".join(share(c) for c in columns) + " |")
    for key, label, fmt in (("entropy", "entropy (bits)", ".2f"), ("coverage", "coverage", ".3f")):
        lines.append(f"| {label} | " + " | ".join(f"{c[key]:{fmt}}" if c.get(key) is not None else "—"
                                                   for c in columns) + " |")
    lines.append("| seconds | " + " | ".join(f"{c['seconds']:.0f}" for c in columns) + " |")
    return "\n".join(lines)


def run_decodings(p: Prepared, show_progress: bool) -> dict:
    """Every decoding of ``measure.decodings`` and the control, on the same examples; the table, chart and json."""
    from collapse.data import split_label
    from collapse.models import kind_for
    from collapse.models.gguf import sha256 as gguf_sha256
    from collapse.models.hf import decode_rows
    from collapse.report.figures import plot_decodings
    from collapse.tracking import make_logger

    cfg, acc = p.cfg, p.accelerator
    is_main = acc.is_main_process
    columns, texts = [], {}
    t = time.perf_counter()
    control = control_windows(p)
    if is_main:  # the same bootstrap weights as every decoding: the columns are paired
        columns.append({"name": CONTROL, "kind": "control", "settings": {"source": "random windows of the real "
                        "training split", "seed_key": [cfg.seed, "measure", "control"]},
                        **shift_result(p, control), "seconds": time.perf_counter() - t})
        texts[CONTROL] = control
    for entry in cfg.measure.decodings:
        gcfg = decoding_config(cfg.generation, entry)
        t = time.perf_counter()
        gen, stats = continue_prompts(p, gcfg, show_progress, desc=f"continue ({entry['name']})")
        if is_main:
            settings = {k: getattr(gcfg, k) for k in ("temperature", "top_k", "top_p", "min_p", "num_beams",
                                                      "repetition_penalty", "engine")}
            columns.append({"name": entry["name"], "kind": "decoding", "settings": settings, **shift_result(p, gen),
                            "generation_tokens_per_s": stats["tokens_per_s"], "seconds": time.perf_counter() - t})
            texts[entry["name"]] = gen
            log.info(f"{entry['name']}: {time.perf_counter() - t:.0f} s")
    result: dict = {}
    if is_main:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        title = kind_for(cfg.model.name_or_path).title(cfg)
        half = p.half
        result = {
            "model": p.model_ref, **({"model_sha256": gguf_sha256(p.file)} if p.file is not None else {}),
            "samples": int(len(p.windows)), "window": cfg.measure.window, "split": cfg.measure.split,
            "rank_by": cfg.measure.rank_by, "prompt_tokens": half, "new_tokens": half, "seed": cfg.seed,
            "prompts_sha256": hashlib.sha256(np.ascontiguousarray(p.prompts).tobytes()).hexdigest(),
            "columns": columns, "seconds": None,
        }
        write_text(out / "config.yaml", cfg.to_yaml())
        for name, rows in texts.items():
            write_parquet(out / "continuations" / f"{slug(name)}.parquet", {
                "prompt_ids": p.prompts, "generated_ids": rows, "reference_ids": p.refs,
                "generated_text": decode_rows(p.tok, rows)})
        md = table(columns)
        heading = (f"Token-frequency shift (%) of {half}-token continuations against the true second halves, "
                   f"{title}, {len(p.windows)} {split_label(cfg.measure.split)} examples; 95% intervals over examples "
                   f"(* resolved); `{CONTROL}`: random real training windows in place of continuations (the control)")
        write_text(out / "decodings.md", f"{heading}\n\n{md}\n")
        plot_decodings(columns, out / "decodings.png", rank_by=cfg.measure.rank_by,
                       title=f"Token frequencies of {half}-token continuations vs the true second halves, by decoding\n"
                             f"{title}, {len(p.windows)} {split_label(cfg.measure.split)} examples")
        result["seconds"] = round(time.perf_counter() - p.t0, 2)
        write_json(out / "decodings.json", result)
        logger = make_logger(cfg.wandb, out, cfg.to_dict(), is_main, job_type="measure")
        logger.log({"bucket_shift": {c["name"]: {b: v["shift_pct"] for b, v in c["bucket_shift"].items()}
                                     for c in columns}}, step=0)
        logger.log_image("decodings", out / "decodings.png", step=0)
        cells = [line.strip("|").split(" | ") for line in md.splitlines()[2:]]  # the table as W&B shows tables
        logger.log_table("decodings_table", ["row", *(c["name"] for c in columns)], [[x.strip() for x in r] for r in cells],
                         step=0)
        logger.close()
        log.info(f"\n{heading}\n{md}")
        log.info(f"wrote {out}/decodings.json, decodings.md, decodings.png, continuations/")
    acc.wait_for_everyone()
    acc.end_training()
    return result
