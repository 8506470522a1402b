"""Finding and loading a trained model: `default`, a training work folder, or a model folder.

A model folder holds `config.json` (the ModelConfig), `tokenizer.model` (sentencepiece bytes)
and `params.msgpack` (flax msgpack of {'params', 'norm'}; float16 on disk, float32 in memory),
and may hold a phone head for phonetic name matching (`phones.json`, `phones.msgpack`:
`asr.phonetic.PhoneModel`).
A training work folder holds `config.json`, `tokenizer.model` and orbax `checkpoints/`; its
newest checkpoint is loaded. `default` is the model folder shipped inside the package. A file is loaded by the
loader registered for its suffix in the `asr.model_loaders` entry-point group (`.edge`
artifacts: `hw.runtime.load_edge`). Nothing is unpickled or executed on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from asr.models.config import ModelConfig
from asr.models.quant import FLOAT, QuantPolicy, quantize_params
from asr.models.transducer import Transducer, build_model
from asr.phonetic import PhoneModel, in_dim
from asr.tokenizer import Tokenizer

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"
# the default's edge artifact: its 4-bit STE-QAT fine-tune, entropy-coded (`asr export`); it
# loads through the `edge` model loader (the emulated processor, `hw.runtime`)
DEFAULT_EDGE_FILE = Path(__file__).parent / "assets" / "default.edge"
NAMED = {"default": DEFAULT_MODEL_DIR, "default-edge": DEFAULT_EDGE_FILE}


class ModelLoadError(ValueError):
    """The model spec names nothing loadable, or the files are damaged."""


@dataclass
class LoadedModel:
    model: Transducer
    variables: dict  # {'params': ..., 'norm': {'mean', 'istd'}}
    tokenizer: Tokenizer
    config: ModelConfig
    source: str  # where it was loaded from
    # the phone head of phonetic name matching (`asr.phonetic`), when the folder has one
    phones: PhoneModel | None = None


def _read_config(folder: Path) -> dict:
    p = folder / "config.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        msg = f"{folder}: no config.json; not a model or training folder"
        inside = models_inside(folder)
        if inside:
            shown = ", ".join(str(c) for c in inside[:6]) + (", ..." if len(inside) > 6 else "")
            msg += f". Model folders inside it: {shown}; did you mean {inside[0]}?"
        raise ModelLoadError(msg) from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{p}: damaged config ({e})") from None


def models_inside(folder: Path, depth: int = 2) -> list[Path]:
    """Sub-folders up to `depth` levels down whose config.json describes a model (a training
    work folder or a model folder), nearest first, then by name; for a helpful error when a
    folder of runs is given instead of one of its models (`runs/demo` for `runs/demo/tiny`)."""
    found, level = [], [folder]
    for _ in range(depth):
        level = sorted(c for d in level for c in _subfolders(d))
        for c in level:
            try:
                if "model" in json.loads((c / "config.json").read_text()):
                    found.append(c)
            except (OSError, ValueError, TypeError):  # absent, unreadable or not a JSON object
                pass
    return found


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if c.is_dir()]
    except OSError:
        return []


def save_model_folder(
    folder: str | Path,
    config: ModelConfig,
    tokenizer: Tokenizer,
    variables: dict,
    dtype=np.float16,
    extra: dict | None = None,
) -> Path:
    """Writes a self-contained inference model folder (see module docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    small = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), variables)
    (folder / "params.msgpack").write_bytes(
        serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, small))
    )
    tokenizer.save(folder / "tokenizer.model")
    meta = {"model": config.to_dict(), **(extra or {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_model(spec: str | Path) -> LoadedModel:
    """Loads `default`, `default-edge` (the default's edge artifact, run on the emulated
    processor), a model folder, a training work folder or a model file (see module
    docstring)."""
    folder = NAMED.get(str(spec), Path(spec))
    if not folder.exists():
        if str(spec) in NAMED:
            raise ModelLoadError(f"the {spec} model is not installed at {folder}")
        raise ModelLoadError(f"{folder}: no such model folder")
    if folder.is_file():
        return _load_file(folder)
    meta = _read_config(folder)
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder}/config.json: bad model config ({e})") from None
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.model")
    except Exception as e:  # sentencepiece raises RuntimeError/OSError on damaged protos
        raise ModelLoadError(f"{folder}/tokenizer.model: missing or damaged ({e})") from None
    policy = _policy(meta.get("quant"), folder)
    model = build_model(config, policy)
    if (folder / "params.msgpack").exists():
        try:
            raw = serialization.msgpack_restore((folder / "params.msgpack").read_bytes())
        except Exception as e:
            raise ModelLoadError(f"{folder}/params.msgpack: damaged ({e})") from None
    elif (folder / "checkpoints").exists():
        raw = _restore_orbax(folder / "checkpoints")
    else:
        raise ModelLoadError(f"{folder}: has neither params.msgpack nor checkpoints/")
    variables = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), raw)
    _check_shapes(model, variables, folder)
    phones = None
    if (folder / "phones.json").exists() or (folder / "phones.msgpack").exists():
        try:
            phones = PhoneModel.load(folder)
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
        if in_dim(phones.params) != config.d_model:
            raise ModelLoadError(
                f"{folder}/phones.msgpack: a phone head for {in_dim(phones.params)}-wide encoder "
                f"states; this model's are {config.d_model}"
            )
    return LoadedModel(model, variables, tokenizer, config, str(folder), phones)


