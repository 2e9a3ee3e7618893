"""Save and reload compressed models: safetensors weights + a JSON description, never pickles.

A compressed directory holds

* ``model.safetensors`` — the model's state dict as it is, the low-rank factors included (shared tensors
  such as tied embeddings stored once), so the file is as small as the parameter count says;
* ``fwsvd_compressed.json`` — format version, the model class, its full config, the compression config
  (:class:`~fwsvd.config.CompressionConfig`'s document, every rank pinned: what the Export page downloads),
  every factorized layer's shape / rank / bias / source kind, the Fisher provenance and the fwsvd version;
* ``config.json`` (and the tokenizer, when given), so the usual tools can read the config.

Loading rebuilds the model from its config (no weights download), puts an empty ``LowRankLinear`` of the
recorded shape where each factorized layer was, then loads the weights with every name checked — the
structure is rebuilt from data, as PEFT does with adapters, instead of unpickling modules.

``dense=True`` instead multiplies the factors back and writes a plain ``save_pretrained`` folder that any
runtime loads with ``from_pretrained`` (full size: the saving is then in rank, not in bytes).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import CONFIG_MAPPING, PreTrainedModel, PreTrainedTokenizerBase

from fwsvd.config import COMPRESSED_FORMAT, CompressionConfig, config_from_document
from fwsvd.surgery.compress import densify_
from fwsvd.storage.atomic import write_text_atomic
from fwsvd.surgery.lowrank import LowRankLinear
from fwsvd.surgery.modules import count_parameters, replace_module

INFO_FILE = "fwsvd_compressed.json"
WEIGHTS_FILE = "model.safetensors"
#: Bump when the directory layout or the JSON's meaning changes; newer files are refused, not misread.
#: 1: the method and ranks at the top level; 2: a CompressionConfig document under "config".
FORMAT_VERSION = 2


def fwsvd_version() -> str:
    """The installed fwsvd version (recorded in saved models); "unknown" when run from an uninstalled tree."""
    try:
        return metadata.version("fwsvd")
    except metadata.PackageNotFoundError:
        return "unknown"


def low_rank_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{qualified name: shape, rank, bias, source kind} of every LowRankLinear in ``model``."""
    return {
        name: {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "rank": module.rank,
            "bias": module.second.bias is not None,
            "source_kind": module.source_kind,
        }
        for name, module in model.named_modules()
        if isinstance(module, LowRankLinear)
    }


def _float_dtype(model: nn.Module) -> str:
    dtypes = {parameter.dtype for parameter in model.parameters() if parameter.is_floating_point()}
    if len(dtypes) > 1:
        raise ValueError(f"the model mixes floating-point dtypes {sorted(map(str, dtypes))}; cast it to one "
                         "(e.g. model.float()) before saving")
    return str(next(iter(dtypes), torch.float32)).removeprefix("torch.")


