"""Recipes: YAML (read with yaml.safe_load) validated into a typed pydantic model.

Every invalid or unknown field becomes a ``UserError`` whose one-line message
names the field and the fix.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from dynsearch.catalog import did_you_mean
from dynsearch.errors import UserError
from dynsearch.models.kinds import BACKBONE_KINDS, CLASSIFIERS, backbone_extras

OBJECTIVE_DIRECTIONS = {"accuracy": "max", "macs": "min", "params": "min", "latency_ms": "min", "macs_shifted": "min"}
SHIFT_CORRUPTIONS = ("noise", "blur", "contrast", "occlude")  # measure/shift.py implements them
DEFAULT_RECIPE = "digits-exits"
LR_SCHEDULES = ("constant", "cosine")  # training/lightning.py implements them
AUGMENTATIONS = ("hflip", "crop")  # training/augment.py implements them


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _base_dir(info: ValidationInfo) -> Path:
    """Where relative paths and user modules are looked up: the recipe file's folder, else the CWD."""
    base = (info.context or {}).get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def _stored(info: ValidationInfo) -> bool:
    """Whether a run directory's resolved recipe is being read back (``parse_recipe(stored=True)``)."""
    return bool((info.context or {}).get("stored"))


def _resolve_user_paths(section: str, data: Any, info: ValidationInfo, paths: tuple[str, ...]) -> Any:
    """Make the section's paths absolute (relative to the recipe's folder) and record the folder a
    user callable's module is imported from, so that Ray workers and ``load`` find it too.
    A stored recipe's paths were resolved when it was written: they are kept as they are."""
    from dynsearch.user_code import find_module_dir

    if not isinstance(data, dict) or _stored(info):
        return data  # pydantic reports the wrong type
    data, base = dict(data), _base_dir(info)
    for key in paths:
        if isinstance(data.get(key), str):
            path = (base / Path(data[key]).expanduser()).resolve()
            if not path.exists():
                raise ValueError(f"{section}.{key} {data[key]!r}: no such file or folder ({path}); "
                                 "fix the path (relative paths start at the recipe's folder)")
            data[key] = str(path)
    if isinstance(data.get("callable"), str):
        where = [Path(data["module_path"])] if data.get("module_path") else [base, Path.cwd().resolve()]
        data["module_path"] = find_module_dir(data["callable"], f"{section}.callable", where)
    return data


class DataSpec(_Strict):
    """A built-in dataset by ``name``, or one user source: ``callable``, ``file``, ``torchvision``
    or ``image_folder`` (see user_data.py for the forms accepted)."""

    callable: Optional[str] = Field(None, description="package.module:function returning the data")
    file: Optional[str] = Field(None, description="an .npz or .pt file of arrays")
    torchvision: Optional[str] = Field(None, description="a torchvision.datasets class read from root")
    image_folder: Optional[str] = Field(None, description="a folder of class sub-folders of images")
    root: Optional[str] = Field(None, description="torchvision's root folder, or the folder of fashion-mnist's files")
    download: bool = Field(False, description="let torchvision download the dataset into root")
    module_path: Optional[str] = Field(None, description="folder of the callable's module")
    # After the sources: its validator reads them. Default digits; with a user source, a label (default user).
    name: Optional[str] = Field(None, description="a built-in dataset (default digits); with a user source, "
                                "a label of your own (default user)")
    split_seed: int = Field(0, description="seeds the stratified train / validation / test split")
    val_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="share of the data held out for validation "
                                "(what the search selects on)")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="not used by fashion-mnist (official test split)")
    train_subset: Optional[int] = Field(None, ge=1, description="train on this many training samples "
                                        "(stratified, seeded by split_seed); validation and test unchanged")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any, info: ValidationInfo) -> Any:
        from dynsearch.data.user import SOURCES

        if isinstance(data, dict):
            given = [key for key in SOURCES if data.get(key) is not None]
            if len(given) > 1:
                raise ValueError(f"data gives {' and '.join(given)}; give one source")
            if data.get("file") is not None and not str(data["file"]).endswith((".npz", ".pt")):
                raise ValueError(f"data.file {data['file']!r}: not an .npz or .pt file; save the arrays as one")
            if data.get("torchvision") is not None and data.get("root") is None:
                raise ValueError("data.torchvision needs data.root, the folder holding the dataset; add it")
            data = {"name": "user" if given else "digits", **{k: v for k, v in data.items() if v is not None}}
        return _resolve_user_paths("data", data, info, ("file", "image_folder", "root", "module_path"))

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: Optional[str], info: ValidationInfo) -> Optional[str]:
        from dynsearch.data import DATASETS
        from dynsearch.data.user import source_of

        source = source_of(info.data)
        if source is None and name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; use one of {sorted(DATASETS)}, "
                             "or your own with data.callable / data.file")
        if source is not None and name in DATASETS:
            raise ValueError(f"{name!r} is a built-in dataset but data.{source} is given; "
                             "leave name out (or make it a label of your own)")
        if source is None and info.data.get("root") is not None and not DATASETS[name].takes_root:
            readers = sorted(n for n, d in DATASETS.items() if d.takes_root)
            raise ValueError(f"data.root is not read by dataset {name!r}; leave it out (it is for "
                             f"{', '.join(readers)} and data.torchvision)")
        return name


