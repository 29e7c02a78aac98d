"""lm-eval's loader of the KJV cloze (collapse/tasks/cloze.py): the items of one bucket, from the file beside it; and
kjv_lambada's metrics."""

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "kjv_cloze.jsonl"


def load(bucket=None, **_):
    import datasets

    with open(DATA, encoding="utf-8") as fh:
        items = [it for it in map(json.loads, fh) if bucket is None or it["bucket"] == bucket]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(items)})


def lambada_results(doc, results):
    """kjv_lambada's metrics of one item: whether greedy decoding writes the answer, and its NLL (nats, the word)."""
    ll, greedy = results[0]
    return {"acc": float(greedy), "nll": -float(ll)}
