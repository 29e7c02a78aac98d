"""The weights of each generation in a run folder: where they live, when they are pruned, what they cost.

What a model's weights are and how they are trained, saved and read is its kind's (``collapse.models``);
this module keeps the run folder's side: gen_g/<subdir>, the missing-folder error, ``keep_checkpoints``,
generation 0 fine-tuned on real text (gen_000/model), and the disk estimate.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from collapse.config import Config
from collapse.errors import DataError, first_line
from collapse.loop.rundir import gen_dir
from collapse.models import kind_for


class LazyModel:
    """A model held in memory, or loaded (``load()``) the first time a stage needs it."""

    def __init__(self, load, model=None):
        self.load, self.model = load, model

    def __call__(self):
        if self.model is None:
            self.model = self.load()
        return self.model


class Checkpoints:
    """Start, save, load and prune the weights of each generation of one run folder."""

    def __init__(self, cfg: Config, out: Path, device: torch.device):
        self.cfg, self.out, self.device = cfg, out, device
        self.kind = kind_for(cfg.model.name_or_path)
        self.continues_previous = self.kind.continues_previous(cfg)  # generation g+1 trains from model g
        self.subdir = self.kind.weights_subdir(cfg)  # where model g (g >= 1) is reloaded from

    def start(self, g: int, base, prev):
        """A trainable copy of what generation g starts from (``prev``: a callable giving model g-1)."""
        return self.kind.start(self.cfg, g, base, prev() if self.continues_previous and prev is not None else None)

    def save(self, model, g: int, is_main: bool):
        """Model g into gen_g; returns the model the later stages of generation g use."""
        return self.kind.save(self.cfg, model, gen_dir(self.out, g), is_main)

    def save_gen0(self, model, is_main: bool, tokenizer=None):
        """Generation 0 fine-tuned on real text, merged, as gen_000/model (with its tokenizer); returns the merged model."""
        return self.kind.save_merged(model, gen_dir(self.out, 0) / "model", is_main, tokenizer)

    def load_gen0(self):
        folder = gen_dir(self.out, 0) / "model"
        try:
            return self.kind.load_merged(folder, self.device)
        except Exception as e:  # noqa: BLE001 - checked on resume already; this is a race with a deletion
            raise DataError(f"the fine-tuned generation 0 in {folder} cannot be read ({first_line(e, 120)}): "
                            "rerun the same command to redo it.") from None

    def load(self, g: int, base):
        """Model g rebuilt from disk (on resume)."""
        if g == 0:
            return base
        folder = gen_dir(self.out, g) / self.subdir
        if not folder.is_dir():
            raise DataError(f"the weights of generation {g} are missing from {folder.parent} (removed by "
                            "keep_checkpoints?): raise keep_checkpoints or start over with resume=never "
                            "overwrite=true.")
        return self.kind.load_generation(self.cfg, folder, base, self.device, g)

    def weights_problem(self, folder: Path) -> str | None:
        return self.kind.weights_problem(folder)

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
            for sub in {"adapter", "model", self.subdir}:  # a kind's own weights folder too
                shutil.rmtree(gen_dir(self.out, old) / sub, ignore_errors=True)

    def bytes_per_generation(self, model0) -> int:
        return self.kind.bytes_per_generation(self.cfg, model0)


def disk_estimate(cfg: Config, ckpt: Checkpoints, model0, n_seq: int) -> tuple[int, int]:
    """(bytes a generation adds, bytes of the whole run) on disk: samples, weights kept, small files.

    Samples: prompt and continuation ids (int32), the text (~4 bytes a token), the index; their
    shards double them while a generation is merged. Weights: the kind's ``bytes_per_generation``;
    keep_checkpoints bounds how many generations keep them. The report adds about 1 MiB.
    """
    gc, G = cfg.generation, cfg.generations
    samples = n_seq * (4 * (gc.prompt_tokens + gc.new_tokens) + 4 * gc.new_tokens + 8) + n_seq * 4  # + gen0_ppl
    small = 64 * 1024  # json files, metrics row, adapter config
    weights = ckpt.bytes_per_generation(model0)
    kept = G if cfg.keep_checkpoints is None else min(G, cfg.keep_checkpoints)
    gen0 = ckpt.kind.merged_bytes(cfg, model0) if cfg.train.fits_gen0 else 0
    report = 1 << 20
    total = (G + 1) * (samples + small) + kept * weights + samples + gen0 + report
    return samples + small + weights, total
