"""A job checked against its input before any request: what submit, validate and estimate share.

Nothing here touches the network, so validate and estimate load neither aiohttp nor the run loop.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from .errors import SpecError
from .presets import PRESETS
from .request import RequestBuilder
from .rundir import RunDir
from .sources import InputScan, first_row, scan_input
from .spec import JobSpec, load_spec


@dataclass(frozen=True)
class Prepared:
    spec: JobSpec
    scan: InputScan
    builder: RequestBuilder
    fingerprint: dict[str, str]


def prepare(spec: JobSpec) -> Prepared:
    scan = scan_input(spec.input)
    builder = RequestBuilder(spec, first_row(spec.input))
    return Prepared(spec, scan, builder, fingerprint(spec, scan))


def fingerprint(spec: JobSpec, scan: InputScan) -> dict[str, str]:
    """What decides the requests; a resumed run must match it (limits and retry settings may change)."""
    inp = spec.input
    mapping = {
        "format": inp.format,
        "id_field": inp.id_field,
        "messages_field": inp.messages_field,
        "prompt_field": inp.prompt_field,
        "template": inp.template,
        "system": inp.system,
    }
    found = {
        "input": scan.digest,
        "input_mapping": _digest(mapping),
        "model": spec.model,
        "params": _digest(dict(spec.params)),
    }
    # Only when not the default, so run directories from before these keys existed still resume.
    if spec.endpoint != "chat":
        found["endpoint"] = spec.endpoint
    if spec.provider.mode == "async":  # held task ids mean nothing to the sync path, and vice versa
        found["tasks"] = "async"
    return found


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def api_key(preset_name: str, env: str) -> str | None:
    """The key from the environment only; a missing required key is a usage error naming the variable."""
    preset = PRESETS[preset_name]
    key = os.environ.get(env, "").strip() or None
    if key is None and preset.key_required:
        raise SpecError(
            f"the environment variable {env} is not set: export {env}=<your {preset.title} key> "
            "(keys never go in the job spec)"
        )
    return key


def job_of_run(run_dir: Path, job: str | None = None) -> JobSpec:
    """The job a run directory holds, from the spec file its manifest names (or `job`), writing into it."""
    run = RunDir(run_dir)
    path = job or run.spec_path
    if not path or not Path(path).is_file():
        raise SpecError(f"the job spec {path or '(none recorded)'} of {run_dir} is not there: pass it with --job")
    return replace(load_spec(path), output_dir=run.path.resolve())


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
