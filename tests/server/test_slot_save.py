"""Slot save, restore and erase (`--slot-save-path`, `/slots/{id}?action=...`): a slot's KV cache
and tokens go to a file and back, and a restored slot continues as the saved one would."""

from __future__ import annotations

import struct
import threading
import time

import httpx
import pytest
from server_helpers import reference_tokens

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("slots")


@pytest.fixture(scope="module")
def srv(live_server, folder):
    return live_server(n_ctx=512, n_parallel=2, slot_save_path=str(folder))


def complete(srv, prompt, slot, n=8, **extra):
    body = {"prompt": prompt, "n_predict": n, "temperature": 0, "id_slot": slot,
            "cache_prompt": True, **extra}  # fmt: skip
    r = httpx.post(srv.url + "/completion", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def act(srv, slot, action, **body):
    return httpx.post(f"{srv.url}/slots/{slot}?action={action}", json=body, timeout=120)


def test_a_restored_slot_continues_as_the_saved_one(srv, folder, model):
    n_prompt = len(model.tokenize(PROMPT, parse_special=True))
    first = complete(srv, PROMPT, 1)
    assert first["timings"]["prompt_n"] == n_prompt
    r = act(srv, 1, "save", filename="slot1.bin")
    assert r.status_code == 200
    saved = r.json()
    n_cached = n_prompt + first["tokens_predicted"] - 1  # the last token is never evaluated
    assert saved["id_slot"] == 1 and saved["filename"] == "slot1.bin"
    assert saved["n_saved"] == n_cached
    assert saved["n_written"] == (folder / "slot1.bin").stat().st_size
    assert "save_ms" in saved["timings"]

    r = act(srv, 0, "restore", filename="slot1.bin")
    assert r.status_code == 200
    assert r.json()["n_restored"] == n_cached and r.json()["n_read"] == saved["n_written"]

    # the saved tokens and one more: only that one is evaluated, on the restored cache
    follow = PROMPT + first["content"]
    ids = model.tokenize(follow, parse_special=True)
    again = complete(srv, follow, 0, n=6)
    assert again["timings"]["cache_n"] >= n_cached - 1
    assert again["timings"]["prompt_n"] == len(ids) - again["timings"]["cache_n"]
    want = model.detokenize(reference_tokens(model, follow, 6))
    assert again["content"] == want


def test_erase_empties_the_slot(srv):
    complete(srv, PROMPT, 1, n=2)
    r = act(srv, 1, "erase")
    assert r.status_code == 200 and r.json()["id_slot"] == 1 and r.json()["n_erased"] > 0
    again = complete(srv, PROMPT, 1, n=2)
    assert again["timings"]["cache_n"] == 0  # everything read anew
    slots = httpx.get(srv.url + "/slots").json()
    assert slots[1]["tokens_cached"] > 0


def test_a_legacy_plain_token_list_restores(srv, folder, model):
    """Files of older llama-servers hold a plain token list where ours hold the packed one
    (LLAMA_TOKEN_NULL, version, count, tokens, media count)."""
    complete(srv, PROMPT, 1, n=2)
    assert act(srv, 1, "save", filename="legacy.bin").status_code == 200
    data = bytearray((folder / "legacy.bin").read_bytes())
    n_words = struct.unpack_from("<I", data, 8)[0]
    null, version, n_tokens = struct.unpack_from("<iII", data, 12)
    assert (null, version, n_words) == (-1, 1, n_tokens + 4)
    tokens = data[24 : 24 + 4 * n_tokens]
    legacy = data[:8] + struct.pack("<I", n_tokens) + tokens + data[12 + 4 * n_words :]
    (folder / "legacy.bin").write_bytes(legacy)
    r = act(srv, 0, "restore", filename="legacy.bin")
    assert r.status_code == 200 and r.json()["n_restored"] == n_tokens


def test_file_names_that_leave_the_folder_are_refused(srv, folder):
    for name in ["../escape.bin", "a/b.bin", "/tmp/x.bin", "..", "", "x.", "c:x", None, 5]:
        r = act(srv, 1, "save", filename=name)
        assert r.status_code == 400, name
        assert "Invalid filename" in r.json()["error"]["message"]
    assert not (folder.parent / "escape.bin").exists()
    (folder / "out").symlink_to(folder.parent / "elsewhere.bin")
    assert act(srv, 1, "save", filename="out").status_code == 400
    assert not (folder.parent / "elsewhere.bin").exists()


def test_bad_requests_are_400_and_a_bad_file_leaves_the_slot_usable(srv, folder):
    assert act(srv, 7, "save", filename="x.bin").status_code == 400
    assert act(srv, "one", "save", filename="x.bin").status_code == 400
    assert act(srv, 0, "dump", filename="x.bin").status_code == 400
    r = act(srv, 0, "restore", filename="missing.bin")
    assert r.status_code == 400 and "no file" in r.json()["error"]["message"]
    (folder / "junk.bin").write_bytes(b"ggsq" + b"\0" * 40)
    r = act(srv, 0, "restore", filename="junk.bin")
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("Unable to restore slot") and "\n" not in message
    assert complete(srv, PROMPT, 0, n=2)["timings"]["cache_n"] == 0


def test_an_action_waits_for_its_slot(srv, model):
    n_prompt = len(model.tokenize(PROMPT, parse_special=True))
    done = {}
    run = lambda: done.update(complete(srv, PROMPT, 1, n=64, ignore_eos=True))  # noqa: E731
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while not httpx.get(srv.url + "/slots").json()[1]["is_processing"]:
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.005)
    r = act(srv, 1, "save", filename="busy.bin")
    t.join()
    assert r.status_code == 200 and done["tokens_predicted"] == 64
    assert r.json()["n_saved"] == n_prompt + 64 - 1  # saved once the request was done


def test_without_a_folder_slot_actions_are_501(server):
    r = httpx.post(server.url + "/slots/0?action=erase", timeout=60)
    assert r.status_code == 501 and "--slot-save-path" in r.json()["error"]["message"]


def test_serve_wants_an_existing_folder(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "llmrt", "serve", "--slot-save-path", str(tmp_path / "none")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
