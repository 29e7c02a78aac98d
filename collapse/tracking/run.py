"""What a `collapse run` logs to W&B, stage by stage (the logger itself: :mod:`collapse.tracking`).

* every fine-tune: :class:`TrainCurve` (``finetune``'s callbacks) onto ``train/step``; :func:`relog_curve`
  logs a finished one again from its train.json (a resumed run);
* artifacts with their lineage: :func:`log_model` (model g: the adapter or model, made from the corpora it was
  trained on and its starting weights), :func:`log_corpus` (corpus g, made from model g), :func:`log_report`;
* :func:`log_generation`: one generation's row and the charts over generations 0..g (the two image charts at
  :func:`image_generations` only: a long run draws at most six, not one per generation).

Each function is a no-op with W&B off (a ``NullLogger``) and logs nothing the W&B run already holds.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from collapse.metrics.stats import interval_series

log = logging.getLogger("collapse")


class TrainCurve:
    """``finetune``'s callbacks for generation g: its steps and epochs onto ``train/step``."""

    def __init__(self, logger, generation: int):
        self.logger, self.g = logger, generation
        self.every = max(1, getattr(logger, "log_every", 1))

    def steps(self, rows: list[dict], tokens_per_s: float | None = None) -> None:
        for r in rows:
            if r["step"] % self.every:
                continue
            m = {"train/loss": r["loss"], "train/lr": r["lr"], "train/epoch": r["epoch"]}
            if r.get("grad_norm") is not None:
                m["train/grad_norm"] = r["grad_norm"]
            if tokens_per_s is not None:
                m["train/tokens_per_s"] = tokens_per_s
            self.logger.log_train(m, self.g, r["step"])

    def epoch(self, row: dict) -> None:
        self.logger.log_train({"val/nll": row["val_nll"], "train/epoch_loss": row["train_loss"],
                               "train/epoch": row["epoch"]}, self.g, row["step"])


def relog_curve(logger, train_json: Path, g: int) -> None:
    """A finished fine-tune's curves from its train.json (a resumed run: rows the W&B run lacks; no tokens/s)."""
    if not logger.active or not Path(train_json).is_file():
        return
    stats = json.loads(Path(train_json).read_text())
    curve = TrainCurve(logger, g)
    rows = stats.get("curve") or []
    ends = {h["epoch"]: h for h in stats.get("history", [])}
    for e in sorted({r["epoch"] for r in rows}):
        ep = [r for r in rows if r["epoch"] == e]
        curve.steps(ep)
        if e in ends:
            curve.epoch({**ends[e], "step": ep[-1]["step"]})


def artifact_name(run_id: str, what: str, g: int | None = None) -> str:
    """Artifact names carry the W&B run id: unique in the project, the same on resume."""
    return f"{run_id}-{what}" if g is None else f"{run_id}-{what}-g{g}"


def log_model(logger, out: Path, g: int, weights: Path | None, cfg, base_model: str) -> None:
    """Model g as an artifact: its weights (unless ``wandb.log_weights=false``) and what it was made from."""
    if not logger.active:
        return
    name = artifact_name(logger.id, "model", g)
    if name in logger.artifacts_logged:
        return
    gd = Path(out) / f"gen_{g:03d}"
    train = json.loads((gd / "train.json").read_text()) if (gd / "train.json").is_file() else {}
    meta: dict[str, Any] = {"generation": g, "method": cfg.train.method if g else "base"}
    uses: tuple[str, ...] = ()
    if g == 0:
        meta["made_from"] = {"base_model": base_model,
                             **({"fine_tuned_on": "the real training split", "epochs": cfg.train.gen0_epochs,
                                 "blocks": cfg.train.gen0_blocks} if cfg.train.fits_gen0 else {})}
    else:
        sources = {int(k): v for k, v in (train.get("rows_by_source") or {}).items()}
        what = "curated" if cfg.curate.active else "corpus"  # a remedy: the model learns from the curated sets
        corpora = [artifact_name(logger.id, what, k) for k in sorted(sources) if k >= 0]
        start = artifact_name(logger.id, "model", g - 1 if cfg.train.init == "previous" else 0)
        meta["made_from"] = {"corpora": corpora, "real_rows": sources.get(-1, 0), "starting_weights": start,
                             "regime": cfg.regime.kind, "init": cfg.train.init}
        meta["val_nll"], meta["train_loss"] = train.get("val_nll"), train.get("train_loss")
        uses = (*corpora, start)
    weights = Path(weights) if weights is not None else None
    include = logger.log_weights and weights is not None and weights.is_dir()
    meta["weights"] = "included" if include else "not uploaded (wandb.log_weights=false, or not made by this run)"
    logger.log_artifact(name, "model", [weights] if include else [], meta, uses=uses, job=f"train-g{g}" if g else None)


