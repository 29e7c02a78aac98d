"""The bench's CPU parts (``collapse bench --device cpu``): the loop's stages against their baselines (``stages``), the
counting (``counting``), whole runs and their memory (``e2e``), and a real LM's decode (``real``) and LoRA step
(``real_lora``). May import: collapse.bench.harness, torch, transformers, collapse."""
