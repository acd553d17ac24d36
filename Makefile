# Two commands do all the set-up on a fresh machine:
#   make run   - the main job
#   make test  - the test suite
# Both create .venv and install the project into it when needed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test install system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# promtool/prometheus and systemd-analyze for the service tests (Debian packages, root needed);
# without them those few tests skip and say why.
system-deps:
	@bash scripts/ci-system-deps.sh || echo "warning: could not install prometheus/systemd; their tests will skip"

run: $(STAMP)
	$(VENV)/bin/inspectd run $(ARGS)

test: $(STAMP) system-deps
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
