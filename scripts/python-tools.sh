# Sourced by the scripts that need Python tools: a virtualenv with scripts/python-requirements.txt, kept
# outside the checkout beside the build cache, reinstalled when the requirements change. Sets PYTHON_TOOLS.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PYTHON_TOOLS="${TENANTMQ_PYTHON_TOOLS:-$CARGO_TARGET_DIR/python-tools}"
requirements="scripts/python-requirements.txt"
if ! cmp -s "$requirements" "$PYTHON_TOOLS/requirements.txt" 2>/dev/null; then
    python3 -m venv "$PYTHON_TOOLS"
    "$PYTHON_TOOLS/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$PYTHON_TOOLS/requirements.txt"
fi
export PYTHON_TOOLS
