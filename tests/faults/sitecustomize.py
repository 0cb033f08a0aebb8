"""Fault injection for tests/recipes/test_faults.py, in every Python process a test starts
(``PYTHONPATH=tests/faults``: the tt command, torchrun and its workers).

``TT_FAULT`` names what goes wrong, ``TT_FAULT_AFTER`` how many such writes succeed first:

- ``full_state`` / ``full_model`` / ``full_adapter`` / ``full_quantized``: that write fails
  with ENOSPC, as on a full disk (training state, HF model files, PEFT adapter, quantized
  model);
- ``slow_state``: writing a training state stalls for ``TT_FAULT_SECONDS`` (a window to
  interrupt a run in the middle of a save).
"""

import errno
import os
import time

FAULT = os.environ.get("TT_FAULT")


def _failing(original, kind):
    budget = {"left": int(os.environ.get("TT_FAULT_AFTER", "0"))}

    def write(*args, **kwargs):
        if budget["left"] > 0:
            budget["left"] -= 1
            return original(*args, **kwargs)
        if kind == "slow":
            time.sleep(float(os.environ.get("TT_FAULT_SECONDS", "5")))
            return original(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def _once_per_save(original, kind):
    """DCP writes several items per save: count saves, not items."""
    state = {"saves": 0, "current": None}
    after = int(os.environ.get("TT_FAULT_AFTER", "0"))

    def write_data(self, plan, planner):
        state["saves"] += 1
        if state["saves"] > after:
            if kind == "slow":
                time.sleep(float(os.environ.get("TT_FAULT_SECONDS", "5")))
            else:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, plan, planner)

    return write_data


if FAULT:
    import torch.distributed.checkpoint.filesystem as dcp_files

    if FAULT in ("full_state", "slow_state"):
        kind = "slow" if FAULT == "slow_state" else "full"
        writer = dcp_files._FileSystemWriter
        writer.write_data = _once_per_save(writer.write_data, kind)
    elif FAULT == "full_model":
        import tt_ckpt.hf

        tt_ckpt.hf.save_file = _failing(tt_ckpt.hf.save_file, "full")
    elif FAULT == "full_adapter":
        import tt_peft.peft_format

        tt_peft.peft_format.save_file = _failing(tt_peft.peft_format.save_file, "full")
    elif FAULT == "full_quantized":
        import tt_recipes.quantization as quantization

        class _Torch:
            def __getattr__(self, name):
                import torch

                return getattr(torch, name)

        patched = _Torch()
        patched.save = _failing(__import__("torch").save, "full")
        quantization.torch = patched
