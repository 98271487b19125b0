"""`run_demo`: start the mesh, drive traffic through it while the fault script runs, report, stop everything.

The order: Consul (a real one when CONSUL_HTTP_ADDR answers, else the dev agent as a child) -> the traffic
driver's own mesh (its certificate from the Connect CA) -> every shop process at once (each waits for what it
needs) -> readiness (sidecars' ``/ready``; SDK services' grpc.health.v1 over mTLS and their Consul check) -> one
checkout end to end -> traffic, faults and a sample of the mesh each second -> the report.
Whatever happens (an error, Ctrl-C, SIGTERM) the supervisor stops every child before `run_demo` returns.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiohttp
import grpc
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from meshlet.config import load_config, normalise_consul_address
from meshlet.config.schema import TelemetryConfig
from meshlet.demo import timeline
from meshlet.demo.addresses import mesh_table, print_addresses, without_password, write_client_certs
from meshlet.demo.driver import Driver
from meshlet.demo.http_driver import HttpDriver
from meshlet.demo.probes import Probes, reserved_ports
from meshlet.demo.report import Findings, render
from meshlet.demo.sampler import WATCHED, Sampler, scrape_all
from meshlet.demo.script import HEALTHY, SCRIPT, FaultStep, Schedule
from meshlet.demo.stats import verdict
from meshlet.demo.supervisor import ChildFailed, Supervisor
from meshlet.demo.timeline import Event
from meshlet.demo.topology import (
    HOST,
    ChildSpec,
    Settings,
    Topology,
    agent_spec,
    child_environment,
    child_specs,
    client_config,
    edge_spec,
    plan_topology,
)
from meshlet.demo.traces import load_run_spans, pick_trace
from meshlet.mesh import Mesh
from meshlet.runtime import run
from meshlet.security.certs import channel_credentials, channel_options
from meshlet.telemetry.logging import JsonFormatter

READY_S = 90.0  # a bound on start-up (11 Python processes on a small machine), not an expectation
WARM_UP_S = 30.0
SPAN_FLUSH_S = 1.5  # children export spans every 0.5 s (OTEL_BSP_SCHEDULE_DELAY below)
JAEGER_UI = "http://localhost:16686/trace/"
HTTP_SHARE = 0.25  # of the checkouts per second, sent over HTTP/JSON through meshlet-edge; the rest over gRPC

Check = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 30.0
    rate: float = 40.0
    faults: bool = True
    keep_running: bool = False
    otlp_endpoint: str | None = None
    deadline_s: float = 2.0


class DemoFailed(Exception):
    """The mesh could not be started or reached: the message says what, and where the logs are."""


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo to its verdict: 0 when the gateway's callers saw at least 99% success."""
    console = console or Console()
    folder = Path(tempfile.mkdtemp(prefix="meshlet-demo-"))
    _log_to(folder / "demo.log")
    code = 1
    with Supervisor(folder) as supervisor:
        try:
            code = run(_main(options, console, supervisor, folder), prog="meshlet demo")
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: stopping every process the demo started")
            code = 130
        except asyncio.CancelledError:
            console.print("[yellow]terminated[/yellow]: stopping every process the demo started")
            code = 143
        except DemoFailed as error:
            console.print(f"[bold red]demo failed[/bold red]: {error}")
            code = 1
    if code == 0 and not options.keep_running:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        console.print(f"[dim]logs, configs and span files of this run: {folder}[/dim]")
    return code


def _log_to(path: Path) -> None:
    """The demo's own log lines (its traffic driver's mesh) go to a file: the terminal belongs to the report."""
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


