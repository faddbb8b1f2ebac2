"""The models a server may serve: conf/model options and finetune run directories, each under a name that
clients use (a run directory is named by its folder, never by its absolute path)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig, RunConfig, compose, from_saved, one_line


@dataclass
class ModelSpec:
    """A model the server may load: a conf/model option, or a finetune run directory (``checkpoint``)."""

    name: str
    cfg: ModelConfig
    checkpoint: RunConfig | None = None  # the finetune run's config
    weights: Path | None = None  # its saved model or adapter folder

    @property
    def head(self) -> bool:
        """A classification head (a fine-tuned encoder) rather than a language model."""
        return self.checkpoint is not None and self.cfg.kind == "encoder"


@dataclass
class Served:
    """A loaded model: an HFLM (language models) or a classification head with its tokenizer."""

    spec: ModelSpec
    lm: Any = None
    head: Any = None
    tokenizer: Any = None
    device: Any = None


def model_specs(run: RunConfig, overrides: list[str]) -> dict[str, ModelSpec]:
    """The server's model (``model=``) and ``serve.models``, by name. ``overrides`` (without model and task
    ones) are composed into each conf/model option. A run directory is named by its folder name, or by as
    many trailing folders as tell it apart from the others (``2026-01-02/run``)."""
    specs = {run.model.name: ModelSpec(run.model.name, run.model)}
    dirs = [name for name in run.serve.models if Path(name).expanduser().is_dir()]
    names = folder_names([Path(d).expanduser().resolve() for d in dirs])
    for entry in run.serve.models:
        if entry in dirs:
            name = names[dirs.index(entry)]
            if name in specs:
                raise ConfigError(f"run directory {entry!r} would be served as {name!r}, a name already taken")
            specs[name] = checkpoint_spec(entry, name)
        elif entry not in specs:
            specs[entry] = ModelSpec(entry, compose([*overrides, f"model={entry}"]).model)
    return specs


def folder_names(folders: list[Path]) -> list[str]:
    """Short distinct names for folders: the last path component, or the last few where those clash."""
    depth = 1
    while True:
        names = ["/".join(f.parts[-depth:]) for f in folders]
        if len(set(names)) == len(names) or depth >= max((len(f.parts) for f in folders), default=1):
            return names
        depth += 1


def checkpoint_spec(path: str, name: str) -> ModelSpec:
    """A finetune run directory as a servable model: its config and saved weights from results.json."""
    from omegaconf import OmegaConf

    from ..results import read_results

    folder = Path(path).expanduser()
    try:
        record = read_results(folder)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path!r} is not a run directory with a readable results.json ({one_line(exc)})") from exc
    saved = (record.get("training") or {}).get("saved_model")
    if record.get("method") != "finetune" or not saved:
        raise ConfigError(f"run directory {path!r} holds no saved fine-tuned model (method.save_model=true)")
    hydra_config = folder / ".hydra" / "config.yaml"  # written by the CLI; results.json redacts token-like keys
    saved_config = OmegaConf.load(hydra_config) if hydra_config.is_file() else _unredacted(record["config"])
    run = from_saved(saved_config, f"run directory {path!r}")
    if run.peft.method not in ("full", "lora"):
        raise ConfigError(f"serving a peft={run.peft.method} checkpoint is not supported; allowed: full, lora")
    return ModelSpec(name=name, cfg=run.model, checkpoint=run, weights=Path(saved))


def _unredacted(value: Any) -> Any:
    """A results.json config without the values :func:`~autoglm_bench.results.redact` hid (defaults fill in)."""
    if isinstance(value, dict):
        return {k: _unredacted(v) for k, v in value.items() if v != "<redacted>"}
    return value
