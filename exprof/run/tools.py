"""The tool loop of one sample: send, answer every tool_use of the reply with a
tool_result, send again, until a reply without tool use or `max_turns` requests.

A Trajectory holds a sample's turns so far (read back from the store on a resume, so no
earlier turn is sent again) and turns each reply into the next request, a TurnRecorded
event, and in the end one Response whose usage is summed over the turns. The loops
(exprof.run.mock, exprof.run.live) drive it; where each result comes from is a ToolBox:
the sample's scripted tool_results first, then the config's tool_runner, else an error
result that says no script matched. A tool that raises, overruns tool_timeout_s or
returns something that is not a string or text blocks gives an error result for that
call only.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from exprof.clients.outcome import Outcome, Response
from exprof.config import Config
from exprof.dataset import Sample
from exprof.jsonio import dumps
from exprof.metric_specs import import_function
from exprof.store.events import TurnRecorded
from exprof.tool_specs import is_result_content, matches

MAX_TURNS_STOP = "max_turns"  # the stop reason of a sample its turns ran out on
# Usage counts summed over a sample's turns, when any turn reports them.
SUMMED = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "thinking_tokens",
)


class ToolBox:
    """Runs one tool call: scripted result, the python runner, or an error result."""

    def __init__(self, config: Config) -> None:
        self.timeout_s = config.tool_timeout_s
        runner = config.tool_runner
        self.runner = (
            import_function(runner["function"], runner["search_path"], "tool_runner")
            if runner
            else None
        )

    def result(self, call: dict[str, Any], sample: Sample) -> dict[str, Any]:
        """The tool_result block for a tool_use block."""
        content, is_error = self._run(call, sample)
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call["id"]}
        block["content"] = content
        if is_error:
            block["is_error"] = True
        return block

    def _run(self, call: dict[str, Any], sample: Sample) -> tuple[Any, bool]:
        name, tool_input = call["name"], call["input"]
        for scripted in sample.tool_results or ():
            if scripted["name"] == name and matches(scripted["input"], tool_input):
                return scripted["result"], bool(scripted.get("is_error", False))
        if self.runner is None:
            return f"no scripted result for tool {name} with input {dumps(tool_input)}", True
        box: list[Any] = []

        def call_runner() -> None:
            try:
                box.append(("ok", self.runner(name, tool_input, sample.to_payload())))  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - user code: its error is the result
                box.append(("error", f"{type(exc).__name__}: {exc}"))

        thread = threading.Thread(target=call_runner, daemon=True, name=f"tool {name}")
        thread.start()
        thread.join(self.timeout_s)
        if not box:  # still running: abandoned (a daemon thread), the call is an error
            return f"tool {name} timed out after {self.timeout_s:g} s", True
        kind, value = box[0]
        if kind == "error":
            return f"tool {name} raised {value}", True
        if not is_result_content(value):
            return (
                f"tool {name} returned {type(value).__name__}, not a string or text blocks",
                True,
            )
        return value, False


@dataclasses.dataclass
class Trajectory:
    """A sample's tool loop: its recorded turns, and what to send next."""

    sample: Sample
    config: Config
    turns: list[TurnRecorded] = dataclasses.field(default_factory=list)

    def request(self) -> Sample:
        """The sample as the next request sends it: its turns, then each recorded reply
        and the tool results that answered it."""
        messages = list(self.sample.turns())
        prefill: list[dict[str, Any]] = []
        if self.turns and messages[-1]["role"] == "assistant":  # the reply continued it
            content = messages.pop()["content"]
            prefill = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for turn in self.turns:
            reply = [*prefill, *_replayable(turn.received)]
            messages.append({"role": "assistant", "content": reply})
            messages.append({"role": "user", "content": turn.tool_results})
            prefill = []
        return dataclasses.replace(self.sample, messages=tuple(messages))

    def calls(self, outcome: Outcome) -> list[dict[str, Any]] | None:
        """The reply's tool_use blocks to answer, or None when the reply ends the loop
        (a failure, no tool use, or the last turn max_turns allows)."""
        if not isinstance(outcome, Response) or outcome.metadata.get("stop_reason") != "tool_use":
            return None
        if len(self.turns) + 1 >= self.config.max_turns:
            return None
        blocks = [b for b in _blocks(outcome) if b.get("type") == "tool_use"]
        return blocks or None

    def add(self, outcome: Response, results: list[dict[str, Any]]) -> TurnRecorded:
        """Record a reply and the results of its calls as the next turn."""
        turn = self._turn(outcome, results)
        self.turns.append(turn)
        return turn

    def final(self, outcome: Outcome) -> tuple[Outcome, list[TurnRecorded]]:
        """The sample's outcome once the loop ends on `outcome`, and its last turn: a
        failure stays as it is (the recorded turns stand for a retry); a reply becomes
        the Response of the whole trajectory."""
        if not isinstance(outcome, Response):
            return outcome, []
        last = self._turn(outcome, [])
        turns = [*self.turns, last]
        metadata = dict(outcome.metadata)
        for key in SUMMED:
            values = [t.usage[key] for t in turns if isinstance(t.usage.get(key), int)]
            if values:
                metadata[key] = sum(values)
        server = [t.usage["server_tool_use"] for t in turns if "server_tool_use" in t.usage]
        if server:  # web searches and the like, by kind, over the turns
            metadata["server_tool_use"] = {
                k: sum(uses.get(k, 0) for uses in server) for k in sorted(set().union(*server))
            }
        if "token_count" in metadata and "output_tokens" in metadata:
            metadata["token_count"] = metadata["output_tokens"]
        cut_off = metadata.get("stop_reason") == "tool_use"
        if cut_off:
            metadata["stop_reason"] = MAX_TURNS_STOP
        calls = [b for t in turns for b in t.received if b.get("type") == "tool_use"]
        results = [r for t in turns for r in t.tool_results]
        metadata["turns"] = len(turns)
        metadata["tool_calls"] = [{"name": c["name"], "input": c["input"]} for c in calls]
        metadata["tool_errors"] = sum(1 for r in results if r.get("is_error"))
        attempts = outcome.attempts
        return Response(outcome.completion, metadata, attempts), [last]

    def _turn(self, outcome: Response, results: list[dict[str, Any]]) -> TurnRecorded:
        if self.turns:
            sent = [{"role": "user", "content": self.turns[-1].tool_results}]
        else:
            sent = list(self.sample.turns())
        usage = {k: outcome.metadata[k] for k in SUMMED if k in outcome.metadata}
        if isinstance(outcome.metadata.get("server_tool_use"), dict):
            usage["server_tool_use"] = outcome.metadata["server_tool_use"]
        return TurnRecorded(
            self.sample.dialogue_id,
            len(self.turns) + 1,
            sent,
            _blocks(outcome),
            results,
            usage,
            outcome.metadata.get("stop_reason"),
            self.sample.repeat,
        )


