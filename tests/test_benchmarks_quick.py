"""The benchmark suite's quick mode runs every section and leaves the committed results alone."""
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _committed_digest() -> str:
    files = [BENCH / "RESULTS.md", *sorted((BENCH / "results").iterdir())]
    return hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files if f.is_file())).hexdigest()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_quick_mode_runs_every_section_into_scratch(tmp_path):
    before = _committed_digest()
    out = tmp_path / "scratch"
    # Section 1 on digits only (~1.5 min instead of ~5 with MNIST-1D and Fashion-MNIST): the other datasets
    # run the same dynamic_vs_static with another recipe, checked below without a search
    # (test_section_1_recipes_of_every_dataset_are_valid); Fashion-MNIST searches: test_fashion_mnist.py.
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--datasets", "digits", "--out", str(out),
                           "--work", str(tmp_path / "runs")], capture_output=True, text=True, timeout=1800)  # a hang guard only
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert _committed_digest() == before, "quick mode changed benchmarks/RESULTS.md or benchmarks/results/"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "quick" and summary["command"].startswith("python benchmarks/run.py --quick")
    assert set(summary["sections"]) == {"1", "2", "3", "4", "5"}
    assert {"torch", "ray", "optuna"} <= set(summary["machine"]["versions"]) and summary["seeds"]["section_2"]

    ratios = summary["dyn_static_macs_ratio"]
    assert set(ratios) == {"digits"}  # quick mode keeps no committed figure
    assert all(r is None or 0 < r < 3 for r in ratios.values())  # None: no dynamic model within 0.5 point
    for dataset in summary["sections"]["1"]["datasets"].values():
        static = dataset["static_best"]
        assert static["test_macs"] == static["macs_full"]  # the static space really is static
        assert 0.0 <= static["test_accuracy"] <= 1.0

    hv = summary["hv"]
    assert set(hv) == {"nsga2", "tpe", "random"}
    seeds = summary["sections"]["2"]["seeds"]
    for name, values in hv.items():
        assert len(values) == len(seeds) and all(0.0 <= v <= 0.2 for v in values)  # reference box: 0.2 x 1.0
        histories = summary["sections"]["2"]["hv_history"][name]
        assert all(h == sorted(h) for h in histories)  # a front's hypervolume never shrinks

    overhead = summary["sections"]["3"]
    assert overhead["plain_same_accuracy"] == overhead["plain_trials"] > 0  # the baseline is the same training
    assert 0.5 < summary["trial_overhead_ratio"] < 20
    assert 0.0 < summary["search_efficiency"] < 1.5
    assert 0.0 < summary["first_trial_s"] < 300
    assert 0.1 < summary["scaling_2_vs_1"] < 4.0
    assert _finite(summary["realised_speedup"])
    for name in ("dyn_static_macs_ratio", "hv", "trial_overhead_ratio", "search_efficiency", "first_trial_s",
                 "scaling_2_vs_1"):
        headline = summary["headlines"][name]
        assert headline["target"] and isinstance(headline["pass"], bool)

    section = (out / "RESULTS.md").read_text()
    assert section.count("<!-- suite:start -->") == 1 and "### 4. Parallel scaling" in section


def test_results_section_is_replaced_and_the_rest_kept():
    sys.path.insert(0, str(BENCH))
    from suite_report import END, START, replace_section

    first = f"{START}\nold suite\n{END}\n"
    text = replace_section("# Benchmark results\n\n- latency line\n", first)
    assert text == f"# Benchmark results\n\n- latency line\n\n{first}"
    text = replace_section(text + "- a line another benchmark added\n", f"{START}\nnew suite\n{END}\n")
    assert "old suite" not in text and text.count(START) == 1
    assert text.endswith(f"{START}\nnew suite\n{END}\n- a line another benchmark added\n")
    assert "- latency line" in text


def test_section_1_recipes_of_every_dataset_are_valid():
    sys.path.insert(0, str(BENCH))
    import suite_searches
    from dynsearch.data import load_data

    for dataset in suite_searches.DATASETS:
        recipe = suite_searches.dataset_recipe(dataset, fmnist_subset=500)
        assert recipe.data.name == dataset
        splits = load_data(recipe.data)  # the data section loads (MNIST-1D generated, Fashion-MNIST read)
        assert len(splits.train_y) > 0 and len(splits.test_y) > 0
        if dataset == "fashion-mnist":
            assert len(splits.train_y) == 500
