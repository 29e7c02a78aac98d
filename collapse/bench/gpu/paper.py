"""The paper-shaped end-to-end run of ``scripts/gpu_paper.sh``: a local OPT-125m-shaped model folder (random
weights; the shipped generation 0's KJV tokenizer as vocabulary) and a summary of ``collapse run`` logs:
seconds per stage and per generation, next to the benchmark's projection.

    python -m collapse.bench.gpu.paper make-model DIR [--tiny]
    python -m collapse.bench.gpu.paper summarize --bench bench_cuda.json NAME=LOG [NAME=LOG ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from collapse.bench.gpu.common import OPT125M, TINY_OPT
from collapse.bench.harness import stage_seconds


def make_model(folder: Path, tiny: bool = False, seed: int = 0, tokenizer: str | None = None) -> dict:
    """An OPT-125m-shaped model (``tiny``: a 2-layer one) with random weights and the shipped KJV tokenizer
    (or ``tokenizer``'s)."""
    import torch
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from collapse.models.scratch import SHIPPED

    tok = AutoTokenizer.from_pretrained(tokenizer or SHIPPED)
    shape = dict(TINY_OPT if tiny else OPT125M, vocab_size=len(tok))
    torch.manual_seed(seed)
    eos = tok.eos_token_id
    model = OPTForCausalLM(OPTConfig(**shape, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    return {"folder": str(folder), "parameters": n, "vocab": len(tok)}


def summarize(logs: dict[str, Path], bench: Path | None) -> dict:
    proj = {}
    if bench is not None and bench.is_file():
        proj = json.loads(bench.read_text()).get("parts", {}).get("projection", {})
    res = {}
    for name, path in logs.items():
        text = path.read_text(errors="replace") if path.is_file() else ""
        st = stage_seconds(text)
        gens = {g: round(sum(v.values()), 1) for g, v in st.items() if g >= 1}
        rate = [float(x) for x in re.findall(r"gen \d+: train\s[^\r\n]*?([\d.]+)k tok/s", text)]
        res[name] = {"stages": st, "seconds_per_generation": gens, "done": "done in" in text,
                     "train_k_tokens_per_s_logged": rate}
    res["projection"] = {k: {kk: round(vv, 1) for kk, vv in v.items() if isinstance(vv, (int, float))}
                         for k, v in proj.items() if k in ("lora", "lora_paper", "lora_paper_run_rows", "full")}
    return res


def _table(res: dict) -> str:
    lines = ["run                      gen  " + "  ".join(f"{s:>9}" for s in ("train", "evaluate", "generate",
                                                                           "measure", "total"))]
    for name, r in res.items():
        if name == "projection":
            continue
        for g, st in sorted(r["stages"].items()):
            cells = "  ".join(f"{st.get(s, 0.0):9.1f}" for s in ("train", "evaluate", "generate", "measure"))
            lines.append(f"{name:<24} {g:>3}  {cells}  {sum(st.values()):9.1f}")
    for k, v in res.get("projection", {}).items():
        lines.append(f"projection {k:<19} {v.get('train_s', 0):9.1f}  {v.get('evaluate_s', 0):9.1f}  "
                     f"{v.get('generate_s', 0):9.1f}  {'':>9}  {v.get('total_with_validation_and_measure_s', 0):9.1f}"
                     f"   (beam: {v.get('total_if_generating_with_beam_search_s', float('nan')):.1f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m collapse.bench.gpu.paper")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-model")
    mk.add_argument("folder")
    mk.add_argument("--tiny", action="store_true")
    mk.add_argument("--tokenizer", default=None, help="a folder with a tokenizer (default: the shipped gen 0's)")
    sm = sub.add_parser("summarize")
    sm.add_argument("logs", nargs="+", help="NAME=LOG")
    sm.add_argument("--bench", default=None)
    sm.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.cmd == "make-model":
        print(json.dumps(make_model(Path(a.folder), a.tiny, tokenizer=a.tokenizer)))
        return 0
    logs = dict(item.split("=", 1) for item in a.logs)
    res = summarize({k: Path(v) for k, v in logs.items()}, Path(a.bench) if a.bench else None)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    print(_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
