"""Tests for tests/wandb_offline.py against real wandb offline run files.

One real offline run is created per module (wandb init offline is ~0.5 s);
the resume-layout test creates two more tiny runs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wandb  # noqa: E402 - a required dependency: its absence fails, never skips
import wandb_offline as wo

WANDB_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_CONSOLE": "off",
    "HF_HUB_OFFLINE": "1",
}

BIG = "z" * 70_000  # > 2 blocks: forces FIRST/MIDDLE/LAST chunks
HIST_DATA = [[1.0, 2.0, 3.0, 3.5], [0.0, 1.0], [5.0, 5.0, 6.0]]


def _env(tmp: Path) -> dict[str, str]:
    return {**WANDB_ENV, "WANDB_DIR": str(tmp)}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb_run")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(tmp).items():
            mp.setenv(k, v)
        run = wandb.init(
            project="t",
            group="g",
            tags=["a"],
            config={"x": 1, "nested": {"y": 2}},
            dir=str(tmp),
            mode="offline",
        )
        run_id = run.id
        run.config.update({"big": BIG})
        for i in range(3):
            table = wandb.Table(columns=["i", "name"], data=[[i, "a"], [i + 1, "b"]])
            run.log(
                {
                    "loss": 0.5 * i,
                    "tail_loss": {"1-10": 1.0 + i, "10001+": 5.0},
                    "hist": wandb.Histogram(HIST_DATA[i]),
                    "tbl": table,
                },
                step=i,
            )
        run.finish()
    path = wo.find_run_file(tmp)
    # finish() may return before wandb-core has flushed the last block
    assert wo.wait_until_finished(path), f"no exit record: {wo.describe(path)}"
    return {"dir": tmp, "path": path, "run_id": run_id}


# --------------------------------------------------------------------------
# file layout / low level
# --------------------------------------------------------------------------


def test_find_run_file_layouts(offline_run):
    path = offline_run["path"]
    assert path.name == f"run-{offline_run['run_id']}.wandb"
    assert path.parent.name.startswith("offline-run-")
    assert path.parent.parent.name == "wandb"
    # <dir>/wandb/offline-run-*/, <dir>/offline-run-*/ and the run dir itself
    assert wo.find_run_file(offline_run["dir"]) == path
    assert wo.find_run_file(offline_run["dir"] / "wandb") == path
    assert wo.find_run_file(path.parent) == path
    assert wo.find_run_file(path) == path


def test_find_run_file_errors(tmp_path, offline_run):
    with pytest.raises(FileNotFoundError, match="no run-"):
        wo.find_run_file(tmp_path)
    for name in ("offline-run-20240101_000000-aaa", "offline-run-20240101_000001-bbb"):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(offline_run["path"], d / f"run-{name[-3:]}.wandb")
    with pytest.raises(ValueError, match="found 2"):
        wo.find_run_file(tmp_path)
    assert [p.parent.name[-3:] for p in wo.find_run_files(tmp_path)] == ["aaa", "bbb"]
    assert len(wo.find_run_files(tmp_path, run_id="bbb")) == 1


def test_header_and_record_types(offline_run):
    data = offline_run["path"].read_bytes()
    assert data[:7] == b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"
    assert len(data) > 2 * wo.BLOCK_LEN  # the big config spans several blocks
    kinds = [r.WhichOneof("record_type") for r in wo.iter_records(offline_run["path"])]
    assert kinds.count("run") == 1
    assert kinds.count("history") == 3
    assert "config" in kinds and "summary" in kinds and "exit" in kinds


# --------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------


def test_history_steps_and_scalars(offline_run):
    rows = wo.read_history(offline_run["path"])
    assert [r["_step"] for r in rows] == [0, 1, 2]
    assert [r["loss"] for r in rows] == [0.0, 0.5, 1.0]
    for r in rows:
        assert isinstance(r["_step"], int)
        assert "_runtime" in r and "_timestamp" in r


def test_history_nested_dict_flattened(offline_run):
    rows = wo.read_history(offline_run["path"])
    for i, r in enumerate(rows):
        assert r["tail_loss/1-10"] == 1.0 + i
        assert r["tail_loss/10001+"] == 5.0
        assert "tail_loss" not in r
    # on disk wandb 0.31 uses nested_key lists, not "a/b" keys
    items = [
        list(it.nested_key) or [it.key]
        for rec in wo.iter_records(offline_run["path"])
        if rec.WhichOneof("record_type") == "history"
        for it in rec.history.item
    ]
    assert ["tail_loss", "1-10"] in items


def test_history_histogram(offline_run):
    rows = wo.read_history(offline_run["path"])
    for data, r in zip(HIST_DATA, rows):
        h = r["hist"]
        assert h["_type"] == "histogram"
        assert len(h["bins"]) == len(h["values"]) + 1
        assert sum(h["values"]) == len(data)
        assert h["bins"][0] == pytest.approx(min(data))
        assert h["bins"][-1] == pytest.approx(max(data))
    flat = wo.read_history(offline_run["path"], regroup_media=False)
    assert flat[0]["hist/_type"] == "histogram"
    assert "hist" not in flat[0]


def test_history_table(offline_run):
    rows = wo.read_history(offline_run["path"])
    files_dir = offline_run["path"].parent / "files"
    for i, r in enumerate(rows):
        t = r["tbl"]
        assert t["_type"] == "table-file"
        assert t["nrows"] == 2 and t["ncols"] == 2
        assert t["path"].startswith("media/table/") and t["path"].endswith(
            ".table.json"
        )
        table = json.loads((files_dir / t["path"]).read_text())
        assert table["columns"] == ["i", "name"]
        assert table["data"] == [[i, "a"], [i + 1, "b"]]


# --------------------------------------------------------------------------
# config / summary / run info
# --------------------------------------------------------------------------


def test_config(offline_run):
    cfg = wo.read_config(offline_run["path"])
    assert cfg == {"x": 1, "nested": {"y": 2}, "big": BIG}
    assert "_wandb" in wo.read_config(offline_run["path"], keep_internal=True)


def test_summary(offline_run):
    s = wo.read_summary(offline_run["path"])
    assert s["loss"] == 1.0
    assert s["_step"] == 2
    assert s["tail_loss/1-10"] == 3.0
    assert s["hist"]["_type"] == "histogram"
    assert s["tbl"]["_type"] == "table-file"
    assert not any(k.startswith("_wandb") for k in s)


def test_run_info(offline_run):
    info = wo.read_run_info(offline_run["path"])
    assert info["run_id"] == offline_run["run_id"]
    assert info["project"] == "t"
    assert info["group"] == "g"
    assert info["tags"] == ["a"]
    assert info["resume"] is False and info["resumed"] is False
    assert info["exit_code"] == 0
    assert info["n_run_records"] == 1


# --------------------------------------------------------------------------
# truncation / corruption
# --------------------------------------------------------------------------


def _record_spans(data: bytes) -> list[tuple[int, int]]:
    return [(s, e) for s, e, _ in wo._iter_payloads(data)]


@pytest.mark.parametrize("where", ["mid_payload", "mid_chunk_header", "mid_multiblock"])
def test_truncated_file(tmp_path, offline_run, where):
    data = offline_run["path"].read_bytes()
    spans = _record_spans(data)
    full = list(wo.iter_records(offline_run["path"]))
    assert len(full) == len(spans)
    if where == "mid_multiblock":
        # the record that spans blocks (config with BIG)
        k = next(i for i, (s, e) in enumerate(spans) if e - s > wo.BLOCK_LEN)
        cut = spans[k][0] + wo.BLOCK_LEN + 100
    else:
        k = (
            next(
                i
                for i, r in enumerate(full)
                if r.WhichOneof("record_type") == "history"
            )
            + 1
        )  # the record after the first history record
        s, e = spans[k]
        cut = s + 3 if where == "mid_chunk_header" else (s + e) // 2
    assert spans[k][0] < cut < spans[k][1]
    p = tmp_path / "run-cut.wandb"
    p.write_bytes(data[:cut])

    # strict (default): every complete record before the cut, then an error
    got = []
    it = wo.iter_records(p)
    with pytest.raises(wo.WandbLogError, match="truncated|ends inside"):
        got.extend(it)
    assert [r.SerializeToString() for r in got] == [
        r.SerializeToString() for r in full[:k]
    ]
    # strict=False: same records, then stops cleanly
    lenient = list(wo.iter_records(p, strict=False))
    assert [r.SerializeToString() for r in lenient] == [
        r.SerializeToString() for r in full[:k]
    ]
    # the helpers accept strict=False too
    n_hist = sum(r.WhichOneof("record_type") == "history" for r in full[:k])
    assert len(wo.read_history(p, strict=False)) == n_hist


def test_cut_at_record_boundary_is_clean(tmp_path, offline_run):
    data = offline_run["path"].read_bytes()
    spans = _record_spans(data)
    p = tmp_path / "run-cut.wandb"
    p.write_bytes(data[: spans[5][1]])
    assert len(list(wo.iter_records(p))) == 6


def test_corrupt_byte_crc(tmp_path, offline_run):
    data = bytearray(offline_run["path"].read_bytes())
    _, e = _record_spans(bytes(data))[3]
    data[e - 1] ^= 0xFF
    p = tmp_path / "run-bad.wandb"
    p.write_bytes(bytes(data))
    with pytest.raises(wo.WandbLogError, match="crc"):
        list(wo.iter_records(p))
    assert len(list(wo.iter_records(p, strict=False))) == 3
    assert len(list(wo.iter_records(p, verify_crc=False, strict=False))) >= 3


def test_bad_header(tmp_path):
    p = tmp_path / "run-x.wandb"
    p.write_bytes(b"NOTWANDB" * 4)
    with pytest.raises(wo.WandbLogError, match="header"):
        list(wo.iter_records(p))


# --------------------------------------------------------------------------
# block layout edge cases with a synthetic writer (mirrors wandb-core's
# leveldb writer: header in block 0, zero padding when < 7 bytes remain,
# possibly-empty FIRST chunk when exactly 7 bytes remain)
# --------------------------------------------------------------------------


def _write_log(payloads: list[bytes]) -> bytes:
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))

    def chunk(t: int, p: bytes) -> None:
        crc = zlib.crc32(p, zlib.crc32(bytes([t])))
        out.extend(struct.pack("<IHB", crc, len(p), t) + p)

    for p in payloads:
        left = wo.BLOCK_LEN - len(out) % wo.BLOCK_LEN
        if left < 7:
            out.extend(b"\0" * left)
            left = wo.BLOCK_LEN
        if len(p) + 7 <= left:
            chunk(wo.FULL, p)
            continue
        room = left - 7
        chunk(wo.FIRST, p[:room])
        p = p[room:]
        while len(p) > wo.BLOCK_LEN - 7:
            chunk(wo.MIDDLE, p[: wo.BLOCK_LEN - 7])
            p = p[wo.BLOCK_LEN - 7 :]
        chunk(wo.LAST, p)
    return bytes(out)


def _payload(n: int, tag: int) -> bytes:
    return bytes([tag % 251 + 1]) * n


@pytest.mark.parametrize("left_at_end", [0, 1, 6, 7, 8])
def test_synthetic_block_edges(left_at_end):
    # first record fills block 0 so that `left_at_end` bytes remain
    first = wo.BLOCK_LEN - 7 - 7 - left_at_end
    payloads = [
        _payload(first, 1),
        _payload(10, 2),
        _payload(3 * wo.BLOCK_LEN, 3),
        b"",
        _payload(5, 4),
    ]
    data = _write_log(payloads)
    assert [p for _, _, p in wo._iter_payloads(data)] == payloads


def test_synthetic_records_roundtrip(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    recs = []
    for i in range(50):
        r = pb.Record(num=i)
        item = r.history.item.add()
        item.nested_key.extend(["m", str(i)])
        item.value_json = json.dumps(float("nan") if i == 7 else i * 1000 * "x")
        recs.append(r)
    p = tmp_path / "run-syn.wandb"
    p.write_bytes(_write_log([r.SerializeToString() for r in recs]))
    assert [r.num for r in wo.iter_records(p)] == list(range(50))
    rows = wo.read_history(p)
    assert math.isnan(rows[7]["m/7"])
    assert rows[49]["m/49"] == 49000 * "x"


# --------------------------------------------------------------------------
# resumed offline runs: one new directory + file per init, same run id
# --------------------------------------------------------------------------


def test_resume_offline_layout(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(tmp_path).items():
            mp.setenv(k, v)
        for seg, steps in enumerate([(0, 1), (2, 3)]):
            run = wandb.init(
                project="t",
                id="resumeme",
                resume="allow" if seg else None,
                dir=str(tmp_path),
                mode="offline",
            )
            for s in steps:
                run.log({"loss": float(s)}, step=s)
            run.finish()
    files = wo.find_run_files(tmp_path)
    for f in files:
        assert wo.wait_until_finished(f), f"no exit record: {wo.describe(f)}"
    assert len(files) == 2  # two directories, one run-resumeme.wandb each
    assert {f.name for f in files} == {"run-resumeme.wandb"}
    assert len({f.parent for f in files}) == 2
    with pytest.raises(ValueError):
        wo.find_run_file(tmp_path)
    infos = [wo.read_run_info(f) for f in files]
    assert [i["run_id"] for i in infos] == ["resumeme", "resumeme"]
    assert [i["resume"] for i in infos] == [False, True]
    assert [i["resumed"] for i in infos] == [False, False]  # offline: never confirmed
    assert [r["_step"] for r in wo.read_history(files[1])] == [2, 3]
    assert [r["_step"] for r in wo.read_history_all(tmp_path, "resumeme")] == [
        0,
        1,
        2,
        3,
    ]


def test_wait_until_finished_times_out_on_header_only(tmp_path):
    p = tmp_path / "run-x.wandb"
    p.write_bytes(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    assert list(wo.iter_records(p)) == []
    assert wo.wait_until_finished(p, timeout=0.1) is False
    assert "records: none (header only)" in wo.describe(p) and "exit record: no" in wo.describe(p)


# --------------------------------------------------------------------------
# collapse's W&B logger: which mode, and the online call sequence (no W&B server can be reached here, so
# online runs are a stand-in for the wandb module that records every call)
# --------------------------------------------------------------------------


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """No W&B credentials: no key, an empty netrc, no WANDB_MODE."""
    for k in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_auto_mode_follows_login_and_wandb_mode(no_login, monkeypatch):
    from collapse.tracking import logged_in, resolve_mode

    assert not logged_in() and resolve_mode("auto")[0] == "offline"
    assert resolve_mode("online") == ("offline", "no W&B API key (WANDB_API_KEY or netrc)")
    no_login.write_text("machine example.com login user password abc\n")
    assert not logged_in()
    no_login.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert logged_in() and resolve_mode("auto")[0] == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not logged_in()  # a key for another host does not log in to this one
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert logged_in() and resolve_mode("auto")[0] == "online"
    for env, want in (("disabled", "disabled"), ("offline", "offline"), ("dryrun", "offline"), ("online", "online")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert resolve_mode("auto")[0] == want
    assert resolve_mode("offline")[0] == "offline" and resolve_mode("disabled")[0] == "disabled"


def test_unknown_wandb_mode_is_one_line_exit_2():
    from conftest import run_cli

    r = run_cli("run", "wandb.mode=sometimes", "--check", timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: wandb.mode='sometimes' is not one of: auto, disabled, offline, "
                                             "online."]


class _Obj:
    def __init__(self, *a, **k):
        self.a, self.k = a, k


class StandIn:
    """The parts of the wandb module collapse.tracking and collapse.tracking.run use; every call lands in ``calls``."""

    def __init__(self, starting_step: int = 0):
        self.calls: list[tuple] = []
        self.starting_step = starting_step
        self.Table = self.Histogram = self.Image = _Obj
        stand_in = self

        class Artifact:
            def __init__(self, name, type, metadata=None):
                self.name, self.type, self.metadata, self.files = name, type, metadata, []

            def add_file(self, p):
                self.files.append(Path(p).name)

            def add_dir(self, p):
                self.files += sorted(x.name for x in Path(p).iterdir())

            def wait(self):
                stand_in.calls.append(("wait", self.name))
                return self

        class Plot:
            @staticmethod
            def line_series(**k):
                return _Obj(**k)

        self.Artifact, self.plot = Artifact, Plot

    def Settings(self, **k):  # noqa: N802 - the wandb name
        return k

    def login(self, *a, **k):  # never: it may prompt
        raise AssertionError("wandb.login called")

    def init(self, **k):
        stand_in = self
        name = "main" if k.get("job_type") in (None, "recursion", "measure") else k["job_type"]

        # wandb under `wandb agent`: the agent's run id wins over the id passed to init (wandb#5119)
        agent_id = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None

        class Run:
            id = agent_id or k.get("id") or f"id-{name}"
            starting_step = stand_in.starting_step if name == "main" else 0

            def define_metric(self, key, **kw):
                pass

            def log(self, data, step):
                stand_in.calls.append(("log", name, step, sorted(data)))

            def log_artifact(self, art):
                stand_in.calls.append(("log_artifact", k.get("name"), art.name))

            def use_artifact(self, art):
                stand_in.calls.append(("use_artifact", k.get("name"), getattr(art, "name", art)))

            def finish(self, exit_code=0):
                stand_in.calls.append(("finish", k.get("name")))

        self.calls.append(("init", k["mode"], k.get("name"), k.get("job_type"), k.get("group")))
        self.calls.append(("id", k.get("name"), agent_id or k.get("id")))
        return Run()


def _fake_run_folder(out: Path, gens: int) -> None:
    for g in range(gens + 1):
        d = out / f"gen_{g:03d}"
        (d / "adapter").mkdir(parents=True)
        (d / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 10)
        (d / "samples.parquet").write_bytes(b"p" * 10)
        if g:
            (d / "train.json").write_text(json.dumps({"steps": 3, "rows_by_source": {str(g - 1): 64},
                                                      "val_nll": 1.0, "train_loss": 1.1}))


def _online(tmp_path, monkeypatch, wb, **kw):
    from collapse.tracking import StepAxis, WandbLogger, train_steps

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return WandbLogger(mode="auto", project="p", entity=None, group="grp", tags=[], name="run", run_dir=tmp_path,
                       config={}, run_id="rid", axis=StepAxis(train_steps(tmp_path)), wandb_module=wb, **kw)


def test_online_lineage_call_sequence(tmp_path, monkeypatch):
    """Online, each generation and each fine-tune is a short run that USES its inputs and LOGS its output, in
    the order the recursion makes them: W&B's lineage graph then draws corpus g -> model g+1 -> corpus g+1."""
    from collapse.config import load_config
    from collapse.tracking.run import log_corpus, log_model, log_report

    cfg = load_config(None, ["generations=2"])
    _fake_run_folder(tmp_path, 2)
    wb = StandIn()
    lg = _online(tmp_path, monkeypatch, wb)
    assert lg.mode == "online" and wb.calls[0] == ("init", "online", "run", "recursion", "grp")
    log_model(lg, tmp_path, 0, None, cfg, "base/model")  # what Run.log_corpus does: model g first, then corpus g
    log_corpus(lg, tmp_path, 0, 64, cfg.generation)
    for g in (1, 2):
        log_model(lg, tmp_path, g, tmp_path / f"gen_{g:03d}" / "adapter", cfg, "base/model")
        log_model(lg, tmp_path, g, tmp_path / f"gen_{g:03d}" / "adapter", cfg, "base/model")  # a second call: no-op
        log_corpus(lg, tmp_path, g, 64, cfg.generation)
    (tmp_path / "report.html").write_text("<html>")
    log_report(lg, tmp_path / "report.html", 2)
    lg.close()
    seq = [c for c in wb.calls if c[0] in ("init", "use_artifact", "log_artifact", "finish")]
    want = [("init", "online", "run", "recursion", "grp"),
            ("log_artifact", "run", "rid-model-g0")]
    for g in range(3):
        if g:
            want += [("init", "online", f"run-train-g{g}", "train", "grp"),
                     ("use_artifact", f"run-train-g{g}", f"rid-corpus-g{g - 1}"),
                     ("use_artifact", f"run-train-g{g}", "rid-model-g0"),
                     ("log_artifact", f"run-train-g{g}", f"rid-model-g{g}"),
                     ("finish", f"run-train-g{g}")]
        want += [("init", "online", f"run-generate-g{g}", "generate", "grp"),
                 ("use_artifact", f"run-generate-g{g}", f"rid-model-g{g}"),
                 ("log_artifact", f"run-generate-g{g}", f"rid-corpus-g{g}"),
                 ("finish", f"run-generate-g{g}")]
    want += [("log_artifact", "run", "rid-report"), ("finish", "run")]
    assert seq == want
    # lineage order and an acyclic graph: every artifact is logged once, before any run uses it, and no run
    # uses what it logged itself
    logged = [c[2] for c in seq if c[0] == "log_artifact"]
    assert len(logged) == len(set(logged))
    for i, c in enumerate(seq):
        if c[0] == "use_artifact":
            maker = next(x for x in seq[:i] if x[0] == "log_artifact" and x[2] == c[2])
            assert maker[1] != c[1]
    assert ("wait", "rid-model-g0") in wb.calls  # a used artifact is committed before it is used


