"""Run scripts/distill.py, killing this process with SIGKILL at a chosen moment (the fault-injection test).

    HF_MKCD_KILL_AT=step:3 python tests/fault_worker.py <distill.py arguments>   # after the 3rd optimizer step
    HF_MKCD_KILL_AT=write:5 python tests/fault_worker.py ...                       # halfway through the 5th file write

A "write" is any model, optimizer, scheduler, RNG or trainer-state file a checkpoint or the final save writes:
half of its bytes reach the disk, then the process dies, as a power cut or an OOM kill would leave it.
"""

import io
import os
import signal
import sys

KILL_AT = os.environ.get("HF_MKCD_KILL_AT")


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install():
    if not KILL_AT:
        return
    event, n = KILL_AT.split(":")
    n, count = int(n), {"step": 0, "write": 0}

    def tick(kind):
        count[kind] += 1
        return kind == event and count[kind] == n

    def half_write(path, data: bytes):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        die()

    import safetensors.torch
    import torch
    import transformers.modeling_utils
    from transformers import TrainerCallback, TrainerState

    import hf_mkcd.trainer

    torch_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and tick("write"):
            buffer = io.BytesIO()
            torch_save(obj, buffer, *args, **kwargs)
            half_write(f, buffer.getvalue())
        return torch_save(obj, f, *args, **kwargs)

    torch.save = save
    safetensors_save = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if tick("write"):
            half_write(filename, safetensors.torch.save(tensors, metadata=metadata))
        return safetensors_save(tensors, filename, metadata=metadata)

    transformers.modeling_utils.safe_save_file = save_file
    hf_mkcd.trainer.save_file = save_file
    state_save = TrainerState.save_to_json

    def save_to_json(self, json_path):
        if tick("write"):
            half_write(json_path, b'{"global_step": ' + str(self.global_step).encode() + b', "log_hist')
        return state_save(self, json_path)

    TrainerState.save_to_json = save_to_json

    class KillAfterStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if tick("step"):
                die()

    init = hf_mkcd.trainer.DistillationTrainer.__init__

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(KillAfterStep())

    hf_mkcd.trainer.DistillationTrainer.__init__ = patched_init


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "scripts"))
    install()
    import distill

    distill.main(sys.argv[1:])
