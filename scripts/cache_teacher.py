"""Fill the teacher-output cache ahead of training: the teacher runs once per (epoch, training sample).

    python scripts/cache_teacher.py recipes/cifar100/resnet32x4_resnet8x4_kd.yaml --teacher_cache cache/res32x4
    accelerate launch scripts/distill.py recipes/cifar100/resnet32x4_resnet8x4_kd.yaml --teacher_cache cache/res32x4

Takes the same arguments as scripts/distill.py (a recipe and flags): the cache is keyed by the teacher,
the data pipeline and what the method reads, so build it with the run's own settings. Epochs already
cached are skipped; a cache killed half-way is completed. Distilling with ``--teacher_cache`` alone
builds the cache during the first run instead; this script pays off when several students, methods
or seeds will read it, or to keep the GPU free of teacher work. Caching does not pay for one short run.
"""

import os
import sys

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_mkcd.data import DataArguments
from hf_mkcd.run import ModelArguments, build, main_guard, parse_args, setup_logging
from hf_mkcd.trainer import DistillationTrainingArguments


def main(argv=None):
    model_args, data_args, args = parse_args((ModelArguments, DataArguments, DistillationTrainingArguments), argv)
    if not args.teacher_cache:
        raise SystemExit("give --teacher_cache DIR: where the cache is written")
    setup_logging(True)
    trainer, data = build(model_args, data_args, args)
    cache = trainer.teacher_cache
    if cache is None:
        raise SystemExit(f"method {args.method!r} reads nothing from a teacher: nothing to cache")
    distiller, transform = trainer.distiller, data.train.format["format_kwargs"]["transform"]
    epochs = int(-(-args.num_train_epochs // 1))
    loader = DataLoader(
        data.train, batch_size=args.per_device_train_batch_size, num_workers=args.dataloader_num_workers
    )
    for epoch in tqdm(range(epochs), desc="epochs"):
        transform.set_epoch(epoch)
        if cache.complete(epoch, distiller.teacher_needs, distiller.views):
            continue  # a partial epoch is completed: its written rows are read, the rest computed
        for batch in loader:
            views = {v: batch[f"pixel_values_{v}"].to(args.device) for v in distiller.views}
            trainer._teacher_outputs(
                {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}, views
            )
        cache.flush()
    print(
        f"teacher cache {os.path.abspath(args.teacher_cache)}: {epochs} epochs of {', '.join(distiller.teacher_needs)}"
        f" for {len(data.train)} samples; the teacher ran on {cache.misses} of them"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))  # a failure's last line is its cause and what to do