async def _main(options: DemoOptions, console: Console, supervisor: Supervisor, folder: Path) -> int:
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed or the SSH session dropped
        loop.add_signal_handler(sig, main.cancel)
    async with aiohttp.ClientSession() as session:
        settings, topology, agent = await _plan(options, console, folder, session)
        probes = Probes(session, settings.consul_address)
        launcher = _Launcher(supervisor, settings)
        if agent is not None:
            launcher.start(agent)
            await _wait(console, supervisor, {"Consul (dev agent)": probes.consul_answers}, [agent.name])
        env = child_environment(os.environ, settings, {})  # CONSUL_HTTP_TOKEN and OTEL_* as the children get them
        config = load_config(None, env=env, overrides=client_config(topology, settings))
        async with Mesh(config) as mesh:  # the traffic driver's; its certificate also asks the SDK services' health
            specs = _write_children(topology, settings)
            for spec in specs.values():
                launcher.start(spec)
            await _wait(console, supervisor, _readiness(topology, probes, mesh), list(specs))
            console.print(mesh_table(topology, settings, agent is not None))
            findings = await _drive(
                options, console, supervisor, launcher, topology, probes, mesh, specs, settings.edge_store
            )
            if options.keep_running:
                write_client_certs(mesh, folder)
        console.print(render(findings))
        if options.keep_running:
            print_addresses(console, topology, folder)
            await asyncio.Event().wait()  # until Ctrl-C or SIGTERM
        return findings.verdict.exit_code


# ---------------------------------------------------------------------------------------------- start


class _Launcher:
    """Starts children with the demo's environment: the shop importable, Consul's address, spans exported often."""

    def __init__(self, supervisor: Supervisor, settings: Settings) -> None:
        self.supervisor = supervisor
        self.settings = settings
        extra = {"OTEL_BSP_SCHEDULE_DELAY": "500"}
        if path := _services_path():
            extra["PYTHONPATH"] = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH", "")) if p)
        self.extra = extra

    def start(self, spec: ChildSpec) -> None:
        env = child_environment(os.environ, self.settings, {**self.extra, **spec.env})
        self.supervisor.start(spec, env)


def _services_path() -> str | None:
    """The folder that holds the sample shop's ``meshlet_shop`` package, when it is not installed but found here."""
    spec = importlib.util.find_spec("meshlet_shop")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


async def _plan(
    options: DemoOptions, console: Console, folder: Path, session: aiohttp.ClientSession
) -> tuple[Settings, Topology, ChildSpec | None]:
    """Pick Consul and the ports; returns the dev agent's spec when the demo must start one."""
    span_files = "span_file" in TelemetryConfig.model_fields
    external = os.environ.get("CONSUL_HTTP_ADDR")
    with reserved_ports() as ports:
        agent: ChildSpec | None = None
        address = normalise_consul_address(external) if external else ""
        if external and await Probes(session, address).consul_answers():
            console.print(f"[bold]Consul[/bold]: using the agent at {address} (CONSUL_HTTP_ADDR)")
        else:
            if external:
                console.print(f"[yellow]CONSUL_HTTP_ADDR={external} does not answer[/yellow]: starting the dev agent")
            port = next(ports)
            address = f"http://{HOST}:{port}"
            agent = agent_spec(sys.executable, port)
        edge_store = os.environ.get("REDIS_URL") or "memory"
        if edge_store != "memory":
            shown = without_password(edge_store)
            console.print(f"[bold]Redis[/bold]: the edge keeps its rate limits and cache at {shown} (REDIS_URL)")
        settings = Settings(sys.executable, address, options.otlp_endpoint, span_files, edge_store)
        topology = plan_topology(folder, ports)
    return settings, topology, agent


def _write_children(topology: Topology, settings: Settings) -> dict[str, ChildSpec]:
    specs: dict[str, ChildSpec] = {}
    for instance in topology.instances:
        if instance.sidecar is not None:
            topology.faults_file(instance.name).write_text(json.dumps(HEALTHY.as_json()))
        for spec in child_specs(topology, instance, settings):
            specs[spec.name] = spec
    if topology.edge is not None:
        edge = edge_spec(topology, settings, _shop_descriptor_set())
        specs[edge.name] = edge
    for spec in specs.values():
        if spec.config_path is not None and spec.config is not None:
            spec.config_path.write_text(yaml.safe_dump(dict(spec.config), sort_keys=False))
    return specs


