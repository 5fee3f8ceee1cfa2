"""What ``scripts/distill.py`` and ``scripts/train_teacher.py`` run: parse, build, train, save.

Config precedence: dataclass defaults < a YAML/JSON file given as the first argument < command-line
flags; unknown keys are refused; the resolved config is written to ``<output_dir>/run_config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import yaml
from timm.models import get_pretrained_cfg_value
from transformers import HfArgumentParser, set_seed

from .data import DataArguments, prepare_datasets
from .distillers import get_distiller_class
from .loading import load_student_pretrained, load_teacher, pretrained_source_kind, pretrained_stats
from .models import MKCDStudentConfig, MKCDStudentForImageClassification
from .models.modeling_mkcd_student import STUDENT_MAPS
from .models.helpers import check_num_classes, check_timm_name, first_conv_in_channels, teacher_linear_head
from .hub import HubUnavailableError, hub_reachable, unreachable_reason
from .model_card import INFO_NAME, distillation_info
from .preflight import align_teacher_labels, check_teacher, parse_label_map
from .callbacks import check_finite_metrics
from .run_dir import RunDirectory, find_resumable_checkpoint, fsync_tree, run_fingerprint
from .teacher_cache import tensor_hash
from .trainer import DistillationTrainer, DistillationTrainingArguments

logger = logging.getLogger("hf_mkcd")
MODEL_CODE_FILES = sorted(  # what save_pretrained copies beside a student with a projector (remote code)
    n
    for n in os.listdir(os.path.dirname(os.path.abspath(__import__("hf_mkcd.models", fromlist=["x"]).__file__)))
    if n.endswith(".py") and n != "__init__.py"
)
TIMM_EXPORT_DIR = "timm"  # where runs before timm's layout became the main one exported a plain classifier


@dataclass
class ModelArguments:
    """The student (``model_name_or_path``: a timm / CIFAR-zoo architecture) and, for distillation, the teacher.

    The projector and head default to the method's own; the projector options left unset take the
    projector's defaults (``hf_mkcd.models.projectors.projector_options``), and one the projector does
    not take is refused.
    """

    model_name_or_path: str = field(
        default="cifar_resnet8x4",
        metadata={"help": "timm architecture of the student (e.g. cifar_resnet8x4, resnet18)."},
    )
    teacher_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Teacher: a saved directory, a timm / CIFAR-zoo name (with --teacher_checkpoint) or a Hub id."
        },
    )
    teacher_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "Teacher weights for a timm name: community .pth ('model'/'state_dict') or .safetensors."},
    )
    projector: Optional[str] = field(
        default=None,
        metadata={"help": "Student projector: mkcd, simkd, identity, srrl, or none (default: the method's)."},
    )
    head: Optional[str] = field(
        default=None,
        metadata={
            "help": "Student head: teacher (the teacher's frozen classifier) or student (default: the method's)."
        },
    )
    projector_factor: Optional[int] = field(
        default=None,
        metadata={"help": "mkcd/simkd projector width: m = C_teacher / factor (default: 4 for mkcd, 2 for simkd)."},
    )
    projector_latent_ratio: Optional[int] = field(
        default=None, metadata={"help": "mkcd projector latent: m / ratio channels (default 2)."}
    )
    projector_skip: Optional[bool] = field(
        default=None, metadata={"help": "mkcd projector: add a 1x1 conv shortcut (default false)."}
    )
    projector_residual: Optional[bool] = field(
        default=None,
        metadata={
            "help": "mkcd projector: the encoder-decoder corrects an identity shortcut (a 1x1 conv where channels "
            "differ), starting at zero."
        },
    )
    projector_resample: Optional[str] = field(
        default=None,
        metadata={
            "help": "mkcd projector, 2x size ratios: pool (the default: the larger map is pooled to the smaller, as "
            "for every other ratio) or learned (strided / transposed convs)."
        },
    )
    student_map: Optional[str] = field(
        default=None,
        metadata={
            "help": "Where the student's classifier pools a 1x1 expansion of its last block (zoo MobileNetV2, "
            "ShuffleNetV2), the map a projector onto the teacher's reads: last_block (SimKD's reference; the expansion "
            "is not built) or prepool. Default: last_block for mkcd and simkd, prepool for srrl (docs/methods.md)."
        },
    )
    student_pretrained: Optional[str] = field(
        default=None,
        metadata={
            "help": "Start the student from pretrained weights: true (timm's default for the architecture), a timm "
            "tag (resnet18.a1_in1k), a Hub id, or a local weights file / saved directory. The classifier is "
            "re-initialised for the dataset's classes, as timm's num_classes does (docs: README, own data)."
        },
    )
    teacher_label_map: Optional[str] = field(
        default=None,
        metadata={
            "help": "Pair the teacher's classes with the dataset's where their names differ: a JSON object (inline, "
            "or a file) from each dataset class name to the teacher's class name or output index. The pairing is "
            "measured before training, as any order is."
        },
    )
    vanilla_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "A finished run of the same student without a teacher (--method none, same data), shown beside "
            "the distilled student in its card, so the card says whether distilling paid."
        },
    )
    skip_teacher_check: bool = field(
        default=False,
        metadata={
            "help": "Train even if the teacher scores no better than guessing on held-out images before training "
            "(by default such a run stops, naming the causes found: class order, input size, normalisation, channels)."
        },
    )

    def __post_init__(self):
        # a recipe's value can be cleared from the command line: --teacher_checkpoint none
        for name in ("teacher_checkpoint", "student_pretrained"):
            value = getattr(self, name)
            if isinstance(value, str) and value.lower() in ("", "none", "false"):
                setattr(self, name, None)

    def projector_kwargs(self) -> dict:
        """The projector options set by the user (unset ones keep the projector's own defaults)."""
        given = {
            "factor": self.projector_factor,
            "latent_ratio": self.projector_latent_ratio,
            "skip": self.projector_skip,
            "residual": self.projector_residual,
            "resample": self.projector_resample,
        }
        return {k: v for k, v in given.items() if v is not None}


# failures a user can fix from the message alone: said in one line, without a traceback
USER_ERRORS = (ValueError, OSError, FloatingPointError, HubUnavailableError, ImportError)


def main_guard(main, argv=None) -> int:
    """Run a script's ``main``; a failure ends with its cause and what to do as the last printed line.

    The errors hf_mkcd raises for bad input (a missing path, a mismatch, an offline Hub id, a diverged run...) print
    only ``error: <message>``; anything else prints its traceback first (a bug: please report it). With
    ``HF_MKCD_TRACEBACK=1`` every error prints its traceback. Under ``accelerate launch`` only the main process
    prints it (every process meets the same error)."""
    import traceback

    try:
        result = main(argv)
        _close_process_group()
        return result if isinstance(result, int) else 0
    except KeyboardInterrupt:
        raise
    except Exception as err:
        if os.environ.get("RANK", "0") != "0":
            return 1
        if not isinstance(err, USER_ERRORS) or os.environ.get("HF_MKCD_TRACEBACK") == "1":
            traceback.print_exc()
        message = str(err).strip() or type(err).__name__
        if not isinstance(err, USER_ERRORS):
            message = f"{type(err).__name__}: {message} (unexpected: the traceback above says where; please report it)"
        sys.stderr.flush()
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 1


def _close_process_group() -> None:
    """End a multi-process run cleanly: a process group left to the interpreter's exit can abort in gloo's threads
    ("terminate called without an active exception"), turning a finished run into a failed exit code."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mapping_to_argv(mapping: dict) -> list:
    """``{"learning_rate": 0.1, "lr_decay_epochs": [5, 8]}`` -> ``["--learning_rate", "0.1", "--lr_decay_epochs", "5",
    "8"]``; None means unset, a mapping becomes JSON (``distiller_kwargs``)."""
    argv = []
    for key, value in mapping.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def build_parser(dataclass_types, description: Optional[str] = None) -> HfArgumentParser:
    """HfArgumentParser whose ``--help`` shows what a user sets first: the distillation settings, then the model and
    the data, then the rest of ``transformers.TrainingArguments`` (parsing is unchanged)."""
    prog = os.path.basename(sys.argv[0]) or "hf_mkcd"
    parser = HfArgumentParser(
        dataclass_types,
        allow_abbrev=False,
        description=description,  # a recipe key must
        formatter_class=argparse.RawDescriptionHelpFormatter,  # name a flag exactly
        usage=f"{prog} [RECIPE.yaml] [--flag value ...]   (flags override the recipe)",
    )
    from transformers import TrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    titles = []
    for dtype in dataclass_types:
        own = [f.name for f in dataclasses.fields(dtype)]
        if issubclass(dtype, TrainingArguments):
            added = [n for n in own if n not in inherited]
            titles.append((f"distillation ({dtype.__name__})", added))
            titles.append(
                (
                    "recipe defaults changed from transformers' (CIFAR-100 recipe)",
                    [n for n in own if n in inherited and n in vars(dtype).get("__annotations__", {})],
                )
            )
        else:
            titles.append((f"{dtype.__name__.replace('Arguments', '').lower()} ({dtype.__name__})", own))
    general = parser._optionals
    by_dest = {a.dest: a for a in general._group_actions}
    groups = []
    for title, names in titles:
        group = argparse._ArgumentGroup(parser, title)
        for name in names:
            for dest in (name, f"no_{name}"):
                action = by_dest.pop(dest, None)
                if action is not None:
                    group._group_actions.append(action)
                    general._group_actions.remove(action)
        groups.append(group)
    general.title = "transformers.TrainingArguments (every flag works)"
    groups.sort(key=lambda g: not g.title.startswith("distillation"))  # the method first, then model and data
    parser._action_groups = (
        [g for g in groups if g._group_actions]
        + [general]
        + [g for g in parser._action_groups if g is not general and g is not parser._positionals]
    )
    return parser


def parse_args(
    dataclass_types,
    argv: Optional[Sequence[str]] = None,
    description: Optional[str] = None,
    help_path: Optional[str] = None,
):
    """Defaults < YAML/JSON file (first argument) < CLI flags; unknown keys raise. ``help_path``: where ``--help``'s
    text is also written, for the scripts' torch-free ``--help`` (scripts/fast_help.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if help_path is not None and {"-h", "--help"} & set(argv):
        text = build_parser(dataclass_types, description).format_help()
        try:
            os.makedirs(os.path.dirname(help_path), exist_ok=True)
            with open(help_path + ".tmp", "w") as f:
                f.write(text)
            os.replace(help_path + ".tmp", help_path)
        except OSError:  # a read-only home: --help still works, only slower next time
            pass
        sys.stdout.write(text)
        raise SystemExit(0)
    file_args = []
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        recipe = argv.pop(0)
        try:
            with open(recipe) as f:
                config = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"the recipe {recipe!r} is not valid YAML: {' '.join(str(err).split())}") from err
        if not isinstance(config, dict):
            raise ValueError("a recipe file must hold a mapping of argument names to values")
        file_args = mapping_to_argv(config)
    parser = build_parser(dataclass_types, description)
    return parser.parse_args_into_dataclasses(args=file_args + argv, look_for_args_file=False)


