"""Accuracy over methods and seeds (and settings, for ablations): one command per suite, resumable.

    python scripts/benchmark_accuracy.py suites/lowdata.yaml         # run (or finish) every cell, then summarise
    python scripts/benchmark_accuracy.py suites/mkcd_ablation.yaml --cells mkcd_f4 mkcd_r1 --seeds 0
    python scripts/benchmark_accuracy.py suites/lowdata.yaml --summarize  # tables and plots from finished cells
    python scripts/benchmark_accuracy.py suites/lowdata.yaml --parallel 4   # 4 cells at once sharing the device

A suite (YAML) names the data, one teacher (trained once and shared, or loaded), the student, the training
budget every cell gets, the seeds, and the cells: a method and any flags of scripts/distill.py. Each
(cell, seed) writes ``results/accuracy/<suite>/<cell>/seed<k>.json`` (its resolved arguments, per-epoch
validation curve, final validation and test metrics, time); finished ones are skipped, so an interrupted
suite resumes where it stopped. The summary (``summary.json``, ``summary.md``, ``accuracy.png``,
``curves.png``) gives mean ± std over seeds, the paired difference to the vanilla student per seed, and
time per cell, and the suite's own validity: where its pair has published numbers, the rank agreement
(Spearman rho, Kendall tau, over the methods both have) between its ranking and the published one; a suite
whose rho is below 0.5 says, wherever it shows a ranking, that it does not predict the published benchmark.

Model selection never reads the test split: ``data.validation_samples`` holds out a fixed, seeded part of
the training split as the evaluation set, and ``data.test_split`` is evaluated once, after training, and only
reported. Ablations and default choices read the validation numbers; the final table reports test.

Suite keys: ``name``, ``description``, ``base`` (a suite file whose keys this one extends, or a list of them: later ones
override earlier ones), ``seeds``,
``data`` (DataArguments), ``teacher`` (``path``, or ``model_name_or_path`` + ``checkpoint``, or
``model_name_or_path`` + ``train`` to train it once), ``student`` (student flags, e.g.
``model_name_or_path``, ``max_train_samples``), ``training`` (DistillationTrainingArguments), ``teacher_cache``
(true: one teacher-output cache per data pipeline, under ``work_dir``), ``baseline`` (the cell every other is
compared with, default ``none``), ``report`` (``test`` or ``validation``), ``published`` (a YAML of published
numbers shown beside ours), ``published_pair`` (for a ``cells`` suite: the key of its teacher -> student pair
in ``published``, e.g. ``resnet56_resnet20``), ``calibration_methods`` (the methods every calibration
candidate runs: where a suite ran more, its rank agreement is also given over these, the figure that compares
candidates), ``omit_cells`` (names of a base suite's cells this suite leaves out, e.g. cells that equal another
one on its pair), and ``cells`` (``more_cells``: cells after those, so a suite can keep its base's ``cells`` and
add its own) — or ``matrix`` (``pairs`` x ``methods`` over a
``recipe`` pattern such as ``recipes/cifar100/{pair}_{method}.yaml``, each recipe bringing its own teacher).
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from hf_mkcd.run import mapping_to_argv  # noqa: E402
from hf_mkcd.run_dir import atomic_write_json  # noqa: E402

ARG_FILE_KEYS = ("data", "student", "training")
PREDICTIVE_RHO = 0.5  # below this rank agreement with the published table, a suite's ranking is its own regime's only


# -- suites ---------------------------------------------------------------------------------------------
def load_suite(path: str) -> dict:
    with open(path) as f:
        suite = yaml.safe_load(f) or {}
    bases = suite.pop("base", [])
    for base_path in reversed([bases] if isinstance(bases, str) else bases):  # a later base overrides an earlier one
        base = load_suite(os.path.join(os.path.dirname(path), base_path))
        for key in ARG_FILE_KEYS + ("teacher",):
            if key in suite and key in base:
                suite[key] = {**base[key], **suite[key]}
        suite = {**base, **suite}
    suite.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    suite.setdefault("seeds", [0, 1, 2])
    suite.setdefault("baseline", "none")
    suite.setdefault("report", "test")
    return suite


def expand_cells(suite: dict) -> list:
    """Every cell as ``{"name", "method", "recipe"?, "args"}``."""
    cells = []
    if "matrix" in suite:
        m = suite["matrix"]
        for spec in m["pairs"]:
            teacher, student = (part.strip() for part in spec.split("->"))
            pair = f"{teacher}_{student}"
            for method in m["methods"]:
                pattern = m.get("vanilla_recipe", m["recipe"]) if method == "none" else m["recipe"]
                recipe = pattern.format(pair=pair, method=method, teacher=teacher, student=student)
                cells.append(
                    {
                        "name": f"{pair}/{method}",
                        "method": method,
                        "recipe": recipe,
                        "pair": pair,
                        "args": dict(m.get("args") or {}),
                    }
                )
    omitted = set(suite.get("omit_cells") or [])
    for cell in (suite.get("cells") or []) + (suite.get("more_cells") or []):
        cell = dict(cell)
        if cell.get("name", cell["method"]) in omitted:
            continue
        args = {k: v for k, v in cell.items() if k not in ("name", "method", "recipe", "note")}
        cells.append(
            {
                "name": cell.get("name", cell["method"]),
                "method": cell["method"],
                "recipe": cell.get("recipe"),
                "note": cell.get("note"),
                "args": args,
            }
        )
    names = [c["name"] for c in cells]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"suite {suite['name']!r}: duplicate cell names {sorted(dupes)}")
    return cells


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- running --------------------------------------------------------------------------------------------
def ensure_teacher(suite: dict, work_dir: str, log) -> tuple:
    """(teacher flags for the cells, teacher record). Trains the suite's teacher once when asked to."""
    t = suite.get("teacher")
    if not t:
        return {}, None
    if "path" in t:
        return {"teacher_model_name_or_path": t["path"]}, {"path": t["path"]}
    if "checkpoint" in t:
        return (
            {"teacher_model_name_or_path": t["model_name_or_path"], "teacher_checkpoint": t["checkpoint"]},
            {"model": t["model_name_or_path"], "checkpoint": t["checkpoint"]},
        )
    from hf_mkcd.data import DataArguments
    from hf_mkcd.run import ModelArguments, parse_args, run
    from hf_mkcd.trainer import DistillationTrainingArguments

    flags = {
        **(suite.get("data") or {}),
        **(t.get("train") or {}),
        "model_name_or_path": t["model_name_or_path"],
        "method": "none",
    }
    out = os.path.join(work_dir, "teachers", f"{t['model_name_or_path']}-{digest(flags)}")
    record_path = os.path.join(out, "suite_teacher.json")
    if not os.path.isfile(record_path):
        log(f"training the suite's teacher {t['model_name_or_path']} into {out}")
        start = time.time()
        args = parse_args(
            (ModelArguments, DataArguments, DistillationTrainingArguments),
            mapping_to_argv({**flags, "output_dir": out, "report_to": "none", "save_strategy": "no"}),
        )
        metrics = run(*args)
        atomic_write_json(record_path, {"flags": flags, "metrics": metrics, "minutes": (time.time() - start) / 60})
    with open(record_path) as f:
        record = json.load(f)
    return {"teacher_model_name_or_path": out}, {
        "model": t["model_name_or_path"],
        "flags": flags,
        "metrics": record["metrics"],
        "minutes": record["minutes"],
    }


