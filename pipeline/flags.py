"""The command-line flags that build an experiment, shared by the workflows (``workflows/train_*.py``,
``workflows/sweep_*.py``) and ``stpa config show``, so a flag means the same everywhere.

``--preset`` picks a named configuration (``pipeline.presets``); ``--set SECTION.FIELD=VALUE`` changes any field
(parsed to the field's type); the dedicated flags (``--epochs``, ``--num-workers``, ``--batch-size``, ``--lr``,
``--num-segments``, ``--precision``, ``--use-gpu``/``--no-use-gpu``/``--cpu``, ``--pretrained``) change the common
ones and win over ``--set``. ``--num-workers`` always means Ray Train workers (one per GPU on GPUs).
"""

from __future__ import annotations

import argparse

from pipeline.errors import UserError

PRESET_NAMES = (
    "smoke",
    "ucf101",
    "hmdb51",
    "charades",
)  # pipeline.presets.PRESETS (kept here: --help imports no torch)
PRECISIONS = ("fp32", "bf16", "fp16")

# flag attribute -> the override key it sets (--num-segments sets K of every clip config and the model: see below)
FLAG_KEYS = {
    "epochs": "train.epochs",
    "num_workers": "train.num_workers",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "precision": "train.precision",
    "use_gpu": "train.use_gpu",
    "pretrained": "train.pretrained",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" only where there is a default to show (not None, False or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def add_experiment_flags(parser: argparse.ArgumentParser, default_preset: str = "smoke") -> None:
    """``--preset``, ``--set`` and the dedicated flags of the common fields (module doc)."""
    group = parser.add_argument_group("experiment (default: the preset's values)")
    group.add_argument(
        "--preset",
        default=default_preset,
        choices=PRESET_NAMES,
        help="named configuration (stpa config list shows them; ucf101, hmdb51 and charades train on GPUs)",
    )
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="change any config field, e.g. --set model.beta=0.01 --set train.freeze_bn=none (stpa config show "
        "lists the fields)",
    )
    group.add_argument("--epochs", type=int, default=None, help="training epochs")
    group.add_argument(
        "--num-workers", type=int, default=None, help="Ray Train workers (one per GPU when training on GPUs)"
    )
    group.add_argument("--batch-size", type=int, default=None, help="clips per worker per step")
    group.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate at the preset's reference batch (optim.reference_batch_size); it scales "
        "linearly with the global batch",
    )
    group.add_argument(
        "--num-segments",
        type=int,
        default=None,
        help="TSN segments K per clip (train, val, test and the model)",
    )
    group.add_argument("--precision", choices=PRECISIONS, default=None, help="autocast precision")
    group.add_argument(
        "--use-gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train on GPUs (NCCL), one per worker; --no-use-gpu trains on CPUs",
    )
    group.add_argument(
        "--cpu",
        dest="use_gpu",
        action="store_false",
        default=None,
        help="train on CPUs (the same as --no-use-gpu)",
    )
    group.add_argument(
        "--pretrained", default=None, help="ImageNet ResNet state dict for the backbone (path or URI)"
    )


def build_experiment(args: argparse.Namespace, dataset: str, num_classes: int):
    """The experiment the flags describe: the preset, then ``--set``, then the dedicated flags.

    Returns:
        ``(experiment, overrides, explicit)``: the ``ExperimentConfig``; the flat overrides applied (JSON-able,
        what identifies the run); the keys the user set themselves (``pipeline.presets.fit_to_dataset`` leaves
        those alone).

    Raises:
        pipeline.errors.UserError: a ``--set`` item that names no field or has a value of the wrong type, or a
            value the config refuses; the message names the item or field.
    """
    from pipeline.config import apply_overrides, parse_overrides
    from pipeline.presets import preset
    from pipeline.sweep.space import K_KEY, expand_overrides

    base = preset(args.preset, dataset, num_classes)
    try:
        overrides = parse_overrides(args.set, base)
    except ValueError as error:
        raise UserError(str(error)) from None
    for flag, key in FLAG_KEYS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    try:
        if getattr(args, "num_segments", None) is not None:
            overrides.update(expand_overrides(apply_overrides(base, overrides), {K_KEY: args.num_segments}))
        exp = apply_overrides(base, overrides)
    except (ValueError, TypeError) as error:
        raise UserError(f"the configuration is not valid: {error}") from None
    return exp, overrides, frozenset(overrides)
