"""The Flower ClientApp: forwards each privspk message to the node's agent (light imports only).

Flower starts a fresh ``flwr-clientapp`` process for every message, so this module
imports neither torch nor the schemes: the node's agent (started by ``privspk join``)
does the work. The node config names the agent's run directory (``run-dir``).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query("privspk")
def handle(msg: Message, context: Context) -> Message:
    """Hand the message to this node's agent and reply with its answer.

    A node without an agent, or an agent that refuses the request, answers with
    ``{"error": ...}`` in the header; the ServerApp counts it out of that stage.
    """
    import time

    from privspk.errors import PrivspkError
    from privspk.runtimes.flower.bridge import call
    from privspk.runtimes.flower.messages import from_content, to_content

    t_app = time.time()
    run_dir = str(context.node_config.get("run-dir", ""))
    try:
        if not run_dir:
            raise PrivspkError("this SuperNode has no 'run-dir' in its --node-config; start it with `privspk join`")
        meta, body = from_content(msg.content, sender="server")
        meta["node_id"] = int(context.node_id)
        out_meta, out_body = call(run_dir, meta, body)
    except PrivspkError as exc:
        out_meta, out_body = {"error": f"{type(exc).__name__}: {exc}"}, b""
    from privspk.runtimes.flower import fastexec

    # wall-clock stamps for the transport breakdown (fork, pull of the message started and done, handler
    # start and end); loopback only
    fork = fastexec.FORKED_AT or t_app
    pulled = fastexec.PULLED if len(fastexec.PULLED) == 2 else [fork, fork]
    out_meta["t_node"] = [fork, *pulled, t_app, time.time()]
    return Message(to_content(out_meta, out_body), reply_to=msg)