def _shop_descriptor_set() -> Path:
    """The shop's FileDescriptorSet, which `make protos` writes beside the generated modules (and the wheel ships)."""
    return Path(str(resources.files("meshlet_shop_api") / "descriptors.binpb"))


def _readiness(topology: Topology, probes: Probes, mesh: Mesh) -> dict[str, Check]:
    """What "ready" means per instance: a sidecar's /ready (which includes its app's health); an SDK service
    answering grpc.health.v1 SERVING over mTLS and passing in Consul, where its callers find it."""
    checks: dict[str, Check] = {}
    for instance in topology.instances:
        if instance.admin_url is not None:
            admin = instance.admin_url

            async def sidecar_ready(admin: str = admin) -> bool:
                return await probes.ready(admin)

            checks[instance.name] = sidecar_ready
        else:

            async def serving(service: str = instance.service, endpoint: str = instance.endpoint) -> bool:
                found = await probes.passing(service)
                return (
                    found is not None
                    and endpoint in found
                    and await probes.grpc_serving(endpoint, *_tls(mesh, service))
                )

            checks[instance.name] = serving
    if topology.edge is not None:
        edge_admin = topology.edge.admin_url

        async def edge_ready() -> bool:  # its routes loaded and every upstream found in Consul
            return await probes.ready(edge_admin)

        checks["edge"] = edge_ready
    return checks


def _tls(mesh: Mesh, service: str) -> tuple[grpc.ChannelCredentials, tuple[tuple[str, str], ...]]:
    """Credentials and options to call `service` with the mesh's certificate, verifying that it is `service`."""
    assert mesh.tls_source is not None, "the demo runs with tls.source consul"
    material = mesh.tls_source.current()
    me = material.identity
    by_cn = material.identity_dns_name is None
    options = channel_options(service, me.namespace, me.datacenter, me.trust_domain, by_common_name=by_cn)
    return channel_credentials(material), options


async def _wait(console: Console, supervisor: Supervisor, checks: Mapping[str, Check], children: list[str]) -> None:
    """Poll every check until all pass; fail naming who is not ready (and why, from its log) or who died."""
    loop = asyncio.get_running_loop()
    until = loop.time() + READY_S
    waiting = dict(checks)
    with console.status(f"starting: {', '.join(waiting)}") as status:
        while waiting:
            try:
                supervisor.check_alive(children)
            except ChildFailed as error:
                raise DemoFailed(str(error)) from None
            results = await asyncio.gather(*(check() for check in waiting.values()))
            waiting = {name: check for (name, check), ok in zip(waiting.items(), results, strict=True) if not ok}
            if not waiting:
                break
            if loop.time() > until:
                late = [
                    c for c in supervisor.running() if c.name in waiting or c.name.removeprefix("sidecar-") in waiting
                ]
                tails = "\n".join(f"--- {child.name}: {child.log_path}\n{child.tail(5)}" for child in late)
                raise DemoFailed(f"not ready after {READY_S:.0f}s: {', '.join(waiting)}\n{tails}")
            status.update(f"waiting for: {', '.join(waiting)}")
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------------------------- run


