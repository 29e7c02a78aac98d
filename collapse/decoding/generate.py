"""Batched, seeded sampling, sharded across processes, streamed to a sink.

Sampling itself (:func:`sample_batch`) is a pure function of (model, prompts, settings, generator): a
plain cached decode loop. Each step draws exactly from ``softmax(logits / T)`` by inverse-CDF sampling
with ONE uniform number per row (:func:`sample_icdf`): softmax in float32, cumulative sum in float64,
binary search. The uniforms of a whole batch (``new_tokens x B``) are drawn up front from the batch's
generator, so decoding the rows of a batch in smaller chunks (what is fastest on a CPU: a chunk's KV
working set stays in cache memory) gives the same tokens as decoding them all at once. Prompts of one batch
share a length, so no padding is ever computed. Beam search (:func:`_beam_decode`) is HF ``generate``'s,
step for step, on the same engines (``generation.engine=hf-generate``: HF ``generate`` itself).

Why not Gumbel-max (``argmax(logits + G)``): it needs B x V random numbers per step, a large share of a
CPU step (docs/benchmarks.md, "Measurements behind the code's choices"). It is also coarser: float32 uniforms cap the noise at
-log(-log(1 - 2^-24)) = 16.6, so a token more than ~16.6 nats below the best can never be drawn, where
the float64 CDF keeps probabilities down to float32's exp underflow (~1e-38).

Which sequences share a random stream is fixed by ``generation.batch_size`` alone: batch ``b`` holds
sequences ``b*B .. (b+1)*B-1`` and draws from ``seeded_generator(*key, b)``, whichever process runs it.
So the corpus is the same for 1 or N processes, and a resumed run regenerates identical batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from collapse.config import GenerationConfig
from collapse.models.kind import kind_of
from collapse.seeding import seeded_generator


def _filter_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, in that order (as HF's warpers do); each off at its default."""
    if cfg.temperature > 0 and cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    if cfg.min_p > 0.0:  # drop p < min_p * p_max; the most likely token always stays
        p = logits.softmax(-1)
        logits = logits.masked_fill(p < cfg.min_p * p.max(-1, keepdim=True).values, float("-inf"))
    return logits


