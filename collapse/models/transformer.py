"""The transformer kind: causal LMs from transformers — a hub id, a local folder, or the scratch model.

It owns ``train.method`` x ``train.init`` for these models:

    train.method=lora, train.init=base      model g = generation 0 + a fresh LoRA adapter trained on corpus g-1;
                                            saved as gen_g/adapter (reloaded onto generation 0)
    train.method=lora, train.init=previous  model g = model g-1 merged + a fresh adapter; saved as gen_g/adapter
                                            and gen_g/model (merged: generation g+1 starts from it)
    train.method=full, either init          every weight trained; saved as gen_g/model

Weights are safetensors only. May import: config, errors, io, seeding, modeling, scratch, train, evaluate.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from collapse.errors import DataError, first_line
from collapse.io import atomic_dir
from collapse.models.kind import Loaded, ModelFacts, ModelKind, TrainJob, context_length


class TransformerKind(ModelKind):
    name = "transformer"

    def claims(self, name_or_path: str) -> bool:
        return True  # whatever no other kind claims

    # ---- check, then load
    def facts(self, cfg, splits, device) -> ModelFacts:
        from collapse.models.hf import load_skeleton, model_source, resolve_dtype

        m = cfg.model
        cache = file = None
        if m.name_or_path == "scratch":
            from collapse.models.scratch import SHIPPED, TOKENS_FILE, build_scratch_model, scratch_folder

            folder = scratch_folder(m.scratch, splits)
            if (folder / "DONE").is_file():
                skel, tok = load_skeleton(str(folder), m, device)
                cache = folder / TOKENS_FILE
                where = "shipped generation 0 (collapse/gen0)" if folder == SHIPPED else f"cached in {folder}"
            else:
                with torch.device("meta"):
                    tok = getattr(splits, "tokenizer", None)  # the synthetic source's: its size, not vocab_size
                    skel = build_scratch_model(m.scratch, len(tok) if tok is not None else m.scratch.vocab_size, 0)
                tok = None  # made with the model
                steps = (f"until converged, at most {m.scratch.steps} steps" if m.scratch.until == "converged"
                         else f"{m.scratch.steps} steps")
                where = f"not built yet: built first (pre-training {steps}), then cached"
            s = m.scratch
            label = f"scratch {s.arch} {s.n_layer}×{s.d_model}, {where}"
        else:
            skel, tok = load_skeleton(m.name_or_path, m, device)
            label = m.name_or_path
            file = model_source(m.name_or_path, m.gguf_file, m.revision).file
            if file is not None:
                from collapse.models.gguf import read_facts

                g = read_facts(file)
                label = (f"{m.name_or_path}: GGUF {g.architecture} `{g.name}` ({g.size / 2**20:,.1f} MiB; tensors "
                         f"{g.quantization}), dequantized to {str(resolve_dtype(m.dtype, device)).replace('torch.', '')}")
        n = sum(p.numel() for p in skel.parameters())
        toks = f"tokenizer {len(tok):,} entries" if tok is not None else "tokenizer built with it"
        return ModelFacts(skel, tok, f"{label}; {n / 1e6:.2f}M parameters, context {context_length(skel):,}; {toks}",
                          cache, file)

    def check_early(self, cfg, splits, command: str) -> None:
        """Before a scratch model is built for `collapse measure`: its byte-level BPE gives a document at most as
        many tokens as it has UTF-8 bytes, so the examples can be checked against the window without it."""
        from collapse.errors import DataError

        if command != "measure" or cfg.model.name_or_path != "scratch":
            return
        w = cfg.measure.window
        from collapse.data import measure_docs, split_label

        longest = max((len(d.encode("utf-8")) for d in measure_docs(splits, cfg.measure.split)), default=0)
        if longest < w:
            raise DataError(f"every {split_label(cfg.measure.split)} example is shorter than measure.window={w} tokens (longest: "
                            f"{longest} bytes): lower measure.window or use longer documents.")

    def context_hint(self, cfg) -> str:
        return " (or raise model.scratch.context)" if cfg.model.name_or_path == "scratch" else ""

    def title(self, cfg) -> str:
        if cfg.model.name_or_path != "scratch":
            from collapse.models.gguf import PACKAGE, is_gguf_name

            name = cfg.model.name_or_path
            if name.startswith(PACKAGE) or is_gguf_name(name):
                return Path(name).name
            path = Path(name)
            if path.is_absolute() and len(path.parts) > 4:  # a run folder's model: its run, not the whole path
                return str(Path("…", *path.parts[-3:]))
            return name
        s = cfg.model.scratch
        return f"scratch {s.arch} ({s.n_layer} layers, d={s.d_model})"

    def check_fits(self, cfg, model) -> None:
        from collapse.models.hf import check_lora_targets, default_targets

        super().check_fits(cfg, model)
        if cfg.train.method == "lora":
            lc = cfg.train.lora
            check_lora_targets(model, lc.target_modules or default_targets(model), lc.modules_to_save)

    def training_line(self, cfg, skeleton) -> str:
        from collapse.models.hf import default_targets

        tc = cfg.train
        lora = f" r={tc.lora.r} on {','.join(tc.lora.target_modules or default_targets(skeleton))}" \
            if tc.method == "lora" else ""
        return f"{tc.method}{lora} from {tc.init}, {tc.epochs} epochs, lr {tc.lr:g}, batch {tc.batch_size}"

    def load(self, cfg, splits, device, show_progress: bool = True, accelerator=None) -> Loaded:
        from collapse.models.hf import load_pretrained

        if cfg.name_or_path == "scratch":  # shipped, cached, or built now
            from collapse.models.scratch import TOKENS_FILE, get_scratch_model

            folder = get_scratch_model(cfg.scratch, splits, show_progress, accelerator=accelerator)
            model, tok = load_pretrained(str(folder), cfg, device)
            return Loaded(model, tok, str(folder), folder / TOKENS_FILE)
        from collapse.models.hf import model_source

        model, tok = load_pretrained(cfg.name_or_path, cfg, device)
        return Loaded(model, tok, cfg.name_or_path, file=model_source(cfg.name_or_path, cfg.gguf_file, cfg.revision).file)

    # ---- train, save, load
    def _lora(self, cfg) -> bool:
        return cfg.train.method == "lora"

    def weights_subdir(self, cfg) -> str:
        return "adapter" if self._lora(cfg) and not self.continues_previous(cfg) else "model"

    def start(self, cfg, g: int, base, prev):
        from collapse.models.hf import attach_lora
        from collapse.seeding import seed_torch

        start = starting_model(cfg.train.init, base, prev)
        # LoRA init (and dropout, if any) draw from the global torch RNG: seeded from (seed, g) right here, so
        # nothing the process did before (an earlier generation, or nothing at all on resume) matters
        seed_torch(cfg.seed, g, "init")
        if self._lora(cfg):
            return attach_lora(start, cfg.train.lora)
        if any(p.dtype in (torch.bfloat16, torch.float16) for p in start.parameters()):
            # float32 master weights: in bf16, lr 2e-5 updates round away; compute stays bf16 through autocast
            start = start.float()
        for p in start.parameters():
            p.requires_grad_(True)
        return start

    def train(self, trainee, job: TrainJob):
        from collapse.models.train import finetune

        stats = finetune(trainee, job.rows, job.val_blocks, job.train_cfg, job.accelerator, key=job.key,
                         show_progress=job.show_progress, desc=job.desc, on_step=job.on_step, curve=job.curve,
                         val_every=job.extra.get("val_every", 0))
        return trainee, stats

    def save(self, cfg, model, gen_folder: Path, is_main: bool):
        """gen_g/adapter (LoRA) and, where a later generation continues from it, gen_g/model (merged).

        Returns what the later stages of generation g use: with LoRA and train.init=previous the merged model,
        exactly the weights in gen_g/model, so a resumed run that reloads them gets the same numbers."""
        lora, cont = self._lora(cfg), self.continues_previous(cfg)
        folded = copy.deepcopy(model).merge_and_unload().eval() if lora and cont else None
        if is_main:
            with atomic_dir(gen_folder / ("adapter" if lora else "model")) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
            if folded is not None:
                with atomic_dir(gen_folder / "model") as tmp:
                    folded.save_pretrained(tmp, safe_serialization=True)
        return folded if folded is not None else model

    def save_merged(self, model, folder: Path, is_main: bool, tokenizer=None):
        """``model`` with any adapter folded in, saved in ``folder`` (generation 0 fine-tuned on real text), with
        ``tokenizer`` beside it so the folder is a model source of its own."""
        model = merged(model)
        if is_main:
            with atomic_dir(folder) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
        return model.eval()

    def load_merged(self, folder: Path, device):
        return load_model_dir(folder, device)

    def merged_bytes(self, cfg, model0) -> int:
        return master_bytes(model0) if cfg.train.method == "full" else weights_bytes(model0)

    def load_generation(self, cfg, folder: Path, base, device, g: int):
        if not any(folder.glob("*.safetensors")):  # never let a library fall back to a pickled .bin
            raise DataError(f"the weights of generation {g} in {folder} are not in safetensors format: "
                            "delete the folder and rerun the same command to retrain it.")
        try:
            if folder.name == "adapter":
                from peft import PeftModel

                return PeftModel.from_pretrained(copy.deepcopy(base), folder).to(device).eval()
            return load_model_dir(folder, device)
        except Exception as e:  # noqa: BLE001 - safetensors / peft / transformers raise several types
            raise DataError(f"the weights of generation {g} in {folder} cannot be read ({first_line(e, 120)}): "
                            f"delete {folder} and rerun the same command to retrain it.") from None

    def weights_problem(self, folder: Path) -> str | None:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not files:
            return f"{folder.name}/ holds no weights"
        for f in files:
            try:
                with safe_open(str(f), "np") as fh:
                    fh.keys()
            except Exception as e:  # noqa: BLE001 - SafetensorError and OSError
                return f"{f.relative_to(folder.parent.parent)} cannot be read ({first_line(e, 120)})"
        return None

    def bytes_per_generation(self, cfg, model0) -> int:
        """The adapter (+ the merged model), or the whole model (a full fine-tune in float32, its master weights)."""
        if not self._lora(cfg):
            return master_bytes(model0)
        return adapter_bytes(model0, cfg) + (weights_bytes(model0) if self.continues_previous(cfg) else 0)


def load_model_dir(folder: Path, device):
    """A saved (merged or fully fine-tuned) model in the dtype it was saved in: the weights a run used in memory."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="auto", use_safetensors=True).to(device).eval()


def merged(model):
    """``model`` with any LoRA adapter folded into its weights (a plain transformers model)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def starting_model(init: str, base, prev):
    """A fresh copy of the weights a generation starts from: generation 0's (``base``) or model g-1's (merged)."""
    if init == "base" or prev is None:
        return copy.deepcopy(base)
    return merged(copy.deepcopy(prev))


def weights_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def master_bytes(model) -> int:
    """A fully trained copy of ``model`` as saved: float32 (or wider) weights."""
    return sum(p.numel() * max(4, p.element_size()) for p in model.parameters())


def adapter_bytes(model, cfg) -> int:
    """Size of one generation's LoRA adapter: r x (in + out) per adapted layer, plus modules_to_save."""
    from transformers.pytorch_utils import Conv1D

    from collapse.models.hf import default_targets

    lc = cfg.train.lora
    targets = set(lc.target_modules or default_targets(model))
    save = set(lc.modules_to_save or [])
    total = 0
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, (torch.nn.Linear, Conv1D)) and leaf in targets:
            total += lc.r * sum(mod.weight.shape) * mod.weight.element_size()
        if leaf in save:
            total += weights_bytes(mod)
    return total
