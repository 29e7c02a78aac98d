"""The weights of each generation: the one owner of ``train.method`` x ``train.init``.

    train.method=lora, train.init=base      model g = generation 0 + a fresh LoRA adapter trained on corpus g-1;
                                            saved as gen_g/adapter (reloaded onto generation 0)
    train.method=lora, train.init=previous  model g = model g-1 merged + a fresh adapter; saved as gen_g/adapter
                                            and gen_g/model (merged: generation g+1 starts from it)
    train.method=full, either init          every weight trained; saved as gen_g/model

Generation 0 is the base model, or (``train.gen0_epochs``) the base fine-tuned on the REAL training split,
saved merged as gen_000/model. Weights are safetensors only; ``keep_checkpoints`` prunes old ones.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from collapse.config import Config
from collapse.errors import DataError, first_line
from collapse.io import atomic_dir
from collapse.rundir import gen_dir
from collapse.seeding import seed_torch


def load_model_dir(folder: Path, device):
    """A saved (merged or fully fine-tuned) model, in the dtype it was saved in: the weights a run used in memory
    (a full fine-tune keeps float32 master weights even over a bf16 base; a merged LoRA model has the base's)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="auto", use_safetensors=True).to(device).eval()


def merged(model):
    """``model`` with any LoRA adapter folded into its weights (a plain transformers model)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def starting_model(init: str, base, prev):
    """A fresh copy of the weights a generation starts from: generation 0's (``base``) or model g-1's (merged)."""
    if init == "base" or prev is None:
        return copy.deepcopy(base)
    return merged(copy.deepcopy(prev))


class Checkpoints:
    """Attach, save, load and prune the weights of each generation of one run folder."""

    def __init__(self, cfg: Config, out: Path, device: torch.device):
        self.cfg, self.out, self.device = cfg, out, device
        # the count-based n-gram: no weights to train; its counts are saved as gen_g/model/counts.npz
        self.ngram = cfg.model.name_or_path == "ngram"
        self.lora = cfg.train.method == "lora" and not self.ngram
        # generation g+1 trains from model g (else from generation 0)
        self.continues_previous = cfg.train.init == "previous"
        # where model g (g >= 1) is reloaded from: the adapter (LoRA on the base) or the (merged) model
        self.subdir = "adapter" if self.lora and not self.continues_previous else "model"

    # ---- training

    def trainable(self, start, g: int):
        """``start`` made trainable for generation g: a fresh LoRA adapter, or every weight (full)."""
        from collapse.modeling import attach_lora

        # LoRA init (and dropout, if any) draw from the global torch RNG: seed it from (seed, g) right here,
        # so nothing the process did before (an earlier generation, or nothing at all on resume) matters
        seed_torch(self.cfg.seed, g, "init")
        if self.lora:
            return attach_lora(start, self.cfg.train.lora)
        if any(p.dtype in (torch.bfloat16, torch.float16) for p in start.parameters()):
            # a full fine-tune needs float32 master weights: in bf16, lr 2e-5 updates round away (80% of
            # the weights probed on an H200 never changed); compute stays bf16 through Accelerate's autocast
            start = start.float()
        for p in start.parameters():
            p.requires_grad_(True)
        return start

    def start(self, g: int, base, prev):
        """A trainable copy of the weights generation g starts from (``prev``: a callable giving model g-1)."""
        return self.trainable(starting_model(self.cfg.train.init, base, prev() if self.continues_previous else None), g)

    # ---- saving and loading

    def save(self, model, g: int, is_main: bool):
        """gen_g/adapter (LoRA) and, where a later generation continues from it, gen_g/model (merged).

        Returns the model the later stages of generation g use: with LoRA and train.init=previous the merged
        model -- exactly the weights saved in gen_g/model, so a resumed run that reloads them evaluates and
        samples the same numbers.
        """
        d = gen_dir(self.out, g)
        if self.ngram:
            from collapse import ngram

            if is_main:
                ngram.save(model, d / "model")
            return model
        folded = copy.deepcopy(model).merge_and_unload().eval() if self.lora and self.continues_previous else None
        if is_main:
            with atomic_dir(d / ("adapter" if self.lora else "model")) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
            if folded is not None:
                with atomic_dir(d / "model") as tmp:
                    folded.save_pretrained(tmp, safe_serialization=True)
        return folded if folded is not None else model

    def save_gen0(self, model, is_main: bool):
        """Generation 0 fine-tuned on real text, merged, as gen_000/model; returns the merged model."""
        model = merged(model)
        if is_main:
            with atomic_dir(gen_dir(self.out, 0) / "model") as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
        return model.eval()

    def load_gen0(self):
        folder = gen_dir(self.out, 0) / "model"
        try:
            return load_model_dir(folder, self.device)
        except Exception as e:  # noqa: BLE001 - checked on resume already; this is a race with a deletion
            raise DataError(f"the fine-tuned generation 0 in {folder} cannot be read ({first_line(e, 120)}): "
                            "rerun the same command to redo it.") from None

    def load(self, g: int, base):
        """Model g rebuilt from disk (on resume): the base with adapter g, or the saved (merged) model g."""
        if g == 0:
            return base
        folder = gen_dir(self.out, g) / self.subdir
        if not folder.is_dir():
            raise DataError(f"the weights of generation {g} are missing from {folder.parent} (removed by "
                            "keep_checkpoints?): raise keep_checkpoints or start over with resume=never "
                            "overwrite=true.")
        if self.ngram:
            from collapse import ngram

            try:
                return ngram.load(folder, getattr(base.config, "eos_token_id", None), self.device)
            except Exception as e:  # noqa: BLE001 - numpy raises several types for a damaged file
                raise DataError(f"the counts of generation {g} in {folder} cannot be read ({first_line(e, 120)}): "
                                f"delete {folder} and rerun the same command to recount them.") from None
        if not any(folder.glob("*.safetensors")):  # never let a library fall back to a pickled .bin
            raise DataError(f"the weights of generation {g} in {folder} are not in safetensors format: "
                            "delete the folder and rerun the same command to retrain it.")
        try:
            if self.subdir == "adapter":
                from peft import PeftModel

                return PeftModel.from_pretrained(copy.deepcopy(base), folder).to(self.device).eval()
            return load_model_dir(folder, self.device)
        except Exception as e:  # noqa: BLE001 - safetensors / peft / transformers raise several types
            raise DataError(f"the weights of generation {g} in {folder} cannot be read ({first_line(e, 120)}): "
                            f"delete {folder} and rerun the same command to retrain it.") from None

    def prune(self, g: int, is_main: bool) -> None:
        """Delete the weights of generations 1 .. g - keep_checkpoints (generation 0's are never deleted).

        Called after generation g's weights are saved and recorded, so what a resume needs is kept: model g
        (the stages of g still to run; with train.init=previous also generation g+1's training). Earlier
        weights are never read again (stages are only redone for the generation in flight).
        """
        keep = self.cfg.keep_checkpoints
        if not is_main or keep is None:
            return
        for old in range(1, g - keep + 1):
            for sub in ("adapter", "model"):
                shutil.rmtree(gen_dir(self.out, old) / sub, ignore_errors=True)

    # ---- sizes

    def bytes_per_generation(self, model0) -> int:
        """Bytes of the weights one generation keeps: the adapter (+ the merged model), or the whole model
        (a full fine-tune in float32, its master weights)."""
        if self.ngram:  # the counts: int64 history keys, totals, next ids and counts
            c = model0.counts
            return 8 * (len(c.uni) + sum(sum(len(a) for a in t) for t in c.tables)) + 1024
        if not self.lora:
            return master_bytes(model0)
        return adapter_bytes(model0, self.cfg) + (weights_bytes(model0) if self.continues_previous else 0)


def weights_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def master_bytes(model) -> int:
    """A fully trained copy of ``model`` as saved: float32 (or wider) weights."""
    return sum(p.numel() * max(4, p.element_size()) for p in model.parameters())


def adapter_bytes(model, cfg: Config) -> int:
    """Size of one generation's LoRA adapter: r x (in + out) per adapted layer, plus modules_to_save."""
    from transformers.pytorch_utils import Conv1D

    from collapse.modeling import default_targets

    lc = cfg.train.lora
    targets = set(lc.target_modules or default_targets(model))
    save = set(lc.modules_to_save or [])
    total = 0
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, (torch.nn.Linear, Conv1D)) and leaf in targets:
            total += lc.r * sum(mod.weight.shape) * mod.weight.element_size()
        if leaf in save:
            total += weights_bytes(mod)
    return total


def disk_estimate(cfg: Config, ckpt: Checkpoints, model0, n_seq: int) -> tuple[int, int]:
    """(bytes a generation adds, bytes of the whole run) on disk: samples, weights kept, small files.

    Samples: prompt and continuation ids (int32), the text (~4 bytes a token), the index; their
    shards double them while a generation is merged. Weights: see ``Checkpoints.bytes_per_generation``;
    keep_checkpoints bounds how many generations keep them. The report adds about 1 MiB.
    """
    gc, G = cfg.generation, cfg.generations
    samples = n_seq * (4 * (gc.prompt_tokens + gc.new_tokens) + 4 * gc.new_tokens + 8) + n_seq * 4  # + gen0_ppl
    small = 64 * 1024  # json files, metrics row, adapter config
    weights = ckpt.bytes_per_generation(model0)
    kept = G if cfg.keep_checkpoints is None else min(G, cfg.keep_checkpoints)
    gen0 = (master_bytes(model0) if cfg.train.method == "full" else weights_bytes(model0)) if cfg.train.gen0_epochs else 0
    report = 1 << 20
    total = (G + 1) * (samples + small) + kept * weights + samples + gen0 + report
    return samples + small + weights, total
