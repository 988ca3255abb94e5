"""Cross-check a measurement with the server's own numbers (its TTFT and ITL histograms in ``/metrics``).

The client times streamed chunks; the engine times the tokens it emits. Over the same requests the two
means agree up to network and streaming jitter. A client ITL far below the server's means the tokens
arrived in bursts (several per chunk, or a stream buffered by a proxy), so the client's clock did not
see the engine's pace; a TTFT far from the server's means queueing outside the engine or other traffic.

Tolerance: client and server agree when the client's value lies within a factor
``SERVER_RATIO_TOLERANCE`` of the server's, give or take ``SERVER_ABS_TOLERANCE_MS``. That catches gross
disagreement (tokens arriving in bursts, miscounted tokens), not jitter. ``benchmarks/server_check_agreement.py``
on the vLLM CPU server (a 2-core machine shared with other work): agreeing ITLs at 0.73-1.14x the
server's, streams the starved frontend delivered in bursts at 0.03-0.10x (flagged), client TTFT
1.2-7.8x the server's. TTFT is checked one way only: the client cannot see a first token before the
engine emits it, but it may see it later by any amount (network, HTTP, detokenisation: part of the
TTFT a user sees, recorded as ``client_minus_server_ms``), so only a client TTFT below the server's is a
disagreement. ITL is checked both ways. Policy (``EndpointRunner``): a disagreement is measured once more; if the
second attempt disagrees too, the runner raises ``ImplausibleMeasurement`` carrying the flagged record,
which ``run_plan`` keeps aside (``*.rejected.jsonl``) and never hands to calibration. Where the server
reports no histogram (SGLang without metrics, TRT-LLM) the check says so and passes nothing off as
checked: ``extra["server_check"]["ok"]`` is None.
"""

from __future__ import annotations

from typing import Any

from estimator.measurements import ProbeKind

SERVER_RATIO_TOLERANCE = 3.0  # client within [server / 3, server * 3]: what streaming jitter can explain
SERVER_ABS_TOLERANCE_MS = 0.25  # absolute slack for sub-millisecond values (clock and chunk granularity)

# (client field, server value in extra, may the client exceed the server freely) per probe kind
_TTFT, _ITL = ("ttft_ms", "server_ttft_ms", True), ("itl_ms", "server_itl_ms", False)
_CHECKS = {ProbeKind.PREFILL: (_TTFT,), ProbeKind.DECODE: (_ITL,), ProbeKind.AGG: (_TTFT, _ITL)}


def agrees(client_ms: float, server_ms: float, *, client_may_exceed: bool = False) -> bool:
    """Within the tolerance of the server's value (only from below with ``client_may_exceed``)."""
    low = server_ms / SERVER_RATIO_TOLERANCE - SERVER_ABS_TOLERANCE_MS
    high = server_ms * SERVER_RATIO_TOLERANCE + SERVER_ABS_TOLERANCE_MS
    return low <= client_ms and (client_may_exceed or client_ms <= high)


def server_check(kind: ProbeKind, fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``{"ok": True|False|None, <field>: {"client", "server", "ok"}, "tolerance": ...}`` for one attempt.

    ``ok`` is None when the server reported none of the values this kind of probe is checked on.
    """
    out: dict[str, Any] = {"tolerance": {"ratio": SERVER_RATIO_TOLERANCE, "abs_ms": SERVER_ABS_TOLERANCE_MS}}
    verdicts = []
    for field, server_key, may_exceed in _CHECKS[kind]:
        client, server = fields.get(field), extra.get(server_key)
        if client is None or server is None:
            continue
        ok = agrees(float(client), float(server), client_may_exceed=may_exceed)
        out[field] = {"client": float(client), "server": float(server), "ok": ok,
                      "client_minus_server_ms": float(client) - float(server)}  # fmt: skip
        verdicts.append(ok)
    out["ok"] = all(verdicts) if verdicts else None
    if not verdicts:
        out["reason"] = "the server reported no TTFT/ITL histogram for this span"
    return out


def describe(check: dict[str, Any]) -> str:
    """One line naming each disagreeing value, e.g. "itl_ms 0.015 vs the server's 1.000"."""
    bad = [
        f"{k} {v['client']:.3f} vs the server's {v['server']:.3f}"
        for k, v in check.items()
        if isinstance(v, dict) and "client" in v and v["ok"] is False
    ]
    tol = check["tolerance"]
    return "; ".join(bad) + f" (tolerance a factor {tol['ratio']:g}, +- {tol['abs_ms']:g} ms)"
