"""What the hand-written decode engines share: the preallocated KV cache, the per-position steps that CUDA
graphs capture, beam search's prefill and cache reorder (see collapse/decoding/fastgen.py for the why).

A subclass pulls the weights out of the model in ``_load`` (setting ``layers``, ``head`` [V, d], ``kv_heads``
and ``Dh``) and does the maths in ``_run``: GPT-2 / OPT in collapse/decoding/fastgen.py, the Llama family in
collapse/decoding/fastgen_llama.py. Its own module imports this one, so neither imports the other.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("collapse")


class KVDecoder:
    """A decode engine whose KV cache [layers, batch, kv_heads, max_len, head_dim] is allocated once."""

    name = "fast"

    @staticmethod
    def supports(model) -> bool:
        return False

    def __init__(self, model, batch: int, max_len: int, graphs: bool = False, static: bool | None = None):
        """``graphs``: capture the steps in CUDA graphs (CUDA only). ``static``: run steps through the
        capturable per-position step (fixed input / output buffers) even without graphs (tests, on CPU)."""
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.max_len = max_len
        self._load(model)
        shape = (len(self.layers), batch, self.kv_heads, max_len, self.Dh)
        self.k = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.v = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.pos = 0
        self.batch = batch
        self.use_graphs = bool(graphs) and self.device.type == "cuda"
        self.static = self.use_graphs if static is None else bool(static or self.use_graphs)
        self.graphs: dict[int, object] = {}  # position -> CUDAGraph
        self.batches = 0  # prefills so far: graphs are captured from the second batch on
        self.capture_seconds = 0.0  # host time spent capturing (warm-up runs included)
        if self.static:
            self._tok = torch.zeros(batch, dtype=torch.long, device=self.device)
            self._logits = torch.empty(batch, self.head.shape[0], dtype=torch.float32, device=self.device)
        if self.use_graphs:
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream(self.device)

    def _load(self, model) -> None:
        """Set ``layers`` (one entry per layer), ``head``, ``kv_heads``, ``Dh`` and whatever ``_run`` needs."""
        raise NotImplementedError

    def _run(self, ids: torch.Tensor, p0: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] (float32) after ``ids`` [B, T] placed at positions ``p0..p0+T-1``; K/V written there.
        With ``out`` (a float32 buffer) the logits are written into it and it is returned."""
        raise NotImplementedError

    @property
    def graph(self):
        """A captured CUDA graph of this engine, if any (None: eager steps)."""
        return next(iter(self.graphs.values()), None)

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self._run(ids, self.pos)
        self.pos += ids.shape[1]
        return logits

    # ------------------------------------------------------------------ per-position steps (CUDA graphs)

    def _fixed_step(self, p: int) -> torch.Tensor:
        """The step at position ``p`` on ``self._tok``, into ``self._logits``: fixed shapes and addresses.
        Running it twice at the same ``p`` with the same tokens writes the same K/V (idempotent)."""
        return self._run(self._tok[:, None], p, out=self._logits)

    def _capture(self, p: int):
        """One eager warm-up run of position ``p``'s step (loads its kernels; writes what the replay will
        write), then its capture into the shared pool. None (and eager steps from now on) on failure."""
        import time

        t0 = time.perf_counter()
        cur = torch.cuda.current_stream(self.device)
        try:
            self._stream.wait_stream(cur)
            with torch.cuda.stream(self._stream):
                self._fixed_step(p)
                g = torch.cuda.CUDAGraph()
                g.capture_begin(self._pool)
                try:
                    self._fixed_step(p)
                finally:
                    g.capture_end()
            cur.wait_stream(self._stream)
        except Exception as e:  # noqa: BLE001 - any capture failure: eager steps still work
            log.warning("CUDA graph capture failed (%s: %s); decoding with eager steps", type(e).__name__,
                        str(e).splitlines()[0][:160] if str(e) else "")
            self.use_graphs = False
            self.graphs.clear()
            torch.cuda.synchronize(self.device)
            return None
        finally:
            self.capture_seconds += time.perf_counter() - t0
        self.graphs[p] = g
        return g

    # ------------------------------------------------------------------ public

    def prefill(self, prompts: torch.Tensor) -> torch.Tensor:
        if self.static and prompts.shape[0] != self.batch:
            raise ValueError(f"this engine decodes batches of {self.batch} rows, got {prompts.shape[0]}")
        self.pos = 0
        self.batches += 1
        return self._forward(prompts)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits after appending ``tokens`` [B]. On the static path (CUDA graphs) the returned tensor is a
        fixed buffer, overwritten by the next step: read or copy it before calling again."""
        if not self.static:
            return self._forward(tokens[:, None])
        p = self.pos
        if p >= self.max_len:
            raise IndexError(f"the KV cache holds {self.max_len} positions; all are used")
        self._tok.copy_(tokens)
        g = self.graphs.get(p) if self.use_graphs else None
        if g is None and self.use_graphs and self.batches >= 2:
            g = self._capture(p)  # its warm-up run did this step's work already; the replay redoes it
        if g is not None:
            g.replay()
        else:
            self._fixed_step(p)
        self.pos = p + 1
        return self._logits

    def prefill_beams(self, prompts: torch.Tensor, beams: int) -> torch.Tensor:
        """Prefill for beam search: each of the B prompts runs through the model once, then its cache and
        logits are copied to its ``beams`` rows (row ``b*beams + k``): 1/beams of the prefill work. The
        beams of a prompt then share its prompt cache bit for bit, which ``reorder(rows, start=P)`` relies on."""
        B, P = prompts.shape
        if self.static:  # the fixed-shape engine prefills whole batches: K copies, then made identical
            logits = self.prefill(prompts.repeat_interleave(beams, 0))[::beams]
        else:
            self.pos = 0
            self.batches += 1
            logits = self._forward(prompts)
        first = torch.arange(B, device=prompts.device) * (beams if self.static else 1)
        self.k[:, :B * beams, :, :P] = self.k[:, first, :, :P].repeat_interleave(beams, 1)
        self.v[:, :B * beams, :, :P] = self.v[:, first, :, :P].repeat_interleave(beams, 1)
        return logits.repeat_interleave(beams, 0)

    def reorder(self, rows: torch.Tensor, start: int = 0) -> None:
        """Row ``i`` of the KV cache becomes row ``rows[i]`` (beam search: each beam takes its parent's
        cache). Positions before ``start`` are the same in every row that ``rows`` mixes (a prompt
        shared by the beams of one item) and are not copied."""
        B, p = rows.shape[0], self.pos
        if p > start:
            self.k[:, :B, :, start:p] = self.k[:, rows, :, start:p]
            self.v[:, :B, :, start:p] = self.v[:, rows, :, start:p]
