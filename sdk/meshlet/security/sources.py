"""Where TLS material comes from, per ``tls.source``: PEM files reloaded when they change on disk, or the
Consul Connect CA's leaf and roots followed through blocking queries. Both keep serving their last good
material while the next is unreadable or the agent is away (a stale certificate beats no mTLS), and tell
subscribers about each rotation, which `server_credentials` and the channels act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshlet.config import Config
from meshlet.errors import ConfigError
from meshlet.security.certs import CertificateSource, TlsConfigError, TlsMaterial

log = logging.getLogger(__name__)

# meshlet.discovery.consul_client.consul_factory builds these; security may not import a sibling mechanism.
ConsulFactory = Callable[[], Any]
Callback = Callable[[TlsMaterial], None]
ROOTS_PATH = "/v1/agent/connect/ca/roots"
_Stamp = tuple[tuple[int, int, int, int, int] | None, ...]


class AgentRefused(Exception):
    """The agent answered, but not with a 200 (an ACL denial, Connect disabled): retried like no answer."""


class _Publisher:
    """What every source shares: the current material and the subscribers told about a new one."""

    def __init__(self) -> None:
        self._material: TlsMaterial | None = None
        self._callbacks: list[Callback] = []

    def current(self) -> TlsMaterial:
        if self._material is None:
            raise RuntimeError(f"{self!r} has no material yet: await start() before using it")
        return self._material

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def _publish(self, material: TlsMaterial, origin: str) -> None:
        old, self._material = self._material, material
        if old is not None and old.serial == material.serial:
            log.info("trust bundle from %s updated: %r", origin, material)
        else:
            log.info("TLS material from %s rotated to %r", origin, material)
        for callback in tuple(self._callbacks):
            try:
                callback(material)
            except Exception:
                log.exception("a subscriber to %s failed on rotation; the others were still told", origin)


class FileSource(_Publisher):
    """PEM files on disk, polled every `poll_interval_s` for a change of inode, size or mtime.

    Both ways files rotate are seen: a Kubernetes secret mount swaps its ``..data`` symlink (each path then
    resolves to a new inode), cert-manager and ``meshlet certs issue`` replace or rewrite the files. A
    half-written rotation (a key that does not match the certificate yet, a file missing for a moment) is
    ignored with one warning, the old material still served, and retried on every poll until consistent.
    """

    def __init__(
        self,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        ca: str | os.PathLike[str],
        poll_interval_s: float = 1.0,
        *,
        trust_domain: str | None = None,
        service: str | None = None,
    ) -> None:
        super().__init__()
        self.cert, self.key, self.ca = Path(cert), Path(key), Path(ca)
        self.poll_interval_s = poll_interval_s
        self.trust_domain = trust_domain
        self.service = service  # service.name: a certificate must name it, or we would serve as another service
        self._stamp: _Stamp = ()
        self._problem: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._material is None:
            self._stamp = self._stat()
            material = self._load()
            mismatch = self._other_service(material)
            if mismatch is not None:
                raise ConfigError(
                    "tls.cert",
                    str(self.cert),
                    f"{mismatch}: issue a certificate for {self.service} "
                    f"(meshlet certs issue <ca folder> {self.service}), or correct service.name",
                )
            self._material = material
            _warn_if_expired(self._material, str(self.cert))
            log.info("TLS material loaded from %s: %r", self.cert, self._material)
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name=f"tls-files:{self.cert}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poll(self) -> bool:
        """Look at the files once; when they changed and agree, publish the new material and return True."""
        serving = self.current()
        stamp = self._stat()
        if stamp == self._stamp and self._problem is None:
            return False
        self._stamp = stamp
        try:
            material = self._load()
            mismatch = self._other_service(material)
            if mismatch is not None:
                raise TlsConfigError(f"{self.cert} {mismatch}")
        except TlsConfigError as exc:
            if self._problem is None:
                log.warning(
                    "TLS files changed but are not usable yet, still serving serial %s until they are: %s",
                    serving.serial,
                    exc,
                )
            self._problem = str(exc)
            return False
        self._problem = None
        if material == serving:
            return False
        _warn_if_expired(material, str(self.cert))
        self._publish(material, str(self.cert))
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                self.poll()
            except Exception:  # never let a surprise stop rotation for good
                log.exception("checking %s for rotation failed; trying again", self.cert)

    def _stat(self) -> _Stamp:
        """What changes when a file is replaced or rewritten; os.stat follows the ``..data`` symlinks."""
        stamps: list[tuple[int, int, int, int, int] | None] = []
        for path in (self.cert, self.key, self.ca):
            try:
                s = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
        return tuple(stamps)

    def _load(self) -> TlsMaterial:
        parts = []
        for name, path in (("cert", self.cert), ("key", self.key), ("ca", self.ca)):
            try:
                parts.append(path.read_bytes())
            except OSError as exc:
                raise TlsConfigError(
                    f"tls.{name} {path} cannot be read ({exc.strerror or exc}): point tls.{name} at a readable PEM file"
                ) from None
        material = TlsMaterial.from_pem(
            *parts, cert_origin=str(self.cert), key_origin=str(self.key), ca_origin=str(self.ca)
        )
        if self.trust_domain and material.identity.trust_domain != self.trust_domain:
            raise TlsConfigError(
                f"the certificate in {self.cert} is for trust domain {material.identity.trust_domain!r}, not "
                f"tls.trust_domain {self.trust_domain!r}: issue it from this mesh's CA, or correct tls.trust_domain"
            )
        return material

    def _other_service(self, material: TlsMaterial) -> str | None:
        """Why `material` is another service's certificate, or None when it names service.name (or none is set):
        served, it would make every caller reach this process as that other service (wrongsvc with client.crt)."""
        named = material.identity.service
        if self.service is None or named == self.service:
            return None
        return (
            f"holds the certificate of service {named!r} ({material.spiffe_id}), not of service.name {self.service!r}"
        )

    def __repr__(self) -> str:
        state = "not started" if self._material is None else f"serial {self._material.serial}"
        failing = f", ignoring a bad rotation ({self._problem})" if self._problem else ""
        return f"<FileSource {self.cert}: {state}{failing}>"


class ConsulConnectSource(_Publisher):
    """Our service's leaf and the CA roots from the local Consul agent, followed by two blocking-query loops.

    The agent renews the leaf before it expires (between 60 % and 90 % of its life) and reissues it after a
    root rotation; its blocking leaf query answers as soon as it has, so each renewal arrives at once. A
    leaf and roots that do not agree yet (a new root's leaf seen before the new roots) are held back until
    they do. When the agent is away, the last good material stays and the loops retry with jittered
    exponential backoff from `backoff_base_s` to `backoff_max_s`.
    """

    def __init__(
        self,
        consul: ConsulFactory,
        service: str,
        *,
        rng: random.Random,
        wait_s: float = 60.0,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 5.0,
        start_timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        self.service = service
        self._factory = consul
        self._rng = rng
        self._wait = f"{int(wait_s)}s" if wait_s == int(wait_s) else f"{round(wait_s * 1000)}ms"
        self._timeout_s = wait_s + wait_s / 16 + 5.0  # Consul adds up to wait/16 of jitter to the wait
        self._backoff = (backoff_base_s, backoff_max_s)
        self._start_timeout_s = start_timeout_s
        self._leaf_path = f"/v1/agent/connect/ca/leaf/{service}"
        self._answers: dict[str, Any] = {}
        self._indexes = {self._leaf_path: 0, ROOTS_PATH: 0}
        self._held_back = False
        self._client: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self._material is not None:
            return
        self._client = self._factory()
        try:
            self._material = await self._first_material()
        except BaseException:
            await self._close_client()
            raise
        log.info("TLS material from the Consul Connect CA: %r", self._material)
        self._explain_verification(self._material)
        self._tasks = [
            asyncio.create_task(self._follow(path), name=f"tls-consul:{path}") for path in (self._leaf_path, ROOTS_PATH)
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_client()

    async def _first_material(self) -> TlsMaterial:
        """Non-blocking queries for the leaf and the roots, retried until `start_timeout_s`: an agent that
        starts next to us may answer a moment later than we ask."""
        failures, problem = 0, "no answer"
        try:
            async with asyncio.timeout(self._start_timeout_s):
                for path in (self._leaf_path, ROOTS_PATH):
                    while path not in self._answers:
                        try:
                            self._indexes[path], self._answers[path] = await self._get(path, 0)
                        except Exception as exc:
                            failures, problem = failures + 1, _describe(exc)
                            await asyncio.sleep(self._delay(failures))
        except TimeoutError:
            raise TlsConfigError(
                f"the Consul agent at {_address(self._client)} gave no Connect CA leaf for {self.service!r} and "
                f"roots within {self._start_timeout_s}s ({problem}): check consul.address (CONSUL_HTTP_ADDR), "
                "that Connect is enabled and the token may write the service, or set tls.source to files"
            ) from None
        try:
            return self._build()
        except (KeyError, TypeError) as exc:
            raise TlsConfigError(
                f"the Consul agent's Connect CA answer lacks what meshlet reads ({_describe(exc)}); is it Consul?"
            ) from None

    async def _follow(self, path: str) -> None:
        failures = 0
        while True:
            try:
                index, answer = await self._get(path, self._indexes[path])
            except Exception as exc:
                failures += 1
                self._indexes[path] = 0  # the agent that answers next may be a new one, with a lower index
                if failures == 1:
                    log.warning("%s failed, keeping the current TLS material: %s", path, _describe(exc))
                await asyncio.sleep(self._delay(failures))
                continue
            if failures:
                log.info("%s answers again after %d failures", path, failures)
                failures = 0
            # Consul's rules: an index that went backwards restarts with a non-blocking query; never block on 0.
            self._indexes[path] = 0 if index < self._indexes[path] else max(index, 1)
            if answer != self._answers.get(path):
                self._answers[path] = answer
                self._rebuild()
            else:
                await asyncio.sleep(0.1)  # a wait that timed out; a pause keeps a misbehaving agent from spinning us

    async def _get(self, path: str, index: int) -> tuple[int, Any]:
        params = [("index", str(index)), ("wait", self._wait)] if index else []
        token = getattr(self._client, "token", None)
        response = await self._client.http.get(
            lambda answer: answer,
            path,
            params=params,
            headers={"X-Consul-Token": token} if token else None,
            connections_timeout=self._timeout_s,
        )
        if response.code != 200:
            raise AgentRefused(f"{path} answered {response.code}: {str(response.body).strip()[:200]}")
        return int(response.headers.get("X-Consul-Index", 0)), json.loads(response.body)

    def _build(self) -> TlsMaterial:
        leaf, roots = self._answers[self._leaf_path], self._answers[ROOTS_PATH]
        bundle = "".join(_pem_block(root["RootCert"]) for root in roots["Roots"])
        where = f"the Connect CA leaf of {self.service} ({self._leaf_path})"
        return TlsMaterial.from_pem(
            _pem_block(leaf["CertPEM"]).encode(),
            _pem_block(leaf["PrivateKeyPEM"]).encode(),
            bundle.encode(),
            cert_origin=where,
            key_origin=where,
            ca_origin=f"the Connect CA roots ({ROOTS_PATH})",
        )

    def _rebuild(self) -> None:
        try:
            material = self._build()
        except (TlsConfigError, KeyError, TypeError) as exc:
            if not self._held_back:
                log.warning("the Connect CA leaf and roots do not agree yet, keeping serial %s: %s",
                            self.current().serial, _describe(exc))  # fmt: skip
            self._held_back = True
            return
        self._held_back = False
        if material != self._material:
            self._publish(material, f"the Connect CA ({self.service})")

    def _delay(self, failures: int) -> float:
        base_s, max_s = self._backoff
        cap = min(max_s, base_s * 2 ** min(failures - 1, 32))
        return self._rng.uniform(cap / 2, cap)

    def _explain_verification(self, material: TlsMaterial) -> None:
        """Said once, at start: what mTLS proves with this CA, and what it cannot."""
        if material.identity_dns_name is not None:
            return
        log.warning(
            "the Connect CA leaf %s carries no DNS SAN (%s), as a real Consul's does not. Verified: inbound, "
            "callers' certificates chain to the Connect CA roots and their SPIFFE ID is read for intentions; "
            "outbound, servers' certificates chain to the same roots and their common name is the upstream's "
            "Consul ServiceCN (service and namespace). Not verified outbound: the server's SPIFFE URI itself "
            "(its datacenter and full trust domain), because grpcio matches server names against DNS SANs and "
            "the common name only",
            material.spiffe_id,
            material.identity.dns_name,
        )

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def __repr__(self) -> str:
        state = "not started" if self._material is None else f"serial {self._material.serial}"
        return f"<ConsulConnectSource {self.service}: {state}, leaf index {self._indexes[self._leaf_path]}>"


def make_source(
    config: Config, consul_factory: ConsulFactory, service: str | None, *, rng: random.Random | None = None
) -> CertificateSource | None:
    """The source ``tls.source`` names, not started; None for ``off``, after a warning that traffic is
    plaintext (the issue's "for local experiments" mode)."""
    tls = config.tls
    if tls.source == "off":
        log.warning(
            "tls.source is off: calls to and from %s are plaintext and unauthenticated, and intentions cannot "
            "identify callers; set tls.source to consul or files for mTLS",
            service or "this process",
        )
        return None
    if tls.source == "files":
        assert tls.cert is not None, "config validation requires cert, key and ca for files"
        assert tls.key is not None
        assert tls.ca is not None
        return FileSource(tls.cert, tls.key, tls.ca, trust_domain=tls.trust_domain, service=service or None)
    if not service:
        fix = "set service.name (MESHLET_SERVICE__NAME) to this process's service, a client's too"
        raise ConfigError(
            "service.name", service, f"is required when tls.source is 'consul' (the leaf is per service): {fix}"
        )
    return ConsulConnectSource(consul_factory, service, rng=rng or random.Random())


def _warn_if_expired(material: TlsMaterial, origin: str) -> None:
    if material.not_after <= time.time():
        expired = datetime.fromtimestamp(material.not_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.warning("the certificate in %s expired at %s: peers will refuse it; issue a new one", origin, expired)


def _pem_block(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _address(client: Any) -> str:
    return str(getattr(getattr(client, "http", None), "base_uri", "(unknown address)"))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
