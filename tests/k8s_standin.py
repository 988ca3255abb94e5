"""A stand-in Kubernetes API server on loopback, enough for the official client and the k8s runner.

It is a real HTTP server (stdlib ``http.server`` in a thread) that speaks the REST paths the runner
uses: create/get/list/delete of Deployments, Services, Pods, ConfigMaps and DynamoGraphDeployments,
``list`` of nodes, ``get`` of CRDs, and the pod ``portforward`` websocket (``v4.channel.k8s.io``),
which it bridges to one TCP address (a tiny HTTP server the test runs). It also plays the
controllers: a Deployment gets one pod, a DynamoGraphDeployment one pod per service, and each pod
steps through a scripted list of states, one step per pod list. Deleting an owner deletes its pods.

Not a Kubernetes: no admission, no schema validation, no watch, no RBAC, no scheduler.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DGD_CRD = "dynamographdeployments.nvidia.com"
_KINDS = {
    "pods": ("v1", "Pod"),
    "services": ("v1", "Service"),
    "configmaps": ("v1", "ConfigMap"),
    "deployments": ("apps/v1", "Deployment"),
    "dynamographdeployments": ("nvidia.com/v1alpha1", "DynamoGraphDeployment"),
}
_NAMESPACED = re.compile(
    r"^/(api/v1|apis/[^/]+/[^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?(?:/(portforward))?$"
)
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Pod states a script can name. Each maps to a V1PodStatus-shaped dict.
STATES = ("pending", "starting", "ready", "oomkilled", "crashloop", "imagepull", "unschedulable")


def pod_status(state: str, container: str, image: str) -> dict[str, Any]:
    def cstatus(
        ready: bool, st: dict[str, Any], last: dict[str, Any] | None = None, restarts: int = 0
    ) -> list[dict]:
        return [
            {
                "name": container,
                "image": image,
                "imageID": "",
                "ready": ready,
                "restartCount": restarts,
                "state": st,
                "lastState": last or {},
            }
        ]

    sched = {"type": "PodScheduled", "status": "True"}
    if state == "unschedulable":
        msg = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
        return {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}
            ],
        }
    if state == "pending":
        return {
            "phase": "Pending",
            "conditions": [sched],
            "containerStatuses": cstatus(False, {"waiting": {"reason": "ContainerCreating"}}),
        }
    if state == "imagepull":
        waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
        return {
            "phase": "Pending",
            "conditions": [sched],
            "containerStatuses": cstatus(False, {"waiting": waiting}),
        }
    running = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    not_ready = {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}
    if state == "starting":
        return {
            "phase": "Running",
            "conditions": [sched, not_ready],
            "containerStatuses": cstatus(False, running),
        }
    if state == "ready":
        return {
            "phase": "Running",
            "conditions": [sched, {"type": "Ready", "status": "True"}],
            "containerStatuses": cstatus(True, running),
        }
    if state == "oomkilled":
        term = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
        return {
            "phase": "Running",
            "conditions": [sched, not_ready],
            "containerStatuses": cstatus(False, term, restarts=0),
        }
    if state == "crashloop":
        waiting = {
            "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
        }
        last = {"terminated": {"reason": "Error", "exitCode": 1}}
        return {
            "phase": "Running",
            "conditions": [sched, not_ready],
            "containerStatuses": cstatus(False, waiting, last, 3),
        }
    raise ValueError(f"unknown pod state {state!r}; known: {STATES}")


@dataclass
class _Pod:
    obj: dict[str, Any]
    owner: tuple[str, str, str]  # (plural, namespace, name)
    script: Sequence[str]
    step: int = 0


@dataclass
class StandIn:
    """The stand-in cluster. ``script(owner_name, component) -> states`` scripts each new pod."""

    dynamo_crd: bool = False
    node_gpus: tuple[int, ...] = (8,)
    forward_to: tuple[str, int] | None = None  # where pod port-forwards go
    script: Callable[[str, str], Sequence[str]] = lambda owner, component: ("pending", "starting", "ready")
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (plural, ns, name)
    created: list[tuple[str, str, str]] = field(default_factory=list)  # every create, in order
    deleted: list[tuple[str, str, str]] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)  # pods port-forwarded to
    objects_created: dict[tuple[str, str, str], dict[str, Any]] = field(
        default_factory=dict
    )  # kept after delete
    max_live: dict[str, int] = field(default_factory=dict)  # most objects of a kind alive at once
    pod_lists: int = 0  # pod list calls (controller ticks)
    _pods: dict[tuple[str, str], _Pod] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _server: ThreadingHTTPServer | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> str:
        standin = self

        class Handler(_Handler):
            cluster = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def api_client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration(host=self.url)
        return client.ApiClient(cfg)

    def live(self, plural: str | None = None) -> list[tuple[str, str, str]]:
        """Objects still present (pods included)."""
        with self._lock:
            keys = list(self.objects) + [("pods", ns, n) for ns, n in self._pods]
        return [k for k in keys if plural is None or k[0] == plural]

    # ---- REST -------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        with self._lock:
            if path == "/api/v1/nodes" and method == "GET":
                return 200, self._list("v1", "Node", [self._node(i, g) for i, g in enumerate(self.node_gpus)])
            m = re.match(r"^/apis/apiextensions\.k8s\.io/v1/customresourcedefinitions/([^/]+)$", path)
            if m and method == "GET":
                if m.group(1) == DGD_CRD and self.dynamo_crd:
                    return 200, _crd()
                return 404, _status(404, f'customresourcedefinitions "{m.group(1)}" not found')
            m = _NAMESPACED.match(path)
            if not m or m.group(3) not in _KINDS:
                return 404, _status(404, f"no route for {method} {path}")
            _, ns, plural, name, _sub = m.groups()
            if plural == "pods":
                return self._pods_rest(method, ns, name, query)
            key = (plural, ns, name or "")
            if method == "POST" and not name:
                return self._create(plural, ns, body)
            if method == "GET" and not name:
                items = [o for (p, n, _), o in self.objects.items() if p == plural and n == ns]
                api, kind = _KINDS[plural]
                return 200, self._list(api, kind + "List", _select(items, query))
            if key not in self.objects:
                return 404, _status(404, f'{plural} "{name}" not found')
            if method == "GET":
                return 200, self._with_status(key)
            if method == "DELETE":
                obj = self.objects.pop(key)
                self.deleted.append(key)
                for pk in [pk for pk, pod in self._pods.items() if pod.owner == key]:
                    del self._pods[pk]
                return 200, _status(200, "deleted") if plural in ("deployments", "configmaps") else obj
            return 405, _status(405, f"{method} not supported")

    def _pods_rest(
        self, method: str, ns: str, name: str | None, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        if method == "GET" and not name:
            self.pod_lists += 1
            items = []
            for (pns, _), pod in self._pods.items():
                if pns != ns:
                    continue
                pod.step = min(pod.step + 1, len(pod.script) - 1)  # one tick of the scripted controller
                items.append(pod.obj | {"status": self._pod_status(pod)})
            return 200, self._list("v1", "PodList", _select(items, query))
        pod = self._pods.get((ns, name or ""))
        if pod is None:
            return 404, _status(404, f'pods "{name}" not found')
        return 200, pod.obj | {"status": self._pod_status(pod)}

    def _pod_status(self, pod: _Pod) -> dict[str, Any]:
        c = pod.obj["spec"]["containers"][0]
        return pod_status(pod.script[pod.step], c["name"], c["image"])

    def _create(self, plural: str, ns: str, body: dict[str, Any]) -> tuple[int, Any]:
        name = body["metadata"]["name"]
        if (plural, ns, name) in self.objects:
            return 409, _status(409, f'{plural} "{name}" already exists')
        obj = json.loads(json.dumps(body))
        obj["metadata"] |= {
            "namespace": ns,
            "uid": f"uid-{next(self._ids)}",
            "resourceVersion": str(next(self._ids)),
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        key = (plural, ns, name)
        self.objects[key] = obj
        self.objects_created[key] = obj
        self.created.append(key)
        alive = sum(1 for k in self.objects if k[0] == plural)
        self.max_live[plural] = max(self.max_live.get(plural, 0), alive)
        if plural == "deployments":
            tmpl = obj["spec"]["template"]
            self._add_pod(
                key, f"{name}-7d4b9-x2k4q", tmpl["metadata"].get("labels", {}), tmpl["spec"], "engine"
            )
        elif plural == "dynamographdeployments":
            for svc_name, svc in obj["spec"]["services"].items():
                main = svc.get("extraPodSpec", {}).get("mainContainer", {})
                labels = {
                    "nvidia.com/dynamo-graph-deployment-name": name,
                    "nvidia.com/dynamo-component-type": svc.get("componentType", ""),
                    "nvidia.com/dynamo-component": svc_name,
                }
                spec = {"containers": [{"name": "main", "image": main.get("image", "")}]}
                self._add_pod(key, f"{name}-{svc_name.lower()}-0", labels, spec, svc_name)
        return 201, obj

    def _add_pod(
        self, owner: tuple[str, str, str], name: str, labels: dict, spec: dict, component: str
    ) -> None:
        ns = owner[1]
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
            "spec": json.loads(json.dumps(spec)),
        }
        self._pods[(ns, name)] = _Pod(obj, owner, tuple(self.script(owner[2], component)))
        self.created.append(("pods", ns, name))

    def _with_status(self, key: tuple[str, str, str]) -> dict[str, Any]:
        obj = self.objects[key]
        if key[0] != "dynamographdeployments":
            return obj
        pods = [p for p in self._pods.values() if p.owner == key]
        ready = pods and all(p.script[p.step] == "ready" for p in pods)
        return obj | {"status": {"state": "successful" if ready else "pending"}}

    @staticmethod
    def _list(api: str, kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"apiVersion": api, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}

    @staticmethod
    def _node(i: int, gpus: int) -> dict[str, Any]:
        alloc = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": f"gpu-node-{i}"},
            "status": {"allocatable": alloc, "capacity": alloc},
        }


def _select(items: list[dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Equality-based label selectors (``a=b,c=d``), the only kind the runner sends."""
    selector = (query.get("labelSelector") or [""])[0]
    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
    return [
        o for o in items if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
    ]