def save_compressed(
    model: PreTrainedModel,
    directory: str | os.PathLike[str],
    *,
    config: CompressionConfig | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    fisher_provenance: dict[str, Any] | None = None,
    dense: bool = False,
    kept_dense: Mapping[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (compressed in place by ``compress_``) to ``directory``; returns the directory.

    ``config`` (``report.config``) is recorded with its ranks pinned to the model's low-rank layers, so it
    reproduces the compression (None: recorded as unknown); ``fisher_provenance``
    (``FisherResult.provenance``) says which Fisher it used; ``extra`` is any further JSON-serialisable
    information (e.g. fine-tuning settings). ``kept_dense`` (``report.kept_dense``) records the layers left dense
    because their rank was at or past break-even, {layer: the rank asked}. ``dense=True`` writes a plain
    transformers folder with the factors multiplied back.
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"save_compressed takes a transformers PreTrainedModel, got {type(model).__name__}")
    directory = Path(directory).expanduser()
    if directory.is_file():
        raise ValueError(f"{directory} is a file; save_compressed writes a directory")
    layers = low_rank_layers(model)
    if config is not None and not layers:
        raise ValueError("a config was given, but the model has no low-rank layers: compress it first")
    info = {
        "format": COMPRESSED_FORMAT,
        "format_version": FORMAT_VERSION,
        "fwsvd_version": fwsvd_version(),
        "architecture": type(model).__name__,
        "dense": dense,
        "dtype": _float_dtype(model),
        "config": None if config is None else config.with_ranks(
            {name: layer["rank"] for name, layer in layers.items()}).to_dict(),
        "layers": layers,
        "kept_dense": dict(kept_dense or {}),
        "params": count_parameters(model),
        "fisher_provenance": fisher_provenance,
        "extra": extra or {},
        "base_config": model.config.to_dict(),
    }
    # Fail before writing anything if the caller's additions cannot be stored.
    text = json.dumps(info, indent=2, default=_not_serialisable)
    directory.mkdir(parents=True, exist_ok=True)
    if dense:
        dense_model = densify_(copy.deepcopy(model))
        dense_model.save_pretrained(directory)
    else:
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(directory)
        # Factors viewing a kept decomposition share its storage with other layers' views, which safetensors
        # cannot write: each layer gets its own copy (its function and set_ranks_ are unchanged).
        for module in model.modules():
            if isinstance(module, LowRankLinear):
                module.own_factors_()
        save_model(model, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    write_text_atomic(directory / INFO_FILE, text)
    return directory


def _not_serialisable(value: Any) -> Any:
    raise ValueError(f"cannot record {type(value).__name__} {value!r} in {INFO_FILE}: "
                     "fisher_provenance and extra must be JSON-serialisable")


def read_compressed_info(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked contents of a compressed directory's ``fwsvd_compressed.json``, in the current format:
    ``info["config"]`` is a :class:`~fwsvd.config.CompressionConfig` document (``CompressionConfig.from_dict``)
    or None where unknown. A format version 1 file (method and ranks at the top level) reads as the same."""
    directory = Path(directory).expanduser()
    if not directory.exists():
        raise FileNotFoundError(f"compressed model directory not found: {directory}")
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory; a compressed model is a directory written by "
                         "save_compressed")
    path = directory / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {INFO_FILE}: it was not written by save_compressed "
                                "(a plain transformers model loads with from_pretrained)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the directory is damaged") from error
    if not isinstance(info, dict) or info.get("format") != COMPRESSED_FORMAT:
        raise ValueError(f"{path} does not describe an fwsvd compressed model")
    version = info.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}, newer than this fwsvd reads "
                         f"({FORMAT_VERSION}, fwsvd {fwsvd_version()}); upgrade fwsvd to load it")
    missing = [key for key in ("architecture", "dense", "layers", "base_config") if key not in info]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; the directory is damaged")
    info.setdefault("kept_dense", {})  # written from format version 2 on; none before
    try:
        if version == 1:
            method, ranks = info.pop("method", None), info.pop("ranks", None)
            info["config"] = None if not (method and ranks) else config_from_document(
                {"format": COMPRESSED_FORMAT, "method": method, "ranks": ranks}).to_dict()
        elif info.get("config") is not None:
            CompressionConfig.from_dict(info["config"])
    except ValueError as error:
        raise ValueError(f"{path} records an invalid compression config ({error}); the directory is damaged") \
            from error
    return info


def _model_class(architecture: str) -> type[PreTrainedModel]:
    model_class = getattr(transformers, architecture, None)
    if not (isinstance(model_class, type) and issubclass(model_class, PreTrainedModel)):
        raise ValueError(f"model class {architecture!r} is not part of transformers {transformers.__version__}; "
                         "models with custom code cannot be rebuilt")
    return model_class


def _config_from(info: dict[str, Any]) -> transformers.PretrainedConfig:
    base = dict(info["base_config"])
    model_type = base.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"unknown model_type {model_type!r} in {INFO_FILE}")
    return CONFIG_MAPPING[model_type].from_dict(base)


def _dtype(info: dict[str, Any]) -> torch.dtype:
    dtype = getattr(torch, str(info.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {info.get('dtype')!r} in {INFO_FILE}")
    return dtype


def _check_weights(model: nn.Module, path: Path) -> None:
    """Compare the file's tensor names and shapes with the rebuilt model, naming what does not fit."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from error
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    wrong = [f"{name} (file {stored[name]}, model {expected[name]})"
             for name in stored if name in expected and stored[name] != expected[name]]
    if wrong:
        raise ValueError(f"weights in {path} do not match the structure recorded in {INFO_FILE}: "
                         f"{'; '.join(wrong[:5])}" + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""))


def load_compressed(directory: str | os.PathLike[str], *, device: str | torch.device | None = None) -> PreTrainedModel:
    """Rebuild a model written by :func:`save_compressed` and load its weights; eval mode.

    Raises FileNotFoundError for a missing directory or file, ValueError for a damaged or newer-format
    directory or for weights that do not match the recorded layers (the offending names are given).
    """
    directory = Path(directory).expanduser()
    info = read_compressed_info(directory)
    model_class = _model_class(info["architecture"])
    if info["dense"]:
        model = model_class.from_pretrained(directory)
        return model.to(device).eval() if device is not None else model.eval()
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}; the directory is incomplete")
    model = model_class(_config_from(info))
    for name, layer in info["layers"].items():
        try:
            replace_module(model, name, LowRankLinear(layer["in_features"], layer["out_features"], layer["rank"],
                                                      bias=layer["bias"], source_kind=layer["source_kind"]))
        except (ValueError, AttributeError) as error:
            raise ValueError(f"{INFO_FILE} records a factorized layer {name!r} that the rebuilt "
                             f"{type(model).__name__} does not have") from error
    model = model.to(_dtype(info))
    _check_weights(model, path)
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the file: {', '.join(sorted(missing)[:5])}")
        if unexpected:
            parts.append(f"not in the recorded structure: {', '.join(sorted(unexpected)[:5])}")
        raise ValueError(f"weights in {path} do not match the structure recorded in {INFO_FILE} "
                         f"({'; '.join(parts)})")
    if device is not None:
        model = model.to(device)
    return model.eval()
