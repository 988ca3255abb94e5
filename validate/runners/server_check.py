"""Cross-check a measurement with the server's own numbers (its TTFT and ITL histograms in ``/metrics``).

The client times streamed chunks; the engine times the tokens it emits. Over the same requests the two
means agree up to network and streaming jitter. A client ITL far below the server's means the tokens
arrived in bursts (several per chunk, or a stream buffered by a proxy), so the client's clock did not
see the engine's pace; a TTFT far from the server's means queueing outside the engine or other traffic.

Tolerance: client and server agree when ``|client - server| <= SERVER_REL_TOLERANCE * server +
SERVER_ABS_TOLERANCE_MS``. Policy (``EndpointRunner``): a disagreement is measured once more; if the
second attempt disagrees too, the runner raises ``ImplausibleMeasurement`` carrying the flagged record,
which ``run_plan`` keeps aside (``*.rejected.jsonl``) and never hands to calibration. Where the server
reports no histogram (SGLang without metrics, TRT-LLM) the check says so and passes nothing off as
checked: ``extra["server_check"]["ok"]`` is None.
"""

from __future__ import annotations

from typing import Any

from estimator.measurements import ProbeKind

SERVER_REL_TOLERANCE = 0.5  # relative to the server's value: what streaming jitter can explain
SERVER_ABS_TOLERANCE_MS = 0.25  # absolute slack for sub-millisecond values (clock and chunk granularity)

# (client field, server value in extra) compared per probe kind
_CHECKS = {
    ProbeKind.PREFILL: (("ttft_ms", "server_ttft_ms"),),
    ProbeKind.DECODE: (("itl_ms", "server_itl_ms"),),
    ProbeKind.AGG: (("ttft_ms", "server_ttft_ms"), ("itl_ms", "server_itl_ms")),
}


def agrees(client_ms: float, server_ms: float) -> bool:
    return abs(client_ms - server_ms) <= SERVER_REL_TOLERANCE * server_ms + SERVER_ABS_TOLERANCE_MS


def server_check(kind: ProbeKind, fields: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``{"ok": True|False|None, <field>: {"client", "server", "ok"}, "tolerance": ...}`` for one attempt.

    ``ok`` is None when the server reported none of the values this kind of probe is checked on.
    """
    out: dict[str, Any] = {"tolerance": {"rel": SERVER_REL_TOLERANCE, "abs_ms": SERVER_ABS_TOLERANCE_MS}}
    verdicts = []
    for field, server_key in _CHECKS[kind]:
        client, server = fields.get(field), extra.get(server_key)
        if client is None or server is None:
            continue
        ok = agrees(float(client), float(server))
        out[field] = {"client": float(client), "server": float(server), "ok": ok}
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
        if isinstance(v, dict) and v.get("ok") is False
    ]
    tol = check["tolerance"]
    return "; ".join(bad) + f" (tolerance {tol['rel']:.0%} + {tol['abs_ms']:g} ms)"
