"""Starting points for the fuzzers: well-formed streams of each framing, and tokens that matter to the parsers.

Random bytes alone rarely reach a parser's deeper states (a whole SSE event holding a usage object, a valid
event-stream message with a broken payload); mutating real streams and splicing in the tokens the parsers and
meters look for does. The streams are the soak's own (bench.soak_bodies), plus the captures in
../shared/fixtures when that folder is there (the smaller ones: a fuzzer wants short inputs).
"""

from __future__ import annotations

import random

from bench.soak_bodies import SHARED_FIXTURES, Catalogue, bedrock_event, error_event, event_message

# Families of framing: which seeds go with which parser and meter.
FAMILIES = ("sse", "array", "eventstream")
_KIND_FAMILY = {
    "openai_chat_stream": "sse",
    "openai_responses": "sse",
    "anthropic": "sse",
    "gemini_sse": "sse",
    "gemini_array": "array",
    "openai_chat": "array",  # a JSON body: the body meters' seed, and one element to the array splitter
    "gemini_generate": "array",
    "bedrock": "eventstream",
    "bedrock_converse": "array",
}
MAX_CAPTURE_BYTES = 16 * 1024

TOKENS: tuple[bytes, ...] = (
    b"data:",
    b"data: ",
    b"event:",
    b"event: error\n",
    b"id:",
    b"id: \x00",
    b"retry:",
    b"retry: 10\n",
    b":",
    b" ",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\r\r",
    b"\r\n\r\n",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff",
    b"\\",
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b",\r\n",
    b"0",
    b"-1",
    b"1e999",
    b"null",
    b"true",
    b"[DONE]",
    b"data: [DONE]\n\n",
    b'"usage"',
    b'"usage":',
    b'{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
    b'"choices":[]',
    b'"x_groq":{"usage":{"prompt_tokens":1}}',
    b'"error":{"message":"x"}',
    b'"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}',
    b'"type":"message_delta","usage":{"output_tokens":7}',
    b'"iterations":[{"input_tokens":1}]',
    b'"type":"response.completed","response":{"usage":{"input_tokens":1,"output_tokens":2}}',
    b'"usageMetadata"',
    b'"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4}',
    b'"finishReason":"STOP"',
    b'"inputTokens":1',
    b'"outputTokens":2',
    b'"amazon-bedrock-invocationMetrics"',
    # What msgspec turns into exceptions other than DecodeError: invalid UTF-8 inside a string it decodes, and
    # nesting past Python's recursion limit (1000).
    b'"\xff\xfe"',
    b'"finishReason":"ST\xffOP"',
    b"[" * 1100,
    b"[" * 1100 + b"]" * 1100,
)


def _streams() -> dict[str, list[bytes]]:
    rng = random.Random(0)
    out: dict[str, list[bytes]] = {family: [] for family in FAMILIES}
    catalogue = Catalogue(fixtures=None)
    for kind, family in _KIND_FAMILY.items():
        for done in (True, False):
            words = [f"w{i} " for i in range(rng.randint(1, 4))]
            out[family].append(catalogue.made(kind, words, include_usage=True, done=done).data)
        out[family].append(error_event(kind).data)
    out["eventstream"] += [
        event_message({}, b""),
        event_message(
            {":message-type": "event", ":event-type": "chunk"}, b'{"bytes":"eyJ0eXBlIjoibWVzc2FnZV9zdGFydCJ9"}'
        ),
        bedrock_event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}}),
    ]
    full = Catalogue()
    for kind, bodies in full.captures.items():
        out[_KIND_FAMILY[kind]] += [body.data for body in bodies if len(body.data) <= MAX_CAPTURE_BYTES]
    vectors = SHARED_FIXTURES / "bedrock" / "eventstream_vectors"
    if vectors.is_dir():
        out["eventstream"] += [path.read_bytes() for path in sorted(vectors.glob("*.bin"))]
    return out


STREAMS = _streams()


def mutate(data: bytes, rng: random.Random, rounds: int) -> bytes:
    """A few random edits: flip a bit, splice in a token or random bytes, delete a run, truncate."""
    buf = bytearray(data)
    for _ in range(rounds):
        pos = rng.randint(0, len(buf))
        op = rng.randrange(5)
        if op == 0 and pos < len(buf):
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 64)]
        else:
            del buf[pos:]
    return bytes(buf)
