"""Which W&B mode a run gets (``wandb.mode``: auto, disabled, offline, online) and its run id."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def logged_in() -> bool:
    """Whether W&B would find credentials without asking: what wandb 0.31 reads (``wbauth._use_system_auth``):
    WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or a netrc entry (NETRC, else ~/.netrc) for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc
    from urllib.parse import urlsplit

    path = Path(os.environ["NETRC"]).expanduser() if os.environ.get("NETRC") else Path.home() / ".netrc"
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        creds = netrc.netrc(path).authenticators(host) if path.is_file() and host else None
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(creds and creds[2])




def resolve_mode(mode: str) -> tuple[str, str]:
    """``wandb.mode`` -> (``disabled`` | ``offline`` | ``online``, why, when it is not what was asked)."""
    if mode == "auto":
        env = {"dryrun": "offline", "run": "online"}.get(os.environ.get("WANDB_MODE", "").strip().lower(),
                                                         os.environ.get("WANDB_MODE", "").strip().lower())
        if env in ("disabled", "offline"):
            return env, f"WANDB_MODE={env}"
        if env != "online":
            return ("online", "logged in to W&B") if logged_in() else ("offline", "not logged in to W&B")
        mode = "online"
    if mode == "online" and not logged_in():
        return "offline", "no W&B API key (WANDB_API_KEY or netrc)"
    return mode, ""


def wants_wandb(wcfg) -> bool:
    return resolve_mode(wcfg.mode)[0] != "disabled"


def new_run_id() -> str:
    """A W&B run id, chosen before ``wandb.init`` so a run killed at any moment resumes the same W&B run.

    Under ``wandb agent`` (a W&B sweep) the agent's id: the sweep waits for the run it started."""
    import secrets
    import string

    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


AGENT_VARIABLES = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")  # what `wandb agent` sets for its run
NOT_A_CONDITION = ("seed", "out_dir", "wandb", "resume", "overwrite", "keep_checkpoints")  # repeats, not settings


def default_group(config: dict) -> str:
    """The W&B group of a run whose ``wandb.group`` is null: ``<model>-<regime>-<8 hex>``, the hex a hash of the
    config without the seed and bookkeeping, so the seeds of one setting land in one group."""
    rest = {k: v for k, v in config.items() if k not in NOT_A_CONDITION}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]
    model = Path(str((config.get("model") or {}).get("name_or_path", "model"))).name or "model"
    regime = (config.get("regime") or {}).get("kind", "run")
    return f"{model[:32]}-{regime}-{digest}"