def _save_config(output_dir: str, *configs) -> None:
    resolved = {}
    for cfg in configs:
        resolved.update(cfg.to_dict() if hasattr(cfg, "to_dict") else asdict(cfg))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "run_config.yaml"), "w") as f:
        yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), f, sort_keys=True)


def setup_logging(should_log: bool) -> None:
    """Our own handler on the ``hf_mkcd`` logger, nothing on the root logger: the libraries' lines are
    printed by their own handlers, once."""
    logger.setLevel(logging.INFO if should_log else logging.WARNING)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def build_student(
    model_args: ModelArguments, method, teacher, data, image_size: int
) -> MKCDStudentForImageClassification:
    """The student the method trains: its projector and head (or the ones asked for), built for the teacher."""
    projector = model_args.projector or method.projector
    projector = None if projector == "none" else projector
    head = model_args.head or method.head
    if teacher is None:
        if projector is not None or head != "student":
            raise ValueError(
                f"a student trained without a teacher has no projector and its own head; got projector="
                f"{projector!r}, head={head!r}"
            )
        return MKCDStudentForImageClassification(
            MKCDStudentConfig(
                backbone=model_args.model_name_or_path,
                id2label=data.id2label,
                num_channels=data.channels,
                image_size=image_size,
                image_mean=list(data.mean),
                image_std=list(data.std),
                crop_pct=data.crop_pct,
            )
        )
    kwargs = model_args.projector_kwargs()
    if kwargs and projector is None:
        raise ValueError(
            f"projector options {sorted(kwargs)} were given, but method {method.name!r} trains a student "
            "without a projector (see --projector)"
        )
    return MKCDStudentForImageClassification.from_teacher(
        teacher,
        model_args.model_name_or_path,
        projector=projector,
        head=head,
        projector_kwargs=kwargs if projector else None,
        id2label=data.id2label,
        image_size=image_size,
        image_mean=data.mean,
        image_std=data.std,
        teacher_name=model_args.teacher_model_name_or_path,
        student_map=model_args.student_map,
        crop_pct=data.crop_pct,
    )