LOADER_GROUP = "asr.model_loaders"


def file_loaders() -> dict:
    """{file suffix without the dot: entry point} of the `asr.model_loaders` group: other
    packages (`hw` registers `edge`) teach `load_model` their file formats without `asr`
    importing them."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=LOADER_GROUP)}


def _load_file(path: Path) -> LoadedModel:
    loaders = file_loaders()
    kind = path.suffix.lstrip(".")
    if kind not in loaders:
        known = ", ".join(f".{k}" for k in sorted(loaders)) or "none installed"
        raise ModelLoadError(
            f"{path}: a file; expected a model folder, a training folder or a model file ({known})"
        )
    return loaders[kind].load()(path)


def _policy(quant, folder: Path) -> QuantPolicy:
    """The quantization policy a model folder's "quant" entry asks for (compressed models run
    as they were trained: `train.trainer.model_quant_meta`); float without one."""
    if quant is None:
        return FLOAT
    try:
        return QuantPolicy(
            int(quant.get("weight_bits", 0)),
            int(quant.get("act_bits", 0)),
            int(quant.get("small_bits", 0)),
        )
    except (AttributeError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder}/config.json: bad quant entry ({e})") from None


def quantized(loaded: LoadedModel, policy: QuantPolicy) -> LoadedModel:
    """`loaded` run with another quantization `policy`: its kernels rounded to
    `policy.weight_bits` levels, the small layers to `policy.small_bits` when set (post-training
    quantization; a no-op for weights on their levels already) and its products fake-quantized
    (`asr.models.quant`). A phone head stays float, on the quantized encoder's output."""
    params = quantize_params(loaded.variables["params"], policy.weight_bits, policy.small_bits)
    variables = {**loaded.variables, "params": jax.tree_util.tree_map(np.asarray, params)}
    model = build_model(loaded.config, policy)
    return LoadedModel(
        model, variables, loaded.tokenizer, loaded.config, loaded.source, loaded.phones
    )


def _restore_orbax(path: Path) -> dict:
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(path.absolute())
    step = mngr.latest_step()
    if step is None:
        raise ModelLoadError(f"{path}: no checkpoint saved yet")
    restored = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore()))
    return dict(restored["model"])


def _check_shapes(model: Transducer, variables: dict, folder: Path) -> None:
    from asr.models.transducer import init_variables

    want = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
    want_s = jax.tree_util.tree_map(lambda x: tuple(x.shape), want)
    got_s = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), variables)
    if want_s != got_s:
        raise ModelLoadError(f"{folder}: parameters do not match config.json (damaged or mixed)")


def strip_biasing(spec: str | Path, out: str | Path) -> Path:
    """Writes `spec` (anything `load_model` takes) without its attention biasing network to the
    model folder `out`: the config's biasing fields reset, the `biasing` parameters dropped, the
    rest unchanged. Without a list the network adds a fixed function of each encoder frame, so
    the result decodes as the original does only as far as that term is small: measure it (the
    README's stage 10 did, on every test set). ValueError for a model without one."""
    loaded = load_model(spec)
    if loaded.config.bias_dim <= 0:
        raise ValueError(f"{loaded.source}: has no attention biasing network to strip")
    params = {k: v for k, v in loaded.variables["params"].items() if k != "biasing"}
    variables = {**loaded.variables, "params": params}
    return save_model_folder(out, loaded.config.without_biasing(), loaded.tokenizer, variables)
