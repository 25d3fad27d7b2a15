"""Serving: the paired timing protocol, `dynsearch bench` at several batch sizes and under shifted
inputs (in a fresh process, as a user runs it), the generated corruptions, and the batched staged
ONNX runtime against the loaded model."""
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import exits_config
from dynsearch import cli
from dynsearch.errors import UserError
from dynsearch.measure.latency import median_interval, paired_speedup
from dynsearch.measure.shift import CORRUPTIONS, corrupt, parse_shifts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny exported exit model (digits-shaped, ONNX graphs and card), some samples leaving early."""
    from safetensors.torch import save

    from dynsearch.deploy.export import write_model_files
    from dynsearch.deploy.onnx_export import export_onnx
    from dynsearch.dynamic import build_model

    from dynsearch.data import load_splits

    torch.manual_seed(0)
    config = {**exits_config(stages=(0, 1), widths=(4, 8, 8), head_width=8), "input_shape": [1, 8, 8]}
    model = build_model(config)
    splits = load_splits("digits", 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(40):  # a few steps, so that the exit heads' confidence differs between samples
        batch = slice(32 * step % 1000, 32 * step % 1000 + 32)
        optimizer.zero_grad()
        model.training_loss(model(splits.train_x[batch]), splits.train_y[batch]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():  # halfway between the two middle first-exit scores of the inputs the tests use
        middle = model.record(splits.val_x[:64])["scores"][:, 0].sort().values[31:33]
    model.set_runtime_knobs({"threshold": float(middle.mean())})
    folder = tmp_path_factory.mktemp("served") / "model"
    folder.mkdir()
    weights = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    write_model_files(folder, json.loads(json.dumps(model.config)), model, weights)
    manifest = export_onnx(model, folder / "onnx", torch.rand(8, 1, 8, 8))
    card = {"data": {"name": "digits"}, "runtime_policy": model.runtime_policy(), "onnx": manifest}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dynsearch.cli", "bench", *args],
                          capture_output=True, text=True, timeout=300)


def test_bench_at_batch_sizes_and_under_shift_in_a_fresh_process(exported):
    proc = _bench(str(exported), "--batch-size", "1,128", "--inputs", "2", "--repeats", "6",
                  "--shift", "noise,occlude:2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert [s["batch_size"] for s in result["batch_sizes"]] == [1, 128]
    for sized in result["batch_sizes"]:
        assert sized["dynamic"]["throughput"] > 0 and sized["static"]["throughput"] > 0
        assert sized["static"]["macs"] > sized["dynamic"]["macs"], "some samples leave early"
        assert sized["macs_speedup"] == pytest.approx(sized["static"]["macs"] / sized["dynamic"]["macs"])
        assert sized["realised_speedup"] > 0 and sized["repeats"] == 6
        low, high = sized["interval"]  # 6 paired repeats: the smallest count with a 95% interval
        assert low <= sized["realised_speedup"] <= high
        assert sized["interval_wide"] == (sized["interval_halfwidth"] > 0.05)
    assert result["lut_predicted_ms"] > 0 and len(result["load_average"]) == 3
    assert result["served_engine"] == {"1": "eager"}  # a card without an engine section: load serves eager
    shift = result["shift"]
    assert [(s["corruption"], s["severity"]) for s in shift["shifted"]] == \
        [("noise", 1), ("noise", 2), ("noise", 3), ("occlude", 2)]
    clean_macs = shift["clean"]["macs"]
    for entry in shift["shifted"]:
        assert 0 <= entry["accuracy"] <= 1 and entry["timing"]["latency_ms"] > 0
        assert entry["macs_change"] == pytest.approx(entry["macs"] / clean_macs - 1)
        assert entry["cost_rise_flag"] == (entry["macs_change"] > 0.2)
        assert sum(entry["stats"]["exit_histogram"]) == pytest.approx(1)
    assert shift["flagged"] == [f"{s['corruption']}:{s['severity']}" for s in shift["shifted"] if s["cost_rise_flag"]]


def test_bench_prints_the_interval_and_says_when_it_is_wide(exported, capsys):
    assert cli.main(["bench", str(exported), "--batch-size", "4", "--inputs", "2", "--repeats", "3",
                     "--shift", "contrast:3"]) == 0
    out = capsys.readouterr().out
    assert "batch 4 (2 batches, timed in alternation)" in out
    assert "too few repeats for a 95% interval" in out  # 3 repeats give none: said, not hidden
    assert "contrast:3" in out and "exit_histogram" in out
    assert "dynsearch.load serves eager at batch 1 (the form timed above)" in out


@pytest.mark.parametrize("shift, words", [("noise,fog", "unknown corruption 'fog'"),
                                          ("blur:4", "severity '4' is not one of 1, 2, 3")])
def test_a_bad_shift_exits_2_with_one_line(exported, shift, words):
    proc = _bench(str(exported), "--shift", shift)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and words in proc.stderr and "Traceback" not in proc.stderr


def test_paired_speedup_measures_a_known_ratio():
    def slow(x):
        time.sleep(0.002)

    def fast(x):
        time.sleep(0.001)

    result = paired_speedup(fast, slow, [torch.zeros(1)] * 2, repeats=9, warmup=1)
    assert 1.6 < result["speedup"] < 2.4
    low, high = result["interval"]
    assert low <= result["speedup"] <= high
    assert result["dynamic"]["throughput"] > result["static"]["throughput"]


def test_median_interval_is_the_order_statistics_interval():
    values = [float(v) for v in range(1, 16)]  # 15 values: the 95% interval of the median is the 4th to 12th
    assert median_interval(values) == (4.0, 12.0)
    assert median_interval([1.0, 2.0, 3.0]) == (None, None)  # too few for a 95% interval


def test_corruptions_are_seeded_keep_the_shape_and_grow_with_severity():
    x = torch.rand(16, 1, 8, 8)
    for name in CORRUPTIONS:
        changes = []
        for severity in (1, 2, 3):
            shifted = corrupt(x, name, severity, seed=3)
            assert shifted.shape == x.shape and torch.isfinite(shifted).all()
            assert torch.equal(shifted, corrupt(x, name, severity, seed=3)), f"{name}: not reproducible"
            changes.append(float((shifted - x).abs().mean()))
        assert changes[0] > 0 and changes[0] < changes[1] < changes[2], f"{name}: {changes}"
    assert not torch.equal(corrupt(x, "noise", 1, seed=0), corrupt(x, "noise", 1, seed=1))
    assert corrupt(torch.rand(4, 1, 40), "blur", 2).shape == (4, 1, 40)  # 1-D inputs too


def test_parse_shifts():
    assert parse_shifts("noise,blur:2") == [("noise", 1), ("noise", 2), ("noise", 3), ("blur", 2)]
    with pytest.raises(UserError, match="unknown corruption 'snow'"):
        parse_shifts("snow")
    with pytest.raises(UserError, match="severity '0'"):
        parse_shifts("contrast:0")


def test_batched_staged_onnx_runtime_matches_the_loaded_model(exported):
    """``StagedRuntime.run_batch`` at batch 1, 7 and 32 against ``dynsearch.load`` at the same batch size:
    same classes, exits and MACs, logits within the export's parity tolerance."""
    import dynsearch
    from dynsearch.data import load_splits
    from dynsearch.deploy.onnx_export import PARITY_TOLERANCE
    from dynsearch.deploy.onnx_runtime import StagedRuntime

    model = dynsearch.load(exported, engine="eager")
    runtime = StagedRuntime(exported)
    x = load_splits("digits", 0).val_x[:64]
    for size in (1, 7, 32):
        decisions = runtime.run_batch(x.numpy(), batch_size=size)
        with torch.no_grad():
            outs = [model(x[start : start + size]) for start in range(0, len(x), size)]
        logits = torch.cat([out.logits for out in outs])
        exits = torch.cat([out.trace.records["exit_index"] for out in outs])
        macs = torch.cat([out.trace.macs_per_sample(model.component_macs()) for out in outs])
        assert [d.prediction for d in decisions] == logits.argmax(dim=1).tolist()
        assert [d.exit_stage for d in decisions] == exits.tolist()
        assert [d.macs for d in decisions] == [int(m) for m in macs]
        assert len(set(exits.tolist())) > 1, "the samples must leave at different exits"
        gap = float((torch.from_numpy(np.stack([d.logits for d in decisions])) - logits).abs().max())
        assert gap <= PARITY_TOLERANCE