# The architecture dimensions a built-in backbone kind can search (backbone.search), and their value type.
SEARCH_DIMENSIONS: dict[str, dict[str, str]] = {
    "cnn": {"stages": "int", "width": "int", "depth": "int", "kernel": "int"},
    "resnet": {"stages": "int", "width": "int", "depth": "int", "kernel": "int"},
    "mlp": {"stages": "int", "width": "int", "depth": "int", "dropout": "float"},
    "transformer": {"stages": "int", "width": "int", "depth": "int", "heads": "int", "ffn_width": "int"},
    "recurrent": {"width": "int"},
}
# The bounds every searched value must stay within (the same as the fixed fields').
_DIMENSION_BOUNDS = {"stages": (1, 8), "width": (1, 4096), "depth": (1, 8), "kernel": (1, 15),
                     "dropout": (0.0, 0.9), "heads": (1, 64), "ffn_width": (1, 16384)}
_DIM_FORMS = ("[low, high], {int: [low, high]}, {float: [low, high]} (with optional log: true or step: N), "
              "or {choices: [...]}")


def _parse_dimension(value: Any, where: str, kind: str | None) -> dict[str, Any]:
    """One searched dimension in its canonical form: ``{"int": [lo, hi], "step": s, "log": b}``,
    ``{"float": [lo, hi], "step": s|None, "log": b}`` or ``{"choices": [...]}``.

    ``kind`` is the value type a built-in dimension has ("int", "float"); None for a user keyword
    argument, whose type the form says. ``[low, high]`` is a range of ``kind`` (or of ints).
    """
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"{where}: a list is a range [low, high] (got {len(value)} items); "
                             "give two numbers, or {choices: [...]} for a set of values")
        value = {(kind or ("float" if any(isinstance(v, float) for v in value) else "int")): value}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: use {_DIM_FORMS} (got {value!r})")
    forms = [k for k in ("int", "float", "choices") if k in value]
    extra = sorted(set(value) - {"int", "float", "choices", "log", "step"})
    if len(forms) != 1 or extra:
        raise ValueError(f"{where}: use {_DIM_FORMS} (got keys {sorted(value)})")
    form = forms[0]
    if form == "choices":
        choices = value["choices"]
        if set(value) != {"choices"}:
            raise ValueError(f"{where}: log and step go with a range, not with choices; remove them")
        if not isinstance(choices, list) or not choices or len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"{where}.choices: give a non-empty list of distinct values")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise ValueError(f"{where}.choices: every choice must be a number, string, boolean or null")
        if kind is not None and not all(_is_number(c, kind) for c in choices):
            raise ValueError(f"{where}.choices: every choice must be {'an integer' if kind == 'int' else 'a number'} "
                             f"(got {choices})")
        return {"choices": choices}
    if kind == "int" and form == "float":
        raise ValueError(f"{where}: takes integers; use [low, high] or {{int: [low, high]}}")
    bounds = value[form]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b, form) for b in bounds)):
        raise ValueError(f"{where}.{form}: give [low, high], two {'integers' if form == 'int' else 'numbers'}")
    low, high = bounds
    if low > high:
        raise ValueError(f"{where}: low {low} is above high {high}; swap them")
    log, step = value.get("log", False), value.get("step")
    if not isinstance(log, bool):
        raise ValueError(f"{where}.log: true or false")
    if step is not None and not (_is_number(step, form) and step > 0):
        raise ValueError(f"{where}.step: a positive {'integer' if form == 'int' else 'number'}")
    if log and step not in (None, 1):
        raise ValueError(f"{where}: log and step cannot be combined (Optuna's rule); drop one")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0 (got {low}); raise low or drop log")
    if form == "int":
        return {"int": [int(low), int(high)], "step": int(step or 1), "log": log}
    return {"float": [float(low), float(high)], "step": None if step is None else float(step), "log": log}