def _status(code: int, message: str) -> dict[str, Any]:
    reason = {404: "NotFound", 409: "AlreadyExists", 405: "MethodNotAllowed"}.get(code, "")
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Success" if code < 300 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": DGD_CRD},
        "spec": {
            "group": "nvidia.com",
            "scope": "Namespaced",
            "names": {"kind": "DynamoGraphDeployment", "plural": "dynamographdeployments"},
            "versions": [{"name": "v1alpha1", "served": True, "storage": True}],
        },
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cluster: StandIn

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if parts.path.endswith("/portforward") and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._port_forward(parts.path, parse_qs(parts.query))
        code, payload = self.cluster.handle(
            method, parts.path, parse_qs(parts.query), json.loads(raw) if raw else None
        )
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # ---- pod port-forward over a websocket (v4.channel.k8s.io) -------------------------------------
    def _port_forward(self, path: str, query: dict[str, list[str]]) -> None:
        m = _NAMESPACED.match(path)
        pod = m.group(4) if m else ""
        port = int((query.get("ports") or ["0"])[0])
        accept = base64.b64encode(
            hashlib.sha1((self.headers["Sec-WebSocket-Key"] + _WS_GUID).encode()).digest()
        )
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.close_connection = True
        self.cluster.forwarded.append(pod)
        ws, lock = self.connection, threading.Lock()

        def send(payload: bytes, opcode: int = 2) -> None:
            n = len(payload)
            head = bytes([0x80 | opcode]) + (
                bytes([n])
                if n < 126
                else bytes([126]) + n.to_bytes(2, "big")
                if n < 65536
                else bytes([127]) + n.to_bytes(8, "big")
            )
            with lock:
                ws.sendall(head + payload)

        for channel in (0, 1):  # each channel first announces its port, little-endian
            send(bytes([channel]) + port.to_bytes(2, "little"))
        target = socket.create_connection(self.cluster.forward_to)  # type: ignore[arg-type]

        def upstream() -> None:  # client frames -> target
            try:
                while (frame := _read_frame(self.rfile)) is not None:
                    opcode, data = frame
                    if opcode == 8:
                        break
                    if opcode == 2 and data and data[0] == 0:
                        target.sendall(data[1:])
            except OSError:
                pass
            finally:
                target.close()

        threading.Thread(target=upstream, daemon=True).start()
        try:
            while chunk := target.recv(65536):
                send(b"\x00" + chunk)
            send(b"", 8)
        except OSError:
            pass


def _read_frame(rfile: Any) -> tuple[int, bytes] | None:
    head = rfile.read(2)
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    if n >= 126:
        n = int.from_bytes(rfile.read(2 if n == 126 else 8), "big")
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(rfile.read(n)))
    return head[0] & 0x0F, data
