"""`collapse run`: the recursion of "The Curse of Recursion" (Shumailov et al., Nature 2024).

    for g = 0 .. G:
        train     model g on corpus g-1 (the regime: corpus g-1 alone, or mixed with real text)   [g >= 1]
        evaluate  model g on REAL test text: test perplexity, loss per frequency bucket (tail loss)
        generate  corpus g: model g continues REAL training prompts (the same prompts every generation)
        measure   corpus g against the REAL training counts; each sample scored by generation 0

``run_loop`` below is that loop. Each stage goes through one runner (``Run.stage``) that owns the bookkeeping: a
stage recorded in ``manifest.json`` is skipped, every process waits for the others, then the stage is recorded
and timed. Crash safety (a kill at any moment loses at most the stage in flight):

* Every file is written atomically (``collapse.io``), and a stage is recorded only after all its files
  are complete. A rerun of the same command skips recorded stages and redoes the one in flight;
  generation keeps its finished batch shards and continues after them; training restarts.
* On resume every recorded stage's files are checked (``rundir.verify_stages``); a damaged stage is
  redone, with one warning line. Temporary files of a killed run are deleted.
* Randomness is drawn from (seed, generation, stage, shard) (``collapse.seeding``), never from RNG state
  left over by earlier work of the process, so a resumed run equals an uninterrupted one bit for bit
  (on the same device type and thread count).
* ``out_dir/.lock`` keeps two processes out of one folder. A full disk is one error line (exit 2);
  Ctrl-C stops with a note on how to resume (exit 130).
* W&B: the run id is kept in manifest.json before the first ``wandb.init``; a resumed run logs to the same id
  and first re-logs the finished generations, so no row a killed process had not flushed is lost.

``COLLAPSE_SKIP_REPORT=1`` skips drawing the report at the end (tests; ``collapse report`` draws it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from collapse import fault
from collapse.check import Plan, check_gen0_budget, check_pool, check_run
from collapse.config import Config
from collapse.data import RealData, real_data, save_split_ids, split_ids
from collapse.decoding.generate import generate_corpus
from collapse.errors import CollapseError, DataError
from collapse.io import atomic_path, read_json, write_json, write_npz, write_parquet, write_text
from collapse.loop import integrity
from collapse.loop.checkpoints import Checkpoints, LazyModel, disk_estimate
from collapse.loop.curate_stage import curate_stage, curated_rows, gen0_scores, row_figures
from collapse.loop.harness_stage import harness_part, harness_stage
from collapse.loop.pool import pool_size
from collapse.loop.regimes import regime_training_set
from collapse.loop.rows import PPL_BINS, interval_part, metrics_row, metrics_table
from collapse.loop.rundir import (
    EVAL_BLOCKS,
    Manifest,
    base_file_digest,
    clean_temp,
    disk_full,
    empty_out_dir,
    finished_shards,
    gen_dir,
    load_samples,
    lock_out_dir,
    merge_shards,
    rewrite_metrics_jsonl,
    shard_path,
    verify_stages,
)
from collapse.loop.text_stage import text_part
from collapse.metrics import stats as S
from collapse.metrics.evaluate import evaluate_blocks
from collapse.metrics.truth import add_truth, kl_truth
from collapse.models import TrainJob, kind_for
from collapse.models.hf import decode_rows, never_sampled, set_threads, vocab_size
from collapse.runtime import LaunchWorld, StageClock, fmt_bytes, fmt_pct, fmt_s, make_accelerator
from collapse.seeding import numpy_rng
from collapse.tracking import NullLogger, StepAxis, close_quietly, make_logger, new_run_id, train_steps, wants_wandb
from collapse.tracking.run import (
    TrainCurve,
    log_generation,
    log_report,
    log_run_corpus,
    log_run_curated,
    log_run_model,
    relog_finished,
)

log = logging.getLogger("collapse")


def run_loop(cfg: Config, show_progress: bool = True) -> int:
    """Generation 0, then G generations of train -> evaluate -> generate -> [curate] -> measure; resumable at any stage."""
    run = Run.prepare(cfg, show_progress)  # every check first: nothing is written (or deleted) before
    with run.session():  # the folder locked and checked, W&B open; errors become one line
        base = run.generation0()  # the base model, or it fine-tuned on real text (train.gen0_epochs)
        prev = None
        for g in range(cfg.generations + 1):
            model = run.weights(g, base)  # model g: kept once trained here, else read from disk when needed
            if g > 0:
                run.stage("train", g, train_stage, base, prev, model, then=run.after_train)
            prev = None  # model g-1 is not needed after training g
            run.stage("evaluate", g, evaluate_stage, model)
            if cfg.eval.harness.tasks:  # lm-eval's tasks on model g (collapse.loop.harness_stage)
                run.stage("harness", g, harness_stage, model)
            run.stage("generate", g, generate_stage, model, then=run.log_corpus)
            if cfg.curate.active and g < cfg.generations:  # a remedy (collapse.loop.curate): what g+1 trains on
                run.stage("curate", g, curate_stage, base, model, then=lambda k: log_run_curated(run, k))
            run.stage("measure", g, measure_stage, base, then=run.log_generation)
            prev = model if run.ckpt.continues_previous else None
        model = prev = None  # the report needs no model
        run.finish()
    return 0


# ---------------------------------------------------------------------- the four stages


def train_stage(run: Run, g: int, base, prev: LazyModel | None, model: LazyModel) -> str:
    """Fine-tune model g on the regime's training set: corpus g-1 alone or with real text / older corpora."""
    cfg = run.cfg
    rows, src = regime_training_set(cfg.regime.kind, real_blocks=run.data.real_rows,
                                    samples=[run.train_rows(k) for k in range(g)],
                                    real_fraction=cfg.regime.real_fraction, size=cfg.regime.size,
                                    rng=numpy_rng(cfg.seed, g, "regime"))
    trainee = run.ckpt.start(g, base, prev)
    if prev is not None:
        prev.model = None  # model g-1 is not needed any more
    trainee, stats = run.ckpt.kind.train(trainee, TrainJob(
        rows, run.data.val_blocks, cfg.train, run.accelerator, key=(cfg.seed, g, "train"),
        batch_size=cfg.eval.batch_size, show_progress=run.show, desc=f"gen {g} train",
        on_step=lambda s: fault.point("train", g, s), curve=TrainCurve(run.logger, g)))
    model.model = run.ckpt.save(trainee, g, run.is_main)
    if run.is_main:
        write_json(run.dir(g) / "train.json", {
            **stats, "rows": int(len(rows)), "real_rows": int((src == -1).sum()),
            "rows_by_source": {str(k): int((src == k).sum()) for k in np.unique(src)}})
    epoch = f" (epoch {stats['epoch_selected']})" if "epoch_selected" in stats else ""  # a kind's stats
    speed = f", {stats['tokens_per_s'] / 1e3:.1f}k tok/s" if "tokens_per_s" in stats else ""
    return f"{len(rows)} rows, val NLL {stats['val_nll']:.3f}{epoch}{speed}"


