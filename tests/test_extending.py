"""docs/extending.md's examples, run as a user would: its Python blocks make one plugin file (a toy figure, a
toy model kind, a regime), named in COLLAPSE_PLUGINS for a two-generation run with W&B offline. The figure
must reach every output with no other edit: metrics.jsonl (value, interval, paired change), the console
table, the report's table and the W&B run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from conftest import REPO, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent))

DOC = REPO / "docs" / "extending.md"


def plugin_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 4, "docs/extending.md: the figure, the kind, the regime and the curator"
    return "\n\n".join(blocks)


def test_the_guide_s_plugin_runs_and_its_figure_reaches_every_output(tmp_path):
    from wandb_offline import find_run_files, read_history, wait_until_finished

    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(plugin_source())
    out = tmp_path / "out"
    r = run_cli("run", "model.name_or_path=unigram", "regime.kind=newest_and_previous", "curate.kind=diverse", "generations=2",
                "generation.num_sequences=64", "generation.batch_size=32", "generation.prompt_tokens=16",
                "generation.new_tokens=16", "eval.max_blocks=32", "wandb.mode=offline", f"out_dir={out}",
                env={"COLLAPSE_PLUGINS": str(plugin), "WANDB_DIR": str(tmp_path), "WANDB_MODE": None})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in rows] == [0, 1, 2]
    for row in rows:  # the value, and its interval around it
        lo, hi = row["top_share_ci"]
        assert 0 < row["top_share"] < 1 and lo <= row["top_share"] <= hi
    assert "top_share" in rows[2]["changes"]["from_gen0"]  # a paired change like every built-in figure
    console = r.stdout + r.stderr
    head = next(line for line in console.splitlines() if line.split()[:2] == ["gen", "test"])
    assert "top-1 share" in head  # a column of the end-of-run table
    html = (out / "report" / "report.html").read_text()
    assert "top-1 share" in html and 'data-key="top_share"' in html
    files = find_run_files(out)
    assert len(files) == 1 and wait_until_finished(files[0])
    hist = [h for h in read_history(files[0]) if "top_share" in h]
    assert [h["generation"] for h in hist] == [0, 1, 2]
    assert all(h["top_share"] == rows[h["generation"]]["top_share"] and "top_share_lo" in h for h in hist)
    # the regime: generation 2 trained on generation 1's samples and generation 0's, half each
    src = json.loads((out / "gen_002" / "train.json").read_text())["rows_by_source"]
    assert src == {"0": 32, "1": 32}
    assert json.loads((out / "gen_001" / "train.json").read_text())["rows_by_source"] == {"-1": 32, "0": 32}
    # the curator: half of each generation's samples kept (the most distinct tokens), resampled to 64 rows
    import numpy as np
    import pyarrow.parquet as pq

    from collapse.io import read_id_column

    for g in (0, 1):
        rec = pq.read_table(out / f"gen_{g:03d}" / "curated.parquet").to_pandas()
        ids = read_id_column(out / f"gen_{g:03d}" / "samples.parquet", "token_ids")
        assert np.allclose(rec.score, [len(np.unique(r)) / len(r) for r in ids])
        assert (rec.kept > 0).sum() == 32 and rec.repeats.sum() == 64
        assert rec[rec.kept > 0].score.min() >= rec[rec.kept == 0].score.max()
        assert rows[g]["kept_share"] == 0.5


def test_a_plugin_that_fails_to_import_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('no such lab')\n")
    r = run_cli("keys", env={"COLLAPSE_PLUGINS": str(bad)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: the plugin") and "no such lab" in r.stderr
    r = run_cli("keys", env={"COLLAPSE_PLUGINS": str(tmp_path / "missing.py")})
    assert r.returncode == 2 and "missing.py" in r.stderr and "Traceback" not in r.stderr


def test_the_toy_kind_refuses_a_filter_it_would_ignore_and_two_plugins_of_one_name_both_load(tmp_path):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(plugin_source())
    r = run_cli("run", "--check", "model.name_or_path=unigram", "generation.min_p=0.1", f"out_dir={tmp_path / 'o'}",
                env={"COLLAPSE_PLUGINS": str(plugin)})
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: the unigram kind samples")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "regimes.py").write_text(
            "from collapse.loop.regimes import regime, REGIMES\n"
            f"regime('only_{sub}')(REGIMES['replace'])\n")
    spec = f"{tmp_path / 'a' / 'regimes.py'},{tmp_path / 'b' / 'regimes.py'}"
    for kind in ("only_a", "only_b"):
        r = run_cli("run", "--check", f"regime.kind={kind}", f"out_dir={tmp_path / 'o'}",
                    env={"COLLAPSE_PLUGINS": spec})
        assert r.returncode == 0, r.stderr[-2000:]
