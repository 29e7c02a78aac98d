"""One generation's fine-tune (and the scratch model's pre-training): a plain Accelerator loop.

Data are fixed-length token rows (no padding). The order of rows is a seeded permutation per epoch,
dealt to processes by index, so the same run gives the same updates for a given world size.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from collapse import fault
from collapse.errors import ConfigError, TrainingError
from collapse.metrics.evaluate import mean_nll
from collapse.seeding import numpy_rng


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to 10% of peak."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def epoch_order(n: int, global_batch: int, *key) -> np.ndarray:
    """A permutation of 0..n-1, wrapped so its length is a multiple of ``global_batch`` (as DistributedSampler pads)."""
    perm = numpy_rng(*key).permutation(n)
    pad = (-len(perm)) % global_batch
    if pad:
        perm = np.concatenate([perm, perm[:pad]])
    return perm


CHECK_EVERY = 32  # steps between looks at the losses (a non-finite loss is reported with its step)


def _check_finite(losses: torch.Tensor, start: int, stop: int, first_step: int, epoch: int, desc: str, lr: float):
    """Raise TrainingError at the first non-finite loss among ``losses[start:stop]`` (one device sync)."""
    seen = losses[start:stop]
    if bool(torch.isfinite(seen).all()):
        return
    i = int((~torch.isfinite(seen)).nonzero()[0, 0]) + start
    raise TrainingError(f"{desc}: the training loss became {seen[i - start].item()} at step {first_step + i} "
                        f"(epoch {epoch}): lower train.lr (now {lr}) or check the data.")


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def finetune(model, rows: np.ndarray, val_blocks: np.ndarray, cfg, accelerator, key: tuple,
             show_progress: bool = True, desc: str = "train", on_step=None, curve=None, val_every: int = 0) -> dict:
    """Train ``model`` (its trainable parameters) on ``rows`` [N, L] for ``cfg.epochs`` epochs.

    After each epoch the mean NLL on the REAL validation blocks is computed; with ``select=best_val``
    the trainable weights of the best epoch are restored at the end (the paper's choice), with
    ``last`` the final ones stay. Raises TrainingError on a non-finite loss.

    ``val_every`` > 0 (generation 0's budgeted fit) also looks at the validation loss before the first step and
    every ``val_every`` steps; the best look of all (the untrained model's included) is the one kept, and the
    result gains ``looks`` (step, val_nll), ``val_nll_before`` and ``step_selected``.

    The result's ``curve`` holds every step's loss, learning rate and gradient norm (when clipping is on).
    ``curve`` (optional) is told them as they are read back (``curve.steps(rows, tokens_per_s)``, every
    CHECK_EVERY steps: no extra wait for the device) and each epoch's validation NLL (``curve.epoch(row)``).
    """
    from tqdm.auto import tqdm

    world = accelerator.num_processes
    rank = accelerator.process_index
    params = [p for p in model.parameters() if p.requires_grad]
    fused = accelerator.device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    pmodel, opt = accelerator.prepare(model, opt)
    pmodel.train()
    # train.batch_size is the global batch of one optimizer step, whatever the number of processes, so
    # 1 and N processes take the same steps on the same rows (DDP averages the per-process gradients)
    global_batch = cfg.batch_size
    if global_batch % (world * cfg.grad_accum):
        raise ConfigError(f"train.batch_size={cfg.batch_size} must be divisible by processes × train.grad_accum "
                          f"= {world} × {cfg.grad_accum}.")
    micro = global_batch // (world * cfg.grad_accum)
    steps_per_epoch = math.ceil(len(rows) / global_batch)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_ratio * total))
    history, points, looks = [], [], []
    best = (float("inf"), None, -1)
    best_step = 0

    def look(at: int) -> float:
        """The REAL validation loss now; kept as the best so far where it is (with select=best_val)."""
        nonlocal best, best_step
        val = mean_nll(pmodel, val_blocks, accelerator=accelerator)
        pmodel.train()
        looks.append({"step": at, "val_nll": val})
        if val < best[0] and cfg.select == "best_val":
            best, best_step = (val, _trainable_state(accelerator.unwrap_model(pmodel)), epoch + 1), at
        return val

    epoch = 0
    if val_every > 0:
        look(0)  # the model before any step: a fit that never beats it keeps it
    # No step waits for the device: the rows live on it (one copy, not one per step), each epoch's order is
    # one upload, and the step losses stay there until a check every CHECK_EVERY steps and at the epoch's
    # end. The host then queues step s+1 while the device computes step s (on a GPU the per-step launch
    # overhead of a 100M model is about its compute time). The updates are the same as with a sync per step.
    dev_rows = torch.as_tensor(rows, device=accelerator.device).long()
    t0 = time.perf_counter()
    step = 0
    tokens = 0
    t_seen, tokens_seen = t0, 0  # the tokens/s of each stretch between two looks at the losses
    # the bar is closed (its line cleared) even when training fails, so an error line stands alone
    with tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
              disable=not (show_progress and accelerator.is_main_process)) as bar:
        for epoch in range(cfg.epochs):
            order = torch.as_tensor(epoch_order(len(rows), global_batch, *key, "epoch", epoch), device=accelerator.device)
            losses = torch.zeros(steps_per_epoch, dtype=torch.float32, device=accelerator.device)
            norms = torch.full((steps_per_epoch,), float("nan"), dtype=torch.float32, device=accelerator.device)
            lrs = []
            checked = 0
            for s in range(steps_per_epoch):
                lrs.append(lr_at(step, total, cfg.lr, warmup))
                for g in opt.param_groups:
                    g["lr"] = lrs[-1]
                chunk = order[s * global_batch:(s + 1) * global_batch]
                for a in range(cfg.grad_accum):
                    sub = chunk[a * micro * world:(a + 1) * micro * world]
                    batch = dev_rows[sub[rank * micro:(rank + 1) * micro]]
                    ctx = accelerator.no_sync(pmodel) if a + 1 < cfg.grad_accum else contextlib.nullcontext()
                    with ctx, accelerator.autocast():
                        loss = lm_loss(pmodel, batch)
                    if fault.active("nan", key[1] if len(key) > 1 else 0, step):
                        loss = loss * float("nan")
                    accelerator.backward(loss / cfg.grad_accum)
                    losses[s] += loss.detach().float() / cfg.grad_accum
                    tokens += batch.numel() * world
                if cfg.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    if isinstance(norm, torch.Tensor):
                        norms[s] = norm.detach().float()
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                if (s + 1) % CHECK_EVERY == 0 or s + 1 == steps_per_epoch:
                    if world > 1:  # the mean over processes: the run's loss, and a NaN on one rank stops every rank
                        losses[checked:s + 1] = accelerator.reduce(losses[checked:s + 1].clone(), reduction="mean")
                    _check_finite(losses, checked, s + 1, step - (s + 1), epoch, desc, cfg.lr)
                    seen = _read_back(losses, norms, lrs, checked, s + 1, step - (s + 1), epoch + 1)
                    points += seen
                    now = time.perf_counter()
                    if curve is not None:
                        curve.steps(seen, (tokens - tokens_seen) / max(now - t_seen, 1e-9))
                    t_seen, tokens_seen = now, tokens
                    checked = s + 1
                    bar.set_postfix(loss=f"{losses[s].item():.3f}", refresh=False)
                bar.update(1)
                if on_step is not None:
                    on_step(step)
                if val_every > 0 and step % val_every == 0 and s + 1 < steps_per_epoch:
                    t_pause = time.perf_counter()
                    bar.set_postfix(val=f"{look(step):.3f}", refresh=False)
                    t_seen += time.perf_counter() - t_pause  # validation is not training time
            losses = losses.cpu().numpy()
            if val_every > 0:
                val = look(step)
            else:
                val = mean_nll(pmodel, val_blocks, accelerator=accelerator)
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses.astype(np.float64))), "val_nll": val})
            if curve is not None:
                curve.epoch({**history[-1], "step": step})
            t_seen = time.perf_counter()  # validation is not training time
            if val_every <= 0 and val < best[0] and cfg.select == "best_val":
                best = (val, _trainable_state(accelerator.unwrap_model(pmodel)), epoch + 1)
            pmodel.train()
    chosen = cfg.epochs
    if cfg.select == "best_val" and best[1] is not None:
        chosen = best[2]
        unwrapped = accelerator.unwrap_model(pmodel)
        with torch.no_grad():
            for n, p in unwrapped.named_parameters():
                if n in best[1]:
                    p.copy_(best[1][n])
    dt = time.perf_counter() - t0
    model = accelerator.unwrap_model(pmodel)
    # without accelerate's autocast hook (the forward it kept aside): the trained model is evaluated and sampled in
    # its own dtype, as generation 0 is (keep_fp32_wrapper=False would strip transformers' own decorators too)
    if "_original_forward" in model.__dict__:
        model.forward = model.__dict__.pop("_original_forward")
    model.eval()
    accelerator.free_memory()
    out = {"history": history, "epoch_selected": chosen,
           "train_loss": history[chosen - 1]["train_loss"], "val_nll": history[chosen - 1]["val_nll"],
           "steps": step, "seconds": dt, "tokens_per_s": tokens / dt if dt > 0 else 0.0, "curve": points}
    if val_every > 0:  # the looks decide, not the epochs
        sel = best_step if cfg.select == "best_val" and best[1] is not None else step
        out.update(looks=looks, val_nll_before=looks[0]["val_nll"], step_selected=sel, tokens=tokens,
                   val_nll=next(lk["val_nll"] for lk in looks if lk["step"] == sel))
        if sel == 0:  # the untrained model was kept: no epoch's weights, no training loss describe it
            out.update(epoch_selected=0, train_loss=None)
    return out


def _read_back(losses: torch.Tensor, norms: torch.Tensor, lrs: list[float], start: int, stop: int, first_step: int,
               epoch: int) -> list[dict]:
    """Steps ``start:stop`` of this epoch as curve points (step counted from 1 over the whole fine-tune)."""
    both = torch.stack([losses[start:stop], norms[start:stop]]).cpu().tolist()
    return [{"step": first_step + start + i + 1, "epoch": epoch, "loss": loss, "lr": lrs[start + i],
             "grad_norm": None if math.isnan(norm) else norm}
            for i, (loss, norm) in enumerate(zip(*both))]
