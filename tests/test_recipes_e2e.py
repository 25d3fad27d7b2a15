"""End-to-end searches of the exit-policy, gates, depth-adaptive, halting, experts and cross-family recipes (real Ray, Lightning, Optuna), kept small.

The searches share one local Ray instance (a search on a Ray that outlives it, as in a notebook); the
command line's own search path is tested in test_search.py and test_cli.py.
"""
import pytest


@pytest.fixture(scope="module")
def shared_ray():
    import ray

    from dynsearch.tuning.tuner import init_ray

    assert init_ray(), "Ray was already running in this test process"
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("recipe, family", [("digits-exit-policies", "exits"), ("digits-gates", "gates"), ("seq-exits", "exits"),
                                            ("parity-halting", "halting"), ("mnist1d-moe", "experts"),
                                            ("digits-condconv", "experts"), ("digits-cross-family", "any")])
def test_recipe_search_then_pareto_json_stats(tmp_path, shared_ray, recipe, family):
    import dynsearch

    out = tmp_path / "run"
    result = dynsearch.search(recipe, out=out, trials=2, epochs=1, wandb={"mode": "off"})
    assert result.complete == 2
    front = dynsearch.pareto(out)  # read back from the run directory
    assert front and [i["trial"] for i in front] == [i["trial"] for i in result.front]
    for item in front:
        stats, config = item["stats"], item["config"]
        assert 0 < item["macs"] and 0 <= item["accuracy"] <= 1
        if family == "any":
            assert config["mechanism"] in ("exits", "aig", "skipnet", "condconv")
        elif config["mechanism"] == "moe":
            layers, count = config["experts"]["layers"], config["experts"]["count"]
            assert len(stats["expert_load"]) == len(stats["expert_ids"]) == len(layers) * count
            for i in range(len(layers)):  # each expert layer's shares sum to 1
                assert sum(stats["expert_load"][i * count:(i + 1) * count]) == pytest.approx(1.0)
        elif config["mechanism"] == "condconv":
            assert all(0.0 < r < 1.0 for r in stats["expert_routing"])
        elif family == "gates":
            assert config["mechanism"] in ("aig", "skipnet")
            assert stats["gate_blocks"] == config["gates"]["blocks"]
            assert len(stats["gate_rates"]) == len(config["gates"]["blocks"])
            assert all(0.0 <= rate <= 1.0 for rate in stats["gate_rates"])
        elif family == "halting":
            assert config["mechanism"] in ("act", "pondernet")
            steps = config["halting"]["max_steps"]
            assert stats["ponder_steps"] == list(range(1, steps + 1))
            assert sum(stats["ponder_histogram"]) == pytest.approx(1.0)
            assert 1 <= stats["mean_ponder_steps"] <= steps
        else:
            assert config["mechanism"] == ("depth_adaptive" if recipe == "seq-exits" else "exits")
            assert len(stats["exit_histogram"]) == len(config["exits"]["stages"]) + 1
            assert sum(stats["exit_histogram"]) == pytest.approx(1.0)
