"""Everything a command checks before its first stage, and ``--check``: the same checks, printed as a plan.

``collapse run --check`` (and ``collapse measure --check``) validates the config, the data source and text
field, the split sizes, the model folder or hub id (without loading weights: a weightless skeleton on
the meta device), the tokenizer, context against prompt + new tokens, the LoRA targets, the out_dir
(writable; new, resumed or refused: in use, corrupt manifest, another config), the disk the run will
take, the W&B mode and the world size; it prints a short plan and exits 0, or exits 2 with one
``error:`` line. It writes nothing of its own (a hub id is looked up as the run would, and Hugging Face
may cache what it fetches). The real commands run the same checks first (``check_run`` /
``check_measure``) and go on from their results.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from collapse.config import Config
from collapse.errors import ConfigError

if TYPE_CHECKING:  # types only: the checks import what they use when they use it
    import numpy as np

    from collapse.data import RealData, Splits
    from collapse.models.kind import ModelFacts

log = logging.getLogger("collapse")


@dataclass
class Plan:
    """What a command is about to do, as facts: lines for ``--check``, warnings, and the out_dir's state."""

    command: str
    main: bool = True  # the main process (prints the plan)
    lines: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    out: Path | None = None
    resuming: bool = False
    wipe: bool = False

    def add(self, what: str, text: str) -> None:
        self.lines.append((what, text))

    def render(self) -> str:
        width = max((len(w) for w, _ in self.lines), default=0)
        head = f"collapse {self.command} --check: ready (nothing was written)"
        body = [f"  {w:<{width}}  {t}" for w, t in self.lines]
        return "\n".join([head, *body, *(f"  warning: {w}" for w in self.warnings)])


@dataclass
class Checked:
    """What the checks read on the way, handed explicitly to the loading step so nothing is read twice.

    ``ids`` (every split's token ids) and ``data`` (the run's blocks, or the measure's windows) are there where
    the tokenizer was at hand; where it comes with a model still to be built (``facts.tokenizer is None``),
    the loading step makes them with it."""

    splits: Splits
    facts: ModelFacts
    ids: dict[str, list[np.ndarray]] | None = None
    data: RealData | np.ndarray | None = None


# ---------------------------------------------------------------------- settings that cannot act


def ineffective_settings(cfg: Config, command: str) -> list[str]:
    """Settings that are valid but cannot act with the rest of the config (one warning line each)."""
    gc, out = cfg.generation, []
    if gc.num_beams > 1:
        idle = [f"generation.{k}={getattr(gc, k)}" for k, off in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0),
                                                                   ("min_p", 0.0)) if getattr(gc, k) != off]
        if idle:
            out.append(f"{', '.join(idle)} has no effect with beam search (generation.num_beams={gc.num_beams}): "
                       "beams keep the most likely continuations.")
    elif gc.temperature == 0 and (gc.top_k or gc.top_p < 1.0 or gc.min_p > 0.0):
        out.append("generation.top_k / top_p / min_p have no effect with generation.temperature=0 (greedy decoding).")
    if command != "run":
        return out
    from collapse.loop.regimes import USES

    uses, kind = USES.get(cfg.regime.kind, ()), cfg.regime.kind
    readers = lambda key: ", ".join(f"`{k}`" for k, u in USES.items() if key in u)  # noqa: E731
    if "real_fraction" not in uses and cfg.regime.real_fraction != 0.1:
        out.append(f"regime.real_fraction={cfg.regime.real_fraction} has no effect with regime.kind={kind} "
                   f"(only {readers('real_fraction')} draw a fraction of real rows).")
    if "size" not in uses and cfg.regime.size is not None:
        out.append(f"regime.size has no effect with regime.kind={kind} (only {readers('size')}).")
    out += idle_curate_settings(cfg)
    lc = cfg.train.lora
    if cfg.train.method == "full" and (lc.target_modules or lc.modules_to_save):
        out.append("train.lora.* has no effect with train.method=full (every weight is trained).")
    return out