def test_the_served_form_folds_batch_norm_and_fixes_pools(exported):
    import dynsearch

    served, trained = dynsearch.load(exported, engine="eager"), dynsearch.load(exported, raw=True)
    kinds = {type(m).__name__ for m in served.modules()}
    assert "BatchNorm2d" not in kinds and "AdaptiveAvgPool2d" not in kinds and "ServedAvgPool2d" in kinds
    assert {"BatchNorm2d", "AdaptiveAvgPool2d"} <= {type(m).__name__ for m in trained.modules()}


def test_load_serves_each_engine_with_the_trained_forms_logits(exported):
    """``engine="eager"``, ``"channels_last"`` and ``"onnx"`` each return the trained form's logits (within
    1e-5) at batch 1 and 32, and name their engine; ``raw=True`` is the trained form itself. The channels-last
    engine returns eager's trace too (the same exits taken)."""
    import dynsearch
    from dynsearch.data import load_splits
    from dynsearch.deploy.engine import EngineOutput

    x = load_splits("digits", 0).val_x[:64]
    trained = dynsearch.load(exported, raw=True)
    assert trained.engine == "eager" and any(type(m).__name__ == "BatchNorm2d" for m in trained.modules())
    eager = dynsearch.load(exported, engine="eager")
    for engine in ("eager", "channels_last", "onnx"):
        served = dynsearch.load(exported, engine=engine)
        assert served.engine == engine
        for size in (1, 32):
            with torch.no_grad():
                for start in range(0, len(x), size):
                    batch = x[start : start + size]
                    out = served(batch)
                    assert isinstance(out, EngineOutput) == (engine == "onnx")
                    gap = float((out.logits - trained(batch).logits).abs().max())
                    assert out.logits.shape == (len(batch), 10) and gap <= 1e-5, (engine, size, gap)
                    if engine == "channels_last":
                        assert torch.equal(out.trace.records["exit_index"], eager(batch).trace.records["exit_index"])
        if engine == "channels_last":  # the layout really changed (eager's weights keep theirs)
            convs = [m.weight for m in served.model.modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                                 for w in convs if w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1)
            assert all(m.weight.is_contiguous() for m in eager.modules() if isinstance(m, torch.nn.Conv2d))
        with pytest.raises(ValueError, match=r"this model takes a batch of shape \[N, 1, 8, 8\]"):
            served(x[0])


