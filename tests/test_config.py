"""Config: the shipped YAML files, precedence, dotted overrides, validation messages, fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from collapse.config import Config, load_config
from collapse.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "configs").glob("**/*.yaml")
                 if "accelerate" not in p.relative_to(REPO / "configs").parts[:1])


def _id(p: Path) -> str:
    return str(p.relative_to(REPO))


def test_there_are_configs():
    assert CONFIGS, "no YAML files under configs/"


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_file_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", CONFIGS, ids=_id)
def test_config_file_first_line_is_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(("# collapse ", "# accelerate launch ")), first
    assert _id(path) in first, f"the first line should name the file it runs: {first!r}"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    p = _write(tmp_path, "seed: 3\ngenerations: 2\ngeneration:\n  temperature: 0.7\n")
    d = Config()
    cfg = load_config(p)
    assert (cfg.seed, cfg.generations, cfg.generation.temperature) == (3, 2, 0.7)  # YAML over defaults
    assert cfg.generation.top_k == d.generation.top_k and cfg.measure.window == d.measure.window  # defaults
    cfg = load_config(p, ["seed=7", "generation.top_k=5"])
    assert cfg.seed == 7  # CLI over YAML
    assert cfg.generations == 2  # YAML kept
    assert cfg.generation.temperature == 0.7 and cfg.generation.top_k == 5  # sibling keys merge, not replace
    assert load_config(None, ["seed=9"]).seed == 9  # CLI over defaults
    assert load_config(None).to_dict() == d.to_dict()


def test_later_override_wins():
    assert load_config(None, ["seed=1", "seed=2"]).seed == 2


def test_dotted_list_overrides():
    cfg = load_config(None, ["wandb.tags=[a,b]", "train.lora.target_modules=c_attn,c_fc"])
    assert cfg.wandb.tags == ["a", "b"]
    assert cfg.train.lora.target_modules == ["c_attn", "c_fc"]
    assert load_config(None, ["wandb.tags=solo"]).wandb.tags == ["solo"]
    assert load_config(None, ["train.lora.target_modules=null"]).train.lora.target_modules is None


def test_override_types_are_converted():
    cfg = load_config(None, ["generation.temperature=1", "generation.num_sequences=null", "overwrite=true",
                             "data.config=wikitext-2-raw-v1"])
    assert cfg.generation.temperature == 1.0 and isinstance(cfg.generation.temperature, float)
    assert cfg.generation.num_sequences is None
    assert cfg.overwrite is True
    assert cfg.data.config == "wikitext-2-raw-v1"


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"generation\.temperature") as e:
        load_config(None, ["generation.temprature=0.5"])
    assert "generation.temprature" in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"measure\.window"):
        load_config(_write(tmp_path, "measure:\n  windw: 64\n"))


@pytest.mark.parametrize("item, key", [
    ("generations=abc", "generations"),
    ("generation.temperature=hot", "generation.temperature"),
    ("overwrite=maybe", "overwrite"),
    ("train.lora.r=[1,2]", "train.lora.r"),
    ("generation=3", "generation"),
])
def test_wrong_type(item, key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', r'[.]')}\b"):
        load_config(None, [item])


@pytest.mark.parametrize("item, key", [
    ("regime.real_fraction=1.5", "regime.real_fraction"),
    ("regime.real_fraction=-0.1", "regime.real_fraction"),
    ("generations=0", "generations"),
    ("measure.window=255", "measure.window"),
    ("measure.samples=0", "measure.samples"),
    ("generation.top_p=0", "generation.top_p"),
    ("regime.kind=forget", "regime.kind"),
    ("wandb.mode=sometimes", "wandb.mode"),
    ("wandb.log_every=0", "wandb.log_every"),
])
def test_out_of_range(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [item])


def test_wandb_defaults_to_auto_and_uploads_weights():
    w = load_config(None).wandb
    assert (w.mode, w.log_weights, w.log_every) == ("auto", True, 1)
    assert load_config(REPO / "configs" / "tiny.yaml").wandb.mode == "auto"  # the embedded default too


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["generations"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "seed: [1\n"))


def test_fingerprint():
    base = load_config(None)
    assert base.fingerprint() == load_config(None).fingerprint()  # stable
    assert len(base.fingerprint()) == 16
    for item in ("seed=1", "generation.temperature=0.5", "regime.kind=mix", "model.scratch.d_model=64",
                 "data.source=other.txt"):
        assert load_config(None, [item]).fingerprint() != base.fingerprint(), item
    for item in ("wandb.mode=offline", "wandb.tags=[x]", "wandb.log_weights=false", "wandb.log_every=5",
                 "out_dir=elsewhere", "resume=never", "overwrite=true"):
        assert load_config(None, [item]).fingerprint() == base.fingerprint(), item
