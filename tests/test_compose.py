"""docker-compose.yml, read as data: the service graph `docker compose up` would start, checked
without Docker. Each check returns the problems it finds; the negative tests break a copy of the
file and expect the check to say so."""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from config import Settings
from workflows import search

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"

Compose = dict[str, Any]
Check = Callable[[Compose], list[str]]
Breakage = Callable[[Compose], object]


def interpolate(value: Any) -> Any:
    """Compose's variable interpolation with an empty environment, in every string of the parsed
    file: `${VAR:-default}` is its default, `${VAR}` empty, `$$` a dollar."""
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if not isinstance(value, str):
        return value
    text = re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", value)
    text = re.sub(r"\$\{[A-Z0-9_]+\}", "", text)
    return text.replace("$$", "$")


def load_compose() -> Compose:
    """The compose file as plain data, as `docker compose` reads it with no variable set (YAML
    anchors and `<<` merges resolved, variables their defaults)."""
    return dict(interpolate(yaml.safe_load(COMPOSE_FILE.read_text())))


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either of the two forms compose accepts."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def dependencies(service: dict[str, Any]) -> dict[str, str | None]:
    """Each service this one depends on, with its condition (None in the short list form)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on)
    return {name: (spec or {}).get("condition") for name, spec in depends_on.items()}


def jobs(compose: Compose) -> set[str]:
    """Services something waits for to exit: the one-shot jobs. The rest run for good."""
    return {
        name
        for service in services(compose).values()
        for name, condition in dependencies(service).items()
        if condition == "service_completed_successfully"
    }


def mounted_files(compose: Compose, service: dict[str, Any]) -> list[tuple[str, str]]:
    """(file in the repo, path in the container) of each bind mount and `configs` file."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                found.append((volume["source"], volume["target"]))
        elif volume.startswith((".", "/", "~")):
            source, target = volume.split(":")[:2]
            found.append((source, target))
    for config in service.get("configs") or []:
        name = config if isinstance(config, str) else config["source"]
        target = f"/{name}" if isinstance(config, str) else config.get("target", f"/{name}")
        file = (compose.get("configs") or {}).get(name, {}).get("file")
        if file:
            found.append((file, target))
    return found


def named_volumes(service: dict[str, Any]) -> list[str]:
    names = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type", "volume") == "volume" and volume.get("source"):
                names.append(volume["source"])
        else:
            source, _, target = volume.partition(":")
            if target and not source.startswith((".", "/", "~")):
                names.append(source)
    return names


def has_healthcheck(service: dict[str, Any]) -> bool:
    healthcheck = service.get("healthcheck") or {}
    return bool(healthcheck.get("test")) and not healthcheck.get("disable")