def test_auto_serves_the_cards_choice_and_eager_without_one(exported, tmp_path):
    import shutil

    import dynsearch
    from dynsearch.deploy.engine import ByBatchSize, OnnxEngine

    assert dynsearch.load(exported).engine == "eager"  # this card records no engine section: eager
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)  # card.json is not checksummed: its choice may be edited
    card = json.loads((folder / "card.json").read_text())
    from dynsearch.deploy.engine import ChannelsLastEngine

    for chosen, expected in (({"1": "eager", "128": "channels_last"}, "by-batch-size"),
                             ({"1": "channels_last", "128": "channels_last"}, "channels_last"),
                             ({"1": "onnx", "128": "onnx"}, "onnx"), ({"1": "eager", "128": "eager"}, "eager"),
                             ({"1": "onnx", "128": "eager"}, "by-batch-size")):
        (folder / "card.json").write_text(json.dumps({**card, "engine": {"chosen": chosen, "threads": 1}}))
        served = dynsearch.load(folder)
        assert served.engine == expected
        if "channels_last" in chosen.values():
            engine = served.engines["channels_last"] if expected == "by-batch-size" else served
            assert isinstance(engine, ChannelsLastEngine)
    assert isinstance(served, ByBatchSize)
    assert [served.engine_for(n) for n in (1, 11, 12, 32, 128, 512)] == ["onnx"] * 2 + ["eager"] * 4
    x = torch.rand(12, 1, 8, 8)
    assert isinstance(served.engines["onnx"], OnnxEngine)
    with torch.no_grad():
        assert float((served(x[:3]).logits - served.engines["eager"](x[:3]).logits).abs().max()) <= 1e-5


def test_an_engine_whose_outputs_differ_from_eager_is_left_out_not_timed(exported):
    """Before timing, each candidate runs the timing batches beside eager: the staged ONNX graphs agree
    (within 1e-5, same classes) and are timed; an engine off by 2e-5 in one logit is left out, with by how much."""
    import dynsearch
    from dynsearch.data import load_splits
    from dynsearch.deploy.engine import SERVED_TOLERANCE, EngineOutput, measure_engines

    eager, onnx = dynsearch.load(exported, engine="eager"), dynsearch.load(exported, engine="onnx")

    def off(x):
        out = onnx(x)
        logits = out.logits.clone()
        logits[0, 0] += 2 * SERVED_TOLERANCE
        return EngineOutput(logits, out.decisions)

    x = load_splits("digits", 0).val_x[:40]
    section = measure_engines({"eager": eager, "onnx": onnx, "off": off}, x, batch_sizes=(1, 32), repeats=2)
    assert section["candidates"] == ["eager", "onnx"] and "onnx" not in section["left_out"]
    assert [list(s["figures"]) for s in section["batch_sizes"]] == [["eager", "onnx"]] * 2
    def broken(x):  # an engine that fails outright (a layer that cannot take its layout) is left out too
        raise RuntimeError("view size is not compatible with input tensor's size and stride")

    failing = measure_engines({"eager": eager, "broken": broken}, x, batch_sizes=(1,), repeats=2)
    assert failing["candidates"] == ["eager"] and failing["left_out"]["broken"] == (
        "fails on the timing batches (RuntimeError: view size is not compatible with input tensor's size and stride)")
    why = section["left_out"]["off"]
    assert re.search(r"logits by up to 2\.\d*e-05 \(at most 1e-05 allowed\), 0 prediction\(s\) differ$", why), why