def prepare_teacher_data(data_args: DataArguments, teacher, views=()):
    """The data as the teacher sees it (its channels, input size, normalisation and crop unless the flags say
    otherwise), which the student shares: ``(data, image_size)``."""
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    image_size = data_args.image_size or cfg.get("input_size", (3, 32, 32))[-1]
    data = prepare_datasets(
        data_args,
        first_conv_in_channels(teacher),
        image_size,
        cfg.get("mean"),
        cfg.get("std"),
        views=views,
        crop_pct=cfg.get("crop_pct"),
    )
    return data, image_size


def check_names(model_args: ModelArguments, training_args: DistillationTrainingArguments):
    """The method, the student's name and the student-map choice, from the arguments alone (before the dataset or
    the teacher is touched: those can take minutes). Returns the method."""
    method = get_distiller_class(training_args.method)
    check_timm_name(model_args.model_name_or_path)  # unknown names: close matches, before any loading
    if method.needs_teacher and model_args.teacher_model_name_or_path is None:
        raise ValueError(f"method {training_args.method!r} needs --teacher_model_name_or_path")
    if model_args.student_map not in (None, *STUDENT_MAPS):
        raise ValueError(f"--student_map {model_args.student_map!r}: choose one of {', '.join(STUDENT_MAPS)}")
    vanilla = model_args.vanilla_dir
    if vanilla is not None and not os.path.isfile(os.path.join(vanilla, "all_results.json")):
        raise FileNotFoundError(
            f"--vanilla_dir {model_args.vanilla_dir!r} is not a finished run (no all_results.json): train the "
            "baseline first (scripts/train_teacher.py with the student's flags, or scripts/distill.py --method none)"
        )
    parse_label_map(model_args.teacher_label_map)  # a JSON error, said before anything loads
    if model_args.student_pretrained is not None:  # a missing file or another architecture's tag, said now
        pretrained_source_kind(model_args.student_pretrained, model_args.model_name_or_path)
    return method


