"""Nothing dynsearch reads can run code: weights are safetensors only, YAML is safe_load only.

(The WANDB_API_KEY sentinel and Ray's loopback binding are checked on a real
search in tests/test_resilience.py.)
"""
import ast
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from dynsearch import cli
from conftest import TINY_RECIPE, exits_config
from dynsearch.dynamic import build_model
from dynsearch.errors import UserError
from dynsearch.deploy.load import load_folder
from dynsearch.training.trial import save_trial

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates the file ``marker``: proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _trial_folder(folder):
    model = build_model(exits_config())
    save_trial(folder, model.config, model, {"status": "COMPLETE"})
    return model


def test_a_trial_folder_loads_back_from_safetensors(tmp_path):
    model = _trial_folder(tmp_path).eval()
    loaded, _ = load_folder(tmp_path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("write", ["torch.save", "pickle.dump"])
def test_a_crafted_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path, write):
    _trial_folder(tmp_path)
    marker = tmp_path / "code-ran"
    weights = tmp_path / "model.safetensors"
    if write == "torch.save":
        torch.save({"stem.0.weight": _Payload(marker)}, weights)
    else:
        weights.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(UserError, match="is a pickle \\(torch.save\\) file, not safetensors"):
        load_folder(tmp_path)  # what `dynsearch bench` and every loader of a model folder use
    checkpoint = tmp_path / "checkpoint.pt"  # torch 2.13's torch.load reads *.safetensors as safetensors
    checkpoint.write_bytes(weights.read_bytes())
    with pytest.raises(pickle.UnpicklingError):  # torch.load as this code base may use it
        torch.load(checkpoint, weights_only=True)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # control: an unpickler does run the payload
    assert marker.exists()


def test_yaml_with_python_tags_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(TINY_RECIPE + f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    for command in ("train", "search"):
        assert cli.main([command, str(recipe), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "YAML tag '!!python/object/apply:os.system' is not allowed" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_tampered_run_dir_recipe_is_refused_and_runs_nothing(tmp_path, tiny_recipe, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "study.journal").write_text("")
    marker = tmp_path / "code-ran"
    (run_dir / "recipe.yaml").write_text(f'space: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert cli.main(["search", str(tiny_recipe), "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "recipe.yaml is unreadable or invalid" in err and "--new" in err
    assert not marker.exists()


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def test_the_code_base_has_no_unsafe_loader():
    """Every torch.load passes weights_only=True; no pickle, marshal, eval or unsafe YAML loader."""
    forbidden = {"pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "dill.load",
                 "marshal.load", "marshal.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec"}
    sources = [*sorted((ROOT / "dynsearch").rglob("*.py")), *sorted((ROOT / "search_spaces").rglob("*.py")),
               ROOT / "cli.py"]
    assert len(sources) > 10
    problems = []
    for path in sources:
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            safe_torch_load = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                                  for k in call.keywords)
            if name in forbidden or (name == "torch.load" and not safe_torch_load):
                problems.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
    assert problems == []


def _export_folder(folder):
    """The files an export writes (config.json with its checksums, model.safetensors) for a small model."""
    from safetensors.torch import save

    from dynsearch.deploy.export import write_model_files

    model = build_model(exits_config())
    folder.mkdir()
    weights = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    write_model_files(folder, json.loads(json.dumps(model.config)), model, weights)
    return model


def test_an_edited_export_config_naming_code_is_refused_and_runs_nothing(tmp_path):
    import dynsearch

    folder = tmp_path / "trial-0"
    _export_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["export"]) == {"format", "weights_sha256", "config_sha256"}
    marker = tmp_path / "code-ran"
    config["backbone"] = {"kind": "user", "callable": "os:system", "kwargs": {"command": f"touch {marker}"}}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="config.json: its content differs from the sha256 recorded with it"):
        dynsearch.load(folder)
    assert not marker.exists()


def test_an_export_config_rewritten_in_another_layout_still_loads(tmp_path):
    import dynsearch

    folder = tmp_path / "trial-0"
    model = _export_folder(folder).eval()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config, indent=7))  # the same content, other bytes
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(dynsearch.load(folder, raw=True)(x).logits, model(x).logits)


def test_an_export_older_than_the_config_checksum_loads_with_one_warning(tmp_path, capsys):
    import dynsearch

    folder = tmp_path / "trial-0"
    _export_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    del config["export"]["config_sha256"]
    (folder / "config.json").write_text(json.dumps(config))
    dynsearch.load(folder)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynsearch: warning: ") and "cannot be detected" in err[0]


def test_an_edited_trial_folder_config_is_refused(tmp_path):
    _trial_folder(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["exits"]["threshold"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="config.json: its content differs from the sha256 recorded with it"):
        load_folder(tmp_path)
