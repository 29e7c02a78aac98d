"""Which W&B mode a run gets (``wandb.mode``: auto, disabled, offline, online) and its run id."""

from __future__ import annotations

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
