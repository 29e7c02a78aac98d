"""The KJV cloze: LAMBADA's question, which word ends this passage, asked of held-out KJV text, with the answer's
frequency rank in the training text deciding its bucket, so that accuracy by bucket is the downstream face of the
tail loss. Two task families over the same items: ``kjv_cloze``, a choice among four words of the answer's bucket
(does the model still know which rare word fits?), and ``kjv_lambada``, the open question as LAMBADA asks it (does
greedy decoding write the answer, ``acc``; the answer's negative log-likelihood in nats, ``nll``).

Each item: up to ``CONTEXT_WORDS`` words of a test-split chapter (the split every shipped KJV config uses:
``data.split_seed=0``, 5% validation, 5% test), the next word as the answer, and three distractors drawn from the
answer's bucket and of the same case (capitalised or not), so that neither the word's frequency nor its case
gives the answer away (a capitalised top-10 answer, `And` or `I`, has too few such words: none is asked). A word
of the passage may be a distractor, as the answer often is one. Four choices: chance is 0.25. Up to
``PER_BUCKET`` answers a bucket, drawn uniformly (seed 0) from every eligible position, kept in the order drawn (so the first N of a bucket, lm-eval's
``--limit N``, are a random subset of it); the buckets are the token
buckets' (``collapse.metrics.BUCKETS``) over words (``WORD``, case kept) of the training split, ``unseen``
words' distractors other test words no training chapter has. ``python -m collapse.tasks.cloze`` rewrites the
data file; a test checks it equals a fresh build.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from collapse.metrics.formulas import BUCKETS, RANK_EDGES

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
CONTEXT_WORDS, MIN_CONTEXT_WORDS = 64, 16
PER_BUCKET, CHOICES, SEED = 150, 4, 0
DATA = Path(__file__).resolve().parent / "kjv_cloze" / "kjv_cloze.jsonl"


def bucket_name(rank: int | None) -> str:
    """The bucket of a word of frequency rank ``rank`` (1 = most frequent; None = not in the training text)."""
    if rank is None:
        return BUCKETS[-1]
    return BUCKETS[int(np.searchsorted(np.asarray(RANK_EDGES), rank, side="left"))]


def build(train: list[str], test: list[str], per_bucket: int = PER_BUCKET, seed: int = SEED) -> list[dict]:
    """The items from the training and test documents (see the module docstring), bucket by bucket."""
    counts = Counter(w for d in train for w in WORD.findall(d))
    rank = {w: i for i, (w, _) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])), 1)}
    unseen = {w for d in test for w in WORD.findall(d) if w not in rank}
    pool = {b: {True: [], False: []} for b in BUCKETS}  # bucket -> capitalised? -> candidate distractors
    for w, r in [*rank.items(), *((w, None) for w in sorted(unseen))]:
        pool[bucket_name(r)][w[0].isupper()].append(w)
    positions: dict[str, list[tuple[int, re.Match, int]]] = {b: [] for b in BUCKETS}
    for di, doc in enumerate(test):
        words = list(WORD.finditer(doc))
        for wi in range(MIN_CONTEXT_WORDS, len(words)):
            m = words[wi]
            b = bucket_name(rank.get(m.group()))
            # lm-eval joins passage and answer with one space; a capitalised top-10 answer has too few distractors
            if doc[m.start() - 1] == " " and len(pool[b][m.group()[0].isupper()]) >= CHOICES:
                positions[b].append((di, m, max(0, wi - CONTEXT_WORDS)))
    rng = np.random.default_rng([seed, 0xC102E])
    items = []
    for b in BUCKETS:
        found = positions[b]
        # in drawn order, not the text's: lm-eval's --limit N takes the first N, which are then a random subset
        pick = rng.choice(len(found), size=min(per_bucket, len(found)), replace=False)
        for i in pick:
            di, m, w0 = found[i]
            doc, answer = test[di], m.group()
            start = list(WORD.finditer(doc))[w0].start()
            context = doc[start:m.start()].rstrip()
            cands = [w for w in pool[b][answer[0].isupper()] if w != answer]
            others = [cands[j] for j in rng.choice(len(cands), size=CHOICES - 1, replace=False)]
            gold = int(rng.integers(CHOICES))
            choices = others[:gold] + [answer] + others[gold:]
            items.append({"id": f"{b}-{di}-{m.start()}", "bucket": b, "rank": rank.get(answer), "answer": answer,
                          "context": context, "choices": choices, "gold": gold})
    return items


def kjv_items() -> list[dict]:
    """The shipped task's items: the default KJV split (every shipped KJV config's)."""
    from collapse.config import Config
    from collapse.data import load_splits

    s = load_splits(Config().data)
    return build(s.train, s.test)


def to_jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)


def task_files() -> dict[str, str]:
    """The tasks' YAMLs (file name -> text) over the same items: ``kjv_cloze`` (the four-way choice) and
    ``kjv_lambada`` (the open question: the answer's log-likelihood and whether greedy decoding writes it), a task per
    bucket each, and a group over each family's tasks."""
    head = "# written by `python -m collapse.tasks.cloze` (collapse/tasks/cloze.py says how the items are drawn)\n"
    files = {"_template.yaml": head + """custom_dataset: !function utils.load
output_type: multiple_choice
test_split: test
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""", "_template_lambada.yaml": head + """custom_dataset: !function utils.load
output_type: loglikelihood
test_split: test
doc_to_text: "{{context}}"
doc_to_target: "{{' ' + answer}}"
target_delimiter: ""
process_results: !function utils.lambada_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: nll
    aggregation: mean
    higher_is_better: false
metadata:
  version: 1.0
"""}
    for family, template, metrics in (("kjv_cloze", "_template.yaml", ("acc",)),
                                      ("kjv_lambada", "_template_lambada.yaml", ("acc", "nll"))):
        for b in BUCKETS:
            files[f"{family}_{b}.yaml"] = head + f'include: {template}\ntask: "{family}_{b}"\n' \
                                                 f'dataset_kwargs:\n  bucket: "{b}"\n'
        files[f"{family}.yaml"] = head + f"group: {family}\ntask:\n" + "".join(
            f'  - "{family}_{b}"\n' for b in BUCKETS) + "aggregate_metric_list:\n" + "".join(
            f"  - metric: {m}\n    aggregation: mean\n    weight_by_size: true\n" for m in metrics) + \
            "metadata:\n  version: 1.0\n"
    return files


if __name__ == "__main__":
    from collapse.io import write_text

    items = kjv_items()
    write_text(DATA, to_jsonl(items))
    for name, text in task_files().items():
        write_text(DATA.parent / name, text)
    print(f"{DATA}: {len(items)} items, " + ", ".join(f"{b} {sum(i['bucket'] == b for i in items)}" for b in BUCKETS))
