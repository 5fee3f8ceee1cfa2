"""``crd``: Tian et al., "Contrastive Representation Distillation" (ICLR 2020), as RepDistiller ``crd/``.

Pooled features -> linear embeddings (d -> 128) -> L2-normalised; each anchor is scored against a
memory bank of the other model's embeddings: h = exp(<g, v>/0.07) / Z (Z estimated once as mean * N),
with the positive (the same sample index) and K = 16,384 negatives; NCE with noise P_n = 1/N:
    L_crd = -(1/B) sum[ log(h+ / (h+ + K P_n)) + sum_K log(K P_n / (h- + K P_n)) ],  student and teacher anchors
    L = CE + 0.8 * L_crd  (+ KD with kd_weight > 0: "CRD+KD")
Memories are updated with momentum 0.5 at the positive indices (gathered across processes) and are saved
in every checkpoint (``distiller.safetensors``). Differs from RepDistiller on purpose: negatives are drawn
uniformly from all training samples on the device, not from other classes by the data loader (with 100
classes, 1% of them share the anchor's class).
"""

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .base import Distiller, register_distiller
from .losses import kd_loss


def nce_loss(scores: torch.Tensor, num_data: int, eps: float = 1e-7) -> torch.Tensor:
    """scores: (B, K+1), column 0 the positive."""
    k = scores.shape[1] - 1
    noise = k / num_data
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` over processes (batches may differ in size on the last step)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    chunks = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return torch.cat([c[: int(s.item())] for c, s in zip(chunks, sizes)])


@register_distiller("crd")
class CRD(Distiller):
    paper = 'Tian et al., ICLR 2020'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 1 + 0.8 x NCE, 16,384 negatives (RepDistiller -a 0 -b 0.8)"
    )
    bibtex = (
        '@inproceedings{tian2020contrastive,\n'
        '  title={Contrastive Representation Distillation},\n'
        '  author={Tian, Yonglong and Krishnan, Dilip and Isola, Phillip},\n'
        '  booktitle={ICLR},\n'
        '  year={2020}\n'
        '}'
    )
    student_needs = frozenset({"logits", "pooled"})
    teacher_needs = frozenset({"pooled", "logits"})
    batch_needs = frozenset({"index"})
    needs_pair = True
    uses_temperature = True
    defaults = {
        "ce_weight": 1.0,
        "feat_weight": 0.8,
        "kd_weight": 0.0,
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_momentum": 0.5,
    }

    def __init__(self, pair=None, temperature=None, **hparams):
        super().__init__(pair, temperature, **hparams)
        n = pair.num_train_samples
        if not n:
            raise ValueError(
                "crd needs the training-set size (its memory bank has one entry per training image): build it with "
                "the training set (DistillationTrainer does)"
            )
        if n < 2:
            raise ValueError(
                f"crd contrasts each training image with others drawn from the training set, which holds {n} image: "
                "give it at least 2 (CRD's reference draws 16,384 per image), or use another method"
            )
        dim = int(self.hparams["feat_dim"])
        self.n, self.k = int(n), int(min(self.hparams["nce_k"], n - 1))
        self.embed_s = nn.Linear(pair.student_shapes["pooled"][0], dim)
        self.embed_t = nn.Linear(pair.teacher_shapes["pooled"][0], dim)
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(self.n, dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(self.n, dim) * 2 * stdv - stdv)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def _scores(self, anchor, memory, idx):
        """exp(<anchor, memory[idx]> / tau), shape (B, K+1). With a bank that is small next to B x (K+1) rows
        (CIFAR: 50,000 vs 64 x 16,385), one matmul with the whole bank and a gather of scalars gives the same
        numbers without copying B x (K+1) x D bank rows (537 MB a step at batch 64)."""
        memory = memory.detach()
        if memory.shape[0] * 4 <= idx.numel():
            # a copy: the backward pass needs the bank as it was, and the momentum update below changes it in place
            dots = (anchor @ memory.clone().t()).gather(1, idx)
        else:
            dots = torch.bmm(memory[idx], anchor.unsqueeze(2)).squeeze(2)
        return torch.exp(dots / self.hparams["nce_t"])

    def _normalizer(self, z: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ready = self.__dict__.setdefault("_z_ready", [])  # plain references to the buffers read, not buffers
        if not any(r is z for r in ready):  # one host read per buffer (and after a move or a resume), not per step
            if z.item() < 0:  # estimated once, from the first batch (averaged over processes)
                value = scores.detach().mean() * self.n
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(value)
                    value /= dist.get_world_size()
                z.fill_(value.item())
            ready.append(z)
        return z

    def setting_problems(self, num_classes, num_train_samples):
        wanted = int(self.hparams["nce_k"])
        if wanted <= self.k:
            return []
        return [
            f"crd draws {wanted:,} negatives per anchor in the reference, more than this training set's "
            f"{self.n:,} samples allow: {self.k:,} are drawn, each sample about {self.k / self.n:.1f} times per "
            "anchor, so the NCE contrast is weaker than the method was tuned for"
        ]

    def forward(self, student, teacher, batch, step):
        h, labels = self.hparams, batch["labels"]
        index = batch["index"].long()
        v_s = F.normalize(self.embed_s(student["pooled"].float()))
        v_t = F.normalize(self.embed_t(teacher["pooled"].float()))
        negatives = torch.randint(0, self.n, (len(index), self.k), device=index.device)
        idx = torch.cat([index[:, None], negatives], 1)
        out_s = self._scores(v_s, self.memory_t, idx)  # student anchor vs teacher memory
        out_t = self._scores(v_t, self.memory_s, idx)  # teacher anchor vs student memory
        out_s = out_s / self._normalizer(self.z_t, out_s)
        out_t = out_t / self._normalizer(self.z_s, out_t)
        terms = {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], labels),
            "loss_crd": h["feat_weight"] * (nce_loss(out_s, self.n) + nce_loss(out_t, self.n)),
        }
        if h["kd_weight"]:
            terms["loss_kd"] = h["kd_weight"] * kd_loss(student["logits"], teacher["logits"], step.temperature)
        if self.training:
            with torch.no_grad():
                m = h["nce_momentum"]
                all_idx, all_s, all_t = _gather(index), _gather(v_s.detach()), _gather(v_t.detach())
                self.memory_s[all_idx] = F.normalize(self.memory_s[all_idx] * m + all_s * (1 - m))
                self.memory_t[all_idx] = F.normalize(self.memory_t[all_idx] * m + all_t * (1 - m))
        return terms