def test_lineage_runs_keep_their_own_ids_under_a_sweep_agent(tmp_path, monkeypatch):
    """`wandb agent` sets WANDB_SWEEP_ID and WANDB_RUN_ID for the run it starts; wandb then gives every init in that
    process the agent's id. The lineage runs start without the agent's variables and with ids of their own."""
    from collapse.config import load_config
    from collapse.tracking import StepAxis, WandbLogger, train_steps
    from collapse.tracking.run import log_corpus, log_model

    cfg = load_config(None, ["generations=1"])
    _fake_run_folder(tmp_path, 1)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "agentid")
    wb = StandIn()
    lg = WandbLogger(mode="auto", project="p", entity=None, group="grp", tags=[], name="run", run_dir=tmp_path,
                     config={}, run_id="agentid", axis=StepAxis(train_steps(tmp_path)), wandb_module=wb)
    log_model(lg, tmp_path, 0, None, cfg, "base")
    log_corpus(lg, tmp_path, 0, 64, cfg.generation)
    log_model(lg, tmp_path, 1, tmp_path / "gen_001" / "adapter", cfg, "base")
    ids = {name: i for kind, name, i in (c for c in wb.calls if c[0] == "id")}
    assert ids == {"run": "agentid", "run-generate-g0": "agentid-generate-g0", "run-train-g1": "agentid-train-g1"}
    assert os.environ["WANDB_RUN_ID"] == "agentid" and os.environ["WANDB_SWEEP_ID"] == "sweep1"  # restored


