"""torchrun for ``tt run --nproc_per_node N ...``: torch.distributed.run, minus its own
report of what the workers already said.

Every worker is a ``tt run`` that prints one line for a failure or an interrupt (rank 0, or
``[rank N]``). torchrun would then add a traceback of its own (a ``SignalException`` on
Ctrl-C/SIGTERM) and a table of failed ranks; here it exits with the workers' code instead:
130/143 for an interrupt, 1 for a failure.

    python -m tt_cli.launch [torchrun options] --module tt_cli run RECIPE --config ...
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent narrates restarts and "sending closing signal" at WARNING.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        run(parse_args(list(argv)))
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        codes = [failure.exitcode for failure in e.failures.values()]
        interrupts = [code for code in codes if code in (130, 143)]
        return interrupts[0] if interrupts else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
