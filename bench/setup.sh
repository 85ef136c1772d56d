# Sourced by the bench scripts from the repository root: sets up bench/.venv with
# the pinned versions of tools/requirements.txt (PyPI) and builds the release binary.
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q --upgrade pip
  bench/.venv/bin/pip install -q -r tools/requirements.txt
fi
cargo build --release -p resnet-cli