async def _drive(
    options: DemoOptions,
    console: Console,
    supervisor: Supervisor,
    launcher: _Launcher,
    topology: Topology,
    probes: Probes,
    mesh: Mesh,
    specs: Mapping[str, ChildSpec],
    edge_store: str,
) -> Findings:
    channel = mesh.channel("gateway")
    grpc_rate = options.rate * (1 - HTTP_SHARE) if topology.edge else options.rate
    driver = Driver(channel, rate=grpc_rate, duration_s=options.duration_s, deadline_s=options.deadline_s)
    http = HttpDriver(
        topology.edge.url if topology.edge else "",
        rate=options.rate - grpc_rate,
        duration_s=options.duration_s,
        deadline_s=options.deadline_s,
        cache_store=without_password(edge_store),
    )
    with console.status("one checkout end to end: gateway -> orders -> inventory, payments"):
        problem = await driver.warm_up(WARM_UP_S)
    if problem is not None:
        raise DemoFailed(f"no checkout succeeded within {WARM_UP_S:.0f}s; the last error: {problem}")
    schedule = Schedule(SCRIPT if options.faults else (), options.duration_s)
    sampler = Sampler(topology, probes)
    events: list[Event] = []
    progress = Progress(
        TextColumn("[bold]traffic[/bold]"),
        BarColumn(bar_width=20),
        TimeElapsedColumn(),
        TextColumn("[green]ok {task.fields[ok]}[/green] [red]failed {task.fields[failed]}[/red]"),
        TextColumn("[magenta]{task.description}[/magenta]"),
        console=console,
    )
    with progress:
        bar = progress.add_task(schedule.phase(0), total=driver.planned, ok=0, failed=0)
        traffic = asyncio.create_task(driver.run())
        http_traffic = asyncio.create_task(http.run())
        sampling = asyncio.create_task(sampler.run(driver.elapsed))
        try:
            while not traffic.done():
                elapsed = driver.elapsed()
                for step in schedule.due(elapsed):
                    _apply(step, supervisor, launcher, topology, specs)
                    events.append(Event(elapsed, "fault", step.says))
                tally, phase = driver.tally, schedule.phase(elapsed)
                progress.update(bar, completed=tally.done, description=phase, ok=tally.ok, failed=tally.failed)
                await asyncio.wait({traffic}, timeout=0.1)
            await traffic
            await http_traffic
            progress.update(bar, completed=driver.tally.done, ok=driver.tally.ok, failed=driver.tally.failed)
        finally:
            sampling.cancel()
            traffic.cancel()
            http_traffic.cancel()
            await asyncio.gather(sampling, traffic, http_traffic, return_exceptions=True)
    await sampler.sample(driver.elapsed())
    for child in supervisor.exited():  # a crash the script did not cause: say so beside the numbers
        said = f"exited (status {child.popen.returncode}); see {child.log_path}"
        events.append(Event(driver.elapsed(), child.name, said))
    metrics = await scrape_all(topology, probes)
    if mesh.tracing is not None:  # the driver's own spans are the roots of every trace
        await asyncio.to_thread(mesh.tracing.force_flush)
    await asyncio.sleep(SPAN_FLUSH_S)
    spans = load_run_spans(topology.folder)
    trace = pick_trace(spans) if not isinstance(spans, str) else spans
    jaeger = f"{JAEGER_UI}{trace.trace_id}" if options.otlp_endpoint and trace and not isinstance(trace, str) else None
    names = {i.endpoint: i.name for i in topology.instances if i.service in WATCHED}
    return Findings(
        duration_s=options.duration_s,
        rate=options.rate,
        tally=driver.tally,
        verdict=verdict(driver.tally),
        endpoints=names,
        snapshots=sampler.snapshots,
        events=sorted([*events, *timeline.events(sampler.snapshots, names)], key=lambda e: e.t),
        metrics=metrics,
        trace=trace if trace is not None else "no traces collected",
        jaeger_url=jaeger,
        faults=options.faults,
        http=http.seen if http.planned else None,
    )


def _apply(
    step: FaultStep, supervisor: Supervisor, launcher: _Launcher, topology: Topology, specs: Mapping[str, ChildSpec]
) -> None:
    """Carry out one step of the script: rewrite a faults file (atomically), kill an app, or start it again."""
    if step.action == "faults":
        path = topology.faults_file(step.target)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(step.faults.as_json()))
        scratch.replace(path)
    elif step.action == "kill":
        supervisor.kill(step.target)
    else:
        launcher.start(specs[step.target])