def _is_number(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind == "int" else isinstance(value, (int, float)) and math.isfinite(value)


def dimension_values(dim: dict[str, Any]) -> list[Any] | None:
    """Every value of an int range or a choice set; None for a float range."""
    if "choices" in dim:
        return list(dim["choices"])
    if "int" in dim:
        low, high = dim["int"]
        return list(range(low, high + 1, dim["step"]))
    return None


def dimension_bounds(dim: dict[str, Any]) -> tuple[float, float]:
    """The lowest and highest value a dimension can take (numbers only)."""
    values = dimension_values(dim)
    if values is None:
        return tuple(dim["float"])
    return min(values), max(values)


class BackboneSpec(_Strict):
    """A built-in backbone, or ``kind: user`` with ``callable`` returning the stages (user_code.py).

    ``search`` (optional) names the architecture dimensions that the search samples, each a range or
    a set of choices (see SEARCH_DIMENSIONS); the fixed fields are the default point. For ``kind:
    user`` it maps the callable's keyword arguments to Optuna distributions.
    """

    kind: Literal[BACKBONE_KINDS] = Field("cnn", description="a built-in backbone, or user (your callable)")
    widths: list[int] = Field(default_factory=lambda: [8, 32, 64], min_length=1, max_length=8,
                              description="one stage per width (channels, units or the model width)")
    depth: int = Field(1, ge=1, le=8, description="blocks or layers per stage")
    heads: int = Field(2, ge=1, le=64, description="attention heads (transformer only)")
    kernel: int = Field(3, ge=1, le=15, description="convolution kernel size (cnn, resnet; odd)")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="dropout after each hidden layer (mlp)")
    ffn_width: Optional[int] = Field(None, ge=1, le=16384, description="feed-forward width (transformer; "
                                     "default twice the model width)")
    classifier: Literal[CLASSIFIERS] = Field("pool", description="final classifier (cnn, resnet): pool = global "
                                             "average pooling then linear; flatten = linear on the whole last "
                                             "feature map (keeps where features are)")
    callable: Optional[str] = Field(None, description="kind user: package.module:function returning the stages")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="kind user: keyword arguments of the callable")
    module_path: Optional[str] = Field(None, description="kind user: folder of the callable's module")
    search: Optional[dict[str, Any]] = Field(None, description="searched architecture dimensions: name -> "
                                             "[low, high] or {choices: [...]} (kind user: keyword arguments)")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and (data.get("kind") == "user") != (data.get("callable") is not None):
            raise ValueError("backbone.kind: user goes with backbone.callable (package.module:function "
                             "returning the stages); give both or neither")
        return _resolve_user_paths("backbone", data, info, ("module_path",))

    def as_config(self) -> dict[str, Any]:
        """The fixed backbone of a trial config: the user fields only for ``kind: user``; kernel,
        dropout, ffn_width and classifier only where they differ from their defaults (so configs written before
        these fields existed, and the models built from them, stay as they were); never ``search``."""
        user_fields = {"search"} | (set() if self.kind == "user" else {"callable", "kwargs", "module_path"})
        config = self.model_dump(exclude=user_fields | {"kernel", "dropout", "ffn_width", "classifier"})
        if self.kind != "user":
            config.update(backbone_extras(self.kind, self.kernel, self.dropout, self.ffn_width, self.classifier))
        return config

    @field_validator("widths")
    @classmethod
    def _positive(cls, widths: list[int]) -> list[int]:
        if any(w < 1 or w > 4096 for w in widths):
            raise ValueError("every width must be between 1 and 4096")
        return widths

    @field_validator("kernel")
    @classmethod
    def _odd_kernel(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError(f"the kernel size must be odd (it keeps the resolution); use {kernel - 1} or {kernel + 1}")
        return kernel

    @model_validator(mode="after")
    def _classifier_kind(self) -> "BackboneSpec":
        if self.classifier != "pool" and self.kind not in ("cnn", "resnet"):
            raise ValueError(f"backbone.classifier: {self.classifier} is for kind cnn or resnet (got kind "
                             f"{self.kind}); remove the field")
        return self

    @model_validator(mode="after")
    def _transformer_widths(self) -> "BackboneSpec":
        if self.kind == "transformer" and (len(set(self.widths)) != 1 or self.widths[0] % self.heads):
            raise ValueError(
                f"a transformer's stages share one width divisible by heads={self.heads} "
                f"(got widths {self.widths}); use e.g. [32, 32, 32]"
            )
        return self

    @model_validator(mode="after")
    def _search_section(self) -> "BackboneSpec":
        if self.search is None:
            return self
        if not isinstance(self.search, dict) or not self.search:
            raise ValueError("backbone.search: give at least one dimension to search, or leave search out")
        where = "backbone.search"
        if self.kind == "user":
            parsed = {}
            for name, value in self.search.items():
                if not str(name).isidentifier():
                    raise ValueError(f"{where}: {name!r} is not a keyword argument name; use the callable's "
                                     "parameter names")
                parsed[name] = _parse_dimension(value, f"{where}.{name}", None)
            object.__setattr__(self, "search", parsed)
            return self
        allowed = SEARCH_DIMENSIONS[self.kind]
        parsed = {}
        for name, value in self.search.items():
            if name not in allowed:
                raise ValueError(f"{where}.{name}: not a searchable dimension of kind {self.kind}; "
                                 f"use {', '.join(allowed)}")
            dim = _parse_dimension(value, f"{where}.{name}", allowed[name])
            lo, hi = dimension_bounds(dim)
            b_lo, b_hi = _DIMENSION_BOUNDS[name]
            if lo < b_lo or hi > b_hi:
                raise ValueError(f"{where}.{name}: values must lie in [{b_lo}, {b_hi}] (got [{lo}, {hi}]); "
                                 "narrow the range")
            if name == "kernel":
                if "int" in dim and (dim["int"][0] % 2 == 0 or dim["step"] % 2):
                    if dim["int"][0] % 2 == 0:
                        raise ValueError(f"{where}.kernel: kernel sizes are odd; start the range at an odd "
                                         f"size (e.g. [{dim['int'][0] + 1}, {dim['int'][1]}])")
                    dim["step"] = 2  # [3, 7] means 3, 5, 7
                if any(k % 2 == 0 for k in dimension_values(dim)):
                    raise ValueError(f"{where}.kernel: kernel sizes must be odd (got {dimension_values(dim)})")
            parsed[name] = dim
        if self.kind == "transformer":
            heads = dimension_values(parsed["heads"]) if "heads" in parsed else [self.heads]
            lcm = math.lcm(*heads)
            width = parsed.get("width")
            if width is not None and "int" in width and width["step"] == 1 and "step" not in (
                    self.search["width"] if isinstance(self.search["width"], dict) else {}):
                width["step"] = lcm  # [16, 64] means the multiples of every heads choice
            widths = dimension_values(width) if width is not None else [self.widths[0]]
            bad = [w for w in widths if w % lcm]
            if bad:
                raise ValueError(f"{where}.width: every transformer width must be divisible by every heads "
                                 f"value {heads} (lcm {lcm}; {bad[:3]} are not); use multiples of {lcm}")
        object.__setattr__(self, "search", parsed)
        return self


class Objective(_Strict):
    name: Literal["accuracy", "macs", "params", "latency_ms", "macs_shifted"] = Field(
        description="accuracy (max), macs (min), params (min), latency_ms (min) or macs_shifted (min: expected "
                    "MACs on the validation split under the recipe's shift corruptions)")
    direction: Optional[Literal["max", "min"]] = Field(None, description="the objective's natural direction; "
                                                       "may be left out")

    @model_validator(mode="after")
    def _natural_direction(self) -> "Objective":
        natural = OBJECTIVE_DIRECTIONS[self.name]
        if self.direction is None:
            self.direction = natural
        elif self.direction != natural:
            raise ValueError(f"{self.name} can only be {natural}imised; set direction: {natural} or leave it out")
        return self


class LatencySpec(_Strict):
    """How latency is measured: eval mode, real skipping, each batch timed alone, the dynamic and static
    paths in alternation (the trial records ``latency_speedup`` over the static path with its 95% interval)."""

    measure: bool = Field(False, description="measure even when latency_ms is not an objective")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    batch_size: int = Field(1, ge=1, le=4096, description="inputs per timed call")
    inputs: int = Field(100, ge=1, le=100000, description="validation inputs timed")
    warmup: int = Field(3, ge=0, le=1000, description="untimed passes over the inputs, each path")
    repeats: int = Field(15, ge=1, le=10000, description="timed passes over the inputs, each path (per input the "
                         "median is kept; 6 or more give the speed-up a 95% interval)")
    threads: int = Field(1, ge=1, le=1024, description="torch threads while timing")
    resource: Optional[str] = Field(None, description="a Ray custom resource naming the node to time on")
    isolation_timeout_s: float = Field(120.0, gt=0, description="longest wait for the node's training epochs "
                                       "to end before timing anyway (recorded as latency_isolated: false)")

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
        return device


class ShiftSpec(_Strict):
    """The shifted validation set the ``macs_shifted`` objective is measured on (measure/shift.py): the
    validation split under each corruption at one severity, generated with a fixed seed. ``macs_shifted``
    is the mean over the corruptions of the expected MACs of what ran on each."""

    corruptions: list[Literal[SHIFT_CORRUPTIONS]] = Field(
        default_factory=lambda: list(SHIFT_CORRUPTIONS), min_length=1,
        description="noise (Gaussian), blur (Gaussian), contrast (lowered), occlude (a square at the sample's "
                    "minimum); each once")
    severity: int = Field(2, ge=1, le=3, description="1 (mild) to 3 (strong); the same for every corruption")
    seed: int = Field(0, ge=0, description="seeds the noise and the occluded squares")

    @field_validator("corruptions")
    @classmethod
    def _distinct(cls, corruptions: list[str]) -> list[str]:
        if len(set(corruptions)) != len(corruptions):
            raise ValueError(f"corruptions repeat a name ({corruptions}); list each corruption once")
        return corruptions


class SamplerSpec(_Strict):
    name: Literal["nsga2", "tpe", "random"] = Field("nsga2", description="the Optuna sampler")
    population_size: Optional[int] = Field(None, ge=2, description="NSGA-II population; default trials // 3")
    n_startup_trials: Optional[int] = Field(None, ge=1, description="TPE random start; default trials // 4")


class WandbSpec(_Strict):
    """W&B tracking (see tracking.py): ``online`` falls back to offline when not logged in or unreachable."""

    mode: Literal["online", "offline", "off"] = "online"
    project: str = Field("dynsearch", min_length=1, max_length=128)
    group: Optional[str] = Field(None, min_length=1, max_length=128, description="default: the run directory's name")
    init_timeout_s: float = Field(20.0, gt=0.0, le=600.0, description="wait for the server, then go offline")


STRATEGIES = ("multi-trial", "one-shot")
SCHEDULERS = ("mo-asha", "asha")  # tuning/schedulers.py implements them
TIE_BREAKS = ("epsilon-net", "crowding")


class SchedulerSpec(_Strict):
    """Early stopping of a multi-trial search (tuning/schedulers.py): asynchronous successive halving.

    A trial that reaches a rung (``grace_epochs``, then times ``reduction_factor``, below ``max_epochs``)
    goes on only when it ranks in the best 1/``reduction_factor`` of the trials that reached that rung;
    otherwise it is stopped and recorded PRUNED. ``mo-asha`` ranks by non-dominated sorting over every
    objective measured each epoch, ties broken by ``tie_break``; ``asha`` by the first objective alone."""

    name: Literal[SCHEDULERS] = Field("mo-asha", description="mo-asha: ranks by non-dominated sorting over the "
                                      "objectives; asha: by the first objective alone (Ray Tune's rule)")
    grace_epochs: int = Field(1, ge=1, le=10000, description="epochs every trial trains before its first rung")
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0, description="1/reduction_factor of the trials at a rung "
                                    "go on; the rungs are grace_epochs x reduction_factor^k")
    max_epochs: Optional[int] = Field(None, ge=1, le=10000, description="the trials' full budget; default and "
                                      "only allowed value: the recipe's epochs")
    tie_break: Literal[TIE_BREAKS] = Field("epsilon-net", description="mo-asha: order within a non-dominated "
                                           "layer (an epsilon-net spreads the kept trials along the front; "
                                           "crowding keeps NSGA-II's least crowded first)")

    def rungs(self, epochs: int) -> list[int]:
        """The rungs (epochs completed) below ``epochs``: grace, grace*factor, grace*factor^2, ... (rounded, distinct)."""
        rungs, k = [], 0
        while True:
            milestone = int(round(self.grace_epochs * self.reduction_factor ** k))
            if milestone >= epochs:
                return rungs
            if not rungs or milestone > rungs[-1]:
                rungs.append(milestone)
            k += 1

    @model_validator(mode="after")
    def _rungs(self) -> "SchedulerSpec":
        if self.max_epochs is not None and self.grace_epochs >= self.max_epochs:
            raise ValueError(f"grace_epochs {self.grace_epochs} is not below max_epochs {self.max_epochs}: no trial "
                             "could be stopped; lower grace_epochs or raise max_epochs")
        return self