def evaluate_stage(run: Run, g: int, model: LazyModel) -> str:
    """Test perplexity and the loss per frequency bucket of model g on the REAL test blocks."""
    m = model()
    fault.point("evaluate", g, 0)
    ev = evaluate_blocks(m, run.data.test_blocks, run.data.bucket_of, run.cfg.eval.batch_size, run.accelerator,
                         per_block=True)
    if run.data.truth is not None:  # the synthetic source: KL to the known truth
        ev.update(kl_truth(m, run.data.truth, run.tok.eos_token_id, (run.cfg.seed, g), run.cfg.eval.batch_size))
    extras = run.ckpt.kind.evaluation_extras(m, run.data.test_blocks, run.cfg.eval.batch_size)
    if extras:  # the model kind's own figures (the n-gram: tokens of probability 0), carried into the row
        ev.update(extras, extras=sorted(extras))
    fault.point("evaluate", g, 1)
    blocks = {"sums": ev.pop("block_sums"), "counts": ev.pop("block_counts")}
    if run.is_main:
        write_npz(run.dir(g) / EVAL_BLOCKS, blocks)
        write_json(run.dir(g) / "eval.json", ev)
    return f"test ppl {ev['test_ppl']:.2f}"


def generate_stage(run: Run, g: int, model: LazyModel) -> str:
    """Corpus g: model g continues the REAL prompts, batch by batch into shards, merged into samples.parquet."""
    m, d, gc, tok = model(), run.dir(g), run.cfg.generation, run.tok
    done = finished_shards(d) if run.is_main else set()
    if run.accelerator.num_processes > 1:  # every process skips the same batches
        from accelerate.utils import broadcast_object_list

        box = [sorted(done)]
        broadcast_object_list(box)
        done = set(box[0])

    def sink(b: int, prompt_rows: np.ndarray, gen_rows: np.ndarray) -> None:
        idx = np.arange(b * gc.batch_size, b * gc.batch_size + len(gen_rows), dtype=np.int64)
        write_parquet(shard_path(d, b), {"sample_index": idx, "prompt_ids": prompt_rows, "token_ids": gen_rows,
                                         "text": decode_rows(tok, gen_rows)})
        fault.point("generate", g, b)

    generate_corpus(m, run.data.prompts, gc.new_tokens, gc, key=(run.cfg.seed, g, "generate"), sink=sink,
                    accelerator=run.accelerator, suppress_ids=run.data.suppress, skip_batches=done,
                    progress=run.show, desc=f"gen {g} generate")
    if run.is_main:
        merge_shards(d, run.data.n_batches)
    return f"{run.data.n_seq} × {gc.new_tokens} tokens"


