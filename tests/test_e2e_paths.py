"""End to end through the command line, on paths the default run does not take.

A LOCAL model folder (a tiny Llama and a BPE tokenizer trained here, saved with ``save_pretrained``) and a
LOCAL ``.jsonl`` file whose text lives in a field other than ``text`` drive ``collapse run`` and
``collapse measure``; the same folder and data then run a full fine-tune, the ``mix`` and ``accumulate``
regimes, and a report drawn from a real run. Only the CLI and the run folder are used (README "Outputs"),
never the modules' private functions. The data is small (60 KJV chapters) so that ``accumulate``, which
trains on every real row, stays quick (it keeps 20 of the training chapters).
"""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from collapse.data import load_kjv

EOT = "<|endoftext|>"
N_SEQ = 32  # samples per generation
ENV = {"OMP_NUM_THREADS": "1"}

# the local model and data replace the scratch model and the KJV; everything else is small
RUN = [
    "generation.num_sequences=32", "generation.batch_size=16", "generation.prompt_tokens=16",
    "generation.new_tokens=16", "train.epochs=1", "train.batch_size=16", "eval.max_blocks=16", "wandb.mode=disabled",
]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """(model folder, data file, vocabulary size): a tiny Llama + BPE tokenizer, and {"body": ...} lines."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("local")
    docs = load_kjv()[:60]  # Genesis 1-50, Exodus 1-10: ~60 documents of 500+ words
    data = root / "corpus.jsonl"
    data.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)))

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainer=trainers.BpeTrainer(
        vocab_size=384, special_tokens=[EOT], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT, bos_token=EOT)
    vocab = len(hf_tok)
    eos = hf_tok.eos_token_id

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))
    folder = root / "tiny-llama"
    model.save_pretrained(folder, safe_serialization=True)
    hf_tok.save_pretrained(folder)
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    return folder, data, vocab


def _run(out: Path, local, *extra: str, report: bool = False):
    folder, data, _ = local
    env = {**ENV, "COLLAPSE_SKIP_REPORT": "0" if report else "1"}
    r = run_cli("run", *RUN, f"model.name_or_path={folder}", f"data.source={data}", "data.text_field=body",
                f"out_dir={out}", *extra, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train(out: Path, g: int) -> dict:
    return json.loads((out / f"gen_{g:03d}" / "train.json").read_text())


# ---------------------------------------------------------------------- a local model folder and jsonl file


@pytest.fixture(scope="module")
def llama_run(local, tmp_path_factory):
    """LoRA, replace, 1 generation, with the report (the report test reads this run too)."""
    out = tmp_path_factory.mktemp("llama") / "out"
    r = _run(out, local, "generations=1", report=True)
    return out, r


def test_run_with_a_local_llama_folder_and_a_jsonl_text_field(llama_run, local):
    out, _ = llama_run
    folder, _, vocab = local
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["base_model"] == str(folder)
    rows = _rows(out)
    assert [r["generation"] for r in rows] == [0, 1]
    for row in rows:
        assert math.isfinite(row["test_ppl"]) and row["test_ppl"] > 1, row["test_ppl"]
        assert row["num_samples"] == N_SEQ
    # LoRA found the Llama's linear layers by itself (no target_modules given)
    adapter = json.loads((out / "gen_001" / "adapter" / "adapter_config.json").read_text())
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(
        adapter["target_modules"]), adapter["target_modules"]
    for g in (0, 1):
        t = pq.read_table(out / f"gen_{g:03d}" / "samples.parquet")
        ids = np.asarray(t.column("token_ids").to_pylist())
        assert ids.shape == (N_SEQ, 16)
        assert ids.min() >= 0 and ids.max() < vocab, (ids.min(), ids.max(), vocab)
        assert np.asarray(t.column("prompt_ids").to_pylist()).max() < vocab


def test_measure_with_a_local_llama_folder_and_a_jsonl_text_field(local, tmp_path):
    folder, data, vocab = local
    out = tmp_path / "measure"
    r = run_cli("measure", f"model.name_or_path={folder}", f"data.source={data}", "data.text_field=body",
                "data.min_chars=200", "measure.samples=3", "measure.window=64", "generation.batch_size=3",
                f"out_dir={out}", "wandb.mode=disabled", env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "measure.json").read_text())
    assert m["samples"] == 3 and m["generated_tokens"] == 3 * 32
    shares = m["bucket_shift"]
    assert {"1-10", "unseen"} <= set(shares)
    # the ranked buckets' shares are over the tokens of ranked types; unseen's over all tokens, apart
    assert sum(v["gen_share"] for b, v in shares.items() if b != "unseen") == pytest.approx(1.0, abs=1e-9)
    assert 0.0 <= shares["unseen"]["gen_share"] <= 1.0
    gen = np.asarray(pq.read_table(out / "continuations.parquet").column("generated_ids").to_pylist())
    assert gen.shape == (3, 32) and gen.max() < vocab


# ---------------------------------------------------------------------- a full fine-tune


def test_full_fine_tune_saves_the_model_and_changes_the_perplexity(local, tmp_path):
    out = tmp_path / "full"
    _run(out, local, "generations=1", "train.method=full", "train.lr=3e-3")
    model = out / "gen_001" / "model"
    assert list(model.glob("*.safetensors")), sorted(p.name for p in model.iterdir())
    assert not (out / "gen_001" / "adapter").exists()
    train = _train(out, 1)
    assert train["rows"] == N_SEQ and train["real_rows"] == 0
    rows = _rows(out)
    assert rows[1]["test_ppl"] != rows[0]["test_ppl"]
    assert all(math.isfinite(r["test_ppl"]) for r in rows)


# ---------------------------------------------------------------------- the regimes' training sets


def test_mix_regime_draws_a_quarter_real_rows(local, tmp_path):
    out = tmp_path / "mix"
    _run(out, local, "generations=2", "regime.kind=mix", "regime.real_fraction=0.25")
    rows = _rows(out)
    for g in (1, 2):
        t = _train(out, g)
        n_real = round(0.25 * N_SEQ)
        assert t["rows"] == N_SEQ and t["real_rows"] == n_real, t
        assert t["rows_by_source"] == {"-1": n_real, str(g - 1): N_SEQ - n_real}, t["rows_by_source"]
        assert rows[g]["train_rows"] == t["rows"] and rows[g]["train_real_rows"] == t["real_rows"]
    assert rows[0]["train_rows"] is None


def test_accumulate_regime_keeps_every_real_row_and_every_sample(local, tmp_path):
    out = tmp_path / "accumulate"
    _run(out, local, "generations=2", "regime.kind=accumulate", "data.max_documents=20")  # 20 training chapters
    t1, t2 = _train(out, 1), _train(out, 2)
    real = t1["rows"] - N_SEQ  # every real training row (16-token rows of the 20 training chapters)
    assert 20 * 50 < real < 20 * 500 and t1["real_rows"] == real
    assert t1["rows_by_source"] == {"-1": real, "0": N_SEQ}, t1["rows_by_source"]
    assert t2["rows"] == real + 2 * N_SEQ and t2["real_rows"] == real
    assert t2["rows_by_source"] == {"-1": real, "0": N_SEQ, "1": N_SEQ}, t2["rows_by_source"]
    rows = _rows(out)
    for g, t in ((1, t1), (2, t2)):
        assert rows[g]["train_rows"] == t["rows"] and rows[g]["train_real_rows"] == t["real_rows"]


# ---------------------------------------------------------------------- the report of a real run


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.cells: dict[str, list[str]] = {}
        self._key: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        self._key = a.get("data-key") if tag == "td" else None

    def handle_data(self, data):
        if self._key is not None:
            self.cells.setdefault(self._key, []).append(data.strip())
            self._key = None


def test_report_of_a_real_run_names_its_figures_and_prints_its_numbers(llama_run):
    out, r = llama_run
    rep = out / "report"
    html_text = (rep / "report.html").read_text()
    page = _Page()
    page.feed(html_text)
    pngs = sorted(p.name for p in rep.glob("*.png"))
    assert pngs, sorted(p.name for p in rep.iterdir())
    for name in pngs:  # every figure drawn is on the page, and every image on the page was drawn
        assert name in page.images, (name, page.images)
    for src in page.images:
        if not src.startswith("data:"):
            assert (rep / src).is_file() and (rep / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    # the per-generation table prints the run's test perplexities (2 decimals), one row per generation
    rows = _rows(out)
    assert page.cells.get("test_ppl") == [f"{row['test_ppl']:.2f}" for row in rows], page.cells.get("test_ppl")
    assert page.cells.get("generation") == [str(row["generation"]) for row in rows]
    assert 'class="partial"' not in html_text  # a finished run: no "partial" banner
    summary = json.loads((rep / "summary.json").read_text())
    assert len(summary) == 1 and summary[0]["generation"] == rows[-1]["generation"] == 1
    assert summary[0]["metrics"]["test_ppl"]["mean"] == pytest.approx(rows[-1]["test_ppl"], rel=1e-12)
    assert summary[0]["metrics"]["test_ppl"]["n"] == 1