def parse_duration(value: Any) -> Any:
    """'90' / 90 -> 90.0 seconds; '15m' -> 900.0; '1.5h' -> 5400.0; anything else is returned for pydantic to refuse."""
    if isinstance(value, str):
        text = value.strip().lower()
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:], None)
        try:
            return float(text[:-1]) * scale if scale else float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a duration; write seconds (600) or 10m, 1.5h") from None
    return value


class SupernetSpec(_Strict):
    """How a one-shot search trains its supernet (training/supernet.py; ``strategy: one-shot`` only)."""

    epochs: int = Field(20, ge=1, le=10000, description="epochs of supernet training")
    sandwich: int = Field(2, ge=0, le=64, description="random sub-networks per step, beside the largest and the "
                                                      "smallest (the sandwich rule)")
    distill: bool = Field(True, description="in-place distillation: every sub-network but the largest learns the "
                                            "largest's final soft labels, at its final classifier and its exits")
    lr: float = Field(0.005, gt=0.0, le=10.0, description="Adam's learning rate (annealed by lr_schedule)")
    exit_loss_weight: float = Field(0.5, ge=0.0, le=10.0, description="weight of each exit head's loss")
    calibration_images: int = Field(1000, ge=1, le=1000000, description="training images that recompute a "
                                    "sub-network's batch-norm statistics before it is evaluated")
    cpus: Optional[int] = Field(None, ge=1, le=1024, description="threads the supernet trains and is evaluated "
                                "with; default: every CPU of the node")