def log_corpus(logger, out: Path, g: int, n_samples: int, gen_cfg) -> None:
    """Corpus g (``samples.parquet``) as an artifact, made from model g."""
    if not logger.active:
        return
    model = artifact_name(logger.id, "model", g)
    meta = {"generation": g, "made_from": {"model": model, "prompts": "real training blocks (the same every "
                                                                      "generation)"},
            "samples": n_samples, "prompt_tokens": gen_cfg.prompt_tokens, "new_tokens": gen_cfg.new_tokens,
            "temperature": gen_cfg.temperature, "top_k": gen_cfg.top_k, "top_p": gen_cfg.top_p, "min_p": gen_cfg.min_p,
            "num_beams": gen_cfg.num_beams}
    logger.log_artifact(artifact_name(logger.id, "corpus", g), "dataset",
                        [Path(out) / f"gen_{g:03d}" / "samples.parquet"], meta, uses=(model,), job=f"generate-g{g}")


def log_curated(logger, out: Path, g: int, cfg) -> None:
    """Curated set g (``curated.parquet``, what the next generation trains on) as an artifact, made from corpus g."""
    if not logger.active:
        return
    gd = Path(out) / f"gen_{g:03d}"
    summary = json.loads((gd / "curate.json").read_text()) if (gd / "curate.json").is_file() else {}
    corpus = artifact_name(logger.id, "corpus", g)
    logger.log_artifact(artifact_name(logger.id, "curated", g), "dataset", [gd / "curated.parquet", gd / "curate.json"],
                        {"generation": g, "made_from": {"corpus": corpus}, **summary}, uses=(corpus,),
                        job=f"curate-g{g}")


def log_report(logger, report_html: Path, generations: int) -> None:
    if logger.active and Path(report_html).is_file():
        logger.log_artifact(artifact_name(logger.id, "report"), "report", [Path(report_html)],
                            {"generations": generations,
                             "made_from": {"corpora": [artifact_name(logger.id, "corpus", g)
                                                       for g in range(generations + 1)]}})


SAMPLES_LOGGED = 8  # sample texts per generation in the W&B table (with their gen-0 perplexity)
IMAGES_PER_RUN = 5  # drawing the images is slow next to a fast generation (docs/benchmarks.md)


def image_generations(generations: int, most: int = IMAGES_PER_RUN) -> list[int]:
    """The generations whose W&B row carries the heatmap and perplexity images: every one of a run of up to
    ``most`` generations; of a longer one every k-th and the last, at most ``most`` + 1 (each image shows
    generations 0..g, so the last holds the whole run; at every generation, the drawing would outlast a fast
    kind's run)."""
    k = max(1, math.ceil(generations / most))
    return sorted({*range(0, generations + 1, k), generations})


def _figures(out: Path, g: int, folder: Path) -> dict[str, Path]:
    """The report's bucket-shift heatmap and test-perplexity plot over generations 0..g of this run (PNG only)."""
    from collapse.report.figures import fig_bucket_heatmap, fig_test_ppl
    from collapse.report.plots import FORMATS, RC, mpl
    from collapse.report.runs import group_runs, load_run, present_buckets

    run = load_run(out)
    run.rows = [r for r in run.rows if r["generation"] <= g]
    groups = group_runs([run])
    buckets = present_buckets(groups, "bucket_shift", run.buckets)
    token = FORMATS.set(("png",))
    try:
        with mpl().rc_context(RC):
            return {"charts/bucket_shift_heatmap": fig_bucket_heatmap(groups, buckets, folder),
                    "charts/test_ppl": fig_test_ppl(groups, folder)}
    finally:
        FORMATS.reset(token)


