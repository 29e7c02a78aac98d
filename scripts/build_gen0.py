#!/usr/bin/env python3
"""Build the embedded default's generation 0 once, as shipped in ``collapse/gen0/`` (and check a rebuild).

    python scripts/build_gen0.py                   # build and write collapse/gen0/ (≈ half an hour on 2 cores)
    python scripts/build_gen0.py --verify          # rebuild in a temporary folder; compare with collapse/gen0/
    python scripts/build_gen0.py --out /tmp/big model.scratch.n_layer=4 model.scratch.d_model=256   # a candidate

The recipe is the default ``model.scratch`` (``collapse keys model.scratch``) on the default data (the
embedded KJV splits), overridable by ``key=value`` for a candidate built elsewhere (``--out``). The folder
gets the model, the tokenizer, the splits' token ids (compressed), ``scratch.json`` (recipe, seed,
validation curve) and ``gen0.json`` (weights hash, machine, torch threads, versions, command, date).
``--verify`` exits 1 when the rebuilt validation perplexity is more than 1% from the shipped one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def machine(threads: int) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def plot_curve(folder: Path | None, png: Path) -> int:
    """The validation curve of a built generation 0 (default: the shipped one) as a PNG."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from collapse.models.scratch import SHIPPED

    info = json.loads(((folder or SHIPPED) / "scratch.json").read_text())
    curve = [c for c in info["curve"] if c["step"] > 0]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    ax.plot([c["step"] for c in curve], [math.exp(c["val_nll"]) for c in curve], lw=1.6, label="validation")
    ax.plot([c["step"] for c in curve if c["train_loss"]], [math.exp(c["train_loss"]) for c in curve if c["train_loss"]],
            lw=1.0, alpha=0.7, label="training (mean over the interval)")
    best = info.get("best_step")
    ax.axvline(best, color="0.5", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    s = info["scratch"]
    ax.set_title(f"generation 0: {s['arch']} {s['n_layer']}×{s['d_model']}, stopped at step {info['steps']:,} "
                 f"(best {best:,}: {info['val_ppl']:.1f})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    print(f"wrote {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="config key=value (a candidate recipe; needs --out)")
    ap.add_argument("--out", default=None, help="folder to write (default: collapse/gen0, the shipped one)")
    ap.add_argument("--verify", action="store_true", help="rebuild in a temporary folder and compare with the shipped one")
    ap.add_argument("--plot", default=None, metavar="PNG", help="only draw the shipped model's validation curve")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the shipped build used 1)")
    ap.add_argument("--device", choices=("cpu", "accelerator"), default="cpu",
                    help="`accelerator`: pre-train through Accelerate on its device (a GPU: bf16 autocast; "
                         "launch with `accelerate launch` for several)")
    args = ap.parse_args(argv)
    if args.plot:
        return plot_curve(Path(args.out) if args.out else None, Path(args.plot))

    import numpy as np
    import torch

    from collapse.config import load_config
    from collapse.data import load_splits
    from collapse.models.scratch import SHIPPED, SHIPPED_INFO, TOKENS_FILE, build, file_sha256, scratch_key
    from collapse.runtime import quiet_libraries, setup_logging

    quiet_libraries()
    log = setup_logging()
    log.setLevel(logging.DEBUG)  # one line per validation loss: the curve as it is made
    torch.set_num_threads(args.threads)
    if args.overrides and not args.out:
        ap.error("a candidate recipe (key=value) is written elsewhere: give --out")
    cfg = load_config(None, args.overrides)
    splits = load_splits(cfg.data)
    sc = cfg.model.scratch
    key = scratch_key(sc, splits.fingerprint())
    shipped = json.loads((SHIPPED / SHIPPED_INFO).read_text()) if (SHIPPED / SHIPPED_INFO).is_file() else None
    if args.verify and shipped is None:
        print(f"error: nothing to verify: {SHIPPED / SHIPPED_INFO} does not exist.", file=sys.stderr)
        return 2
    dest = Path(args.out) if args.out else SHIPPED
    accelerator = None
    if args.device == "accelerator":
        from collapse.runtime import make_accelerator

        accelerator = make_accelerator("auto")
        log.info("pre-training on %s, %d process(es), mixed precision %s", accelerator.device,
                 accelerator.num_processes, accelerator.mixed_precision)
    work = Path(tempfile.mkdtemp(prefix="gen0-"))
    try:
        main = accelerator is None or accelerator.is_main_process
        folder = build(sc, splits, work / "gen0" if main else None, show_progress=sys.stderr.isatty() and main,
                       accelerator=accelerator)
        if accelerator is not None:
            accelerator.wait_for_everyone()
            if not main:
                accelerator.end_training()
                return 0
        info = json.loads((folder / "scratch.json").read_text())
        with np.load(folder / TOKENS_FILE) as z:  # the same ids, compressed (≈ 3x smaller in the package)
            arrays = {k: z[k] for k in z.files}
        np.savez_compressed(folder / TOKENS_FILE, **arrays)
        meta = {"key": key, "weights_sha256": file_sha256(folder / "model.safetensors"),
                "device": info.get("device"), "processes": info.get("processes"),
                "val_ppl": info["val_ppl"], "val_nll": info["val_nll"], "steps": info["steps"],
                "best_step": info.get("best_step"), "converged": info.get("converged"),
                "build_seconds": info["seconds"], "machine": machine(args.threads),
                "command": "python scripts/build_gen0.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        (folder / SHIPPED_INFO).write_text(json.dumps(meta, indent=1) + "\n")
        print(json.dumps({k: meta[k] for k in ("key", "val_ppl", "steps", "best_step", "converged", "build_seconds",
                                               "weights_sha256")}, indent=1))
        if args.verify:
            rel = abs(meta["val_ppl"] - shipped["val_ppl"]) / shipped["val_ppl"]
            same = meta["weights_sha256"] == shipped["weights_sha256"]
            print(f"rebuilt validation perplexity {meta['val_ppl']:.3f} vs shipped {shipped['val_ppl']:.3f}: "
                  f"{100 * rel:.3f}% apart (limit 1%); weights {'bit-identical' if same else 'differ'}; "
                  f"key {'the same' if key == shipped['key'] else 'DIFFERENT: another recipe or data'}")
            return 0 if rel <= 0.01 and key == shipped["key"] else 1
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(folder, dest)
        print(f"wrote {dest}")
        if accelerator is not None:
            accelerator.end_training()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