def run_calls(box: ToolBox, sample: Sample, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every call's result, in the order of the calls (as the API wants them)."""
    return [box.result(call, sample) for call in calls]


def drive(
    trajectory: Trajectory, box: ToolBox, complete: Callable[[Sample], Outcome]
) -> tuple[Outcome, list[TurnRecorded]]:
    """The whole loop with a synchronous client (the mock): the final outcome and every
    turn it recorded from here on."""
    recorded: list[TurnRecorded] = []
    while True:
        outcome = complete(trajectory.request())
        calls = trajectory.calls(outcome)
        if calls is None:
            final, last = trajectory.final(outcome)
            return final, recorded + last
        assert isinstance(outcome, Response)
        recorded.append(trajectory.add(outcome, run_calls(box, trajectory.sample, calls)))


def _blocks(outcome: Response) -> list[dict[str, Any]]:
    content = outcome.metadata.get("content")
    if isinstance(content, list):
        return list(content)
    return [{"type": "text", "text": outcome.completion}] if outcome.completion else []


def _replayable(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A reply's blocks as a request carries them back: text and tool use, and the
    thinking before them where it was recorded with its signature (as the API wants it
    back in a tool loop), redacted thinking as it came; empty text blocks never."""
    kept = []
    for block in blocks:
        kind = block.get("type")
        if kind == "tool_use" or (kind == "text" and block.get("text")):
            kept.append(block)
        elif (kind == "thinking" and "signature" in block) or kind == "redacted_thinking":
            kept.append(block)
    return kept
