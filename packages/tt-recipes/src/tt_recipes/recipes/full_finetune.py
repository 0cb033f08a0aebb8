"""Full-parameter fine-tuning of a decoder, on one device or on N processes (FSDP2).

Every parameter trains on the cross-entropy of the labelled tokens. The engine
(``tt_recipes.trainer``) holds the loop; under torchrun the model is sharded per block and the
loss is normalised over all ranks, so N processes x batch b train like 1 process x batch N*b.

    tt run full_finetune --config tiny/full
    tt run --nproc_per_node 2 full_finetune --config tiny/full batch_size=16
    tt run full_finetune --config llama3_2/1B_full checkpointer.checkpoint_dir=ckpts/Llama-3.2-1B
"""

from __future__ import annotations

from omegaconf import DictConfig

from tt_recipes import trainer
from tt_recipes.config import RecipeSpec

SPEC = RecipeSpec(
    name="full_finetune",
    description="Full-parameter supervised fine-tuning on 1..N processes; exact resume.",
    keys=trainer.TRAINING_KEYS,
)


def recipe_main(cfg: DictConfig) -> None:
    with trainer.distributed(cfg) as dist:
        run = trainer.setup(cfg, dist, objective=trainer.SFT)
        trainer.train(run)
