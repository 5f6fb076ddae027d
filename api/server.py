"""`hspi serve`: the audit API under uvicorn, optionally with a demo target and a ready-made curl line."""

from __future__ import annotations

import shlex
import sys
from contextlib import ExitStack
from typing import TextIO

from hspi.api import store
from hspi.api.app import bootstrap_admin_key, create_app
from hspi.api.security import new_api_key
from hspi.api.settings import ServiceSettings

DEMO_MODEL = "lm-small"
# a bf16 server (the curl line's claim says fp32): the first of these whose answers on this machine are
# those of a collected configuration, measured at start (another CPU may give other bits for some)
DEMO_PLATFORMS = (
    "cpu:avx2/bf16/torch-eager",
    "cpu:sse42/bf16/torch-eager",
    "cpu:avx512/bf16/torch-eager",
    "cpu:native/bf16/torch-eager",
)
DEMO_CLAIM = "dtype=fp32"
LOOPBACK = ("127.0.0.0/8", "::1")


def serve(
    settings: ServiceSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    demo: bool = False,
    demo_platforms: tuple[str, ...] = DEMO_PLATFORMS,
    out: TextIO = sys.stderr,
) -> None:
    import uvicorn

    with ExitStack() as stack:
        demo_url = None
        if demo:
            from hspi.audit.endpoint_evaluation import served_target
            from hspi.collector.reproduction import first_identified
            from hspi.dataset import Dataset
            from hspi.shipped import shipped_dataset

            print("choosing a demo platform whose answers on this machine are a collected class's...", file=out)
            demo_platform, config = first_identified(Dataset(shipped_dataset(DEMO_MODEL)), [DEMO_MODEL], demo_platforms)
            print(
                f"starting a demo target: {DEMO_MODEL} on {demo_platform} (hspi target serve); here it answers as "
                f"the collected configuration {config} did",
                file=out,
            )
            demo_url = stack.enter_context(served_target(DEMO_MODEL, demo_platform))
            settings = settings.model_copy(update={"allow_hosts": [*settings.allow_hosts, *LOOPBACK]})
        app = create_app(settings)
        services = app.state.services
        services.db.migrate()
        bootstrap_admin_key(services)  # before the demo's key: the first key of a database is an admin's
        if demo_url is not None:
            key_id, key, secret_hash = new_api_key()
            store.add_key(services.db, key_id, "make run demo", secret_hash, ["write"])
            base = f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}"
            body = f'{{"endpoint": "{demo_url}", "model": "{DEMO_MODEL}", "claim": "{DEMO_CLAIM}", "budget": 128}}'
            auth = f"Authorization: Bearer {key}"
            print(
                f"\nthe audit API is at {base} (OpenAPI: {base}/docs, the dashboard: {base}/dashboard/); "
                f"database {services.db.safe_url}\n"
                f"a demo target serves {DEMO_MODEL} on {demo_platform} at {demo_url}; a dev API key "
                f"(scope write): {key}\n\naudit it (the claim says fp32; the target runs bf16):\n\n"
                f"  curl -s -X POST {base}/v1/audits -H {shlex.quote(auth)} -H 'Content-Type: application/json' "
                f"-d {shlex.quote(body)}\n\nthen read the report (the id is in the answer):\n\n"
                f"  curl -s {base}/v1/audits/AUDIT_ID -H {shlex.quote(auth)}\n\nCtrl-C stops.\n",
                file=out,
            )
        uvicorn.run(app, host=host, port=port, log_level="info")
