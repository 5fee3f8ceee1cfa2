"""scripts/distill.py and scripts/train_teacher.py end to end (tiny), recipes, config precedence."""

import glob
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_teacher
from transformers import AutoModelForImageClassification

from hf_mkcd import MKCDStudentForImageClassification, load_teacher
from hf_mkcd.data import DataArguments
from hf_mkcd.distillers import get_distiller_class
from hf_mkcd.run import ModelArguments, parse_args
from hf_mkcd.trainer import DistillationTrainingArguments

ROOT = os.path.dirname(os.path.dirname(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import distill  # noqa: E402
import train_teacher  # noqa: E402

ARGS = (ModelArguments, DataArguments, DistillationTrainingArguments)


def list_distillers_with_recipes():
    from hf_mkcd.distillers import list_distillers

    return [m for m in list_distillers() if m != "none"]


TINY = [
    "--skip_teacher_check",  # these teachers train a few steps: at chance by design
    "true",
    "--dataset_name",
    "digits",
    "--image_size",
    "16",
    "--max_train_samples",
    "48",
    "--max_eval_samples",
    "32",
    "--max_steps",
    "2",
    "--per_device_train_batch_size",
    "16",
    "--use_cpu",
    "true",
    "--save_strategy",
    "no",
    "--eval_strategy",
    "no",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "1",
]


@pytest.mark.parametrize("recipe", sorted(glob.glob(os.path.join(ROOT, "recipes", "cifar100", "*.yaml"))))
def test_every_recipe_parses(recipe):
    model_args, data_args, args = parse_args(ARGS, [recipe])
    name = os.path.basename(recipe)
    assert data_args.dataset_name == "uoft-cs/cifar100" and args.optim_args == "momentum=0.9"
    light = any(s in model_args.model_name_or_path for s in ("mobilenetv2", "shufflev"))
    if args.method == "mlkd":  # MLKD's own schedule: LR 0.025 (same family) / 0.01 with 480-960 epochs
        assert args.learning_rate in (0.025, 0.01)
        assert args.num_train_epochs in (240, 480, 960)
    elif args.method == "ab":  # 30 init epochs in front of the 240-epoch recipe
        assert (args.num_train_epochs, args.lr_decay_epochs) == (270, [180, 210, 240])
    else:
        assert args.num_train_epochs == 240 and args.lr_decay_epochs == [150, 180, 210]
        assert args.learning_rate == (0.01 if light else 0.05) or name.startswith("teacher_")
    if args.method == "dkd":
        assert args.distiller_kwargs["beta"] == (
            2.0
            if "resnet56_resnet20" in name or "resnet110" in name
            else 6.0
            if name.startswith(("wrn_40_2_wrn", "vgg13"))
            else 8.0
        )
    if args.method not in ("none",):
        assert model_args.teacher_checkpoint.endswith("_vanilla/ckpt_epoch_240.pth")
        from hf_mkcd.distillers import get_distiller_class

        cls = get_distiller_class(args.method)
        unknown = set(args.loss_weights()) - set(cls.defaults)
        assert not unknown, unknown


def test_yaml_then_cli_precedence_and_unknown_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"method": "kd", "learning_rate": 0.1, "temperature": 3.0, "output_dir": "x"}))
    _, _, args = parse_args(ARGS, [str(recipe), "--learning_rate", "0.02"])
    assert (args.method, args.learning_rate, args.temperature) == ("kd", 0.02, 3.0)
    recipe.write_text(yaml.safe_dump({"method": "kd", "temprature": 3.0, "output_dir": "x"}))
    with pytest.raises(ValueError, match="temprature"):
        parse_args(ARGS, [str(recipe)])
    recipe.write_text(yaml.safe_dump({"method": "kd", "learning_rat": 0.3, "output_dir": "x"}))  # a prefix of a flag
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args(ARGS, [str(recipe)])
    with pytest.raises(ValueError, match="unknown method 'kdd'.*Valid methods"):
        parse_args(ARGS, ["--output_dir", "x", "--method", "kdd"])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A teacher trained by scripts/train_teacher.py for 2 steps on real (tiny) data."""
    out = tmp_path_factory.mktemp("teacher")
    train_teacher.main(["--model_name_or_path", "cifar_resnet20", "--output_dir", str(out), *TINY])
    return out


def test_train_teacher_output_is_a_model_and_a_teacher(teacher_dir):
    files = set(os.listdir(teacher_dir))
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "all_results.json",
        "trainer_state.json",
        "run_config.yaml",
    } <= files
    teacher = load_teacher(str(teacher_dir), num_classes=10)
    assert teacher.pretrained_cfg["input_size"] == (1, 16, 16)  # digits are grayscale: a 1-channel model
    assert AutoModelForImageClassification.from_pretrained(teacher_dir).config.num_labels == 10
    assert not (teacher_dir / "timm").exists()  # one copy of the weights (a CIFAR-zoo model: hf_mkcd's layout)
    assert not [n for n in files if n.startswith("checkpoint-")]  # pruned once the run finished
    import timm  # the same classifier in timm's Hub layout, on request, as a timm user expects it

    student = AutoModelForImageClassification.from_pretrained(teacher_dir)
    student.export_timm(str(teacher_dir.parent / "as_timm"))
    as_timm = timm.create_model(f"local-dir:{teacher_dir.parent / 'as_timm'}", pretrained=True).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(as_timm(x), teacher(x))


@pytest.fixture(scope="module")
def community_teacher(tmp_path_factory):
    """A cifar_resnet32x4 checkpoint in the community layout (``{"model": state_dict}``), 10 classes, random weights."""
    import timm

    path = tmp_path_factory.mktemp("ckpt") / "ckpt_epoch_240.pth"
    torch.manual_seed(0)
    torch.save({"model": timm.create_model("cifar_resnet32x4", num_classes=10).state_dict()}, path)
    return str(path)


@pytest.mark.parametrize("method", sorted(list_distillers_with_recipes()))
def test_every_method_trains_from_its_recipe(community_teacher, tmp_path, method):
    """The committed CIFAR-100 recipe, run through scripts/distill.py with only the data, the teacher file and the
    length overridden: a recipe that cannot start fails here."""
    recipe = os.path.join(ROOT, "recipes", "cifar100", f"resnet32x4_resnet8x4_{method}.yaml")
    out = tmp_path / method
    distill.main([recipe, "--teacher_checkpoint", community_teacher, "--output_dir", str(out), *TINY])
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_top1", "eval_top5", "train_loss"} <= set(results)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = [e for e in state["log_history"] if "loss" in e]
    assert len(logged) == 2
    for entry in logged:  # the total is the sum of the method's logged terms, each finite
        terms = {k: v for k, v in entry.items() if k.startswith("loss_")}
        assert terms and all(math.isfinite(v) for v in terms.values())
        assert entry["loss"] == pytest.approx(sum(terms.values()), rel=1e-3, abs=1e-5)
    student = AutoModelForImageClassification.from_pretrained(out)
    assert isinstance(student, MKCDStudentForImageClassification)
    cls = get_distiller_class(method)
    assert (student.config.projector, student.config.head) == (cls.projector, cls.head)
    assert student.config.teacher == "cifar_resnet32x4"
    assert yaml.safe_load((out / "run_config.yaml").read_text())["method"] == method
    with torch.no_grad():
        assert student(pixel_values=torch.randn(2, 3, 16, 16)).logits.shape == (2, 10)


def test_vanilla_and_teacher_recipes_train(tmp_path):
    for recipe in ("resnet8x4_vanilla.yaml", "teacher_resnet32x4.yaml"):
        out = tmp_path / recipe
        train_teacher.main([os.path.join(ROOT, "recipes", "cifar100", recipe), "--output_dir", str(out), *TINY])
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_recipes_are_generated_from_the_table(tmp_path):
    import make_recipes

    assert make_recipes.main(["--check"]) == 0, "recipes/cifar100 differs from scripts/make_recipes.py"
    assert make_recipes.main(["--output_dir", str(tmp_path)]) == 0
    for name in os.listdir(tmp_path):  # the generator's output is what is committed, byte for byte
        assert (tmp_path / name).read_text() == open(os.path.join(ROOT, "recipes", "cifar100", name)).read()


@pytest.mark.parametrize(
    "script", ["distill.py", "train_teacher.py", "quickstart.py", "make_recipes.py", "projector_cost.py"]
)
def test_every_script_help_renders(script):
    import subprocess

    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", script), "--help"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    if script in ("distill.py", "train_teacher.py"):
        for flag in (
            "--method",
            "--temperature_schedule",
            "--teacher_model_name_or_path",
            "--projector_factor",
            "--dataset_name",
            "--eval_split",
            "--max_grad_norm",
            "--lr_decay_epochs",
        ):
            assert flag in run.stdout, flag


def test_distill_refuses_before_training(teacher_dir, tmp_path):
    seven = MKCDStudentForImageClassification.from_teacher(
        tiny_teacher(num_classes=7), "cifar_resnet20", projector=None, head="student"
    )
    seven.save_pretrained(tmp_path / "seven")
    with pytest.raises(ValueError, match="class-count mismatch.*7 classes.*has 10"):
        distill.main(
            [
                "--teacher_model_name_or_path",
                str(tmp_path / "seven"),
                "--output_dir",
                str(tmp_path / "o"),
                "--model_name_or_path",
                "cifar_resnet20",
                *TINY,
            ]
        )
    with pytest.raises(ValueError, match="needs --teacher_model_name_or_path"):
        distill.main(["--output_dir", str(tmp_path / "o"), "--method", "kd", *TINY])
    with pytest.raises(ValueError, match="Unknown timm architecture 'cifar_resnet9'"):
        distill.main(
            [
                "--teacher_model_name_or_path",
                str(teacher_dir),
                "--model_name_or_path",
                "cifar_resnet9",
                "--output_dir",
                str(tmp_path / "o"),
                *TINY,
            ]
        )
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_distiller_kwargs_parse_whatever_typing_has_cached():
    """typing caches Unions by unordered equality: once any library has built Optional[Union[str, dict]],
    a field typed Optional[Union[dict, str]] resolves to (str, dict, None) and HfArgumentParser picks
    `dict` as the argparse type. distiller_kwargs is a plain JSON string, immune to that."""
    import typing

    typing.Optional[typing.Union[str, dict]]
    _, _, args = parse_args(ARGS, [os.path.join(ROOT, "recipes", "cifar100", "resnet110_resnet32_dkd.yaml")])
    assert args.distiller_kwargs == {"alpha": 1.0, "beta": 2.0, "warmup_epochs": 20.0}


def test_the_cifar100_suite_runs_on_the_hub_schema(tmp_path):
    """suites/cifar100_standard.yaml's plumbing (matrix of recipes, published numbers, resumable cells, summary) on a
    local copy of the uoft-cs/cifar100 schema, with a community-layout teacher checkpoint and 2 steps per cell."""
    import timm

    import benchmark_accuracy
    from cifar100_schema import write_cifar100_parquet

    fixture = write_cifar100_parquet(tmp_path)
    ckpt = tmp_path / "ckpt.pth"
    torch.manual_seed(0)
    torch.save({"model": timm.create_model("cifar_resnet32x4", num_classes=100).state_dict()}, ckpt)
    suite = yaml.safe_load(open(os.path.join(ROOT, "suites", "cifar100_standard.yaml")))
    suite["matrix"].update(
        pairs=["resnet32x4->resnet8x4"],
        methods=["none", "kd", "mkcd"],
        args={
            "dataset_name": str(fixture),
            "teacher_checkpoint": str(ckpt),
            "max_steps": 2,
            "per_device_train_batch_size": 8,
            "dataloader_num_workers": 0,
            "use_cpu": True,
            "image_size": 16,
            "eval_strategy": "no",
            "disable_tqdm": True,
            "test_split": "test",
            "skip_teacher_check": True,  # a random teacher: at chance by design
        },
    )
    suite["seeds"], suite["name"] = [0], "cifar100_fixture"
    suite["published"] = os.path.join(ROOT, "suites", "published_cifar100.yaml")
    path = tmp_path / "cifar100_fixture.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    args = [str(path), "--results_dir", str(results), "--work_dir", str(tmp_path / "work")]
    assert benchmark_accuracy.main(args) == 0
    cell = json.loads((results / "cifar100_fixture" / "resnet32x4_resnet8x4__kd" / "seed0.json").read_text())
    assert cell["flags"]["method"] == "kd" and cell["flags"]["num_train_epochs"] == 240  # the recipe's own settings
    assert "test_top1" in cell["metrics"] and cell["metrics"]["test_samples"] > 0
    summary = json.loads((results / "cifar100_fixture" / "summary.json").read_text())
    rows = {r["cell"]: r for r in summary["rows"]}
    assert rows["resnet32x4_resnet8x4/kd"]["published"] == 73.33 and summary["complete"]
    assert "vs_baseline" in rows["resnet32x4_resnet8x4/kd"]["test"]
    md = (results / "cifar100_fixture" / "summary.md").read_text()
    assert "| published |" in md and "73.33" in md
    before = os.path.getmtime(results / "cifar100_fixture" / "resnet32x4_resnet8x4__kd" / "seed0.json")
    assert benchmark_accuracy.main(args) == 0  # resumable: finished cells are skipped
    assert os.path.getmtime(results / "cifar100_fixture" / "resnet32x4_resnet8x4__kd" / "seed0.json") == before


def test_standing_ranks_mkcd_and_pairs_seeds_against_the_best_other_cell():
    import benchmark_accuracy

    def row(cell, val, test):
        return {
            "cell": cell,
            "seeds": [0, 1, 2],
            "validation": {"mean": sum(val) / 3, "per_seed": val},
            "test": {"mean": sum(test) / 3, "per_seed": test},
        }

    summary = {
        "report": "test",
        "rows": [
            row("none", [80, 80, 80], [79, 79, 79]),
            row("fitnet", [88, 87, 86], [87, 86, 85]),
            row("mkcd", [87, 88, 85], [86, 87, 86]),
        ],
    }
    line = benchmark_accuracy.standing(summary)[0]
    # validation: mkcd 86.67 < fitnet 87.0 -> rank 2; per seed -1, +1, -1 -> -0.33, 1/3 better
    assert (
        "on validation, `mkcd` ranks 2 of 3; against the best other cell, `fitnet`, -0.33 points (paired, 1/3" in line
    )
    # test: mkcd 86.33 > fitnet 86.0 -> rank 1; per seed -1, +1, +1 -> +0.33, 2/3 better
    assert "on test, `mkcd` ranks 1 of 3; against the best other cell, `fitnet`, +0.33 points (paired, 2/3" in line
    assert benchmark_accuracy.standing({**summary, "report": "validation"}) == []  # ablations: no test reading
    # a leader that ran fewer seeds is paired on the seeds both ran: fitnet on seed 1 only (85) -> mkcd 87 - 85
    # (pairing by position would take mkcd's seed 0, 86)
    summary["rows"][1] = {**row("fitnet", [88, 87, 86], [87, 86, 85]), "seeds": [1]}
    summary["rows"][1]["test"]["per_seed"] = [85]
    assert "against the best other cell, `fitnet`, +2.00 points (paired, 1/1" in benchmark_accuracy.standing(summary)[0]


def test_best_other_and_across_pairs_by_hand():
    import benchmark_accuracy

    def row(cell, test, minutes=1.0, params=0):
        return {
            "cell": cell,
            "seeds": [0, 1, 2],
            "test": {"mean": sum(test) / 3, "std": 0.0, "per_seed": test},
            "minutes": minutes,
            "projector_params": params,
        }

    a = [row("none", [80, 80, 80]), row("fitnet", [88, 87, 86]), row("mkcd", [86, 88, 87], 1.5, 4560)]
    b = [row("none", [70, 70, 70]), row("fitnet", [75, 75, 75]), row("mkcd", [76, 74, 73]), row("ab", [90, 90, 90])]
    b[1]["seeds"], b[1]["test"]["per_seed"] = [0, 1, 2], [75.0, 75.0, 75.0]
    benchmark_accuracy.add_best_other(a)
    # mkcd and fitnet tie at 87.0: sorted() is stable, fitnet (first in the table) leads; mkcd - fitnet = -2, +1, +1
    assert a[2]["test"]["vs_best_other"]["cell"] == "fitnet"
    assert a[2]["test"]["vs_best_other"]["mean"] == pytest.approx(0.0)
    assert a[2]["test"]["vs_best_other"]["wins"] == 2
    assert a[1]["test"]["vs_best_other"]["cell"] == "mkcd"  # the leader is compared with the runner-up
    summaries = [
        {"teacher": {"model": "t1"}, "student": "s1", "rows": a},
        {"teacher": {"model": "t2"}, "student": "s2", "rows": b},
    ]
    text = benchmark_accuracy.across_pairs(summaries)
    # ab ran on one pair only: left out; ranks among none/fitnet/mkcd: pair 1 fitnet 1, mkcd 2; pair 2 fitnet 1
    assert "| `fitnet` | 1 | 1 | 1.0 | 2 |" in text and "| `mkcd` | 2 | 2 | 2.0 | 0 |" in text
    assert "`ab`" not in text and "among the 3 methods all 2 pairs ran" in text
    # pair 2: mkcd - fitnet per seed = +1, -1, -2 -> -0.67, 1/3 seeds
    assert "| `t2` -> `s2` | 74.33 ± 0.00 | -0.67 vs `fitnet` (1/3 seeds) | 0 | 1.0 (1.0) |" in text
    assert "| `t1` -> `s1` | 87.00 ± 0.00 | +0.00 vs `fitnet` (2/3 seeds) | 4,560 | 1.5 (1.0) |" in text
    # a leader with fewer seeds is paired on the seeds both ran: fitnet on seed 1 only -> mkcd 74 - 75
    b[1]["seeds"], b[1]["test"]["per_seed"] = [1], [75.0]
    text = benchmark_accuracy.across_pairs(summaries)
    assert "| `t2` -> `s2` | 74.33 ± 0.00 | -1.00 vs `fitnet` (0/1 seeds) |" in text


def test_across_calibrated_pairs_gives_the_mean_rho_of_the_pairs_run_and_names_the_rest(tmp_path, monkeypatch):
    """The README's summary of the best regime over its pairs: the mean of each pair's rho as the runner wrote it,
    over the pairs that have a summary; the others named as not run (not silently dropped from the mean)."""
    import make_readme

    def summary(teacher, rho, test):
        rows = [
            {"cell": c, "seeds": [0], "test": {"mean": t, "std": 0.0, "per_seed": [t]}, "minutes": 1.0}
            for c, t in zip(("none", "kd", "mkcd"), test)
        ]
        return {
            "teacher": {"model": teacher},
            "student": "s",
            "rows": rows,
            "command": f"run {teacher}",
            "agreement": [{"spearman": rho, "n": 3}],
        }

    for suite, s in [
        ("calib_pairs100_32", summary("t1", 0.3, [70, 72, 74])),
        ("calib_pairs100_32_wrn", summary("t2", 0.5, [70, 75, 73])),
    ]:
        os.makedirs(tmp_path / "results" / "accuracy" / suite)
        (tmp_path / "results" / "accuracy" / suite / "summary.json").write_text(json.dumps(s))
    monkeypatch.setattr(make_readme, "ROOT", str(tmp_path))
    text = make_readme.across_calibrated_pairs()
    assert "Mean Spearman ρ over the 2 pair(s) measured: **0.40**" in text
    assert "not run yet: `calib_pairs100_32_cross`" in text
    assert "| `mkcd` | 1 | 2 | 1.5 | 1 |" in text  # first on pair one, second on pair two


def test_round_two_suites_share_their_cells_and_keep_each_pairs_teacher():
    import benchmark_accuracy

    suites = {
        n: benchmark_accuracy.load_suite(os.path.join(ROOT, "suites", f"mkcd_round2_{n}.yaml"))
        for n in ("resnet", "wrn", "cross")
    }
    teachers = {n: s["teacher"]["model_name_or_path"] for n, s in suites.items()}
    assert teachers == {"resnet": "cifar_resnet56", "wrn": "cifar_wrn_40_2", "cross": "cifar_vgg13"}
    assert suites["cross"]["training"]["learning_rate"] == 0.01  # the pair's own settings survive the shared cells
    cells = {n: [c["name"] for c in benchmark_accuracy.expand_cells(s)] for n, s in suites.items()}
    # the cells written for the cross-family pair's maps of different sizes are left out where the sizes agree
    cross_only = ["energy_pool", "energy_mid_pool", "energy_mid_nofeat"]
    assert cells["resnet"] == cells["wrn"] == [c for c in cells["cross"] if c not in cross_only]
    assert cells["resnet"][0] == "round1" and set(cross_only) <= set(cells["cross"])
    for n, s in suites.items():
        assert (s["name"], s["report"], s["baseline"]) == (f"mkcd_round2_{n}", "validation", "round1")


def test_calibrated_suites_run_the_ten_calibration_methods_first_with_each_pairs_settings():
    """(c) keeps its base's ten calibration cells (more_cells adds after them); the wrn suite, built on (c), gives
    the ten its own pair's settings and its own more_cells, none of the first pair's."""
    import benchmark_accuracy

    def load(name):
        suite = benchmark_accuracy.load_suite(os.path.join(ROOT, "suites", f"{name}.yaml"))
        return suite, benchmark_accuracy.expand_cells(suite)

    base, base_cells = load("calib_pairs100")
    first, first_cells = load("calib_pairs100_32")
    wrn, wrn_cells = load("calib_pairs100_32_wrn")
    ten = base["calibration_methods"]
    assert [c["method"] for c in base_cells] == ten and first_cells[:10] == base_cells
    assert [c["method"] for c in wrn_cells[:10]] == ten
    assert {c["method"] for c in first_cells[10:]} == {c["method"] for c in wrn_cells[10:]}  # the same methods
    assert len(first_cells) == len(wrn_cells) + 4  # (c)'s four MKCD variants are its own
    by_name = {c["name"]: c["args"] for c in wrn_cells}
    assert by_name["reviewkd"]["feat_weight"] == 5.0 and by_name["dkd"]["distiller_kwargs"]["beta"] == 6.0
    assert wrn["student"]["model_name_or_path"] == "cifar_wrn_40_1" and wrn["data"]["image_size"] == 32
    cross, cross_cells = load("calib_pairs100_32_cross")
    assert [c["method"] for c in cross_cells[:10]] == ten
    assert [c["name"] for c in cross_cells[10:]] == [c["name"] for c in wrn_cells[10:]]
    by_name = {c["name"]: c["args"] for c in cross_cells}
    assert by_name["reviewkd"]["feat_weight"] == 1.0 and by_name["dkd"]["distiller_kwargs"]["beta"] == 6.0
    assert cross["training"]["learning_rate"] == 0.01 and "learning_rate" not in by_name["mlkd"]  # the light student's
    assert by_name["mlkd"]["num_train_epochs"] == 24  # MLKD's recipe: 480 epochs for this pair, scaled as 240 -> 12
    assert cross["teacher"]["model_name_or_path"] == "cifar_vgg13" and cross["data"]["max_train_samples"] == 5000


def test_speed_benchmark_writes_consistent_ratios_for_any_method_subset(tmp_path, monkeypatch):
    """scripts/benchmark_speed.py end to end on tiny models (no kd among the methods: the reference-loop line
    must not need it); the written ratios are the measured times over the floor measured in the same rounds."""
    import benchmark_speed

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    out = tmp_path / "speed.json"
    assert benchmark_speed.main(
        [
            "--teacher",
            "cifar_resnet20",
            "--student",
            "cifar_resnet20",
            "--batch",
            "4",
            "--image_size",
            "16",
            "--classes",
            "10",
            "--train_samples",
            "32",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--methods",
            "dkd",
            "at",
            "--e2e_samples",
            "0",
            "--output",
            str(out),
        ]
    ) in (0, None)
    r = json.loads(out.read_text())
    pm = r["per_method"]
    assert pm["floor_ms"] == pytest.approx(pm["teacher_forward_ms"] + pm["ce_step_ms"])
    assert set(pm["methods"]) == {"dkd", "at"}
    for row in pm["methods"].values():
        assert row["x_floor"] == pytest.approx(row["ms"] / pm["floor_ms"])
    # every method with a teacher is timed cached too, stage maps (AT) included, and set against the cached KD step
    assert pm["methods"]["dkd"]["cached_ms"] > 0 and pm["methods"]["at"]["cached_ms"] > 0
    assert all(row["cached_x_kd_cached"] is None for row in pm["methods"].values())  # no KD in this subset
    assert r["malloc_env"] == {"MALLOC_TRIM_THRESHOLD_": "1000000"} and r["command"].startswith(
        "MALLOC_TRIM_THRESHOLD_=1000000 python"
    )


@pytest.fixture(scope="module")
def imagenet_schema(tmp_path_factory):
    """A local copy of ILSVRC/imagenet-1k's schema: JPEG images of ImageNet-like sizes, a ClassLabel of 1,000
    names, train and validation splits; and a local timm ResNet34 in timm's Hub layout standing in for the
    teacher's Hub id (random weights)."""
    import timm
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    names = [f"n{i:08d}" for i in range(1000)]
    splits = {}
    for split, n in (("train", 8), ("validation", 4)):
        rows = []
        for i in range(n):
            w, h = (int(v) for v in rng.integers(180, 320, 2))
            path = root / f"{split}_{i}.JPEG"
            PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format="JPEG")
            rows.append({"image": {"path": str(path), "bytes": path.read_bytes()}, "label": int(rng.integers(1000))})
        splits[split] = Dataset.from_list(rows, features=Features({"image": Image(), "label": ClassLabel(names=names)}))
    DatasetDict(splits).save_to_disk(str(root / "imagenet-1k"))
    torch.manual_seed(0)
    save_for_hf(timm.create_model("resnet34", num_classes=1000), str(root / "resnet34.tv_in1k"))
    return root


