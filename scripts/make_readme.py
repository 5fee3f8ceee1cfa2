"""Regenerate the README's tables from the results files the code wrote (no number is typed by hand).

    python scripts/make_readme.py           # rewrite every generated section of README.md and docs/
    python scripts/make_readme.py --check   # exit 1 if either differs from what the results files say

A generated section sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; each NAME has
a renderer below that reads one results file:

* ``quickstart``      results/quickstart.json (scripts/quickstart.py)
* ``speed``           results/speed_cpu.json (scripts/benchmark_speed.py), and speed_cuda.json if present
* ``speed_stage_cache`` results/speed_cpu_stage_cache.json (scripts/benchmark_speed.py at the calibration's size)
* ``projector_cost``  results/projector_cost.json (scripts/projector_cost.py)
* ``accuracy_SUITE``  results/accuracy/SUITE/summary.json (scripts/benchmark_accuracy.py)
* ``hyperparameters`` each method's class (docs/methods.md)
* ``jpeg_pipeline``   results/speed_jpeg_cpu.json (scripts/benchmark_speed.py --jpeg_only)
* ``feature_match*``  results/feature_match*.json (scripts/feature_match.py --output_file)
* ``calibration``     results/accuracy/calib_*/summary.json: the candidate regimes and their rank agreement
* ``across_calibrated_pairs`` results/accuracy/calib_pairs100_32*/summary.json: the best regime on each pair
"""

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def _load(path):
    with open(os.path.join(ROOT, path)) as f:
        return json.load(f)


