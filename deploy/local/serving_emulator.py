#!/usr/bin/env python3
"""The serving emulator: the container runtime and prober for pods that should serve a model.

KWOK plays the kubelets but runs nothing. For every pod annotated inference-portal.io/emulate=vllm,
in the host cluster and in every tenant cluster (Secrets vc-<name> in the host), once KWOK has it
Running, this process does what the kubelet and the container runtime would:
  - runs one vllm_emulator.py on a free loopback port, with the pod's vLLM flags
    (--served-model-name, --model, --max-model-len, --max-num-seqs), the key its VLLM_API_KEY
    names (secretKeyRef), the load time in annotation inference-portal.io/load-delay and the fail
    mode in inference-portal.io/emulate-fail (none, unready, 500, oom-log, hub-401; the first
    three also switch a running emulator);
  - keeps the emulator's output as the container's log, in the CRI format, and registers a KWOK
    `Logs` object for the pod, so `kubectl logs` (GET pods/<pod>/log, --previous too) reaches it
    through the API server and KWOK's server, as it would reach a kubelet;
  - probes /health as the pod's startup, readiness and liveness probes say (readiness on /health
    every 5 s when the pod has none) and writes the pod's Ready condition and container status from
    the answers; one extra probe goes out as soon as the log says the server started, which a
    kubelet would only send at its next period;
  - when the emulator exits, reports the container terminated with its exit code and restarts it
    with the kubelet's back-off (at once, then CrashLoopBackOff 10 s, 20 s ... 5 min), counting
    restartCount, keeping the last run's log as the previous one;
  - registers a Prometheus target with the labels a ServiceMonitor gives (namespace, pod, service,
    model_name, container) plus cluster, tenant and endpoint from the pod's labels;
  - writes a record per pod (lp/serving.py) that the gateway's data plane reads the port from;
  - on pod deletion sends SIGTERM (the emulator drains), removes the target and the record.
Restart-safe: records outlive the process; on start it adopts emulators that still run (after a
crash of this process), restarts those that do not (restartCount + 1, last state
ContainerStatusUnknown, like a node reboot) and keeps waiting out a crashed one's back-off.
Stopping it (`platformctl down`) stops its emulators.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lp import cluster, monitoring, serving  # noqa: E402
from lp.config import LOCAL_DIR, Config  # noqa: E402
from lp.procs import port_free  # noqa: E402

log = logging.getLogger("serving-emulator")

MANAGER = "serving-emulator"
# The modes vllm_emulator.py can switch to while running (its RUNTIME_FAIL_MODES).
RUNTIME_FAIL_MODES = ("none", "unready", "500")
TICK = 0.2
# The kubelet's container restart back-off: the first restart at once, then 10 s doubling to 5 min,
# forgotten after a run of 10 min.
BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET = 10.0, 300.0, 600.0
STARTUP_LINE = b"Application startup complete"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cri_stamp() -> bytes:
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos:09d}Z".encode()


def process_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def is_emulator(pid: int, port: int) -> bool:
    """Whether PID is (still) the emulator we started on PORT, not a recycled pid."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"vllm_emulator.py") for a in argv) and str(port).encode() in argv


def container_of(pod: dict) -> dict:
    containers = pod["spec"].get("containers") or [{}]
    return next((c for c in containers if c.get("name") == "vllm"), containers[0])


def flag_values(argv: list[str]) -> dict[str, str]:
    """vLLM's `--flag value` and `--flag=value` pairs (the first value of a multi-valued flag)."""
    flags: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg.partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        flags.setdefault(name, value)
    return flags


class ConfigError(Exception):
    """What the kubelet reports as CreateContainerConfigError (a missing Secret or key)."""


@dataclass
class Probe:
    path: str
    period: float
    failure_threshold: int
    success_threshold: int
    timeout: float

    @classmethod
    def of(cls, spec: dict | None, default_period: float) -> Probe:
        spec = spec or {}
        http = spec.get("httpGet") or {}
        return cls(
            path=http.get("path") or "/health",
            period=float(spec.get("periodSeconds") or default_period),
            failure_threshold=int(spec.get("failureThreshold") or 3),
            success_threshold=int(spec.get("successThreshold") or 1),
            timeout=float(spec.get("timeoutSeconds") or 1),
        )