@pytest.mark.parametrize("method", ["kd", "mkcd"])
def test_imagenet_recipes_start_on_a_local_copy_of_the_schema(imagenet_schema, tmp_path, method):
    """recipes/imagenet/resnet34_resnet18_*.yaml as committed, with only the Hub ids swapped for local copies and the
    length cut to one step on the CPU: photos go through the timm pipeline at 224, the teacher is read in timm's
    Hub layout, the student has 1,000 classes."""
    recipe = os.path.join(ROOT, "recipes", "imagenet", f"resnet34_resnet18_{method}.yaml")
    out = tmp_path / "run"
    results = distill.main(
        [
            recipe,
            "--dataset_name",
            str(imagenet_schema / "imagenet-1k"),
            "--teacher_model_name_or_path",
            str(imagenet_schema / "resnet34.tv_in1k"),
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--dataloader_num_workers",
            "0",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--skip_teacher_check",
            "true",
        ]
    )  # random weights stand in for torchvision's
    assert "eval_top1" in results
    config = json.loads((out / "config.json").read_text())
    if config.get("architecture"):  # a plain timm student (kd, dkd...): timm's layout, loaded without custom code
        assert len(config["label_names"]) == 1000 and config["pretrained_cfg"]["input_size"][-1] == 224
        assert config["pretrained_cfg"]["crop_mode"] == "center" and config["pretrained_cfg"]["crop_pct"] < 1  # photos
    else:
        assert len(config["id2label"]) == 1000 and config["image_size"] == 224
    assert json.loads((out / "distillation_info.json").read_text())["eval_set"] == "the 'validation' split, 4 images"


