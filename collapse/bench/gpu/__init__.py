"""The bench's CUDA parts (``collapse bench --device cuda``): the loop's stages and a real model's decode and training on
one GPU (``cuda``, with ``common``, ``decode``, ``llama``, ``train``), the self-test of the GPU paths (``selftest``) and
the paper-scale recursion's helpers (``paper``: ``python -m collapse.bench.gpu.paper``, run by scripts/gpu_paper.sh).
Imported only when a CUDA part runs. May import: collapse.bench.harness, torch, transformers, collapse."""
