"""A mechanism and a search space from a plugin package outside dynsearch, found through the
``dynsearch.plugins`` entry point: listed by the CLI, covered by the shipped conformance suite,
searched by a real search (Ray, Optuna, Lightning), exported and loaded in a fresh process.

The test writes the whole package into a temporary folder (two modules and a dist-info folder
declaring the entry points) and puts that folder on ``sys.path`` and ``PYTHONPATH``; no file of
dynsearch knows the toy mechanism.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dynsearch
from dynsearch.dynamic import MECHANISMS, mechanisms
from dynsearch.testing.conformance import CHECKS, cases

MECHANISM_MODULE = '''\
"""A toy early-exit MLP: one hidden layer, an exit head after it, a second layer and the classifier."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynsearch.dynamic import DynamicModel, DynamicOutput, Trace, register_mechanism
from dynsearch.dynamic.base import OnnxForm, OnnxPart

THRESHOLDS = [0.3, 0.5, 0.7, 0.9, 0.99]


class Segment(nn.Module):
    """Layers then a head, as one ONNX graph: (features, logits, confidence)."""

    def __init__(self, layer, head):
        super().__init__()
        self.layer, self.head = layer, head

    def forward(self, x):
        features = self.layer(x)
        logits = self.head(features)
        return features, logits, logits.softmax(dim=1).amax(dim=1)


@register_mechanism("toy", family="exits", paper="toy plugin: one early exit on an MLP (test only)")
class ToyExitMLP(DynamicModel):
    """``toy``: ``hidden`` (width), ``threshold`` (leave at the exit when its max softmax probability reaches it)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        features = 1
        for size in config["input_shape"]:
            features *= size
        hidden, classes = config["toy"]["hidden"], config["num_classes"]
        self.threshold = float(config["toy"]["threshold"])
        self.layer0 = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU())
        self.exit0 = nn.Linear(hidden, classes)
        self.layer1 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, classes)

    @classmethod
    def tiny_configs(cls) -> list[dict[str, Any]]:
        return [{"mechanism": "toy", "input_shape": [12], "num_classes": 4, "toy": {"hidden": 16, "threshold": 0.8},
                 "train": {"lr": 0.01, "epochs": 1, "batch_size": 16, "seed": 0}, "trial": 0}]

    def components(self) -> dict[str, nn.Module]:
        return {"layer0": self.layer0, "exit0": self.exit0, "layer1": self.layer1, "classifier": self.classifier}

    def static_components(self) -> list[str]:
        return ["layer0", "layer1", "classifier"]

    def decision_components(self) -> list[str]:
        return ["exit0"]

    def runtime_policy(self) -> dict[str, Any]:
        return {"kind": "early-exit", "policy": "confidence", "threshold": self.threshold,
                "rule": "leave at the exit when its max softmax probability >= threshold"}

    def runtime_knobs(self) -> dict[str, list[float]]:
        return {"threshold": sorted({*THRESHOLDS, self.threshold})}

    def set_runtime_knobs(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            if name != "threshold":
                raise ValueError(f"toy has the runtime knob ['threshold'], not {name!r}")
            self.threshold = float(value)
            self.config["toy"]["threshold"] = self.threshold

    def onnx_form(self) -> OnnxForm:
        parts = [
            OnnxPart("segment0", Segment(self.layer0, self.exit0), ("features", "logits", "confidence"),
                     "input", {"role": "exit", "exit_stage": 0, "final": False, "components": ["layer0", "exit0"]}),
            OnnxPart("segment1", Segment(self.layer1, self.classifier), ("features", "logits", "confidence"),
                     "segment0/features", {"role": "exit", "exit_stage": 1, "final": True,
                                           "components": ["layer1", "classifier"]}),
        ]
        return OnnxForm("staged early exit: segment0, leave when confidence >= threshold, else segment1", parts)

    def task_loss(self, output: DynamicOutput, target: torch.Tensor) -> torch.Tensor:
        if output.head_logits is None:
            return F.cross_entropy(output.logits, target)
        exit_logits, final_logits = output.head_logits
        return F.cross_entropy(final_logits, target) + 0.5 * F.cross_entropy(exit_logits, target)

    def trace_stats(self, trace: Trace) -> dict[str, Any]:
        return {"exit_rate": float((trace.records["exit_index"] == 0).float().mean())}

    def forward_static(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layer1(self.layer0(x)))

    def forward(self, x: torch.Tensor) -> DynamicOutput:
        batch = x.shape[0]
        h = self.layer0(x)
        exit_logits = self.exit0(h)
        ones = x.new_ones(batch)
        if self.training:  # both heads on every sample
            final_logits = self.classifier(self.layer1(h))
            trace = Trace({name: ones for name in self.components()}, {"exit_index": torch.ones(batch, dtype=torch.long)})
            return DynamicOutput(final_logits, trace, [exit_logits, final_logits])
        leave = exit_logits.softmax(dim=1).amax(dim=1) >= self.threshold
        stay = ~leave
        logits = exit_logits.clone()
        if bool(stay.any()):  # only the samples that stay run the second layer
            logits[stay] = self.classifier(self.layer1(h[stay]))
        counts = {"layer0": ones, "exit0": ones, "layer1": stay.float(), "classifier": stay.float()}
        return DynamicOutput(logits, Trace(counts, {"exit_index": stay.long()}))
'''

SPACE_MODULE = '''\
"""The toy mechanism's search space: hidden width, exit threshold, learning rate."""
from dynsearch.spaces import register_space, trial_config