def check_output_dir_before_loading(
    model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments
) -> None:
    """Whether the output directory holds another run, on every setting but the teacher's weights (compared by
    the full check once the teacher is loaded), before anything expensive runs."""
    RunDirectory(
        training_args.output_dir, run_fingerprint(model_args, data_args, training_args, None), is_main=False
    ).decide(
        training_args.overwrite_output_dir,
        training_args.resume_from_checkpoint,
        training_args.allow_changes,
        unknown=("teacher_sha256",),
    )


def build(model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments):
    """Teacher, data, student and trainer, validated against each other: ``(trainer, data)``."""
    method = check_names(model_args, training_args)
    teacher = None
    if method.needs_teacher:
        teacher = load_teacher(model_args.teacher_model_name_or_path, checkpoint=model_args.teacher_checkpoint)
        data, image_size = prepare_teacher_data(data_args, teacher, views=method.views)
        check_num_classes(
            (
                "Use a teacher trained on this dataset's label set (or the dataset it was trained on)."
                + "".join(f"\n  - {line}" for line in data.missing_classes)
            ),
            **{
                f"teacher {model_args.teacher_model_name_or_path!r}": teacher_linear_head(teacher).out_features,
                f"dataset {data_args.dataset_name!r}": len(data.id2label),
            },
        )
        teacher_check = None
        label_map = parse_label_map(model_args.teacher_label_map)
        if not model_args.skip_teacher_check:  # meaning, not only shapes: class order and accuracy before training
            teacher.to(training_args.device)
            teacher_check = check_teacher(
                teacher, data, image_size, model_args.teacher_model_name_or_path, label_map=label_map
            )
            logger.info(teacher_check.summary())
            if teacher_check.verdict == "as expected":  # otherwise the loud warning named them already
                for finding in teacher_check.findings:
                    if not finding.startswith("class order"):  # the score shows the order is right
                        logger.warning(f"teacher check: {finding}")
        else:
            if label_map is not None:
                align_teacher_labels(teacher, data.id2label, label_map)
            logger.warning("--skip_teacher_check: the teacher's class order and accuracy on this data are not checked")
    else:
        input_size = get_pretrained_cfg_value(model_args.model_name_or_path, "input_size") or (3, 224, 224)
        image_size = data_args.image_size or input_size[-1]
        crop_pct = get_pretrained_cfg_value(model_args.model_name_or_path, "crop_pct")
        stats = (None, None)
        if model_args.student_pretrained is not None:  # normalised as the weights were trained
            stats = pretrained_stats(model_args.student_pretrained, model_args.model_name_or_path) or stats
        data = prepare_datasets(data_args, None, image_size, *stats, views=method.views, crop_pct=crop_pct)
    student = build_student(model_args, method, teacher, data, image_size)
    if model_args.student_pretrained is not None:
        student.pretrained_from = load_student_pretrained(
            student.backbone, model_args.student_pretrained, model_args.model_name_or_path
        )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=student.image_processor(),
    )
    if method.needs_teacher:
        trainer.teacher_check = teacher_check
    trainer.plan_notes.insert(0, f"data: {data.pipeline}")  # the pipeline and why, with the plan
    return trainer, data