class Recipe(_Strict):
    """A search (or a single training) described in full."""

    name: str = Field("recipe", description="the recipe's name; the default run directory is runs/<name>")
    data: DataSpec = Field(default_factory=DataSpec, description="the dataset and its split")
    backbone: BackboneSpec = Field(default_factory=BackboneSpec, description="the network the mechanism is "
                                   "built on, and the dimensions of it that are searched")
    space: str = Field("exits", description="the search space (search_spaces/, or a plugin's; dynsearch list)")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(name="accuracy"), Objective(name="macs")], min_length=1,
        description="what the search trades off, each once"
    )
    trials: int = Field(16, ge=1, le=100000, description="COMPLETE trials wanted (with a scheduler: COMPLETE and PRUNED)")
    epochs: int = Field(15, ge=1, le=10000, description="training epochs per trial")
    batch_size: int = Field(64, ge=1, le=65536, description="training batch size")
    lr_schedule: Literal[LR_SCHEDULES] = Field(
        "constant", description="cosine: Adam's learning rate annealed to 0 over each trial's steps"
    )
    augment: list[Literal[AUGMENTATIONS]] = Field(
        default_factory=list, description="training-batch augmentation of image data: hflip (mirror left-right "
                                          "with probability 1/2), crop (shift up to 2 pixels, zero-padded)"
    )
    channels_last: bool = Field(
        False, description="train conv models with 4-D tensors in channels-last layout (faster on many CPUs; "
                           "benchmarks/results/channels_last.json); weights are stored and measured contiguous"
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="the Optuna sampler and its settings")
    seed: int = Field(0, description="seeds the sampler; each trial's training seed derives from its number")
    cpus_per_trial: float = Field(1.0, gt=0.0, le=1024, description="Ray CPUs per trial (torch threads follow)")
    concurrent_trials: int = Field(1, ge=1, le=1024, description="trials running at once")
    gpus_per_trial: float = Field(0.0, ge=0.0, le=64, description="Ray GPUs per trial")
    address: Optional[str] = Field(None, description="an existing Ray cluster (HOST:PORT); None: a local instance")
    trial_retries: int = Field(2, ge=0, le=100, description="reruns of a trial whose worker or node was lost")
    defaults: dict[str, Any] = Field(default_factory=dict, description="parameter values of the default point "
                                     "(dynsearch train); the space's own defaults fill the rest")
    latency: LatencySpec = Field(default_factory=LatencySpec, description="how latency_ms is measured")
    shift: ShiftSpec = Field(default_factory=ShiftSpec, description="the shifted validation set of the "
                             "macs_shifted objective (set only with that objective)")
    wandb: WandbSpec = Field(default_factory=WandbSpec, description="W&B tracking")
    strategy: Literal[STRATEGIES] = Field("multi-trial", description="multi-trial: every trial trains its own "
                                          "network; one-shot: one supernet is trained, then sub-networks are "
                                          "searched by evaluation alone (docs/oneshot.md)")
    supernet: SupernetSpec = Field(default_factory=SupernetSpec, description="one-shot: the supernet and its training")
    evaluations: int = Field(1000, ge=1, le=1000000, description="one-shot: sub-networks evaluated by the search")
    search_minutes: Optional[float] = Field(None, gt=0.0, description="one-shot: stop evaluating after this many "
                                            "minutes (beside evaluations)")
    scheduler: Optional[SchedulerSpec] = Field(None, description="multi-trial: stop unpromising trials early "
                                               "(successive halving; they are recorded PRUNED); none: every trial "
                                               "trains its full epochs")
    time_budget: Optional[float] = Field(None, gt=0.0, allow_inf_nan=False, description="multi-trial: seconds (or 10m, 1.5h), from when "
                                         "Ray is ready, after which this run starts no trial; the running ones "
                                         "finish or are pruned")

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("space")
    @classmethod
    def _known_space(cls, space: str, info: ValidationInfo) -> str:
        from dynsearch.spaces import available_spaces

        if not _stored(info) and space not in available_spaces():
            hint = did_you_mean(space, available_spaces())
            raise ValueError(f"unknown search space {space!r}" + (hint or f"; use one of {available_spaces()}"))
        return space

    @field_validator("objectives")
    @classmethod
    def _unique_objectives(cls, objectives: list[Objective]) -> list[Objective]:
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives repeat a name ({names}); list each objective once")
        return objectives

    @model_validator(mode="after")
    def _shift_objective(self) -> "Recipe":
        if "macs_shifted" not in self.metric_names:  # a dumped recipe names every field: only a changed one is refused
            if self.shift != ShiftSpec():
                raise ValueError("shift: is read only by the macs_shifted objective; add {name: macs_shifted} "
                                 "to objectives or remove shift")
            return self
        if self.one_shot:
            raise ValueError("objectives: macs_shifted is for strategy: multi-trial only (a one-shot search does not "
                             "measure its sub-networks under shift yet); remove it or use strategy: multi-trial")
        if self.scheduler is not None and self.scheduler.name == "asha" and self.metric_names[0] == "macs_shifted":
            raise ValueError("scheduler asha ranks by the first objective, and macs_shifted is measured only at a "
                             "trial's end (not at rungs); list accuracy or macs first, or use mo-asha")
        return self

    @model_validator(mode="after")
    def _space_fits(self, info: ValidationInfo) -> "Recipe":
        from dynsearch.spaces import get_space

        if _stored(info):  # checked when it was written; a plugin space need not be installed to read a run
            return self
        check = getattr(get_space(self.space), "check_recipe", None)
        if check is not None:
            check(self)  # raises ValueError naming the field and the fix
        return self

    @model_validator(mode="after")
    def _budget(self) -> "Recipe":
        pop = self.sampler.population_size
        budget, field = (self.evaluations, "evaluations") if self.one_shot else (self.trials, "trials")
        if self.sampler.name == "nsga2" and pop is not None and pop > max(2, budget // 3):
            raise ValueError(
                f"sampler.population_size={pop} is more than a third of {field}={budget}; "
                f"use at most {max(2, budget // 3)} or leave it out"
            )
        return self

    @model_validator(mode="after")
    def _strategy_fields(self) -> "Recipe":
        if not self.one_shot:  # set away from their defaults (a dumped recipe names every field)
            defaults = {"supernet": SupernetSpec(), "evaluations": 1000, "search_minutes": None}
            extra = sorted(name for name, value in defaults.items() if getattr(self, name) != value)
            if extra:
                raise ValueError(f"{', '.join(extra)}: for strategy: one-shot only; add strategy: one-shot "
                                 "or remove them")
        else:
            extra = [name for name in ("scheduler", "time_budget") if getattr(self, name) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: for strategy: multi-trial only (a one-shot search trains "
                                 "one supernet; its budget is evaluations and search_minutes); remove them")
        return self

    @model_validator(mode="after")
    def _scheduler_epochs(self) -> "Recipe":
        spec = self.scheduler
        if spec is None:
            return self
        if spec.max_epochs is not None and spec.max_epochs != self.epochs:
            raise ValueError(f"scheduler.max_epochs {spec.max_epochs} is not the recipe's epochs {self.epochs}: "
                             "every trial that is not stopped trains epochs; set epochs to it or leave max_epochs out")
        if spec.grace_epochs >= self.epochs:
            raise ValueError(f"scheduler.grace_epochs {spec.grace_epochs} is not below epochs {self.epochs}: no trial "
                             "could be stopped; lower grace_epochs or raise epochs")
        return self

    # -- derived --------------------------------------------------------------
    @property
    def measures_latency(self) -> bool:
        return self.latency.measure or "latency_ms" in self.metric_names

    @property
    def measures_shift(self) -> bool:
        return "macs_shifted" in self.metric_names

    @property
    def metric_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def metric_modes(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def one_shot(self) -> bool:
        return self.strategy == "one-shot"

    @property
    def prunes(self) -> bool:
        """Whether a scheduler may stop trials early: then ``trials`` counts COMPLETE and PRUNED trials."""
        return self.scheduler is not None

    def population_size(self) -> int:
        """NSGA-II population scaled to the budget: at most a third of the trials; a one-shot search's
        a twentieth of its evaluations, between 8 and 100 (thousands of evaluations: tens of generations).
        With a scheduler, a third of the trials expected to COMPLETE (1 in reduction_factor^rungs; Optuna's
        NSGA-II closes a generation once it holds a population of COMPLETE trials), at most 50."""
        if self.one_shot:
            return self.sampler.population_size or min(100, max(8, self.evaluations // 20))
        if self.scheduler is not None:
            complete = self.trials / self.scheduler.reduction_factor ** len(self.scheduler.rungs(self.epochs))
            return self.sampler.population_size or min(50, max(2, int(complete // 3)))
        return self.sampler.population_size or max(2, self.trials // 3)

    def n_startup_trials(self) -> int:
        return self.sampler.n_startup_trials or max(1, min(10, self.trials // 4))

    def with_overrides(self, **overrides: Any) -> "Recipe":
        """A validated copy with top-level fields replaced (None values are ignored)."""
        data = self.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                value = {**data[key], **value}  # a nested override keeps the other settings
            data[key] = value
        return parse_recipe(data, source="overrides")


def _format_error(error: dict[str, Any], source: str) -> str:
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    kind = error["type"]
    where = f"recipe {source}"
    if kind == "extra_forbidden":
        parts = [str(part) for part in error["loc"]]
        hint = did_you_mean(parts[-1], _sibling_fields(parts[:-1]))
        return f"{where}: unknown field '{loc}'{hint or '; remove it or check its spelling'}"
    if kind == "missing":
        return f"{where}: field '{loc}' is required; add it"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    field = f"field '{loc}'" if loc else "recipe"
    if isinstance(got, bool) and kind in ("string_type", "literal_error", "enum"):
        # YAML 1.1 reads unquoted on/off/yes/no as booleans: `mode: off` arrives as False.
        shown += f"; YAML reads unquoted on/off/yes/no as true/false: quote the value, e.g. {loc.rpartition('.')[2]}: \"off\""
    return f"{where}: {field}: {message}{shown}"


def _sibling_fields(parents: list[str]) -> list[str]:
    """The field names of the recipe section at ``parents`` (a pydantic error's location without its last part)."""
    import typing

    model: Any = Recipe
    for part in parents:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def parse_recipe(data: Any, source: str = "<dict>", base_dir: Path | None = None, stored: bool = False) -> Recipe:
    """Validate a mapping into a Recipe; raise UserError with a one-line message.

    Relative paths and user modules (data, backbone) are looked up in ``base_dir``
    (the recipe file's folder; default the current directory) and stored absolute.
    ``stored``: the resolved recipe a search wrote into its run directory, read back
    (``RunDir.read_recipe``): its shape is checked, not this machine (its data paths,
    user modules and search space were checked when it was written).
    """
    if not isinstance(data, dict):
        raise UserError(f"recipe {source}: must be a YAML mapping of fields (got {type(data).__name__})")
    try:
        return Recipe.model_validate(data, context={"base_dir": base_dir, "stored": stored})
    except ValidationError as exc:
        raise UserError(_format_error(exc.errors()[0], source)) from None


def builtin_recipes() -> dict[str, Path]:
    """Recipes shipped with the package: name -> path."""
    folder = resources.files("dynsearch.recipes")
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith((".yaml", ".yml"))
    }


def resolve_recipe_path(recipe: str | Path | None) -> Path:
    """A recipe argument is a path or the name of a built-in recipe."""
    if recipe is None:
        recipe = DEFAULT_RECIPE
    path = Path(recipe)
    if path.is_file():
        return path
    builtin = builtin_recipes()
    if str(recipe) in builtin:
        return builtin[str(recipe)]
    if path.exists():
        raise UserError(f"recipe {recipe}: is not a file; pass a YAML recipe file")
    hint = did_you_mean(recipe, builtin)
    raise UserError(f"recipe {recipe}: no such file or built-in recipe"
                    + (f"{hint} ('dynsearch list' names them all)" if hint else
                       f"; pass a YAML path or one of {sorted(builtin)}"))


def load_recipe(recipe: str | Path | None = None) -> Recipe:
    """Read and validate a recipe given as a path or a built-in name."""
    path = resolve_recipe_path(recipe)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"recipe {path}: cannot be read ({exc.__class__.__name__}); check the file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        if isinstance(exc, yaml.constructor.ConstructorError):  # a tag such as !!python/object: never run
            tag = str(exc.problem).rpartition("tag ")[2].replace("tag:yaml.org,2002:", "!!")
            raise UserError(f"recipe {path}: YAML tag {tag} is not allowed{where}; recipes are plain YAML "
                            "(read with yaml.safe_load), remove the tag") from None
        raise UserError(f"recipe {path}: not valid YAML{where}; fix the syntax") from None
    return parse_recipe(data, source=str(path), base_dir=path.parent.resolve())


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
