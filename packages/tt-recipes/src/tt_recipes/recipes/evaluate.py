"""Evaluate a checkpoint with EleutherAI's lm-evaluation-harness (needs ``tt-recipes[eval]``).

Any lm-eval task (``hellaswag``, ``mmlu``, ``gsm8k``, ...) or your own task YAML files
(``include_path``) run on the model through ``tt_recipes.evaluation.TTLM``, which scores like
lm-eval's transformers backend. Prints lm-eval's table and writes the results as JSON.

    tt run evaluate --config tiny/eval
    tt run evaluate --config tiny/eval checkpoint_dir=outputs/tiny_lora limit=50
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import tt_dist
from omegaconf import DictConfig

from tt_recipes import console, training
from tt_recipes.config import DEVICE_KEY, DTYPES, LOG_LEVEL_KEY, ConfigKey, RecipeSpec, instantiate
from tt_recipes.config._errors import did_you_mean
from tt_recipes.pretrained import from_pretrained

log = logging.getLogger("tt")

SPEC = RecipeSpec(
    name="evaluate",
    description="Evaluate a checkpoint on lm-eval tasks (EleutherAI's harness).",
    keys={
        "checkpoint_dir": ConfigKey(str, required=True, doc="HF model dir or a tt run's output"),
        "tokenizer": ConfigKey(component=True, required=True),
        "tasks": ConfigKey(list, required=True, doc="lm-eval task or group names"),
        "include_path": ConfigKey(str | None, default=None, doc="a directory of task YAMLs"),
        "include_defaults": ConfigKey(
            bool, default=True, doc="also index lm-eval's ~15k built-in tasks (~5 s)"
        ),
        "num_fewshot": ConfigKey(int | None, default=None, doc="the task's own default if null"),
        "limit": ConfigKey(
            int | float | None, default=None, doc="documents per task (a fraction if < 1)"
        ),
        "apply_chat_template": ConfigKey(
            bool, default=False, doc="format prompts with the tokenizer's chat template"
        ),
        "batch_size": ConfigKey(int, default=8, min=1),
        "max_seq_len": ConfigKey(int | None, default=None, doc="defaults to the tokenizer's"),
        "max_new_tokens": ConfigKey(
            int, default=256, min=1, doc="when a task sets no max_gen_toks"
        ),
        "bootstrap_iters": ConfigKey(int, default=100000, doc="for non-mean stderrs; 0 skips"),
        "seed": ConfigKey(int, default=1234),
        "output_path": ConfigKey(str | None, default=None, doc="write the results JSON here"),
        "dtype": ConfigKey(str, default="fp32", choices=DTYPES),
        "device": DEVICE_KEY,
        "log_level": LOG_LEVEL_KEY,
    },
)


def recipe_main(cfg: DictConfig) -> None:
    console.setup_logging(cfg.log_level)
    import lm_eval.evaluator
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    # lm-eval records `git describe` of the current directory, letting git print "fatal: not
    # a git repository" to the terminal; the user's directory says nothing about the model.
    lm_eval.evaluator.get_git_commit_hash = lambda: None

    from tt_recipes.evaluation import TTLM

    tasks = [str(t) for t in cfg.tasks]
    manager = TaskManager(include_path=cfg.include_path, include_defaults=cfg.include_defaults)
    check_tasks(tasks, manager.all_tasks, cfg.include_path)

    device = tt_dist.get_device(cfg.device)
    source = training.resolve_checkpoint_dir(cfg.checkpoint_dir)
    model = from_pretrained(source, dtype=cfg.dtype, device=device)
    lm = TTLM(
        model,
        instantiate(cfg.tokenizer),
        batch_size=cfg.batch_size,
        max_seq_len=cfg.max_seq_len,
        max_new_tokens=cfg.max_new_tokens,
    )
    log.info(f"Evaluating {source} on {', '.join(tasks)}")
    start = time.perf_counter()
    results = simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        apply_chat_template=cfg.apply_chat_template,
        bootstrap_iters=cfg.bootstrap_iters,
        task_manager=manager,
        log_samples=False,
        random_seed=cfg.seed,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed,
    )
    print(make_table(results))
    log.info(f"Evaluated in {time.perf_counter() - start:.1f} s")
    if cfg.output_path:
        path = Path(cfg.output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "checkpoint": str(source),
            "results": results["results"],
            "configs": results.get("configs", {}),
            "n-samples": results.get("n-samples", {}),
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=handle_non_serializable) + "\n")
        tmp.replace(path)
        log.info(f"Wrote {path}")


def check_tasks(tasks: list[str], known: list[str], include_path: str | None) -> None:
    """Name an unknown task before any weights load."""
    known_set = set(known)
    for task in tasks:
        if task not in known_set:
            where = f"lm-eval's tasks{f' or {include_path}' if include_path else ''}"
            raise ValueError(
                f"tasks: {task!r} is not among {where}{did_you_mean(task, known)}; "
                "`lm-eval ls tasks` lists the built-in ones"
            )
