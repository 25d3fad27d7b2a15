"""The benchmark suite's headlines (value, target, pass) and its section of RESULTS.md."""
from __future__ import annotations

import re
from typing import Any

START, END = "<!-- suite:start -->", "<!-- suite:end -->"
HV_CHECKPOINTS = (8, 16, 24)  # trial counts shown in the hypervolume table


def headline_values(sections: dict[str, Any]) -> dict[str, Any]:
    """The summary's top-level keys, from whichever sections have results (None where missing)."""
    s1, s2, s3, s4, s5 = (sections.get(k) for k in "12345")
    return {
        "dyn_static_macs_ratio": {name: r["macs_ratio"] for name, r in s1["datasets"].items()} if s1 else None,
        "hv": s2["hv"] if s2 else None,
        "trial_overhead_ratio": s3["trial_overhead_ratio"] if s3 else None,
        "search_efficiency": s3["search_efficiency"] if s3 else None,
        # Context, not a headline: 3(b) again with 60-epoch trials (full mode only).
        "search_efficiency_long_trials": (s3.get("long_trials") or {}).get("search_efficiency") if s3 else None,
        "first_trial_s": s3["first_trial_s"] if s3 else None,
        "scaling_2_vs_1": s4["scaling_2_vs_1"] if s4 else None,
        "realised_speedup": s5.get("realised_speedup") if s5 else None,
    }


def _at_most(value, limit):
    return None if value is None else value <= limit


def _at_least(value, limit):
    return None if value is None else value >= limit