class ToySpace:
    DEFAULTS = {"toy_hidden": 16, "toy_threshold": 0.8, "lr": 0.01}

    @staticmethod
    def define(trial, recipe, data):
        parts = {"toy": {"hidden": trial.suggest_categorical("toy_hidden", [8, 16, 32]),
                         "threshold": trial.suggest_float("toy_threshold", 0.5, 0.99)}}
        return trial_config(trial, recipe, data, "toy", parts, lr_range=(5e-3, 5e-2))


register_space("toy", ToySpace)
'''

ENTRY_POINTS = """\
[dynsearch.plugins]
toy_mechanism = toy_plugin.mechanism
toy_space = toy_plugin.space
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin's folder, on sys.path and PYTHONPATH (so subprocesses and Ray's workers find it too)."""
    folder = tmp_path_factory.mktemp("plugin")
    package = folder / "toy_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mechanism.py").write_text(MECHANISM_MODULE)
    (package / "space.py").write_text(SPACE_MODULE)
    dist_info = folder / "toy_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    registered = dict(MECHANISMS)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))  # also invalidates importlib's caches
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
        yield folder
    # The other test modules see the registry as it was (test_conformance.py compares it with its cases).
    MECHANISMS.clear()
    MECHANISMS.update(registered)
    for name in [m for m in sys.modules if m == "toy_plugin" or m.startswith("toy_plugin.")]:
        del sys.modules[name]


def test_the_cli_lists_the_plugin_mechanism_and_space(plugin):
    proc = subprocess.run([sys.executable, "-m", "dynsearch.cli", "list", "--json"], capture_output=True,
                          text=True, timeout=120, cwd=plugin.parent)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert "toy" in listing["spaces"]
    toy = [m for m in listing["mechanisms"] if m["name"] == "toy"]
    assert toy == [{"name": "toy", "family": "exits", "paper": "toy plugin: one early exit on an MLP (test only)"}]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_the_shipped_conformance_suite_covers_the_plugin(plugin, check):
    toy = [config for case_id, config in cases() if case_id.startswith("toy[")]
    assert toy and "toy" in mechanisms() and MECHANISMS["toy"].cls.__module__ == "toy_plugin.mechanism"
    for config in toy:
        check(config)  # every check applies: the toy mechanism has a runtime knob and an ONNX form


PREDICT = textwrap.dedent("""\
    import json, sys
    import torch
    import dynsearch
    from dynsearch.data import load_splits

    torch.set_num_threads(1)  # as the tests run (conftest.py)
    model = dynsearch.load(sys.argv[1], raw=True)  # the trained form: compared exactly with the trial's
    out = model(load_splits("digits", 0).val_x)
    print(json.dumps({"mechanism": type(model).__module__, "predictions": out.logits.argmax(dim=1).tolist(),
                      "exit_index": out.trace.records["exit_index"].tolist(),
                      "imported": sorted({"ray", "optuna", "pytorch_lightning"} & set(sys.modules))}))
""")


@pytest.mark.slow
def test_the_plugin_is_searched_exported_and_loaded_in_a_fresh_process(plugin, tmp_path, digits):
    from dynsearch.deploy.load import load_folder
    from dynsearch.measure.evaluate import measure_val
    from dynsearch.run.rundir import RunDir

    recipe = {
        "name": "toy", "data": {"name": "digits", "split_seed": 0}, "space": "toy",
        "objectives": [{"name": "accuracy"}, {"name": "macs"}], "trials": 2, "epochs": 1,
        "sampler": {"name": "random"}, "cpus_per_trial": 1, "concurrent_trials": 1, "wandb": {"mode": "off"},
    }
    result = dynsearch.search(recipe, out=tmp_path / "run")
    assert result.complete == 2 and result.counts == {"COMPLETE": 2}, result.counts
    run = RunDir.of(result.run_dir)
    number = result.front[0]["trial"]
    assert result.front[0]["config"]["mechanism"] == "toy"
    trial_model, _ = load_folder(run.trial_dir(number))  # the trial's weights, checked against its sha256
    with torch.no_grad():
        trial_out = trial_model(digits.val_x)
    metrics = json.loads((run.trial_dir(number) / "metrics.json").read_text())
    measured = measure_val(trial_model, run.read_recipe_data()["data"], metrics["measured_with"])  # as its worker did
    assert (measured["accuracy"], measured["macs"]) == (metrics["accuracy"], metrics["macs"])

    [folder] = dynsearch.export(result.run_dir, tmp_path / "models", trials=[number], onnx=True)
    card = json.loads((folder / "card.json").read_text())
    assert card["mechanism"]["name"] == "toy" and card["reproduced_at_export"]["matches_recorded"]
    assert card["onnx"]["graphs"], "the toy mechanism's staged ONNX form is exported"
    proc = subprocess.run([sys.executable, "-c", PREDICT, str(folder)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded["mechanism"] == "toy_plugin.mechanism" and loaded["imported"] == []
    assert loaded["predictions"] == trial_out.logits.argmax(dim=1).tolist()
    assert loaded["exit_index"] == trial_out.trace.records["exit_index"].tolist()
