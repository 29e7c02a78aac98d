"""`collapse measure` over several decodings (``measure.decodings``): the shipped scratch config, end to end.

The columns are paired (every decoding continues the same prompts against the same true halves), the control
column of real training windows stands beside them with its interval, a column equals the plain measure of the
same settings, and a bad entry is one line before anything is written.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli

from collapse.config import load_config
from collapse.errors import ConfigError

CONFIG = str(REPO / "configs/measure/decodings.yaml")
SMALL = ["measure.samples=24", "measure.window=128", "wandb.mode=disabled"]  # the shipped config, smaller


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("dec") / "m"
    r = run_cli("measure", CONFIG, *SMALL, f"out_dir={out}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_every_decoding_and_the_control_in_one_table(measured):
    out, r = measured
    res = json.loads((out / "decodings.json").read_text())
    names = [c["name"] for c in res["columns"]]
    assert names == ["real text", "greedy", "beam5", "beam5 penalty 3", "T=0.7", "T=1"]
    assert res["samples"] == 24 and res["columns"][0]["kind"] == "control"
    for c in res["columns"]:
        ranked = {b: v for b, v in c["bucket_shift"].items() if b != "unseen" and v["shift_pct"] is not None}
        assert len(ranked) >= 3 and all(v["ci95"][0] < v["ci95"][1] for v in ranked.values())
        assert c["bucket_shift"]["unseen"]["shift_pct"] is None  # a share, never a shift
    settings = {c["name"]: c["settings"] for c in res["columns"][1:]}
    assert settings["greedy"]["temperature"] == 0 and settings["beam5 penalty 3"]["repetition_penalty"] == 3.0
    md = (out / "decodings.md").read_text()
    assert md.count("\n|") >= 8 and "| real text | greedy |" in md
    assert "| real text | greedy |" in r.stderr + r.stdout  # the console prints the table
    assert (out / "decodings.png").stat().st_size > 10_000


def test_the_columns_are_paired_and_the_control_is_real_training_text(measured):
    out, _ = measured
    files = sorted((out / "continuations").glob("*.parquet"))
    assert len(files) == 6
    frames = [pd.read_parquet(f) for f in files]
    gens = {f.stem: np.stack(fr.generated_ids) for f, fr in zip(files, frames)}
    assert not np.array_equal(gens["greedy"], gens["T=1"])  # the decodings did differ
    control = gens["real-text"]
    assert control.shape == gens["greedy"].shape
    # every control window is a stretch of one training document, in the measured model's tokenizer
    from collapse.data import load_splits, split_ids
    from collapse.models.scratch import SHIPPED, TOKENS_FILE

    cfg = load_config(CONFIG)
    docs = split_ids(None, load_splits(cfg.data), SHIPPED / TOKENS_FILE)["train"]
    blobs = [d.astype(np.int64).tobytes() for d in docs]

    def inside_one_document(row) -> bool:
        needle = row.astype(np.int64).tobytes()
        for b in blobs:
            i = b.find(needle)
            while i >= 0:
                if i % 8 == 0:  # at a token boundary
                    return True
                i = b.find(needle, i + 1)
        return False

    assert all(inside_one_document(row) for row in control[:5])
    assert not inside_one_document(gens["T=1"][0])  # a sample is not (the check can fail)


def test_a_column_is_the_plain_measure_of_its_settings(measured, tmp_path):
    out, _ = measured
    plain = tmp_path / "plain"
    r = run_cli("measure", str(REPO / "configs/measure/tiny.yaml"), *SMALL, "generation.temperature=0.7",
                f"out_dir={plain}", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = json.loads((plain / "measure.json").read_text())["bucket_shift"]
    b = next(c for c in json.loads((out / "decodings.json").read_text())["columns"] if c["name"] == "T=0.7")
    assert a == b["bucket_shift"]
    # the same prompts, true halves and continuations: the columns are paired with the plain measure and each other
    p, d = pd.read_parquet(plain / "continuations.parquet"), pd.read_parquet(out / "continuations" / "T=0.7.parquet")
    for col in ("prompt_ids", "reference_ids", "generated_ids"):
        assert all(np.array_equal(x, y) for x, y in zip(p[col], d[col])), col
    greedy = pd.read_parquet(out / "continuations" / "greedy.parquet")
    assert all(np.array_equal(x, y) for x, y in zip(p.prompt_ids, greedy.prompt_ids))


@pytest.mark.parametrize("entry, needle", [
    ("[{temp: 1}]", "measure.decodings[0]: temp is not a decoding setting"),
    ("[{num_beams: 0}]", "measure.decodings[0]: generation.num_beams must be at least 1"),
    ("[{temperature: 0}, {temperature: 0}]", "the name 'greedy' is used twice"),
    ("[{name: real text, temperature: 1}]", "is the control column's"),
    ("[]", "measure.decodings is an empty list"),
    ("[{engine: fast}]", "measure.decodings[0].engine='fast' is not one of"),
])
def test_a_bad_entry_is_refused_with_its_place(entry, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(CONFIG, [f"measure.decodings={entry}"])
    assert needle in str(e.value)


def test_an_entry_is_checked_on_top_of_generation():
    ok = load_config(CONFIG, ["generation.num_beams=4", "measure.decodings=[{engine: hf-generate}]"])
    assert ok.measure.decodings == [{"name": "hf-generate", "engine": "hf-generate"}]
    with pytest.raises(ConfigError, match=r"measure.decodings\[0\]: generation.engine=hf-generate is for beam search"):
        load_config(CONFIG, ["generation.num_beams=4", "generation.engine=hf-generate",
                             "measure.decodings=[{num_beams: 1}]"])
    with pytest.raises(ConfigError, match="names the same file"):
        load_config(CONFIG, ["measure.decodings=[{name: a b}, {name: a-b}]"])


def test_a_bad_entry_on_the_command_line_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "m"
    r = run_cli("measure", CONFIG, "measure.decodings=[{temperature: -1}]", f"out_dir={out}", timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "measure.decodings[0]" in lines[0], r.stderr
    assert not out.exists()
