"""Where a batch-1 forward's time goes, per component, beside where its MACs go: exported models
timed as served (``measure.latency.component_latency_table``: each component alone, 1 thread, the
median of 30 runs; an exit head's time includes its decision).

  python benchmarks/batch1_profile.py NAME=DIR [NAME=DIR ...]   # folders of exported models (trial-N)

For each model: every component's milliseconds and MACs, each as a share of the static path's
(stem, stages and final classifier), and the time the exit heads cost per MAC against the stages'.
Writes benchmarks/results/batch1_profile.json with the command, date, machine and load average.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "batch1_profile.json"


def main() -> None:
    from dynsearch.deploy.load import load_folder
    from dynsearch.measure.latency import component_latency_table, serving_form

    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__)
    load_before = os.getloadavg()
    models = {}
    for given in sys.argv[1:]:
        prefix, _, directory = given.partition("=")
        folders = [p for p in Path(directory).iterdir() if (p / "config.json").is_file()]
        for folder in sorted(folders, key=lambda p: int(p.name.split("-")[1])):
            model = serving_form(load_folder(folder)[0], inplace=True)
            table = component_latency_table(model)
            macs = {k: float(v) for k, v in model.component_macs().items()}
            static = model.static_components()
            static_ms, static_macs = sum(table[c] for c in static), sum(macs[c] for c in static)
            rows = {c: {"ms": round(table[c], 4), "time_share": round(table[c] / static_ms, 4),
                        "macs": int(macs[c]), "macs_share": round(macs[c] / static_macs, 4)} for c in table}
            decisions = model.decision_components()
            stages = [c for c in static if c.startswith("stage")]
            per_mac = {"decision_components": (sum(table[c] for c in decisions) / max(1.0, sum(macs[c] for c in decisions))
                                               if decisions else None),
                       "stages": sum(table[c] for c in stages) / sum(macs[c] for c in stages)}
            models[f"{prefix}/{folder.name}"] = {
                "components": rows, "static_ms": round(static_ms, 4),
                "decision_time_per_mac_over_stages": (round(per_mac["decision_components"] / per_mac["stages"], 1)
                                                      if decisions else None)}
            print(f"{prefix}/{folder.name}: " + ", ".join(
                f"{c} {r['time_share']:.0%} of time / {r['macs_share']:.1%} of MACs" for c, r in rows.items()), flush=True)
    RESULTS.write_text(json.dumps({
        "command": " ".join(["python benchmarks/batch1_profile.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "threads": 1, "what": "each component of the served form timed alone at batch 1 (median of 30 runs; an "
        "exit head with its decision); shares of the static path's (stem, stages, final classifier) time and MACs",
        "models": models}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
