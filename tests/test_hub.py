"""Publishing: model cards from the run's files, pushes to a loopback stand-in of the Hub, loads back by id.

The stand-in (tests/hub_standin.py) proves the *upload and download contract* of huggingface_hub against real
HTTP: which requests are sent, which files a push commits, that a pushed model loads back by id. It is not the
Hub: authentication, private repositories, Xet/LFS storage and server-side validation are not exercised.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from huggingface_hub import ModelCard

from hub_standin import HubStandIn

ROOT = os.path.dirname(os.path.dirname(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import distill  # noqa: E402
import train_teacher  # noqa: E402

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
    "--per_device_train_batch_size",
    "16",
    "--use_cpu",
    "true",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "1",
    "--model_name_or_path",
    "cifar_resnet20",
    "--save_strategy",
    "no",
]


def online_env(hub, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_TOKEN="hf_standin",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "scripts")]),
    )
    return env


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train_teacher.main([*TINY, "--output_dir", str(out), "--max_steps", "3", "--eval_strategy", "no"])
    return str(out)


@pytest.fixture(scope="module")
def student_run(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    distill.main(
        [
            "--teacher_model_name_or_path",
            teacher,
            "--method",
            "mkcd",
            "--output_dir",
            str(out),
            *TINY,
            "--num_train_epochs",
            "2",
            "--eval_strategy",
            "epoch",
        ]
    )
    return str(out)


def test_the_card_is_made_of_the_runs_own_numbers(student_run):
    from huggingface_hub.repocard_data import model_index_to_eval_results

    from hf_mkcd.model_card import write_student_card

    path = write_student_card(student_run, "me/tiny-mkcd")
    card = ModelCard.load(path)
    results = json.load(open(os.path.join(student_run, "all_results.json")))
    info = json.load(open(os.path.join(student_run, "distillation_info.json")))
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert {"knowledge-distillation", "mkcd", "hf_mkcd", "timm"} <= set(data.tags)
    name, parsed = model_index_to_eval_results(data.to_dict()["model-index"])  # the Hub's own parser
    by_type = {r.metric_type: r.metric_value for r in parsed}
    assert name == "me/tiny-mkcd" and by_type == {
        "accuracy": round(results["eval_top1"], 6),
        "top_5_accuracy": round(results["eval_top5"], 6),
    }
    text = card.text
    assert f"| {100 * results['eval_top1']:.2f} | {100 * results['eval_top5']:.2f} |" in text
    assert f"{info['student']['params']:,}" in text and f"{info['projector']['params']:,}" in text
    assert "![Loss terms, temperature and evaluation top-1 over training](training_curves.png)" in text
    assert os.path.getsize(os.path.join(student_run, "training_curves.png")) > 5000
    assert open(os.path.join(student_run, "run_config.yaml")).read().strip() in text  # the exact recipe
    assert "@article{mkcd2025" in text and 'pipeline("image-classification", model="me/tiny-mkcd"' in text
    # a local teacher is named by its architecture, not by a path that means nothing on the Hub
    local = f"cifar_resnet20 (trained locally: {os.path.basename(os.path.normpath(info['teacher']['name']))}/)"
    assert info["teacher"]["architecture"] == "cifar_resnet20" and f"`{local}`" in text
    assert info["teacher"]["name"] not in text.replace(
        open(os.path.join(student_run, "run_config.yaml")).read().strip(), ""
    )
    # Trainer's own card hook writes this card, not transformers' stock one
    from hf_mkcd.trainer import DistillationTrainer

    DistillationTrainer.create_model_card(
        type(
            "T",
            (),
            {
                "args": type("A", (), {"output_dir": student_run, "hub_model_id": "me/x"})(),
                "is_world_process_zero": lambda self: True,
            },
        )()
    )
    assert ModelCard.load(path).data.model_name == "me/x"


def test_push_through_the_script_and_load_back_by_id(teacher, tmp_path):
    """scripts/distill.py --push_to_hub pushes once, at the end; from_pretrained and pipeline by id, from the same
    endpoint and without hf_mkcd imported, give the local model's logits."""
    out = tmp_path / "pushed"
    with HubStandIn() as hub:
        env = online_env(hub, tmp_path)
        run = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "scripts", "distill.py"),
                "--teacher_model_name_or_path",
                teacher,
                "--method",
                "kd",
                "--output_dir",
                str(out),
                *TINY,
                "--max_steps",
                "3",
                "--eval_strategy",
                "no",
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "me/tiny-kd",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        creates = [r for r in hub.requests if r == ("POST", "/api/repos/create")]
        commits = [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]]
        assert (
            len(creates) == 1 and len(commits) == 1
        )  # one push, at the end (none from Trainer.__init__ or checkpoints)
        files = set(hub.repos["me/tiny-kd"]["files"])
        assert {
            "README.md",
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "run_config.yaml",
            "all_results.json",
            "training_curves.png",
            "distillation_info.json",
            "modeling_mkcd_student.py",
            "configuration_mkcd_student.py",
            "helpers.py",
            "projectors.py",
        } <= files
        assert not {f for f in files if f.startswith("checkpoint-") or f in ("training_args.bin", "run_state.json")}
        check = r'''
import sys, json, torch
assert "hf_mkcd" not in sys.modules
from transformers import AutoModelForImageClassification, pipeline
from PIL import Image
model = AutoModelForImageClassification.from_pretrained("me/tiny-kd", trust_remote_code=True).eval()
torch.manual_seed(0)
x = torch.randn(2, 1, 16, 16)
with torch.no_grad():
    logits = model(pixel_values=x).logits
pipe = pipeline("image-classification", model="me/tiny-kd", trust_remote_code=True)
print(json.dumps({"logits": logits.tolist(), "pipeline": pipe(Image.new("L", (16, 16), 128))[0]["label"]}))
'''
        env["PYTHONPATH"] = ""  # hf_mkcd must not be importable: the model's code comes from the repository
        loaded = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path)
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
    remote = json.loads(loaded.stdout.strip().splitlines()[-1])
    from transformers import AutoModelForImageClassification, pipeline
    from PIL import Image

    local = AutoModelForImageClassification.from_pretrained(out).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(remote["logits"]), local(pixel_values=x).logits, rtol=0, atol=0)
    assert (
        remote["pipeline"]
        == pipeline("image-classification", model=str(out))(Image.new("L", (16, 16), 128))[0]["label"]
    )


