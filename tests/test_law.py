"""The exact law the loop must obey (collapse/models/ngram/law.py): a unigram maximum-likelihood model retrained on its own
N samples (replace) is neutral Wright-Fisher resampling, E[D_g] = (1 - 1/N)^g E[D_0], D_g the Gini-Simpson
diversity of generation g's samples; with a fresh real share (mix) E[D_g] follows a linear recursion that
stays away from 0.

Tolerance: at each generation g the mean over R repeats must lie within 4 standard errors of the exact
value, the standard error being the spread across the repeats (sample sd / sqrt(R)). Seeds are fixed, so
the outcome is deterministic; 4 SE keeps the chance that a correct implementation fails at any of the 21
generations below 21 x 6e-5 ~ 0.1% for whatever seeds. What it resolves (measured): in the tight component
check (SE ~ 0.006 on values 0.2-0.8) the right N = 32 gives max |z| = 3.5 over the generations (2.3 with
2,000 chains), N = 28 gives 8.2, N = 36 only 2.4: an N off by an eighth downwards, a model not retrained on
its samples (no decay) or a sampler biased towards frequent types fail; the exact counting check below
catches any error of N or of the training set deterministically.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import in_process_runs

from collapse.config import GenerationConfig, load_config
from collapse.data import load_splits
from collapse.decoding.generate import sample_batch
from collapse.loop.regimes import regime_training_set
from collapse.models.ngram import NGramCounts, fit, generation0, law
from collapse.seeding import numpy_rng, seeded_generator

Z = 4.0  # standard errors allowed at each generation


def _check_curve(D: np.ndarray, exact: np.ndarray, what: str) -> None:
    """D [R, G+1] measured diversities; exact [G+1]."""
    R = D.shape[0]
    mean, se = D.mean(0), D.std(0, ddof=1) / np.sqrt(R)
    bad = np.abs(mean - exact) > Z * np.maximum(se, 1e-12)
    assert not bad.any(), (f"{what}: generations {np.nonzero(bad)[0].tolist()} off the law:\n"
                           + "\n".join(f"g={g}: measured {m:.4f} ± {s:.4f}, exact {e:.4f}"
                                       for g, (m, s, e) in enumerate(zip(mean, se, exact))))


def _gini_simpson(ids: np.ndarray, V: int) -> float:
    f = np.bincount(np.asarray(ids).ravel(), minlength=V) / np.asarray(ids).size
    return float(1.0 - (f ** 2).sum())


# ---------------------------------------------------------------------- the loop itself

LAW = ["data.source=synthetic", "data.synthetic.vocab=10", "data.synthetic.order=0", "data.synthetic.zipf=1.0",
       "data.synthetic.documents=60", "data.synthetic.doc_tokens=32", "data.synthetic.truth_documents=2",
       "model.name_or_path=ngram", "model.ngram.n=1", "model.ngram.add_k=0", "generations=20",
       "generation.num_sequences=4", "generation.batch_size=4", "generation.prompt_tokens=4",
       "generation.new_tokens=8", "eval.max_blocks=1", "wandb.mode=disabled"]
REPEATS = 8


@pytest.fixture(scope="module")
def law_runs(tmp_path_factory):
    """REPEATS seeds of `collapse run` (in-process; fsync off: these folders need no durability)."""
    from collapse.loop.run import run_loop

    root = tmp_path_factory.mktemp("law")
    cfgs = []
    with in_process_runs():
        for seed in range(REPEATS):
            cfg = load_config(None, [*LAW, f"seed={seed}", f"out_dir={root / str(seed)}"])
            run_loop(cfg, show_progress=False)
            cfgs.append(cfg)
    return cfgs


def test_each_generation_counts_exactly_its_predecessors_samples(law_runs):
    """The Wright-Fisher step in the loop: model g's counts ARE the N tokens generation g-1 generated."""
    from collapse.loop.rundir import gen_dir, load_samples

    for cfg in law_runs:
        out = cfg.out_dir
        for g in range(1, cfg.generations + 1):
            uni = NGramCounts.load(gen_dir(out, g) / "model").uni
            prev = load_samples(out, g - 1, keep_prompt=False)
            assert prev.size == 4 * 8
            np.testing.assert_array_equal(uni, np.bincount(prev.ravel(), minlength=len(uni)))


def test_loop_diversity_follows_the_wright_fisher_law(law_runs):
    from collapse.loop.rundir import load_samples

    cfg = law_runs[0]
    model0, tok = generation0(cfg.model, load_splits(cfg.data))
    p0 = model0.counts.uni.astype(np.float64)
    p0[tok.eos_token_id] = 0.0  # generation never draws the separator
    N = cfg.generation.num_sequences * cfg.generation.new_tokens
    exact = law.replace_curve(p0, N, cfg.generations)
    D = np.array([[_gini_simpson(load_samples(c.out_dir, g, keep_prompt=False), len(p0))
                   for g in range(c.generations + 1)] for c in law_runs])
    _check_curve(D, exact, "collapse run, replace")
    assert exact[-1] < 0.6 * exact[0]  # the law is visible at this N: it is not a flat line that anything passes


# ---------------------------------------------------------------------- the same components, many repeats


