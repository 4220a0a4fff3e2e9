"""The ``ssl-zoo`` command.

    ssl-zoo train [overrides...]          one run (Hydra overrides: method=byol optimizer.lr=0.5 ...)
    ssl-zoo train -m [overrides...]       a sweep (Hydra multirun: method=simclr,byol; hydra/sweeper=knn_optuna)
    ssl-zoo eval knn|linear|finetune|fewshot ckpt=<path> [data=...] [eval.<key>=...]
                                          evaluate a checkpoint; results appended to <run dir>/eval.jsonl
    ssl-zoo export ckpt=<path> out=<file> [format=timm|torchvision]
                                          the backbone's weights alone, for timm or torchvision
    ssl-zoo embed ckpt=<path> out=<file.pt|.npz|.npy> [data=...] [eval.split=test|train]
                                          features with their labels and data-set indices
    ssl-zoo results [outputs/] [protocol=all|best|knn|...] [seeds=each|mean] [csv=<file>]
                                          leaderboard of every run found (Markdown printed, CSV written)
    ssl-zoo bench [key=value ...]         training speed, ours against lightly's building blocks, as
                                          Markdown (device=cuda sweep=all; sweep=accuracy: kNN at equal
                                          epochs; see BENCHMARKS.md)
    ssl-zoo list                          every config group and its choices

Bad input (an unknown choice or key, a wrong type, an impossible value, a missing data set or
checkpoint) prints one line starting with ``error:`` and exits with code 2, before anything is written.
"""

from __future__ import annotations

import os
import re
import shutil
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


def compose(overrides: list[str], config_name: str = "train"):
    """The ``config_name`` config for ``overrides`` (no Hydra run directory is created)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name, overrides=[o for o in overrides if not o.startswith("hydra")])
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(str(e).split())
        unknown = re.match(r"Could not override '([^']+)'", message)
        if unknown:  # Hydra's advice (append it with +) is wrong for a typo: the schema refuses the key anyway
            from ssl_zoo.errors import ConfigError

            key = unknown.group(1)
            value = next((o.partition("=")[2] for o in overrides if o.partition("=")[0] == key), None)
            raise ConfigError(key, value, f"a known key of {key.rpartition('.')[0] or 'the config'}",
                              "this key does not exist: check its spelling (`ssl-zoo list` shows the groups)") from None
        raise SSLZooError(f"bad override: {message}") from None


def _hydra_main(argv: list[str]) -> None:
    """Run the training task under Hydra (run directory, logging, multirun sweeps and launchers)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    @hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
    def task(cfg) -> float | None:
        from ssl_zoo.train import train

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN and cfg.logger.get("group") is None:
            # the runs of one sweep share a wandb group: the sweep's directory name (<date>/<time>-multirun)
            with open_dict(cfg):
                cfg.logger.group = "/".join(Path(hydra_cfg.sweep.dir).parts[-2:])
        try:
            summary = train(cfg, Path(hydra_cfg.runtime.output_dir))
        except SSLZooError as e:
            print(f"error: {e}", file=sys.stderr)
            _FAILURES.append(e)
            raise SystemExit(2) from None
        return summary.get("knn_top1")  # the value a sweeper maximises

    saved = sys.argv
    # Hydra reads its overrides from sys.argv[1:]. Lightning's DDP launcher starts every other rank by running
    # sys.argv again (``python <argv[0]>`` or ``python -m <module>``), so argv[0] stays the real program.
    sys.argv = [saved[0] if saved else "ssl-zoo", *argv]
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
    if any(o.startswith("hydra.run.dir=") for o in overrides):  # given, or a DDP rank started by the launcher
        return _run_in(args, None, None)
    run_dir = None
    if cfg.get("resume") == "auto":
        run_dir = find_run_to_resume(config_hash(cfg))
    if run_dir is not None or cfg.get("resume") not in (None, "", "null", "auto"):
        from ssl_zoo.train import resolve_checkpoint

        # a missing, unsafe or other method's checkpoint stops here, before anything is written
        resolve_checkpoint(cfg.resume, run_dir or Path("."), cfg.method.name)
    lock = lock_run_dir(run_dir) if run_dir is not None else None
    if run_dir is not None:
        print(f"resume=auto: continuing {run_dir}", flush=True)
    created = None if run_dir is not None else new_run_dir()
    if created is not None:
        lock = lock_run_dir(created)
    return _run_in([*args, f"hydra.run.dir={run_dir or created}"], created, lock)


