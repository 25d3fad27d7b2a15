"""The model card of an exported trial: card.json (for programs) and card.md (for people).

It holds the objectives as the trial measured them, the export's own
re-measurement, the data and recipe, the runtime policy, the forms the
mechanism supports (PyTorch always; ONNX and int8 ONNX when it has an
``onnx_form``), the float and int8 figures when quantized, the library
versions at export, and (added by export.py) the serving engine chosen by measurement (``engine``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynsearch.data import DATASETS
from dynsearch.data.user import describe, source_of
from dynsearch.deploy.onnx_export import onnx_support
from dynsearch.dynamic import mechanisms
from dynsearch.recipe import Recipe, recipe_dict
_MEASURED = ("accuracy", "macs", "macs_full", "macs_thop", "params", "latency_ms", "latency_ms_p90", "latency_ms_mean",
             "latency_device", "test_accuracy", "test_macs", "macs_shifted", "test_macs_shifted", "stats", "test_stats")


def make_card(number: int, config: dict[str, Any], metrics: dict[str, Any], model, run: Path,
              recipe: Recipe, onnx_manifest: dict | None, reproduced: dict[str, Any],
              int8: dict | None = None) -> dict[str, Any]:
    """The card of an exported trial (card.json).

    Args:
        metrics: the trial's metrics.json; ``reproduced``: the export's own measurement
            (``accuracy``, ``macs``, ``measured_with``, ``matches_recorded``).
        int8: float and int8 figures of the staged graphs under onnxruntime (quantize.compare), if quantized.
    """
    mechanism = mechanisms()[config["mechanism"]]  # a plugin's too, even before any model was built
    data = recipe.data.model_dump()
    info = DATASETS.get(data.get("name"))
    description = describe(data) if source_of(data) else info.description if info else None
    return {
        "trial": number,
        "run_dir": str(run),
        "mechanism": {"name": mechanism.name, "family": mechanism.family, "paper": mechanism.paper},
        # The searched objectives as the trial recorded them (validation split); load reproduces these.
        "objectives": {name: metrics[name] for name in dict.fromkeys(["accuracy", "macs", *recipe.metric_names])
                       if name in metrics},
        "measured": {k: metrics[k] for k in _MEASURED if k in metrics},
        # With a macs_shifted objective: its corruptions, severity, seed and each corruption's figures.
        **({"macs_shifted_detail": metrics["shift"]} if isinstance(metrics.get("shift"), dict) else {}),
        "measured_with": reproduced["measured_with"],
        "reproduced_at_export": {k: reproduced[k] for k in ("accuracy", "macs", "matches_recorded")},
        "data": {**data, "description": description,
                 "input_shape": config.get("input_shape"), "num_classes": config.get("num_classes"),
                 # How inputs were made from the raw data: feed the loaded model inputs made the same way.
                 "preprocessing": info.preprocessing if info and not source_of(data) else
                 "as the user's data gave them (float32, no scaling by dynsearch)"},
        "recipe": recipe_dict(recipe),
        "runtime_policy": model.runtime_policy(),
        "forms": {"pytorch": "dynsearch.load(path, engine='eager')", "onnx": onnx_support(model),
                  "int8": ("the staged ONNX graphs quantized by onnxruntime (dynsearch export --quantize int8)"
                           if model.onnx_form() is not None else "not supported (needs the ONNX form)")},
        "onnx": onnx_manifest,
        "int8": int8,
        **({"weights": {
            "source": "one-shot: inherited from the run's supernet (sliced), not retrained",
            "supernet_sha256": metrics["supernet_sha256"],
            "batch_norm": f"statistics recomputed on {recipe.supernet.calibration_images} training images",
        }} if "supernet_sha256" in metrics else {}),
        "versions": _versions(onnx_manifest is not None),
    }


def _versions(with_onnx: bool) -> dict[str, str | None]:
    import platform
    from importlib import metadata

    names = ["dynsearch", "torch", "safetensors", "numpy", "scikit-learn", "pytorch-lightning", "ray", "optuna"]
    if with_onnx:
        names += ["onnx", "onnxruntime"]
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _shift_lines(shift: dict[str, Any]) -> list[str]:
    clean = shift["clean"]
    lines = ["## Cost under shifted inputs", "",
             f"The validation split under generated corruptions (seed {shift['seed']}, `dynsearch.measure.shift`; "
             f"`dynsearch bench PATH --shift noise,blur,contrast,occlude` adds latency). "
             + (f"Expected MACs rise more than 20% under {', '.join(shift['flagged'])}." if shift["flagged"] else
                "Expected MACs rise more than 20% under none of them."), "",
             "| input | accuracy | macs | vs clean |", "|---|---|---|---|",
             f"| clean | {clean['accuracy']:.4f} | {clean['macs']:,.0f} | |"]
    for s in shift["shifted"]:
        flag = " (flagged)" if s["cost_rise_flag"] else ""
        lines.append(f"| {s['corruption']} {s['severity']} | {s['accuracy']:.4f} | {s['macs']:,.0f} | "
                     f"{s['macs_change']:+.1%}{flag} |")
    return [*lines, ""]


def _macs_shifted_lines(detail: dict[str, Any] | None) -> list[str]:
    if not detail:
        return []
    val, test = detail["per_corruption"], detail.get("test_per_corruption", {})
    each = ", ".join(f"{name} {val[name]['macs']:,.0f}" + (f" (test {test[name]['macs']:,.0f})" if name in test else "")
                     for name in val)
    return [f"`macs_shifted` (an objective of the search): the mean over {', '.join(detail['corruptions'])} at "
            f"severity {detail['severity']} (seed {detail['seed']}, `dynsearch.measure.shift`) of the expected MACs "
            f"of what ran on the corrupted validation split ({each}); accuracy there {detail['accuracy']:.4f}."]


def _engine_lines(engine: dict[str, Any]) -> list[str]:
    """The engine section: each candidate's figures per batch size and the choice ``dynsearch.load`` serves."""
    load = ", ".join(f"{v:.2f}" for v in engine["load_average"])
    lines = ["## Serving engine", "",
             f"`dynsearch.load(path)` serves the engine chosen below at the measured batch size nearest the "
             f"batch's (`engine=\"eager\"`, `\"channels_last\"` or `\"onnx\"` forces one). Candidates {', '.join(engine['candidates'])}, "
             f"timed on validation inputs, {engine['order']}; {engine['repeats']} repeats after "
             f"{engine['warmup']} warm-up, {engine['threads']} thread(s), load average {load}, {engine['seconds']} s in all. Left out: "
             + "; ".join(f"{k} ({v})" for k, v in engine["left_out"].items()) + ".", "",
             "| batch | engine | p50 ms | p90 ms | samples/s | speed-up over eager | chosen |",
             "|---|---|---|---|---|---|---|"]
    for sized in engine["batch_sizes"]:
        for name, f in sized["figures"].items():
            if "speedup_over_eager" in f:
                interval = f"{f['interval'][0]:.2f}-{f['interval'][1]:.2f}" if f["interval"] else "no interval"
                speedup = f"{f['speedup_over_eager']:.2f}x ({interval})"
            else:
                speedup = ""
            mark = "yes" if name == sized["chosen"] else ""
            lines.append(f"| {sized['batch_size']} | {name} | {f['latency_ms']:.4f} | {f['latency_ms_p90']:.4f} | "
                         f"{f['throughput']:,.0f} | {speedup} | {mark} |")
    lines += [""] + [f"- batch {s['batch_size']}: {s['chosen']}: {s['why']}." for s in engine["batch_sizes"]] + [""]
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    """card.md: the same content as card.json, for people."""
    m, policy = card["measured"], card["runtime_policy"]
    lines = [
        f"# dynsearch model: trial {card['trial']}",
        "",
        f"Mechanism `{card['mechanism']['name']}` ({card['mechanism']['family']}): {card['mechanism']['paper']}.",
        f"From run `{card['run_dir']}`.",
        "",
        "## Objectives as measured",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in _MEASURED:
        if key in m and key not in ("stats", "test_stats"):
            value = m[key]
            shown = f"{value:,.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
            lines.append(f"| {key} | {shown} |")
    with_ = card["measured_with"]
    repro = card["reproduced_at_export"]
    lines += [
        "",
        "`accuracy` and `macs` are on the validation split (`macs`: mean multiply-accumulates per sample "
        "of what each sample ran); `test_*` on the test split; `latency_*`, when measured, as the trial "
        "timed it (not reproducible to the bit).",
        *_macs_shifted_lines(card.get("macs_shifted_detail")),
        f"Re-measured at export (batch size {with_['batch_size']}, {with_['threads']} thread(s)): "
        f"accuracy {repro['accuracy']}, macs {repro['macs']} — "
        + ("identical to the recorded figures." if repro["matches_recorded"] else
           "NOT identical to the recorded figures (a decision at the threshold flipped on this machine)."),
        "",
        "## Runtime policy",
        "",
        "```json",
        json.dumps(policy, indent=2),
        "```",
        "",
    ]
    if card.get("operating_point"):
        point = card["operating_point"]
        lines += [
            "## Operating point",
            "",
            f"Exported at operating point {point['point']} of the trial's calibration sweep: knobs "
            f"{json.dumps(point['knobs'])} (trained with {json.dumps(point['trained_knobs'])}); the objectives "
            f"above are this point's. Measured: {json.dumps(point['measured'])}; at the trained point: "
            f"{json.dumps(point['trained_point'])}. {point.get('note', '')}".rstrip(),
            "",
        ]
    if card.get("weights"):
        w = card["weights"]
        lines += ["## Weights", "", f"{w['source']}; supernet sha256 {w['supernet_sha256']}; {w['batch_norm']}.", ""]
    if card.get("finetune"):
        f = card["finetune"]
        lines += ["## Fine-tuning", "",
                  f"Trained {f['epochs']} more epochs at learning rate {f['lr']:g} ({f['lr_schedule']}) before export: "
                  f"validation accuracy {f['before']['accuracy']:.4f} -> {f['after']['accuracy']:.4f}, test accuracy "
                  f"{f['before']['test_accuracy']:.4f} -> {f['after']['test_accuracy']:.4f}, MACs "
                  f"{f['before']['macs']:,.0f} -> {f['after']['macs']:,.0f}.", ""]
    if card.get("shift"):
        lines += _shift_lines(card["shift"])
    if card.get("engine"):
        lines += _engine_lines(card["engine"])
    lines += [
        "## Forms",
        "",
        f"- PyTorch: `{card['forms']['pytorch']}` (torch and dynsearch only; weights in safetensors)",
        f"- ONNX: {card['forms']['onnx']}",
    ]
    if card["onnx"]:
        lines.append(f"  - exported: {len(card['onnx']['graphs'])} graph(s), opset {card['onnx']['opset']}, "
                     f"onnxruntime vs PyTorch max abs difference {card['onnx']['parity']['max_abs_diff']:.2g}")
        for g in card["onnx"]["graphs"]:
            details = ", ".join(f"{k} {g[k]}" for k in g if k not in ("file", "input", "source", "outputs",
                                                                       "parity_max_abs_diff"))
            lines.append(f"  - `{g['file']}`: input `{g['input']}` = {g['source']}; outputs "
                         f"{', '.join(g['outputs'])}; {details}")
    else:
        lines.append("  - not exported here (`dynsearch export ... --format onnx`)")
    lines.append(f"- int8: {card['forms'].get('int8')}")
    lines += _int8_markdown(card.get("int8"))
    data = card["data"]
    lines += [
        "",
        "## Data",
        "",
        f"`{data.get('name')}`: {data.get('description')}; split seed {data.get('split_seed')}, "
        f"validation {data.get('val_fraction')}, test {data.get('test_fraction')}; "
        f"input shape {data.get('input_shape')}, {data.get('num_classes')} classes.",
        f"Preprocessing (feed the model inputs made the same way): {data.get('preprocessing')}.",
        "",
        "## Recipe",
        "",
        "```json",
        json.dumps(card["recipe"], indent=2),
        "```",
        "",
        "## Library versions (at export)",
        "",
        ", ".join(f"{k} {v}" for k, v in card["versions"].items() if v),
        "",
    ]
    return "\n".join(lines)


def _int8_markdown(int8: dict | None) -> list[str]:
    if not int8:
        return []
    lines = ["", "## int8 (onnxruntime)", "", f"{int8['method']}; graphs in `{int8['files'][0].split('/')[0]}/`.",
             f"Both measured with onnxruntime's staged runtime at batch size 1, {int8['latency']['threads']} "
             f"thread(s); `macs` of the graphs each input ran under that runtime's own decisions; latency "
             f"{int8['latency']['order']} ({int8['latency']['repeats']} passes over "
             f"{int8['latency']['inputs']} validation inputs).", "",
             "| graphs | val accuracy | val macs | test accuracy | test macs | latency_ms |", "|---|---|---|---|---|---|"]
    for name in ("float", "int8"):
        f = int8[name]
        lines.append(f"| {name} | {f['val_accuracy']:.4f} | {f['val_macs']:,.0f} | {f['test_accuracy']:.4f} | "
                     f"{f['test_macs']:,.0f} | {f['latency_ms']:.4f} |")
    batched = int8.get("batched")
    if batched:  # exports before batched int8 timing lack it
        pays = int8.get("pays_at_batch_sizes") or []
        undetermined = int8.get("pays_undetermined_at") or []
        lines += ["", f"Batched ({batched['batch_size']} inputs per graph call, {batched['repeats']} alternating "
                  f"passes over {batched['inputs']} validation inputs): float {batched['throughput']['float']:,.0f}, "
                  f"int8 {batched['throughput']['int8']:,.0f} samples/s (int8 {batched['int8_speedup']:.2f}x "
                  "float, median of the paired passes). int8 pays (95% interval of its speed-up wholly above 1) "
                  + (f"at batch size {' and '.join(map(str, pays))}" if pays else "at neither batch size measured")
                  + (f"; too few passes to tell at {' and '.join(map(str, undetermined))}" if undetermined else "")
                  + "."]
    return lines