def _penalize_ids(scores: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's ``RepetitionPenaltyLogitsProcessor`` on ``scores`` [R, V] in place, for the tokens ``ids`` [R, T]
    of each row (prompt and continuation; repeats are harmless): gather, scale, scatter."""
    s = scores.gather(1, ids)
    scores.scatter_(1, ids, torch.where(s < 0, s * penalty, s / penalty))
    return scores


def sample_icdf(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row from ``softmax(logits)`` [B, V] given uniforms ``u`` [B] in [0, 1): token ids [B].

    Token i is drawn iff ``C[i-1] <= u * C[V-1] < C[i]`` with ``C`` the float64 cumulative sum of
    ``softmax(logits)`` (float32, one fused pass), so its probability is ``p_i`` to float32 precision;
    tokens at ``-inf`` (filtered, suppressed) have an empty interval and are never drawn.
    """
    c = torch.softmax(logits, -1, dtype=torch.float32).cumsum(-1, dtype=torch.float64)
    idx = torch.searchsorted(c, u.to(torch.float64).view(-1, 1) * c[:, -1:], right=True)
    return idx.view(-1).clamp_(max=logits.shape[-1] - 1)


def decode_chunk(device: torch.device, batch: int) -> int:
    """Rows decoded together: the whole batch on a GPU; on a CPU 64 rows per thread, so that each thread's
    share of the per-step working set (logits and sampling passes: 64 x 4096 floats = 1 MiB) stays in its
    L2 cache (docs/benchmarks.md, "Measurements behind the code's choices")."""
    if device.type != "cpu":
        return batch
    return max(1, min(batch, 64 * torch.get_num_threads()))


@torch.inference_mode()
def sample_batch(model, prompts: torch.Tensor, new_tokens: int, cfg: GenerationConfig,
                 generator: torch.Generator, suppress_ids: tuple[int, ...] = (), *, chunk: int | None = None,
                 engines: dict | None = None) -> torch.Tensor:
    """``new_tokens`` tokens continuing each row of ``prompts`` [B, P]: returns [B, new_tokens] (int64).

    ``suppress_ids`` (the EOS id) are never produced, so every continuation has exactly ``new_tokens``
    tokens, like HF's ``min_new_tokens = max_new_tokens``. ``chunk``: rows decoded together (default
    :func:`decode_chunk`); the result does not depend on it. ``engines``: a dict in which decode engines
    are kept for reuse by later calls with the same shapes (one ``generate_corpus`` call passes one).
    """
    dev = next(model.parameters()).device
    prompts = prompts.to(dev)
    B = prompts.shape[0]
    K = cfg.num_beams
    if K > 1:
        if cfg.engine == "hf-generate":
            return _beam_batch(model, prompts, new_tokens, cfg)
        run = lambda r0, r1: _beam_decode(model, prompts[r0:r1], new_tokens, cfg, suppress_ids, engines)  # noqa: E731
    else:
        # one uniform per row and step, drawn up front: the stream does not depend on how rows are chunked
        u = None
        if cfg.temperature != 0:
            u = torch.rand(new_tokens, B, dtype=torch.float64, generator=generator, device=generator.device).to(dev)
        own = kind_of(model).sample(model, prompts, new_tokens, cfg, u, suppress_ids)  # a kind's own sampler
        if own is not None:
            return own.cpu()
        run = lambda r0, r1: _decode(model, prompts[r0:r1], new_tokens, cfg,  # noqa: E731
                                     None if u is None else u[:, r0:r1], suppress_ids, engines)
    # a chunk of prompts decodes K rows each (its beams)
    chunk = max(1, min(B, chunk or max(1, decode_chunk(dev, B * K) // K)))
    result = torch.empty(B, new_tokens, dtype=torch.long, device=dev)
    for r0 in range(0, B, chunk):
        r1 = min(B, r0 + chunk)
        result[r0:r1] = run(r0, r1)
    return result.cpu()


def _engine(model, batch: int, prompt_len: int, max_len: int, cfg: GenerationConfig, engines: dict | None):
    from collapse.decoding.fastgen import make_engine

    key = (id(model), batch, prompt_len, max_len, cfg.engine)
    if engines is None or key not in engines:
        engine = make_engine(model, batch, max_len, prefer=cfg.engine)
        if engines is None:
            return engine
        engines[key] = engine
    return engines[key]


def _decode(model, prompts: torch.Tensor, new_tokens: int, cfg: GenerationConfig, u: torch.Tensor | None,
            suppress_ids: tuple[int, ...], engines: dict | None) -> torch.Tensor:
    """The cached decode loop for one chunk of rows; ``u`` [new_tokens, B] uniforms (None: greedy)."""
    dev = prompts.device
    B = prompts.shape[0]
    engine = _engine(model, B, prompts.shape[1], prompts.shape[1] + new_tokens, cfg, engines)
    logits = engine.prefill(prompts)
    P = prompts.shape[1]
    penalty = cfg.repetition_penalty
    hist = None  # prompt + continuation so far, for the repetition penalty
    if penalty != 1.0:
        hist = torch.empty(B, P + new_tokens, dtype=torch.long, device=dev)
        hist[:, :P] = prompts
    suppress = torch.as_tensor(list(suppress_ids), dtype=torch.long, device=dev) if suppress_ids else None
    if suppress is not None:  # a tokenizer's special ids beyond the output layer can never be drawn anyway
        suppress = suppress[suppress < logits.shape[-1]]
    result = torch.empty(B, new_tokens, dtype=torch.long, device=dev)
    for t in range(new_tokens):
        if hist is not None:
            _penalize_ids(logits, hist[:, :P + t], penalty)
        if suppress is not None:
            logits[:, suppress] = float("-inf")
        if u is None:
            nxt = logits.argmax(-1)
        else:
            nxt = sample_icdf(_filter_logits(logits, cfg), u[t])
        result[:, t] = nxt
        if hist is not None:
            hist[:, P + t] = nxt
        if t + 1 < new_tokens:
            logits = engine.step(nxt)
    return result


def _beam_decode(model, prompts: torch.Tensor, new_tokens: int, cfg: GenerationConfig,
                 suppress_ids: tuple[int, ...], engines: dict | None) -> torch.Tensor:
    """Beam search of exactly ``new_tokens`` tokens on a decode engine: HF ``generate``'s result for
    ``num_beams=K, do_sample=False, min_new_tokens=max_new_tokens, repetition_penalty`` (tests/test_beam.py).

    Same tokens as HF whenever both see the same logits (tested in float32; the GPT-2/OPT engine's logits
    equal HF's to float tolerance, so in bfloat16 a near-tie between two candidates can go the other way;
    the Llama-family engine's are bit-identical to HF's SDPA forward in bfloat16 too).
    Decoding settings stored with a hub model (repetition blocking and the like) are not applied: the
    ``generation.*`` keys define the decoding.

    The steps of HF's ``_beam_search`` when no beam can end early (EOS suppressed): the beams of a prompt
    are K adjacent rows, beam 0 starts at score 0 and the others at -1e9; each step takes ``log_softmax``
    of the logits, applies the processors to those log-probabilities (repetition penalty over prompt and
    continuation, EOS at -inf), adds each beam's score, keeps the top 2K of the K x V candidates of a
    prompt and then their top K as the next beams; every beam takes its parent's cache
    (``engine.reorder``). At the last step HF's best finished hypothesis is the top candidate (all have
    the same length, so the length penalty does not reorder them). Unlike HF, each prompt is run through
    the model once and its cache copied to its K beams (``prefill_beams``).
    """
    dev = prompts.device
    B, P = prompts.shape
    K = cfg.num_beams
    engine = _engine(model, B * K, P, P + new_tokens, cfg, engines)
    logits = engine.prefill_beams(prompts, K)  # [B*K, V]: beam k of prompt b is row b*K + k, as in HF
    V = logits.shape[-1]
    hist = torch.empty(B * K, P + new_tokens, dtype=torch.long, device=dev)  # every beam's tokens so far
    hist[:, :P] = prompts.repeat_interleave(K, 0)
    penalty = cfg.repetition_penalty
    # HF's min_new_tokens blocks every EOS id of the model's generation config (some models have several)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    gen_eos = [] if gen_eos is None else [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
    block = sorted(i for i in set(suppress_ids) | set(gen_eos) if i < V)
    suppress = torch.as_tensor(block, dtype=torch.long, device=dev) if block else None
    scores = torch.zeros(B, K, dtype=torch.float32, device=dev)
    scores[:, 1:] = -1e9
    base = torch.arange(B, device=dev)[:, None] * K
    for t in range(new_tokens):
        lp = torch.log_softmax(logits.float(), -1)
        if penalty != 1.0:
            _penalize_ids(lp, hist[:, :P + t], penalty)
        if suppress is not None:
            lp[:, suppress] = float("-inf")
        cand = (lp.view(B, K, V) + scores[:, :, None]).view(B, K * V)
        v2, i2 = torch.topk(cand, 2 * K, dim=1)
        if t + 1 == new_tokens:  # HF's best finished hypothesis: the top candidate
            best = i2[:, 0]
            out = hist[base[:, 0] + best // V, P:]
            out[:, t] = best % V
            return out
        keep = torch.topk(v2, K, dim=1).indices
        scores = v2.gather(1, keep)
        idx = i2.gather(1, keep)
        src = (base + idx // V).view(-1)
        tok = (idx % V).view(-1)
        hist = hist[src]
        hist[:, P + t] = tok
        engine.reorder(src, P)
        logits = engine.step(tok)
    return hist[::K, P:]  # new_tokens == 0


def _beam_batch(model, prompts: torch.Tensor, new_tokens: int, cfg: GenerationConfig) -> torch.Tensor:
    """Beam search through HF ``generate`` (``generation.engine=hf-generate``: the reference)."""
    dev = next(model.parameters()).device
    attn = torch.ones_like(prompts)
    gen = model.generate(input_ids=prompts.to(dev), attention_mask=attn.to(dev), num_beams=cfg.num_beams,
                         do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         repetition_penalty=cfg.repetition_penalty, early_stopping=False,
                         pad_token_id=model.config.eos_token_id)
    return gen[:, prompts.shape[1]:].cpu()


def generate_corpus(model, prompts: np.ndarray, new_tokens: int, cfg: GenerationConfig, key: tuple,
                    sink: Callable[[int, np.ndarray, np.ndarray], None], accelerator=None,
                    suppress_ids: tuple[int, ...] = (), skip_batches: set[int] | None = None,
                    progress: bool = True, desc: str = "generate") -> dict:
    """Continue every row of ``prompts`` [N, P]; ``sink(batch_index, prompt_rows, generated_rows)`` on the main process.

    Batches are dealt to processes round-robin; after each round the main process receives every
    batch of the round (gathered as objects, so it works across nodes) and hands them to ``sink`` in
    batch order. ``skip_batches`` (already on disk from an interrupted run) are not regenerated.
    """
    model = kind_of(model).for_sampling(model).eval()
    dev = next(model.parameters()).device
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    is_main = rank == 0
    bs = cfg.batch_size
    engines: dict = {}  # decode engines (KV caches, CUDA graphs) reused by every batch of this call
    n_batches = (len(prompts) + bs - 1) // bs
    todo = [b for b in range(n_batches) if not skip_batches or b not in skip_batches]
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) * bs * new_tokens, desc=desc, unit="tok", unit_scale=True, leave=False,
                   dynamic_ncols=True)
    t0 = time.perf_counter()
    produced = 0
    try:
        for r in range(0, len(todo), world):
            round_batches = todo[r:r + world]
            mine = round_batches[rank] if rank < len(round_batches) else None
            payload = None
            if mine is not None:
                rows = prompts[mine * bs:(mine + 1) * bs]
                gen = sample_batch(model, torch.as_tensor(rows, dtype=torch.long), new_tokens, cfg,
                                   seeded_generator(*key, mine, device=dev), suppress_ids, engines=engines)
                payload = (mine, gen.numpy().astype(np.int32))
            if world > 1:
                from accelerate.utils import gather_object

                gathered = gather_object([payload])
            else:
                gathered = [payload]
            if is_main:
                for item in sorted((g for g in gathered if g is not None), key=lambda x: x[0]):
                    b, gen_rows = item
                    sink(b, prompts[b * bs:(b + 1) * bs], gen_rows)
                    produced += gen_rows.size
                    if bar is not None:
                        bar.update(gen_rows.size)
    finally:  # cleared even on failure, so an error line stands alone
        if bar is not None:
            bar.close()
    dt = time.perf_counter() - t0
    return {"tokens": produced, "seconds": dt, "tokens_per_s": produced / dt if dt > 0 else 0.0}
