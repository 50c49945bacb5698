"""Ledger report: the rows as a text table, JSON, CSV, and a plot of epsilon over rounds.

Every epsilon is shown with its unit and delta, and a row with ``simulation`` randomness
with :data:`~privspk.privacy.mechanism.SIMULATION_WARNING`.

>>> led = _example_ledger()
>>> _ = led.record_spend(_example_spend())
>>> ledger_dict(led)["rows"][0]["epsilon_after"]
0.5
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from privspk.privacy.ledger.chain import _atomic_write
from privspk.privacy.ledger.rows import EXPORT_COLUMNS, _example_spend  # noqa: F401 - the doctests use the example
from privspk.privacy.ledger.storage import LEDGER_FORMAT, SCHEMA_VERSION, Ledger, _example_ledger  # noqa: F401
from privspk.privacy.mechanism import SIMULATION_WARNING

__all__ = ["export_csv", "export_json", "ledger_dict", "plot", "table"]


def ledger_dict(ledger: Ledger) -> dict[str, object]:
    """The whole ledger as plain JSON types: format, schema version, run id, settings and rows.

    >>> sorted(ledger_dict(_example_ledger()))
    ['format', 'rows', 'run_id', 'schema_version', 'settings']
    """
    return {
        "format": LEDGER_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "run_id": ledger.run_id,
        "settings": ledger.settings,
        "rows": [r.to_dict() for r in ledger.rows()],
    }


def export_json(ledger: Ledger, path: str | os.PathLike[str]) -> Path:
    """Write :meth:`to_dict` as JSON (atomically); returns the path.

    >>> led = _example_ledger()
    >>> _ = led.record_spend(_example_spend())
    >>> json.loads(led.export_json(led.path.with_suffix(".json")).read_text())["rows"][0]["epsilon_after"]
    0.5
    """
    return _atomic_write(Path(path), json.dumps(ledger_dict(ledger), indent=2, allow_nan=False) + "\n")


def export_csv(ledger: Ledger, path: str | os.PathLike[str]) -> Path:
    """Write one CSV line per row (speakers ``;``-joined, client mechanism as JSON); returns the path.

    >>> led = _example_ledger()
    >>> _ = led.record_spend(_example_spend())
    >>> led.export_csv(led.path.with_suffix(".csv")).read_text().splitlines()[0].split(",")[:3]
    ['run_id', 'client', 'round']
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in ledger.rows():
        d = r.to_dict()
        d["speakers"] = ";".join(r.speakers)
        mech = d["client_mechanism"]
        d["client_mechanism"] = "" if mech is None else json.dumps(mech, sort_keys=True)
        writer.writerow({k: "" if v is None else v for k, v in d.items()})
    return _atomic_write(Path(path), buf.getvalue())


def table(ledger: Ledger, client: str | None = None) -> str:
    """A fixed-width text table of the rows; epsilon columns name their unit and delta.

    >>> led = _example_ledger()
    >>> _ = led.record_spend(_example_spend())
    >>> print(led.table())
    run demo: epsilon per row's unit at its delta; client_eps per client
    client  round  unit       acct  sigma  q     steps  delta  epsilon  client_eps  clip  scheme  status  randomness
    c0      1      utterance  rdp   1.1    0.05  20     1e-05  0.5000   -           1     mask    spent   secret

    Rows with ``simulation`` randomness carry :data:`SIMULATION_WARNING` beside their epsilon.
    """
    rows = ledger.rows(client)
    header = ("client", "round", "unit", "acct", "sigma", "q", "steps", "delta", "epsilon", "client_eps",
              "clip", "scheme", "status", "randomness")
    lines = [header]
    for r in rows:
        cl = r.client_level
        lines.append((
            r.client, str(r.round), r.unit, r.accountant, f"{r.noise_multiplier:.4g}", f"{r.sample_rate:.4g}",
            str(r.steps), f"{r.delta:.0e}", f"{r.epsilon_after:.4f}",
            "-" if cl is None else f"{cl.epsilon_after:.4f}", f"{r.clip:g}", r.scheme, r.status,
            r.randomness if r.randomness == "secret" else f"{r.randomness} ({SIMULATION_WARNING})",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"run {ledger.run_id}: epsilon per row's unit at its delta; client_eps per client"]
    for line in lines:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    if not rows:
        out.append("(no spends recorded)")
    return "\n".join(out)


def plot(ledger: Ledger, path: str | os.PathLike[str]) -> Path:
    """Plot epsilon over rounds per client (client-level epsilon dashed) to an image file.

    >>> led = _example_ledger(); _ = led.record_spend(_example_spend())
    >>> plot(led, led.path.with_suffix(".png")).stat().st_size > 0
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = ledger.rows()
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    units = sorted({r.unit for r in rows})
    deltas = sorted({r.delta for r in rows})
    for client in sorted({r.client for r in rows}):
        mine = [r for r in rows if r.client == client]
        line = ax.plot([r.round for r in mine], [r.epsilon_after for r in mine], marker="o", label=client)[0]
        cl = [r for r in mine if r.client_level is not None]
        if cl:
            ax.plot(
                [r.round for r in cl], [r.client_level.epsilon_after for r in cl],  # type: ignore[union-attr]
                linestyle="--", color=line.get_color(), label=f"{client} (client level)",
            )
    unit_txt = "/".join(units) or "utterance"
    delta_txt = ", ".join(f"{d:g}" for d in deltas) or "-"
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon (per {unit_txt}, delta={delta_txt})")
    ax.set_title(f"privacy spend, run {ledger.run_id}")
    if rows:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
