#!/usr/bin/env bash
# Run llama.cpp's own server test suite (tools/server/tests) against `llmrt serve`.
#
#   tests/peer/run_llama_server_suite.sh        # issue 18's acceptance files, slow tests left out
#   tests/peer/run_llama_server_suite.sh unit/test_basic.py -k health   # any pytest arguments
#
# The suite comes from the llama-cpp-python 0.3.36 sdist (vendor/llama.cpp), fetched once with pip
# into ~/.cache/llmrt/peer (or $LLAMA_CPP_SDIST), and is unpacked into tests/peer/.suite (ignored
# by git). It starts `llama-server` through $LLAMA_SERVER_BIN_PATH, here the shim beside this
# script, which serves SmolLM2 with `llmrt serve` whatever model a test names. The last line
# printed is the count: `llama-server suite: N passed, M failed, K skipped, E errors`; the outcome
# of every test is in tests/peer/.suite/outcomes.txt, and tests/peer/.suite/summary.md gives the
# counts per file and each failure's reason (tests/peer/summarize.py).
# PORT (default 8190) is the first server's port; LLMRT_PEER_MODEL overrides the model.
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
SUITE="$HERE/.suite"
VERSION=0.3.36
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/llmrt/peer"
SDIST="${LLAMA_CPP_SDIST:-$CACHE/llama_cpp_python-$VERSION.tar.gz}"

if [[ ! -f "$SDIST" ]]; then
    mkdir -p "$CACHE"
    python -m pip download --quiet --no-binary :all: --no-deps -d "$CACHE" \
        "llama-cpp-python==$VERSION"
fi

# llama.cpp's layout kept: the tests read chat templates from ../../../models/templates
TESTS="$SUITE/tools/server/tests"
MARK="$SDIST: tools/server/tests models/templates"
if [[ ! -f "$SUITE/.from" || "$(cat "$SUITE/.from")" != "$MARK" ]]; then
    rm -rf "$SUITE"
    mkdir -p "$SUITE"
    tar -xzf "$SDIST" -C "$SUITE" --strip-components=3 \
        "llama_cpp_python-$VERSION/vendor/llama.cpp/tools/server/tests" \
        "llama_cpp_python-$VERSION/vendor/llama.cpp/models/templates"
    echo "$MARK" > "$SUITE/.from"
fi

# utils.py imports wget for the model downloads the shim never makes
if ! python -c "import wget" 2>/dev/null; then
    printf 'def download(url, out=None):\n    raise RuntimeError("no downloads here")\n' \
        > "$TESTS/wget.py"
fi

if [[ $# -eq 0 ]]; then  # as the suite's tests.sh: slow tests need SLOW_TESTS=1 and big models
    set -- -m "not slow" unit/test_basic.py unit/test_tokenize.py unit/test_completion.py \
        unit/test_chat_completion.py unit/test_security.py unit/test_ctx_shift.py \
        unit/test_slot_save.py unit/test_metrics.py unit/test_template.py unit/test_infill.py \
        unit/test_embedding.py unit/test_ignore_eos.py unit/test_tool_call.py \
        unit/test_compat_anthropic.py unit/test_compat_oai_responses.py
fi

cd "$TESTS"
status=0
# no third-party pytest plugins: the suite needs none, and an installed one may not import
LLAMA_SERVER_BIN_PATH="$HERE/llama-server" PORT="${PORT:-8190}" PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
    python -m pytest -q -p no:cacheprovider -o addopts="" --junitxml="$SUITE/junit.xml" \
    "$@" || status=$?

python - "$SUITE/junit.xml" "$SUITE/outcomes.txt" <<'EOF'
import sys
import xml.etree.ElementTree as ET

counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
lines = []
for case in ET.parse(sys.argv[1]).iter("testcase"):
    name = f"{case.get('classname')}::{case.get('name')}"
    kinds = {child.tag for child in case}
    outcome = ("errors" if "error" in kinds else "failed" if "failure" in kinds
               else "skipped" if "skipped" in kinds else "passed")
    counts[outcome] += 1
    lines.append(f"{outcome}\t{name}")
with open(sys.argv[2], "w") as f:
    f.write("\n".join(sorted(lines)) + "\n")
print("llama-server suite: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
EOF
# every failure with its reason (tests/peer/summarize.py): model, http, missing or unexplained
python "$HERE/summarize.py" "$SUITE/outcomes.txt" > "$SUITE/summary.md"
echo "per file and per reason: $SUITE/summary.md"
exit $status