def test_offline_push_fails_fast_in_one_line_and_keeps_the_outputs(student_run, tmp_path):
    from hf_mkcd.hub import push_run
    from hf_mkcd.hub import HubUnavailableError

    import socket

    before = {f: os.path.getsize(os.path.join(student_run, f)) for f in ("model.safetensors", "all_results.json")}
    attempts = []  # fast means: not one connection tried (no retries to wait out), whatever the machine's load
    real_connect = socket.socket.connect

    def counting_connect(sock, address):
        attempts.append(address)
        return real_connect(sock, address)

    socket.socket.connect = counting_connect
    try:
        with pytest.raises(
            HubUnavailableError, match="cannot push .* cannot be reached \\(offline mode is on .*scripts/push_to_hub.py"
        ):
            push_run(student_run, "me/offline")
    finally:
        socket.socket.connect = real_connect
    assert attempts == []
    assert {f: os.path.getsize(os.path.join(student_run, f)) for f in before} == before
    assert json.load(open(os.path.join(student_run, "run_state.json")))["status"] == "finished"
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "push_to_hub.py"), student_run, "--hub_model_id", "me/offline"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        run.returncode == 2
        and len(run.stderr.strip().splitlines()) == 1
        and run.stderr.startswith("error: cannot push")
    )


@pytest.fixture(scope="module")
def community_archive(tmp_path_factory):
    """The released archive's layout: <name>_vanilla/ckpt_epoch_240.pth holding {"model": state_dict, ...}."""
    import timm

    root = tmp_path_factory.mktemp("cifar_teachers")
    os.makedirs(root / "resnet56_vanilla")
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet56", num_classes=100)
    torch.save(
        {"epoch": 240, "model": model.state_dict(), "accuracy": 72.34}, root / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    )
    return root