def quickstart() -> str:
    r = _load("results/quickstart.json")
    a = r["args"]
    lines = [
        f"Measured by `{r['command']}` ({r['device']}; teacher {a['teacher_epochs']:g} epochs, students "
        f"{a['epochs']:g} epochs each, seed {a['seed']}, "
        f"{a['eval_samples']:,} Fashion-MNIST test images, {r.get('train_minutes', r['wall_minutes']):.1f} minutes "
        "of training "
        "in all; minutes per model are its training time):",
        "",
        "| model | role | train images | top-1 | top-5 | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| `{row['model']}` | {row['role']} | {row['train_samples']:,} | {100 * row['top1']:.2f} | "
            f"{100 * row['top5']:.2f} | {row['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _speed_table(r) -> list:
    s, pm = r["settings"], r["per_method"]
    lines = [
        f"**{r['device']}** (`{r['command']}`, {r['date']}): `{s['teacher']}` -> `{s['student']}`, batch {s['batch']}, "
        f"{s['image_size']}x{s['image_size']}, {s['classes']} classes; median of {s['steps']} steps after "
        f"{s['warmup']} warm-up steps. Floor = one teacher forward ({pm['teacher_forward_ms']:.0f} ms) + one "
        f"cross-entropy-only student step ({pm['ce_step_ms']:.0f} ms) = **{pm['floor_ms']:.0f} ms**.",
        "",
        "| method | ms / step | x floor | cached: ms / step | cached: x floor | cached: x cached KD step |",
        "|---|---|---|---|---|---|",
    ]
    for method, row in pm["methods"].items():
        cached = (
            f"{row['cached_ms']:.0f} | {row['cached_x_floor']:.2f} | "
            + (f"{row['cached_x_kd_cached']:.2f}" if row.get("cached_x_kd_cached") else "-")
            if row.get("cached_ms")
            else "- | - | -"
        )
        lines.append(f"| `{method}` | {row['ms']:.0f} | {row['x_floor']:.2f} | {cached} |")
    if pm.get("plain_kd_ms") and "kd" in pm["methods"]:
        kd = pm["methods"]["kd"]
        lines += [
            "",
            f"Side by side in the same rounds, a KD step written as the reference CIFAR loops run it (plain "
            f"PyTorch, NCHW tensors) takes {pm['plain_kd_ms']:.0f} ms: hf_mkcd's KD step is "
            f"{kd['ms'] / pm['plain_kd_ms']:.2f}x of it, {kd['cached_ms'] / pm['plain_kd_ms']:.2f}x with the "
            "teacher cache.",
        ]
    e2e = r.get("end_to_end") or {}
    if e2e:
        parts = list(next(iter(e2e.values()))["breakdown_ms"])
        lines += [
            "",
            f"Whole Trainer, real data pipeline (Fashion-MNIST padded to {s['image_size']}x{s['image_size']} RGB, "
            f"{s['e2e_samples']:,} images, {s['workers']} DataLoader workers), ms per step by part:",
            "",
            "| run | images / s | ms / step | " + " | ".join(parts) + " |",
            "|---" * (3 + len(parts)) + "|",
        ]
        for name, row in e2e.items():
            lines.append(
                f"| {name.replace('_', ' ')} | {row['images_per_s']:.0f} | {row['ms_per_step']:.0f} | "
                + " | ".join(f"{row['breakdown_ms'][p]:.0f}" for p in parts)
                + " |"
            )
    return lines


def _malloc_table(default, tuned) -> list:
    """The same benchmark run twice, glibc's allocator left alone and told to keep large blocks."""
    env = " ".join(f"{k}={v}" for k, v in tuned["malloc_env"].items())
    d, t = default["per_method"], tuned["per_method"]
    lines = [
        f"The same benchmark with glibc told to keep large blocks (`{env}`, {tuned['date']}; a separate run, so "
        "compare the ratios):",
        "",
        "| step | default: ms | keep large blocks: ms | ratio | x floor then |",
        "|---|---|---|---|---|",
        f"| floor | {d['floor_ms']:.0f} | {t['floor_ms']:.0f} | {t['floor_ms'] / d['floor_ms']:.2f} | 1.00 |",
    ]
    for method, row in d["methods"].items():
        if method in t["methods"]:
            ms = t["methods"][method]["ms"]
            lines.append(
                f"| `{method}` | {row['ms']:.0f} | {ms:.0f} | {ms / row['ms']:.2f} | {ms / t['floor_ms']:.2f} |"
            )
    return lines


def speed() -> str:
    lines = []
    for device in ("cpu", "cuda"):
        path = f"results/speed_{device}.json"
        if os.path.isfile(os.path.join(ROOT, path)):
            lines += _speed_table(_load(path)) + [""]
    if os.path.isfile(os.path.join(ROOT, "results/speed_cpu_malloc.json")) and os.path.isfile(
        os.path.join(ROOT, "results/speed_cpu.json")
    ):
        lines += _malloc_table(_load("results/speed_cpu.json"), _load("results/speed_cpu_malloc.json")) + [""]
    return "\n".join(lines)


def speed_stage_cache() -> str:
    """The stage-map cache measured: every method reading stage maps, cached, against the cached KD step."""
    return "\n".join(_speed_table(_load("results/speed_cpu_stage_cache.json"))) + "\n"


def projector_cost() -> str:
    rows = _load("results/projector_cost.json")
    lines = [
        "| teacher -> student | student map | teacher map | student params | MKCD params | MKCD MFLOPs | "
        "SimKD params | SimKD MFLOPs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['teacher']}` -> `{r['student']}` | {'x'.join(map(str, r['student_map']))} | "
            f"{'x'.join(map(str, r['teacher_map']))} | {r['student_params']:,} | {r['mkcd_params']:,} | "
            f"{r['mkcd_mflops']:.1f} | {r['simkd_params']:,} | {r['simkd_mflops']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def accuracy(suite: str) -> str:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import benchmark_accuracy

    return benchmark_accuracy.markdown_summary(_load(f"results/accuracy/{suite}/summary.json"))


PROXY_PAIRS = ("lowdata", "lowdata_wrn", "lowdata_cross")  # the proxy suites, one pair each


def across_pairs() -> str:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import benchmark_accuracy

    summaries = [_load(f"results/accuracy/{suite}/summary.json") for suite in PROXY_PAIRS]
    commands = ", ".join(f"`{s['command']}`" for s in summaries)
    return benchmark_accuracy.across_pairs(summaries) + f"\nFrom {commands}.\n"


CALIBRATION = ("calib_same10", "calib_pairs100", "calib_pairs100_32")  # the candidate regimes, in the order tried
CALIBRATED_PAIRS = ("calib_pairs100_32", "calib_pairs100_32_wrn", "calib_pairs100_32_cross")  # the best regime's pairs


def across_calibrated_pairs() -> str:
    """The best candidate regime on each of the three pairs the calibration asks for (those run so far): ranks per
    pair, each pair's rho against its published table, and their mean (the calibration's bar is 0.7)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import benchmark_accuracy

    ran = {s: os.path.isfile(os.path.join(ROOT, f"results/accuracy/{s}/summary.json")) for s in CALIBRATED_PAIRS}
    summaries = [_load(f"results/accuracy/{s}/summary.json") for s in CALIBRATED_PAIRS if ran[s]]
    missing = [s for s in CALIBRATED_PAIRS if not ran[s]]
    rhos = [s["agreement"][0]["spearman"] for s in summaries if s.get("agreement")]
    commands = ", ".join(f"`{s['command']}`" for s in summaries)
    return (
        benchmark_accuracy.across_pairs(summaries)
        + f"\nMean Spearman ρ over the {len(rhos)} pair(s) measured: **{sum(rhos) / len(rhos):.2f}** (a benchmark that "
        "chooses defaults should reach 0.7)"
        + (f"; not run yet: {', '.join(f'`{m}`' for m in missing)}" if missing else "")
        + f". From {commands}.\n"
    )


def calibration() -> str:
    """The candidate offline regimes side by side: what each is, how far the teacher leads the vanilla student and
    how far the methods spread (a regime whose gaps are small drowns its ranking in seed noise), and its rank
    agreement with the published CIFAR-100 table of the same pair."""
    lines = [
        "| candidate | regime | teacher (test) | vanilla (test) | methods' spread (test) | methods run | seeds | "
        "Spearman ρ (per seed) | Kendall τ | seed against seed ρ | min / cell |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for suite in CALIBRATION:
        path = f"results/accuracy/{suite}/summary.json"
        if not os.path.isfile(os.path.join(ROOT, path)):
            lines.append(f"| `{suite}` | not run yet | | | | | | | | | |")
            continue
        s = _load(path)
        # candidates compare over the methods every one of them ran, whatever else a suite runs beside them
        fixed = set(_load_suite(s["suite"]).get("calibration_methods") or [])
        rows = [r for r in s["rows"] if r.get("test") and r["cell"] == r["method"] and r["method"] in fixed]
        teacher = (s.get("teacher") or {}).get("metrics", {}).get("test_top1")
        vanilla = next((r["test"]["mean"] for r in rows if r["cell"] == "none"), None)
        means = [r["test"]["mean"] for r in rows]
        agree = (s.get("agreement") or [{}])[0]
        agree = agree.get("calibration_set") or agree
        lines.append(
            f"| `{suite}` | {s['description'].split(': ', 1)[-1]} | "
            + (f"{100 * teacher:.2f}" if teacher is not None else "–")
            + " | "
            + (f"{vanilla:.2f}" if vanilla is not None else "–")
            + f" | {max(means) - min(means):.2f} | {len(rows)} of {len(fixed)} | {len(s['seeds'])} | "
            + (
                f"{agree['spearman']:.2f}"
                + (
                    f" ({', '.join(f'{r:.2f}' for r in agree['spearman_per_seed'])})"
                    if len(agree.get("spearman_per_seed") or []) > 1
                    else ""
                )
                + f" | {agree['kendall']:.2f} | "
                + (f"{agree['seed_to_seed']:.2f}" if agree.get("seed_to_seed") is not None else "–")
                if agree
                else "– | – | –"
            )
            + f" | {sum(r['minutes'] for r in rows) / len(rows):.1f} |"
        )
    return "\n".join(lines) + "\n"


def _load_suite(name: str) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import benchmark_accuracy

    return benchmark_accuracy.load_suite(os.path.join(ROOT, "suites", f"{name}.yaml"))


def jpeg_pipeline() -> str:
    r = _load("results/speed_jpeg_cpu.json")
    j = r["jpeg_pipeline"]
    return (
        f"**{r['device']}** (`{r['command']}`, {r['date']}): the photo pipeline one DataLoader worker runs "
        f"(JPEG decode, RandomResizedCrop + flip, normalisation) at {j['size']}x{j['size']} on {j['images']} images "
        f"({j['source']}) delivers **{j['images_per_s']:.0f} images/s** ({j['ms_per_image']:.1f} ms each). A GPU that "
        f"trains N images/s needs about N / {j['images_per_s']:.0f} workers (`--dataloader_num_workers`), and a CPU "
        "core for each: the run plan's first-steps timing gives N (batch / seconds per step).\n"
    )


def feature_match(name: str = "feature_match") -> str:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import feature_match as fm

    r = _load(f"results/{name}.json")
    return fm.markdown(r["rows"]) + f"\n`{r['command']}`\n"


def hyperparameters() -> str:
    """Each method's hyper-parameters and defaults, read from its class (``hf_mkcd.distillers``)."""
    sys.path.insert(0, ROOT)
    from hf_mkcd.distillers import get_distiller_class, list_distillers
    from hf_mkcd.distillers.base import describe_hyperparameters

    lines = ["| `--method` | hyper-parameters (defaults) | reads from the teacher |", "|---|---|---|"]
    for name in list_distillers():
        needs = ", ".join(sorted(get_distiller_class(name).teacher_needs)) or "no teacher"
        lines.append(f"| `{name}` | {describe_hyperparameters(name)} | {needs} |")
    return "\n".join(lines) + "\n"


RENDERERS = {
    "across_pairs": across_pairs,
    "calibration": calibration,
    "across_calibrated_pairs": across_calibrated_pairs,
    "speed_stage_cache": speed_stage_cache,
    "jpeg_pipeline": jpeg_pipeline,
    "quickstart": quickstart,
    "speed": speed,
    "projector_cost": projector_cost,
    "hyperparameters": hyperparameters,
}


def render(name: str) -> str:
    if name.startswith("accuracy_"):
        return accuracy(name[len("accuracy_") :])
    if name.startswith("feature_match"):
        return feature_match(name)
    if name not in RENDERERS:
        raise ValueError(
            f"README marker {name!r} has no renderer; known: {sorted(RENDERERS)}, accuracy_<suite>, "
            "feature_match<_name>"
        )
    return RENDERERS[name]()


def regenerate(text: str) -> str:
    return MARKER.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


DOCUMENTS = ("README.md", "docs/mkcd.md", "docs/methods.md", "docs/benchmarks.md")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if a document is not what the results files say")
    p.add_argument("--files", nargs="+", default=[os.path.join(ROOT, d) for d in DOCUMENTS])
    a = p.parse_args(argv)
    stale = 0
    for path in a.files:
        with open(path) as f:
            text = f.read()
        new = regenerate(text)
        sections = len(MARKER.findall(text))
        if a.check:
            if new != text:
                import difflib

                sys.stdout.writelines(
                    difflib.unified_diff(text.splitlines(True), new.splitlines(True), path, "generated")
                )
                stale += 1
            else:
                print(f"{path}: {sections} generated sections match the results files")
            continue
        with open(path, "w") as f:
            f.write(new)
        print(f"regenerated {sections} sections of {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
