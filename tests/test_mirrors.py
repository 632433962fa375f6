"""Mirror helpers without servers: URL checks, the served-manifest mirror list, and manifests
whose chunk names could escape a cache or mirror folder."""
import json

import pytest

from ailo.chunks import Manifest, split_state_dict
from ailo.mirrors import valid_mirror_url, with_mirrors
from ailo.model import build_model


def manifest_json() -> str:
    m, _ = split_state_dict(build_model("ailo-tiny", seed=0).state_dict(), 3, version=2, preset="ailo-tiny")
    return m.to_json()


def test_mirror_urls_are_http_and_normalised():
    assert valid_mirror_url("https://m.example/ailo/") == "https://m.example/ailo"
    assert valid_mirror_url("http://127.0.0.1:8480") == "http://127.0.0.1:8480"
    for bad in ("ftp://m.example/x", "file:///srv/mirror", "m.example/x", "http://"):
        with pytest.raises(ValueError):
            valid_mirror_url(bad)


def test_mirrors_are_added_when_served_never_stored():
    text = manifest_json()
    assert "mirrors" not in json.loads(text)                      # the stored manifest has none
    served = Manifest.from_json(with_mirrors(text, ("http://a", "http://b")))
    assert served.mirrors == ["http://a", "http://b"]
    assert served.chunks == Manifest.from_json(text).chunks
    assert json.loads(served.to_json())["mirrors"] == ["http://a", "http://b"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "AB" * 32, "ab" * 31, "ab" * 32 + "/x", ""])
def test_manifest_refuses_chunk_names_that_are_not_a_sha256(name):
    d = json.loads(manifest_json())
    d["chunks"][1]["sha256"] = name
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Manifest.from_json(json.dumps(d))


def test_cli_refuses_a_bad_mirror_url():
    from ailo.cli.federation import coordinator_config
    from ailo.cli.main import CLIError, build_parser
    args = build_parser().parse_args(["coordinator", "--mirror", "ftp://nope"])
    with pytest.raises(CLIError, match="http:// or https://"):
        coordinator_config(args)
