"""The text figures other papers report, so a reader can set a run beside them: MAUVE and self-BLEU.

* **Self-BLEU** (Zhu et al. 2018, Texygen; Drayson et al. 2025): each of a seeded subsample of the samples (100 by
  default, Drayson's) is a hypothesis and the subsample's others its references; BLEU-4 with nltk's
  ``sentence_bleu`` (uniform weights, ``SmoothingFunction().method1``, as Texygen and its followers call it), averaged.
  On words: the decoded text cut by :func:`words` (word_tokenize's rule, case kept, without its punkt download), so
  it reads beside theirs. nltk over sacrebleu: sacrebleu's sentence BLEU smooths and tokenizes differently, and the papers'
  numbers come from nltk. High means the samples repeat each other; collapse raises it.
* **MAUVE** (Pillutla et al. 2021) of the samples against the true continuations of the same prompts, with
  ``mauve-text``'s quantisation (PCA, k-means, the divergence curve's area) on features the caller computes
  (:func:`features`: the final hidden state at each text's last token, generation 0's by default). 1 means the two
  sets are indistinguishable in that feature space; collapse lowers it.

Both keep per-unit values so the run's bootstrap weights (the same in every generation) give intervals and paired
changes from generation 0: self-BLEU's bootstrap resamples reweight the hypotheses (the references stay the
subsample); MAUVE is recomputed on the first delete-half samples (Shao & Wu 1989, as the diversity figures), each
sample with its prompt's true continuation.
Imports numpy only at module level; nltk, mauve and torch when used.
"""

from __future__ import annotations

import functools
import re

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Words and punctuation marks, case kept (nltk's word_tokenize, less its sentence model and contractions)."""
    return WORD.findall(text)


def subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """The sorted indices of ``min(k, n)`` of n samples, drawn without repeats."""
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


def self_bleu_scores(texts: list[str]) -> np.ndarray:
    """BLEU-4 of each text against all the others (nltk, method1 smoothing): one score per text."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    toks = [words(t) for t in texts]
    smooth = SmoothingFunction().method1
    out = np.zeros(len(toks))
    for i, hyp in enumerate(toks):
        refs = toks[:i] + toks[i + 1:]
        if hyp and refs:
            out[i] = sentence_bleu(refs, hyp, weights=(0.25, 0.25, 0.25, 0.25), smoothing_function=smooth)
    return out


def mauve_score(p: np.ndarray, q: np.ndarray, seed: int = 25, buckets: int | str = "auto") -> float:
    """MAUVE of features ``q`` (the samples) against ``p`` (the true texts): mauve-text's defaults (k-means on PCA
    components holding 90% of the variance, n/10 buckets, scaling 5), one k-means start for its cost."""
    import mauve

    out = mauve.compute_mauve(p_features=np.asarray(p, np.float32), q_features=np.asarray(q, np.float32),
                              num_buckets=buckets, kmeans_num_redo=1, kmeans_max_iter=100, seed=seed, verbose=False)
    return float(out.mauve)


def mauve_half(p: np.ndarray, q: np.ndarray, weights: np.ndarray, seed: int = 25, buckets: int | str = "auto"
               ) -> np.ndarray:
    """MAUVE on each row's kept units of delete-half ``weights`` (R, n): sample i with its prompt's true
    continuation, each once (a bootstrap's repeated points form clusters of their own and pull MAUVE down).
    ``buckets``: the full sample's, so every row quantises alike."""
    out = np.full(len(weights), np.nan)
    for r, w in enumerate(np.asarray(weights)):
        idx = np.flatnonzero(w > 0)
        if len(idx) >= 2:
            out[r] = mauve_score(p[idx], q[idx], seed=seed, buckets=buckets)
    return out


def features(model, rows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The final hidden state at each row's last token ([n, d], float32): rows of token ids of one length. Read
    from the model's backbone (no output layer: SmolLM2's would be 49,152 logits a token for nothing)."""
    import torch

    dev = next(model.parameters()).device
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            x = torch.as_tensor(np.asarray(rows[i:i + batch_size]), dtype=torch.long, device=dev)
            if backbone is not None and backbone is not model:
                h = backbone(input_ids=x).last_hidden_state
            else:
                h = model(input_ids=x, output_hidden_states=True).hidden_states[-1]
            out.append(h[:, -1].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@functools.lru_cache(maxsize=1)
def _featurizer(name: str):
    """A named featurizer and its tokenizer, loaded once a process (not once a generation: gpt2-large is 3 GB)."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name).eval()


def text_features(name: str, texts: list[str], max_tokens: int = 256) -> np.ndarray:
    """Features of ``texts`` from a named model (a hub id such as ``gpt2-large``, Drayson's, or a local folder):
    each text tokenized alone, cut to ``max_tokens``, the last token's final hidden state."""
    import torch

    tok, model = _featurizer(name)
    out = []
    with torch.inference_mode():
        for t in texts:
            ids = tok(t, return_tensors="pt", truncation=True, max_length=max_tokens).input_ids
            out.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1].float().numpy())
    return np.stack(out)
