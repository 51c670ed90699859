# Outpost — the two commands: `make demo` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Debian packages the test suite talks to as real peers: protocol peers, a browser for the
# pages, nginx as the load balancer in front of two receivers, socat for serial-line pairs,
# Prometheus (promtool and a real scrape), debootstrap + systemd for the package's install test.
TEST_APT_PACKAGES := snmpd snmp mosquitto chromium nginx socat prometheus debootstrap systemd python3-venv
# The demo's MQTT rack sensors need a broker.
DEMO_APT_PACKAGES := mosquitto

.PHONY: all venv system-deps demo-deps test test-fast demo lint typecheck lint-imports check bench clean

all: venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Install missing Debian packages (root, as on the edge box and in CI). policy-rc.d keeps the
# packages from starting their system services: tests and the demo start their own instances.
define apt_install
	@missing=""; \
	for pkg in $(1); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; $$SUDO chmod +x /usr/sbin/policy-rc.d; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	  rc=$$?; $$SUDO rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	fi
endef

system-deps:
	$(call apt_install,$(TEST_APT_PACKAGES))

demo-deps:
	$(call apt_install,$(DEMO_APT_PACKAGES))

# Lint, format, types and layering first (a minute), then the suite.
test: venv system-deps check
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -q -x -m "not slow"

demo: venv demo-deps
	$(BIN)/outpost demo -c agent.example.toml

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Tools that resolve modules from files (mypy, import-linter) cannot follow the editable
# install's import hook, so they read the package through a tree of links named as installed.
TYPECHECK_ROOT := build/typecheck
TOP_LEVEL := agent drivers fsm buffer cloud point_schedules
$(TYPECHECK_ROOT)/outpost:
	mkdir -p $@
	for d in $(TOP_LEVEL); do ln -sfn ../../../$$d $@/$$d; done

typecheck: venv $(TYPECHECK_ROOT)/outpost
	MYPYPATH=$(TYPECHECK_ROOT) $(BIN)/mypy -p outpost

lint-imports: venv $(TYPECHECK_ROOT)/outpost
	PYTHONPATH=$(TYPECHECK_ROOT) $(BIN)/lint-imports

check: lint typecheck lint-imports

bench: venv
	$(BIN)/python bench/buffer.py
	$(BIN)/python bench/poll_modbus.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/backfill.py
	$(BIN)/python bench/mqtt_agent.py

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .ruff_cache .mypy_cache

# Debian package (packaging/README.md): dist/outpost_<version>_<arch>.deb, built with Debian's
# own /usr/bin/python3 so the venv under /opt/outpost uses the target box's interpreter.
# DEB_SOURCE=head packages the committed tree only; DEB_COMPRESSION=zstd builds ~30x faster.
DEB_SOURCE ?= worktree
DEB_COMPRESSION ?= xz
.PHONY: deb
deb:
	$(call apt_install,python3-venv)
	/usr/bin/python3 packaging/build_deb.py --out dist --source $(DEB_SOURCE) --compression $(DEB_COMPRESSION)