def idle_curate_settings(cfg: Config) -> list[str]:
    """curate.* settings changed from their defaults that the chosen curator does not read."""
    import dataclasses

    from collapse.config.curate import POOL_KEYS, CurateConfig
    from collapse.loop.curate import USES

    c, default = cfg.curate, CurateConfig()
    changed = [f.name for f in dataclasses.fields(c) if f.name not in ("kind", *POOL_KEYS)
               and getattr(c, f.name) != getattr(default, f.name)]
    idle = [k for k in changed if k not in USES.get(c.kind, ())]
    if not idle:
        return []
    return [f"{', '.join(f'curate.{k}' for k in idle)} has no effect with curate.kind={c.kind} "
            f"(it reads {', '.join(f'curate.{k}' for k in USES.get(c.kind, ())) or 'no setting'})."]


def curate_line(cfg: Config) -> str:
    """The plan's line for the curate stage; a curator whose library is missing is refused here."""
    from collapse.loop.curate import USES, missing_library, resolved

    problem = missing_library(cfg.curate.kind)
    if problem:
        raise ConfigError(problem)
    c = resolved(cfg.curate)
    settings = ", ".join(f"{k}={round(getattr(c, k), 4)}" if isinstance(getattr(c, k), float) else f"{k}={getattr(c, k)}"
                         for k in USES.get(c.kind, ()))
    pool = "the samples"
    if c.pooled:
        pool = (f"a pool of {c.oversample} samples per prompt" if c.oversample > 1 else "a pool of the samples") + (
            f" with real rows of unknown origin as {c.real_share:.0%} of it" if c.real_share else "")
    return (f"{c.kind} ({settings}) on generations 0..{cfg.generations - 1}, choosing from {pool}; what it keeps "
            "resampled to one row per prompt (collapse.loop.curate.fill)")


def check_text(cfg: Config) -> None:
    """The text figures' libraries, found without importing them (``--check`` stays fast)."""
    import importlib.util

    need = {"mauve": ("mauve", "faiss", "sklearn")} if cfg.eval.mauve else {}
    if cfg.eval.self_bleu:
        need["self_bleu"] = ("nltk",)
    missing = [f"eval.{k} needs {m}" for k, mods in need.items() for m in mods if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{'; '.join(missing)}, which is not installed: pip install 'model-collapse[text]' "
                          "(or turn the figure off).")
    name = cfg.eval.mauve_features
    if cfg.eval.mauve and name != "gen0":  # the featurizer, found now rather than after generation 0 is fitted
        from collapse.errors import CollapseError
        from collapse.models.hf import model_source

        try:
            src = model_source(name)
            from transformers import AutoConfig

            AutoConfig.from_pretrained(src.where)
        except (CollapseError, OSError, ValueError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"eval.mauve_features={name} cannot be loaded ({why}): name a local model folder, a hub "
                              "id this machine can download, or gen0.") from None


def check_harness(cfg: Config, plan: Plan) -> None:
    """lm-eval's tasks (eval.harness): the extra, every local folder and every name, read as text (no task index)."""
    hc = cfg.eval.harness
    if not hc.tasks:
        return
    from collapse.config.schema import DataConfig
    from collapse.tasks import check

    hub = check(hc.tasks)
    if hub:
        plan.warnings.append(f"{', '.join(hub)}: lm-eval reads their data from the Hugging Face Hub at generation 0's "
                             "harness stage (and cache them after the first download).")
    plan.add("harness", f"lm-eval: {', '.join(hc.tasks)} on every generation"
                        + (f", the first {hc.limit} examples a task" if hc.limit else ""))
    split = ("source", "split_seed", "val_fraction", "test_fraction", "max_documents", "min_chars", "split")
    shipped = [t for t in hc.tasks if t.startswith(("kjv_cloze", "kjv_lambada"))]
    if shipped and any(getattr(cfg.data, k) != getattr(DataConfig(), k) for k in split):
        plan.warnings.append(f"{shipped[0]}'s passages are the test chapters of the default KJV split (data.split_seed=0, "
                             "5% validation, 5% test), its buckets the ranks of that training text's words: this "
                             "run's data differ, so its passages may be training text.")


