"""`batchrun simulate`: a simulated provider on 127.0.0.1, its options made from the simulator's model.

Each field of `SimulateSpec` is an option (`--kebab-name`, its type, default and doc; `Flag` where the command
spells it otherwise), so the command and a spec's `provider.simulate:` cannot drift apart, and the model checks
the bounds of both.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from ..errors import SpecError
from ..spec.base import Internal, Reading, marker
from ..spec.parse import members, render
from ..spec.simulator import Flag, SimulateSpec

F = typing.TypeVar("F", bound=Callable[..., Any])


def _flag(name: str) -> Flag:
    found = marker(SimulateSpec, name, Flag)
    return found if isinstance(found, Flag) else Flag()


def option_name(field: str) -> str:
    """The option that sets a field: --kebab-name unless its Flag says otherwise."""
    return _flag(field).name or "--" + field.replace("_", "-")


def _option(name: str, field: FieldInfo) -> Callable[[F], F]:
    """One click option from one field of the model."""
    flag = _flag(name)
    default = flag.default if flag.default is not None else field.default
    (annotation, *_) = members(field.annotation)
    kwargs: dict[str, Any] = {"help": f"{field.description}{' (repeatable)' if flag.multiple else ''}"}
    kwargs["metavar"] = flag.metavar
    if annotation is bool:
        kwargs.update(is_flag=True, default=False)
    elif flag.parse is not None or flag.multiple:
        kwargs.update(multiple=flag.multiple, default=() if flag.multiple else None)
    elif typing.get_origin(annotation) is Literal:
        kwargs.update(type=click.Choice(typing.get_args(annotation)), default=default, show_default=True)
    elif typing.get_origin(annotation) is tuple:
        kwargs.update(type=float, nargs=len(typing.get_args(annotation)), default=default, show_default=True)
    else:
        kwargs.update(type=annotation, default=default, show_default=default is not None)
    return click.option(option_name(name), name, **kwargs)


def simulate_options(fn: F) -> F:
    """Every field of SimulateSpec (but the internal ones) as an option, in the model's order."""
    for name, field in reversed(SimulateSpec.model_fields.items()):
        if marker(SimulateSpec, name, Internal) is None:
            fn = _option(name, field)(fn)
    return fn


def settings(values: dict[str, Any], api_key: str | None) -> SimulateSpec:
    """The options' values, read as a spec's `provider.simulate:` would be; errors name the option."""
    data: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == ():
            continue  # not given, and no default of the command's own: the model's
        flag = _flag(name)
        if flag.inverted:
            value = not value
        elif flag.parse is not None:
            value = [flag.parse(v) for v in value] if flag.multiple else (flag.parse(value) if value else None)
        if flag.pairs:
            value = dict(value)
        data[name] = list(value) if isinstance(value, tuple) else value
    try:
        cfg = SimulateSpec.model_validate(data, context=Reading("batchrun simulate", Path(os.devnull)))
    except ValidationError as exc:
        raise render(exc, SimulateSpec, None, name=lambda key: option_name(key.split(".")[0])) from None
    return cfg.model_copy(update={"api_key": api_key})


def command(friendly: Callable[[Callable[..., None]], Callable[..., None]]) -> click.Command:
    """The `simulate` command; `friendly` is the CLI's wrapper that turns errors into one line and an exit status."""

    @click.command()
    @click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
    @simulate_options
    @click.option(
        "--tls",
        nargs=2,
        type=click.Path(dir_okay=False, exists=True),
        metavar="CERT KEY",
        help="Serve https:// with this certificate and private key (PEM), to try provider.ca_bundle.",
    )
    @click.option(
        "--require-key",
        is_flag=True,
        help="Answer 401 unless requests carry $BATCHRUN_SIM_API_KEY "
        "(as a bearer token or, for an id.secret key, a Zhipu JWT signed with it).",
    )
    @friendly
    def simulate(port: int, tls: tuple[str, str] | None, require_key: bool, **values: Any) -> None:
        """Serve a simulated OpenAI-compatible provider on 127.0.0.1 until Ctrl-C."""
        key = os.environ.get("BATCHRUN_SIM_API_KEY") if require_key else None
        if require_key and not key:
            raise SpecError("--require-key needs the key in $BATCHRUN_SIM_API_KEY")
        cfg = settings(values, key)

        def announce(url: str) -> None:
            click.echo(f"simulated provider at {url}  (spec: provider: {{name: simulated, base_url: {url}}})")
            click.echo(f"counters at {url.rsplit('/v1', 1)[0]}/_sim/stats; Ctrl-C to stop")

        from .server import run_forever  # the server side of aiohttp: only this command needs it

        context = None
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(*tls)
            except (OSError, ssl.SSLError) as exc:
                raise SpecError(
                    f"--tls: cannot load {tls[0]} and {tls[1]} as a PEM certificate and key: {exc}"
                ) from None
        try:
            asyncio.run(run_forever(cfg, port, announce, context))
        except OSError as exc:
            raise SpecError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; choose another --port") from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM is how a server is meant to stop
            click.echo("simulated provider stopped")

    return simulate