def test_online_resume_logs_from_wandbs_starting_step(tmp_path, monkeypatch):
    from collapse.config import load_config
    from collapse.tracking.run import log_model

    _fake_run_folder(tmp_path, 2)
    wb = StandIn(starting_step=5)  # the server holds steps 0..4: gen 0's row, gen 1's 3 steps, gen 1's row
    lg = _online(tmp_path, monkeypatch, wb, resume=True)
    for g in range(3):
        for s in range(1, (3 if g else 0) + 1):
            lg.log_train({"train/loss": 1.0}, g, s)
        lg.log({"test_ppl": 2.0}, g)
    logged = [(c[2], "generation" in c[3]) for c in wb.calls if c[0] == "log"]
    assert logged == [(5, False), (6, False), (7, False), (8, True)]  # gen 2's steps and row; nothing twice
    log_model(lg, tmp_path, 2, tmp_path / "gen_002" / "adapter", load_config(None, []), "base")
    uses = [c[2] for c in wb.calls if c[0] == "use_artifact"]
    assert uses == ["rid-corpus-g1:latest", "rid-model-g0:latest"]  # logged by the killed process: by name


def test_a_failing_artifact_upload_does_not_stop_the_run(tmp_path, monkeypatch):
    import logging

    from collapse.config import load_config
    from collapse.tracking.run import log_corpus, log_model

    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: said.append(rec.getMessage())
    logging.getLogger("collapse").addHandler(handler)  # the CLI's set-up may stop propagation to caplog
    monkeypatch.setattr(handler, "level", logging.WARNING)
    _fake_run_folder(tmp_path, 0)
    wb = StandIn()
    lg = _online(tmp_path, monkeypatch, wb)

    def refuse(art):
        raise OSError("no space left on device")

    lg.run.log_artifact = refuse
    log_model(lg, tmp_path, 0, None, load_config(None, []), "base")  # logged by the main run: refused
    log_corpus(lg, tmp_path, 0, 64, load_config(None, []).generation)  # the run goes on
    assert "rid-model-g0" not in lg.artifacts_logged and "rid-corpus-g0" in lg.artifacts_logged
    logging.getLogger("collapse").removeHandler(handler)
    assert said == ["W&B: artifact rid-model-g0 not logged (OSError: no space left on device)."]