def check_pool(cfg: Config, d) -> None:
    """A pool's real rows must exist: enough real blocks whose continuation holds no EOS (as a sample's cannot), and
    real rows left over for the detector that share no text with them."""
    if not cfg.curate.real_share:
        return
    from collapse.loop.pool import eligible_blocks, real_count

    gc, h = cfg.generation, cfg.curate.real_share
    m = real_count(d.n_seq, h)
    ok = len(eligible_blocks(d.blocks, gc.prompt_tokens, tuple(d.suppress), d.prompt_blocks))
    if ok < m:
        raise ConfigError(f"curate.real_share={h} needs {m:,} real pool rows beside {d.n_seq:,} samples, and the "
                          f"training text has {ok:,} blocks of {d.blocks.shape[1]} tokens that no prompt comes from "
                          "with no EOS in the continuation: lower curate.real_share or generation.num_sequences, or "
                          "use more data.")
    L, r = d.blocks.shape[1], d.real_rows.shape[1]
    spent = m * ((L + r - 2) // r + 1)  # the real rows a pool block can overlap, at most
    if cfg.curate.kind == "detector" and len(d.real_rows) - spent < 2:
        raise ConfigError(f"curate.real_share={h} puts {m:,} real blocks in the pool and leaves the detector fewer than "
                          "2 real training rows that share no text with them: lower curate.real_share or "
                          "generation.num_sequences, or use more data.")


# ---------------------------------------------------------------------- out_dir


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _creatable(out: Path) -> None:
    """out_dir exists as a writable folder, or can be created (probed with an empty folder, removed at once)."""
    anc = _nearest_existing(out)
    if not anc.is_dir():
        raise ConfigError(f"out_dir {out} cannot be created: {anc} is a file, not a folder. Choose another out_dir.")
    if anc == out:
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"out_dir {out} is not writable: choose another out_dir.")
        return
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".collapse-probe-", suffix=".tmp", dir=anc))  # .tmp: cleaned if killed
    except OSError as e:
        raise ConfigError(f"out_dir {out} cannot be created in {anc} ({e.strerror or e}): choose another "
                          "out_dir.") from None


def check_out_dir(cfg: Config, plan: Plan) -> None:
    try:
        _check_out_dir(cfg, plan)
    except PermissionError as e:
        raise ConfigError(f"out_dir {cfg.out_dir} cannot be used: permission denied on {e.filename or cfg.out_dir}. "
                          "Choose another out_dir.") from None


def _check_out_dir(cfg: Config, plan: Plan) -> None:
    from collapse.loop.rundir import Manifest, check_unlocked, prepare_out_dir

    out = Path(cfg.out_dir)
    if plan.command == "measure":
        if out.exists() and not out.is_dir():
            raise ConfigError(f"out_dir {out} is a file, not a folder: choose another out_dir.")
        _creatable(out)
        plan.out = out
        plan.add("out_dir", f"{out}: {'files replaced' if out.is_dir() and any(out.iterdir()) else 'new'}")
        return
    plan.out, plan.resuming, plan.wipe = prepare_out_dir(cfg)
    _creatable(out)
    if out.is_dir():
        check_unlocked(out)
    if plan.resuming:
        Manifest.load_or_new(out / "manifest.json", cfg.fingerprint())  # a corrupt manifest is refused now
    state = "resumed (same config)" if plan.resuming else (
        "emptied, then a new run (resume=never overwrite=true)" if plan.wipe else "new run")
    plan.add("out_dir", f"{out}: {state}")


# ---------------------------------------------------------------------- data and model


def check_data(cfg: Config, plan: Plan) -> Splits:
    from collapse.data import load_splits

    s = load_splits(cfg.data)
    field_note = "" if cfg.data.source == "kjv" else f", text field `{cfg.data.text_field}`"
    if cfg.data.source == "synthetic":
        from collapse.data.synthetic import source

        sc, src = cfg.data.synthetic, source(cfg.data.synthetic)
        field_note = (f" (order {sc.order}, {sc.vocab:,} symbols, Zipf {sc.zipf:g}, entropy rate "
                      f"{src.entropy_rate:.3f} nats/token)")
    plan.add("data", f"{cfg.data.source}{field_note}: {len(s.train):,} train / {len(s.validation):,} validation / "
                     f"{len(s.test):,} test documents")
    return s


def check_model(cfg: Config, plan: Plan, splits: Splits, device) -> ModelFacts:
    """The model's skeleton and tokenizer (its kind's facts), weights not loaded; with `run`, what must fit."""
    from collapse.models import kind_for

    kind = kind_for(cfg.model.name_or_path)
    facts = kind.facts(cfg, splits, device)
    if plan.command == "run":
        kind.check_fits(cfg, facts.skeleton)
    plan.add("model", facts.label)
    return facts