def write_card(output_dir: str, repo_id: Optional[str] = None, vanilla_dir: Optional[str] = None) -> None:
    """The model card (``README.md`` + training curves) of a finished run, as transformers' example scripts write
    one at the end of every run, pushed or not; the push re-renders it. A card that cannot be written is said, and
    costs the run nothing."""
    from .model_card import write_student_card

    try:
        path = write_student_card(output_dir, repo_id, vanilla_dir)
        logger.info(f"model card: {path}")
    except Exception as err:  # the weights and results are saved; a card can be made later (push_to_hub.py --card_only)
        logger.warning(
            f"the model card could not be written ({type(err).__name__}: {err}); "
            f"scripts/push_to_hub.py {output_dir} --card_only writes it later"
        )


def saved_natively(student) -> bool:
    """Whether a student is saved in timm's Hub layout, which transformers loads without custom code: a plain
    classifier (no projector, its own head) of an architecture timm itself defines. A projector, a reused teacher head
    or a CIFAR-zoo backbone (registered in timm by hf_mkcd) needs hf_mkcd's model type and code."""
    return student.projector is None and student.classifier is None and not student.config.backbone.startswith("cifar_")


def save_final(trainer: DistillationTrainer, output_dir: str, info: dict) -> None:
    """The final model, written next to the run's other files through a temporary directory: each file replaces
    its predecessor whole (``run_state.json`` says ``finished`` only after all of them)."""
    if not trainer.args.should_save:
        return
    tmp = os.path.join(output_dir, ".final-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student = trainer.student
    if saved_natively(student):
        # a plain classifier (a teacher, a vanilla baseline, a KD student) of a timm architecture: timm's Hub layout
        # only, which timm, transformers (TimmWrapperForImageClassification, pipeline) and hf_mkcd's teacher loader
        # read natively, without custom code
        student.export_timm(tmp)
        for stale in ("preprocessor_config.json", TIMM_EXPORT_DIR):  # left by a run saved in the older layout
            path = os.path.join(output_dir, stale)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.isfile(path):
                os.remove(path)
        for name in MODEL_CODE_FILES:  # the custom model code a plain classifier does not need
            if os.path.isfile(os.path.join(output_dir, name)):
                os.remove(os.path.join(output_dir, name))
    else:  # a projector or the teacher's head, or a CIFAR-zoo backbone: hf_mkcd's model type, its code beside it
        trainer.save_model(tmp, _internal_call=True)  # the push, if asked for, comes once the run is finished
    with open(os.path.join(tmp, INFO_NAME), "w") as f:
        json.dump(info, f, indent=2, default=str)
    fsync_tree(tmp)
    for name in os.listdir(tmp):
        target = os.path.join(output_dir, name)
        if os.path.isdir(os.path.join(tmp, name)):
            shutil.rmtree(target, ignore_errors=True)
        os.replace(os.path.join(tmp, name), target)
    shutil.rmtree(tmp, ignore_errors=True)


def prune_checkpoints(output_dir: str) -> None:
    """A finished run's checkpoint-* directories: deleted (the final model is saved beside them; --keep_checkpoints
    keeps them)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    removed = [n for n in os.listdir(output_dir) if n.startswith(PREFIX_CHECKPOINT_DIR + "-")]
    for name in removed:
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    if removed:
        logger.info(f"deleted {len(removed)} checkpoint(s) of the finished run (--keep_checkpoints keeps them)")


def run(model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments) -> dict:
    """Build, check the output directory, train, evaluate, save: what scripts/distill.py and train_teacher.py run."""
    setup_logging(training_args.should_log)
    set_seed(training_args.seed)
    check_output_dir_before_loading(model_args, data_args, training_args)
    trainer, data = build(model_args, data_args, training_args)  # names are checked first thing there
    output_dir = training_args.output_dir
    teacher_hash = tensor_hash(trainer.teacher.state_dict()) if trainer.teacher is not None else None
    run_dir = RunDirectory(
        output_dir,
        run_fingerprint(model_args, data_args, training_args, teacher_hash),
        is_main=training_args.should_save,
    )
    decision = run_dir.decide(
        training_args.overwrite_output_dir, training_args.resume_from_checkpoint, training_args.allow_changes
    )  # every process decides before anything is written
    trainer.accelerator.wait_for_everyone()
    run_dir.lock()
    if training_args.push_to_hub and training_args.should_save and not hub_reachable():
        logger.warning(
            f"--push_to_hub: the Hub cannot be reached now ({unreachable_reason()}); the run trains and saves "
            "locally, and the push at the end will fail unless the Hub is back (scripts/push_to_hub.py later)"
        )
    try:
        if decision == "finished":
            logger.info(f"{output_dir} holds this run, finished: nothing to do (--overwrite_output_dir to redo it)")
            with open(os.path.join(output_dir, "all_results.json")) as f:
                return json.load(f)
        if decision == "overwrite":
            logger.warning(f"--overwrite_output_dir: replacing the contents of {output_dir}")
            run_dir.clear()
        if training_args.should_save:
            _save_config(output_dir, model_args, data_args, training_args)
        run_dir.write_state("running")
        results = {}
        if training_args.do_train:
            checkpoint = training_args.resume_from_checkpoint
            if checkpoint is None and decision == "resume":
                checkpoint = find_resumable_checkpoint(output_dir, training_args.save_only_model)
                if checkpoint is not None:
                    logger.info(f"resuming from {checkpoint} (the same run: its fingerprint matches)")
            train_result = trainer.train(resume_from_checkpoint=checkpoint)
            results.update(train_result.metrics, train_samples=len(data.train))
        evaluation = {**trainer.evaluate(), "eval_samples": len(data.eval)}
        check_finite_metrics(evaluation)
        if data.test is not None:  # reported only: nothing above read it
            evaluation.update(trainer.evaluate(data.test, metric_key_prefix="test"), test_samples=len(data.test))
            check_finite_metrics(evaluation)
        if training_args.do_train:
            save_final(trainer, output_dir, distillation_info(trainer, model_args, data_args, data))
            trainer.log_metrics("train", {k: v for k, v in results.items() if k.startswith("train")})
            trainer.save_metrics("train", results)
            trainer.save_state()
        results.update(evaluation)
        trainer.log_metrics("eval", evaluation)
        trainer.save_metrics("eval", evaluation)
        if training_args.do_train and training_args.should_save:
            write_card(output_dir, training_args.hub_model_id, model_args.vanilla_dir)
        run_dir.write_state("finished", results=results)
        if training_args.should_save and not training_args.keep_checkpoints:
            prune_checkpoints(output_dir)
    except BaseException as err:
        run_dir.write_state("failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        run_dir.unlock()
    if training_args.push_to_hub and training_args.do_train:  # only a finished run is pushed
        url = trainer.push_to_hub()
        if url:
            logger.info(f"pushed {output_dir} to {url}")
    return results