def test_the_imagenet_suite_lists_a_recipe_for_every_cell():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import benchmark_accuracy

    suite = yaml.safe_load(open(os.path.join(ROOT, "suites", "imagenet_standard.yaml")))
    cells = benchmark_accuracy.expand_cells(suite)
    assert len(cells) == 2 * 13
    for cell in cells:
        assert os.path.isfile(os.path.join(ROOT, cell["recipe"])), cell["recipe"]
    published = yaml.safe_load(open(os.path.join(ROOT, suite["published"])))
    assert set(published) == {c["pair"] for c in cells}


def test_a_suite_runs_cells_in_parallel_processes_and_records_throughput(tmp_path):
    """--parallel 2: two cells at once, each in its own process; the results are the same files as one at a time,
    and throughput.json records cells per hour for comparing settings."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import benchmark_accuracy

    suite = {
        "name": "parallel_fixture",
        "seeds": [0],
        "baseline": "none",
        "report": "validation",
        "data": {"dataset_name": "digits", "image_size": 8, "max_eval_samples": 32},
        "student": {"model_name_or_path": "cifar_resnet20", "max_train_samples": 32},
        "training": {
            "max_steps": 2,
            "per_device_train_batch_size": 16,
            "use_cpu": True,
            "eval_strategy": "no",
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
        },
        "cells": [{"method": "none", "name": "none"}, {"method": "none", "name": "none_lr", "learning_rate": 0.01}],
    }
    path = tmp_path / "parallel_fixture.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    assert (
        benchmark_accuracy.main(
            [str(path), "--results_dir", str(results), "--work_dir", str(tmp_path / "work"), "--parallel", "2"]
        )
        == 0
    )
    for cell in ("none", "none_lr"):
        record = json.loads((results / "parallel_fixture" / cell / "seed0.json").read_text())
        assert "eval_top1" in record["metrics"]
        assert record["flags"].get("learning_rate") == (0.01 if cell == "none_lr" else None)
    (run,) = json.loads((results / "parallel_fixture" / "throughput.json").read_text())
    assert run["parallel"] == 2 and run["cells"] == 2 and run["cells_per_hour"] > 0


def test_feature_match_measures_a_reused_head_student_on_its_runs_own_images(teacher_dir, tmp_path):
    """scripts/feature_match.py: the statistics against hand values, then a SimKD run end to end (the student's
    top-1 there must be the run's own final evaluation: same images, same preprocessing), and a refusal."""
    import feature_match

    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # two images, two values each: mean square 7.5, variance 1
    exact = feature_match.match_stats(t.clone(), t)
    assert (exact["relative_error"], exact["r2"]) == (0.0, 1.0)
    guess = feature_match.match_stats(t.mean(0, keepdim=True).expand_as(t), t)  # the constant guess
    assert guess["relative_error"] == pytest.approx(1 / 7.5) and guess["mean_guess_error"] == pytest.approx(1 / 7.5)
    assert guess["r2"] == pytest.approx(0.0, abs=1e-6)

    common = ["--model_name_or_path", "cifar_resnet20", "--teacher_model_name_or_path", str(teacher_dir), *TINY]
    distill.main(["--method", "simkd", "--output_dir", str(tmp_path / "simkd"), *common])
    out = tmp_path / "fm.json"
    assert feature_match.main([str(tmp_path / "simkd"), "--samples", "32", "--output_file", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    final = json.loads((tmp_path / "simkd" / "all_results.json").read_text())
    assert row["images"] == 32 and row["method"] == "simkd"
    assert row["student_top1"] == pytest.approx(100 * final["eval_top1"])
    assert row["student_map"] == [64, 4, 4] and row["teacher_map"] == [64, 4, 4]
    assert math.isfinite(row["r2"]) and row["relative_error"] > 0

    distill.main(["--method", "kd", "--output_dir", str(tmp_path / "kd"), *common])
    with pytest.raises(ValueError, match="reused-head methods"):
        feature_match.measure(str(tmp_path / "kd"), samples=8)


def test_rank_agreement_with_the_published_table_by_hand():
    """Spearman rho and Kendall tau over the methods both tables have (the teacher is not a method), per seed too;
    a suite below rho 0.5 says that its ranking does not predict CIFAR-100."""
    import benchmark_accuracy

    published = {"teacher": 75.0, "none": 69.0, "kd": 70.6, "fitnet": 69.2, "dkd": 72.0, "crd": 71.2}
    # ours: dkd > crd > kd > fitnet > none, the published order -> rho 1, tau 1
    exact = benchmark_accuracy.rank_agreement({"none": 1, "kd": 3, "fitnet": 2, "dkd": 5, "crd": 4}, published)
    assert exact["n"] == 5 and exact["spearman"] == pytest.approx(1.0) and exact["kendall"] == pytest.approx(1.0)
    # fitnet first, dkd last (the low-data proxy's picture); mkcd has no published number and does not count.
    # ranks ours (none 1, kd 3, fitnet 5, dkd 2, crd 4) vs published (1, 3, 2, 5, 4): d^2 = 0+0+9+9+0 = 18,
    # rho = 1 - 6*18 / (5*24) = 0.1; concordant pairs 5 of 10 (none with each, kd-crd), discordant 5 -> tau 0
    flipped = benchmark_accuracy.rank_agreement(
        {"none": 1, "kd": 3, "fitnet": 5, "dkd": 2, "crd": 4, "mkcd": 9}, published
    )
    assert flipped["methods"] == ["crd", "dkd", "fitnet", "kd", "none"]
    assert flipped["spearman"] == pytest.approx(0.1) and flipped["kendall"] == pytest.approx(0.0, abs=1e-12)
    assert benchmark_accuracy.rank_agreement({"none": 1, "kd": 2}, published) is None  # two methods: no ranking

    def row(method, per_seed, cell=None):
        return {
            "cell": cell or method,
            "method": method,
            "seeds": [0, 1],
            "test": {"mean": sum(per_seed) / 2, "per_seed": per_seed},
        }

    rows = [row("none", [1, 1]), row("kd", [3, 3]), row("fitnet", [5, 2]), row("dkd", [2, 5]), row("crd", [4, 4])]
    rows.append(row("dkd", [99, 99], cell="dkd_beta8"))  # an ablation variant is not the method's own cell
    suite = {"report": "test", "seeds": [0, 1], "published_pair": "p"}
    (found,) = benchmark_accuracy.agreement(suite, rows, {"p": published})
    # means: none 1, kd 3, fitnet 3.5, dkd 3.5, crd 4 -> ranks 1, 2, 3.5, 3.5, 5 against 1, 3, 2, 5, 4
    assert found["pair"] == "p" and found["n"] == 5
    assert found["spearman_per_seed"] == pytest.approx([0.1, 1.0])  # seed 0 the flipped order, seed 1 the exact one
    assert found["seed_to_seed"] == pytest.approx(0.1)  # the two seeds' rankings against each other: the same d^2 18
    lines = benchmark_accuracy.agreement_lines(
        {"report": "test", "agreement": [{**flipped, "pair": "p", "split": "test"}]}
    )
    assert "Spearman ρ = 0.10, Kendall τ = 0.00" in lines[0] and "does not predict CIFAR-100" in lines[0]
    lines = benchmark_accuracy.agreement_lines(
        {"report": "test", "agreement": [{**exact, "pair": "p", "split": "test"}]}
    )
    assert "ρ = 1.00" in lines[0] and "does not predict" not in lines[0]
    assert "not measured" in benchmark_accuracy.agreement_lines({"report": "test", "agreement": []})[0]
    # a suite that ran more methods than the calibration set also gives rho over that set (none, kd, crd: exact)
    (found,) = benchmark_accuracy.agreement(
        {**suite, "calibration_methods": ["none", "kd", "crd"]}, rows, {"p": published}
    )
    assert found["n"] == 5 and found["calibration_set"]["methods"] == ["crd", "kd", "none"]
    assert found["calibration_set"]["spearman"] == pytest.approx(1.0)
    assert (
        "Over the 3 methods every calibration candidate ran"
        in benchmark_accuracy.agreement_lines({"report": "test", "agreement": [found]})[0]
    )


def test_normalisation_statistics_from_the_command_line_and_a_recipe(tmp_path):
    """``--image_mean`` / ``--image_std`` were refused in every form ("invalid Sequence value"), although the
    pre-flight's advice names them: now one value per channel or one for all, from the command line or a recipe,
    and they reach the saved image processor."""
    import json

    out = tmp_path / "cli"
    train_teacher.main([*TINY, "--output_dir", str(out), "--image_mean", "0.3", "--image_std", "0.2"])
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.3] and processor["image_std"] == [0.2]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("image_mean: [0.25]\nimage_std: [0.5]\n")
    train_teacher.main([str(recipe), *TINY, "--output_dir", str(tmp_path / "recipe")])
    processor = json.loads((tmp_path / "recipe" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.25] and processor["image_std"] == [0.5]
    with pytest.raises(ValueError, match="give both --image_mean and --image_std"):
        train_teacher.main([*TINY, "--output_dir", str(tmp_path / "half"), "--image_mean", "0.3"])
    with pytest.raises(ValueError, match="--image_std has 3 values; the model takes 1 channel"):
        train_teacher.main(
            [*TINY, "--output_dir", str(tmp_path / "three"), "--image_mean", "0.3", "--image_std", "1", "1", "1"]
        )


def test_help_is_printed_without_importing_torch_once_cached(tmp_path):
    """The first --help builds the parser (torch is imported: seconds, half a minute under load) and caches its text;
    the next ones print the same text without importing torch, until hf_mkcd's sources change."""
    import subprocess
    import sys

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100"}
    script = os.path.join(ROOT, "scripts", "distill.py")
    first = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env, check=True)
    again = subprocess.run(
        [sys.executable, "-X", "importtime", script, "--help"], capture_output=True, text=True, env=env, check=True
    )
    assert again.stdout == first.stdout and "--student_pretrained" in first.stdout
    imported = {line.split("|")[-1].strip() for line in again.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "transformers" not in imported and "fast_help" in imported
    assert len(os.listdir(tmp_path / "hf_mkcd" / "help")) == 1
    env["COLUMNS"] = "80"  # another width: another text, built again
    subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, env=env, check=True)
    assert len(os.listdir(tmp_path / "hf_mkcd" / "help")) == 2
