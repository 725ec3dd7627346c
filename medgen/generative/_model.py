"""One persistence and one registry for every trained generative model.

A saved model is a folder with

- ``model.safetensors``: every network's tensors in one file, under ``"<network>.<name>"`` keys
  (``"generator.net.model.0.conv.weight"``); never pickled objects;
- ``config.json``, written after the weights (it vouches for them by their SHA-256): ``kind`` (the registry name, e.g. ``"denoise"``), ``model`` (the options that rebuild
  the untrained networks), ``train`` (training options), ``seed``, ``data_sha256`` (of the
  training data), ``steps_trained``, ``history``, ``versions`` (package versions) and ``weights``
  (file, format, SHA-256, network names);
- ``run_complete.json``, written last: the completion marker (docs/privacy.md, "Run folders").

The folder is a run folder with a lifecycle (:mod:`medgen.generative._run`): :meth:`~GenerativeModel.save`
holds its lock and refuses a folder that already holds a model or a run unless
``overwrite=True``; :func:`load` refuses an interrupted or mixed folder (no marker, or files
changed after it), naming how to resume or clean it.

:func:`load` reads ``kind`` and returns an instance of the registered class. Classes register with
:func:`register_model_kind`; :class:`~medgen.generative.Denoiser` (``"denoise"``) and
:class:`~medgen.generative.SuperResolver` (``"superres"``) are built in and imported on demand.
Folders written by earlier versions (``"task"`` + ``model.pt``, a state dict read with
``weights_only=True``; or ``config.json`` + ``model.safetensors`` without a marker) still load.

Example (a one-layer model kind, CPU, milliseconds):
    >>> import tempfile
    >>> import torch
    >>> from medgen.generative import GenerativeModel, load, register_model_kind
    >>> @register_model_kind("doctest-scale")
    ... class Scale(GenerativeModel):
    ...     def __init__(self, width=2):
    ...         super().__init__()
    ...         self.width, self.net = width, torch.nn.Linear(width, width)
    ...     def networks(self):
    ...         return {"net": self.net}
    ...     def model_config(self):
    ...         return {"width": self.width}
    ...     @classmethod
    ...     def from_model_config(cls, config):
    ...         return cls(**config)
    >>> m = Scale()
    >>> again = load(m.save(tempfile.mkdtemp()))
    >>> type(again).__name__, torch.equal(again.net.weight, m.net.weight)
    ('Scale', True)
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError
from medgen.generative._run import CONFIG, OWNED, WEIGHTS, check_loadable, prepare_save

if TYPE_CHECKING:
    from typing import Self

    import torch
    from torch import nn

    from medgen.generative.engine import EngineResult

__all__ = [
    "CONFIG",
    "MODEL_KINDS",
    "WEIGHTS",
    "GenerativeModel",
    "get_model_kind",
    "load",
    "model_kinds",
    "register_model_kind",
]

FORMAT_VERSION = 1

#: registered model classes by kind (:func:`register_model_kind`)
MODEL_KINDS: dict[str, type[GenerativeModel]] = {}
#: built-in kinds, registered when their module is imported (on demand)
_BUILTIN_KINDS = {
    "denoise": "medgen.generative.denoise",
    "superres": "medgen.generative.superres",
    "synthesizer": "medgen.generative.synthesis",
    "translator": "medgen.generative.translation",
    "style-transfer": "medgen.generative.style",
}

T = TypeVar("T", bound="GenerativeModel")


def register_model_kind(kind: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a :class:`GenerativeModel` subclass as ``kind``.

    Sets the class's ``kind``; :func:`load` then returns that class for folders saved with it.

    Raises:
        ConfigError: ``kind`` is empty, the class is not a ``GenerativeModel``, or ``kind`` is
            already registered to another class.
    """
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"register_model_kind: kind must be a non-empty string, not {kind!r}.")

    def deco(cls: type[T]) -> type[T]:
        if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
            raise ConfigError(
                f"register_model_kind({kind!r}): {cls!r} is not a GenerativeModel subclass."
            )
        old = MODEL_KINDS.get(kind)
        if old is not None and (old.__module__, old.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ConfigError(
                f"register_model_kind: kind {kind!r} is already registered to "
                f"{old.__module__}.{old.__qualname__}; choose another kind."
            )
        cls.kind = kind
        MODEL_KINDS[kind] = cls
        return cls

    return deco


def model_kinds() -> list[str]:
    """The model kinds :func:`load` knows (registered and built in), sorted.

    Example:
        >>> {"denoise", "superres"} <= set(model_kinds())
        True
    """
    return sorted(set(MODEL_KINDS) | set(_BUILTIN_KINDS))


def get_model_kind(kind: str) -> type[GenerativeModel]:
    """The class registered as ``kind`` (importing a built-in one on first use).

    Raises:
        ConfigError: no class is registered as ``kind``; the message lists the kinds and the
            closest one.
    """
    if kind not in MODEL_KINDS and kind in _BUILTIN_KINDS:
        importlib.import_module(_BUILTIN_KINDS[kind])
    if kind not in MODEL_KINDS:
        raise ConfigError(
            f"model kind {kind!r} is not registered; known kinds: {model_kinds()}."
            f"{did_you_mean(kind, model_kinds())} Import the module that defines it (its class "
            "is decorated with @register_model_kind) before loading."
        )
    return MODEL_KINDS[kind]


def _json_config(cfg: Any) -> Any:
    if cfg is None:
        return None
    if is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = asdict(cfg)
    return json.loads(json.dumps(cfg, default=list))


class GenerativeModel:
    """Base of every trained generative model: networks + options + provenance; save / load.

    Subclasses implement :meth:`networks` (what is saved), :meth:`model_config` (JSON-able
    options) and :meth:`from_model_config` (rebuild the untrained model from them), and register
    with :func:`register_model_kind`. Training code records what it did with
    :meth:`record_training`.

    Attributes:
        kind: the registry name (set by :func:`register_model_kind`).
        train_config: the training options (a dataclass or dict), or ``None`` if untrained.
        history: one dict per training epoch.
        seed: the training seed.
        steps_trained: optimiser steps trained.
        data_hash: SHA-256 of the training data.
        pretrained_name: the registry name of a model loaded with :meth:`pretrained` (or
            ``load("pretrained:NAME")``), else ``None``; ``pretrained_sha256``: its weights'.
        init_source: where fine-tuning started (``fit(init=...)``): ``{"source": "pretrained:NAME"
            or the run folder, "sha256": its weights'}``, else ``None``.
    """

    kind: ClassVar[str] = ""
    pretrained_name: str | None = None
    pretrained_sha256: str | None = None
    init_source: dict[str, str] | None = None

    def __init__(self) -> None:
        self.train_config: Any = None
        self.history: list[dict[str, float]] = []
        self.seed: int | None = None
        self.steps_trained = 0
        self.data_hash: str | None = None

    # ------------------------------------------------------------------ the subclass contract
    def networks(self) -> dict[str, nn.Module]:
        """The networks to save, by name (no dots in the names)."""
        raise NotImplementedError(f"{type(self).__name__} must implement networks()")

    def model_config(self) -> dict[str, Any]:
        """JSON-able options that rebuild the untrained model (:meth:`from_model_config`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement model_config()")

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> Self:
        """The untrained model of ``config`` (what :meth:`model_config` returned)."""
        raise NotImplementedError(f"{cls.__name__} must implement from_model_config()")

    @classmethod
    def train_config_from_dict(cls, d: Mapping[str, Any]) -> Any:
        """The training options from their saved dict (default: the dict)."""
        return dict(d)

    def record_training(
        self, result: EngineResult, *, train_config: Any, data_hash: str | None
    ) -> None:
        """Keep the provenance of a finished :func:`~medgen.generative.engine.fit_objective`."""
        self.train_config = train_config
        self.history = list(result.history)
        self.seed = int(result.objective.seed)
        self.steps_trained = int(result.step)
        self.data_hash = data_hash

    @classmethod
    def pretrained(cls, name: str, *, device: str = "cpu") -> Self:
        """The pretrained model ``name`` shipped with medgen (``Denoiser.pretrained("mri")``),
        its files checked against the registry (:mod:`medgen.generative._pretrained`).

        Raises:
            ConfigError: an unknown name (the known ones are listed), or a model of another kind
                than this class (the names of this kind are listed).
            ChecksumError: a weights or config file differs from the registry's index.
        """
        from medgen.generative._pretrained import load_pretrained

        model = load_pretrained(name, kind=cls.kind or None, device=device)
        if not isinstance(model, cls):
            raise ConfigError(
                f"pretrained model {name!r} is a {type(model).__name__}, not a {cls.__name__}; "
                f"load it with {type(model).__name__}.pretrained({name!r})."
            )
        return model

    # ------------------------------------------------------------------ persistence
    def _extra_meta(self) -> dict[str, Any]:
        """More top-level ``config.json`` entries (for readers of older layouts)."""
        return {}

    @classmethod
    def _upgrade_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """Map a ``config.json`` of an older layout onto the current one."""
        return meta

    @classmethod
    def _missing_message(cls, directory: Path) -> str:
        return (
            f"{directory}: not a saved generative model (needs {CONFIG} and its weights, "
            f"{WEIGHTS}); save one with model.save(directory) or train with run_dir=."
        )

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``model.safetensors`` (all networks), ``config.json`` and then the completion
        marker ``run_complete.json``, each atomically, holding the folder's lock.

        Args:
            directory: a new or empty folder (created when missing).
            overwrite: replace the model or training run already in ``directory`` (its files
                only; a folder holding other files is refused, never emptied).

        Returns:
            The folder.

        Raises:
            RunFolderError: ``directory`` already holds a model or run (without ``overwrite``),
                or files that medgen did not write.
            RunLockedError: another process is writing ``directory``.
        """
        from medgen._internal.runs import run_lock

        d = Path(directory).expanduser()
        what = f"{self.kind or type(self).__name__} model"
        with run_lock(d, what=what, owned=OWNED):
            prepare_save(d, overwrite=overwrite, what=what)
            self._write_model(d)
        return d

    def _write_model(self, d: Path) -> None:
        """Write the weights, ``config.json`` and the completion marker into ``d`` (the caller
        holds the folder's lock and prepared it)."""
        from safetensors.torch import save_file

        from medgen._internal.files import atomic_path, write_text_atomic
        from medgen._internal.provenance import file_sha256, package_versions
        from medgen._internal.runs import mark_complete

        d.mkdir(parents=True, exist_ok=True)
        nets = self.networks()
        bad = [n for n in nets if not n or "." in n]
        if bad:
            raise ConfigError(
                f"{type(self).__name__}.networks(): names must be non-empty and without dots "
                f"(they prefix the saved tensors), not {bad!r}."
            )
        tensors: dict[str, torch.Tensor] = {}
        for name, net in nets.items():
            for key, value in net.state_dict().items():
                # a copy per entry: safetensors refuses tensors that share memory (tied weights)
                tensors[f"{name}.{key}"] = value.detach().cpu().clone().contiguous()
        with atomic_path(d / WEIGHTS, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"kind": self.kind, "format": "medgen"})
        meta = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            **self._extra_meta(),
            "model": self.model_config(),
            "train": _json_config(self.train_config),
            "seed": self.seed,
            "data_sha256": self.data_hash,
            "steps_trained": self.steps_trained,
            "history": self.history,
            **({"init": self.init_source} if self.init_source else {}),
            **(
                {"pretrained": {"name": self.pretrained_name, "sha256": self.pretrained_sha256}}
                if self.pretrained_name
                else {}
            ),
            "versions": package_versions(),
            "weights": {
                "file": WEIGHTS,
                "format": "safetensors",
                "sha256": file_sha256(d / WEIGHTS),
                "networks": sorted(nets),
            },
        }
        write_text_atomic(d / CONFIG, json.dumps(meta, indent=2, default=str))
        mark_complete(
            d, [WEIGHTS, CONFIG], kind=self.kind, info={"steps_trained": self.steps_trained}
        )

    @classmethod
    def _read_meta(cls, d: Path) -> dict[str, Any]:
        if not (d / CONFIG).is_file():
            raise MedgenFileNotFoundError(cls._missing_message(d))
        try:
            meta = json.loads((d / CONFIG).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise MedgenValueError(
                f"{d / CONFIG}: not valid JSON ({err}); the model folder is damaged. Save or "
                "train the model again."
            ) from err
        if not isinstance(meta, dict):
            raise MedgenValueError(
                f"{d / CONFIG}: expected a JSON object, got {type(meta).__name__}; the model "
                "folder is damaged. Save or train the model again."
            )
        return meta

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str = "cpu") -> Self:
        """Load a model saved by :meth:`save` (or a finished training run folder).

        On the base class (and :func:`load`) the class is chosen by the folder's ``kind``.

        Raises:
            MedgenFileNotFoundError: the folder, its ``config.json`` or its weights are missing.
            MedgenValueError: ``config.json`` or the weights are corrupt (or do not match).
            ConfigError: the folder holds another kind of model than this class, or a kind that
                is not registered.
            RunFolderError: the folder holds an interrupted run (no ``run_complete.json``) or is
                mixed (files changed after the run finished, or an earlier model beside a later
                run's training state); the message says how to resume or clean it.
        """
        d = Path(directory).expanduser()
        marker = check_loadable(
            d,
            what=f"{cls.kind} model" if cls.kind else "generative model",
            missing=cls._missing_message(d),
        )
        verified = frozenset((marker or {}).get("files", {}))
        return cls._load_checked(d, device=device, verified=verified)

    @classmethod
    def _load_checked(cls, d: Path, *, device: str, verified: frozenset[str] = frozenset()) -> Self:
        """:meth:`load` of a folder :func:`~medgen.generative._run.check_loadable` accepted;
        ``verified``: the files whose SHA-256 the completion marker has just confirmed."""
        import torch

        meta = cls._read_meta(d)
        # "task": the key of restoration folders of earlier versions
        kind = meta.get("kind", meta.get("task"))
        if cls is not GenerativeModel:
            meta = cls._upgrade_meta(meta)
        if not isinstance(kind, str):
            raise MedgenValueError(
                f"{d / CONFIG}: has no model 'kind'; it was not written by "
                "GenerativeModel.save. Save or train the model again."
            )
        if cls is GenerativeModel:
            target = get_model_kind(kind)
            return target._load_checked(d, device=device, verified=verified)  # type: ignore[return-value]
        if kind != cls.kind:
            try:
                hint = f"{get_model_kind(kind).__name__}.load or "
            except ConfigError:
                hint = ""
            raise ConfigError(
                f"{d} holds a {kind!r} model, not a {cls.kind!r} model; load it with {hint}"
                "medgen.generative.load(run_dir), which picks the class from the folder."
            )
        obj = cls.from_model_config(meta.get("model") or {})
        weights = cls._read_weights(d, dict(meta.get("weights") or {}), verified=verified)
        nets = obj.networks()
        for name, net in nets.items():
            prefix = f"{name}."
            sd = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            wfile = d / str((meta.get("weights") or {}).get("file", WEIGHTS))
            if not sd:
                raise MedgenValueError(
                    f"{wfile}: holds no tensors of network {name!r} (it has "
                    f"{sorted({k.split('.', 1)[0] for k in weights})}); the weights belong to "
                    "another model. Save or train the model again."
                )
            try:
                net.load_state_dict(sd)
            except RuntimeError as err:
                raise MedgenValueError(
                    f"{wfile}: the tensors of network {name!r} do not fit the model described "
                    f"in {CONFIG} ({str(err).splitlines()[0]}); the two files belong to "
                    "different models. Save or train the model again."
                ) from None
            net.to(torch.device(device)).eval()
        tc = meta.get("train")
        obj.train_config = cls.train_config_from_dict(tc) if tc else None
        obj.history = list(meta.get("history") or [])
        obj.seed = meta.get("seed")
        obj.steps_trained = int(meta.get("steps_trained") or 0)
        obj.data_hash = meta.get("data_sha256")
        obj.init_source = meta.get("init")
        return obj

    @classmethod
    def _read_weights(
        cls, d: Path, wmeta: Mapping[str, Any], *, verified: frozenset[str] = frozenset()
    ) -> dict[str, torch.Tensor]:
        """All saved tensors by ``"<network>.<name>"`` key, on the CPU. The SHA-256 recorded in
        ``config.json`` is checked unless the completion marker already confirmed the file
        (``verified``; folders of earlier versions have no marker)."""
        import torch

        from medgen._internal.provenance import file_sha256

        path = d / str(wmeta.get("file", WEIGHTS))
        if not path.is_file():
            raise MedgenFileNotFoundError(cls._missing_message(d))
        expected = wmeta.get("sha256")
        if expected and path.name not in verified and file_sha256(path) != expected:
            raise MedgenValueError(
                f"{path}: its SHA-256 differs from the one recorded in {d / CONFIG}; the weights "
                "are corrupt or were replaced after saving. Save or train the model again."
            )
        fmt = wmeta.get("format", "safetensors")
        try:
            if fmt == "safetensors":
                from safetensors.torch import load_file

                return dict(load_file(str(path), device="cpu"))
            # earlier versions: one network's state dict, read without unpickling objects
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch / safetensors raise many types; their advice is unsafe
            raise MedgenValueError(
                f"{path}: cannot read the weights ({type(err).__name__}); the file is corrupt, "
                "truncated or not a medgen model. Save or train the model again."
            ) from None
        if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise MedgenValueError(
                f"{path}: expected a state dict of tensors; the file is not a medgen model. "
                "Save or train the model again."
            )
        net = str(wmeta.get("network", "generator"))
        return {f"{net}.{k}": v for k, v in state.items()}


def load(run_dir: str | os.PathLike[str], *, device: str = "cpu") -> GenerativeModel:
    """Load any saved generative model; its class comes from the folder's ``kind``.

    Args:
        run_dir: a folder written by ``save`` or by ``fit(..., run_dir=...)``, or
            ``"pretrained:NAME"``: a model shipped with medgen
            (:func:`~medgen.generative.available_pretrained`; give a folder of that name by
            its absolute path).
        device: where the networks go.

    Raises:
        MedgenFileNotFoundError: no ``config.json`` or weights in ``run_dir``.
        MedgenValueError: a corrupt ``config.json`` or weights file (named).
        ConfigError: the folder's kind is not registered; an unknown pretrained name.
        ChecksumError: a pretrained model's file differs from the registry's index.
        RunFolderError: an interrupted or mixed run folder (the message says how to resume or
            clean it).
    """
    from medgen.generative._pretrained import load_pretrained, parse_pretrained

    name = parse_pretrained(run_dir)
    if name is not None:
        return load_pretrained(name, device=device)
    return GenerativeModel.load(run_dir, device=device)
