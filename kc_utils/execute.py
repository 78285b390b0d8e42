"""Run a numbered notebook with papermill, refusing parameters the notebook does not declare.

Papermill applies an unknown ``-p name value`` silently (it only warns), so a typo such as
``-p n_edge 400`` would run the default. This command reads the notebook's ``parameters`` cell
first (papermill's own inspection) and stops with the list of known knobs::

    python -m kc_utils.execute notebooks/01_knowledge_circuits.ipynb runs/01.ipynb -p n_edges 40
    python -m kc_utils.execute notebooks/01_knowledge_circuits.ipynb runs/01.ipynb -y "relations: [company_hq]"

Values given with ``-p`` are read as Python/YAML literals (``40`` is an int, ``[a, b]`` a list,
``None`` is None), as papermill's ``-y`` would; anything else stays a string.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any

__all__ = ["UnknownParameterError", "check_parameters", "declared_parameters", "main", "parse_value"]


class UnknownParameterError(ValueError):
    """A parameter the notebook's ``parameters`` cell does not declare."""


def declared_parameters(notebook: str | Path) -> dict[str, str]:
    """Names and defaults (as written) of the notebook's ``parameters`` cell."""
    from papermill.inspection import inspect_notebook

    return {name: info["default"] for name, info in inspect_notebook(str(notebook)).items()}


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """Raise :class:`UnknownParameterError` for any name not declared by ``notebook``."""
    known = declared_parameters(notebook)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(known), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UnknownParameterError(
            f"{Path(notebook).name} has no parameter {', '.join(hints)}; its parameters are: {', '.join(known)}"
        )


def ipc_kernel_manager() -> type:
    """A kernel manager that talks to the kernel over Unix sockets in a temporary folder.

    The default TCP transport makes every kernel log "Kernel is running over TCP without
    encryption"; local IPC is both quieter and private to this user.
    """
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(Path(tempfile.mkdtemp(prefix="kc-kernel-")) / "kernel")

    return IpcKernelManager


def parse_value(text: str) -> Any:
    """A ``-p`` value: a Python literal when it parses as one (``3``, ``0.1``, ``None``, ``[1, 2]``), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        import yaml

        value = yaml.safe_load(text)
        return text if isinstance(value, (dict,)) else value
    except Exception:  # noqa: BLE001 - anything unparsable is a plain string
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kc_utils.execute", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("-y", "--yaml", action="append", default=[], help="parameters as a YAML mapping")
    parser.add_argument("--cwd", default=None, help="working directory of the kernel")
    parser.add_argument("-k", "--kernel", default="python3")
    args = parser.parse_args(argv)

    import papermill as pm
    import yaml

    parameters: dict[str, Any] = {}
    for text in args.yaml:
        mapping = yaml.safe_load(text)
        if not isinstance(mapping, dict):
            parser.error(f"-y takes a YAML mapping such as 'relations: [company_hq]', got {text!r}")
        parameters.update(mapping)
    for name, value in args.parameter:
        parameters[name] = parse_value(value)
    try:
        check_parameters(args.notebook, parameters)
    except UnknownParameterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        args.notebook,
        args.output,
        parameters=parameters,
        cwd=args.cwd,
        kernel_name=args.kernel,
        kernel_manager_class=ipc_kernel_manager(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
