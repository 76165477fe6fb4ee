# The two commands a newcomer needs:
#   make demo   set up, run criproxy in front of two real containerd runtimes, show it working
#   make test   set up and run the whole test suite (what .ci/run runs);
#               make test-unit, test-process, test-e2e, test-node run one layer
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
LAYERS := unit process e2e node

.PHONY: venv demo test $(LAYERS:%=test-%) bench bench-restart soak deb clean fuzz

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VPY) scripts/demo.py

# The test layers (tests/README.md), quickest first: `make test-unit` is the edit-test
# loop (seconds), `make test` runs them all. pytest's exit code 5 means no test ran:
# that is a failure here.
PYTEST = $(VPY) -m pytest -ra $(PYTEST_ARGS) $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi; exit $$rc

test: venv
	$(call PYTEST,$(LAYERS:%=tests/%))

$(LAYERS:%=test-%): test-%: venv
	$(call PYTEST,tests/$*)

bench: venv
	$(VPY) bench/suite/run.py

# Pod churn with a fault a minute against real containerd (root): nothing lost, leaked or grown.
SOAK_MINUTES ?= 10
soak: venv
	SOAK_MINUTES=$(SOAK_MINUTES) $(VPY) bench/soak/run.py

# How long kubelet's calls fail across criproxy restarts, under a real systemd (root).
bench-restart: venv
	$(VPY) bench/node/restart.py

# Every fuzz target under atheris, FUZZ_SECONDS each (fuzz/run.py): inputs run, inputs/s,
# coverage, corpus size, crashes; fails on a crash.
FUZZ_SECONDS ?= 60
fuzz: venv
	$(VPY) -c 'import atheris' 2>/dev/null || $(VPY) -m pip install --quiet -e '.[fuzz]'
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(VPY) -m fuzz.run

# $(DIST)/criproxy_<version>_<arch>.deb, built with Debian's own python3 (packaging/deb/).
DIST ?= dist
deb:
	/usr/bin/python3 packaging/deb/build.py --out $(DIST)

clean:
	rm -rf $(VENV) *.egg-info build dist
