"""Run under torchrun by test_ddp.py: 3 distillation steps, then check every rank holds the same student."""

import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_args, tiny_data, tiny_student, tiny_teacher  # noqa: E402

from hf_mkcd.trainer import DistillationTrainer  # noqa: E402


def main(output_dir, use_cpu, method="mkcd"):
    data = tiny_data()
    teacher = tiny_teacher()
    student = tiny_student(teacher, method, data)
    args = tiny_args(
        output_dir,
        method=method,
        max_steps=3,
        per_device_train_batch_size=8,
        use_cpu=use_cpu == "1",
        save_strategy="steps",
        save_steps=3,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data.train)
    trainer.train()
    # student weights and the method's state (CRD's memory bank: updated from every rank's samples); BN running
    # statistics (MKCD's mid-level projector has some) are each rank's own between DDP's buffer broadcasts, as the
    # student's are, so neither is compared
    bn_stats = ("running_mean", "running_var", "num_batches_tracked")
    state = [t for k, t in trainer.distiller.state_dict().items() if not k.endswith(bn_stats)]
    tensors = list(student.parameters()) + state
    checksum = sum(float(t.double().sum()) for t in tensors)
    sums = [None] * dist.get_world_size()
    dist.all_gather_object(sums, checksum)
    if dist.get_rank() == 0:
        assert len(set(sums)) == 1, sums
        print(f"DDP_OK world={dist.get_world_size()} wrapper={type(trainer.model_wrapped).__name__} sums={sums}")
    # a clean shutdown: a process group left to the interpreter's exit can abort in gloo's threads ("terminate
    # called without an active exception", seen once in a CI run after DDP_OK was printed)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
