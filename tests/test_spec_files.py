"""Hostile spec files: every one is refused with one line naming file, line and problem,
within bounded time and memory; hypothesis generates more of them."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langgraph_moa.spec import GraphSpec, SpecError, load_spec
from langgraph_moa.spec.reading import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES

GOOD = "agents: [{name: a}]\nlayers: [{agents: [a]}]\n"

# The 351-byte spec of nested anchors from issue 13: 9**9 values once expanded.
BOMB = (
    "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + GOOD
)

# file name, content, expected message (after "invalid spec: <path>")
BAD_FILES: dict[str, tuple[str, bytes, str]] = {
    "alias_bomb": (
        "bomb.yaml",
        BOMB.encode(),
        f":5: the spec holds more than {MAX_NODES} values once its aliases are expanded",
    ),
    "alias_cycle": (
        "cycle.yaml",
        b"agents: &x [*x]\nlayers: []\n",
        ":1: an alias refers to a value that contains it (a cycle)",
    ),
    "binary": (
        "spec.yaml",
        b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)),
        ":1: this is a binary file (it contains NUL bytes), not a YAML, JSON or TOML spec",
    ),
    "latin1": (
        "spec.yaml",
        GOOD.encode() + "description: café\n".encode("latin-1"),
        ":3: not UTF-8 text (byte 0xe9 at column 17); save the spec as UTF-8",
    ),
    "nested_yaml": (
        "deep.yaml",
        ("agents: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        f":1: mappings and lists are nested more than {MAX_DEPTH} levels deep",
    ),
    "nested_json": (
        "deep.json",
        ('{"agents": ' + "[" * 100_000 + "]" * 100_000 + "}").encode(),
        f": mappings and lists are nested more than {MAX_DEPTH} levels deep",
    ),
    "nested_toml": (
        "deep.toml",
        ("agents = " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        f": mappings and lists are nested more than {MAX_DEPTH} levels deep",
    ),
    "oversized": (
        "big.yaml",
        GOOD.encode() + b"#" * MAX_SPEC_BYTES,
        f": the file is larger than {MAX_SPEC_BYTES} bytes",
    ),
    "control_char": (
        "spec.yaml",
        GOOD.encode() + b"description: \x07\n",
        ":3: YAML error: character U+0007 is not allowed (special characters",
    ),
    "bad_date": (
        "spec.yaml",
        GOOD.encode() + b"description: 2024-13-45\n",
        ":3: cannot read this value: month must be in 1..12",
    ),
    "huge_int": (
        "spec.yaml",
        GOOD.encode() + b"max_total_tokens: " + b"9" * 5000 + b"\n",
        ":3: cannot read this value: Exceeds the limit (4300 digits)",
    ),
    "python_tag": (
        "spec.yaml",
        b"agents: !!python/object/apply:os.system [echo hi]\n",
        ":1: YAML error: could not determine a constructor for the tag",
    ),
    "directory": ("dir", b"", ": is a directory, not a spec file"),
    "enum_echoed": (
        "spec.yaml",
        b"agents: [{name: a}]\nlayers:\n  - agents: [a]\n    routing: telepathy\n",
        ":4: layers.0.routing.mode: 'telepathy' is not allowed; use one of 'broadcast', "
        "'router' or 'function'",
    ),
    "base_url": (
        "spec.yaml",
        b'models:\n  m: {model: x, base_url: "not a url"}\nagents: [{name: a, model: m}]\n'
        b"layers: [{agents: [a]}]\n",
        ":2: models.m.base_url: 'not a url' is not an http(s) URL; write it like "
        "http://127.0.0.1:8080/v1",
    ),
    "base_url_scheme": (
        "spec.yaml",
        b"models:\n  m: {model: x, base_url: 'file:///etc/passwd'}\n"
        b"agents: [{name: a, model: m}]\nlayers: [{agents: [a]}]\n",
        ":2: models.m.base_url: 'file:///etc/passwd' is not an http(s) URL",
    ),
    "wrong_type_echoed": (
        "spec.yaml",
        b"agents:\n  - name: a\n    temperature: hot\nlayers: [{agents: [a]}]\n",
        ":3: agents.0.temperature: Input should be a valid number, unable to parse string "
        "as a number, got 'hot'",
    ),
    "agent_settings_not_mapping": (
        "spec.yaml",
        b"agents:\n  a: [1, 2]\nlayers: [{agents: [a]}]\n",
        ":1: agents: agent 'a': its settings must be a mapping",
    ),
}


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    if name == "dir":
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_one_clear_line(case: str, tmp_path: Path) -> None:
    name, content, expected = BAD_FILES[case]
    path = _write(tmp_path, name, content)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError) as caught:
            load_spec(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"invalid spec: {path}{expected}"), message
    assert peak < 32 * 1024 * 1024 + 4 * len(content), f"{case}: peak {peak} bytes"


@pytest.mark.parametrize("case", ["alias_bomb", "binary", "latin1", "nested_json", "enum_echoed"])
def test_cli_spec_validate_prints_one_line(case: str, tmp_path: Path) -> None:
    name, content, expected = BAD_FILES[case]
    path = _write(tmp_path, name, content)
    # the bomb used to take over 11 GB: a 1 GB address-space limit proves it no longer can
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            limit + "from langgraph_moa.cli import main; main()",
            "spec",
            "validate",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: invalid spec: {path}{expected}"), done.stderr


def test_anchors_within_the_budget_still_work(tmp_path: Path) -> None:
    path = tmp_path / "team.yaml"
    path.write_text(
        "models:\n  base: &base {model: m, base_url: 'http://127.0.0.1:9/v1', max_retries: 0}\n"
        "  other: {<<: *base, temperature: 0.1}\n"
        "agents: [{name: a, model: base}, {name: b, model: other}]\n"
        "layers: [{agents: &both [a, b]}, {agents: *both}]\n"
    )
    spec = load_spec(path)
    assert spec.models["other"].base_url == "http://127.0.0.1:9/v1"
    assert spec.models["other"].temperature == 0.1
    assert [layer.agents for layer in spec.layers] == [["a", "b"], ["a", "b"]]


# --------------------------------------------------------------- hypothesis ---

YAML_ALPHABET = st.sampled_from([*"[]{}:,-&*!|>'\"#%@`?<= \n\t\\", "a", "b", "1", "é"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["broadcast", "router", "telepathy", "concat", "a", "b", "m", ""]),
)
KEYS = st.sampled_from(
    ["name", "agents", "layers", "models", "routing", "synthesizer", "model", "base_url",
     "mode", "temperature", "max_tokens", "extends", "kwargs", "defaults", "a", "b", "m"]
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=30,
)


@st.composite
def anchored_yaml(draw: st.DrawFn) -> str:
    """Chains of anchors and aliases, possibly exponential, possibly cyclic."""
    width = draw(st.integers(1, 12))
    depth = draw(st.integers(1, 12))
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, depth):
        refs = [f"*a{draw(st.integers(0, i))}" for _ in range(width)]  # may refer to itself
        lines.append(f"a{i}: &a{i} [{', '.join(refs)}]")
    return "\n".join(lines) + "\n" + draw(st.sampled_from(["", GOOD]))


HOSTILE_TEXT = st.one_of(
    st.text(YAML_ALPHABET, max_size=200),
    VALUES.map(lambda v: yaml.safe_dump({"agents": v, "layers": v})),
    st.dictionaries(KEYS, VALUES, max_size=6).map(yaml.safe_dump),
    anchored_yaml(),
    st.integers(1, 3000).map(lambda n: "agents: " + "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: "agents: " + "{a: " * n + "}" * n),
)


@settings(
    max_examples=150,
    database=None,
    deadline=2000,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    content=st.one_of(HOSTILE_TEXT.map(str.encode), st.binary(max_size=300)),
    suffix=st.sampled_from([".yaml", ".yml", ".json", ".toml", ""]),
)
def test_hostile_specs_raise_only_spec_error(
    content: bytes, suffix: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("spec") / f"spec{suffix}"
    path.write_bytes(content)
    tracemalloc.start()
    try:
        try:
            assert isinstance(load_spec(path), GraphSpec)
        except SpecError as exc:
            assert str(path) in str(exc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"peak {peak} bytes"