def check_processes(cfg: Config, world: int, builds_scratch: bool, command: str) -> None:
    """What depends on the launch's process count, before any stage: else a stage would refuse it after writing."""
    from collapse.errors import ConfigError

    tc = cfg.train
    if command == "run" and cfg.model.name_or_path != "ngram" and tc.batch_size % (world * tc.grad_accum):
        raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by processes × train.grad_accum "
                          f"= {world} × {tc.grad_accum}.")
    if builds_scratch and cfg.model.scratch.batch_size % world:
        raise ConfigError(f"model.scratch.batch_size={cfg.model.scratch.batch_size} must be divisible by the {world} "
                          "processes.")


def wandb_mode(cfg: Config) -> str:
    from collapse.tracking import resolve_mode

    mode, why = resolve_mode(cfg.wandb.mode)
    if mode == "disabled":
        return "disabled" + (f" ({why})" if why else "")
    note = f" ({why}" + ("; the `wandb sync` command is printed at the end)" if mode == "offline" else ")") if why else ""
    return f"{mode}{note}, project {cfg.wandb.project}"


def _world(accelerator) -> str:
    return f"{accelerator.num_processes} process(es) on {accelerator.device.type}"


# ---------------------------------------------------------------------- the two commands


def check_run(cfg: Config, accelerator) -> tuple[Plan, Checked]:
    """Every check `collapse run` makes before its first stage; raises CollapseError, writes nothing."""
    from collapse.data import real_data, split_ids
    from collapse.loop.checkpoints import Checkpoints, disk_estimate
    from collapse.models import kind_for
    from collapse.models.hf import never_sampled, vocab_size
    from collapse.runtime import fmt_bytes

    plan = Plan("run", main=accelerator.is_main_process, warnings=ineffective_settings(cfg, "run"))
    check_out_dir(cfg, plan)
    check_text(cfg)
    check_harness(cfg, plan)
    splits = check_data(cfg, plan)
    kind_for(cfg.model.name_or_path).check_early(cfg, splits, "run")
    checked = Checked(splits, check_model(cfg, plan, splits, accelerator.device))
    skel, tok = checked.facts.skeleton, checked.facts.tokenizer
    check_processes(cfg, accelerator.num_processes, builds_scratch=tok is None, command="run")
    if plan.resuming and checked.facts.file is not None:  # before the weights are read for nothing
        from collapse.loop.rundir import base_file_digest

        base_file_digest(plan.out, checked.facts.file)
    if cfg.data.source == "synthetic":  # kl_truth reads whole truth documents after a separator
        from collapse.errors import ModelError
        from collapse.models import context_length

        need, ctx = cfg.data.synthetic.doc_tokens + 1, context_length(skel)
        if need > ctx:
            raise ModelError(f"data.synthetic.doc_tokens + 1 = {need} exceeds the model's context of {ctx} tokens "
                             "(kl_truth reads whole documents): lower data.synthetic.doc_tokens.")
    gc = cfg.generation
    if tok is not None:
        checked.ids = split_ids(tok, splits, checked.facts.token_cache)
        checked.data = d = real_data(cfg, checked.ids, tok.eos_token_id, vocab_size(skel, tok), never_sampled(tok))
        n_seq = d.n_seq
        plan.add("blocks", f"{len(d.real_rows):,} real training rows of {d.real_rows.shape[1]} tokens; "
                           f"{len(d.val_blocks):,} validation and {len(d.test_blocks):,} test blocks of "
                           f"{d.test_blocks.shape[1]}")
        check_gen0_budget(cfg, d)
        check_pool(cfg, d)
    else:
        n_seq = (gc.num_sequences or 0) * cfg.curate.oversample
        plan.add("blocks", "counted once the scratch tokenizer is built")
    if cfg.train.fits_gen0:
        plan.add("gen 0", gen0_line(cfg))
    per = f"{n_seq:,}" if n_seq else "one per training block"
    if cfg.curate.oversample > 1:
        per += f" ({cfg.curate.oversample} per prompt)"
    plan.add("samples", f"{per} × {gc.new_tokens} tokens from {gc.prompt_tokens}-token real prompts, "
                        f"{cfg.generations} generations, regime {cfg.regime.kind}")
    if cfg.curate.active:
        plan.add("curate", curate_line(cfg))
    plan.add("train", kind_for(cfg.model.name_or_path).training_line(cfg, skel))
    if n_seq:
        per_gen, total = disk_estimate(cfg, Checkpoints(cfg, plan.out, accelerator.device), skel, n_seq)
        free = _free_bytes(plan.out)
        plan.add("disk", f"≈ {fmt_bytes(per_gen)} per generation, {fmt_bytes(total)} for the run"
                         + (f"; {fmt_bytes(free)} free" if free is not None else ""))
        if free is not None and free < total:
            plan.warnings.append(f"only {fmt_bytes(free)} free where out_dir is; the run may need about "
                                 f"{fmt_bytes(total)}.")
    plan.add("W&B", wandb_mode(cfg))
    plan.add("processes", _world(accelerator))
    return plan, checked