def cell_flags(suite: dict, cell: dict, seed: int, teacher_flags: dict, work_dir: str) -> dict:
    from hf_mkcd.distillers import get_distiller_class

    flags = {}
    if cell.get("recipe"):
        with open(os.path.join(ROOT, cell["recipe"])) as f:
            flags.update(yaml.safe_load(f) or {})
    for key in ARG_FILE_KEYS:
        flags.update(suite.get(key) or {})
    method = get_distiller_class(cell["method"])
    if method.needs_teacher:
        flags.update(teacher_flags)
    flags.update(cell["args"])
    flags.update(
        method=cell["method"],
        seed=seed,
        report_to="none",
        save_strategy="no",
        output_dir=os.path.join(work_dir, suite["name"], cell["name"].replace("/", "__"), f"seed{seed}"),
    )
    flags.setdefault("eval_strategy", "epoch")
    if suite.get("teacher_cache") and method.needs_teacher and "teacher_model_name_or_path" in flags:
        views = "-".join(method.views) or "plain"
        teacher_id = digest([flags.get("teacher_model_name_or_path"), flags.get("teacher_checkpoint")])
        flags.setdefault("teacher_cache", os.path.join(work_dir, "cache", f"{teacher_id}-{views}"))
    return flags


def run_cell(flags: dict) -> dict:
    from hf_mkcd.data import DataArguments
    from hf_mkcd.run import ModelArguments, parse_args, run
    from hf_mkcd.trainer import DistillationTrainingArguments

    args = parse_args((ModelArguments, DataArguments, DistillationTrainingArguments), mapping_to_argv(flags))
    start = time.time()
    metrics = run(*args)
    with open(os.path.join(flags["output_dir"], "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    curve = [{"epoch": e["epoch"], "top1": e["eval_top1"]} for e in history if "eval_top1" in e]
    losses = [
        {k: v for k, v in e.items() if k.startswith("loss") or k in ("epoch", "temperature")}
        for e in history
        if "loss" in e
    ]
    return {
        "metrics": metrics,
        "curve": curve,
        "train_log": losses,
        "wall_minutes": (time.time() - start) / 60,
        "projector_params": projector_params(flags["output_dir"]),
    }


def projector_params(output_dir: str):
    try:
        from transformers import AutoModelForImageClassification

        import hf_mkcd  # noqa: F401

        model = AutoModelForImageClassification.from_pretrained(output_dir)
        return sum(p.numel() for p in model.projector.parameters()) if model.projector is not None else 0
    except (OSError, ValueError):
        return None


def _run_cell_in_process(flags: dict, threads: int) -> dict:
    """One cell in a worker process of ``--parallel``: its own torch threads, errors returned, not raised."""
    import torch

    from hf_mkcd.run import setup_logging

    torch.set_num_threads(threads)
    setup_logging(False)
    try:
        return run_cell(flags)
    except Exception as err:  # noqa: BLE001 -- recorded by the parent like an in-process failure
        return {"error": f"{type(err).__name__}: {err}"}


def run_suite(suite: dict, out_dir: str, work_dir: str, cells=None, seeds=None, log=print, parallel: int = 1) -> None:
    from tqdm.auto import tqdm

    teacher_flags, teacher_record = ensure_teacher(suite, work_dir, log)
    if teacher_record is not None:
        with open(os.path.join(out_dir, "teacher.json"), "w") as f:
            json.dump(teacher_record, f, indent=2)
    todo = [
        (c, s) for c in expand_cells(suite) for s in (seeds or suite["seeds"]) if cells is None or c["name"] in cells
    ]
    todo = [(c, s) for c, s in todo if not os.path.isfile(_cell_path(out_dir, c, s))]  # finished before: resumable
    start, done = time.time(), 0

    def record(cell, seed, flags, result):
        nonlocal done
        if "error" in result:
            log(f"cell {cell['name']} seed {seed} failed: {result['error']}")
            return  # a failed cell is retried next time
        result.update(
            cell=cell["name"],
            method=cell["method"],
            note=cell.get("note"),
            seed=seed,
            flags=flags,
            commit=git_commit(),
            date=datetime.datetime.now().isoformat(timespec="seconds"),
        )
        path = _cell_path(out_dir, cell, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json(path, result)
        done += 1

    jobs = [(cell, seed, cell_flags(suite, cell, seed, teacher_flags, work_dir)) for cell, seed in todo]
    if parallel <= 1:
        for cell, seed, flags in tqdm(jobs, desc=f"{suite['name']}: cells x seeds"):
            try:
                result = run_cell(flags)
            except Exception as err:  # one failing cell is recorded, the others go on
                result = {"error": f"{type(err).__name__}: {err}"}
            record(cell, seed, flags, result)
    else:  # N cells at once, each in its own process sharing the device (and the teacher cache)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // parallel)
        log(f"running {len(jobs)} cells, {parallel} at a time ({threads} CPU thread(s) each)")
        with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_cell_in_process, flags, threads): (cell, seed, flags) for cell, seed, flags in jobs
            }
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"{suite['name']}: x{parallel}"):
                record(*futures[future], future.result())
    if done:  # the sweep's throughput, for comparing --parallel settings side by side
        hours = (time.time() - start) / 3600
        path = os.path.join(out_dir, "throughput.json")
        history = json.load(open(path)) if os.path.isfile(path) else []
        history.append(
            {
                "parallel": parallel,
                "cells": done,
                "wall_hours": hours,
                "cells_per_hour": done / hours,
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "commit": git_commit(),
            }
        )
        atomic_write_json(path, history)
        log(f"{done} cells in {hours * 60:.1f} min: {done / hours:.1f} cells per hour with --parallel {parallel}")


