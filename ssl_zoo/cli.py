"""The ``ssl-zoo`` command.

    ssl-zoo train [overrides...]          one run (Hydra overrides: method=byol optimizer.lr=0.5 ...)
    ssl-zoo train -m [overrides...]       a sweep (Hydra multirun: method=simclr,byol)
    ssl-zoo list                          every config group and its choices

Bad input (an unknown choice or key, a wrong type, an impossible value, a missing data set or
checkpoint) prints one line starting with ``error:`` and exits with code 2, before anything is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ssl_zoo.errors import SSLZooError

USAGE = __doc__.split("\n\n")[1]
GROUPS = ("method", "backbone", "augmentation", "optimizer", "scheduler", "data", "trainer", "logger", "experiment")


def conf_dir() -> Path:
    from ssl_zoo.config import CONF_DIR

    return Path(os.environ.get("SSL_ZOO_CONF", CONF_DIR))


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def check_group_choices(overrides: list[str]) -> None:
    """An unknown group choice names the group and lists the valid ones (Hydra's own message is long)."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key.split("@")[0] not in GROUPS:
            continue
        group = key.split("@")[0]
        for choice in value.split(","):  # a sweep lists several
            if choice not in ("null", "") and choice not in choices(group):
                raise SSLZooError(f"{group}={choice!r} is not a known {group}: choose one of: "
                                  + ", ".join(choices(group)) + "  (see `ssl-zoo list`)")


def compose(overrides: list[str]):
    """The run config for ``overrides`` (no Hydra run directory is created)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return hydra_compose("train", overrides=[o for o in overrides if not o.startswith("hydra")])
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(str(e).split())
        raise SSLZooError(f"bad override: {message}") from None


def _hydra_main(argv: list[str]) -> None:
    """Run the training task under Hydra (run directory, logging, multirun sweeps and launchers)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
    def task(cfg) -> float | None:
        from ssl_zoo.train import train

        try:
            summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
        except SSLZooError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        return summary.get("knn_top1")  # the value a sweeper maximises

    saved = sys.argv
    sys.argv = ["ssl-zoo train", *argv]
    try:
        task()
    finally:
        sys.argv = saved


def cmd_train(args: list[str]) -> int:
    from ssl_zoo.config import validate_config
    from ssl_zoo.run_dir import config_hash, find_run_to_resume, new_run_dir

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    check_group_choices(overrides)
    if multirun:  # each job is validated when it starts
        _hydra_main(args)
        return 0
    cfg = compose(overrides)
    validate_config(cfg)
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        run_dir = None
        if cfg.get("resume") == "auto":
            run_dir = find_run_to_resume(config_hash(cfg))
            if run_dir is not None:
                print(f"resume=auto: continuing {run_dir}", flush=True)
        run_dir = run_dir or new_run_dir()
        args = [*args, f"hydra.run.dir={run_dir}"]
    _hydra_main(args)
    return 0


def cmd_list(args: list[str]) -> int:
    for group in GROUPS:
        print(f"{group}:")
        for name in choices(group):
            first = (conf_dir() / group / f"{name}.yaml").read_text().splitlines()[:1]
            note = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            print(f"  {name:<28} {note[:90]}")
    return 0


COMMANDS = {"train": cmd_train, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}: choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except SSLZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