_FAILURES: list[SSLZooError] = []  # what stopped a run inside Hydra's task (it can only exit there)


def _run_in(args: list[str], created: Path | None, lock) -> int:
    """Run the Hydra task; a run directory ``created`` for a run that a config or data error stopped before
    its first checkpoint is removed again, so a failed start leaves nothing behind."""
    from ssl_zoo.errors import ConfigError, DataError

    del _FAILURES[:]
    try:
        _hydra_main(args)
    except SystemExit as e:
        if e.code != 2 or not _FAILURES:
            raise
        if created is not None and isinstance(_FAILURES[-1], (ConfigError, DataError)) \
                and not any(created.glob("checkpoints/*.ckpt")):
            shutil.rmtree(created, ignore_errors=True)
            try:
                created.parent.rmdir()  # the date folder, when this run was its only one
            except OSError:
                pass
        return 2
    finally:
        if lock is not None:
            lock.close()
    return 0


def lock_run_dir(run_dir: Path):
    """An exclusive lock on ``run_dir`` for this process's lifetime (POSIX ``flock`` on ``run_dir/.lock``,
    released by the kernel even after a kill -9): two ``resume=auto`` starts of one config never both
    continue the same run. Returns the open lock file, or None where ``flock`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    handle = open(run_dir / ".lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SSLZooError(f"run directory {run_dir} is in use by another ssl-zoo train: wait for it to end, "
                          "or start a separate run with resume=null") from None
    return handle


def cmd_list(args: list[str]) -> int:
    for group in GROUPS:
        print(f"{group}:")
        for name in choices(group):
            first = (conf_dir() / group / f"{name}.yaml").read_text().splitlines()[:1]
            note = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            print(f"  {name:<28} {note[:90]}")
    return 0


def key_values(args: list[str], allowed: tuple[str, ...], command: str) -> dict[str, str]:
    """``key=value`` arguments of the commands that take no Hydra overrides; a stray one is an error."""
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            expected = ", ".join(f"{k}=..." for k in allowed)
            raise SSLZooError(f"{command}: {arg!r} is not an argument: expected {expected}")
        out[key] = value
    return out


def compose_eval(protocol: str, overrides: list[str]):
    """The eval job and the typed ``eval`` settings of ``protocol`` for ``overrides``.

    ``data=<name>`` picks another data set; ``data.<key>=<value>`` changes one field of it or, without
    ``data=``, of the checkpoint's own data config.
    """
    from omegaconf import OmegaConf

    from ssl_zoo.config import typed_group
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.eval.protocols import PROTOCOLS, make_job

    for arg in overrides:
        if "=" not in arg:
            raise SSLZooError(f"{arg!r} is not an override: write key=value, e.g. ckpt=outputs/<date>/<time>/"
                              "checkpoints/best.ckpt")
    check_group_choices(overrides)
    picks_data = any(o.startswith("data=") for o in overrides)
    data_fields = [o for o in overrides if o.startswith("data.")] if not picks_data else []
    rest = [o for o in overrides if o not in data_fields and not o.startswith("eval=")]
    cfg = compose([f"eval={protocol}", *rest], config_name="eval")
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError("ckpt", None, "the path of a checkpoint",
                          "e.g. ckpt=outputs/<date>/<time>/checkpoints/best.ckpt")
    settings = typed_group(cfg, "eval", PROTOCOLS[protocol])
    settings.validate("eval")
    data_overrides = OmegaConf.to_container(OmegaConf.from_dotlist([o[len("data."):] for o in data_fields]))
    data_node = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    job = make_job(str(cfg.ckpt), data_node, data_overrides, cfg.seed, str(cfg.device), bool(cfg.cache),
                   cfg.get("results"))
    return job, settings, cfg


def cmd_eval(args: list[str]) -> int:
    from ssl_zoo.eval.protocols import RUNNERS, append_result, describe

    if not args or args[0] not in RUNNERS:
        given = repr(args[0]) if args else "nothing"
        raise SSLZooError(f"eval needs a protocol first, got {given}: choose one of: " + ", ".join(RUNNERS)
                          + "  (ssl-zoo eval knn ckpt=<path>)")
    protocol = args[0]
    job, settings, _ = compose_eval(protocol, args[1:])
    for line in RUNNERS[protocol](job, settings):
        append_result(job, line)
        print(describe(line))
    print(f"results appended to {job.results_file}")
    return 0


def cmd_embed(args: list[str]) -> int:
    from ssl_zoo.eval.protocols import run_embed

    job, settings, cfg = compose_eval("embed", args)
    path = run_embed(job, settings, cfg.get("out"))
    print(f"wrote {path} ({settings.split} split of {job.data.name})")
    return 0


def cmd_export(args: list[str]) -> int:
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.eval.export import export_to_file

    kv = key_values(args, ("ckpt", "out", "format"), "export")
    for key in ("ckpt", "out"):
        if not kv.get(key):
            raise ConfigError(key, None, "a path", "ssl-zoo export ckpt=<run>/checkpoints/best.ckpt out=backbone.pt")
    snippet = export_to_file(kv["ckpt"], kv["out"], kv.get("format"))
    print(f"wrote {kv['out']}; load it with:\n{snippet}")
    return 0


def cmd_results(args: list[str]) -> int:
    from ssl_zoo.errors import ConfigError
    from ssl_zoo.eval.results import (
        PROTOCOL_CHOICES,
        SEEDS_CHOICES,
        leaderboard,
        over_seeds,
        seeds_to_markdown,
        to_markdown,
        write_csv,
    )

    roots = [a for a in args if "=" not in a]
    kv = key_values([a for a in args if "=" in a], ("protocol", "csv", "seeds"), "results")
    protocol, seeds = kv.get("protocol", "best"), kv.get("seeds", "each")
    if protocol not in PROTOCOL_CHOICES:
        raise ConfigError("protocol", protocol, "one of: " + ", ".join(PROTOCOL_CHOICES))
    if seeds not in SEEDS_CHOICES:
        raise ConfigError("seeds", seeds, "one of: " + ", ".join(SEEDS_CHOICES))
    root = Path(roots[0]) if roots else Path("outputs")
    if len(roots) > 1 or not root.is_dir():
        raise SSLZooError(f"results: {' '.join(roots) or str(root)!r} is not one folder of runs: "
                          "give the folder holding the run directories (default outputs/)")
    rows = leaderboard(root, protocol)
    csv_file = Path(kv.get("csv") or root / "results.csv")
    if seeds == "mean":
        rows = over_seeds(rows)
        print(seeds_to_markdown(rows))
    else:
        print(to_markdown(rows))
    write_csv(rows, csv_file)
    print(f"\n{len(rows)} row(s); CSV written to {csv_file}")
    return 0


def cmd_bench(args: list[str]) -> int:
    from ssl_zoo.bench import parse_bench_args, run_bench

    bench, overrides = parse_bench_args(args)
    run_bench(bench, overrides)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "embed": cmd_embed,
            "results": cmd_results, "bench": cmd_bench,
            "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and "=" in command and os.environ.get("LOCAL_RANK"):
        # A rank that Lightning's DDP launcher started: it passes the training overrides without the command.
        command, rest = "train", argv
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
