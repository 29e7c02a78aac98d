"""lm-eval's loader of the KJV cloze (collapse/tasks/cloze.py): the items of one bucket, from the file beside it."""

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "kjv_cloze.jsonl"


def load(bucket=None, **_):
    import datasets

    with open(DATA, encoding="utf-8") as fh:
        items = [it for it in map(json.loads, fh) if bucket is None or it["bucket"] == bucket]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})
