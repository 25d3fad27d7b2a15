"""Load an exported model folder (or a trial folder) back as a DynamicModel: the one model-folder loader.

A model folder holds ``config.json`` (the trial config; an export adds
``runtime_policy`` and ``export``: format and the weights' sha256) and
``model.safetensors``. Loading never unpickles: weights are parsed from
safetensors and checked against the recorded sha256 before the model is built.
Needs torch and dynsearch only: this module imports neither Ray nor Optuna
(an import contract in pyproject.toml holds it to that).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from dynsearch.deploy.engine import ENGINES, check_input, serve
from dynsearch.dynamic import build_model
from dynsearch.errors import UserError, warn
from dynsearch.measure.latency import serving_form
from dynsearch.run.files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, config_sha256, read_json

FORMAT = "dynsearch-model/1"
REEXPORT = "export it again with 'dynsearch export'"
CARD_FILE = "card.json"
EXPORT_KEYS = ("export", "runtime_policy")  # added to the trial config in an exported config.json


def load(path: str | Path, raw: bool = False, engine: str = "auto"):
    """The served model of an exported model folder, weights checked against config.json.

    By default the model is the inference-ready form that ``dynsearch bench``, the latency objective
    and the card's latency figures time: batch norm folded into the convolutions before it and
    adaptive pools of a known size made fixed (``measure.latency.serving_form``; outputs equal the trained form's up to float round-off, and
    it can no longer be trained), run by the engine the export chose by measurement
    (``deploy.engine``; the card's ``engine`` section):

    - ``engine="auto"``: the card's choice; eager when the card records none (older exports).
    - ``engine="eager"``: the served ``DynamicModel`` itself (``model(x)`` returns logits and trace).
    - ``engine="channels_last"``: the eager served form in channels-last layout
      (``deploy.engine.ChannelsLastEngine``; returns logits and trace as eager does).
    - ``engine="onnx"``: the staged ONNX graphs under onnxruntime (``deploy.engine.OnnxEngine``;
      ``model(x)`` returns logits as a torch tensor and the runtime's decisions).

    Every returned object is called on a batch [N, ...], its ``.logits`` equal the eager form's up
    to float round-off, and ``.engine`` names its engine. ``raw=True`` returns the trained form
    (eager, batch norms kept), for fine-tuning or for reproducing the trial's recorded figures exactly.

    Its input is checked: a batch whose sample shape is not the config's ``input_shape`` raises a
    ValueError naming the shape expected (instead of a layer's error from deep inside)."""
    if engine not in ("auto", *ENGINES):
        raise UserError(f"engine {engine!r}: not one of auto, {', '.join(ENGINES)}; pass one of them")
    if raw and engine not in ("auto", "eager"):
        raise UserError(f"raw=True with engine={engine!r}: the trained form is PyTorch only; drop raw=True "
                        "to serve another engine, or engine= to fine-tune")
    model, config = load_folder(path, exported=True)
    if not raw:
        model = serving_form(model, inplace=True)
    expected = config.get("input_shape")
    shape = tuple(expected) if isinstance(expected, list) and all(isinstance(d, int) for d in expected) else None
    if shape is not None:
        model.register_forward_pre_hook(_InputShapeCheck(shape))
    if raw:
        model.engine = "eager"
        return model
    folder = Path(path).expanduser()
    card = read_json(folder / CARD_FILE, REEXPORT) if (folder / CARD_FILE).is_file() else None
    return serve(model, folder, card, engine, shape)


class _InputShapeCheck:
    """A forward pre-hook: the input is a batch of samples of ``shape`` (picklable, unlike a closure)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def __call__(self, module, args):
        check_input(args[0] if args else None, self.shape)


def load_folder(path: str | Path, exported: bool = False):
    """``(model, config)`` of a model folder: an export (its config records the weights' sha256)
    or, unless ``exported``, a trial folder (its metrics.json records it). Eval mode."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"model folder {path}: not found; pass a DIR/trial-<N> folder written by 'dynsearch export'"
                        + ("" if exported else " or a RUN_DIR/trials/<N> folder"))
    config = read_json(folder / CONFIG_FILE, REEXPORT)
    export_info = config.get("export") if isinstance(config, dict) else None
    if exported or export_info is not None:
        if not isinstance(export_info, dict) or export_info.get("format") != FORMAT:
            raise UserError(f"{folder / CONFIG_FILE}: not a {FORMAT} model config; {REEXPORT}")
        sha256 = export_info.get("weights_sha256")
        if not isinstance(sha256, str):
            raise UserError(f"{folder / CONFIG_FILE}: no weights checksum (export.weights_sha256); {REEXPORT}")
        fix = REEXPORT
        check_config(folder / CONFIG_FILE, config, export_info.get("config_sha256"), fix)
    else:  # a trial folder: the checksum the trial recorded with its metrics, if any
        fix = "re-run the trial or pass an exported model folder"
        metrics = read_json(folder / METRICS_FILE, fix) if (folder / METRICS_FILE).is_file() else {}
        if not metrics and not (folder / WEIGHTS_FILE).is_file():
            raise UserError(f"{folder}: this trial has no model: it did not finish (interrupted, or still running); "
                            "pick a COMPLETE trial ('dynsearch trials RUN_DIR --state COMPLETE')")
        if isinstance(metrics, dict) and metrics.get("status") == "PRUNED":
            raise UserError(f"{folder}: this trial was stopped early by the search's scheduler (PRUNED after epoch "
                            f"{metrics.get('pruned_at_epoch')}), so it has no model; pick a COMPLETE trial "
                            "('dynsearch trials RUN_DIR --state COMPLETE')")
        if isinstance(metrics, dict) and metrics.get("status") == "FAIL":
            reason = str(metrics.get("reason") or "no reason recorded").splitlines()[0]
            raise UserError(f"{folder}: this trial FAILED ({reason}), so it has no model; pick a COMPLETE "
                            f"trial ('dynsearch trials RUN_DIR --state COMPLETE')")
        sha256 = metrics.get("weights_sha256") if isinstance(metrics, dict) else None
        if not isinstance(config, dict):
            raise UserError(f"{folder / CONFIG_FILE}: not a model config (a JSON object); {fix}")
        if isinstance(metrics, dict) and "config_sha256" in metrics:
            check_config(folder / CONFIG_FILE, config, metrics["config_sha256"], fix)
    state = parse_weights(folder / WEIGHTS_FILE, read_bytes(folder / WEIGHTS_FILE, fix), sha256, fix)
    model_config = {k: v for k, v in config.items() if k not in EXPORT_KEYS}
    return build_checked(model_config, state, folder), config


def check_config(path: Path, config: dict[str, Any], recorded: Any, fix: str) -> None:
    """Refuse a config.json whose content differs from the sha256 recorded with it, before it is used.

    The config names code a model is built with (a user backbone's ``callable``
    and ``kwargs``), so an edited one is never built. An export's config records
    its own checksum (``export.config_sha256``, of the config without that key),
    a trial folder's is in its metrics. Exports older than the config checksum
    load with a warning.
    """
    if recorded is None:
        warn(f"{path}: written before {CONFIG_FILE} carried a checksum, so edits to it cannot be detected; "
             f"check what it names (backbone.callable, kwargs) before trusting it, or {REEXPORT}")
        return
    content = config
    if isinstance(config.get("export"), dict) and "config_sha256" in config["export"]:
        content = {**config, "export": {k: v for k, v in config["export"].items() if k != "config_sha256"}}
    if config_sha256(content) != recorded:
        raise UserError(f"{path}: its content differs from the sha256 recorded with it (edited or damaged), so it "
                        f"is not used: a config names the code a model is built with; {fix}")


def read_bytes(path: Path, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror}); {fix}") from None


def parse_weights(path: Path, data: bytes, sha256: str | None, fix: str):
    """Tensors from safetensors bytes (parsing them runs no code), checked against ``sha256``."""
    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types for every malformed file
        if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":  # torch.save zip archive, or a raw pickle
            raise UserError(f"{path}: is a pickle (torch.save) file, not safetensors; "
                            f"dynsearch never unpickles weights; {fix}") from None
        raise UserError(f"{path}: not a valid safetensors file, truncated or corrupt "
                        f"({exc.__class__.__name__}); {fix}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path}: sha256 differs from the one recorded with it (tampered or truncated); {fix}")
    return state


def build_checked(config: Any, state: dict, where: Path):
    if not isinstance(config, dict):
        raise UserError(f"{where}: no model config; {REEXPORT}")
    try:
        model = build_model(config)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    except Exception as exc:
        raise UserError(f"{where}: the config does not describe a model ({exc.__class__.__name__}: {exc}); "
                        f"restore the {CONFIG_FILE} written with it") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise UserError(f"{where}: the weights do not fit the model the config describes ({first}); "
                        "restore the matching weights") from None
    return model.eval()