def command_text(service: dict[str, Any]) -> str:
    parts = [service.get("entrypoint") or "", service.get("command") or ""]
    return " ".join(" ".join(p) if isinstance(p, list) else p for p in parts)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def seconds(duration: str) -> float:
    """A compose duration (`40s`, `1m30s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def sqlalchemy_url_error(url: str) -> str | None:
    """Why SQLAlchemy would refuse `url`, when SQLAlchemy is installed."""
    if importlib.util.find_spec("sqlalchemy") is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError as err:
        return str(err)
    return None


# --- The checks ---------------------------------------------------------------------------------


def dependency_problems(compose: Compose) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        for target, condition in dependencies(service).items():
            where = f"{name}: depends_on {target}"
            if target not in services(compose):
                problems.append(f"{where}: no such service")
            elif condition not in CONDITIONS:
                problems.append(f"{where}: needs a condition, one of {sorted(CONDITIONS)}")
            elif condition == "service_healthy" and not has_healthcheck(services(compose)[target]):
                problems.append(f"{where}: service_healthy, but {target} has no healthcheck")
            elif condition == "service_completed_successfully":
                restart = str(services(compose)[target].get("restart", "no"))
                if restart not in ("no", "") and not restart.startswith("on-failure"):
                    problems.append(f"{where}: waits for it to exit, but it restarts ({restart})")
    return problems


def cycle_problems(compose: Compose) -> list[str]:
    graph = {name: list(dependencies(s)) for name, s in services(compose).items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str]:
        if name in path:
            return [f"depends_on cycle: {' -> '.join([*path[path.index(name) :], name])}"]
        if name in done or name not in graph:
            return []
        found = [p for target in graph[name] for p in visit(target, [*path, name])]
        done.add(name)
        return found

    return [problem for name in graph for problem in visit(name, [])][:1]


def image_problems(compose: Compose) -> list[str]:
    problems = []
    built = {s.get("image") for s in services(compose).values() if s.get("build")}
    for name, service in services(compose).items():
        if service.get("image") in built:
            continue  # the connector's own image, built from ./Dockerfile
        image = service.get("image", "")
        tag = image.rpartition("/")[2].partition(":")[2]
        if "@sha256:" not in image and (not tag or tag == "latest"):
            problems.append(f"{name}: image {image!r} is not pinned to a version tag")
    return problems


def worker_scaling_problems(compose: Compose) -> list[str]:
    worker = services(compose).get("worker", {})
    problems = []
    if int((worker.get("deploy") or {}).get("replicas", 1)) < 2:
        problems.append("worker: deploy.replicas should be 2 or more")
    if "container_name" in worker:
        problems.append("worker: container_name stops `--scale worker=N` (names must be unique)")
    if worker.get("ports"):
        problems.append("worker: published ports stop `--scale worker=N` (one host port each)")
    return problems


def temporal_address_problems(compose: Compose) -> list[str]:
    problems = []
    for name in ("worker", "api"):
        address = environment(services(compose).get(name, {})).get("TEMPORAL_ADDRESS", "")
        host = address.rpartition(":")[0]
        image = services(compose).get(host, {}).get("image", "")
        if not image.startswith("temporalio/server:") or not address.endswith(":7233"):
            problems.append(
                f"{name}: TEMPORAL_ADDRESS={address!r} should name the Temporal server's "
                "service and its frontend port (temporal:7233)"
            )
    return problems


def warehouse_db_problems(compose: Compose) -> list[str]:
    worker = services(compose).get("worker", {})
    url = environment(worker).get("WAREHOUSE_URL")
    if not url:
        return ["worker: WAREHOUSE_URL is unset: each replica would keep its own SQLite file"]
    problems = []
    if error := sqlalchemy_url_error(url):
        problems.append(f"worker: WAREHOUSE_URL is not a SQLAlchemy URL: {error}")
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgresql"):
        return [*problems, f"worker: WAREHOUSE_URL {url!r} is not a PostgreSQL URL"]
    host = parts.hostname or ""
    if not services(compose).get(host, {}).get("image", "").startswith("postgres:"):
        problems.append(f"worker: WAREHOUSE_URL host {host!r} is not the PostgreSQL service")
    database, user = parts.path.lstrip("/"), parts.username
    scripts = [
        (ROOT / file).read_text()
        for job, condition in dependencies(worker).items()
        if condition == "service_completed_successfully"
        for file, _ in mounted_files(compose, services(compose).get(job, {}))
        if file.endswith(".sql") and (ROOT / file).is_file()
    ]
    if not any(f"CREATE DATABASE {database}" in s and f"CREATE ROLE {user}" in s for s in scripts):
        problems.append(
            f"worker: no job it waits for runs a .sql script creating database {database!r} "
            f"and role {user!r} of its WAREHOUSE_URL"
        )
    api_url = environment(services(compose).get("api", {})).get("WAREHOUSE_URL")
    if api_url != url:
        problems.append(f"api: WAREHOUSE_URL {api_url!r} is not the workers' warehouse")
    return problems


def worker_volume_problems(compose: Compose) -> list[str]:
    worker = services(compose).get("worker", {})
    problems = [
        f"worker: mounts the named volume {volume!r}, which every replica would share"
        for volume in named_volumes(worker)
    ]
    if worker.get("volumes_from"):
        problems.append("worker: volumes_from shares another container's volumes")
    return problems


def healthcheck_problems(compose: Compose) -> list[str]:
    return [
        f"{name}: runs for good but has no healthcheck"
        for name, service in services(compose).items()
        if name not in jobs(compose) and not has_healthcheck(service)
    ]


def stop_grace_problems(compose: Compose) -> list[str]:
    worker = services(compose).get("worker", {})
    default = Settings.model_fields["worker_shutdown_grace_seconds"].default
    grace = float(environment(worker).get("WORKER_SHUTDOWN_GRACE_SECONDS", default))
    stop = seconds(str(worker.get("stop_grace_period", "10s")))
    if stop <= grace:
        return [
            f"worker: stop_grace_period ({stop:g}s) must exceed WORKER_SHUTDOWN_GRACE_SECONDS "
            f"({grace:g}s), or Docker kills it while its steps finish"
        ]
    return []


def prometheus_problems(compose: Compose) -> list[str]:
    prometheus = services(compose).get("prometheus", {})
    mounts = mounted_files(compose, prometheus)
    files = [file for file, target in mounts if target == PROMETHEUS_CONFIG]
    if not files or not (ROOT / files[0]).is_file():
        return [f"prometheus: no file of the repo is mounted at {PROMETHEUS_CONFIG}"]
    scrapes = (yaml.safe_load((ROOT / files[0]).read_text()) or {}).get("scrape_configs") or []
    problems = []
    api_port = environment(services(compose).get("api", {})).get("OPS_PORT", "8001")
    api_targets = [
        target
        for scrape in scrapes
        if scrape.get("metrics_path", "/metrics") == "/metrics"
        for static in scrape.get("static_configs") or []
        for target in static.get("targets") or []
    ]
    if f"api:{api_port}" not in api_targets:
        problems.append(f"{files[0]}: does not scrape the ops listener, api:{api_port}/metrics")
    address = environment(services(compose).get("worker", {})).get("WORKER_METRICS_ADDRESS", "")
    if not address.startswith("0.0.0.0:"):
        problems.append(f"worker: WORKER_METRICS_ADDRESS={address!r} is not reachable from others")
    worker_sds = [
        sd
        for scrape in scrapes
        for sd in scrape.get("dns_sd_configs") or []
        if "worker" in sd.get("names", []) and sd.get("type") == "A"
    ]
    if not address or not any(sd.get("port") == port_of(address) for sd in worker_sds):
        problems.append(
            f"{files[0]}: no dns_sd_config of type A on `worker` with the port of "
            f"WORKER_METRICS_ADDRESS ({address!r}), so not every replica is scraped"
        )
    return problems


def search_attribute_problems(compose: Compose) -> list[str]:
    scripts = [
        command_text(s) + "".join((ROOT / f).read_text() for f, _ in mounted_files(compose, s))
        for s in services(compose).values()
    ]
    commands = [script for script in scripts if "search-attribute create" in script]
    missing = [
        f"{name}={kind}"
        for name, kind in search.REGISTERED.items()
        if not any(f"{name}={kind}" in command for command in commands)
    ]
    if missing:
        return [f"no job creates the search attributes {missing} of workflows/search.py"]
    return []


def file_reference_problems(compose: Compose) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        for config in service.get("configs") or []:
            source = config if isinstance(config, str) else config["source"]
            if source not in (compose.get("configs") or {}):
                problems.append(f"{name}: config {source!r} is not defined under configs:")
        for file, _ in mounted_files(compose, service):
            if not (ROOT / file).exists():
                problems.append(f"{name}: mounts {file}, which is not in the repo")
    return problems


CONNECTOR_SERVICES = ("worker", "api", "catalog", "fake-marketplace")
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PWD|SECRET|_KEY)$|^PAYLOAD_ENCRYPTION_KEY$")


def built_once_problems(compose: Compose) -> list[str]:
    builders = [name for name, s in services(compose).items() if s.get("build")]
    if len(builders) != 1:
        return [f"the connector's image must be built by one service, not {builders}"]
    image = services(compose)[builders[0]].get("image")
    return [
        f"{name}: runs {services(compose).get(name, {}).get('image')!r}, not the image "
        f"{builders[0]} builds ({image!r})"
        for name in CONNECTOR_SERVICES
        if services(compose).get(name, {}).get("image") != image
    ]


def secret_problems(compose: Compose) -> list[str]:
    problems = []
    defined = compose.get("secrets") or {}
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if (
                SECRET_NAME.search(key)
                and value not in ("", "true", "false")
                and not value.startswith("/run/secrets/")
            ):
                problems.append(f"{name}: {key} is a secret in an environment variable")
        for secret in service.get("secrets") or []:
            source = secret if isinstance(secret, str) else secret["source"]
            if source not in defined:
                problems.append(f"{name}: secret {source!r} is not defined under secrets:")
    raw = COMPOSE_FILE.read_text()
    if re.search(r"\$\{[A-Z0-9_]+:?\?", raw):
        problems.append("a required ${VAR:?} stops `docker compose ps/logs/down` without it")
    for key in ("seller_app_key", "seller_app_token", "payload_encryption_key", "ops_token"):
        if key not in [
            s if isinstance(s, str) else s["source"]
            for s in services(compose).get("api", {}).get("secrets") or []
        ]:
            problems.append(f"api: the secret {key} is not mounted")
    return problems


def encryption_problems(compose: Compose) -> list[str]:
    problems = []
    for name in ("worker", "api"):
        service = services(compose).get(name, {})
        if environment(service).get("REQUIRE_PAYLOAD_ENCRYPTION") != "true":
            problems.append(f"{name}: REQUIRE_PAYLOAD_ENCRYPTION is not true")
        if "payload_encryption_key" not in (service.get("secrets") or []):
            problems.append(f"{name}: no payload_encryption_key secret")
    return problems


def demo_problems(compose: Compose) -> list[str]:
    problems = [
        f"{name}: a demo piece outside the demo profile"
        for name in ("fake-marketplace", "catalog")
        if "demo" not in (services(compose).get(name, {}).get("profiles") or [])
    ]
    for name in ("worker", "api"):
        hosts = environment(services(compose).get(name, {})).get("MARKETPLACE_ALLOWED_HOSTS", "")
        if "fake-marketplace" in hosts.split(","):
            problems.append(f"{name}: the fake marketplace is in the default allow-list")
    return problems


def hardening_problems(compose: Compose) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        if name not in jobs(compose):
            if (service.get("logging") or {}).get("options", {}).get("max-size") is None:
                problems.append(f"{name}: its logs are not rotated (logging.options.max-size)")
            limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
            if name not in ("temporal-ui", "fake-marketplace") and not limits.get("memory"):
                problems.append(f"{name}: no memory limit")
        for port in service.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: publishes {port} beyond this host's loopback")
    for name in CONNECTOR_SERVICES:
        service = services(compose).get(name, {})
        if service.get("cap_drop") != ["ALL"] or not service.get("read_only"):
            problems.append(f"{name}: not read-only with every capability dropped")
    return problems


def ops_problems(compose: Compose) -> list[str]:
    api = services(compose).get("api", {})
    ops_port = environment(api).get("OPS_PORT", "")
    problems = []
    if f"127.0.0.1:{ops_port}:{ops_port}" not in (api.get("ports") or []):
        problems.append(f"api: its ops listener ({ops_port!r}) is not published on loopback")
    endpoint = environment(services(compose).get("temporal-ui", {})).get(
        "TEMPORAL_CODEC_ENDPOINT", ""
    )
    if (
        not endpoint.startswith(("http://localhost:", "http://127.0.0.1:"))
        or ops_port not in endpoint
    ):
        problems.append(
            f"temporal-ui: TEMPORAL_CODEC_ENDPOINT {endpoint!r} is not the ops listener as the "
            "operator's browser reaches it"
        )
    return problems


CHECKS: dict[str, Check] = {
    "image_built_once": built_once_problems,
    "secrets_in_files": secret_problems,
    "encryption_required": encryption_problems,
    "demo_behind_profile": demo_problems,
    "hardened": hardening_problems,
    "ops_listener_for_the_ui": ops_problems,
    "depends_on": dependency_problems,
    "no_cycles": cycle_problems,
    "pinned_images": image_problems,
    "worker_scales": worker_scaling_problems,
    "temporal_by_service_name": temporal_address_problems,
    "warehouse_db_by_service_name": warehouse_db_problems,
    "worker_shares_no_volume": worker_volume_problems,
    "healthchecks": healthcheck_problems,
    "worker_stops_gracefully": stop_grace_problems,
    "prometheus_scrapes_all": prometheus_problems,
    "search_attributes": search_attribute_problems,
    "referenced_files_exist": file_reference_problems,
}


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
def test_compose_file(check: Check) -> None:
    problems = check(load_compose())
    assert not problems, "\n".join(problems)


# --- Each check can fail ------------------------------------------------------------------------


def _worker(c: Compose) -> dict[str, Any]:
    return c["services"]["worker"]


def _set_env(service: str, key: str, value: str) -> Breakage:
    return lambda c: c["services"][service]["environment"].update({key: value})


def _drop_attribute(c: Compose) -> None:
    c["services"]["temporal-namespace"].pop("configs")


BREAKAGES: list[tuple[str, Breakage]] = [
    ("image_built_once", lambda c: c["services"]["api"].update(build=".")),
    ("image_built_once", lambda c: c["services"]["api"].update(image="other:1")),
    ("secrets_in_files", _set_env("api", "SELLER_APP_TOKEN", "hunter2")),
    ("secrets_in_files", _set_env("worker", "PAYLOAD_ENCRYPTION_KEY", "k:abc")),
    ("secrets_in_files", lambda c: c["services"]["api"]["secrets"].remove("ops_token")),
    ("encryption_required", _set_env("worker", "REQUIRE_PAYLOAD_ENCRYPTION", "false")),
    ("demo_behind_profile", lambda c: c["services"]["fake-marketplace"].pop("profiles")),
    (
        "demo_behind_profile",
        _set_env("api", "MARKETPLACE_ALLOWED_HOSTS", "*.vtex.com,fake-marketplace"),
    ),
    ("hardened", lambda c: c["services"]["api"].pop("logging")),
    ("hardened", lambda c: c["services"]["api"].update(ports=["8000:8000"])),
    ("hardened", lambda c: _worker(c).pop("cap_drop")),
    ("hardened", lambda c: _worker(c)["deploy"].pop("resources")),
    (
        "ops_listener_for_the_ui",
        _set_env("temporal-ui", "TEMPORAL_CODEC_ENDPOINT", "http://api:8001/codec"),
    ),
    (
        "ops_listener_for_the_ui",
        lambda c: c["services"]["api"].update(ports=["127.0.0.1:8000:8000"]),
    ),
    ("depends_on", lambda c: _worker(c)["depends_on"].update({"nope": None})),
    ("depends_on", lambda c: _worker(c).update(depends_on=["temporal-namespace"])),
    ("depends_on", lambda c: c["services"]["postgresql"].pop("healthcheck")),
    ("depends_on", lambda c: c["services"]["temporal-schema"].update(restart="always")),
    ("no_cycles", lambda c: c["services"]["postgresql"].update(depends_on={"worker": None})),
    ("pinned_images", lambda c: c["services"]["postgresql"].update(image="postgres:latest")),
    ("pinned_images", lambda c: c["services"]["prometheus"].update(image="prom/prometheus")),
    ("worker_scales", lambda c: _worker(c)["deploy"].update(replicas=1)),
    ("worker_scales", lambda c: _worker(c).update(container_name="worker")),
    ("worker_scales", lambda c: _worker(c).update(ports=["9464:9464"])),
    ("temporal_by_service_name", _set_env("api", "TEMPORAL_ADDRESS", "localhost:7233")),
    ("warehouse_db_by_service_name", _set_env("worker", "WAREHOUSE_URL", "sqlite:////data/w.db")),
    ("warehouse_db_by_service_name", _set_env("api", "WAREHOUSE_URL", "sqlite:////data/w.db")),
    ("warehouse_db_by_service_name", lambda c: _worker(c)["environment"].pop("WAREHOUSE_URL")),
    ("warehouse_db_by_service_name", _set_env("worker", "WAREHOUSE_URL", "postgresql:warehouse")),
    (
        "warehouse_db_by_service_name",
        _set_env("worker", "WAREHOUSE_URL", "postgresql+psycopg://w:w@db.example:5432/warehouse"),
    ),
    (
        "warehouse_db_by_service_name",
        _set_env("worker", "WAREHOUSE_URL", "postgresql+psycopg://w:w@postgresql:5432/other"),
    ),
    ("worker_shares_no_volume", lambda c: _worker(c).update(volumes=["postgresql-data:/data"])),
    ("healthchecks", lambda c: c["services"]["prometheus"].pop("healthcheck")),
    ("worker_stops_gracefully", lambda c: _worker(c).update(stop_grace_period="10s")),
    ("prometheus_scrapes_all", _set_env("worker", "WORKER_METRICS_ADDRESS", "0.0.0.0:9999")),
    ("prometheus_scrapes_all", _set_env("worker", "WORKER_METRICS_ADDRESS", "127.0.0.1:9464")),
    ("prometheus_scrapes_all", _set_env("api", "OPS_PORT", "8080")),
    ("prometheus_scrapes_all", lambda c: c["configs"]["prometheus-config"].update(file="nope")),
    ("search_attributes", _drop_attribute),
    ("referenced_files_exist", lambda c: c["configs"]["postgres-init"].update(file="nope")),
    ("referenced_files_exist", lambda c: _worker(c).update(volumes=["./nope.txt:/app/x"])),
]


@pytest.mark.parametrize(("check", "breakage"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_check_catches_a_breakage(check: str, breakage: Breakage) -> None:
    compose = copy.deepcopy(load_compose())
    breakage(compose)
    assert CHECKS[check](compose), f"{check} did not notice the breakage"