def test_bench_and_load_read_the_cards_choice_alike(exported, tmp_path):
    """``bench.served_engine`` says what ``load`` serves, for a valid choice and for ones this version
    does not read (eager at batch 1, as ``load``)."""
    import shutil

    import dynsearch
    from dynsearch.deploy.bench import served_engine

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    card = json.loads((folder / "card.json").read_text())
    cases = [({"1": "onnx", "128": "eager"}, {"1": "onnx", "128": "eager"}, "by-batch-size"),
             *((chosen, {"1": "eager"}, "eager") for chosen in
               ({"1": "tensorrt"}, {"0": "onnx"}, {"one": "onnx"}, {"1": ["onnx"]}, {}, "onnx"))]
    for chosen, expected, engine in cases:
        (folder / "card.json").write_text(json.dumps({**card, "engine": {"chosen": chosen}}))
        assert (served_engine(folder), dynsearch.load(folder).engine) == (expected, engine), chosen


def test_bench_times_the_engine_load_serves_where_it_is_not_eager(exported, tmp_path, capsys):
    """Where the card chose onnx (batch 1 here), bench times the ONNX engine against the static path as it
    times the dynamic path; at a size served by eager it adds nothing."""
    import shutil

    from dynsearch.deploy.bench import bench

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "engine": {"chosen": {"1": "onnx", "128": "eager"}}}))
    result = bench(folder, batch_size=[1, 128], inputs=2, repeats=6, warmup=1)
    one, many = result["batch_sizes"]
    assert (one["served_by"], many["served_by"]) == ("onnx", "eager") and "served" not in many
    served = one["served"]
    assert served["engine"] == "onnx" and served["realised_speedup"] > 0 and served["throughput"] > 0
    assert served["realised_over_macs"] == pytest.approx(served["realised_speedup"] / one["macs_speedup"])
    assert served["interval"][0] <= served["realised_speedup"] <= served["interval"][1]
    assert cli.main(["bench", str(folder), "--batch-size", "1", "--inputs", "2", "--repeats", "6"]) == 0
    assert "served by onnx (as dynsearch.load serves it)" in capsys.readouterr().out


def test_every_engine_answers_an_empty_batch_as_eager_does(exported, tmp_path):
    import shutil

    import dynsearch

    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**card, "engine": {"chosen": {"1": "onnx", "128": "eager"}}}))
    empty = torch.zeros(0, 1, 8, 8)
    with torch.no_grad():
        for engine in ("eager", "onnx", "auto"):
            out = dynsearch.load(folder, engine=engine)(empty)
            assert (out.logits.shape, out.logits.dtype) == ((0, 10), torch.float32), engine


def test_a_bad_engine_a_raw_onnx_or_missing_graphs_is_one_line(exported, tmp_path):
    import shutil

    import dynsearch

    cases = [(dict(engine="tensorrt"), "engine 'tensorrt': not one of auto, eager, channels_last, onnx"),
             (dict(raw=True, engine="onnx"), "raw=True with engine='onnx': the trained form is PyTorch only")]
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    shutil.rmtree(folder / "onnx")
    card = json.loads((folder / "card.json").read_text())
    for kwargs, words in cases:
        with pytest.raises(UserError, match=re.escape(words)) as raised:
            dynsearch.load(exported, **kwargs)
        assert "\n" not in str(raised.value)
    with pytest.raises(UserError, match=r"engine='onnx' but the folder has no ONNX graphs; export it with "
                                        r"'dynsearch export \.\.\. --format onnx'"):
        dynsearch.load(folder, engine="onnx")
    (folder / "card.json").write_text(json.dumps({**card, "engine": {"chosen": {"1": "onnx"}}}))
    with pytest.raises(UserError, match="its card.json chose engine 'onnx' but the folder has no ONNX graphs"):
        dynsearch.load(folder)
    assert dynsearch.load(folder, engine="eager").engine == "eager"