def _chains(kind: str, R: int, G: int, real: np.ndarray, real_fraction: float, n: int, L: int, V: int) -> np.ndarray:
    """R seeded chains of the loop's own components: count (ngram.fit), sample (generate.sample_batch with the
    run's generator keys), next training set (regimes.regime_training_set)."""
    cfg = GenerationConfig()
    prompts = torch.zeros(n, 1, dtype=torch.long)
    D = np.empty((R, G + 1))
    for r in range(R):
        model = fit(real, V + 1, 1, 0.0, V)  # generation 0 counts the real rows; id V is the separator
        for g in range(G + 1):
            gen = sample_batch(model, prompts, L, cfg, seeded_generator(r, g, "generate", 0), (V,)).numpy()
            D[r, g] = _gini_simpson(gen, V)
            rows, _ = regime_training_set(kind, real_blocks=real, samples=[gen], real_fraction=real_fraction,
                                          size=None, rng=numpy_rng(r, g + 1, "regime"))
            model = fit(rows, V + 1, 1, 0.0, V)
    return D


@pytest.fixture(scope="module")
def source_rows():
    from collapse.config import SyntheticConfig
    from collapse.data.synthetic import SyntheticSource

    src = SyntheticSource(SyntheticConfig(vocab=10, order=0, zipf=1.0, doc_tokens=8))
    return src.sample(40, np.random.default_rng(0)).astype(np.int64)  # 40 real rows of 8 symbols, no separator


def test_replace_chains_follow_the_law_tightly(source_rows):
    V, n, L, G = 10, 4, 8, 20
    D = _chains("replace", 400, G, source_rows, 0.0, n, L, V)
    rho = np.bincount(source_rows.ravel(), minlength=V)
    _check_curve(D, law.replace_curve(rho, n * L, G), "replace chains")


def test_mix_chains_follow_the_linear_recursion_and_stay_diverse(source_rows):
    V, n, L, G, frac = 10, 4, 8, 20, 0.25
    D = _chains("mix", 400, G, source_rows, frac, n, L, V)
    a = round(frac * n) / n
    rho, s_r = law.real_row_moments(source_rows, V, round(frac * n))
    exact = law.mix_curve(rho, n * L, a, rho, s_r, G)
    _check_curve(D, exact, "mix chains")
    limit = law.mix_limit(n * L, a, rho, s_r)
    replace = law.replace_curve(rho, n * L, G)
    assert exact[-1] > 1.5 * replace[-1] and abs(exact[-1] - limit) < 0.02  # bounded away from 0, near its limit


# ---------------------------------------------------------------------- the neutral temperature (tempered, add-k)


def _drift_chains(R: int, real: np.ndarray, V: int, n: int, L: int, T: float, k: float) -> np.ndarray:
    """R seeded one-generation steps of the loop's components at temperature T: generation 0 counts the real rows
    (add-k), samples N = n x L tokens (generate.sample_batch, the run's decoder), model 1 counts them, samples again;
    each step's change of the samples' plug-in entropy in bits (metrics.jsonl's ``entropy``)."""
    from collapse.metrics import counts, entropy

    cfg = GenerationConfig(temperature=T)
    prompts = torch.zeros(n, 1, dtype=torch.long)
    out = np.empty(R)
    for r in range(R):
        model = fit(real, V + 1, 1, k, V)
        gen0 = sample_batch(model, prompts, L, cfg, seeded_generator(r, 0, "generate", 0), (V,)).numpy()
        model = fit(gen0, V + 1, 1, k, V)
        gen1 = sample_batch(model, prompts, L, cfg, seeded_generator(r, 1, "generate", 0), (V,)).numpy()
        out[r] = entropy(counts(gen1, V + 1)) - entropy(counts(gen0, V + 1))
    return out


@pytest.mark.parametrize("k", [0.0, 0.5])
def test_entropy_drift_follows_the_tempered_add_k_law_and_changes_sign_at_t_star(source_rows, k):
    """The first generation's entropy change at two temperatures either side of the predicted T* matches
    law.entropy_drift (4 standard errors of the chains' mean plus the law's Monte Carlo error), and the measured
    drift changes sign between them: T* is where the law puts it, not at 1."""
    V, n, L, R = 10, 16, 8, 200
    p0 = np.append(np.bincount(source_rows.ravel(), minlength=V), 0).astype(np.float64)  # id V: the separator
    p0 = (p0 + k) / (p0.sum() + k * (V + 1))
    star = law.neutral_temperature(p0, n * L, k, V, repeats=4000)["t_star"]
    assert star is not None and abs(star - 1.0) > 0.05  # at N = 128 the finite sample moves T* well away from 1
    signs = []
    for T in (star - 0.25, star + 0.25):
        d = _drift_chains(R, source_rows, V, n, L, T, k)
        exact, mc_se = law.entropy_drift(p0, n * L, T, k, V, repeats=4000)
        se = np.hypot(d.std(ddof=1) / np.sqrt(R), mc_se)
        assert abs(d.mean() - exact) < Z * se, f"T={T:.3f}, add_k={k}: measured {d.mean():+.4f} ± {se:.4f}, law {exact:+.4f}"
        signs.append(np.sign(d.mean()))
    assert signs == [-1.0, 1.0]
