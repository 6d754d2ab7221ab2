"""A run's settings as a deployment run gets them: the deployment's settings with the run's
changes merged in field by field, and the stage store every worker shares.

Prefect merges a run's parameters onto its deployment's at the top level only: a run given
``{"config": {"ingest": {"sample_rows": 5}}}`` would lose every other setting of the
deployment's ``config``. :func:`with_deployment_settings` restores them inside the flow:
the run's value (what it set, ``exclude_unset``) is deep-merged onto the deployment's value
of the same parameter; mappings merge key by key, anything else (lists included) is
replaced.

:func:`shared_store` names the store: a config that leaves ``store`` at its default uses
``$LABEL_PIPELINE_STORE`` (set on each worker) or else the Prefect Variable
``label_pipeline_store`` (one value on the server for every worker), so a CPU and a GPU
worker find each other's stages.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: the environment variable and the Prefect Variable that name the shared stage store
STORE_ENV = "LABEL_PIPELINE_STORE"
STORE_VARIABLE = "label_pipeline_store"
DEFAULT_STORE = ".store"


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``base``: mappings key by key (recursively), other values replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _deployment() -> Any | None:
    """The deployment of the current flow run (None outside a deployment run)."""
    try:
        from prefect.context import FlowRunContext
    except Exception:  # pragma: no cover - prefect always installed
        return None
    ctx = FlowRunContext.get()
    flow_run = getattr(ctx, "flow_run", None)
    if flow_run is None or flow_run.deployment_id is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment(flow_run.deployment_id)


def with_deployment_settings(value: M, parameter: str) -> tuple[M, str | None, list[str]]:
    """``value`` (the run's parameter ``parameter``) with the deployment's settings that the
    run did not set. Returns it, the deployment's name and the dotted names of the settings
    the run gives a value other than the deployment's (a form that sends every field changes
    only those); the name is None outside a deployment run, or when the deployment has no
    value of that parameter."""
    try:
        deployment = _deployment()
    except Exception as exc:  # no API: the run's value is all there is
        log.warning("could not read the run's deployment (%s); using the run's settings", exc)
        return value, None, []
    base = (deployment.parameters or {}).get(parameter) if deployment is not None else None
    if not isinstance(base, Mapping) or "__prefect_kind" in json.dumps(base, default=str):
        return value, None, []
    given = value.model_dump(mode="json", exclude_unset=True, by_alias=True)
    merged = type(value).model_validate(deep_merge(base, given))
    before = _flat(type(value).model_validate(base).model_dump(mode="json", by_alias=True))
    changed = [k for k, v in _flat(given).items() if before.get(k) != v]
    return merged, deployment.name, changed


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def changed_settings(value: BaseModel) -> list[str]:
    """``section.field=value`` for every setting of ``value`` that differs from its class's
    default (one compact line per setting, in field order)."""
    now = _flat(value.model_dump(mode="json"))
    default = _flat(type(value)().model_dump(mode="json"))
    return [
        f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in now.items() if default.get(k) != v
    ]


def set_settings(value: BaseModel) -> list[str]:
    """The dotted names of the settings a run gave explicitly (``exclude_unset``)."""
    return list(_flat(value.model_dump(mode="json", exclude_unset=True)))


def _variable(name: str) -> str | None:
    try:
        from prefect.variables import Variable

        found = Variable.get(name, default=None)
    except Exception as exc:  # no API or no such variable: not configured
        log.debug("Prefect Variable %s not read: %s", name, exc)
        return None
    return str(found) if found not in (None, "") else None


def shared_store(store: str) -> tuple[str, str]:
    """Where the stage store is, and what named it.

    A ``store`` other than the default is the run's own choice. Left at the default, the
    environment variable ``LABEL_PIPELINE_STORE`` names it, else the Prefect Variable
    ``label_pipeline_store`` (read only inside a Prefect run), else ``.store``.
    """
    if store != DEFAULT_STORE:
        return store, "config.store"
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV], f"${STORE_ENV}"
    from label_pipeline.artifacts import in_prefect_run

    if in_prefect_run():
        found = _variable(STORE_VARIABLE)
        if found:
            return found, f"Prefect Variable {STORE_VARIABLE}"
    return store, "default"
