"""What a runtime's error text may say over the wire: its kind, the node, a short message.

Runtimes print tensor values in their errors: onnxruntime's "requested shape:{53,99,...}" is a
Reshape's shape tensor, "idx=53" a Gather's index. A model that turns bytes it should never have
had into such values would have them sent back in the job's error. So text a runtime wrote goes
over the wire without value lists, numbers or long hex/base64 runs, and cut short; the full text
stays in the device's own log (the job's worker.log, the agent's stderr).
Messages the agent writes itself (its own exception types) go as they are.
"""

from __future__ import annotations

import re
from typing import Dict

MAX_WIRE_CHARS = 400
MAX_NAME_CHARS = 120

_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
# "Non-zero status code returned while running Reshape node. Name:'leak' Status Message: ..."
_RUNNING = re.compile(r"Non-zero status code returned while running (\S+) node\. "
                      r"Name:'([^']*)'\s*(?:Status Message:\s*)?")
# "Node (leak) Op (Reshape) [ShapeInferenceError] ..."
_NODE_OP = re.compile(r"Node \(([^)]*)\) Op \(([^)]*)\)\s*")
# where in the runtime's sources: "/onnxruntime_src/.../reshape_helper.h:91 "
_SOURCE = re.compile(r"\S+\.(?:cc|cpp|cu|c|h|hpp)(?::\d+)?\s+")
# the C++ function and the failed condition: "onnxruntime::X::X(const T&, bool) a == b was false. "
_SIGNATURE = re.compile(r"(?:[\w<>~]+::)+[\w<>~]+\((?:[^()]|\([^()]*\))*\)\s*(?:const\s*)?")
_CONDITION = re.compile(r"[^.]*\bwas false\.\s*")
# value dumps: {53,99,...}, [-3,2], (1, 2, 3), [0x1F, 1.5e3]
_VALUE_LIST = re.compile(r"([\[{(])[\s\dA-Fa-f,.:;+\-xX*…]*\d[\s\dA-Fa-f,.:;+\-xX*…]*([\]})])")
# hex, base64: 16 or more such characters with a digit among them
_LONG_RUN = re.compile(r"[A-Za-z0-9+/=]{16,}")
# a number not glued to a name (int64, Conv_3 stay)
_NUMBER = re.compile(r"(?<!\w)[-+]?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def redact(text: str, limit: int = MAX_WIRE_CHARS, keep_end: bool = False) -> str:
    """``text`` (a runtime's) without values, in at most ``limit`` characters: the start, or
    with ``keep_end`` the end (a log's tail)."""
    text = _VALUE_LIST.sub(lambda m: m.group(1) + "…" + m.group(2), text)
    text = _LONG_RUN.sub(lambda m: "…" if any(c.isdigit() for c in m.group(0)) else m.group(0),
                         text)
    text = _NUMBER.sub("#", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = "…" + text[-(limit - 1):] if keep_end else text[:limit - 1] + "…"
    return text


def runtime_message(text: str, limit: int = MAX_WIRE_CHARS) -> str:
    """A runtime's error as "Op node 'name': message", the message redacted; onnxruntime's
    status prefix and source locations dropped (the local log has them)."""
    text = _ORT_STATUS.sub("", text, count=1)
    node = ""
    found = _RUNNING.search(text)
    if found:
        op_type, name = found.group(1), found.group(2)
        text = text[:found.start()] + text[found.end():]
    else:
        found = _NODE_OP.search(text)
        if found:
            name, op_type = found.group(1), found.group(2)
            text = text[:found.start()] + text[found.end():]
    if found:
        node = "%s node '%s': " % (op_type[:MAX_NAME_CHARS], name[:MAX_NAME_CHARS])
    text = _SOURCE.sub("", text)
    text = _SIGNATURE.sub("", text, count=1)
    text = _CONDITION.sub("", text, count=1)
    return node + redact(text.strip(), max(40, limit - len(node)))


def wire_error(exc: BaseException) -> Dict[str, str]:
    """{"type", "message"} of an exception, fit to go over the wire: the agent's own messages
    as they are, everything else (a runtime's, numpy's) through runtime_message."""
    kind = type(exc)
    message = str(exc)
    # the worker's own exceptions live in __main__ (python -m hwnas_agent.worker)
    if not (kind.__module__.startswith("hwnas_agent") or kind.__module__ == "__main__"):
        message = runtime_message(message)
    return {"type": kind.__name__, "message": message}
