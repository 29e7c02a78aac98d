"""A small logger protocol, W&B one backend of it: the window onto the recursion.

What a `collapse run` logs to W&B (``wandb.mode``, default ``auto``):

* per generation, against ``generation``: every scalar of metrics.jsonl, the tail loss and bucket shift per
  bucket, the gen0-perplexity histogram, a few sample texts, the tail loss of all buckets on one chart
  (``charts/tail_loss``), the bucket-shift heatmap and the test-perplexity plot as images;
* every fine-tune, against ``train/step`` (continuing across generations; ``train/generation`` says whose):
  ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s`` every ``wandb.log_every`` steps,
  ``val/nll`` and ``train/epoch_loss`` per epoch;
* artifacts with their lineage: corpus g (``samples.parquet``, made from model g) and model g (the adapter or
  model, made from the corpora it was trained on and its starting weights; ``wandb.log_weights=false`` keeps
  only that record), and ``report.html`` at the end (what is logged when: :mod:`collapse.tracking.run`). Offline, one run logs them all with the made-from
  metadata; online, each training and each generation is also a short run of the same group that *uses* its
  inputs and logs its output, so W&B's lineage graph draws the recursion (a graph is acyclic: one run cannot
  both make and use a corpus).

W&B is imported lazily, used on the main process only, never prompts, and the key never reaches the run
folder (the config we upload is the resolved config, which holds no key). ``run`` holds what a run logs,
stage by stage. May import config, errors, io, metrics (the row's figures), report (the charts); never the loop.

Resume. W&B's own step (``_step``) of every row is a function of (generation, training step) alone
(:class:`StepAxis`), so a resumed process logs each row at the step the killed one used. Rows and artifacts
the W&B run already has are not logged again: online, W&B says from which step on it lacks rows
(``starting_step``) and gives an artifact logged twice with the same content one version; offline, every
process writes its own segment file (``wandb/offline-run-*-<id>/``), so the earlier segments are read
(:func:`offline_state`): what the killed process flushed to disk is skipped, the rest is logged again.
"""

from collapse.tracking.mode import logged_in, new_run_id, resolve_mode, wants_wandb
from collapse.tracking.offline import offline_segments, offline_state
from collapse.tracking.protocol import Logger, NullLogger, flatten
from collapse.tracking.steps import StepAxis, train_steps
from collapse.tracking.wandb_logger import WandbLogger, close_quietly, make_logger

__all__ = ["Logger", "NullLogger", "StepAxis", "WandbLogger", "close_quietly", "flatten", "logged_in", "make_logger",
           "new_run_id", "offline_segments", "offline_state", "resolve_mode", "train_steps", "wants_wandb"]
