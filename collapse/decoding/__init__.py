"""Sampling from a model: seeded batched sampling and beam search sharded across processes (``generate``),
and the hand-written decode engines behind it (``fastgen_base``: KV cache, CUDA graphs, beams; GPT-2/OPT in
``fastgen``, the Llama family in ``fastgen_llama``).

A model kind may sample by itself (``ModelKind.sample``); otherwise this loop decodes it. May import
config, models (the kind protocol and the transformers helpers), seeding; never the loop or metrics.
"""
