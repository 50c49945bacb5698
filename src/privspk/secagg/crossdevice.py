"""One cross-device secure-aggregation round: K devices' integer codes through the ``mask`` scheme (SecAgg+).

:func:`aggregate_round` runs the real protocol of :mod:`privspk.secagg.mask`
(X25519 key agreement, Shamir-shared secrets over the SecAgg+ neighbourhood graph,
AES-CTR masks, dropout recovery, the signed confirm stage) for every sampled
device in this process, with a chosen set of devices dropping out, and returns
the opened integer sum with the time each phase took:

``key_agreement``
    advertise + share: round key pairs, signatures, Shamir splitting, sealing shares.
``masking``
    collect on the devices: opening shares, deriving and adding the masks.
``aggregation``
    collect on the server: checking and adding the masked vectors.
``unmasking``
    confirm + unmask: signatures on the survivor set, revealing shares, rebuilding
    secrets and removing the remaining masks.

Device-side time is the sum over all devices run one after another here (on a
phone fleet they run in parallel); ``devices_s`` and ``server_s`` split the total.

Survivor counting. ``min_survivors`` makes the *server* abort (nothing opened)
when fewer devices sent their masked update: the check an honest server makes
for distributed-DP noise counted on ``(1 - dropout allowance) * K`` survivors
(``privspk.privacy.user_level.plan_device_noise(counting="honest-dropouts")``).
Devices cannot check that count under SecAgg+ (each sees only its neighbourhood);
what they enforce is the threshold ``t`` (``MaskClient.submit_integers(...,
min_survivors=)``, ``counting="protocol"``).

>>> import numpy as np
>>> ids = [f"d{i:02d}" for i in range(20)]
>>> codes = {d: np.full(4, i - 7, dtype=np.int64) for i, d in enumerate(ids)}
>>> r = aggregate_round(codes, config=MaskConfig(clip=1.0, bits=8), dropped={"d03", "d11"})
>>> r.total.tolist() == [sum(i - 7 for i in range(20) if i not in (3, 11))] * 4, len(r.included)
(True, 18)
>>> sorted(r.timings)
['aggregation', 'devices_s', 'key_agreement', 'masking', 'server_s', 'total', 'unmasking']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from privspk.errors import AggregationError, ConfigError, PrivspkError, ProtocolError
from privspk.secagg.base import RoundSpec
from privspk.secagg.mask import MaskScheme
from privspk.secagg.mask_protocol import MaskConfig, Stage

__all__ = ["PHASES", "CrossDeviceRound", "MaskConfig", "aggregate_round"]

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("key_agreement", "masking", "aggregation", "unmasking")
"""The phases :func:`aggregate_round` times."""

_PHASE_OF = {Stage.ADVERTISE: "key_agreement", Stage.SHARE: "key_agreement", Stage.COLLECT: "masking",
             Stage.CONFIRM: "unmasking", Stage.UNMASK: "unmasking"}


@dataclass
class CrossDeviceRound:
    """The outcome of :func:`aggregate_round`.

    Attributes:
        total: the opened sum of the surviving devices' integer codes (int64).
        included: the devices whose codes are in ``total`` (sorted).
        dropped: device -> why it is not in the sum.
        timings: seconds per phase (:data:`PHASES`), ``devices_s``, ``server_s`` and ``total``.
        threshold: shares needed per secret (``t``); the fewest survivors the protocol can open with.
        degree: neighbours per device in the SecAgg+ graph.
        bytes_up: bytes sent by all devices; bytes_down: bytes the server sent them.
    """

    total: np.ndarray
    included: tuple[str, ...]
    dropped: dict[str, str]
    timings: dict[str, float]
    threshold: int
    degree: int
    bytes_up: int = 0
    bytes_down: int = 0
    scale: float = field(default=1.0)


def aggregate_round(
    codes: Mapping[str, np.ndarray],
    *,
    config: MaskConfig,
    dropped: Collection[str] | Mapping[str, str] = (),
    min_survivors: int | None = None,
    run_id: str = "crossdevice",
    round_id: int = 0,
    scheme: MaskScheme | None = None,
) -> CrossDeviceRound:
    """Securely sum ``codes`` (device -> signed integer vector) over a SecAgg+ round with dropouts.

    Args:
        codes: each sampled device's integer codes (e.g. ``DistributedDP.encode`` output:
            clipped, rounded update plus its noise share), all of one length, each
            ``|code| <= 2**(bits - 1 + noise_headroom_bits) - 1`` of ``config``.
        config: the mask scheme's options (``clip`` and ``bits`` fix the integer scale
            ``(2**(bits-1) - 1) / clip``; ``noise_headroom_bits`` the room for noise).
        dropped: devices that drop out: a collection (they stop before sending their masked
            update) or device -> the stage from which they stop answering
            (``advertise``, ``share``, ``collect``, ``confirm``, ``unmask``).
        min_survivors: abort (AggregationError, nothing opened) if fewer devices sent their
            masked update (see the module notes).
        run_id, round_id: bind the round's keys; never reuse a (run, round) pair for other codes.
        scheme: an existing :class:`~privspk.secagg.mask.MaskScheme` (identity keys kept across
            rounds); default a fresh one for ``config``.

    Raises AggregationError when too few devices remain to open the sum (nothing is opened),
    ConfigError for bad input.
    """
    if not isinstance(config, MaskConfig):
        raise ConfigError(f"config must be a MaskConfig, got {type(config).__name__}")
    if not isinstance(codes, Mapping) or len(codes) < 2:
        raise ConfigError("codes must map at least 2 device ids to integer vectors")
    ids = tuple(sorted(codes))
    if not all(isinstance(d, str) and d for d in ids):
        raise ConfigError("device ids must be non-empty strings")
    arrays = {d: np.asarray(codes[d]) for d in ids}
    dims = {a.shape for a in arrays.values()}
    if len(dims) != 1 or len(next(iter(dims))) != 1 or any(a.dtype.kind not in "iu" for a in arrays.values()):
        raise ConfigError(f"codes must be 1-D integer vectors of one length, got shapes {sorted(dims)[:3]}")
    dim = int(next(iter(dims))[0])
    limit = (1 << (config.value_bits(len(ids)) - 1 + config.noise_headroom_bits)) - 1
    worst = max(int(np.abs(a.astype(np.int64)).max()) for a in arrays.values())
    if worst > limit:
        raise ConfigError(f"a device's code has magnitude {worst} > {limit}, the most {config.value_bits(len(ids))} "
                          f"bits + {config.noise_headroom_bits} noise headroom bits hold; raise noise_headroom_bits")
    if isinstance(dropped, Mapping):
        silent = {str(d): str(s) for d, s in dropped.items()}
    else:
        if isinstance(dropped, str):
            raise ConfigError("dropped must be a collection of device ids, not one string")
        silent = {str(d): Stage.COLLECT for d in dropped}
    unknown = sorted(set(silent) - set(ids))
    if unknown:
        raise ConfigError(f"dropped devices {unknown[:5]} are not among the round's devices")
    bad = sorted({s for s in silent.values() if s not in Stage.ORDER[:-1]})
    if bad:
        raise ConfigError(f"unknown dropout stage(s) {bad}; use one of {list(Stage.ORDER[:-1])}")
    if min_survivors is not None and (type(min_survivors) is not int or min_survivors < 1):
        raise ConfigError(f"min_survivors must be a positive int, got {min_survivors!r}")
    if scheme is None:
        scheme = MaskScheme(config)
    elif scheme.config != config:
        raise ConfigError("scheme was built with another MaskConfig than config")

    clients = {d: scheme.client(d) for d in ids}
    for d in ids:
        clients[d].submit_integers(round_id, arrays[d])
    spec = RoundSpec(run_id=run_id, round_id=round_id, clients=ids, dim=dim)
    timings = dict.fromkeys(PHASES, 0.0)
    dev_s = srv_s = 0.0
    up = down = 0
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    server = scheme.server_round(spec)
    srv_s += time.perf_counter() - t0
    timings["key_agreement"] += time.perf_counter() - t0
    gone: set[str] = set()
    while True:
        stage = server.stage
        phase = _PHASE_OF.get(stage, "unmasking")
        t0 = time.perf_counter()
        outbox = server.outbox()
        dt = time.perf_counter() - t0
        srv_s += dt
        timings[phase if phase != "masking" else "aggregation"] += dt
        answered = 0
        for dest, request in outbox.items():
            down += len(request)
            if dest in gone or silent.get(dest) == stage:
                gone.add(dest)
                continue
            t0 = time.perf_counter()
            try:
                reply = clients[dest].handle(request)
            except PrivspkError as exc:
                log.warning("device %s refused the %s request: %s", dest, stage, exc)
                reply = None
            dt = time.perf_counter() - t0
            dev_s += dt
            timings[phase] += dt
            if reply is None:
                continue
            up += len(reply)
            t0 = time.perf_counter()
            try:
                server.receive(dest, reply)
                answered += 1
            except ProtocolError as exc:
                log.warning("server rejected %s at %s: %s", dest, stage, exc)
            dt = time.perf_counter() - t0
            srv_s += dt
            timings["aggregation" if stage == Stage.COLLECT else phase] += dt
        if stage == Stage.COLLECT and min_survivors is not None and answered < min_survivors:
            raise AggregationError(f"only {answered} of {len(ids)} devices sent their masked update; the noise was "
                                   f"counted on at least {min_survivors} survivors: round aborted, nothing opened")
        t0 = time.perf_counter()
        more = server.advance()
        dt = time.perf_counter() - t0
        srv_s += dt
        timings["aggregation" if stage == Stage.COLLECT else phase] += dt
        if not more:
            break
    res = server.result()
    timings["total"] = time.perf_counter() - t_all
    timings["devices_s"] = dev_s
    timings["server_s"] = srv_s
    params = server.params
    scale = params.quantiser.scale
    total = np.rint(np.asarray(res.total, dtype=np.float64) * scale).astype(np.int64)
    return CrossDeviceRound(total=total, included=tuple(res.included), dropped=dict(res.dropped), timings=timings,
                            threshold=params.threshold, degree=params.graph.degree, bytes_up=up, bytes_down=down,
                            scale=scale)