def test_converted_community_teacher_loads_by_id(community_archive, tmp_path):
    import convert_teachers
    from cifar100_schema import write_cifar100_parquet

    fixture = write_cifar100_parquet(tmp_path)
    out = tmp_path / "hub_teachers"
    assert (
        convert_teachers.main([str(community_archive), "--output_dir", str(out), "--eval_dataset", str(fixture)]) == 0
    )
    repo_dir = out / "cifar100-resnet56"
    card = ModelCard.load(repo_dir / "README.md")
    accuracy = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert "Measured by this conversion" in card.text and "72.34" not in card.text  # measured, never copied
    assert f"**top-1 {100 * accuracy['accuracy']:.2f} %**" in card.text
    from hf_mkcd import load_teacher

    local = load_teacher(str(repo_dir))
    with HubStandIn() as hub:
        env = online_env(hub, tmp_path)
        push = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "scripts", "convert_teachers.py"),
                str(community_archive),
                "--output_dir",
                str(tmp_path / "again"),
                "--push_to",
                "org",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert push.returncode == 0, push.stderr[-3000:]
        check = r'''
import json, torch, timm, hf_mkcd
torch.manual_seed(0)
x = torch.randn(2, 3, 32, 32)
teacher = hf_mkcd.load_teacher("org/cifar100-resnet56")
plain = timm.create_model("hf_hub:org/cifar100-resnet56", pretrained=True).eval()
with torch.no_grad():
    print(json.dumps({"load_teacher": teacher(x).tolist(), "timm": plain(x).tolist(), "frozen": not teacher.training}))
'''
        loaded = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = local(x)
    torch.testing.assert_close(torch.tensor(got["load_teacher"]), want, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(got["timm"]), want, rtol=0, atol=0)
    assert got["frozen"]


def test_download_half_against_olah(community_archive, tmp_path):
    """A real third-party server of the Hub's download API (olah, serving a git repository of a converted teacher,
    offline): load_teacher and timm's hf_hub: loader fetch it by id. .ci/run installs olah in its own environment
    (it pins another huggingface_hub) and sets OLAH_CLI."""
    import shutil
    import socket
    import urllib.request

    olah = os.environ.get("OLAH_CLI")
    if not olah or not shutil.which(olah):
        pytest.skip("olah is not installed here (.ci/run installs it and sets OLAH_CLI)")
    import convert_teachers

    convert_teachers.main([str(community_archive), "--output_dir", str(tmp_path / "converted")])
    mirror = tmp_path / "mirrors" / "models" / "org" / "cifar100-resnet56"
    shutil.copytree(tmp_path / "converted" / "cifar100-resnet56", mirror)
    git = ["git", "-C", str(mirror), "-c", "user.email=ci@localhost", "-c", "user.name=ci"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "converted teacher"]):
        subprocess.run(git + args, check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{tmp_path / "repos"}"\n'
        f'mirrors-path = ["{tmp_path / "mirrors"}"]\n[accessibility]\noffline = true\n'
    )
    server = subprocess.Popen(
        [olah, "-c", str(tmp_path / "olah.toml")], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(60):  # ready in about a second
            try:
                urllib.request.urlopen(f"{url}/api/models/org/cifar100-resnet56/revision/main", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        check = r'''
import json, torch, timm, hf_mkcd
torch.manual_seed(0)
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    print(json.dumps({"load_teacher": hf_mkcd.load_teacher("org/cifar100-resnet56")(x).tolist(),
                      "timm": timm.create_model("hf_hub:org/cifar100-resnet56", pretrained=True).eval()(x).tolist()}))
'''
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
        loaded = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
        assert loaded.returncode == 0, loaded.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
    from hf_mkcd import load_teacher

    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = load_teacher(str(tmp_path / "converted" / "cifar100-resnet56"))(x)
    torch.testing.assert_close(torch.tensor(got["load_teacher"]), want, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(got["timm"]), want, rtol=0, atol=0)