def headlines(values: dict[str, Any], sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each headline with its target (from issue 13) and whether it passed (None: not measured)."""
    ratios = values["dyn_static_macs_ratio"]
    ratio_pass = None if ratios is None else all(r is not None and r <= 0.5 for r in ratios.values())
    hv_pass, wins = None, None
    if values["hv"] is not None:
        wins = sections["2"]["wins_over_random"]
        hv_pass = max(wins.values()) > len(values["hv"]["random"]) / 2
    s5 = sections.get("5") or {}
    return {
        "dyn_static_macs_ratio": {"target": "<= 0.5 on every dataset (cheapest dynamic within 0.5 point of the "
                                            "best static accuracy, as a share of its macs)",
                                  "value": ratios, "pass": ratio_pass},
        "hv": {"target": "NSGA-II or TPE final hypervolume above random search's in most seeds",
               "value": wins, "pass": hv_pass},
        "trial_overhead_ratio": {"target": "<= 1.2", "value": values["trial_overhead_ratio"],
                                 "pass": _at_most(values["trial_overhead_ratio"], 1.2)},
        "search_efficiency": {"target": ">= 0.8", "value": values["search_efficiency"],
                              "pass": _at_least(values["search_efficiency"], 0.8)},
        "first_trial_s": {"target": "<= 10 s", "value": values["first_trial_s"],
                          "pass": _at_most(values["first_trial_s"], 10.0)},
        "scaling_2_vs_1": {"target": ">= 1.7", "value": values["scaling_2_vs_1"],
                           "pass": _at_least(values["scaling_2_vs_1"], 1.7)},
        "realised_speedup": {"target": s5.get("target", "from benchmarks/results/latency.json"),
                             "value": values["realised_speedup"], "pass": s5.get("pass")},
    }


def _fmt(value, digits=3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _verdict(passed) -> str:
    return {True: "pass", False: "**fail**", None: "not run"}[passed]


def markdown(summary: dict[str, Any]) -> str:
    """The suite's section of RESULTS.md, between the START and END markers."""
    sections, cpus = summary["sections"], summary["machine"]["cpus"]
    lines = [START, "## Benchmark suite (`python benchmarks/run.py`)", ""]
    lines += [f"Written by `{summary['command']}` ({summary['mode']} mode) on {summary['machine']['cpus']} CPUs; "
              "each section lists its own command and the load average while it ran. "
              "Full numbers: `benchmarks/results/summary.json`.", ""]
    lines += ["| headline | target | measured | |", "|---|---|---|---|"]
    for name, item in summary["headlines"].items():
        lines.append(f"| `{name}` | {item['target']} | {_fmt(item['value'])} | {_verdict(item['pass'])} |")
    for key, title, render in (("1", "Dynamic vs static", _section1), ("2", "Search efficiency", _section2),
                               ("3", "Framework overhead", _section3), ("4", "Parallel scaling", _section4),
                               ("5", "Realised speed-up", _section5)):
        lines += ["", f"### {key}. {title}", ""]
        section = sections.get(key)
        if section is None:
            lines.append("Not run yet.")
            continue
        lines += render(section)
        busy = " (busy machine: timings not representative)" if section["load_average"][0] > cpus else ""
        lines.append(f"\n_`{section['command']}`, {section['finished_at']}, load average "
                     f"{_fmt(section['load_average'][0], 2)} (1 min) at the end{busy}._")
    lines.append(END)
    return "\n".join(lines) + "\n"


def _section1(s: dict[str, Any]) -> list[str]:
    rows = ["| dataset | trials per space | static best: val / test acc, macs | dynamic best: val / test acc, macs "
            "| cheapest dynamic within 0.5 pt (val): val / test acc, macs | macs ratio |", "|---|---|---|---|---|---|"]
    for name, r in s["datasets"].items():
        st, dy, ch = r["static_best"], r["dynamic_best"], r["dynamic_cheapest_within_0.5pt"]
        cheap = "none" if ch is None else f"{ch['accuracy']:.3f} / {ch['test_accuracy']:.3f}, {ch['test_macs']:,.0f}"
        rows.append(f"| {name} | {r['trials']} | {st['accuracy']:.3f} / {st['test_accuracy']:.3f}, "
                    f"{st['test_macs']:,.0f} | {dy['accuracy']:.3f} / {dy['test_accuracy']:.3f}, "
                    f"{dy['test_macs']:,.0f} | {cheap} | {_fmt(r['macs_ratio'])} |")
    rows.append("\nModels are chosen on the validation split; accuracies and macs shown for the test split "
                "(macs: mean per test sample of what ran).")
    return rows


def _section2(s: dict[str, Any]) -> list[str]:
    shown = [k for k in HV_CHECKPOINTS if k <= s["trials"]] or [s["trials"]]
    rows = [f"digits exits, {s['trials']} trials, seeds {s['seeds']}; reference point (val accuracy "
            f"{s['reference']['accuracy']}, macs {s['reference']['macs_share_of_full']} of the static backbone's); "
            f"NSGA-II population {s['sampler_settings']['nsga2_population_size']}, TPE "
            f"{s['sampler_settings']['tpe_n_startup_trials']} random start-up trials.", "",
            "| sampler | " + " | ".join(f"HV after {k} trials (mean ± sd)" for k in shown)
            + " | final HV > random's (seeds) |", "|---" * (len(shown) + 2) + "|"]
    for name, runs in s["hv_history"].items():
        cells = []
        for k in shown:
            values = [run[min(k, len(run)) - 1] for run in runs]
            mean = sum(values) / len(values)
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        wins = s["wins_over_random"].get(name)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {'—' if wins is None else f'{wins}/{len(runs)}'} |")
    return rows


def _section3(s: dict[str, Any]) -> list[str]:
    lo, hi = s["trial_overhead_ratio_range"]
    return [
        f"- (a) trial wall time as Ray Tune records it / the same training in a plain PyTorch loop: median "
        f"{s['trial_overhead_ratio']:.3f} (range {lo:.3f}–{hi:.3f}; median trial {s['trial_ray_seconds_median']:.2f} s "
        f"vs {s['trial_plain_seconds_median']:.2f} s), 1 concurrent trial. Both sides train, measure and sweep the "
        f"operating points (sweep {s.get('trial_sweep_seconds_median', 0.0):.2f} s in the trial, "
        f"{s.get('plain_sweep_seconds_median', 0.0):.2f} s in the plain loop); without the sweep on either side: "
        + (f"{s['trial_overhead_ratio_without_sweep']:.3f}" if "trial_overhead_ratio_without_sweep" in s else "n/a")
        + f". The plain loop reached the trial's validation accuracy exactly in {s['plain_same_accuracy']} of "
        f"{s['plain_trials']} trials.",
        f"- (b) search efficiency (Σ plain-loop times / 2 concurrent) / end-to-end wall time, default recipe: "
        f"{s['search_efficiency']:.3f} ({s['plain_seconds_sum']:.1f} s / 2 / {s['search_wall_s']:.1f} s; the headline)."
        + (_long_trials(s["long_trials"]) if s.get("long_trials") else ""),
        f"- (c) command start to the first trial running: {s['first_trial_s']:.2f} s "
        f"({s['first_trial_s_concurrent_1']:.2f} s in the 1-concurrent run).",
    ]


def _long_trials(long: dict[str, Any]) -> str:
    return (f" With longer trials (`{long['command']}`: median trial {long['trial_plain_seconds_median']:.1f} s in "
            f"the plain loop): {long['search_efficiency']:.3f} ({long['plain_seconds_sum']:.1f} s / 2 / "
            f"{long['search_wall_s']:.1f} s; first trial running after {long['first_trial_s']:.1f} s). The fixed "
            f"costs of a search (Ray start-up, each worker's first imports, the report) weigh less on longer trials.")


def _section4(s: dict[str, Any]) -> list[str]:
    rows = ["| concurrent trials | COMPLETE | trial phase s | per hour (trial phase) | wall s | per hour (end to end) |",
            "|---|---|---|---|---|---|"]
    for n in ("1", "2"):
        t = s[f"concurrent_{n}"]
        rows.append(f"| {n} | {t['complete']} | {t['trial_phase_s']:.1f} | {t['per_hour_trial_phase']:.0f} | "
                    f"{t['wall_s']:.1f} | {t['per_hour_end_to_end']:.0f} |")
    rows.append(f"\n2 vs 1: {s['scaling_2_vs_1']:.2f}× over the trial phase (first trial start to last trial end; "
                f"the headline), {s['scaling_2_vs_1_end_to_end']:.2f}× end to end (Ray start-up included).")
    return rows


def _section5(s: dict[str, Any]) -> list[str]:
    if not s.get("available"):
        return [s["note"]]
    return [f"From `{s['source']}` (`{s['source_command']}`): front model {s['trial']} runs "
            f"{s['realised_speedup']:.2f}× faster than its static path at batch 1 for a MACs speed-up of "
            f"{s['macs_speedup']:.2f}× (ratio {s['ratio']:.2f}); target: {s['target']}."]


def replace_section(text: str, section: str) -> str:
    """``text`` with its suite section replaced by ``section`` (appended when it has none)."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END) + "\n?", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _m: section, text, count=1)
    return text.rstrip("\n") + "\n\n" + section
