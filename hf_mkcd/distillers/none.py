"""``none``: the vanilla student (cross-entropy only, no teacher); also trains teachers."""

from .base import Distiller, register_distiller


@register_distiller("none")
class NoDistillation(Distiller):
    paper = 'no teacher (cross-entropy)'
    recipe_note = "cross-entropy only, no teacher"  # the reference setting (recipe comments)
    bibtex = ""
    teacher_needs = frozenset()
    defaults = {"ce_weight": 1.0}

    def forward(self, student, teacher, batch, step):
        return {"loss_ce": self.hparams["ce_weight"] * self.ce(student["logits"], batch["labels"])}