def gen0_line(cfg: Config) -> str:
    tc = cfg.train
    if tc.gen0_blocks:
        return (f"the base model fitted to {tc.gen0_blocks:,} real training rows (one pass, batch {tc.batch_size}), "
                f"REAL validation every {tc.gen0_val_every} steps, the best look kept")
    return f"the base model fitted to the real training split for {tc.gen0_epochs} epoch(s)"


def check_gen0_budget(cfg: Config, data) -> None:
    """train.gen0_blocks draws rows without repeats: no more than the split holds."""
    from collapse.errors import ConfigError

    n = len(data.real_rows)
    if cfg.train.gen0_blocks > n:
        raise ConfigError(f"train.gen0_blocks={cfg.train.gen0_blocks} exceeds the {n:,} real training rows of "
                          f"{data.real_rows.shape[1]} tokens: lower it, or use train.gen0_epochs for whole passes.")


def check_measure(cfg: Config, accelerator) -> tuple[Plan, Checked]:
    """Every check `collapse measure` makes before it generates; raises CollapseError, writes nothing."""
    from collapse.errors import ModelError
    from collapse.models import context_length, kind_for

    plan = Plan("measure", main=accelerator.is_main_process, warnings=ineffective_settings(cfg, "measure"))
    check_out_dir(cfg, plan)
    splits = check_data(cfg, plan)
    kind = kind_for(cfg.model.name_or_path)
    kind.check_early(cfg, splits, "measure")  # before a model would be built for nothing
    checked = Checked(splits, check_model(cfg, plan, splits, accelerator.device))
    tok = checked.facts.tokenizer
    check_processes(cfg, accelerator.num_processes, builds_scratch=tok is None, command="measure")
    w, ctx = cfg.measure.window, context_length(checked.facts.skeleton)
    if w > ctx:
        raise ModelError(f"measure.window={w} exceeds the model's context of {ctx} tokens: use measure.window<={ctx}"
                         f"{kind.context_hint(cfg)}.")
    if tok is not None:  # the examples long enough for the window, counted with the model's tokenizer
        from collapse.data import measure_docs, measure_windows, split_ids

        checked.ids = split_ids(tok, splits, checked.facts.token_cache)
        checked.data = measure_windows(measure_docs(checked.ids, cfg.measure.split), w, cfg.measure.samples, cfg.measure.split)
    from collapse.data import split_label

    n = f"{len(checked.data)}" if checked.data is not None else f"up to {cfg.measure.samples}"
    plan.add("measure", f"{n} {split_label(cfg.measure.split)} examples of {w} tokens: the model continues the first {w // 2} "
                        f"for {w // 2} tokens")
    if cfg.measure.decodings:
        from collapse.config.decodings import CONTROL

        if checked.ids is not None and not any(len(d) >= w // 2 for d in checked.ids["train"]):
            from collapse.errors import DataError

            raise DataError(f"no training document has {w // 2} tokens for the control's windows (measure.decodings): "
                            "lower measure.window or use longer documents.")

        plan.add("decodings", f"{len(cfg.measure.decodings)} on the same prompts: "
                              + ", ".join(d["name"] for d in cfg.measure.decodings)
                              + f"; beside them `{CONTROL}` (random real training windows: the control)")
    plan.add("W&B", wandb_mode(cfg))
    plan.add("processes", _world(accelerator))
    return plan, checked


def _free_bytes(out: Path) -> int | None:
    try:
        return shutil.disk_usage(_nearest_existing(out)).free
    except OSError:  # pragma: no cover
        return None