class PodRunner(threading.Thread):
    """The container of one emulated pod: its emulator process, log, probes and status."""

    def __init__(self, sup: Supervisor, cluster_key: str, pod: dict, record: dict | None) -> None:
        meta = pod["metadata"]
        super().__init__(daemon=True, name=f"pod {cluster_key}:{meta['namespace']}/{meta['name']}")
        self.sup, self.cfg = sup, sup.cfg
        self.cluster_key = cluster_key
        self.pod = pod
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.container = container_of(pod)
        self.dir = serving.pod_dir(self.cfg, self.uid)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.raw_log, self.current_log, self.previous_log = (
            self.dir / "emulator.log",
            self.dir / "current.log",
            self.dir / "previous.log",
        )
        self.current_log.touch()
        self.wake = threading.Event()
        self.terminating = threading.Event()
        self.done = threading.Event()
        record = record or {}
        self.record_in = record
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.port: int | None = record.get("port")
        self.offset: int = record.get("offset", 0)
        self.started_at: str = record.get("startedAt", "")
        self.started_mono = time.monotonic()
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        own = next((s for s in statuses if s.get("name") == self.container.get("name")), {})
        self.restart_count: int = record.get("restartCount", own.get("restartCount", 0))
        self.crashes: int = record.get("crashes", 0)
        self.last_state: dict | None = record.get("lastState")  # the previous run's termination
        self.exit_info: dict | None = None  # this run's termination, until the restart
        self.state = "new"  # new | running | exited | config-error | stopping
        self.backoff_until = 0.0
        self.backoff_delay = 0.0
        self.config_error = ""
        self.fail_mode = record.get("failMode", "none")
        self.kill_reason = ""
        self.started_ok = False  # the startup probe passed
        self.ready = False
        self.counts = {"startup": 0, "readiness": 0, "liveness": 0}  # consecutive failures
        self.successes = 0
        self.next_probe: dict[str, float] = {}
        spec = self.container
        self.probes = {
            "startup": Probe.of(spec.get("startupProbe"), 10) if spec.get("startupProbe") else None,
            "readiness": Probe.of(spec.get("readinessProbe"), 5),
            "liveness": Probe.of(spec.get("livenessProbe"), 10) if spec.get("livenessProbe") else None,
        }
        self.written_status: str | None = None
        self.target: dict | None = None
        self.logs_object = False
        self.warned: set[str] = set()

    # -- the loop ------------------------------------------------------------------------------

    def observe(self, pod: dict) -> None:
        self.pod = pod
        self.wake.set()

    def terminate(self) -> None:
        self.terminating.set()
        self.wake.set()

    def run(self) -> None:
        try:
            self.begin()
            while not self.terminating.is_set():
                try:
                    self.pump_log()
                    self.check_exit()
                    self.maybe_start()
                    self.probe()
                    self.sync_fail_mode()
                    self.sync_target()
                    self.write_status()
                    self.ensure_logs_object()
                except Exception:  # noqa: BLE001 - one failed call must not orphan the emulator
                    log.exception("%s: pass failed; trying again", self.name)
                    time.sleep(1)
                self.wake.wait(TICK)
                self.wake.clear()
            self.shutdown()
        finally:
            self.done.set()

    def begin(self) -> None:
        self.ensure_logs_object()
        pid = self.record_in.get("pid")
        if pid and self.port and process_alive(pid) and is_emulator(pid, self.port):
            # Adopt: the emulator outlived a previous supervisor; the pod's status says how far it got.
            self.pid, self.state = pid, "running"
            statuses = (self.pod.get("status") or {}).get("containerStatuses") or []
            own = next((s for s in statuses if s.get("name") == self.container.get("name")), {})
            self.started_ok = bool(own.get("started"))
            self.ready = bool(own.get("ready"))
            self.next_probe = {"startup": 0.0, "readiness": 0.0, "liveness": 0.0}
            log.info(
                "%s/%s: adopted the emulator on port %s (pid %s)", self.namespace, self.name, self.port, pid
            )
        elif self.record_in.get("exit"):
            # It had exited and was waiting out its back-off: carry on waiting.
            self.exit_info, self.state = self.record_in["exit"], "exited"
            self.backoff_delay = self.record_in.get("backoffDelay", 0.0)
            left = self.record_in.get("backoffUntil", 0.0) - time.time()
            self.backoff_until = time.monotonic() + max(0.0, left)
            log.info("%s/%s: still backing off its crashed emulator", self.namespace, self.name)
        elif self.record_in:
            # The emulator died while nobody watched: report it the way the kubelet does.
            self.exit_info = {
                "exitCode": 137,
                "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the serving emulator restarted",
                "startedAt": self.started_at or now_iso(),
                "finishedAt": now_iso(),
            }
            self.state = "exited"
            log.info("%s/%s: its emulator is gone; restarting it", self.namespace, self.name)
        self.write_record()

    # -- the emulator process ------------------------------------------------------------------

    def emulator_argv(self) -> tuple[list[str], dict[str, str]]:
        pod, spec = self.pod, self.container
        flags = flag_values([*(spec.get("command") or []), *(spec.get("args") or [])])
        annotations = pod["metadata"].get("annotations") or {}
        argv = [sys.executable, str(LOCAL_DIR / "vllm_emulator.py"), "--port", str(self.port)]
        for flag in ("--served-model-name", "--model", "--max-model-len", "--max-num-seqs"):
            if flags.get(flag):
                argv += [flag, flags[flag]]
        load = serving.go_duration(annotations.get(serving.LOAD_DELAY_ANNOTATION), 1.0)
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        self.fail_mode = annotations.get(serving.FAIL_ANNOTATION) or "none"
        argv += [
            "--load-seconds",
            f"{load:g}",
            "--fail-mode",
            self.fail_mode,  # a bad value fails the emulator's argument check, as a bad flag fails vLLM
            "--shutdown-timeout",
            str(min(grace, 120)),
        ]
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        for item in spec.get("env") or []:
            if item.get("name") != "VLLM_API_KEY":
                continue  # the emulator needs only the key; the rest of the env means nothing here
            if "value" in item:
                env["VLLM_API_KEY"] = item["value"]
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                value = self.secret_value(ref["name"], ref["key"])
                if value is None and not ref.get("optional"):
                    raise ConfigError(f'secret "{ref["name"]}" not found or has no key "{ref["key"]}"')
                if value is not None:
                    env["VLLM_API_KEY"] = value
        return argv, env

    def secret_value(self, name: str, key: str) -> str | None:
        kube = self.sup.clusters.get(self.cluster_key)
        if kube is None:
            return None
        secret = kube.get("secrets", self.namespace, name)
        if secret is None:
            try:
                secret = serving.request(
                    kube.api, "GET", f"/api/v1/namespaces/{self.namespace}/secrets/{name}"
                )
            except serving.ApiError:
                return None
        raw = (secret.get("data") or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()

    def start_emulator(self) -> None:
        reserved = set(self.cfg.ports.values())
        if not self.port or not port_free(self.port) or self.port in reserved:
            self.port = cluster.free_port(reserved)
        argv, env = self.emulator_argv()
        with open(self.raw_log, "ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own emulator
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.dir
            )
        self.pid = self.proc.pid
        self.state = "running"
        self.started_at = now_iso()
        self.started_mono = time.monotonic()
        self.started_ok = self.probes["startup"] is None
        self.ready = False
        self.counts = {k: 0 for k in self.counts}
        self.successes = 0
        self.kill_reason = ""
        # The kubelet probes at once (initialDelaySeconds 0), then every period.
        self.next_probe = {"startup": 0.0, "readiness": 0.0, "liveness": 0.0}
        log.info(
            "%s:%s/%s: emulator on 127.0.0.1:%s (pid %s, restart %d, fail mode %s)",
            self.cluster_key,
            self.namespace,
            self.name,
            self.port,
            self.pid,
            self.restart_count,
            self.fail_mode,
        )
        self.write_record()

    def maybe_start(self) -> None:
        if self.state == "running" or time.monotonic() < self.backoff_until:
            return
        if self.state == "exited":
            # A restart: the run that ended becomes the previous container, its log the previous log.
            self.pump_log()
            self.last_state = self.exit_info
            self.exit_info = None
            self.restart_count += 1
            self.current_log.replace(self.previous_log)
            self.current_log.touch()
            self.offset = self.raw_log.stat().st_size if self.raw_log.exists() else 0
            self.state = "new"
        try:
            self.start_emulator()
        except ConfigError as exc:
            if self.config_error != str(exc):
                log.info("%s/%s: %s", self.namespace, self.name, exc)
            self.state, self.config_error = "config-error", str(exc)
            self.backoff_until = time.monotonic() + 2
            return
        self.config_error = ""
        if self.restart_count or self.last_state:
            self.event("Normal", "Started", f"Started container {self.container.get('name')}")

    def check_exit(self) -> None:
        if self.state != "running":
            return
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return
        elif process_alive(self.pid):
            return
        else:
            code = None  # adopted: not our child, so its exit code is not ours to read
        self.pump_log()
        if code is None:
            exit_code, reason = 137, "ContainerStatusUnknown"
        else:
            exit_code = code if code >= 0 else 128 - code
            reason = "Completed" if exit_code == 0 else "Error"
        self.exit_info = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": self.started_at,
            "finishedAt": now_iso(),
        }
        if self.kill_reason:
            self.exit_info["message"] = self.kill_reason
        self.state, self.ready, self.started_ok = "exited", False, False
        self.proc, self.pid = None, None
        if time.monotonic() - self.started_mono > BACKOFF_RESET:
            self.crashes = 0
        self.backoff_delay = (
            0.0 if self.crashes == 0 else min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (self.crashes - 1))
        )
        self.crashes += 1
        self.backoff_until = time.monotonic() + self.backoff_delay
        log.info(
            "%s/%s: the emulator exited with %d (%s); restarting in %.0fs",
            self.namespace,
            self.name,
            exit_code,
            reason,
            self.backoff_delay,
        )
        if self.backoff_delay:
            self.event(
                "Warning",
                "BackOff",
                f"Back-off restarting failed container {self.container.get('name')} in pod "
                f"{self.name}_{self.namespace}({self.uid})",
            )
        self.write_record()

    def shutdown(self) -> None:
        """The pod is gone or going: SIGTERM, let the emulator drain, then forget the pod."""
        self.state = "stopping"
        pid = self.pid
        if pid and process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            grace = min(self.pod["spec"].get("terminationGracePeriodSeconds", 30), 120) + 5
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                if self.proc is None and not process_alive(pid):
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.target is not None:
            monitoring.remove_target(self.cfg, self.target_key)
        shutil.rmtree(self.dir, ignore_errors=True)
        log.info("%s:%s/%s: pod gone; emulator stopped", self.cluster_key, self.namespace, self.name)

    # -- the log -------------------------------------------------------------------------------

    def pump_log(self) -> None:
        """Copy the emulator's complete new lines into the container log, in the CRI format."""
        try:
            with open(self.raw_log, "rb") as raw:
                raw.seek(self.offset)
                data = raw.read(4 << 20)
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        lines = data[: end + 1].split(b"\n")[:-1]
        stamp = cri_stamp()
        with open(self.current_log, "ab") as out:
            out.write(b"".join(stamp + b" stdout F " + line.rstrip(b"\r") + b"\n" for line in lines))
        self.offset += end + 1
        if any(STARTUP_LINE in line for line in lines) and not self.ready:
            # The server says it is up: probe now rather than at the next period.
            self.next_probe = dict.fromkeys(self.next_probe, 0.0)
        self.write_record()

    def ensure_logs_object(self) -> None:
        """KWOK serves a pod's logs from the files its `Logs` object names; owned by the pod, so GC removes it."""
        if self.logs_object:
            return
        kube = self.sup.clusters.get(self.cluster_key)
        if kube is None:
            return
        name = self.container.get("name") or "vllm"
        body = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}],
            },
            "spec": {
                "logs": [
                    {
                        "containers": [name],
                        "logsFile": str(self.current_log),
                        "previousLogsFile": str(self.previous_log),
                    }
                ]
            },
        }
        path = f"/apis/kwok.x-k8s.io/v1alpha1/namespaces/{self.namespace}/logs/{self.name}"
        try:
            serving.apply(kube.api, path, body, MANAGER)
        except serving.ApiError as exc:
            if "logs" not in self.warned:
                self.warned.add("logs")
                why = "KWOK's Logs CRD is not installed there" if exc.status == 404 else str(exc)
                log.warning("%s/%s: pod logs will not be served (%s)", self.namespace, self.name, why)
            return
        self.logs_object = True

    # -- probes --------------------------------------------------------------------------------

    def health(self, probe: Probe) -> tuple[bool, str]:
        url = f"http://127.0.0.1:{self.port}{probe.path}"
        try:
            with urllib.request.urlopen(url, timeout=probe.timeout) as resp:  # noqa: S310 - loopback
                return 200 <= resp.status < 400, f"statuscode: {resp.status}"
        except urllib.error.HTTPError as exc:
            return False, f"HTTP probe failed with statuscode: {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return False, f'Get "{url}": {getattr(exc, "reason", exc)}'

    def probe(self) -> None:
        if self.state != "running" or not self.port or self.kill_reason:
            return
        now = time.monotonic()
        kinds = ["startup"] if not self.started_ok else ["readiness", "liveness"]
        due = [k for k in kinds if self.probes[k] is not None and now >= self.next_probe.get(k, 0.0)]
        if not due:
            return
        ok, detail = self.health(self.probes[due[0]])
        for kind in due:
            probe = self.probes[kind]
            self.next_probe[kind] = now + probe.period
            if kind == "startup":
                if ok:
                    # The readiness and liveness probers start now; the readiness one with this answer.
                    self.started_ok = True
                    self.readiness_result(True)
                    for other in ("readiness", "liveness"):
                        if self.probes[other] is not None:
                            self.next_probe[other] = now + self.probes[other].period
                else:
                    self.counts["startup"] += 1
                    if self.counts["startup"] >= probe.failure_threshold:
                        self.kill("startup", detail)
            elif kind == "readiness":
                self.readiness_result(ok)
            elif kind == "liveness":
                self.counts["liveness"] = 0 if ok else self.counts["liveness"] + 1
                if self.counts["liveness"] >= probe.failure_threshold:
                    self.kill("liveness", detail)

    def readiness_result(self, ok: bool) -> None:
        probe = self.probes["readiness"]
        if ok:
            self.counts["readiness"] = 0
            self.successes += 1
            if self.successes >= probe.success_threshold:
                self.ready = True
        else:
            self.successes = 0
            self.counts["readiness"] += 1
            if self.counts["readiness"] >= probe.failure_threshold:
                self.ready = False

    def kill(self, kind: str, detail: str) -> None:
        name = self.container.get("name")
        self.event("Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {detail}")
        self.event("Normal", "Killing", f"Container {name} failed {kind} probe, will be restarted")
        self.kill_reason = f"failed {kind} probe"
        self.ready = False
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(self.pid, signal.SIGTERM)  # type: ignore[arg-type]

    def sync_fail_mode(self) -> None:
        """An emulate-fail annotation changed on a running pod: switch a runtime mode at once."""
        if self.state != "running" or not self.port:
            return
        want = (self.pod["metadata"].get("annotations") or {}).get(serving.FAIL_ANNOTATION) or "none"
        if want == self.fail_mode or want not in RUNTIME_FAIL_MODES:
            return
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"http://127.0.0.1:{self.port}/_emulator/fail-mode",
            data=json.dumps({"mode": want}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=2):  # noqa: S310
                pass
        except (urllib.error.URLError, OSError):
            return  # not listening yet; the next pass tries again
        log.info("%s/%s: fail mode %s -> %s", self.namespace, self.name, self.fail_mode, want)
        self.fail_mode = want
        self.write_record()

    # -- what the cluster and Prometheus see ---------------------------------------------------

    @property
    def target_key(self) -> str:
        return f"pod-{self.uid}"

    def sync_target(self) -> None:
        """A scrape target while a Service selects the pod and the emulator has a port, as with a ServiceMonitor."""
        kube = self.sup.clusters.get(self.cluster_key)
        labels = None
        if kube is not None and self.port:
            pod_labels = self.pod["metadata"].get("labels") or {}
            services = sorted(
                s["metadata"]["name"]
                for s in kube.items("services")
                if s["metadata"]["namespace"] == self.namespace
                and serving.selector_matches((s.get("spec") or {}).get("selector"), pod_labels)
            )
            if services:
                flags = flag_values(self.container.get("args") or [])
                labels = {
                    "namespace": self.namespace,
                    "pod": self.name,
                    "service": services[0],
                    "container": self.container.get("name") or "vllm",
                    "model_name": flags.get("--served-model-name") or flags.get("--model") or "default",
                    "cluster": self.cluster_key,
                    "tenant": pod_labels.get("inference-portal.io/tenant", ""),
                    "endpoint": pod_labels.get("inference-portal.io/endpoint", ""),
                }
                labels = {k: v for k, v in labels.items() if v}
        wanted = None if labels is None else {"address": f"127.0.0.1:{self.port}", **labels}
        if wanted == self.target:
            return
        if wanted is None:
            monitoring.remove_target(self.cfg, self.target_key)
        else:
            monitoring.write_target(self.cfg, self.target_key, wanted["address"], labels)
        self.target = wanted

    def container_status(self) -> dict:
        spec = self.container
        status: dict = {
            "name": spec.get("name"),
            "image": spec.get("image", ""),
            "imageID": "",
            "restartCount": self.restart_count,
            "ready": self.state == "running" and self.ready,
            "started": self.state == "running" and self.started_ok,
        }
        if self.state == "running":
            status["state"] = {"running": {"startedAt": self.started_at}}
            if self.last_state:
                status["lastState"] = {"terminated": self.last_state}
        elif self.state == "exited" and self.backoff_delay and time.monotonic() < self.backoff_until:
            name = spec.get("name")
            status["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {self.backoff_delay:.0f}s restarting failed container={name} "
                    f"pod={self.name}_{self.namespace}({self.uid})",
                }
            }
            status["lastState"] = {"terminated": self.exit_info}
        elif self.state == "exited":
            status["state"] = {"terminated": self.exit_info}
            if self.last_state:
                status["lastState"] = {"terminated": self.last_state}
        elif self.state == "config-error":
            status["state"] = {
                "waiting": {"reason": "CreateContainerConfigError", "message": self.config_error}
            }
        else:
            status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        return status

    def write_status(self) -> None:
        """Patch the pod's status when what the kubelet would report changed."""
        if self.state in ("new", "stopping"):
            return
        own = self.container_status()
        fingerprint = json.dumps(own, sort_keys=True)
        if fingerprint == self.written_status:
            return
        kube = self.sup.clusters.get(self.cluster_key)
        if kube is None:
            return
        current = (self.pod.get("status") or {}).get("containerStatuses") or []
        others = [s for s in current if s.get("name") != own["name"]]
        ready = own["ready"] and all(s.get("ready") for s in others)
        stamp = now_iso()

        def condition(ctype: str) -> dict:
            old = next(
                (c for c in (self.pod.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {}
            )
            value = "True" if ready else "False"
            cond = {
                "type": ctype,
                "status": value,
                "lastProbeTime": None,
                "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == value else stamp,
            }
            if not ready:
                cond["reason"] = "ContainersNotReady"
                cond["message"] = f"containers with unready status: [{own['name']}]"
            else:
                cond["reason"], cond["message"] = None, None
            return cond

        patch = {
            "metadata": {"uid": self.uid},  # a precondition: never write onto a new pod of the same name
            "status": {
                "conditions": [condition("Ready"), condition("ContainersReady")],
                "containerStatuses": [*others, own],
            },
        }
        try:
            serving.request(
                kube.api,
                "PATCH",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                body=patch,
                content_type="application/strategic-merge-patch+json",
            )
        except serving.ApiError as exc:
            if exc.status == 404 or exc.status == 409:
                self.terminate()  # the pod is gone (or replaced); the supervisor will see it too
                return
            raise
        self.written_status = fingerprint

    def event(self, kind: str, reason: str, message: str) -> None:
        kube = self.sup.clusters.get(self.cluster_key)
        if kube is None:
            return
        stamp = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "fieldPath": f"spec.containers{{{self.container.get('name')}}}",
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        with contextlib.suppress(serving.ApiError):
            serving.request(kube.api, "POST", f"/api/v1/namespaces/{self.namespace}/events", body=body)

    def write_record(self) -> None:
        serving.write_record(
            self.cfg,
            self.uid,
            {
                "cluster": self.cluster_key,
                "namespace": self.namespace,
                "pod": self.name,
                "uid": self.uid,
                "port": self.port,
                "pid": self.pid,
                "startedAt": self.started_at,
                "restartCount": self.restart_count,
                "crashes": self.crashes,
                "lastState": self.last_state,
                "failMode": self.fail_mode,
                "offset": self.offset,
                # While exited: how it ended and when the back-off ends (wall clock, for a restart).
                "exit": self.exit_info if self.state == "exited" else None,
                "backoffDelay": self.backoff_delay,
                "backoffUntil": time.time() + max(0.0, self.backoff_until - time.monotonic()),
            },
        )


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.clusters = serving.ClusterSet(cfg, ("pods", "secrets", "services"), self.wake.set)
        self.runners: dict[str, PodRunner] = {}
        # Pods this process (or an earlier one) ran emulators for; adopted or cleaned up below.
        self.orphans: dict[str, dict] = {r["uid"]: r for r in serving.records(cfg)}
        self.marked = False

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.clusters.refresh()
                self.reconcile()
            except Exception:  # noqa: BLE001 - log it and keep supervising
                log.exception("reconcile failed")
            self.wake.wait(1.0)
            self.wake.clear()
            time.sleep(0.05)  # coalesce bursts of watch events

    def reconcile(self) -> None:
        live: dict[str, tuple[serving.KubeCluster, dict]] = {}
        synced: set[str] = set()
        for kube in self.clusters.all():
            if not kube.synced("pods"):
                continue
            synced.add(kube.key)
            for pod in kube.items("pods"):
                if (pod["metadata"].get("annotations") or {}).get(serving.EMULATE_ANNOTATION) == "vllm":
                    live[pod["metadata"]["uid"]] = (kube, pod)

        for uid, (kube, pod) in live.items():
            runner = self.runners.get(uid)
            gone = pod["metadata"].get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
                "Succeeded",
                "Failed",
            )
            if gone:
                if runner is not None:
                    runner.terminate()
                elif uid in self.orphans:
                    self.forget(self.orphans.pop(uid))
                continue
            if runner is not None:
                runner.observe(pod)
                continue
            status = pod.get("status") or {}
            if not pod["spec"].get("nodeName") or status.get("phase") != "Running" or not status.get("podIP"):
                continue  # KWOK has not started the pod yet
            runner = PodRunner(self, kube.key, pod, self.orphans.pop(uid, None))
            self.runners[uid] = runner
            runner.start()

        for uid, runner in list(self.runners.items()):
            if runner.done.is_set():
                del self.runners[uid]
            elif uid not in live and self.cluster_says_gone(runner.cluster_key, synced):
                runner.terminate()
        for uid, record in list(self.orphans.items()):
            if uid not in live and self.cluster_says_gone(record["cluster"], synced):
                self.forget(self.orphans.pop(uid))

        if not self.marked and "host" in synced and self.clusters.discovered:
            marker = serving.supervisor_marker(self.cfg)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            self.marked = True

    def cluster_says_gone(self, key: str, synced: set[str]) -> bool:
        """A pod missing from a synced cache is gone; so is every pod of a tenant cluster that is gone."""
        if key in synced:
            return True
        return self.clusters.discovered and self.clusters.get(key) is None

    def forget(self, record: dict) -> None:
        """A pod that went away while no runner watched it: stop its emulator, drop its traces."""
        pid, port = record.get("pid"), record.get("port")
        if pid and port and process_alive(pid) and is_emulator(pid, port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        monitoring.remove_target(self.cfg, f"pod-{record['uid']}")
        shutil.rmtree(serving.pod_dir(self.cfg, record["uid"]), ignore_errors=True)
        log.info("%s:%s/%s: pod gone; cleaned up", record["cluster"], record["namespace"], record["pod"])


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    supervisor = Supervisor(Config.from_env())
    # The emulators it started share its process group, so `platformctl down` stops them with it.
    # Adopted ones (left by a supervisor that crashed) live in another group: stop those here.
    # After a crash, by contrast, nothing stops them, and the next supervisor adopts them.
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
    log.info("serving emulator started")
    supervisor.run()
    for runner in list(supervisor.runners.values()):
        if runner.proc is None and runner.pid and process_alive(runner.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(runner.pid, signal.SIGTERM)
    log.info("serving emulator stopped")


if __name__ == "__main__":
    main()