def measure_stage(run: Run, g: int, base) -> str:
    """Corpus g against the REAL training counts (buckets, KL, entropy, coverage...); gen0 perplexity per sample."""
    d, gc = run.dir(g), run.cfg.generation
    full = load_samples(run.out, g, keep_prompt=True)  # prompt + continuation, read once
    gen_ids = full[:, gc.prompt_tokens:]
    run.samples_cache[g] = full if gc.keep_prompt else gen_ids
    fault.point("measure", g, 0)
    ppl = gen0_scores(run, g, base, full)  # each sample scored by generation 0 (the curate stage's, if it did)
    row = metrics_row(g, read_json(d / "eval.json"), run.data.ref_counts, gen_ids, ppl, d)
    text = text_part(run, g, base, gen_ids) | harness_part(run, g)  # MAUVE, self-BLEU, lm-eval tasks where asked
    row.update(row_figures(d), **text.point)  # and the curate stage's figures (none without a curate.kind)
    add_truth(row, run.data.truth, read_json(d / "eval.json"), gen_ids, len(run.data.bucket_of))  # synthetic, n-gram
    if run.is_main:
        row.update(interval_part(run, g, row, gen_ids, ppl, text.boot))
        with atomic_path(d / "gen0_ppl.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, ppl.astype(np.float32), allow_pickle=False)
        write_json(d / "metrics.json", row)
        rewrite_metrics_jsonl(run.out, sorted({g, *run.manifest.measured(run.cfg.generations)}))
    bs = row["bucket_shift"]
    return f"shift 1-10 {fmt_pct(bs['1-10'])}, 1001-10000 {fmt_pct(bs['1001-10000'])}"


def gen0_stage(run: Run, g: int, model: LazyModel) -> str:
    """The paper's generation 0: the base fine-tuned on the REAL training split, whole epochs or ``gen0_blocks`` rows
    once, the best of its REAL validation looks kept; saved with its tokenizer (``collapse measure`` reads it)."""
    tc = run.cfg.train
    tcfg = copy.deepcopy(tc)
    rows = run.data.real_rows
    if tc.gen0_blocks:  # a seeded draw without repeats, seen once
        pick = numpy_rng(run.cfg.seed, 0, "gen0-budget").choice(len(rows), size=tc.gen0_blocks, replace=False)
        rows, tcfg.epochs = rows[np.sort(pick)], 1
    else:
        tcfg.epochs = tc.gen0_epochs
    t0 = time.perf_counter()
    trainee = run.ckpt.kind.start(run.cfg, 0, run.model0, None)
    trainee, stats = run.ckpt.kind.train(trainee, TrainJob(
        rows, run.data.val_blocks, tcfg, run.accelerator, key=(run.cfg.seed, 0, "train"),
        batch_size=run.cfg.eval.batch_size, show_progress=run.show, desc="gen 0 fine-tune on real",
        on_step=lambda s: fault.point("train", 0, s), curve=TrainCurve(run.logger, 0),
        extra={"val_every": tc.gen0_val_every if tc.gen0_blocks else 0}))
    model.model = run.ckpt.save_gen0(trainee, run.is_main, run.tok)
    record = stats
    if tc.gen0_blocks:
        import math

        record = {"budget": {"gen0_blocks": tc.gen0_blocks, "tokens": int(rows.size), "val_every": tc.gen0_val_every},
                  "tokens_used": int(stats["tokens"]), "wall_seconds": round(time.perf_counter() - t0, 2),
                  "val_ppl_before": math.exp(stats["val_nll_before"]), "val_ppl_after": math.exp(stats["val_nll"]),
                  "validation_blocks": int(len(run.data.val_blocks)), **stats}
    if run.is_main:
        write_json(run.dir(0) / "train.json", record)
    if tc.gen0_blocks:
        return (f"{tc.gen0_blocks} real rows, val ppl {record['val_ppl_before']:.2f} → {record['val_ppl_after']:.2f} "
                f"(step {stats['step_selected']} of {stats['steps']})")
    return f"val NLL {stats['val_nll']:.3f}"


# ---------------------------------------------------------------------- what the stages share


@dataclass
class Run:
    """One `collapse run`: its config, data, models, folder and logger, and the stage runner."""

    cfg: Config
    out: Path
    resuming: bool
    wipe: bool
    accelerator: object
    show: bool
    model0: object  # the base model as loaded (generation 0 unless train.gen0_epochs)
    model_ref: str
    tok: object
    data: RealData
    ckpt: Checkpoints
    base_file: Path | None = None  # a single-file base checkpoint (GGUF): its sha256 is the run's
    t_start: float = field(default_factory=time.perf_counter)
    samples_cache: dict = field(default_factory=dict)
    boot_cache: dict = field(default_factory=dict)
    manifest: object = None
    clock: object = None
    logger: object = None
    lock: object = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def dir(self, g: int) -> Path:
        return gen_dir(self.out, g)

    @classmethod
    def prepare(cls, cfg: Config, show_progress: bool, check_only: bool = False) -> Run | Plan:
        """Every check first (``collapse.check``: nothing is written), then the model with its weights.

        With ``check_only`` the checks' plan is returned instead (``collapse run --check``).
        """
        t0 = time.perf_counter()
        set_threads()
        accelerator = LaunchWorld(cfg.train.mixed_precision) if check_only else make_accelerator(
            cfg.train.mixed_precision, main_only_minutes=240 if cfg.eval.harness.tasks else None)  # lm-eval: main only
        if not accelerator.is_main_process:
            log.setLevel(logging.WARNING)
        plan, checked = check_run(cfg, accelerator)
        accelerator.wait_for_everyone()
        if check_only:
            accelerator.end_training()
            return plan
        for w in plan.warnings if accelerator.is_main_process else ():
            log.warning(f"warning: {w}")
        show = show_progress and accelerator.is_main_process
        kind = kind_for(cfg.model.name_or_path)
        loaded = kind.load(cfg.model, checked.splits, accelerator.device, show, accelerator=accelerator)
        model0, tok, model_ref = loaded.model, loaded.tokenizer, loaded.ref
        cache = checked.facts.token_cache
        if checked.facts.tokenizer is None:  # it came with the model just built: the checks that needed it
            kind.check_fits(cfg, model0)
            ids = split_ids(tok, checked.splits, loaded.token_cache)
            data = real_data(cfg, ids, tok.eos_token_id, vocab_size(model0, tok), never_sampled(tok))
            check_gen0_budget(cfg, data)
            check_pool(cfg, data)
        else:  # the blocks the checks made with the same tokenizer
            data = checked.data
            if cache is not None and not cache.is_file() and accelerator.is_main_process:
                with contextlib.suppress(OSError):  # a cache from before tokens.npz: add it (a read-only one stays)
                    save_split_ids(cache, checked.splits, checked.ids)
        return cls(cfg=cfg, out=plan.out, resuming=plan.resuming, wipe=plan.wipe, accelerator=accelerator, show=show,
                   model0=model0, model_ref=model_ref, tok=tok, data=data,
                   ckpt=Checkpoints(cfg, plan.out, accelerator.device), base_file=loaded.file, t_start=t0)

    # ---- the stage runner

    def stage(self, name: str, g: int, fn, *args, then=None) -> None:
        """Run ``fn(self, g, *args)`` unless the manifest records it; then record it, time it, and call ``then(g)``."""
        if self.manifest.done(g, name):
            self.clock.done += 1
            return
        t0 = self.clock.start()
        detail = fn(self, g, *args)
        self.accelerator.wait_for_everyone()
        if self.is_main:  # the sha256 of what the stage wrote, recorded with it (collapse.loop.integrity)
            later = any(int(k) > g and v for k, v in self.manifest.data["generations"].items())
            secs = integrity.record(self.manifest, self.dir(g), g, name, later)
            self.manifest.data["checksum_seconds"] = round(self.manifest.data.get("checksum_seconds", 0.0) + secs, 4)
        self.manifest.mark(g, name, self.is_main)
        label = "fine-tune on real" if (name, g) == ("train", 0) else name
        self.clock.finish(f"gen {g}: {label}", t0, detail)
        if then is not None:  # what must follow the record: pruning old weights, logging the recorded row
            then(g)

    def samples(self, g: int) -> np.ndarray:
        """Corpus g as training rows (continuations, or prompt + continuation), read from disk once."""
        if g not in self.samples_cache:
            self.samples_cache[g] = load_samples(self.out, g, self.cfg.generation.keep_prompt)
        return self.samples_cache[g]

    def train_rows(self, g: int) -> np.ndarray:
        """Corpus g as the next generations train on it: curated (each pool row as often as its record says), or whole."""
        return curated_rows(self, g, self.samples(g)) if self.cfg.curate.active else self.samples(g)

    def weights(self, g: int, base) -> LazyModel:
        return LazyModel(lambda: self.ckpt.load(g, base), base if g == 0 else None)

    def generation0(self):
        if not self.cfg.train.fits_gen0:
            return self.model0
        model = LazyModel(self.ckpt.load_gen0)
        self.stage("train", 0, gen0_stage, model, then=self.log_model)
        return model()

    def boot_weights(self, unit: str, n: int) -> S.Weights:
        """Bootstrap weights over n units, the same in every generation (paired changes), drawn once."""
        key = (unit, n)
        if key not in self.boot_cache:
            k = self.data.oversample if unit == "samples" else 1  # k continuations of a prompt resample together
            self.boot_cache[key] = S.draw_weights(n, numpy_rng(self.cfg.seed, "bootstrap", unit),
                                                  self.cfg.stats.resamples, cluster=k)
        return self.boot_cache[key]

    def prune(self, g: int) -> None:
        self.ckpt.prune(g, self.is_main)

    def after_train(self, g: int) -> None:
        self.log_model(g)  # before pruning: the artifact copies the weights
        self.prune(g)

    def log_model(self, g: int) -> None:
        log_run_model(self, g)

    def log_corpus(self, g: int) -> None:
        log_run_corpus(self, g)

    def log_generation(self, g: int) -> None:
        if self.logger.has_generation(g):  # W&B off, another process, or a resumed W&B run that holds it
            return
        d = self.dir(g)
        log_generation(self.logger, read_json(d / "metrics.json"), np.load(d / "gen0_ppl.npy", allow_pickle=False),
                       d / "samples.parquet", g, PPL_BINS, pretrain=Path(self.model_ref) / "scratch.json",
                       generations=self.cfg.generations)

    # ---- the run folder and the logger

    @contextmanager
    def session(self):
        """Lock and open the folder and the logger; on any failure close them (a user error or a full disk
        becomes one error line; Ctrl-C says how to resume)."""
        try:
            self._open_folder()
            self._open_logger()
            yield
            self.logger.close(exit_code=0)
            self.logger = None
        except KeyboardInterrupt:
            log.error(f"interrupted: finished stages are kept in {self.out}; rerun the same command to resume.")
            close_quietly(self.logger, 1)
            raise
        except CollapseError:
            close_quietly(self.logger, 1)
            raise
        except Exception as e:
            close_quietly(self.logger, 1)
            if disk_full(e):
                where = getattr(e, "filename", None)
                where = where if isinstance(where, str) and not where.startswith("<") else str(self.out)
                raise DataError(f"no space left on device (writing {where}): free space and rerun the same "
                                "command to resume; finished stages are kept.") from None
            raise
        finally:
            if self.lock is not None:
                self.lock.close()
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    def _open_folder(self) -> None:
        """Locked, emptied (resume=never overwrite=true) or cleaned and checked (resume); config and counts written."""
        cfg, out, acc = self.cfg, self.out, self.accelerator
        if self.is_main:
            self.lock = lock_out_dir(out)
            if self.wipe:
                empty_out_dir(out)
            elif out.is_dir():
                clean_temp(out)
        acc.wait_for_everyone()
        self.manifest = m = Manifest.load_or_new(out / "manifest.json", cfg.fingerprint())
        if self.base_file is not None:  # a changed base file would make every finished generation another model's
            m.data["base_model_sha256"] = base_file_digest(out, self.base_file)
        if self.resuming:  # every process checks (read-only) so all agree on what is redone; the main one says it
            for note in verify_stages(m, out, cfg.generations, self.data.n_seq, self.ckpt.subdir,
                                      self.ckpt.continues_previous, self.ckpt.weights_problem, cfg.curate.active,
                                      pool=(pool_size(self.data.n_seq, cfg.curate.real_share), self.data.n_train),
                                      harness=bool(cfg.eval.harness.tasks)):
                if self.is_main:
                    log.warning(note)
        acc.wait_for_everyone()
        if self.is_main:
            write_text(out / "config.yaml", cfg.to_yaml())
            if not (out / "reference_counts.npy").is_file():
                with atomic_path(out / "reference_counts.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, self.data.ref_counts, allow_pickle=False)
            m.data.setdefault("base_model", self.model_ref)
            m.data["world_size"] = acc.num_processes  # of the latest (re)start
            if wants_wandb(cfg.wandb) and not m.data.get("wandb_run_id"):
                m.data["wandb_run_id"] = new_run_id()  # before wandb.init: a killed run resumes the same W&B run
            m.save(self.is_main)
            if self.resuming:  # idempotent; repairs a metrics.jsonl damaged after the fact
                rewrite_metrics_jsonl(out, m.measured(cfg.generations))

    def _open_logger(self) -> None:
        cfg, out, m, G = self.cfg, self.out, self.manifest, self.cfg.generations
        self.logger = make_logger(cfg.wandb, out, cfg.to_dict(), self.is_main, run_id=m.data.get("wandb_run_id"),
                                  resume=self.resuming, axis=StepAxis(train_steps(out)))
        if self.is_main and getattr(self.logger, "id", None) and m.data.get("wandb_run_id") != self.logger.id:
            m.data["wandb_run_id"] = self.logger.id
            m.save(self.is_main)
        per_gen, total = disk_estimate(cfg, self.ckpt, self.model0, self.data.n_seq)
        gc = cfg.generation
        log.info(f"collapse run → {out} ({'resuming' if self.resuming else 'new run'}); model {self.model_ref}; "
                 f"{G} generations × {self.data.n_seq} samples of {gc.new_tokens} tokens; regime {cfg.regime.kind}; "
                 f"train {cfg.train.method}/{cfg.train.init}; {self.accelerator.num_processes} process(es) on "
                 f"{self.accelerator.device.type}; disk ≈ {fmt_bytes(per_gen)} per generation, {fmt_bytes(total)} "
                 "for the run")
        if self.resuming and not isinstance(self.logger, NullLogger):
            relog_finished(self)  # what the killed process may not have flushed, and the W&B run lacks
        self.clock = StageClock(total_stages=4 * (G + 1) - 1 + (1 if cfg.train.fits_gen0 else 0)
                                + (G if cfg.curate.active else 0) + (G + 1 if cfg.eval.harness.tasks else 0), log=log)

    def finish(self) -> None:
        """Record the run complete, prune old weights, print the table, draw the report."""
        G = self.cfg.generations
        self.manifest.data["complete"] = True
        self.manifest.save(self.is_main)
        self.prune(G)
        if not self.is_main:
            return
        log.info("\n" + metrics_table([read_json(gen_dir(self.out, g) / "metrics.json") for g in range(G + 1)]))
        if os.environ.get("COLLAPSE_SKIP_REPORT") != "1":
            try:
                from collapse.report import make_report

                make_report([self.out], self.out / "report", quiet=True, vector=False)  # SVG: `collapse report`
                log.info(f"report: {self.out / 'report' / 'report.html'}")
                log_report(self.logger, self.out / "report" / "report.html", G)
            except Exception as e:  # noqa: BLE001 - the run's data are safe; the report can be redrawn
                log.warning(f"the report could not be drawn ({e}); run `collapse report {self.out}` to retry.")
        log.info(f"done in {fmt_s(time.perf_counter() - self.t_start)}: {self.out}/metrics.jsonl")