def log_generation(logger, row: dict, ppl: np.ndarray, samples_path: Path, g: int, bins: np.ndarray,
                   pretrain: Path | None = None, generations: int | None = None) -> None:
    """One generation's row: scalars and bucket series, the gen0-perplexity histogram, a few sample texts,
    and the charts over generations 0..g (tail loss of every bucket on one chart; the heatmap and the test
    perplexity as images, at :func:`image_generations` of a run of ``generations``). With generation 0, ``pretrain`` (a scratch model's scratch.json): its pre-training
    curve, validation and training loss by step, as one chart (``charts/pretrain``)."""
    if logger.has_generation(g):
        return  # W&B disabled, or a resumed run whose W&B run has this generation already: nothing to draw
    scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ranked = {f"r{i}_{b}": v for i, (b, v) in enumerate(row["tail_loss"].items(), 1) if v is not None}
    logger.log({**scalars, "tail_loss": row["tail_loss"], "tail_loss_rank": ranked, "bucket_shift": row["bucket_shift"],
                "gen0_ppl": {"q50": row["gen0_ppl_quantiles"]["q50"], "q95": row["gen0_ppl_quantiles"]["q95"]},
                **interval_series(row)}, step=g)
    logger.log_histogram("gen0_ppl_hist", ppl, step=g, bins=bins)
    out = Path(samples_path).parent.parent
    try:
        import pyarrow.parquet as pq

        t = pq.read_table(samples_path, columns=["sample_index", "text"]).slice(0, SAMPLES_LOGGED).to_pylist()
        logger.log_table("samples", ["generation", "sample_index", "gen0_ppl", "text"],
                         [[g, r["sample_index"], float(ppl[r["sample_index"]]), r["text"]] for r in t], step=g,
                         incremental=True)
    except Exception:  # noqa: BLE001 - a missing table must not stop the run
        pass
    try:
        rows = [json.loads((out / f"gen_{k:03d}" / "metrics.json").read_text()) for k in range(g + 1)
                if (out / f"gen_{k:03d}" / "metrics.json").is_file()]
        buckets = [b for b in row["tail_loss"] if all(r["tail_loss"].get(b) is not None for r in rows)]
        logger.log_lines("charts/tail_loss", [r["generation"] for r in rows],
                         [[r["tail_loss"][b] for r in rows] for b in buckets], buckets,
                         "Loss on real test tokens by frequency bucket (nats/token)", step=g)
    except Exception as e:  # noqa: BLE001 - a chart must not stop the run
        log.debug(f"W&B: tail-loss chart not logged ({e})")
    if g == 0 and pretrain is not None and Path(pretrain).is_file():
        try:
            curve = [c for c in json.loads(Path(pretrain).read_text()).get("curve", []) if c.get("val_nll") is not None]
            trained = [c for c in curve if c.get("train_loss") is not None]
            logger.log_lines("charts/pretrain", [[c["step"] for c in curve], [c["step"] for c in trained]],
                             [[c["val_nll"] for c in curve], [c["train_loss"] for c in trained]],
                             ["validation NLL", "training loss"], "Generation 0's pre-training (nats/token)", step=0,
                             xname="pre-training step")
        except Exception as e:  # noqa: BLE001
            log.debug(f"W&B: pre-training curve not logged ({e})")
    if generations is not None and g not in image_generations(generations):
        return
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="collapse-wandb-") as tmp:
            for key, path in _figures(out, g, Path(tmp)).items():
                logger.log_image(key, path, step=g)
    except Exception as e:  # noqa: BLE001
        log.debug(f"W&B: figures not logged ({e})")


# ---------------------------------------------------------------------- for collapse.loop.run's Run


def log_run_model(run, g: int) -> None:
    """Model g of ``run`` as an artifact (its weights unless wandb.log_weights=false; the base model is named)."""
    if g > 0:
        weights = run.dir(g) / run.ckpt.subdir
    else:  # generation 0 is the base model (named, not uploaded) unless it was fine-tuned here
        weights = run.dir(0) / "model" if run.cfg.train.fits_gen0 else None
    log_model(run.logger, run.out, g, weights, run.cfg, run.model_ref)


def log_run_corpus(run, g: int) -> None:
    """Corpus g of ``run`` as an artifact, made from model g (logged first, once)."""
    log_run_model(run, g)
    log_corpus(run.logger, run.out, g, run.data.n_seq, run.cfg.generation)


def log_run_curated(run, g: int) -> None:
    log_curated(run.logger, run.out, g, run.cfg)


def relog_finished(run) -> None:
    """A resumed run: every finished stage's curves, artifacts and rows again, in the order they were made; the
    logger skips what the W&B run holds (online: from W&B's starting_step; offline: the earlier segments)."""
    for g in range(run.cfg.generations + 1):
        if run.manifest.done(g, "train"):
            relog_curve(run.logger, run.dir(g) / "train.json", g)
            log_run_model(run, g)
        if run.manifest.done(g, "generate"):
            log_run_corpus(run, g)
        if run.manifest.done(g, "curate"):
            log_run_curated(run, g)
        if run.manifest.done(g, "measure"):
            run.log_generation(g)