def _cell_path(out_dir: str, cell: dict, seed: int) -> str:
    return os.path.join(out_dir, cell["name"].replace("/", "__"), f"seed{seed}.json")


# -- summarising ----------------------------------------------------------------------------------------
def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(suite: dict, out_dir: str) -> dict:
    published = {}
    if suite.get("published"):
        with open(os.path.join(ROOT, suite["published"])) as f:
            published = yaml.safe_load(f) or {}
    rows, curves = [], {}
    cells = expand_cells(suite)
    results = {}
    for cell in cells:
        for seed in suite["seeds"]:
            path = os.path.join(out_dir, cell["name"].replace("/", "__"), f"seed{seed}.json")
            if os.path.isfile(path):
                with open(path) as f:
                    results[(cell["name"], seed)] = json.load(f)
    baseline = suite["baseline"]

    def metric(name, seed, key):
        r = results.get((name, seed))
        return None if r is None else r["metrics"].get(key)

    for cell in cells:
        name = cell["name"]
        base_name = f"{cell['pair']}/{baseline}" if cell.get("pair") else baseline
        seeds = [s for s in suite["seeds"] if (name, s) in results]
        if not seeds:
            continue
        row = {"cell": name, "method": cell["method"], "note": cell.get("note"), "seeds": seeds}
        row["pair"] = cell.get("pair")
        for split, key in (("validation", "eval_top1"), ("test", "test_top1")):
            vals = [metric(name, s, key) for s in seeds]
            if all(v is None for v in vals):
                continue
            row[split] = dict(zip(("mean", "std"), _mean_std([100 * v for v in vals])))
            row[split]["per_seed"] = [100 * v for v in vals]
            if name != base_name:
                diffs = [
                    100 * (metric(name, s, key) - metric(base_name, s, key))
                    for s in seeds
                    if metric(base_name, s, key) is not None
                ]
                if diffs:
                    mean, std = _mean_std(diffs)
                    t = mean / (std / math.sqrt(len(diffs))) if len(diffs) > 1 and std > 0 else None
                    row[split]["vs_baseline"] = {
                        "mean": mean,
                        "std": std,
                        "per_seed": diffs,
                        "wins": sum(d > 0 for d in diffs),
                        "n": len(diffs),
                        "paired_t": t,
                    }
        row["minutes"] = _mean_std([results[(name, s)]["wall_minutes"] for s in seeds])[0]
        row["projector_params"] = results[(name, seeds[0])].get("projector_params")
        pub_pair = cell.get("pair") or suite.get("published_pair")
        if pub_pair:
            row["published"] = (published.get(pub_pair) or {}).get(cell["method"])
        rows.append(row)
        per_epoch = {}
        for s in seeds:
            for point in results[(name, s)]["curve"]:
                per_epoch.setdefault(round(point["epoch"], 3), []).append(100 * point["top1"])
        curves[name] = [[e, sum(v) / len(v)] for e, v in sorted(per_epoch.items())]
    add_best_other(rows)
    teacher = None
    if os.path.isfile(os.path.join(out_dir, "teacher.json")):
        with open(os.path.join(out_dir, "teacher.json")) as f:
            teacher = json.load(f)
    summary = {
        "suite": suite["name"],
        "description": suite.get("description"),
        "report": suite["report"],
        "baseline": baseline,
        "seeds": suite["seeds"],
        "teacher": teacher,
        "student": (suite.get("student") or {}).get("model_name_or_path"),
        "rows": rows,
        "curves": curves,
        "command": f"python scripts/benchmark_accuracy.py suites/{suite['name']}.yaml",
        "complete": all((c["name"], s) in results for c in cells for s in suite["seeds"]),
        "agreement": agreement(suite, rows, published),
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(markdown_summary(summary))
    plot(summary, out_dir)
    return summary


def rank_agreement(ours: dict, published: dict) -> dict:
    """Spearman rho and Kendall tau between ``ours`` and ``published`` (method -> top-1) over the methods both have
    (the teacher's own number is not a method); None where fewer than three are shared."""
    from scipy.stats import kendalltau, spearmanr

    methods = sorted(m for m in ours if m != "teacher" and isinstance(published.get(m), (int, float)))
    if len(methods) < 3:
        return None
    a, b = [ours[m] for m in methods], [published[m] for m in methods]
    return {
        "methods": methods,
        "n": len(methods),
        "spearman": float(spearmanr(a, b).statistic),
        "kendall": float(kendalltau(a, b).statistic),
    }


def agreement(suite: dict, rows: list, published: dict) -> list:
    """The suite's rank agreement with the published table, per pair that has one: on the mean of the reported
    split, and seed by seed (how much of the agreement is seed noise). Only each method's own cell counts (the
    cell named as the method), not its ablation variants."""
    split = suite["report"]
    pairs = {}
    for r in rows:
        pair = r.get("pair") or suite.get("published_pair")
        if pair and published.get(pair) and r.get(split) and r["cell"] in (r["method"], f"{pair}/{r['method']}"):
            pairs.setdefault(pair, []).append(r)

    def measured(pair, pair_rows):
        found = rank_agreement({r["method"]: r[split]["mean"] for r in pair_rows}, published[pair])
        if found is None:
            return None
        per_seed, rankings = [], []
        for seed in suite["seeds"]:
            ours = {r["method"]: v for r in pair_rows for s, v in zip(r["seeds"], r[split]["per_seed"]) if s == seed}
            one = rank_agreement(ours, published[pair])
            if one is not None and one["n"] == found["n"]:
                per_seed.append(one["spearman"])
                rankings.append(ours)
        # the regime against itself: how alike two seeds rank the methods. A rho against the published table well
        # below this one is the regime's own ranking, not seed noise.
        between = [rank_agreement(a, b)["spearman"] for i, a in enumerate(rankings) for b in rankings[i + 1 :]]
        seed_to_seed = sum(between) / len(between) if between else None
        return {**found, "spearman_per_seed": per_seed, "seed_to_seed": seed_to_seed}

    out = []
    fixed = set(suite.get("calibration_methods") or [])
    for pair, pair_rows in pairs.items():
        found = measured(pair, pair_rows)
        if found is None:
            continue
        entry = {"pair": pair, "split": split, **found}
        if fixed and set(found["methods"]) - fixed:  # also over the set every calibration candidate ran
            entry["calibration_set"] = measured(pair, [r for r in pair_rows if r["method"] in fixed])
        out.append(entry)
    return out


def agreement_lines(summary: dict) -> list:
    """What the rank agreement says about the suite, for the lines under its table."""
    found = summary.get("agreement") or []
    if not found:
        return (
            ["No published table for this suite's pair: how well its ranking predicts CIFAR-100 is not measured.", ""]
            if summary.get("report") == "test"
            else []
        )
    lines = []
    for a in found:
        seeds = a.get("spearman_per_seed") or []
        spread = f"; per seed {', '.join(f'{v:.2f}' for v in seeds)}" if len(seeds) > 1 else ""
        if a.get("seed_to_seed") is not None:
            spread += f"; seed against seed ρ = {a['seed_to_seed']:.2f} (how reproducible the regime's own ranking is)"
        lines.append(
            f"Rank agreement with the published CIFAR-100 table of `{a['pair']}` ({a['split']} means, {a['n']} "
            f"methods): Spearman ρ = {a['spearman']:.2f}, Kendall τ = {a['kendall']:.2f}{spread}."
            + (
                f" **This ranking does not predict CIFAR-100 (ρ below {PREDICTIVE_RHO}): it measures this suite's "
                "own regime only.**"
                if a["spearman"] < PREDICTIVE_RHO
                else ""
            )
        )
        fixed = a.get("calibration_set")
        if fixed:
            lines[-1] += (
                f" Over the {fixed['n']} methods every calibration candidate ran (the figure that compares "
                f"candidates): ρ = {fixed['spearman']:.2f}, τ = {fixed['kendall']:.2f}."
            )
    return lines + [""]


def paired_diffs(row: dict, other: dict, split: str) -> list:
    """``row`` minus ``other`` on ``split``, seed by seed, over the seeds both ran."""
    theirs = dict(zip(other["seeds"], other[split]["per_seed"]))
    return [v - theirs[s] for s, v in zip(row["seeds"], row[split]["per_seed"]) if s in theirs]


def add_best_other(rows: list) -> None:
    """Each row's paired difference (per seed) to the best *other* cell of its pair on each split: how far the
    leader is ahead, or how far a cell trails it."""
    for split in ("validation", "test"):
        ranked = sorted((r for r in rows if r.get(split)), key=lambda r: -r[split]["mean"])
        for r in ranked:
            best = next((o for o in ranked if o is not r and o.get("pair") == r.get("pair")), None)
            if best is None:
                continue
            diffs = paired_diffs(r, best, split)
            if diffs:
                mean, std = _mean_std(diffs)
                r[split]["vs_best_other"] = {
                    "cell": best["cell"],
                    "mean": mean,
                    "std": std,
                    "wins": sum(d > 0 for d in diffs),
                    "n": len(diffs),
                }


def _fmt(stat, key="mean"):
    if not stat or stat.get(key) is None:
        return "–"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def standing(summary: dict, cell: str = "mkcd") -> list:
    """Where ``cell`` ranks among the suite's cells on each split, and its paired difference to the best other
    cell (per seed): the sentence the README's reading of the table starts from. Empty for suites without it."""
    rows = {r["cell"]: r for r in summary["rows"]}
    if cell not in rows or summary["report"] != "test" or len(rows) < 3:
        return []
    parts = []
    for split in ("validation", "test"):
        ranked = sorted((r for r in rows.values() if r.get(split)), key=lambda r: -r[split]["mean"])
        rank = [r["cell"] for r in ranked].index(cell) + 1
        best = next(r for r in ranked if r["cell"] != cell)
        diffs = paired_diffs(rows[cell], best, split)
        mean = sum(diffs) / len(diffs)
        parts.append(
            f"on {split}, `{cell}` ranks {rank} of {len(ranked)}; against the best other cell, `{best['cell']}`, "
            f"{mean:+.2f} points (paired, {sum(d > 0 for d in diffs)}/{len(diffs)} seeds better)"
        )
    return ["Standing: " + "; ".join(parts) + ".", ""]


def markdown_summary(summary: dict) -> str:
    """The suite's table (what the README shows)."""
    report = summary["report"]
    teacher = summary.get("teacher") or {}
    lines = []
    if teacher.get("metrics"):
        m = teacher["metrics"]
        lines.append(
            f"Teacher `{teacher['model']}`: validation top-1 {100 * m['eval_top1']:.2f}"
            + (f", test top-1 {100 * m['test_top1']:.2f}" if "test_top1" in m and report == "test" else "")
            + f" ({teacher['minutes']:.0f} min to train)."
        )
        lines.append("")
    has_pub = any(r.get("published") is not None for r in summary["rows"])
    splits = ["validation", "test"] if report == "test" else ["validation"]  # choices read validation; test is final
    head = [
        "cell",
        "method",
        *[f"{s} top-1" for s in splits],
        f"Δ vs `{summary['baseline']}` ({report}, paired)",
        "seeds better",
    ]
    best_other = report == "test"  # a benchmark table: how far each cell is from the leader
    if best_other:
        head += ["Δ vs the best other (test, paired)"]
    head += [
        "projector params",
        "min / run",
    ] + (["published"] if has_pub else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        vs = (r.get(report) or {}).get("vs_baseline")
        delta = f"{vs['mean']:+.2f} ± {vs['std']:.2f}" if vs else "–"
        wins = f"{vs['wins']}/{vs['n']}" if vs else "–"
        params = f"{r['projector_params']:,}" if r.get("projector_params") is not None else "–"
        cells = [
            f"`{r['cell']}`",
            r["method"],
            *[_fmt(r.get(s)) for s in splits],
            delta,
            wins,
        ]
        if best_other:
            other = (r.get("test") or {}).get("vs_best_other")
            cells.append(
                f"{other['mean']:+.2f} ± {other['std']:.2f} vs `{other['cell']}` ({other['wins']}/{other['n']})"
                if other
                else "–"
            )
        cells += [
            params,
            f"{r['minutes']:.1f}" if r.get("minutes") else "–",
        ]
        if has_pub:
            cells.append(f"{r['published']:.2f}" if isinstance(r.get("published"), (int, float)) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    n = len(summary["seeds"])
    lines += [""] + agreement_lines(summary) + standing(summary)
    lines.append(
        f"Mean ± std over {n} seeds (top-1 %, last epoch); Δ is the per-seed difference to the "
        f"`{summary['baseline']}` cell of the same seed. "
        + ("" if summary["complete"] else "**Incomplete: some cells have not run yet.** ")
        + f"`{summary['command']}`."
    )
    return "\n".join(lines) + "\n"


def across_pairs(summaries: list, focus: str = "mkcd") -> str:
    """Several single-pair suites side by side: each method's rank on test among the methods every suite ran, its
    mean rank and the pairs it leads; then ``focus`` per pair (its paired gap to the best other method, its
    projector and its time against the vanilla student's)."""
    ran = [{r["cell"] for r in s["rows"]} for s in summaries]
    common = [r["cell"] for r in summaries[0]["rows"] if all(r["cell"] in cells for cells in ran)]
    names = [f"`{(s.get('teacher') or {}).get('model', '?')}` -> `{s.get('student') or '?'}`" for s in summaries]
    ranks = {c: [] for c in common}
    for s in summaries:
        rows = {r["cell"]: r for r in s["rows"] if r["cell"] in common and r.get("test")}
        for i, c in enumerate(sorted(rows, key=lambda c: -rows[c]["test"]["mean"])):
            ranks[c].append(i + 1)
    complete = [c for c in common if len(ranks[c]) == len(summaries)]
    lines = [
        "| method | " + " | ".join(f"rank on {n}" for n in names) + " | mean rank | pairs led |",
        "|" + "---|" * (len(names) + 3),
    ]
    for c in sorted(complete, key=lambda c: sum(ranks[c])):
        lines.append(
            f"| `{c}` | " + " | ".join(map(str, ranks[c])) + f" | {sum(ranks[c]) / len(ranks[c]):.1f} | "
            f"{sum(r == 1 for r in ranks[c])} |"
        )
    rhos = [
        ", ".join(f"ρ = {a['spearman']:.2f} ({a['n']} methods)" for a in s.get("agreement") or []) or "not measured"
        for s in summaries
    ]
    lines.append("| rank agreement with the published table | " + " | ".join(rhos) + " | | |")
    lines += [
        "",
        f"Ranks by mean test top-1 over the seeds, among the {len(complete)} methods all {len(summaries)} pairs ran; "
        f"the last row is each pair's Spearman ρ against its published CIFAR-100 ranking (below {PREDICTIVE_RHO}: "
        "that pair's ranks do not predict CIFAR-100).",
        "",
        f"| pair | `{focus}` test top-1 | Δ vs the best other (paired) | projector params | min / run "
        "(vanilla student) |",
        "|---|---|---|---|---|",
    ]
    for n, s in zip(names, summaries):
        rows = {r["cell"]: r for r in s["rows"] if r["cell"] in common}
        r = rows.get(focus)
        if not r or not r.get("test"):
            continue
        best = sorted((x for x in rows.values() if x is not r and x.get("test")), key=lambda x: -x["test"]["mean"])
        diffs = paired_diffs(r, best[0], "test") if best else []
        gap = (
            f"{sum(diffs) / len(diffs):+.2f} vs `{best[0]['cell']}` ({sum(d > 0 for d in diffs)}/{len(diffs)} seeds)"
            if diffs
            else "–"
        )
        vanilla = rows.get("none", {}).get("minutes")
        lines.append(
            f"| {n} | {_fmt(r['test'])} | {gap} | {r.get('projector_params') or 0:,} | {r['minutes']:.1f}"
            + (f" ({vanilla:.1f})" if vanilla else "")
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, out_dir: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    report = summary["report"]
    rows = [r for r in summary["rows"] if r.get(report)]
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(rows)), 4))
        ax.bar(
            range(len(rows)),
            [r[report]["mean"] for r in rows],
            yerr=[r[report]["std"] for r in rows],
            capsize=3,
            color=["tab:gray" if r["cell"] == summary["baseline"] else "tab:blue" for r in rows],
        )
        lo = min(r[report]["mean"] - r[report]["std"] for r in rows)
        hi = max(r[report]["mean"] + r[report]["std"] for r in rows)
        ax.set_ylim(lo - 0.3 * (hi - lo) - 0.1, hi + 0.15 * (hi - lo) + 0.1)
        ax.set_xticks(range(len(rows)), [r["cell"] for r in rows], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(f"{report} top-1 (%)")
        ax.set_title(f"{summary['suite']}: mean ± std over {len(summary['seeds'])} seeds")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "accuracy.png"), dpi=110)
        plt.close(fig)
    if summary["curves"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, points in summary["curves"].items():
            if points:
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    label=name,
                    lw=2.5 if name == summary["baseline"] else 1.2,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 (%), mean over seeds")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "curves.png"), dpi=110)
        plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", help="a suite YAML (suites/*.yaml)")
    p.add_argument("--cells", nargs="+", help="run only these cells")
    p.add_argument("--seeds", nargs="+", type=int, help="run only these seeds")
    p.add_argument("--summarize", action="store_true", help="only summarise the finished cells")
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="run this many cells at once, each in its own process sharing the device (throughput.json "
        "records cells per hour, to compare settings)",
    )
    p.add_argument("--results_dir", default=os.path.join(ROOT, "results", "accuracy"))
    p.add_argument(
        "--work_dir",
        default=os.path.join(ROOT, "runs", "benchmarks"),
        help="teachers, caches and cell outputs (not committed)",
    )
    a = p.parse_args(argv)
    suite = load_suite(a.suite)
    out_dir = os.path.join(a.results_dir, suite["name"])
    os.makedirs(out_dir, exist_ok=True)
    if not a.summarize:
        from hf_mkcd.run import setup_logging

        setup_logging(True)
        run_suite(suite, out_dir, a.work_dir, a.cells, a.seeds, parallel=a.parallel)
    summary = summarize(suite, out_dir)
    print(markdown_summary(summary))
    print(f"wrote {out_dir}/summary.json, summary.md, accuracy.png, curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
