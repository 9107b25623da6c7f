"""Command line of clipunlearn: ``python -m clipunlearn COMMAND [OPTIONS]``.

    python -m clipunlearn data --fetch          # get the default (mini) data
    python -m clipunlearn data --list           # the registered datasets
    python -m clipunlearn models --train-mini   # train (or load) the cached mini CLIP
    python -m clipunlearn figures --profile mini [--only 10]   # redraw figures/<profile>/ from results/<profile>/
    python -m clipunlearn report --readme README.md [--check]   # render README's results tables from results/
    python -m clipunlearn plan --profile paper [--quick]        # runs, steps and expected time of each notebook
    python -m clipunlearn env [--check-gpu]                     # versions, device; can torch use this GPU?
"""

from __future__ import annotations

import sys

from . import data, environment, models, plan, plots, report

COMMANDS = {"data": data.main, "models": models.main, "figures": plots.main, "report": report.main, "plan": plan.main,
            "env": environment.main}


def main(argv=None) -> int:
    """Dispatch ``argv[0]`` to the module's ``main``; ``-h`` lists the commands."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
